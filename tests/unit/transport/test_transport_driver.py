"""UDP adapter, socket selection, the single stack timer, and metrics, on a fake clock."""

from __future__ import annotations

import pytest
from transport_harness import Harness, RecordingStack, UdpReactor, options
from twisted.internet.error import MessageLengthError
from twisted.python.failure import Failure

from gateway.ops.metrics import KNOWN_STATUSES, SipMetrics, parse_error_category, sniff_start_line
from gateway.sip.events import RequestReceived, StackEvent
from gateway.sip.message import SipRequest, SipResponse, build_response, parse_message
from gateway.sip.peer import Peer
from gateway.transport import SipDriver


def ok() -> SipResponse:
    req = parse_message(options(transport="UDP"))
    assert isinstance(req, SipRequest)
    return build_response(req, 200)


class UdpHarness:
    def __init__(self, *hosts: str) -> None:
        self.reactor = UdpReactor()
        self.stack = RecordingStack()
        self.events: list[StackEvent] = []
        self.metrics = SipMetrics()
        self.driver = SipDriver(self.stack, self._handle, self.reactor, self.metrics)
        self.ports = [self.driver.listen_udp(h, 0) for h in hosts]

    def _handle(self, event: StackEvent) -> None:
        self.events.append(event)
        if isinstance(event, RequestReceived):
            self.driver.respond(event.key, build_response(event.request, 200, to_tag="x"))

    def receive(self, host: str, data: bytes, src: tuple[str, int]) -> None:
        proto, _ = self.reactor.udp[host]
        proto.datagramReceived(data, src)  # type: ignore[attr-defined]

    def written(self, host: str) -> list[tuple[bytes, tuple[str, int]]]:
        return self.reactor.udp[host][1].written


def test_udp_request_answered_to_source_with_peer() -> None:
    h = UdpHarness("127.0.0.1")
    h.receive("127.0.0.1", options(transport="UDP"), ("127.0.0.1", 5090))
    [ev] = h.events
    assert isinstance(ev, RequestReceived)
    assert ev.peer == Peer("UDP", "127.0.0.1", 5090)
    [(data, addr)] = h.written("127.0.0.1")
    assert data.startswith(b"SIP/2.0 200 OK") and addr == ("127.0.0.1", 5090)
    assert h.driver.addresses == [("UDP", "127.0.0.1", 5060)]


def test_udp_ipv6_peer_and_family_selection() -> None:
    h = UdpHarness("127.0.0.1", "::1")
    h.receive("::1", options(transport="UDP"), ("::1", 5090, 0, 0))
    [ev] = h.events
    assert isinstance(ev, RequestReceived) and ev.peer == Peer("UDP", "::1", 5090)
    assert h.written("127.0.0.1") == []
    assert h.written("::1")[0][1] == ("::1", 5090)


def test_udp_ipv4_mapped_source_is_reported_as_ipv4_and_answered_mapped() -> None:
    h = UdpHarness("::")
    h.receive("::", options(transport="UDP"), ("::ffff:192.0.2.4", 5090, 0, 0))
    [ev] = h.events
    assert isinstance(ev, RequestReceived) and ev.peer.host == "192.0.2.4"
    assert h.written("::")[0][1] == ("::ffff:192.0.2.4", 5090)


def test_udp_loopback_peer_prefers_loopback_socket() -> None:
    h = UdpHarness("0.0.0.0", "127.0.0.1")
    h.driver.send_stateless(ok(), Peer("UDP", "127.0.0.1", 5999))
    assert h.written("127.0.0.1") and not h.written("0.0.0.0")
    h.driver.send_stateless(ok(), Peer("UDP", "192.0.2.1", 5999))
    assert h.written("0.0.0.0")


@pytest.mark.parametrize("error", [OSError(101, "unreachable"), MessageLengthError()])
def test_udp_send_failure_reported_to_stack(error: Exception) -> None:
    h = UdpHarness("127.0.0.1")
    h.reactor.udp["127.0.0.1"][1].fail_with = error
    h.receive("127.0.0.1", options(transport="UDP"), ("127.0.0.1", 5090))
    assert h.stack.transport_errors == [Peer("UDP", "127.0.0.1", 5090)]


