"""Stream adapter (TCP framing, RFC 5626 ping/pong, flows, limits) on a MemoryReactorClock."""

from __future__ import annotations

from transport_harness import Harness, options
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.sip.events import MalformedMessage, RequestReceived
from gateway.sip.message import SipRequest, parse_message
from gateway.sip.peer import FlowId, Peer
from gateway.transport import StreamLimits


def responses(tr: StringTransport) -> list[bytes]:
    """Split what was written into messages (all test responses have no body)."""
    data = tr.value()
    return [m + b"\r\n\r\n" for m in data.split(b"\r\n\r\n") if m]


def test_single_message_carries_flow_and_response_reuses_connection(harness: Harness) -> None:
    proto, tr = harness.connect(host="192.0.2.7", port=40000)
    proto.dataReceived(options())
    [ev] = harness.events
    assert isinstance(ev, RequestReceived)
    assert ev.peer == Peer("TCP", "192.0.2.7", 40000, FlowId("tcp-1"))
    [resp] = responses(tr)
    assert resp.startswith(b"SIP/2.0 200 OK\r\n")
    assert harness.driver.flow_alive(FlowId("tcp-1"))


def test_pipelined_messages_in_one_segment_all_answered(harness: Harness) -> None:
    proto, tr = harness.connect()
    proto.dataReceived(options("z9hG4bKa") + options("z9hG4bKb") + options("z9hG4bKc"))
    got = [parse_message(r, stream=True) for r in responses(tr)]
    assert [m.headers.get("Call-ID") for m in got] == [
        "z9hG4bKa@test", "z9hG4bKb@test", "z9hG4bKc@test"]


def test_message_split_byte_by_byte_is_delivered_once_complete(harness: Harness) -> None:
    proto, tr = harness.connect()
    raw = options(body=b"v=0\r\n")
    for i in range(len(raw) - 1):
        proto.dataReceived(raw[i:i + 1])
    assert harness.events == [] and tr.value() == b""
    proto.dataReceived(raw[-1:])
    [ev] = harness.events
    assert isinstance(ev, RequestReceived) and ev.request.body == b"v=0\r\n"


def test_message_split_across_segments_with_next_one_started(harness: Harness) -> None:
    proto, tr = harness.connect()
    a, b = options("z9hG4bKa"), options("z9hG4bKb")
    proto.dataReceived(a[:50])
    proto.dataReceived(a[50:] + b[:10])
    assert len(harness.events) == 1
    proto.dataReceived(b[10:])
    assert len(harness.events) == 2 and len(responses(tr)) == 2


def test_double_crlf_ping_gets_single_crlf_pong(harness: Harness) -> None:
    proto, tr = harness.connect()
    proto.dataReceived(b"\r\n\r\n")
    assert tr.value() == b"\r\n"
    assert harness.events == []
    proto.dataReceived(b"\r\n\r\n" + options())
    assert tr.value().startswith(b"\r\n\r\nSIP/2.0 200 OK")


def test_each_connection_gets_its_own_flow(harness: Harness) -> None:
    p1, t1 = harness.connect(port=40001)
    p2, t2 = harness.connect(port=40002)
    p1.dataReceived(options("z9hG4bK1"))
    p2.dataReceived(options("z9hG4bK2"))
    peers = [e.peer for e in harness.events if isinstance(e, RequestReceived)]
    assert [p.flow for p in peers] == ["tcp-1", "tcp-2"]
    assert b"z9hG4bK1" in t1.value() and b"z9hG4bK2" not in t1.value()
    assert b"z9hG4bK2" in t2.value()


def test_closed_connection_reports_transport_error_and_flow_dies(harness: Harness) -> None:
    proto, _ = harness.connect(port=40003)
    proto.connectionLost(Failure(ConnectionDone()))
    assert harness.stack.transport_errors == [Peer("TCP", "192.0.2.7", 40003, FlowId("tcp-1"))]
    assert not harness.driver.flow_alive(FlowId("tcp-1"))
    assert harness.metrics.sample("sip_tcp_connections", {"transport": "TCP"}) == 0


def test_bad_content_length_gets_400_with_warning_and_close(harness: Harness) -> None:
    proto, tr = harness.connect()
    raw = options().replace(b"Content-Length: 0", b"Content-Length: abc")
    proto.dataReceived(raw)
    out = tr.value()
    assert out.startswith(b"SIP/2.0 400 ")
    assert b"Warning: 399 sipgw" in out and b"Content-Length" in out.split(b"\r\n")[0]
    assert tr.disconnecting, "framing is lost: the connection must close"
    assert any(isinstance(e, MalformedMessage) for e in harness.events)
    assert harness.metrics.sample("sip_parse_errors_total", {"reason": "content_length"}) == 1


def test_oversized_head_breaks_connection_without_buffering() -> None:
    h = Harness(limits=StreamLimits(max_message_size=4096))
    h.driver.listen_tcp("127.0.0.1", 5060)
    proto, tr = h.connect()
    proto.dataReceived(b"OPTIONS sip:x SIP/2.0\r\nX-Junk: " + b"a" * 5000)
    assert tr.disconnecting
    assert len(proto.parser._buf) == 0
    proto.dataReceived(b"b" * 100000)  # ignored after close, nothing buffered
    assert len(proto.parser._buf) == 0


def test_idle_connection_without_valid_message_is_closed() -> None:
    h = Harness(limits=StreamLimits(idle_timeout=60))
    h.driver.listen_tcp("127.0.0.1", 5060)
    proto, tr = h.connect()
    proto.dataReceived(b"\r\n\r\n")  # pings do not count as a valid message
    h.reactor.advance(59)
    assert not tr.disconnecting
    h.reactor.advance(1.5)
    assert tr.disconnected


