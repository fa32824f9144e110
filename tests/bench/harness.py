"""Processes the benchmarks start: Kamailio, the gateway, SIPp (not collected by pytest).

Everything here is a child of the runner, pinned to a core with ``taskset`` (or
inherited CPU affinity), bound to loopback, bounded in count and time, and ended
by its own PID (or the process group it leads) in ``stop()``, also on failure.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.gateway_process import GatewayProcess  # noqa: E402

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
SERVER_CORE = 0
LOAD_CORE = 1


class HarnessError(RuntimeError):
    """The benchmark harness itself failed (not a slow or missing gateway feature)."""


def cores_available() -> set[int]:
    return set(os.sched_getaffinity(0))


def pin_prefix(core: int) -> list[str]:
    """``taskset -c <core>`` when this machine has that core, else nothing."""
    if core in cores_available() and len(cores_available()) > 1 and shutil.which("taskset"):
        return ["taskset", "-c", str(core)]
    return []


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def options_ping(host: str, port: int, timeout: float = 0.5) -> str | None:
    """Send one OPTIONS, return the status line of the answer (or None on timeout)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        branch = f"z9hG4bK-ping-{time.monotonic_ns()}"
        msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport\r\n"
               "Max-Forwards: 70\r\n"
               f"From: <sip:ping@127.0.0.1:{lport}>;tag=ping{lport}\r\n"
               f"To: <sip:{host}:{port}>\r\n"
               f"Call-ID: ping-{branch}@127.0.0.1\r\n"
               "CSeq: 1 OPTIONS\r\n"
               "Content-Length: 0\r\n\r\n").encode()
        s.sendto(msg, (host, port))
        try:
            data = s.recv(65535)
        except TimeoutError:
            return None
        return data.split(b"\r\n", 1)[0].decode("latin-1")


def wait_answering(host: str, port: int, timeout: float, proc: subprocess.Popen[Any]) -> None:
    """Poll with OPTIONS until the server answers, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"process exited with {proc.returncode} before answering")
        if options_ping(host, port, 0.2) is not None:
            return
    raise HarnessError(f"no answer to OPTIONS from {host}:{port} within {timeout:.0f} s")


# -- CPU accounting ------------------------------------------------------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    out = [pid]
    i = 0
    while i < len(out):
        p = out[i]
        i += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                    out += [int(k) for k in kids]
    return out


def cpu_seconds(pid: int, skip: Collection[int] = ()) -> float:
    """User+system CPU time of a process and all its live descendants (but ``skip``)."""
    total = 0
    for p in _descendants(pid):
        if p in skip:
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat.rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (steal, all) ticks from /proc/stat. Steal is time the hypervisor gave
    this machine's core to someone else: on a shared host it can take a third of a core
    and turns any rate into noise, so every step reports it."""
    out: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks = [int(v) for v in vals[:8]]
                out[int(name[3:])] = (ticks[7] if len(ticks) > 7 else 0, sum(ticks))
    return out


def steal_share(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
                core: int) -> float | None:
    """The share of ``core``'s time stolen between two ``cpu_ticks`` readings."""
    if core not in before or core not in after:
        return None
    total = after[core][1] - before[core][1]
    return (after[core][0] - before[core][0]) / total if total > 0 else None


