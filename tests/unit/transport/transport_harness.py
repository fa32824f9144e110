"""A recording stand-in for ``SipStack`` for the pure adapter tests (the layer above the stack).

It parses with the real parser, answers nothing on its own, records what the
driver fed it, and sends exactly what a test tells it to: the adapter tests
check framing, routing, flows and timers, not SIP rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gateway.ops.metrics import SipMetrics
from gateway.sip.events import MalformedMessage, RequestReceived, StackEvent, TransactionKey
from gateway.sip.message import (
    ParseFailure,
    SipMessage,
    SipRequest,
    SipResponse,
    build_error_response,
    parse_message,
)
from gateway.sip.peer import Peer
from gateway.transport import SipDriver, SipStreamProtocol, StreamLimits


@dataclass
class RecordingStack:
    received: list[tuple[SipMessage | ParseFailure | bytes, Peer, float]] = field(
        default_factory=list)
    pending_events: list[StackEvent] = field(default_factory=list)
    outbox: list[tuple[bytes, Peer]] = field(default_factory=list)
    timers: list[float] = field(default_factory=list)
    timer_calls: list[float] = field(default_factory=list)
    transport_errors: list[Peer] = field(default_factory=list)
    peers: dict[TransactionKey, Peer] = field(default_factory=dict)
    seq: int = 0

    def _request(self, msg: SipMessage, peer: Peer, now: float) -> None:
        if isinstance(msg, SipRequest):
            self.seq += 1
            key = TransactionKey(f"k{self.seq}")
            self.peers[key] = peer
            self.pending_events.append(RequestReceived(key, msg, peer))

    def receive_datagram(self, data: bytes, peer: Peer, now: float) -> None:
        self.received.append((data, peer, now))
        if not data.strip(b"\r\n"):
            return
        try:
            msg = parse_message(data)
        except ParseFailure as f:
            self.receive_parse_failure(f, peer, now)
            return
        self._request(msg, peer, now)

    def receive_message(self, msg: SipMessage, peer: Peer, now: float) -> None:
        self.received.append((msg, peer, now))
        self._request(msg, peer, now)

    def receive_parse_failure(self, failure: ParseFailure, peer: Peer, now: float) -> None:
        self.received.append((failure, peer, now))
        err = build_error_response(failure)
        if err is not None:
            self.outbox.append((err, peer))
        self.pending_events.append(MalformedMessage(failure.reason, peer, failure.is_request))

    def events(self) -> list[StackEvent]:
        out, self.pending_events = self.pending_events, []
        return out

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        out, self.outbox = self.outbox, []
        return out

    def next_timer(self) -> float | None:
        return min(self.timers) if self.timers else None

    def handle_timer(self, now: float) -> None:
        self.timer_calls.append(now)
        self.timers = [t for t in self.timers if t > now]

    def respond(self, key: TransactionKey, response: SipResponse, now: float) -> None:
        self.outbox.append((bytes(response), self.peers[key]))

    def send_request(self, request: SipRequest, peer: Peer, now: float) -> TransactionKey:
        self.outbox.append((bytes(request), peer))
        return TransactionKey("client-1")

    def send_ack_2xx(self, ack: SipRequest, peer: Peer) -> None:
        self.outbox.append((bytes(ack), peer))

    def send_stateless(self, msg: SipMessage, peer: Peer) -> None:
        self.outbox.append((bytes(msg), peer))

    def transport_error(self, peer: Peer, now: float) -> None:
        self.transport_errors.append(peer)


def options(branch: str = "z9hG4bK1", transport: str = "TCP", body: bytes = b"") -> bytes:
    return (
        f"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5070;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:probe@127.0.0.1>;tag=a1\r\n"
        "To: <sip:gw@127.0.0.1>\r\n"
        f"Call-ID: {branch}@test\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Harness:
    """A driver on a MemoryReactorClock with a recording stack and an auto-200 handler."""

    def __init__(self, limits: StreamLimits | None = None, auto_answer: bool = True) -> None:
        self.reactor = MemoryReactorClock()
        self.stack = RecordingStack()
        self.events: list[StackEvent] = []
        self.metrics = SipMetrics()
        self.auto_answer = auto_answer
        self.driver = SipDriver(self.stack, self._handle, self.reactor, self.metrics,
                                limits=limits)

    def _handle(self, event: StackEvent) -> None:
        self.events.append(event)
        if self.auto_answer and isinstance(event, RequestReceived):
            from gateway.sip.message import build_response

            self.driver.respond(event.key, build_response(event.request, 200, to_tag="t"))

    def connect(self, transport: str = "TCP", host: str = "192.0.2.7",
                port: int = 40000) -> tuple[SipStreamProtocol, StringTransport]:
        """Accept one inbound connection through the listening factory."""
        factory = self.reactor.tcpServers[-1][1]
        addr = IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
        proto = factory.buildProtocol(addr)
        assert proto is not None, "connection refused by the caps"
        tr = StringTransport(peerAddress=addr)
        proto.makeConnection(tr)
        return proto, tr


class RecordingUdpTransport:
    """The datagram side of a listening UDP port: records what was written to whom."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.fail_with: Exception | None = None

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.written.append((data, addr))


class _UdpPort:
    def __init__(self, host: str, port: int) -> None:
        self._addr = (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)

    def getHost(self) -> IPv4Address | IPv6Address:  # noqa: N802 - Twisted API
        return self._addr

    def stopListening(self) -> None:  # noqa: N802 - Twisted API
        return None


class UdpReactor(MemoryReactorClock):
    """MemoryReactorClock plus listenUDP that attaches a RecordingUdpTransport."""

    def __init__(self) -> None:
        super().__init__()
        self.udp: dict[str, tuple[object, RecordingUdpTransport]] = {}
        self._next_port = 5060

    def listenUDP(self, port: int, protocol: object, interface: str = "",  # noqa: N802
                  maxPacketSize: int = 8192) -> _UdpPort:  # noqa: N803
        tr = RecordingUdpTransport()
        protocol.makeConnection(tr)  # type: ignore[attr-defined]
        self.udp[interface] = (protocol, tr)
        bound = port or self._next_port
        self._next_port += 1
        return _UdpPort(interface, bound)