def test_established_connection_survives_idle_timeout_but_not_inactivity() -> None:
    h = Harness(limits=StreamLimits(idle_timeout=60, inactivity_timeout=300))
    h.driver.listen_tcp("127.0.0.1", 5060)
    proto, tr = h.connect()
    proto.dataReceived(options())
    h.reactor.advance(200)
    proto.dataReceived(b"\r\n\r\n")  # keep-alive refreshes activity
    h.reactor.advance(200)
    assert not tr.disconnecting
    h.reactor.advance(101)
    assert tr.disconnected


def test_connection_caps_per_ip_and_total() -> None:
    h = Harness(limits=StreamLimits(max_connections=3, max_connections_per_ip=2))
    h.driver.listen_tcp("127.0.0.1", 5060)
    factory = h.reactor.tcpServers[-1][1]
    first, _ = h.connect(host="192.0.2.1", port=1)
    h.connect(host="192.0.2.1", port=2)
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 3)) is None
    h.connect(host="192.0.2.2", port=1)
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.3", 1)) is None  # total cap
    first.connectionLost(Failure(ConnectionDone()))
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4)) is not None
    assert h.metrics.sample("sip_tcp_connections_rejected_total", {"transport": "TCP"}) == 2


def test_peer_that_does_not_read_is_dropped_past_backlog() -> None:
    h = Harness(limits=StreamLimits(max_write_backlog=2000))
    h.driver.listen_tcp("127.0.0.1", 5060)
    proto, tr = h.connect()
    proto.pauseProducing()  # what Twisted does when the kernel send buffer is full
    assert tr.producerState == "paused", "reading stops while the peer does not read"
    for i in range(20):
        proto.dataReceived(options(f"z9hG4bK{i}"))
    assert tr.disconnected


def test_requests_to_a_flow_use_it_and_a_dead_flow_is_reported(harness: Harness) -> None:
    proto, tr = harness.connect(port=40010)
    flow = FlowId("tcp-1")
    req = parse_message(options("z9hG4bKout"))
    assert isinstance(req, SipRequest)
    harness.driver.send_request(req, Peer("TCP", "192.0.2.7", 5060, flow))
    assert b"z9hG4bKout" in tr.value()
    proto.connectionLost(Failure(ConnectionDone()))
    harness.stack.transport_errors.clear()
    harness.driver.send_request(req, Peer("TCP", "192.0.2.7", 5060, flow))
    assert harness.stack.transport_errors == [Peer("TCP", "192.0.2.7", 5060, flow)]
    assert harness.reactor.tcpClients == [], "a dead flow is never re-dialled (RFC 5626)"


def test_request_without_flow_opens_connection_and_flushes_queue(harness: Harness) -> None:
    req = parse_message(options("z9hG4bKnew"))
    assert isinstance(req, SipRequest)
    harness.driver.send_request(req, Peer("TCP", "198.51.100.9", 5061))
    [(host, port, factory, timeout, _)] = harness.reactor.tcpClients
    assert (host, port) == ("198.51.100.9", 5061)
    addr = IPv4Address("TCP", "198.51.100.9", 5061)
    proto = factory.buildProtocol(addr)
    tr = StringTransport(peerAddress=addr)
    proto.makeConnection(tr)
    assert b"z9hG4bKnew" in tr.value()
    # the next request to the same address reuses the new connection
    harness.driver.send_request(req, Peer("TCP", "198.51.100.9", 5061))
    assert tr.value().count(b"OPTIONS sip:") == 2
    assert len(harness.reactor.tcpClients) == 1
    # when it breaks, both the flow and the bare address it was dialled for are reported
    proto.connectionLost(Failure(ConnectionDone()))
    assert harness.stack.transport_errors == [
        Peer("TCP", "198.51.100.9", 5061, proto.flow), Peer("TCP", "198.51.100.9", 5061)]
    assert not harness.driver.flow_alive(proto.flow)


def test_failed_outbound_connection_reports_transport_error(harness: Harness) -> None:
    req = parse_message(options("z9hG4bKfail"))
    assert isinstance(req, SipRequest)
    harness.driver.send_request(req, Peer("TCP", "198.51.100.10", 5060))
    factory = harness.reactor.tcpClients[0][2]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert harness.stack.transport_errors == [Peer("TCP", "198.51.100.10", 5060)]


def test_handler_exception_does_not_break_the_connection(harness: Harness) -> None:
    calls: list[object] = []

    def bad(event: object) -> None:
        calls.append(event)
        raise RuntimeError("boom")

    harness.driver._handler = bad
    proto, tr = harness.connect()
    proto.dataReceived(options("z9hG4bK1") + options("z9hG4bK2"))
    assert len(calls) == 2 and not tr.disconnecting


def test_ipv6_peer_address(harness: Harness) -> None:
    proto, _ = harness.connect(host="2001:db8::5", port=5080)
    proto.dataReceived(options())
    [ev] = harness.events
    assert isinstance(ev, RequestReceived)
    assert ev.peer == Peer("TCP", "2001:db8::5", 5080, FlowId("tcp-1"))


def test_metrics_count_messages_both_ways(harness: Harness) -> None:
    proto, _ = harness.connect()
    proto.dataReceived(options() + options("z9hG4bK2"))
    m = harness.metrics
    assert m.sample("sip_messages_received_total", {
        "transport": "TCP", "kind": "request", "method": "OPTIONS", "status": ""}) == 2
    assert m.sample("sip_messages_sent_total", {
        "transport": "TCP", "kind": "response", "method": "", "status": "200"}) == 2
    assert m.sample("sip_tcp_connections", {"transport": "TCP"}) == 1
