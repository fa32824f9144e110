"""Message parsing, serialisation, failure reasons and stream framing (RFC 3261 §7, §18.3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip.message import (
    MAX_MESSAGE_SIZE,
    ParseFailure,
    SipRequest,
    StreamParser,
    build_error_response,
    build_response,
    parse_message,
)

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "fixtures" / "sip").glob("*.sip"))

REG = (
    "REGISTER sip:gw.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKreg1;rport\r\n"
    "From: <sip:alice@gw.example.com>;tag=f1\r\n"
    "To: <sip:alice@gw.example.com>\r\n"
    "Call-ID: reg1@192.0.2.4\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:alice@192.0.2.4:5060>;expires=3600\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


def fail(text: str) -> ParseFailure:
    with pytest.raises(ParseFailure) as ei:
        parse_message(text.encode())
    return ei.value


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_captured_fixtures_round_trip_byte_for_byte(path: Path) -> None:
    data = path.read_bytes()
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")  # CRLF kept
    m = parse_message(data)
    assert parse_message(bytes(m)) == m
    if path.name != "options_keepalive.sip":  # compact names come back expanded
        # byte-faithful but for the letter case of unknown header names
        out_lines = bytes(m).split(b"\r\n")
        in_lines = data.split(b"\r\n")
        assert len(out_lines) == len(in_lines)
        for a, b in zip(out_lines, in_lines, strict=True):
            na, _, va = a.partition(b":")
            nb, _, vb = b.partition(b":")
            assert (na.lower(), va) == (nb.lower(), vb)
    m.top_via.branch  # noqa: B018
    assert m.from_.tag and m.call_id and m.cseq.number >= 0


def test_typical_register_values() -> None:
    m = parse_message(REG.encode())
    assert isinstance(m, SipRequest) and m.method == "REGISTER"
    assert m.top_via.host == "192.0.2.4" and m.top_via.port == 5060 and m.top_via.has_rport
    assert m.top_via.branch == "z9hG4bKreg1" and m.top_via.has_rfc3261_branch
    assert m.contacts[0].param("expires") == "3600" and m.max_forwards == 70
    assert m.uri.aor() == "sip:gw.example.com" and m.to.uri.aor() == "sip:alice@gw.example.com"


@pytest.mark.parametrize("old, new, reason", [
    ("Content-Length: 0", "Content-Length: abc", "bad Content-Length 'abc'"),
    ("Call-ID: reg1@192.0.2.4\r\n", "", "missing Call-ID header"),
    ("REGISTER sip:gw.example.com SIP/2.0", "REGISTER sip:gw example SIP/2.0",
     "whitespace inside the Request-URI"),
    ("REGISTER sip:gw.example.com", "REGISTER sip:gw..example.com", "bad Request-URI: "),
    ("Max-Forwards: 70", "Max-Forwards: 256", "bad Max-Forwards '256'"),
    ("Max-Forwards: 70", "Max-Forwards: \u00b2", "bad Max-Forwards"),
    ("CSeq: 1 REGISTER", "CSeq: 1 INVITE", "CSeq method INVITE does not match"),
    ("CSeq: 1 REGISTER", "CSeq: x REGISTER", "bad CSeq 'x REGISTER'"),
    ("To: <sip:alice@gw.example.com>", "To: <sip:alice@gw.example.com>\r\nTo: <sip:b@c>",
     "multiple To headers"),
    ("Contact: <sip:alice@192.0.2.4:5060>;expires=3600", "Contact: <sip:a@b>;;x",
     "bad Contact header: empty parameter"),
    ("Contact: <sip:alice@192.0.2.4:5060>;expires=3600", "Contact: *, <sip:a@b>",
     "bad Contact header"),
    ("Via: SIP/2.0/UDP 192.0.2.4:5060", "Via: SIP/2.0/UDP 192.0.2.4:99999",
     "bad Via header: bad port '99999'"),
    ("Max-Forwards: 70", "Max Forwards: 70", "bad header name 'Max Forwards'"),
    ("Max-Forwards: 70", "Max-Forwards 70", "malformed header line"),
    ("Max-Forwards: 70", "Max-Forwards: 7\x000", "NUL character in Max-Forwards"),
    ("SIP/2.0\r\n", "SIP/3.0\r\n", "SIP version 3.0 not supported"),
])
def test_malformed_requests_name_the_problem(old: str, new: str, reason: str) -> None:
    assert old in REG
    f = fail(REG.replace(old, new, 1))
    assert reason in f.reason and f.is_request is True
    out = build_error_response(f)
    if "Via" in reason:
        assert out is None  # no usable Via: nowhere to send an answer (§18.2.2)
        return
    assert out is not None
    status = b"505" if "version" in reason else b"400"
    assert out.startswith(b"SIP/2.0 " + status)
    safe = f.reason.replace('"', "'").encode("ascii", "replace")
    assert b'Warning: 399 sipgw "' + safe + b'"\r\n' in out
    assert b"\r\nTo: <sip:alice@gw.example.com>;tag=" in out  # §8.2.6.2


def test_answer_to_a_bad_request_is_stable_across_retransmissions() -> None:
    f1 = fail(REG.replace("CSeq: 1 REGISTER", "CSeq: 1 INVITE"))
    f2 = fail(REG.replace("CSeq: 1 REGISTER", "CSeq: 1 INVITE"))
    assert build_error_response(f1) == build_error_response(f2)


def test_malformed_ack_and_responses_are_dropped() -> None:
    ack = REG.replace("REGISTER", "ACK").replace("Content-Length: 0", "Content-Length: x")
    assert build_error_response(fail(ack)) is None
    bad_resp = ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1"
                "\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 FOO BAR\r\nContent-Length: 0\r\n\r\n")
    f = fail(bad_resp)
    assert f.is_request is False and build_error_response(f) is None


def test_oversized_message_gets_513_with_recovered_headers() -> None:
    big = REG.replace("Max-Forwards: 70", "X-Pad: " + "a" * MAX_MESSAGE_SIZE)
    f = fail(big)
    assert f.status == 513 and "message too large" in f.reason
    out = build_error_response(f)
    assert out is not None and out.startswith(b"SIP/2.0 513 Message Too Large")


def test_body_trimmed_to_content_length_and_short_body_rejected() -> None:
    msg = REG.replace("Content-Length: 0", "Content-Type: text/plain\r\nContent-Length: 3")
    m = parse_message(msg.encode() + b"abcdef")
    assert m.body == b"abc"
    assert "exceeds" in fail(msg).reason


def test_stream_needs_content_length() -> None:
    data = REG.replace("Content-Length: 0\r\n", "").encode()
    assert parse_message(data).body == b""
    with pytest.raises(ParseFailure, match="missing Content-Length on a stream"):
        parse_message(data, stream=True)


def test_bare_lf_line_ends_tolerated_bare_cr_rejected() -> None:
    m = parse_message(REG.replace("\r\n", "\n").encode())
    assert m == parse_message(REG.encode())
    assert "bare CR" in fail(REG.replace("Max-Forwards: 70\r\n", "Max-Forwards: 70\r")).reason


def test_build_response_copies_the_dialog_headers() -> None:
    req = parse_message(REG.encode())
    assert isinstance(req, SipRequest)
    r = build_response(req, 200, to_tag="t9", headers=[("Expires", "3600")])
    assert r.reason == "OK" and r.to.tag == "t9" and r.headers.get("Expires") == "3600"
    assert r.top_via == req.top_via and r.call_id == req.call_id and r.cseq == req.cseq
    trying = build_response(req, 100, to_tag="t9")
    assert trying.to.tag is None
    again = parse_message(bytes(r))
    again.headers.remove("Content-Length")
    assert again == r


def test_invalidate_after_editing_headers() -> None:
    m = parse_message(REG.encode())
    assert m.top_via.branch == "z9hG4bKreg1"
    m.headers.prepend("Via", "SIP/2.0/TCP proxy.example;branch=z9hG4bKp1")
    m.invalidate()
    assert [v.branch for v in m.vias] == ["z9hG4bKp1", "z9hG4bKreg1"]
    m.headers.remove_first_value("Via")
    m.invalidate()
    assert m.top_via.branch == "z9hG4bKreg1"


def test_stream_parser_pipelining_keepalive_and_broken_framing() -> None:
    p = StreamParser()
    data = REG.encode()
    out = p.feed(b"\r\n\r\n" + data + data[:10])
    assert out[0] == StreamParser.PING and isinstance(out[1], SipRequest) and len(out) == 2
    assert p.feed(data[10:]) == [parse_message(data)]
    bad = REG.replace("Content-Length: 0", "Content-Length: 0\r\nl: 5").encode()
    items = p.feed(bad + data)
    assert isinstance(items[0], ParseFailure) and p.broken
    assert p.feed(data) == []


def test_stream_parser_recovers_after_a_framed_bad_message() -> None:
    p = StreamParser()
    bad = REG.replace("CSeq: 1 REGISTER", "CSeq: 1 INVITE").encode()
    items = p.feed(bad + REG.encode())
    assert isinstance(items[0], ParseFailure) and isinstance(items[1], SipRequest)
    assert not p.broken
