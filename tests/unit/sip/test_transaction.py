"""The four transaction machines and their timers (RFC 3261 §17, RFC 6026), UDP and TCP.

Pure tests: messages in, bytes and events out, ``now`` set by hand. The
machines are driven through ``SipStack``, their real host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.events import (
    AckReceived,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionKey,
    TransactionTerminated,
    TransactionTimeout,
)
from gateway.sip.headers import Headers
from gateway.sip.message import SipRequest, SipResponse, build_response, parse_message
from gateway.sip.peer import FlowId, Peer
from gateway.sip.stack import SipStack, StackConfig
from gateway.sip.timers import TimerConfig
from gateway.sip.transaction import State, build_ack, build_cancel
from gateway.sip.uri import Uri

UDP_PHONE = Peer("UDP", "192.0.2.10", 5060)
TCP_PHONE = Peer("TCP", "192.0.2.10", 40001, FlowId("tcp-1"))
VIA_HOSTS = {"UDP": ("198.51.100.1", 5060), "TCP": ("198.51.100.1", 5060)}


def make_stack(**kw: object) -> SipStack:
    return SipStack(StackConfig(timers=TimerConfig(t1=0.5, t2=4.0, t4=5.0),
                                via_hosts=dict(VIA_HOSTS), **kw))  # type: ignore[arg-type]


def request_bytes(method: str = "INVITE", *, branch: str | None = "z9hG4bKb1",
                  transport: str = "UDP", via_host: str = "192.0.2.10", via_port: int = 5060,
                  cseq: int = 1, cseq_method: str | None = None, to_tag: str | None = None,
                  call_id: str = "call-1@192.0.2.10", from_tag: str = "ft1",
                  ruri: str = "sip:bob@198.51.100.1", extra: str = "") -> bytes:
    bparam = f";branch={branch}" if branch is not None else ""
    tt = f";tag={to_tag}" if to_tag else ""
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {via_host}:{via_port}{bparam}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:alice@198.51.100.1>;tag={from_tag}\r\n"
        f"To: <sip:bob@198.51.100.1>{tt}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        f"{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def outgoing(method: str = "INVITE", *, route: bool = False) -> SipRequest:
    """A request as the TU hands it to the stack: no Via yet."""
    items = [("Max-Forwards", "70"), ("From", "<sip:gw@198.51.100.1>;tag=gwtag"),
             ("To", "<sip:alice@192.0.2.10>"), ("Call-ID", "out-1@198.51.100.1"),
             ("CSeq", f"7 {method}")]
    if route:
        items += [("Route", "<sip:proxy.example;lr>"), ("Route", "<sip:p2.example;lr>")]
    return SipRequest(method=method, uri=Uri.parse("sip:alice@192.0.2.10"),
                      headers=Headers(items))


def response_to(request: SipRequest, status: int, to_tag: str | None = "uas1") -> bytes:
    return bytes(build_response(request, status, to_tag=to_tag))


def sent(stack: SipStack) -> list[bytes]:
    return [d for d, _ in stack.datagrams_to_send()]


def first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode()


def of_type(events: Sequence[object], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def run_until(stack: SipStack, until: float) -> list[float]:
    """Fire timers up to ``until``; return the times at which something was sent."""
    times: list[float] = []
    while True:
        t = stack.next_timer()
        if t is None or t > until:
            return times
        stack.handle_timer(t)
        if stack.datagrams_to_send():
            times.append(t)


def start_client(stack: SipStack, method: str, peer: Peer) -> tuple[TransactionKey, SipRequest]:
    req = outgoing(method)
    key = stack.send_request(req, peer, 0.0)
    assert len(sent(stack)) == 1
    return key, req


# -- INVITE client (§17.1.1) -----------------------------------------------------------

def test_invite_client_udp_retransmits_doubling_without_cap_then_timer_b() -> None:
    stack = make_stack()
    key, _ = start_client(stack, "INVITE", UDP_PHONE)
    # Timer A: T1, 2T1, 4T1 … not capped at T2 for INVITE (§17.1.1.2)
    assert run_until(stack, 31.9) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert stack.events() == []
    # Timer B = 64*T1
    assert stack.next_timer() == 32.0
    stack.handle_timer(32.0)
    assert stack.events() == [TransactionTimeout(key), TransactionTerminated(key)]
    assert stack.next_timer() is None and stack.transaction_count == 0


def test_invite_client_tcp_does_not_retransmit_and_times_out_at_b() -> None:
    stack = make_stack()
    key, _ = start_client(stack, "INVITE", TCP_PHONE)
    assert stack.next_timer() == 32.0
    stack.handle_timer(32.0)
    assert sent(stack) == []
    assert stack.events()[0] == TransactionTimeout(key)


def test_invite_client_provisional_stops_retransmission() -> None:
    stack = make_stack()
    key, req = start_client(stack, "INVITE", UDP_PHONE)
    stack.receive_datagram(response_to(req, 180), UDP_PHONE, 0.2)
    [ev] = stack.events()
    assert isinstance(ev, ResponseReceived) and ev.key == key and ev.response.status == 180
    assert stack.transaction(key).state is State.PROCEEDING  # type: ignore[union-attr]
    assert run_until(stack, 100.0) == []
    assert stack.transaction(key) is not None  # no Timer B in Proceeding


@pytest.mark.parametrize("peer,d", [(UDP_PHONE, 32.0), (TCP_PHONE, 0.0)])
def test_invite_client_non2xx_acks_and_timer_d(peer: Peer, d: float) -> None:
    stack = make_stack()
    key, req = start_client(stack, "INVITE", peer)
    stack.receive_datagram(response_to(req, 100, None), peer, 0.1)
    stack.receive_datagram(response_to(req, 486), peer, 1.0)
    [ack] = sent(stack)
    assert first_line(ack) == "ACK sip:alice@192.0.2.10 SIP/2.0"
    events = stack.events()
    assert [e.response.status for e in of_type(events, ResponseReceived)] == [100, 486]
    if d == 0.0:
        assert events[-1] == TransactionTerminated(key)
        return
    # a retransmitted 486 is answered with the same ACK and not passed up (§17.1.1.2)
    stack.receive_datagram(response_to(req, 486), peer, 2.0)
    assert sent(stack) == [ack]
    assert stack.events() == []
    assert stack.next_timer() == pytest.approx(1.0 + d)
    stack.handle_timer(1.0 + d)
    assert stack.events() == [TransactionTerminated(key)]


def test_ack_for_non2xx_is_built_per_17_1_1_3() -> None:
    stack = make_stack()
    req = outgoing("INVITE", route=True)
    stack.send_request(req, UDP_PHONE, 0.0)
    stack.datagrams_to_send()
    stack.receive_datagram(response_to(req, 603, "refuser"), UDP_PHONE, 0.1)
    [raw] = sent(stack)
    ack = parse_message(raw)
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.uri == req.uri
    assert ack.headers.get_all("Via") == [req.headers.get_all("Via")[0]]
    assert ack.top_via.branch == req.top_via.branch
    assert ack.call_id == req.call_id
    assert ack.headers.get("From") == req.headers.get("From")
    assert ack.to.tag == "refuser" and ack.to.uri == req.to.uri
    assert (ack.cseq.number, ack.cseq.method) == (7, "ACK")
    assert ack.headers.get_all("Route") == ["<sip:proxy.example;lr>", "<sip:p2.example;lr>"]
    # the builder alone gives the same message
    resp = parse_message(response_to(req, 603, "refuser"))
    assert isinstance(resp, SipResponse)
    assert bytes(build_ack(req, resp)) == raw


def test_invite_client_2xx_accepted_passes_retransmissions_up_until_timer_m() -> None:
    stack = make_stack()
    key, req = start_client(stack, "INVITE", UDP_PHONE)
    ok = response_to(req, 200)
    stack.receive_datagram(ok, UDP_PHONE, 1.0)
    assert stack.transaction(key).state is State.ACCEPTED  # type: ignore[union-attr]
    assert sent(stack) == []  # the ACK for a 2xx is the TU's (§13.2.2.4)
    # RFC 6026 §8.4: 2xx retransmissions and forked 2xx still go up
    stack.receive_datagram(ok, UDP_PHONE, 2.0)
    stack.receive_datagram(response_to(req, 200, "fork2"), UDP_PHONE, 2.5)
    evs = stack.events()
    assert len(of_type(evs, ResponseReceived)) == 3
    assert stack.next_timer() == pytest.approx(33.0)  # Timer M = 64*T1 from the first 2xx
    stack.handle_timer(33.0)
    assert stack.events() == [TransactionTerminated(key)]
    stack.receive_datagram(ok, UDP_PHONE, 34.0)
    [stray] = stack.events()
    assert isinstance(stray, StrayResponse) and stray.response.status == 200


# -- non-INVITE client (§17.1.2) -------------------------------------------------------

def test_non_invite_client_udp_timer_e_capped_at_t2_then_timer_f() -> None:
    stack = make_stack()
    key, _ = start_client(stack, "OPTIONS", UDP_PHONE)
    assert run_until(stack, 31.9) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    stack.handle_timer(32.0)
    assert stack.events() == [TransactionTimeout(key), TransactionTerminated(key)]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    stack = make_stack()
    key, req = start_client(stack, "OPTIONS", UDP_PHONE)
    assert run_until(stack, 0.6) == [0.5]
    stack.receive_datagram(response_to(req, 100, None), UDP_PHONE, 0.7)
    assert stack.transaction(key).state is State.PROCEEDING  # type: ignore[union-attr]
    # the already-armed E fires at 1.5, then every T2
    assert run_until(stack, 14.0) == [1.5, 5.5, 9.5, 13.5]


@pytest.mark.parametrize("peer,k", [(UDP_PHONE, 5.0), (TCP_PHONE, 0.0)])
def test_non_invite_client_final_and_timer_k(peer: Peer, k: float) -> None:
    stack = make_stack()
    key, req = start_client(stack, "REGISTER", peer)
    stack.receive_datagram(response_to(req, 401), peer, 0.3)
    evs = stack.events()
    assert isinstance(evs[0], ResponseReceived) and evs[0].response.status == 401
    if k == 0.0:
        assert evs[1:] == [TransactionTerminated(key)]
        return
    assert stack.transaction(key).state is State.COMPLETED  # type: ignore[union-attr]
    stack.receive_datagram(response_to(req, 401), peer, 1.0)  # absorbed
    assert stack.events() == [] and sent(stack) == []
    assert stack.next_timer() == pytest.approx(5.3)
    stack.handle_timer(5.3)
    assert stack.events() == [TransactionTerminated(key)]


# -- INVITE server (§17.2.1) -----------------------------------------------------------

def receive_invite(stack: SipStack, peer: Peer = UDP_PHONE, now: float = 0.0,
                   **kw: object) -> RequestReceived:
    transport = "TCP" if peer.reliable else "UDP"
    stack.receive_datagram(request_bytes("INVITE", transport=transport, **kw),  # type: ignore[arg-type]
                           peer, now)
    [ev] = [e for e in stack.events() if isinstance(e, RequestReceived)]
    return ev


def test_invite_server_sends_100_and_answers_retransmissions_with_last_provisional() -> None:
    stack = make_stack()
    ev = receive_invite(stack)
    [trying] = sent(stack)
    assert first_line(trying) == "SIP/2.0 100 Trying"
    stack.receive_datagram(request_bytes("INVITE"), UDP_PHONE, 0.4)
    assert sent(stack) == [trying] and stack.events() == []
    stack.respond(ev.key, build_response(ev.request, 180, to_tag="t1"), 0.5)
    [ringing] = sent(stack)
    stack.receive_datagram(request_bytes("INVITE"), UDP_PHONE, 1.0)
    assert sent(stack) == [ringing] and stack.events() == []
    assert stack.next_timer() is None  # no timers in Proceeding


def test_invite_server_without_auto_100() -> None:
    stack = make_stack(auto_100_trying=False)
    receive_invite(stack)
    assert sent(stack) == []


def test_invite_server_udp_timer_g_until_timer_h() -> None:
    stack = make_stack()
    ev = receive_invite(stack)
    stack.datagrams_to_send()
    stack.respond(ev.key, build_response(ev.request, 486, to_tag="t1"), 1.0)
    [busy] = sent(stack)
    # Timer G: T1, 2T1 … capped at T2 (§17.2.1)
    assert run_until(stack, 32.9) == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    stack.handle_timer(33.0)
    assert stack.events() == [TransactionTimeout(ev.key), TransactionTerminated(ev.key)]
    assert stack.next_timer() is None


def test_invite_server_retransmitted_invite_in_completed_gets_final_again() -> None:
    stack = make_stack()
    ev = receive_invite(stack)
    stack.respond(ev.key, build_response(ev.request, 404, to_tag="t1"), 1.0)
    stack.datagrams_to_send()
    stack.receive_datagram(request_bytes("INVITE"), UDP_PHONE, 1.2)
    [again] = sent(stack)
    assert first_line(again) == "SIP/2.0 404 Not Found"


def test_invite_server_ack_confirms_and_timer_i_absorbs_ack_retransmissions() -> None:
    stack = make_stack()
    ev = receive_invite(stack)
    stack.respond(ev.key, build_response(ev.request, 486, to_tag="t1"), 1.0)
    stack.datagrams_to_send()
    ack = request_bytes("ACK", cseq_method="ACK", to_tag="t1")
    stack.receive_datagram(ack, UDP_PHONE, 1.2)
    assert stack.transaction(ev.key).state is State.CONFIRMED  # type: ignore[union-attr]
    stack.receive_datagram(ack, UDP_PHONE, 2.0)
    assert stack.events() == []  # both ACKs absorbed
    assert run_until(stack, 6.1) == []  # no more Timer G
    assert stack.events() == []
    assert stack.next_timer() == pytest.approx(6.2)
    stack.handle_timer(6.2)
    assert stack.events() == [TransactionTerminated(ev.key)]  # Timer I = T4 after the ACK


def test_invite_server_tcp_no_timer_g_and_ack_terminates() -> None:
    stack = make_stack()
    ev = receive_invite(stack, TCP_PHONE)
    stack.respond(ev.key, build_response(ev.request, 486, to_tag="t1"), 1.0)
    out = stack.datagrams_to_send()
    assert [p for _, p in out] == [TCP_PHONE, TCP_PHONE]  # 100 and 486 on the same flow
    assert stack.next_timer() == pytest.approx(33.0)  # only Timer H
    stack.receive_datagram(request_bytes("ACK", cseq_method="ACK", to_tag="t1",
                                         transport="TCP"), TCP_PHONE, 1.5)
    assert stack.events() == [TransactionTerminated(ev.key)]  # Timer I = 0
    assert stack.next_timer() is None


def test_invite_server_tcp_timer_h_without_ack() -> None:
    stack = make_stack()
    ev = receive_invite(stack, TCP_PHONE)
    stack.respond(ev.key, build_response(ev.request, 500, to_tag="t1"), 0.0)
    stack.handle_timer(32.0)
    assert stack.events() == [TransactionTimeout(ev.key), TransactionTerminated(ev.key)]


def test_invite_server_2xx_accepted_timer_l() -> None:
    stack = make_stack()
    ev = receive_invite(stack)
    ok = build_response(ev.request, 200, to_tag="t1")
    stack.respond(ev.key, ok, 1.0)
    stack.datagrams_to_send()
    assert stack.transaction(ev.key).state is State.ACCEPTED  # type: ignore[union-attr]
    # RFC 6026 §8.7: retransmitted INVITE absorbed; the TU's 2xx retransmission goes out
    stack.receive_datagram(request_bytes("INVITE"), UDP_PHONE, 1.5)
    assert sent(stack) == [] and stack.events() == []
    stack.respond(ev.key, ok, 1.5)
    assert len(sent(stack)) == 1
    # an ACK that matches the transaction in Accepted goes to the TU
    stack.receive_datagram(request_bytes("ACK", cseq_method="ACK", to_tag="t1"), UDP_PHONE, 1.6)
    [ack] = stack.events()
    assert isinstance(ack, AckReceived)
    assert stack.next_timer() == pytest.approx(33.0)
    stack.handle_timer(33.0)
    assert stack.events() == [TransactionTerminated(ev.key)]


def test_invite_server_discards_responses_after_final() -> None:
    stack = make_stack()
    ev = receive_invite(stack)
    stack.respond(ev.key, build_response(ev.request, 486, to_tag="t1"), 1.0)
    stack.datagrams_to_send()
    stack.respond(ev.key, build_response(ev.request, 180, to_tag="t1"), 1.1)
    stack.respond(ev.key, build_response(ev.request, 200, to_tag="t1"), 1.1)
    assert sent(stack) == []


# -- non-INVITE server (§17.2.2) -------------------------------------------------------

@pytest.mark.parametrize("peer,j", [(UDP_PHONE, 32.0), (TCP_PHONE, 0.0)])
def test_non_invite_server_retransmissions_and_timer_j(peer: Peer, j: float) -> None:
    stack = make_stack()
    transport = "TCP" if peer.reliable else "UDP"
    raw = request_bytes("REGISTER", transport=transport)
    stack.receive_datagram(raw, peer, 0.0)
    [ev] = stack.events()
    assert isinstance(ev, RequestReceived)
    stack.receive_datagram(raw, peer, 0.5)  # Trying: absorbed, nothing to send yet
    assert stack.events() == [] and sent(stack) == []
    stack.respond(ev.key, build_response(ev.request, 200, to_tag="t1"), 1.0)
    [ok] = sent(stack)
    if j == 0.0:
        assert stack.events() == [TransactionTerminated(ev.key)]
        return
    stack.receive_datagram(raw, peer, 2.0)
    assert sent(stack) == [ok] and stack.events() == []
    stack.respond(ev.key, build_response(ev.request, 500, to_tag="t1"), 2.0)  # discarded
    assert sent(stack) == []
    assert stack.next_timer() == pytest.approx(33.0)
    stack.handle_timer(33.0)
    assert stack.events() == [TransactionTerminated(ev.key)]
    # after Timer J the same request is new again
    stack.receive_datagram(raw, peer, 34.0)
    assert isinstance(stack.events()[0], RequestReceived)


def test_non_invite_server_provisional_resent_on_retransmission() -> None:
    stack = make_stack()
    raw = request_bytes("SUBSCRIBE")
    stack.receive_datagram(raw, UDP_PHONE, 0.0)
    [ev] = stack.events()
    assert isinstance(ev, RequestReceived)
    stack.respond(ev.key, build_response(ev.request, 100), 0.1)
    [trying] = sent(stack)
    stack.receive_datagram(raw, UDP_PHONE, 0.6)
    assert sent(stack) == [trying]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=31.9), max_size=12),
       st.floats(min_value=0, max_value=31.9))
def test_any_interleaving_of_retransmissions_yields_one_request(
        arrivals: list[float], respond_at: float) -> None:
    """However retransmissions and the TU's answer interleave inside the Timer J window,
    the TU sees the request once and every retransmission after the answer is answered."""
    stack = make_stack()
    raw = request_bytes("REGISTER")
    stack.receive_datagram(raw, UDP_PHONE, 0.0)
    [ev] = stack.events()
    assert isinstance(ev, RequestReceived)
    times = sorted([(t, "req") for t in arrivals] + [(respond_at, "resp")])
    answered = False
    for t, what in times:
        stack.handle_timer(t)
        if what == "resp":
            stack.respond(ev.key, build_response(ev.request, 200, to_tag="x"), t)
            assert len(sent(stack)) == 1
            answered = True
        else:
            stack.receive_datagram(raw, UDP_PHONE, t)
            out = sent(stack)
            assert len(out) == (1 if answered else 0)
        assert not of_type(stack.events(), RequestReceived)


# -- CANCEL (§9.2) and RFC 2543 matching (§17.2.3) -------------------------------------

def test_cancel_matches_its_invite_and_is_its_own_transaction() -> None:
    stack = make_stack()
    ev = receive_invite(stack)
    stack.datagrams_to_send()
    stack.receive_datagram(request_bytes("CANCEL"), UDP_PHONE, 0.5)
    [cev] = stack.events()
    assert isinstance(cev, RequestReceived) and cev.cancels == ev.key
    assert cev.key != ev.key
    stack.respond(cev.key, build_response(cev.request, 200, to_tag="t1"), 0.6)
    stack.respond(ev.key, build_response(ev.request, 487, to_tag="t1"), 0.6)
    assert [first_line(d) for d in sent(stack)] == ["SIP/2.0 200 OK",
                                                     "SIP/2.0 487 Request Terminated"]


def test_cancel_without_invite_gets_481_and_no_event() -> None:
    stack = make_stack()
    raw = request_bytes("CANCEL", branch="z9hG4bKnothere")
    stack.receive_datagram(raw, UDP_PHONE, 0.0)
    [resp] = sent(stack)
    assert first_line(resp) == "SIP/2.0 481 Call/Transaction Does Not Exist"
    assert not of_type(stack.events(), RequestReceived)
    stack.receive_datagram(raw, UDP_PHONE, 0.5)  # retransmitted CANCEL: same 481
    assert sent(stack) == [resp]


def test_cancel_with_other_branch_does_not_match() -> None:
    stack = make_stack()
    receive_invite(stack)
    stack.datagrams_to_send()
    stack.receive_datagram(request_bytes("CANCEL", branch="z9hG4bKother"), UDP_PHONE, 0.5)
    assert first_line(sent(stack)[0]).startswith("SIP/2.0 481")


def test_rfc2543_matching_without_magic_cookie() -> None:
    stack = make_stack()
    ev = receive_invite(stack, branch=None)
    [trying] = sent(stack)
    stack.receive_datagram(request_bytes("INVITE", branch=None), UDP_PHONE, 0.5)
    assert sent(stack) == [trying] and stack.events() == []
    # a different Call-ID is another transaction
    other = receive_invite(stack, branch=None, call_id="call-2@x", now=0.6)
    assert other.key != ev.key
    stack.datagrams_to_send()
    # a CANCEL matches by the same fields (§9.2)
    stack.receive_datagram(request_bytes("CANCEL", branch=None), UDP_PHONE, 0.7)
    [cev] = stack.events()
    assert isinstance(cev, RequestReceived) and cev.cancels == ev.key
    stack.respond(ev.key, build_response(ev.request, 486, to_tag="mine"), 1.0)
    stack.datagrams_to_send()
    # an ACK with another To tag is not ours (an ACK for someone's 2xx)
    stack.receive_datagram(request_bytes("ACK", branch=None, cseq_method="ACK",
                                         to_tag="other"), UDP_PHONE, 1.1)
    assert isinstance(stack.events()[0], AckReceived)
    stack.receive_datagram(request_bytes("ACK", branch=None, cseq_method="ACK",
                                         to_tag="mine"), UDP_PHONE, 1.2)
    assert stack.events() == []
    assert stack.transaction(ev.key).state is State.CONFIRMED  # type: ignore[union-attr]


def test_branch_match_needs_same_sent_by_and_method() -> None:
    stack = make_stack()
    receive_invite(stack)
    # same branch from another sent-by: a different transaction (§17.2.3)
    ev2 = receive_invite(stack, via_host="192.0.2.99", now=0.1)
    assert ev2.request.top_via.host == "192.0.2.99"
    # same branch, other method: its own transaction
    stack.receive_datagram(request_bytes("OPTIONS"), UDP_PHONE, 0.2)
    assert of_type(stack.events(), RequestReceived)


def test_build_cancel_copies_the_invite_identity() -> None:
    stack = make_stack()
    req = outgoing("INVITE", route=True)
    stack.send_request(req, UDP_PHONE, 0.0)
    cancel = build_cancel(req)
    assert cancel.headers.get_all("Via") == req.headers.get_all("Via")[:1]
    assert (cancel.cseq.number, cancel.cseq.method) == (7, "CANCEL")
    assert cancel.uri == req.uri and cancel.call_id == req.call_id
    assert cancel.headers.get_all("Route") == req.headers.get_all("Route")
    key = stack.send_request(cancel, UDP_PHONE, 0.1)
    assert key != stack.send_request(outgoing("OPTIONS"), UDP_PHONE, 0.1)
    # responses to INVITE and CANCEL find their own transactions (CSeq method)
    stack.datagrams_to_send()
    stack.receive_datagram(response_to(cancel, 200), UDP_PHONE, 0.2)
    [ev] = stack.events()
    assert isinstance(ev, ResponseReceived) and ev.key == key


# -- §13.3.1.4 2xx retransmission done for the UAS core --------------------------------

@pytest.mark.parametrize("peer", [UDP_PHONE, TCP_PHONE])
def test_2xx_retransmitted_until_the_ack_with_its_own_branch(peer: Peer) -> None:
    stack = make_stack()
    ev = receive_invite(stack, peer)
    stack.datagrams_to_send()
    stack.respond(ev.key, build_response(ev.request, 200, to_tag="t1"), 1.0)
    [ok] = sent(stack)
    # T1, 2T1 … capped at T2, on every transport (the next hop may be UDP)
    assert run_until(stack, 12.0) == [1.5, 2.5, 4.5, 8.5]
    transport = "TCP" if peer.reliable else "UDP"
    stack.receive_datagram(request_bytes("ACK", branch="z9hG4bKack2xx", cseq_method="ACK",
                                         to_tag="t1", transport=transport), peer, 12.0)
    [ack] = stack.events()
    assert isinstance(ack, AckReceived)
    assert run_until(stack, 32.9) == []
    stack.handle_timer(33.0)
    assert stack.events() == [TransactionTerminated(ev.key)]  # Timer L, no timeout


def test_2xx_without_ack_times_out_at_timer_l() -> None:
    stack = make_stack()
    ev = receive_invite(stack)
    stack.respond(ev.key, build_response(ev.request, 200, to_tag="t1"), 0.0)
    run_until(stack, 31.9)
    stack.handle_timer(32.0)
    assert stack.events() == [TransactionTimeout(ev.key), TransactionTerminated(ev.key)]
    assert stack.next_timer() is None


def test_2xx_retransmission_can_be_left_to_the_tu() -> None:
    stack = make_stack(retransmit_2xx=False)
    ev = receive_invite(stack)
    stack.respond(ev.key, build_response(ev.request, 200, to_tag="t1"), 0.0)
    stack.datagrams_to_send()
    assert run_until(stack, 31.9) == []
    stack.handle_timer(32.0)
    assert stack.events() == [TransactionTerminated(ev.key)]
