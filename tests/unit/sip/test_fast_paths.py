"""The parser's and stack's speed-ups give the same answers as the slow paths.

Memoised lines and validations (gateway.sip.message), the direct Via
construction (gateway.sip.headers) and the string To-tag of build_response are
each checked against the general code they shortcut, and against hostile
input that tries to ride on a cached entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip import memo
from gateway.sip import message as message_module
from gateway.sip import timers as timers_module
from gateway.sip.digest import DigestError, _parse_auth_params, parse_auth_params
from gateway.sip.errors import SipParseError
from gateway.sip.headers import VIA_PARTS_RE, Via
from gateway.sip.message import ParseFailure, SipRequest, build_response, parse_message
from gateway.sip.peer import Peer
from gateway.sip.routing import response_peer
from gateway.sip.timers import TimerHeap
from gateway.sip.uas import options_response

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
        assert len(valid) <= memo.LIMIT


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


# -- Via built from the fast match ---------------------------------------------------

_via_hosts = st.one_of(
    st.from_regex(r"[A-Za-z][A-Za-z0-9\-]{0,6}[A-Za-z0-9](\.[A-Za-z][A-Za-z0-9]{0,5}){0,2}",
                  fullmatch=True),
    st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
    st.just("[2001:db8::1]"))
_via_params = st.lists(st.tuples(
    st.sampled_from(["branch", "Branch", "rport", "RPORT", "received", "maddr", "ttl", "x"]),
    st.one_of(st.none(), st.just(""), st.text("abcXYZ019.:-", min_size=1, max_size=8),
              st.just('"a;b=c"'))), max_size=4)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["UDP", "udp", "Tcp", "TLS"]), _via_hosts,
       st.one_of(st.none(), st.integers(0, 70000)), _via_params)
def test_fast_via_equals_the_general_parser(transport: str, host: str, port: int | None,
                                            params: list[tuple[str, str | None]]) -> None:
    text = f"SIP/2.0/{transport} {host}" + ("" if port is None else f":{port}") + "".join(
        f";{k}" if v is None else f";{k}={v}" for k, v in params)
    try:
        general: Via | SipParseError = Via._parse_general(text)
    except SipParseError as e:
        general = e
    try:
        fast: Via | SipParseError = Via.parse(text)
    except SipParseError as e:
        fast = e
    if isinstance(general, Via):
        assert fast == general
    else:
        assert isinstance(fast, SipParseError)
    if VIA_PARTS_RE.fullmatch(text) is not None:
        assert isinstance(general, Via)  # the fast shape is a subset of the valid ones


def test_first_via_reuses_the_parser_match_and_survives_edits() -> None:
    msg = parse_message(_register(branch="xyz"))
    assert msg._via_match is not None
    top = msg.first_via()
    assert top == Via.parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKxyz")
    assert msg.top_via is top and msg.vias == [top]
    msg.headers.prepend("Via", "SIP/2.0/TCP 198.51.100.7;branch=z9hG4bKnew")
    msg.invalidate()
    assert msg.top_via.host == "198.51.100.7"
    assert len(msg.vias) == 2


def test_first_via_of_a_folded_or_quoted_via_uses_the_general_parser() -> None:
    data = _register().replace(b"branch=z9hG4bKabc",
                               b'branch=z9hG4bKabc;x="q;y=1", SIP/2.0/TCP h2;branch=z9hG4bK2')
    msg = parse_message(data)
    assert msg.top_via.param("x") == '"q;y=1"'
    assert msg.top_via.branch == "z9hG4bKabc"
    assert [v.host for v in msg.vias] == ["192.0.2.1", "h2"]


def test_flag_branch_is_still_rejected() -> None:
    with pytest.raises(SipParseError, match="empty Via branch"):
        Via.parse("SIP/2.0/UDP host;branch")


def test_parser_answers_a_flag_branch_with_400() -> None:
    data = _register().replace(b"branch=z9hG4bKabc", b"rport;branch")
    with pytest.raises(ParseFailure, match="empty Via branch"):
        parse_message(data)


# -- build_response: the To tag added as text ------------------------------------------

@pytest.mark.parametrize(("to", "expected"), [
    ("<sip:alice@example.com>", "<sip:alice@example.com>;tag=T1"),
    ("sip:alice@example.com", "sip:alice@example.com;tag=T1"),
    ("sip:alice@example.com;x=1", "sip:alice@example.com;x=1;tag=T1"),
    ("Alice <sip:alice@example.com;tag=uri-param>",
     "Alice <sip:alice@example.com;tag=uri-param>;tag=T1"),
    ("<sip:alice@example.com>;TAG=theirs", "<sip:alice@example.com>;TAG=theirs"),
    ("<sip:alice@example.com> ; tag = theirs", "<sip:alice@example.com> ; tag = theirs"),
    ("sip:alice@example.com;tag=theirs", "sip:alice@example.com;tag=theirs"),
    ("<sip:alice@example.com>;tagx=1", "<sip:alice@example.com>;tagx=1;tag=T1"),
    ('"A;tag=1 <x>" <sip:alice@example.com>', '"A;tag=1 <x>" <sip:alice@example.com>;tag=T1'),
    ('"Alice" <sip:alice@example.com>;tag=theirs', '"Alice" <sip:alice@example.com>;tag=theirs'),
    ('<sip:alice@example.com>;x="a;tag=b"', '<sip:alice@example.com>;x="a;tag=b";tag=T1'),
])
def test_to_tag_is_added_as_text_exactly_when_missing(to: str, expected: str) -> None:
    data = _register().replace(b"To: <sip:alice@example.com>", f"To: {to}".encode())
    req = parse_message(data)
    assert isinstance(req, SipRequest)
    resp = build_response(req, 200, to_tag="T1")
    assert resp.headers.get("To") == expected
    again = parse_message(bytes(resp))
    assert again.to.tag == (req.to.tag or "T1")  # the text agrees with the full parser
    assert again.to.uri == req.to.uri
    assert build_response(req, 100, to_tag="T1").headers.get("To") == to


def test_options_response_is_complete_and_independent() -> None:
    req = parse_message(_register().replace(b"REGISTER", b"OPTIONS"))
    assert isinstance(req, SipRequest)
    a = options_response(req, tag="a")
    b = options_response(req, tag="b")
    assert a.to.tag == "a" and b.to.tag == "b"
    a.headers.add("Server", "x")
    assert "Server" not in b.headers
    assert [n for n, _ in b.headers] == ["Via", "From", "To", "Call-ID", "CSeq", "Allow",
                                         "Accept", "Accept-Encoding", "Accept-Language",
                                         "Supported"]


def test_serialise_states_the_body_length_once_in_place() -> None:
    req = parse_message(_register())
    assert isinstance(req, SipRequest)
    resp = build_response(req, 200, to_tag="t", headers=[
        ("Content-Length", "99"), ("Expires", "60"), ("Content-Length", "5")], body=b"hello",
        content_type="text/plain")
    data = bytes(resp)
    assert data.count(b"Content-Length") == 1
    assert b"Content-Length: 5\r\nExpires: 60\r\nContent-Type: text/plain\r\n\r\nhello" in data
    bare = build_response(req, 404)
    assert bytes(bare).endswith(b"Content-Length: 0\r\n\r\n")


# -- timer heap compaction ---------------------------------------------------------------

class _Owner:
    def __init__(self) -> None:
        self.timers: dict[str, int] = {}
        self.fired: list[str] = []

    def on_timer(self, letter: str, now: float) -> None:
        self.fired.append(letter)


def test_cancelled_timers_do_not_pile_up_and_live_ones_still_fire() -> None:
    heap = TimerHeap()
    live = [_Owner() for _ in range(3000)]
    for o in live:
        heap.schedule(o, "J", 100.0)
    for _ in range(5):
        dead = [_Owner() for _ in range(20000)]
        for o in dead:
            heap.schedule(o, "E", 50.0)
            o.timers.pop("E")  # lazy cancellation, as the transactions do
        assert len(heap) <= 2 * (3000 + 20000) + 2 * timers_module._COMPACT_EVERY
    assert heap.run_due(100.0) == 3000
    assert all(o.fired == ["J"] for o in live)
    assert heap.next_time() is None


def test_response_to_an_unchanged_sent_by_reuses_the_source_peer() -> None:
    src = Peer("UDP", "192.0.2.1", 5060)
    via = Via.parse("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1")
    assert response_peer(via, src) is src
    other = response_peer(Via.parse("SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1"), src)
    assert other == Peer("UDP", "192.0.2.1", 5070)


# -- _fields: the CRLF fast path agrees with the general splitter --------------------------

_FIXTURES = sorted((Path(__file__).resolve().parents[2] / "fixtures" / "sip").glob("*.sip"))


def _both(data: bytes) -> tuple[object, object]:
    def run(fn: Callable[[], object]) -> object:
        try:
            return fn()
        except ParseFailure as e:
            return ("ParseFailure", e.reason, e.status)

    def general() -> object:
        raw = data.lstrip(b"\r\n")
        if not raw:
            raise ParseFailure("empty message")
        head, body = message_module._split_head(raw)
        return message_module._fields_general(message_module._decode(head), body)

    return run(lambda: message_module._fields(data)), run(general)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_FIXTURES), st.lists(st.tuples(
    st.integers(0, 2000), st.sampled_from(["\r", "\n", " ", "\t", "\r\n ", "\r\n\t", "\n ",
                                           "\x00", ":", "\r\n", "\r\nX", "\r\r"])), max_size=3))
def test_fast_field_split_equals_the_general_one(path: Path,
                                                 edits: list[tuple[int, str]]) -> None:
    data = path.read_bytes()
    for pos, text in edits:
        pos %= len(data)
        data = data[:pos] + text.encode() + data[pos:]
    for _ in range(2):  # the second time through, lines come from the cache
        fast, general = _both(data)
        assert fast == general


@pytest.mark.parametrize("data", [
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n  ;rport\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nTo: <sip:a@b>\n\n",
    b"OPTIONS sip:a SIP/2.0\r\nTo: <sip:a@b>\rFrom: <sip:c@d>\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nTo: <sip:a@b>\nFrom: <sip:c@d>\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\n\tTo: <sip:a@b>\r\n\r\n",
])
def test_odd_heads_take_the_general_path_even_after_caching(data: bytes) -> None:
    # cache every plain line of the message first, then check the odd one
    message_module._fields(data.replace(b"\r\n  ", b"\r\nX: ").replace(b"\r\n\t", b"\r\n"))
    fast, general = _both(data)
    assert fast == general


# -- Authorization: the one-regex path agrees with the general parser --------------------

_AUTH_PIECES = st.sampled_from([
    'username="alice"', "realm=\"example.com\"", 'nonce="abc=="', 'uri="sip:example.com"',
    'response="0123abcd"', "algorithm=MD5", "algorithm=sha-256", "qop=auth", "nc=00000001",
    'cnonce="x y"', 'opaque=""', 'Username="Bob"', 'username="a\\"b"', 'realm="a,b"',
    "stale=true", "x=y=z", 'bad="\x00"', "nc=", "=1", 'q="unterminated', "a = b"])
_AUTH_SEPS = st.sampled_from([",", ", ", " , ", ",,", " ", "\t,", ""])


@given(st.sampled_from(["Digest ", "digest ", "Digest\t", "Basic ", "Digest  ", "Digest"]),
       st.lists(st.tuples(_AUTH_PIECES, _AUTH_SEPS), max_size=12))
def test_auth_params_fast_path_matches_general(scheme: str,
                                               parts: list[tuple[str, str]]) -> None:
    text = scheme + "".join(p + sep for p, sep in parts)
    try:
        general: object = _parse_auth_params(text.strip())
    except DigestError as e:
        general = type(e)
    for _ in range(2):  # the second reading may take the shape the first one learnt
        try:
            fast: object = parse_auth_params(text)
        except DigestError as e:
            fast = type(e)
        assert fast == general


def test_auth_shape_learnt_reads_later_headers_alike() -> None:
    """After one header of a shape, later ones of that shape (new values, an empty quoted
    value, a too-long value) read exactly as the general parser reads them."""
    def header(nonce: str, opaque: str) -> str:
        return (f'Digest username="dev1", realm="example.com", nonce="{nonce}", '
                f'uri="sip:example.com", response="0123abcd", algorithm=MD5, qop=auth, '
                f'nc=00000001, cnonce="c1", opaque="{opaque}"')

    for text in (header("n1", "o"), header("n2", ""), header("n3", "x" * 2000),
                 header("", "o")):
        try:
            general: object = _parse_auth_params(text)
        except DigestError as e:
            general = type(e)
        try:
            fast: object = parse_auth_params(text)
        except DigestError as e:
            fast = type(e)
        assert fast == general, text[:80]
