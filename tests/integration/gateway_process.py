"""Run `sipgw serve` as a real subprocess on ephemeral loopback ports, for integration tests.

    with GatewayProcess(tmp_path) as gw:
        host, port = gw.sip("udp")

Config overrides are TOML sections as dicts. The process is ours: stopped by its
PID (SIGTERM, then SIGKILL), also when the test fails.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class GatewayProcess:
    """A `sipgw serve` child process with every port ephemeral."""

    def __init__(self, workdir: Path, overrides: dict[str, dict[str, Any]] | None = None,
                 *, data_dir: Path | None = None, start_timeout: float = 60.0,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        sections: dict[str, dict[str, Any]] = {
            "server": {"data_dir": str(self.data_dir)},
            "sip": {"hosts": ["127.0.0.1"], "udp_port": 0, "tcp_port": 0, "tls_port": 0},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "backend": {"port": 0},
            "identity": {"devidp_port": 0, "phone_ui_port": 0},
            "ops": {"port": 0},
            # SIPp phones take an unexpected OPTIONS for a failed call: keep-alives are
            # on only where a test asks for them (test_keepalive.py)
            "registrar": {"keepalive_interval": 0},
        }
        for name, values in (overrides or {}).items():
            sections.setdefault(name, {}).update(values)
        self.config_path = write_config(self.workdir / "sipgw.toml", sections)
        self.start_timeout = start_timeout
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.listening: dict[tuple[str, str], list[tuple[str, int]]] = {}
        self.lines: list[str] = []
        self.node = ""
        self._q: queue.Queue[str | None] = queue.Queue()

    # -- addresses -----------------------------------------------------------------
    def addr(self, service: str, proto: str) -> tuple[str, int]:
        return self.listening[(service, proto)][0]

    def sip(self, proto: str) -> tuple[str, int]:
        return self.addr("sip", proto)

    @property
    def metrics_url(self) -> str:
        host, port = self.addr("metrics", "http")
        return f"http://{host}:{port}/metrics"

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> GatewayProcess:
        env = dict(os.environ)
        env.pop("SIPGW_CONFIG", None)
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "--config", str(self.config_path), "serve"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=self.workdir)
        threading.Thread(target=self._reader, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError("sipgw serve did not become ready:\n" + "\n".join(self.lines))
            try:
                line = self._q.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError("sipgw serve exited:\n" + "\n".join(self.lines))
            if line.startswith("listening "):
                _, service, proto, hostport = line.split(" ", 3)
                host, _, port = hostport.rpartition(":")
                self.listening.setdefault((service, proto), []).append(
                    (host.strip("[]"), int(port)))
            elif line.startswith("ready"):
                self.node = line.partition("node=")[2]
                return self

    def _reader(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        """Abrupt end (SIGKILL), for restart tests."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
