"""The UDP hot path's shortcuts: direct socket writes and the metrics' first-word cache.

``SipDatagramProtocol.send`` writes with the socket's own ``sendto`` when the
transport is a real Twisted UDP port (errors mapped as Twisted maps them), and
``SipMetrics`` finds a raw message's counter by its first word. Both must give
exactly what the general code gives.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.error import MessageLengthError

from gateway.ops import metrics as metrics_module
from gateway.ops.metrics import SipMetrics, sniff_start_line
from gateway.sip.peer import Peer
from gateway.transport.udp import SipDatagramProtocol


class _Sink:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Peer]] = []

    def datagram_received(self, sock: SipDatagramProtocol, data: bytes, peer: Peer) -> None:
        self.got.append((data, peer))


@pytest.fixture
def udp_pair() -> Iterator[tuple[SipDatagramProtocol, socket.socket]]:
    from twisted.internet import reactor

    proto = SipDatagramProtocol(_Sink(), "127.0.0.1")
    port: Any = reactor.listenUDP(0, proto, interface="127.0.0.1",  # type: ignore[attr-defined]
                                  maxPacketSize=65535)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    try:
        yield proto, peer
    finally:
        peer.close()
        port.stopListening()


def test_send_writes_through_the_real_socket(
        udp_pair: tuple[SipDatagramProtocol, socket.socket]) -> None:
    proto, peer = udp_pair
    assert proto._sendto is not None  # the direct path is the one under test
    proto.send(b"SIP/2.0 200 OK\r\n\r\n", "127.0.0.1", peer.getsockname()[1])
    data, addr = peer.recvfrom(65535)
    assert data == b"SIP/2.0 200 OK\r\n\r\n"
    assert addr[1] == proto.transport.getHost().port  # type: ignore[union-attr]


def test_oversized_datagram_raises_message_length_error(
        udp_pair: tuple[SipDatagramProtocol, socket.socket]) -> None:
    proto, peer = udp_pair
    with pytest.raises(MessageLengthError):
        proto.send(b"x" * 70000, "127.0.0.1", peer.getsockname()[1])


def test_send_to_a_wrong_family_address_raises_oserror(
        udp_pair: tuple[SipDatagramProtocol, socket.socket]) -> None:
    proto, _ = udp_pair
    with pytest.raises(OSError):
        proto.send(b"x", "::1", 5060)


def test_stopped_protocol_falls_back_to_the_transport() -> None:
    proto = SipDatagramProtocol(_Sink(), "127.0.0.1")
    proto.stopProtocol()
    assert proto._sendto is None


def test_receive_normalises_ipv4_mapped_sources() -> None:
    sink = _Sink()
    proto = SipDatagramProtocol(sink, "::")
    proto.datagramReceived(b"a", ("::ffff:192.0.2.1", 5060, 0, 0))
    proto.datagramReceived(b"b", ("2001:db8::1", 5061, 0, 0))
    proto.datagramReceived(b"c", ("192.0.2.2", 5062))
    assert [p for _, p in sink.got] == [Peer("UDP", "192.0.2.1", 5060),
                                        Peer("UDP", "2001:db8::1", 5061),
                                        Peer("UDP", "192.0.2.2", 5062)]


RAW = [
    b"OPTIONS sip:gw SIP/2.0\r\n", b"OPTIONS sip:other SIP/2.0\r\n", b"REGISTER sip:x SIP/2.0",
    b"SIP/2.0 200 OK\r\n", b"SIP/2.0 200 Fine\r\n", b"SIP/2.0 486 Busy", b"SIP/2.0 299 X",
    b"SIP/2.0 abc", b"SIP/2.0 ", b"FOO bar", b"\r\nINVITE sip:x SIP/2.0", b"\r\n\r\n", b"",
    b"nospacesatallinthisverylongline", b"\xff\xfe bad", b"INVITE", b" leading space",
]


def test_raw_counting_matches_the_start_line_sniffer() -> None:
    cached = SipMetrics()
    for _ in range(3):  # first pass fills the cache, the others read it
        for data in RAW:
            cached.raw_received("UDP", data)
            cached.raw_sent("TCP", data)
    expected: dict[tuple[str, ...], float] = {}
    for data in RAW:
        labels = sniff_start_line(data)
        if labels is not None:
            expected[labels] = expected.get(labels, 0) + 3
    for (kind, method, status), n in expected.items():
        for name, transport in (("sip_messages_received_total", "UDP"),
                                ("sip_messages_sent_total", "TCP")):
            assert cached.sample(name, {"transport": transport, "kind": kind,
                                        "method": method, "status": status}) == n


def test_a_request_the_fast_lane_took_counts_as_reading_it_would() -> None:
    m = SipMetrics()
    m.raw_received("UDP", b"REGISTER sip:example.com SIP/2.0\r\n\r\n")
    for _ in range(2):
        m.request_taken("UDP", "REGISTER")
    assert m.sample("sip_messages_received_total", {
        "transport": "UDP", "kind": "request", "method": "REGISTER", "status": ""}) == 3


def test_raw_cache_is_bounded() -> None:
    m = SipMetrics()
    for i in range(metrics_module._RAW_CACHE_MAX * 2 + 5):
        m.raw_received("UDP", b"M%d sip:x SIP/2.0" % i)
    assert len(m._raw_children) <= metrics_module._RAW_CACHE_MAX
    assert m.sample("sip_messages_received_total", {
        "transport": "UDP", "kind": "request", "method": "other", "status": ""}) == \
        metrics_module._RAW_CACHE_MAX * 2 + 5



@pytest_twisted.inlineCallbacks
def test_direct_reading_delivers_and_stops_with_the_port() -> Any:
    """read_directly: the asyncio loop reads the socket (Twisted no longer does), every
    datagram of a burst arrives with its source, and stopping the port removes the
    reader from the loop."""
    from twisted.internet import reactor, task

    sink = _Sink()
    proto = SipDatagramProtocol(sink, "127.0.0.1")
    port: Any = reactor.listenUDP(0, proto, interface="127.0.0.1",  # type: ignore[attr-defined]
                                  maxPacketSize=65535)
    loop: asyncio.AbstractEventLoop = reactor._asyncioEventloop  # type: ignore[attr-defined]
    fd = port.socket.fileno()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    try:
        assert proto.read_directly(reactor)
        assert port not in reactor.getReaders()  # type: ignore[attr-defined]
        for i in range(50):
            peer.sendto(b"OPTIONS %d" % i, ("127.0.0.1", port.getHost().port))
        deadline = loop.time() + 5
        while len(sink.got) < 50 and loop.time() < deadline:
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert [d for d, _ in sink.got] == [b"OPTIONS %d" % i for i in range(50)]
        assert {p.port for _, p in sink.got} == {peer.getsockname()[1]}
    finally:
        peer.close()
        yield port.stopListening()
    assert loop.remove_reader(fd) is False  # already gone with the port
