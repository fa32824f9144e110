"""``SipStack``: the adapter-facing API, transport rules and hostile input (RFC 3261 §17, §18)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.errors import LocalProtocolError
from gateway.sip.events import (
    AckReceived,
    MalformedMessage,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionTerminated,
    TransportFailed,
)
from gateway.sip.headers import Headers
from gateway.sip.message import SipRequest, build_response, parse_message
from gateway.sip.peer import FlowId, Peer
from gateway.sip.stack import SipStack, StackConfig, new_branch, new_tag
from gateway.sip.timers import TimerConfig
from gateway.sip.uri import Uri

PHONE = Peer("UDP", "203.0.113.9", 61000)


def make_stack(**kw: Any) -> SipStack:
    return SipStack(StackConfig(timers=TimerConfig(), via_hosts={
        "UDP": ("198.51.100.1", 5060), "TCP": ("198.51.100.1", 5060),
        "TLS": ("2001:db8::5", 5061)}, **kw))


def register(branch: str = "z9hG4bKr1", via: str = "10.0.0.5:5060;rport",
             transport: str = "UDP", method: str = "REGISTER") -> bytes:
    return (
        f"{method} sip:198.51.100.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {via};branch={branch}\r\n"
        "Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKinner\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@198.51.100.1>;tag=f1\r\n"
        "To: <sip:1001@198.51.100.1>\r\n"
        "Call-ID: reg-1@10.0.0.5\r\n"
        f"CSeq: 1 {method}\r\n"
        "Contact: <sip:1001@10.0.0.5:5060>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def of_type(events: Sequence[object], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def outgoing(method: str = "OPTIONS") -> SipRequest:
    return SipRequest(method=method, uri=Uri.parse("sip:203.0.113.9:61000"), headers=Headers([
        ("Max-Forwards", "70"), ("From", "<sip:gw@198.51.100.1>;tag=g1"),
        ("To", "<sip:203.0.113.9>"), ("Call-ID", f"o-{new_tag()}"), ("CSeq", f"1 {method}")]))


# -- hostile input ---------------------------------------------------------------------

def test_malformed_request_gets_400_with_warning_to_the_peer() -> None:
    stack = make_stack()
    bad = register().replace(b"Max-Forwards: 70", b"Max-Forwards: seventy")
    stack.receive_datagram(bad, PHONE, 0.0)
    [(data, peer)] = stack.datagrams_to_send()
    assert peer == PHONE
    resp = parse_message(data)
    assert not resp.is_request and resp.status == 400  # type: ignore[union-attr]
    assert "Max-Forwards" in (resp.headers.get("Warning") or "")
    assert resp.headers.get("Call-ID") == "reg-1@10.0.0.5"
    [ev] = stack.events()
    assert isinstance(ev, MalformedMessage) and ev.is_request and "Max-Forwards" in ev.reason


def test_malformed_response_is_dropped_with_an_event() -> None:
    stack = make_stack()
    stack.receive_datagram(b"SIP/2.0 200 OK\r\nVia: garbage\r\n\r\n", PHONE, 0.0)
    assert stack.datagrams_to_send() == []
    [ev] = stack.events()
    assert isinstance(ev, MalformedMessage) and ev.is_request is False


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    stack = make_stack()
    stack.receive_datagram(data, PHONE, 0.0)
    stack.receive_datagram(register()[: len(data) % 400] + data, PHONE, 0.0)
    stack.handle_timer(100.0)
    for d, _ in stack.datagrams_to_send():
        assert d.startswith(b"SIP/2.0 ")


def test_crlf_keepalive_is_ignored() -> None:
    stack = make_stack()
    stack.receive_datagram(b"\r\n\r\n", PHONE, 0.0)
    assert stack.events() == [] and stack.datagrams_to_send() == []


def test_request_with_unparsable_top_via_is_dropped() -> None:
    stack = make_stack()
    req = SipRequest(method="OPTIONS", uri=Uri.parse("sip:198.51.100.1"), headers=Headers([
        ("Via", "SIP/2.0/UDP"), ("From", "<sip:a@b>;tag=1"), ("To", "<sip:b@c>"),
        ("Call-ID", "x"), ("CSeq", "1 OPTIONS")]))
    stack.receive_message(req, PHONE, 0.0)
    [ev] = stack.events()
    assert isinstance(ev, MalformedMessage) and "Via" in ev.reason
    assert stack.datagrams_to_send() == []


def test_parse_failure_from_a_stream_adapter() -> None:
    stack = make_stack()
    tcp = Peer("TCP", "203.0.113.9", 40000, FlowId("f9"))
    try:
        parse_message(register().replace(b"Call-ID", b"X-Nothing"), stream=True)
    except Exception as failure:  # noqa: BLE001 - ParseFailure expected
        from gateway.sip.message import ParseFailure
        assert isinstance(failure, ParseFailure)
        stack.receive_parse_failure(failure, tcp, 0.0)
    [(data, peer)] = stack.datagrams_to_send()
    assert peer == tcp and data.startswith(b"SIP/2.0 400")


# -- incoming requests: Via stamping and response routing ------------------------------

def test_received_and_rport_stamped_and_response_routed_to_the_source() -> None:
    stack = make_stack(server_header="sipgw-test")
    stack.receive_datagram(register(), PHONE, 0.0)
    [ev] = stack.events()
    assert isinstance(ev, RequestReceived)
    top = ev.request.top_via
    assert top.received == "203.0.113.9" and top.rport == 61000
    assert len(ev.request.vias) == 2 and ev.request.vias[1].branch == "z9hG4bKinner"
    stack.respond(ev.key, build_response(ev.request, 200, to_tag="t"), 0.1)
    [(data, peer)] = stack.datagrams_to_send()
    assert peer == PHONE
    resp = parse_message(data)
    assert resp.headers.get_all("Via")[0] == \
        "SIP/2.0/UDP 10.0.0.5:5060;rport=61000;branch=z9hG4bKr1;received=203.0.113.9"
    assert resp.headers.get("Server") == "sipgw-test"


def test_response_without_rport_goes_to_received_and_sent_by_port() -> None:
    stack = make_stack()
    stack.receive_datagram(register(via="10.0.0.5:5070"), PHONE, 0.0)
    [ev] = of_type(stack.events(), RequestReceived)
    stack.respond(ev.key, build_response(ev.request, 200, to_tag="t"), 0.1)
    [(_, peer)] = stack.datagrams_to_send()
    assert peer == Peer("UDP", "203.0.113.9", 5070)


def test_tcp_response_uses_the_flow_and_falls_back_when_it_dies() -> None:
    stack = make_stack()
    tcp = Peer("TCP", "203.0.113.9", 40000, FlowId("f1"))
    stack.receive_datagram(register(transport="TCP", method="INVITE").replace(
        b"CSeq: 1 INVITE", b"CSeq: 1 INVITE"), tcp, 0.0)
    [ev] = of_type(stack.events(), RequestReceived)
    stack.respond(ev.key, build_response(ev.request, 486, to_tag="t"), 0.1)
    assert [p for _, p in stack.datagrams_to_send()] == [tcp, tcp]
    # §18.2.2: the flow died: a new connection to received + sent-by port gets the final
    stack.transport_error(tcp, 0.2)
    [(data, peer)] = stack.datagrams_to_send()
    assert peer == Peer("TCP", "203.0.113.9", 5060) and data.startswith(b"SIP/2.0 486")
    assert stack.events() == []
    # and when that fails as well the TU hears about it
    stack.transport_error(Peer("TCP", "203.0.113.9", 5060), 0.3)
    assert stack.events() == [TransportFailed(ev.key), TransactionTerminated(ev.key)]


def test_ack_for_2xx_has_no_transaction_and_reaches_the_tu() -> None:
    stack = make_stack()
    stack.receive_datagram(register(method="ACK", branch="z9hG4bKnew"), PHONE, 0.0)
    [ev] = stack.events()
    assert isinstance(ev, AckReceived)
    assert stack.datagrams_to_send() == [] and stack.transaction_count == 0


# -- outgoing requests -----------------------------------------------------------------

def test_send_request_adds_our_via_with_fresh_branch_and_rport() -> None:
    stack = make_stack()
    req = outgoing()
    key = stack.send_request(req, PHONE, 0.0)
    [(data, peer)] = stack.datagrams_to_send()
    assert peer == PHONE
    sent = parse_message(data)
    v = sent.top_via
    assert (v.transport, v.host, v.port, v.has_rport) == ("UDP", "198.51.100.1", 5060, True)
    assert v.branch is not None and v.branch.startswith("z9hG4bK") and len(v.branch) > 16
    resp = build_response(sent, 200, to_tag="p")  # type: ignore[arg-type]
    stack.receive_datagram(bytes(resp), PHONE, 0.1)
    [ev] = stack.events()
    assert isinstance(ev, ResponseReceived) and ev.key == key
    assert stack.send_request(outgoing(), PHONE, 0.2) != key


def test_send_request_ipv6_via_is_bracketed() -> None:
    stack = make_stack()
    stack.send_request(outgoing(), Peer("TLS", "2001:db8::9", 5061), 0.0)
    [(data, _)] = stack.datagrams_to_send()
    assert b"Via: SIP/2.0/TLS [2001:db8::5]:5061;branch=z9hG4bK" in data


def test_send_request_keeps_a_tu_via_and_refuses_misuse() -> None:
    stack = make_stack()
    req = outgoing()
    req.headers.prepend("Via", "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKmine")
    key = stack.send_request(req, PHONE, 0.0)
    assert "z9hG4bKmine" in key
    with pytest.raises(LocalProtocolError):
        stack.send_request(req, PHONE, 0.0)  # same branch twice
    with pytest.raises(LocalProtocolError):
        stack.send_request(outgoing("ACK"), PHONE, 0.0)
    with pytest.raises(LocalProtocolError):
        stack.send_request(outgoing(), Peer("SCTP", "192.0.2.1", 5060), 0.0)


def test_send_ack_2xx_and_stateless() -> None:
    stack = make_stack()
    ack = outgoing("ACK")
    stack.send_ack_2xx(ack, PHONE)
    stack.send_stateless(outgoing("OPTIONS"), PHONE)
    out = stack.datagrams_to_send()
    assert out[0][0].startswith(b"ACK ") and b"branch=z9hG4bK" in out[0][0]
    assert out[1][0].startswith(b"OPTIONS ")
    assert stack.transaction_count == 0 and stack.next_timer() is None


def test_stray_response() -> None:
    stack = make_stack()
    resp = build_response(parse_message(register()), 200, to_tag="x")  # type: ignore[arg-type]
    stack.receive_datagram(bytes(resp), PHONE, 0.0)
    [ev] = stack.events()
    assert isinstance(ev, StrayResponse)


def test_transport_error_fails_client_transactions_on_that_flow_only() -> None:
    stack = make_stack()
    f1 = Peer("TCP", "203.0.113.9", 40000, FlowId("f1"))
    f2 = Peer("TCP", "203.0.113.9", 40001, FlowId("f2"))
    k1 = stack.send_request(outgoing(), f1, 0.0)
    k2 = stack.send_request(outgoing(), f2, 0.0)
    k3 = stack.send_request(outgoing(), Peer("TCP", "192.0.2.1", 5060), 0.0)
    stack.transport_error(f1, 0.1)
    assert stack.events() == [TransportFailed(k1), TransactionTerminated(k1)]
    stack.transport_error(Peer("TCP", "192.0.2.1", 5060), 0.1)
    assert stack.events() == [TransportFailed(k3), TransactionTerminated(k3)]
    assert stack.transaction(k2) is not None


def test_helpers() -> None:
    assert new_branch().startswith("z9hG4bK") and new_branch() != new_branch()
    assert new_tag() != new_tag() and len(new_tag()) >= 8


# -- scale ------------------------------------------------------------------------------

def test_thousands_of_transactions_one_timer_heap() -> None:
    stack = make_stack()
    n = 5000
    keys = []
    for i in range(n):
        stack.receive_datagram(register(branch=f"z9hG4bKk{i}"), PHONE, i * 0.001)
        [ev] = of_type(stack.events(), RequestReceived)
        keys.append((ev.key, ev.request))
    for i, (key, req) in enumerate(keys):
        stack.respond(key, build_response(req, 200, to_tag="t"), 5.0 + i * 0.001)
    assert len(stack.datagrams_to_send()) == n
    assert stack.next_timer() == pytest.approx(5.0 + 32.0)
    stack.handle_timer(5.0 + 32.0 + n * 0.001)
    assert len(of_type(stack.events(), TransactionTerminated)) == n
    assert stack.transaction_count == 0 and stack.next_timer() is None


def test_register_challenge_round_trip_cost() -> None:
    """Per REGISTER (request in, response out) the stack itself adds tens of microseconds.

    Parsing and building the messages are the parser's cost and are done outside
    the timed loop; best of three runs, with a generous bound for a loaded box.
    """
    n = 3000
    best = 1.0
    for _ in range(3):
        msgs = [parse_message(register(branch=f"z9hG4bKp{i}")) for i in range(n)]
        resps = [build_response(m, 401, to_tag="t") for m in msgs]  # type: ignore[arg-type]
        stack = make_stack()
        start = time.perf_counter()
        for i in range(n):
            stack.receive_message(msgs[i], PHONE, i * 1e-4)
            for ev in of_type(stack.events(), RequestReceived):
                stack.respond(ev.key, resps[i], i * 1e-4)
            stack.datagrams_to_send()
        best = min(best, (time.perf_counter() - start) / n)
        assert stack.transaction_count == n
    assert best < 150e-6, f"{best * 1e6:.0f} µs per REGISTER transaction"


def test_core_imports_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('twisted', 'asyncio', 'redis'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import gateway.sip.stack, gateway.sip.transaction, gateway.sip.routing\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
