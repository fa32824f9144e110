"""Dialog creation, in-dialog requests, routing and persistence (RFC 3261 §12)."""

from __future__ import annotations

import pytest

from gateway.sip.dialog import Dialog, DialogError, DialogState, build_ack_for_2xx
from gateway.sip.message import build_response, parse_message

INVITE = (
    b"INVITE sip:bob@gw.example SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc\r\n"
    b"Record-Route: <sip:p2.example;lr>\r\n"
    b"Record-Route: <sip:p1.example;lr>\r\n"
    b"From: \"Alice\" <sip:alice@gw.example>;tag=a1\r\n"
    b"To: <sip:bob@gw.example>\r\n"
    b"Call-ID: c1@10.0.0.1\r\n"
    b"CSeq: 10 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.1:5060>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def invite():
    return parse_message(INVITE)


def test_uas_dialog_routes_in_record_route_order_and_targets_contact() -> None:
    req = invite()
    resp = build_response(req, 200, to_tag="b2")
    d = Dialog.from_uas(req, resp, "b2", "<sip:gw@127.0.0.1:5060>")
    assert d.state is DialogState.CONFIRMED
    assert d.key == ("c1@10.0.0.1", "b2", "a1")
    bye = d.create_request("BYE")
    assert str(bye.uri) == "sip:alice@10.0.0.1:5060"
    assert bye.headers.get_all("Route") == ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]
    assert bye.from_.tag == "b2" and bye.to.tag == "a1"
    assert bye.cseq.number == 1 and bye.cseq.method == "BYE"
    # the stack adds the Via when it sends; everything else is on the wire already
    assert b"Call-ID: c1@10.0.0.1\r\n" in bytes(bye)


def test_uac_dialog_reverses_route_set_and_ack_keeps_invite_cseq() -> None:
    req = invite()
    resp = build_response(req, 200, to_tag="b2", headers=[
        ("Record-Route", "<sip:p2.example;lr>"), ("Record-Route", "<sip:p1.example;lr>"),
        ("Contact", "<sip:bob@10.0.0.2:5070>")])
    d = Dialog.from_uac(req, resp)
    assert d.route_set == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    ack = build_ack_for_2xx(req, resp, d)
    assert ack.cseq.number == 10 and ack.cseq.method == "ACK"
    assert str(ack.uri) == "sip:bob@10.0.0.2:5070"
    assert d.create_request("BYE").cseq.number == 11


def test_strict_route_becomes_request_uri() -> None:
    req = invite()
    resp = build_response(req, 200, to_tag="b2", headers=[
        ("Record-Route", "<sip:strict.example>"), ("Contact", "<sip:bob@10.0.0.2>")])
    d = Dialog.from_uac(req, resp)
    bye = d.create_request("BYE")
    assert str(bye.uri) == "sip:strict.example"
    assert bye.headers.get_all("Route") == ["<sip:bob@10.0.0.2>"]


def test_out_of_order_cseq_rejected_and_target_refresh_applied() -> None:
    req = invite()
    d = Dialog.from_uas(req, build_response(req, 200, to_tag="b2"), "b2", "")
    reinvite = parse_message(INVITE.replace(b"CSeq: 10", b"CSeq: 11").replace(
        b"alice@10.0.0.1:5060>", b"alice@10.0.0.9:5060>"))
    d.receive_request(reinvite)
    assert d.remote_target == "sip:alice@10.0.0.9:5060"
    with pytest.raises(DialogError) as e:
        d.receive_request(parse_message(INVITE.replace(b"CSeq: 10", b"CSeq: 9")))
    assert e.value.status == 500


def test_persistence_round_trip() -> None:
    req = invite()
    d = Dialog.from_uas(req, build_response(req, 180, to_tag="b2"), "b2", "<sip:gw@h>")
    assert d.state is DialogState.EARLY
    assert Dialog.from_dict(d.to_dict()) == d
