"""Property tests: round trips of generated messages, fuzzing, stream framing.

Bounded (a few hundred examples each, no deadline) so the unit suite stays fast.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip.errors import SipParseError
from gateway.sip.headers import (
    NAME_ADDR_FAST_RE,
    VIA_FAST_RE,
    CSeq,
    Headers,
    NameAddr,
    Via,
)
from gateway.sip.message import (
    ParseFailure,
    SipRequest,
    SipResponse,
    StreamParser,
    build_error_response,
    parse_message,
)
from gateway.sip.uri import Uri

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sip"
SAMPLES = [p.read_bytes() for p in sorted(FIXTURES.glob("*.sip"))]
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# whole generated messages are costly to draw: fewer examples, still every shape
MESSAGES = settings(FAST, max_examples=120)

alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
token_chars = alnum + "-.!%*_+`'~"
tokens = st.text(token_chars, min_size=1, max_size=12)
label = st.from_regex(r"[a-z][a-z0-9\-]{0,8}[a-z0-9]", fullmatch=True)
hostnames = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: f"[{ipaddress.IPv6Address(n)}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
escape = st.integers(0, 255).map(lambda b: f"%{b:02X}")
users = st.lists(st.one_of(st.text(alnum + "-_.!~*'()&=+$,;?/", min_size=1, max_size=6),
                           escape), min_size=1, max_size=4).map("".join)
pchars = st.text(alnum + "-_.!~*'()[]/:&+$", min_size=1, max_size=8)
uri_params = st.lists(st.tuples(pchars.map(str.lower), st.one_of(st.none(), pchars)),
                      max_size=3, unique_by=lambda kv: kv[0]).map(tuple)
ports = st.one_of(st.none(), st.integers(1, 65535))


@st.composite
def sip_uris(draw: st.DrawFn) -> Uri:
    return Uri(scheme=draw(st.sampled_from(["sip", "sips"])), host=draw(hosts),
               user=draw(st.one_of(st.none(), users)), port=draw(ports),
               params=draw(uri_params))


display_names = st.one_of(
    st.none(),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
            min_size=1, max_size=20),
    st.lists(tokens, min_size=1, max_size=3).map(" ".join))
hparams = st.lists(st.tuples(tokens.map(str.lower), st.one_of(
    st.none(), tokens, st.text(alnum + " ,;:<>@=", max_size=10).map(lambda s: f'"{s}"'))),
    max_size=3, unique_by=lambda kv: kv[0]).map(tuple)


@st.composite
def name_addrs(draw: st.DrawFn) -> NameAddr:
    return NameAddr(uri=draw(sip_uris()), display=draw(display_names), params=draw(hparams),
                    bracketed=True)


@st.composite
def vias(draw: st.DrawFn) -> Via:
    params = (("branch", "z9hG4bK" + draw(st.text(alnum, min_size=1, max_size=10))),)
    if draw(st.booleans()):
        params += (("rport", draw(st.one_of(st.none(), st.integers(1, 65535).map(str)))),)
    return Via(transport=draw(st.sampled_from(["UDP", "TCP", "TLS", "WS"])), host=draw(hosts),
               port=draw(ports), params=params)


COMPACT = {"Via": "v", "From": "f", "To": "t", "Call-ID": "i", "Contact": "m",
           "Content-Length": "l", "Content-Type": "c", "Supported": "k"}


@st.composite
def requests(draw: st.DrawFn) -> SipRequest:
    method = draw(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "NOTIFY"]) | tokens)
    via_list = draw(st.lists(vias(), min_size=1, max_size=3))
    items: list[tuple[str, str]] = []
    if draw(st.booleans()):
        items.append(("Via", ", ".join(map(str, via_list))))
    else:
        items.extend(("Via", str(v)) for v in via_list)
    items += [
        ("From", str(draw(name_addrs()).with_tag(draw(tokens)))),
        ("To", str(draw(name_addrs()))),
        ("Call-ID", draw(tokens) + "@" + draw(hostnames)),
        ("CSeq", str(CSeq(draw(st.integers(0, 2**31 - 1)), method))),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ]
    contacts = draw(st.lists(name_addrs(), max_size=3))
    if contacts:
        items.append(("Contact", ", ".join(map(str, contacts))))
    extra = draw(st.lists(st.tuples(st.sampled_from(["Supported", "X-Vendor", "Subject"]),
                                    st.text(alnum + " ,;=", max_size=20).map(str.strip)),
                          max_size=3))
    items += extra
    body = draw(st.binary(max_size=200))
    if body:
        items.append(("Content-Type", "application/sdp"))
    items.append(("Content-Length", str(len(body))))
    draw(st.randoms()).shuffle(items)
    return SipRequest(method=method, uri=draw(sip_uris()), headers=Headers(items), body=body)


def wire(msg: SipRequest | SipResponse, rnd: random.Random) -> bytes:
    """Serialise with random compact names and LWS, which must not change the meaning."""
    start = bytes(msg).split(b"\r\n", 1)[0].decode()
    lines = [start]
    for n, v in msg.headers:
        name = COMPACT.get(n, n) if rnd.random() < 0.5 else n.upper()
        lines.append(f"{name}{' ' * rnd.randint(0, 2)}:{' ' * rnd.randint(0, 2)}{v}")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + msg.body


@MESSAGES
@given(requests(), st.randoms())
def test_generated_requests_round_trip(m: SipRequest, rnd: random.Random) -> None:
    parsed = parse_message(bytes(m))
    assert parsed == m
    assert parse_message(wire(m, rnd)) == m
    assert parsed.uri == m.uri
    assert [str(v) for v in parsed.vias] == [str(v) for v in m.vias]
    assert parsed.from_ == m.from_ and parsed.to == m.to
    assert parsed.contacts == m.contacts
    assert parsed.cseq == m.cseq and parsed.body == m.body


@FAST
@given(name_addrs())
def test_display_names_with_escapes_survive(addr: NameAddr) -> None:
    again = NameAddr.parse(str(addr))
    assert again == addr


@MESSAGES
@given(requests(), st.integers(100, 699), st.text(alnum + " -", max_size=20))
def test_generated_responses_round_trip(m: SipRequest, status: int, reason: str) -> None:
    r = SipResponse(status=status, reason=reason, headers=m.headers, body=m.body)
    assert parse_message(bytes(r)) == r


@FAST
@given(st.one_of(name_addrs().map(str), hparams.map(lambda p: "<sip:a@b>" + "".join(
    f";{k}" if v is None else f";{k}={v}" for k, v in p)), st.text(max_size=60)))
def test_fast_name_addr_check_is_a_subset_of_the_full_parser(value: str) -> None:
    if NAME_ADDR_FAST_RE.fullmatch(value):
        NameAddr.parse(value)


@FAST
@given(st.one_of(vias().map(str), st.text(max_size=60)))
def test_fast_via_check_is_a_subset_of_the_full_parser(value: str) -> None:
    if VIA_FAST_RE.fullmatch(value):
        Via.parse(value)


def _exercise(msg: SipRequest | SipResponse) -> None:
    """Everything a layer above might read: may raise SipParseError, nothing else."""
    for read in (lambda: msg.vias, lambda: msg.from_, lambda: msg.to, lambda: msg.cseq,
                 lambda: msg.contacts, lambda: msg.max_forwards, lambda: msg.content_type,
                 lambda: msg.call_id, lambda: msg.header_int("Expires")):
        try:
            read()
        except SipParseError:
            pass
    again = parse_message(bytes(msg))
    assert again.headers.get("Call-ID") == msg.headers.get("Call-ID")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_parse_errors(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except ParseFailure as f:
        build_error_response(f)
        return
    _exercise(msg)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(SAMPLES), st.lists(st.tuples(
    st.integers(0, 2000), st.integers(0, 6), st.binary(min_size=0, max_size=4)),
    min_size=1, max_size=6))
def test_mutated_messages_only_raise_parse_errors(
        sample: bytes, edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(sample)
    for pos, cut, insert in edits:
        pos %= len(data) + 1
        data[pos:pos + cut] = insert
    try:
        msg = parse_message(bytes(data))
    except ParseFailure as f:
        out = build_error_response(f)
        assert out is None or out.startswith(b"SIP/2.0 ")
        return
    _exercise(msg)


@FAST
@given(st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=5),
       st.lists(st.integers(1, 400), max_size=20), st.booleans())
def test_stream_parser_on_random_splits(msgs: list[bytes], cuts: list[int],
                                        ping: bool) -> None:
    stream = b"".join((b"\r\n\r\n" if ping else b"") + m for m in msgs)
    parser = StreamParser()
    got: list[object] = []
    pos = 0
    for c in cuts:
        got += parser.feed(stream[pos:pos + c])
        pos += c
    got += parser.feed(stream[pos:])
    expected: list[object] = []
    for m in msgs:
        if ping:
            expected.append(StreamParser.PING)
        expected.append(parse_message(m, stream=True))
    assert got == expected and not parser.broken


@FAST
@given(st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=3), st.binary(max_size=200),
       st.lists(st.integers(1, 300), max_size=10))
def test_stream_parser_garbage_never_raises(msgs: list[bytes], junk: bytes,
                                            cuts: list[int]) -> None:
    stream = b"".join(msgs) + junk
    parser = StreamParser()
    pos = 0
    for c in [*cuts, len(stream)]:
        for item in parser.feed(stream[pos:pos + c]):
            assert isinstance(item, (SipRequest, SipResponse, ParseFailure, str))
        pos += c