def test_udp_without_socket_of_the_family_reports_error() -> None:
    h = UdpHarness("127.0.0.1")
    h.driver.send_stateless(ok(), Peer("UDP", "2001:db8::1", 5060))
    assert h.stack.transport_errors == [Peer("UDP", "2001:db8::1", 5060)]


def test_udp_garbage_counted_as_parse_error_and_socket_keeps_working() -> None:
    h = UdpHarness("127.0.0.1")
    h.receive("127.0.0.1", b"\x00\xff garbage", ("127.0.0.1", 5090))
    h.receive("127.0.0.1", options(transport="UDP"), ("127.0.0.1", 5090))
    assert sum(1 for d, _ in h.written("127.0.0.1") if d.startswith(b"SIP/2.0 200")) == 1
    total = sum(h.metrics.sample("sip_parse_errors_total", {"reason": r})
                for r in ("request_line", "header", "other", "via", "uri"))
    assert total == 1


def test_single_timer_is_armed_reset_and_fired() -> None:
    h = Harness()
    h.stack.timers = [10.0]
    h.driver.flush()
    calls = h.reactor.getDelayedCalls()
    assert len(calls) == 1 and calls[0].getTime() == 10.0
    h.stack.timers = [4.0, 10.0]
    h.driver.flush()
    calls = h.reactor.getDelayedCalls()
    assert len(calls) == 1 and calls[0].getTime() == 4.0, "one timer, moved earlier"
    h.driver.flush()
    assert len(h.reactor.getDelayedCalls()) == 1
    h.reactor.advance(4.0)
    assert h.stack.timer_calls == [4.0]
    calls = h.reactor.getDelayedCalls()
    assert len(calls) == 1 and calls[0].getTime() == 10.0, "re-armed at the next deadline"
    h.reactor.advance(6.0)
    assert h.stack.timer_calls == [4.0, 10.0]
    assert h.reactor.getDelayedCalls() == []


def test_timer_in_the_past_fires_immediately_and_none_cancels() -> None:
    h = Harness()
    h.reactor.advance(100)
    h.stack.timers = [50.0]
    h.driver.flush()
    [call] = h.reactor.getDelayedCalls()
    assert call.getTime() == 100.0
    h.stack.timers = []
    h.driver.flush()
    assert h.reactor.getDelayedCalls() == []


def test_stop_is_idempotent_and_closes_connections() -> None:
    h = Harness()
    h.driver.listen_tcp("127.0.0.1", 5060)
    proto, tr = h.connect()
    h.stack.timers = [5.0]
    h.driver.flush()
    d1 = h.driver.stop()
    assert tr.disconnected
    proto.connectionLost(Failure(ConnectionError()))
    fired: list[object] = []
    d1.addCallback(fired.append)
    assert fired == [None]
    assert h.driver.stop().called
    assert h.reactor.getDelayedCalls() == []
    assert h.stack.transport_errors == [], "shutdown is not a transport error"


def test_parse_error_categories_are_bounded() -> None:
    assert parse_error_category("bad Content-Length 'x'") == "content_length"
    assert parse_error_category("Content-Length 9 exceeds body of 0 bytes") == "content_length"
    assert parse_error_category("malformed request line 'x'") == "request_line"
    assert parse_error_category("missing Via header") == "via"
    assert parse_error_category("message too large") == "size"
    assert parse_error_category("bad Request-URI: nope") == "uri"
    assert parse_error_category("\x00" * 50 + "whatever a fuzzer makes") == "other"


def test_metric_labels_cannot_be_blown_up_by_random_methods() -> None:
    m = SipMetrics()
    for i in range(500):
        m.raw_received("UDP", f"M{i} sip:x SIP/2.0\r\n".encode())
        m.raw_received("UDP", f"SIP/2.0 {100 + i} X\r\n".encode())
    series = {tuple(sorted(s.labels.items())) for fam in m.registry.collect()
              if fam.name == "sip_messages_received" for s in fam.samples}
    # _total and _created samples per series: known statuses, 6 classes, one "other" method
    assert len(series) <= 2 * (len(KNOWN_STATUSES) + 6 + 1)
    assert sniff_start_line(b"\r\n\r\n") is None
    assert sniff_start_line(b"SIP/2.0 486 Busy") == ("response", "", "486")
    assert sniff_start_line(b"INVITE sip:x SIP/2.0") == ("request", "INVITE", "")
