"""Blocking raw-socket SIP clients for loopback integration tests (run them in a thread:
the gateway under test shares the test's reactor).

Every read has a deadline; nothing waits on a bare sleep.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from pathlib import Path

from gateway.sip.message import ParseFailure, SipMessage, SipResponse, StreamParser, parse_message


def options_request(transport: str, host: str, port: int, *, branch: str | None = None,
                    call_id: str | None = None) -> bytes:
    branch = branch or f"z9hG4bK{uuid.uuid4().hex[:16]}"
    call_id = call_id or uuid.uuid4().hex
    h = f"[{host}]" if ":" in host else host
    return (
        f"OPTIONS sip:{h}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {h}:9;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{h}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{h}:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Accept: application/sdp\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp_exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send one datagram and return the first datagram that comes back."""
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (host, port))
        reply, _ = s.recvfrom(65535)
        return reply


def udp_options_answered(host: str, port: int, timeout: float = 5.0) -> SipResponse:
    reply = udp_exchange(host, port, options_request("UDP", host, port), timeout)
    msg = parse_message(reply)
    assert isinstance(msg, SipResponse), reply
    return msg


class StreamClient:
    """A TCP or TLS client connection that reads framed SIP messages with a deadline."""

    def __init__(self, host: str, port: int, *, tls_ca: Path | None = None,
                 server_name: str | None = None, timeout: float = 5.0) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket
        if tls_ca is not None:
            ctx = ssl.create_default_context(cafile=str(tls_ca))
            self.sock = ctx.wrap_socket(raw, server_hostname=server_name or host)
        else:
            self.sock = raw
        self.timeout = timeout
        self.parser = StreamParser()
        self.raw = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_messages(self, n: int) -> list[SipMessage | ParseFailure | str]:
        """Read until ``n`` framed items (messages, failures or pongs) arrived."""
        out: list[SipMessage | ParseFailure | str] = []
        deadline = time.monotonic() + self.timeout
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"got {len(out)} of {n} messages; raw={self.raw[-500:]!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} of {n}; raw={self.raw[-500:]!r}")
            self.raw += chunk
            out += self.parser.feed(chunk)
        return out

    def read_exact(self, n: int) -> bytes:
        buf = b""
        deadline = time.monotonic() + self.timeout
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"got {buf!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"closed after {buf!r}")
            buf += chunk
        return buf

    def read_until_closed(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"still open; got {self.raw[-300:]!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return self.raw
            if not chunk:
                return self.raw
            self.raw += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessSip:
    """A ``SipDriver`` + real ``SipStack`` in the test's reactor, answering OPTIONS with 200.

    Listens on UDP, TCP and TLS on each of ``hosts`` (ephemeral ports). Used until a
    test needs the whole ``sipgw serve`` process.
    """

    def __init__(self, data_dir: Path, hosts: tuple[str, ...] = ("127.0.0.1", "::1"),
                 limits: object | None = None) -> None:
        import pytest

        stack_mod = pytest.importorskip(
            "gateway.sip.stack", reason="gateway.sip.stack (the transaction layer) not landed yet")
        from gateway.ops.metrics import SipMetrics
        from gateway.sip.events import RequestReceived, StackEvent
        from gateway.sip.message import build_response
        from gateway.transport import SipDriver, ensure_dev_certificate

        self.tls = ensure_dev_certificate(data_dir)
        self.stack = stack_mod.SipStack(stack_mod.StackConfig())
        self.metrics = SipMetrics()
        self.events: list[StackEvent] = []

        def handle(event: StackEvent) -> None:
            self.events.append(event)
            if isinstance(event, RequestReceived) and event.request.method == "OPTIONS":
                self.driver.respond(event.key, build_response(
                    event.request, 200, to_tag=uuid.uuid4().hex[:8],
                    headers=[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")]))

        kwargs = {"limits": limits} if limits is not None else {}
        self.driver = SipDriver(self.stack, handle, None, self.metrics, **kwargs)  # type: ignore[arg-type]
        self.ports: dict[tuple[str, str], int] = {}
        for host in hosts:
            self.ports[("udp", host)] = self.driver.listen_udp(host, 0)
            self.ports[("tcp", host)] = self.driver.listen_tcp(host, 0)
            self.ports[("tls", host)] = self.driver.listen_tls(host, 0, self.tls)

    def port(self, proto: str, host: str) -> int:
        return self.ports[(proto, host)]
