"""Real SIP peers for the B2BUA tests against a `sipgw serve` process: SIPp runs and
registered SIPp phones (tests/integration/b2bua/sipp/*.xml), plus the provisioning a
test needs (devices paired to directory users, over the gateway's embedded Valkey).

Every SIPp is a child process of ours, stopped by its PID also when a test fails. A
phone's calls leave from the port it registered from, so the gateway trusts its
INVITEs by source (no INVITE digest) and reaches it at that port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

SIPP_DIR = Path(__file__).parent / "sipp"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
# an e911-capable catalog model with approved firmware: the firmware check admits it
USER_AGENT = "Yealink SIP-T46U 108.86.0.20"
VENDOR, MODEL = "Yealink", "T46U"
DOMAIN = "sipgw.localhost"
COMPLETED_ELSEWHERE_RE = r'SIP;cause=200;text="Call completed elsewhere"'


def free_udp_port() -> int:
    """A loopback UDP port nobody holds right now (SIPp binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SippError(AssertionError):
    """A SIPp run ended otherwise than the test expected; carries its output."""


class Sipp:
    """One SIPp process running a scenario of ``SIPP_DIR``.

    ``subst`` replaces ``@NAME@`` placeholders in the scenario (values SIPp keywords
    cannot reach, such as a response code in ``<recv response=...>``); ``keys`` become
    ``-key name value`` ([name] in the scenario)."""

    def __init__(self, scenario: str, workdir: Path, *, port: int,
                 target: tuple[str, int] | None = None, service: str = "",
                 keys: dict[str, str] | None = None, subst: dict[str, str] | None = None,
                 calls: int = 1, rate: float = 10.0, pause_ms: int = 0,
                 auth: tuple[str, str] | None = None, limit: int | None = None,
                 timeout: float = 30.0, extra: list[str] | None = None) -> None:
        self.name = f"{Path(scenario).stem}-{port}-{time.monotonic_ns() % 10**9}"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = (SIPP_DIR / scenario).read_text()
        for k, v in (subst or {}).items():
            text = text.replace(f"@{k}@", v)
        self.scenario = self.workdir / f"{self.name}.xml"
        self.scenario.write_text(text)
        self.port = port
        self.target = target
        self.calls = calls
        self.timeout = timeout
        self.log_path = self.workdir / f"{self.name}.log"
        self.err_path = self.workdir / f"{self.name}.errors.log"
        args = [SIPP, "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(port),
                "-t", "u1", "-m", str(calls), "-r", f"{rate:g}", "-nostdin",
                "-trace_err", "-error_file", str(self.err_path),
                "-timeout", f"{int(timeout)}s", "-timeout_error", "-max_retrans", "6",
                "-key", "domain", DOMAIN, "-key", "ua", USER_AGENT]
        if service:
            args += ["-s", service]
        for k, v in (keys or {}).items():
            args += ["-key", k, v]
        if pause_ms:
            args += ["-d", str(pause_ms)]
        if auth:
            args += ["-au", auth[0], "-ap", auth[1]]
        if limit:
            args += ["-l", str(limit)]
        args += extra or []
        if target:
            args.append(f"{target[0]}:{target[1]}")
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> Sipp:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        return self

    def output(self) -> str:
        parts = [" ".join(self.args)]
        for p in (self.log_path, self.err_path):
            if p.exists():
                text = p.read_text(errors="replace")
                parts.append(f"--- {p.name} ---\n{text[-6000:]}")
        return "\n".join(parts)

    def wait(self, timeout: float | None = None) -> int:
        """The exit status (0: every call succeeded); kills SIPp after ``timeout``."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(self.timeout + 10 if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise SippError(f"SIPp {self.name} did not finish\n{self.output()}") from None
        self._close_log()
        return rc

    async def finished(self, timeout: float | None = None) -> int:
        return await asyncio.to_thread(self.wait, timeout)

    async def succeeded(self, timeout: float | None = None) -> None:
        rc = await self.finished(timeout)
        if rc != 0:
            raise SippError(f"SIPp {self.name} exited {rc}\n{self.output()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class SippPhone:
    """A provisioned device whose SIP traffic is SIPp on one fixed loopback port."""

    def __init__(self, workdir: Path, gateway: tuple[str, int], device_id: str,
                 username: str, password: str) -> None:
        self.workdir = workdir
        self.gateway = gateway
        self.device_id = device_id
        self.username = username
        self.password = password
        self.port = free_udp_port()
        self.runs: list[Sipp] = []

    @property
    def endpoint_id(self) -> str:
        return f"sipdev-{self.device_id}"

    def sipp(self, scenario: str, **kw: Any) -> Sipp:
        run = Sipp(scenario, self.workdir, port=self.port, target=self.gateway,
                   keys={"user": self.username, **kw.pop("keys", {})}, **kw)
        self.runs.append(run)
        return run

    async def register(self, expires: int = 600) -> None:
        """REGISTER with MD5 digest through SIPp from the phone's port."""
        await self.sipp("register.xml", service=self.username, timeout=10,
                        auth=(self.username, self.password),
                        keys={"expires": str(expires)}).start().succeeded()

    def answer(self, calls: int = 1, **kw: Any) -> Sipp:
        """Start a UAS answering ``calls`` INVITEs on the registered port."""
        return self.sipp("uas.xml", service=self.username, calls=calls, **kw).start()

    def ring_until_cancelled(self, reason_re: str | None = None, **kw: Any) -> Sipp:
        """Start a UAS that rings and expects the gateway's CANCEL (with a Reason header
        matching ``reason_re`` when given)."""
        subst = ({"REASON_HDR": "Reason:", "REASON_RE": reason_re} if reason_re
                 else {"REASON_HDR": "CSeq:", "REASON_RE": "CANCEL"})
        return self.sipp("uas_cancelled.xml", service=self.username, subst=subst,
                         **kw).start()

    def call(self, target: str, scenario: str = "uac.xml", **kw: Any) -> Sipp:
        return self.sipp(scenario, service=target, **kw).start()

    def call_refused(self, target: str, status: int, **kw: Any) -> Sipp:
        return self.sipp("uac_status.xml", service=target, subst={"STATUS": str(status)},
                         **kw).start()

    def stop(self) -> None:
        for run in self.runs:
            run.kill()


async def provision(redis: Any, *, user: str | None, tenant: str, n: int,
                    workdir: Path, gateway: tuple[str, int]) -> SippPhone:
    """Add device number ``n`` (paired with the user ``oid`` unless None); not registered."""
    from gateway.registrar.admin import add_device
    from gateway.registrar.devices import DeviceStore

    mac = f"0015657{os.getpid() % 0x1000:03x}{n:02x}"[:12]
    dev, password = await add_device(redis, mac, VENDOR, MODEL, tenant, DOMAIN)
    if user:
        await DeviceStore(redis, DOMAIN).set_paired(dev.device_id, user)
    return SippPhone(workdir, gateway, dev.device_id, dev.sip_username, password)


async def wait_until(check: Any, timeout: float = 10.0, interval: float = 0.05,
                     what: str = "condition") -> Any:
    """Poll an async ``check()`` until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)
