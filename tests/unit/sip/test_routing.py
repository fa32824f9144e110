"""Via stamping and message destinations (RFC 3261 §18.2.1, §18.2.2, §18.1.1; RFC 3581 §4)."""

from __future__ import annotations

import pytest

from gateway.sip.errors import LocalProtocolError
from gateway.sip.headers import Headers, Via
from gateway.sip.message import SipRequest
from gateway.sip.peer import FlowId, Peer
from gateway.sip.routing import (
    fallback_response_peer,
    next_hop,
    request_peer,
    response_peer,
    stamp_via,
)
from gateway.sip.uri import Uri


def via(text: str) -> Via:
    return Via.parse(text)


# -- §18.2.1 / RFC 3581 §4 stamping ----------------------------------------------------

def test_no_stamp_when_sent_by_matches_and_no_rport() -> None:
    assert stamp_via(via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa"),
                     Peer("UDP", "192.0.2.1", 5060)) is None


def test_received_added_when_host_differs() -> None:
    out = stamp_via(via("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa"),
                    Peer("UDP", "203.0.113.9", 61000))
    assert out is not None
    assert str(out) == "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;received=203.0.113.9"
    assert out.rport is None


def test_received_added_for_a_host_name() -> None:
    out = stamp_via(via("SIP/2.0/TCP phone.example;branch=z9hG4bKa"),
                    Peer("TCP", "192.0.2.1", 5060))
    assert out is not None and out.received == "192.0.2.1"


def test_rport_filled_and_received_added_even_if_host_matches() -> None:
    out = stamp_via(via("SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bKa"),
                    Peer("UDP", "192.0.2.1", 33333))
    assert out is not None
    # rport keeps its position, received is appended (RFC 3581 §4 example)
    assert str(out) == "SIP/2.0/UDP 192.0.2.1:5060;rport=33333;branch=z9hG4bKa;received=192.0.2.1"


def test_ipv6_source_compares_unbracketed_and_normalised() -> None:
    v = via("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKa")
    assert stamp_via(v, Peer("UDP", "2001:db8::1", 5060)) is None
    assert stamp_via(v, Peer("UDP", "2001:db8:0:0::1", 5060)) is None
    out = stamp_via(v, Peer("UDP", "2001:db8::2", 5060))
    assert out is not None and out.received == "2001:db8::2"


# -- §18.2.2 response destination ------------------------------------------------------

def test_reliable_reuses_the_flow() -> None:
    src = Peer("TCP", "203.0.113.9", 40000, FlowId("f1"))
    v = via("SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bKa;received=203.0.113.9")
    assert response_peer(v, src) == src


def test_reliable_without_flow_and_fallback_use_received_and_sent_by_port() -> None:
    v = via("SIP/2.0/TCP 10.0.0.5:5070;branch=z9hG4bKa;received=203.0.113.9")
    assert response_peer(v, Peer("TCP", "203.0.113.9", 40000)) == Peer("TCP", "203.0.113.9", 5070)
    src = Peer("TLS", "203.0.113.9", 40000, FlowId("f1"))
    v2 = via("SIP/2.0/TLS phone.example;branch=z9hG4bKa")
    assert fallback_response_peer(v2, src) == Peer("TLS", "phone.example", 5061)


def test_maddr_wins_for_unreliable() -> None:
    v = via("SIP/2.0/UDP 10.0.0.5:5062;maddr=239.255.255.1;received=203.0.113.9;branch=z9hG4bKa")
    assert response_peer(v, Peer("UDP", "203.0.113.9", 1)) == Peer("UDP", "239.255.255.1", 5062)


def test_received_and_rport() -> None:
    v = via("SIP/2.0/UDP 10.0.0.5:5060;rport=61000;branch=z9hG4bKa;received=203.0.113.9")
    assert response_peer(v, Peer("UDP", "203.0.113.9", 61000)) == Peer("UDP", "203.0.113.9", 61000)


def test_received_with_sent_by_port_or_default() -> None:
    v = via("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bKa;received=203.0.113.9")
    assert response_peer(v, Peer("UDP", "203.0.113.9", 1)) == Peer("UDP", "203.0.113.9", 5070)
    v = via("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKa;received=203.0.113.9")
    assert response_peer(v, Peer("UDP", "203.0.113.9", 1)) == Peer("UDP", "203.0.113.9", 5060)


def test_sent_by_when_nothing_else() -> None:
    v = via("SIP/2.0/UDP 192.0.2.1:5080;branch=z9hG4bKa")
    assert response_peer(v, Peer("UDP", "192.0.2.1", 5080)) == Peer("UDP", "192.0.2.1", 5080)


def test_ipv6_received_is_unbracketed() -> None:
    v = via("SIP/2.0/UDP [2001:db8::1]:5060;rport=7000;received=2001:db8::9;branch=z9hG4bKa")
    assert response_peer(v, Peer("UDP", "2001:db8::9", 7000)) == Peer("UDP", "2001:db8::9", 7000)


# -- request destinations (RFC 3263 §4 without DNS) ------------------------------------

@pytest.mark.parametrize("uri,peer", [
    ("sip:bob@192.0.2.1", Peer("UDP", "192.0.2.1", 5060)),
    ("sip:bob@192.0.2.1:5080;transport=tcp", Peer("TCP", "192.0.2.1", 5080)),
    ("sip:bob@192.0.2.1;transport=TLS", Peer("TLS", "192.0.2.1", 5061)),
    ("sips:bob@192.0.2.1", Peer("TLS", "192.0.2.1", 5061)),
    ("sips:bob@192.0.2.1;transport=tcp", Peer("TLS", "192.0.2.1", 5061)),
    ("sip:bob@[2001:db8::1]:5062", Peer("UDP", "2001:db8::1", 5062)),
    ("sip:bob@example.com;maddr=192.0.2.7", Peer("UDP", "192.0.2.7", 5060)),
])
def test_request_peer(uri: str, peer: Peer) -> None:
    assert request_peer(Uri.parse(uri)) == peer


@pytest.mark.parametrize("uri", ["tel:+15551234", "sip:bob@192.0.2.1;transport=carrier-pigeon"])
def test_request_peer_refuses_what_it_cannot_route(uri: str) -> None:
    with pytest.raises(LocalProtocolError):
        request_peer(Uri.parse(uri))


def test_next_hop_loose_route_first_else_request_uri() -> None:
    def req(routes: list[str]) -> SipRequest:
        return SipRequest(method="BYE", uri=Uri.parse("sip:alice@192.0.2.10:5070"),
                          headers=Headers([("Route", r) for r in routes]))

    assert next_hop(req([])) == Peer("UDP", "192.0.2.10", 5070)
    assert next_hop(req(["<sip:192.0.2.50;lr;transport=tcp>", "<sip:192.0.2.51;lr>"])) == \
        Peer("TCP", "192.0.2.50", 5060)
    # a strict router is already the Request-URI (§12.2.1.1)
    assert next_hop(req(["<sip:192.0.2.50>"])) == Peer("UDP", "192.0.2.10", 5070)
