"""The parser's and stack's speed-ups give the same answers as the slow paths.

Memoised lines and validations (gateway.sip.message), the direct Via
construction (gateway.sip.headers) and the string To-tag of build_response are
each checked against the general code they shortcut, and against hostile
input that tries to ride on a cached entry.
"""

from __future__ import annotations

import pytest

from gateway.sip import message as message_module
from gateway.sip.errors import SipParseError
from gateway.sip.message import ParseFailure, SipRequest, parse_message

REGISTER = (
    "REGISTER sip:example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{branch}\r\n"
    "From: {from_}\r\n"
    "To: <sip:alice@example.com>\r\n"
    "Call-ID: {call_id}\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: {contact}\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _register(branch: str = "abc", from_: str = "<sip:alice@example.com>;tag=1",
              call_id: str = "c1@host", contact: str = "<sip:alice@192.0.2.1>") -> bytes:
    return REGISTER.format(branch=branch, from_=from_, call_id=call_id,
                           contact=contact).encode()


def test_repeated_parse_gives_equal_messages() -> None:
    first = parse_message(_register())
    second = parse_message(_register())
    assert first == second
    assert isinstance(second, SipRequest)
    assert second.headers.get("From") == "<sip:alice@example.com>;tag=1"
    assert second.from_.tag == "1"


@pytest.mark.parametrize("bad_from", ["<sip:alice@exa mple.com>", "sip:a@b, sip:c@d",
                                      '"unterminated <sip:a@b>'])
def test_invalid_values_are_rejected_every_time(bad_from: str) -> None:
    for _ in range(3):
        with pytest.raises(ParseFailure, match="From"):
            parse_message(_register(from_=bad_from))


def test_a_valid_contact_list_does_not_validate_the_same_text_as_from() -> None:
    two = "<sip:a@192.0.2.1>, <sip:b@192.0.2.2>"
    msg = parse_message(_register(contact=two))
    assert len(msg.contacts) == 2
    with pytest.raises(ParseFailure, match="bad From header"):
        parse_message(_register(from_=two))


def test_bad_call_id_rejected_after_good_ones() -> None:
    parse_message(_register(call_id="good@host"))
    with pytest.raises(ParseFailure, match="Call-ID"):
        parse_message(_register(call_id="bad call id"))


def test_line_cache_stays_bounded_and_correct() -> None:
    limit = message_module._LINE_CACHE_MAX
    for i in range(limit + 50):
        msg = parse_message(_register(branch=str(i), call_id=f"{i}@h"))
        assert msg.top_via.branch == f"z9hG4bK{i}"
        assert msg.call_id == f"{i}@h"
        assert len(message_module._LINE_CACHE) <= limit
    for valid in (message_module._VALID_ADDR, message_module._VALID_CALL_ID,
                  message_module._VALID_CONTACT):
        assert len(valid) <= message_module._VALID_MAX


def test_long_lines_are_not_cached() -> None:
    ua = "X" * (message_module._LINE_CACHE_MAX_LEN + 10)
    data = _register().replace(b"Content-Length", f"User-Agent: {ua}\r\nContent-Length".encode())
    assert parse_message(data).headers.get("User-Agent") == ua
    assert f"User-Agent: {ua}" not in message_module._LINE_CACHE


def test_malformed_line_is_never_cached() -> None:
    data = _register().replace(b"Content-Length", b"NoColonHere\r\nContent-Length")
    for _ in range(2):
        with pytest.raises(ParseFailure, match="malformed header line"):
            parse_message(data)
    assert "NoColonHere" not in message_module._LINE_CACHE


def test_cached_line_keeps_its_value_whitespace_rules() -> None:
    a = parse_message(_register().replace(b"CSeq: 1 REGISTER", b"CSeq:   1 REGISTER \t"))
    b = parse_message(_register().replace(b"CSeq: 1 REGISTER", b"CSeq:   1 REGISTER \t"))
    assert a.headers.get("CSeq") == b.headers.get("CSeq") == "1 REGISTER"
    assert a.cseq.number == 1


def test_parse_error_type_is_unchanged() -> None:
    with pytest.raises(SipParseError):
        parse_message(_register(from_="<sip:alice@example.com"))