def steal_text(shares: Collection[float | None]) -> str:
    """Steal shares as the benches print them: "1%/24%" (server core/load core)."""
    return "/".join("?" if x is None else f"{100 * x:.0f}%" for x in shares)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants (shared pages counted per process)."""
    total = 0
    for p in _descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


# -- servers under test --------------------------------------------------------------------
class Server:
    """What a benchmark needs from a server under test."""

    name: str
    host: str
    port: int
    pid: int

    def stop(self) -> None:
        raise NotImplementedError


class Kamailio(Server):
    """Kamailio in the foreground with a private runtime dir, pinned to one core."""

    def __init__(self, cfg: str, *, defines: dict[str, str] | None = None,
                 children: int = 1, shm_mb: int = 256, pkg_mb: int = 16) -> None:
        self.name = "kamailio"
        self.cfg = HERE / "kamailio" / cfg
        self.defines = defines or {}
        self.children = children
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.host = "127.0.0.1"
        self.port = 0
        self.pid = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self.log: Path | None = None

    def command(self, *, check: bool = False) -> list[str]:
        assert self.tmp is not None
        cmd = [KAMAILIO, "-f", str(self.cfg), "-l", f"udp:{self.host}:{self.port}",
               "-n", str(self.children), "-m", str(self.shm_mb), "-M", str(self.pkg_mb),
               "-Y", str(self.tmp), "-P", str(self.tmp / "kamailio.pid"), "-w", str(self.tmp),
               "-a", "no", "-b", str(4 * 1024 * 1024)]  # let its UDP buffer grow like ours
        for k, v in self.defines.items():
            cmd += ["-A", f'{k}="{v}"']
        if check:
            return [*cmd, "-c"]
        return [*pin_prefix(SERVER_CORE), *cmd, "-DD", "-E"]

    def start(self) -> Kamailio:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-kamailio-"))
        self.port = free_udp_port()
        check = subprocess.run(self.command(check=True), capture_output=True, text=True,
                               timeout=30, check=False)
        if check.returncode != 0:
            raise HarnessError(f"kamailio -c {self.cfg.name} failed:\n{check.stderr[-2000:]}")
        self.log = self.tmp / "kamailio.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        try:
            wait_answering(self.host, self.port, 15.0, self.proc)
        except HarnessError as e:
            self.stop()
            raise HarnessError(f"kamailio ({self.cfg.name}) did not start: {e}\n"
                               + self.log.read_text(errors="replace")[-2000:]) from e
        return self

    def stop(self) -> None:
        proc = self.proc
        if proc is not None:
            # The session we created leads Kamailio's own forks: end that group, by its id.
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of our own group
            self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PinnedGateway(GatewayProcess):
    """``sipgw serve`` (and the Valkey it starts) pinned to the server core.

    Affinity is inherited across fork/exec, so the runner narrows its own
    affinity while the child is spawned and restores it afterwards.
    """

    def start(self) -> PinnedGateway:
        mine = os.sched_getaffinity(0)
        if SERVER_CORE in mine and len(mine) > 1:
            os.sched_setaffinity(0, {SERVER_CORE})
        try:
            super().start()
        finally:
            os.sched_setaffinity(0, mine)
        return self


class GatewayServer(Server):
    """The gateway as a server under test."""

    def __init__(self, workdir: Path, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.name = "sipgw"
        self.gw = PinnedGateway(workdir, overrides)
        self.host = "127.0.0.1"
        self.port = 0
        self.pid = 0
        self.cpu_skip: tuple[int, ...] = ()  # child processes not counted as server CPU

    def start(self) -> GatewayServer:
        self.gw.start()
        assert self.gw.proc is not None
        self.pid = self.gw.proc.pid
        self.host, self.port = self.gw.sip("udp")
        return self

    def valkey_tcp(self) -> tuple[str, int] | None:
        got = self.gw.listening.get(("valkey", "tcp"))
        return got[0] if got else None

    def stop(self) -> None:
        self.gw.stop()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BackendProcess(Server):
    """``sipgw backend`` (the reference call-control backend, "the cloud") with its own
    private Valkey, pinned to the load core: the gateway under test then runs alone on the
    server core and reaches its backend over HTTP/WebSocket as it would in production."""

    def __init__(self, workdir: Path, token: str, *, ring_timeout: float = 30.0) -> None:
        self.name = "backend"
        self.workdir = workdir
        self.token = token
        self.ring_timeout = ring_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.pid = 0
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackendProcess:
        from tests.integration.gateway_process import write_config

        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = write_config(self.workdir / "backend.toml", {
            "server": {"data_dir": str(self.workdir / "data"), "log_level": "warning"},
            "backend": {"host": self.host, "port": 0}})
        env = dict(os.environ)
        env.pop("SIPGW_CONFIG", None)
        env["SIPGW_BACKEND_TOKEN"] = self.token
        cmd = [*pin_prefix(LOAD_CORE), sys.executable, "-m", "gateway.cli", "--config", str(cfg),
               "backend", "--ring-timeout", str(self.ring_timeout)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, env=env,
                                     cwd=self.workdir, start_new_session=True)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    break
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line.rstrip())
                if line.startswith("listening backend http "):
                    self.port = int(line.rsplit(":", 1)[1])
                    # keep draining its output so a chatty backend never blocks on the pipe
                    import threading

                    threading.Thread(target=self._drain, daemon=True).start()
                    return self
        self.stop()
        raise HarnessError("sipgw backend did not start:\n" + "\n".join(self.lines[-20:]))

    def _drain(self) -> None:
        proc = self.proc
        if proc is not None and proc.stdout is not None:
            for line in proc.stdout:
                self.lines.append(line.rstrip())
                del self.lines[:-200]

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # it stops its own Valkey on the way out
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # a Valkey left behind in our own group
        self.proc = None


# -- SIPp ----------------------------------------------------------------------------------
@dataclass
class SippResult:
    """Final counters of one SIPp run (from its -trace_stat CSV)."""

    created: int
    successful: int
    failed: int
    elapsed: float  # seconds from the first call to the end of the run
    returncode: int
    errors: str
    peak_calls: int = 0  # most calls open at once, at SIPp's 1 s statistics ticks

    @property
    def rate(self) -> float:
        return self.successful / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def failure_ratio(self) -> float:
        done = self.successful + self.failed
        return self.failed / done if done else 1.0


def _epoch(text: str) -> float:
    # SIPp writes "YYYY-MM-DD<TAB>HH:MM:SS.uuuuuu<TAB>epoch.uuuuuu"
    try:
        return float(text.split("\t")[-1])
    except ValueError:
        raise HarnessError(f"unexpected SIPp time stamp {text!r}") from None


def read_sipp_stats(path: Path) -> tuple[int, int, int, float, int]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    if len(rows) < 2:
        raise HarnessError(f"SIPp wrote no statistics to {path}")
    head, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(head)}
    try:
        return (int(last[col["TotalCallCreated"]]), int(last[col["SuccessfulCall(C)"]]),
                int(last[col["FailedCall(C)"]]),
                _epoch(last[col["CurrentTime"]]) - _epoch(last[col["StartTime"]]),
                max(int(r[col["CurrentCall"]]) for r in rows[1:]))
    except (KeyError, ValueError, IndexError) as e:
        raise HarnessError(f"cannot read SIPp statistics {path}: {e}") from e


class Sipp:
    """One SIPp process pinned to the load core, in its own scratch directory."""

    def __init__(self, scenario: str, target: tuple[str, int] | None, *,
                 calls: int = 0, rate: float = 0, limit: int = 0,
                 recv_timeout_ms: int = 2000, max_seconds: float = 60.0,
                 extra: list[str] | None = None, port: int = 0, rtt: bool = False) -> None:
        self.scenario = HERE / "sipp" / scenario
        self.target = target
        self.calls = calls
        self.rate = rate
        self.limit = limit
        self.recv_timeout_ms = recv_timeout_ms
        self.max_seconds = max_seconds
        self.extra = extra or []
        # a fixed port: a registered phone whose calls the gateway trusts by source
        self.port = port or free_udp_port()
        self.rtt = rtt
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-sipp-"))
        self.stat = self.tmp / "stat.csv"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [*pin_prefix(LOAD_CORE), SIPP]
        if self.target is not None:
            cmd.append(f"{self.target[0]}:{self.target[1]}")
        cmd += ["-sf", str(self.scenario), "-t", "u1", "-i", "127.0.0.1",
                "-p", str(self.port), "-nr", "-nd", "-nostdin",
                "-recv_timeout", str(self.recv_timeout_ms),
                "-timeout", f"{int(self.max_seconds)}s", "-timeout_error",
                "-trace_stat", "-stf", str(self.stat), "-fd", "1",
                "-trace_err", "-error_file", str(self.tmp / "errors.log"),
                "-max_socket", "64",
                # SIPp's 64 kB default socket buffer overflows when it is descheduled
                # for a few ms at tens of thousands of messages per second.
                "-buff_size", str(4 * 1024 * 1024)]
        if self.calls:
            cmd += ["-m", str(self.calls)]
        if self.rate:
            cmd += ["-r", str(int(self.rate)), "-rp", "1000"]
        if self.limit:
            cmd += ["-l", str(self.limit)]
        if self.rtt:  # every call's response-time (rtd) sample, in ms with SIPp's tick
            cmd += ["-trace_rtt", "-rtt_freq", "1"]
        return cmd + self.extra

    def rtt_ms(self) -> list[float]:
        """The per-call response times of a run with ``rtt=True`` (SIPp's ``*_rtt.csv``:
        ``date_ms;response_time_ms;rtd_no``)."""
        out: list[float] = []
        for path in self.tmp.glob("*_rtt.csv"):
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split(";")
                if len(parts) >= 2:
                    with contextlib.suppress(ValueError):
                        out.append(float(parts[1]))
        return out

    def start(self) -> Sipp:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                     stderr=(self.tmp / "stderr.log").open("wb"),
                                     stdin=subprocess.DEVNULL, cwd=self.tmp)
        return self

    def wait(self) -> SippResult:
        assert self.proc is not None
        try:
            rc = self.proc.wait(self.max_seconds + 30)
        except subprocess.TimeoutExpired:
            self.stop()
            raise HarnessError(f"SIPp {self.scenario.name} ran past {self.max_seconds:.0f} s "
                               "despite -timeout") from None
        if not self.stat.exists():
            err = (self.tmp / "stderr.log").read_text(errors="replace")[-2000:]
            raise HarnessError(f"SIPp {self.scenario.name} exited {rc} without statistics:\n"
                               f"{' '.join(self.command())}\n{err}")
        created, ok, failed, elapsed, peak = read_sipp_stats(self.stat)
        errors = ""
        with contextlib.suppress(OSError):
            errors = (self.tmp / "errors.log").read_text(errors="replace")[-1500:]
        return SippResult(created, ok, failed, elapsed, rc, errors, peak)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
