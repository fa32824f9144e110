"""The lean REGISTER reader agrees with the general parser on everything it accepts.

For every datagram ``read_register`` accepts, ``parse_message`` must read the same
Via, From, To (and user), Call-ID, CSeq, Contact, Expires, Authorization and
User-Agent; anything it is unsure of it must refuse (None), never guess. The
responses it renders must parse and carry what ``build_response`` would copy.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import testdata_dir as shared_data

from gateway.sip.errors import SipParseError
from gateway.sip.lean import Replay, ReplayCache, read_register, render_response, stamp_via
from gateway.sip.message import ParseFailure, SipRequest, SipResponse, parse_message
from gateway.sip.peer import Peer
from gateway.sip.routing import stamp_via as stamp_via_general

FAST = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PLAIN = (
    "REGISTER sip:example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:dev1@example.com>;tag=456248\r\n"
    "To: <sip:dev1@example.com>\r\n"
    "Call-ID: 843817637684230@998sdasdh09\r\n"
    "CSeq: 1826 REGISTER\r\n"
    "Contact: <sip:dev1@192.0.2.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:1>\"\r\n"
    'Authorization: Digest username="dev1", realm="example.com", nonce="abc", '
    'uri="sip:example.com", response="0123456789abcdef0123456789abcdef", qop=auth, '
    'nc=00000001, cnonce="x"\r\n'
    "Expires: 3600\r\n"
    "User-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
    "Content-Length: 0\r\n\r\n")


def agree(data: bytes) -> None:
    """If the lean reader accepts ``data``, the general parser reads the same values."""
    lean = read_register(data)
    if lean is None:
        return
    msg = parse_message(data)  # must not raise: the lean reader accepted it
    assert isinstance(msg, SipRequest) and msg.method == "REGISTER"
    assert len(msg.vias) == 1
    via = msg.vias[0]
    assert via.transport.upper() == "UDP"
    assert via.branch == lean.branch
    assert msg.headers.get("Via") == lean.via
    assert msg.headers.get("From") == lean.from_
    assert msg.headers.get("To") == lean.to
    assert msg.to.uri.user == lean.to_user and msg.to.tag is None
    assert msg.call_id == lean.call_id
    assert msg.cseq.number == lean.cseq_number and msg.cseq.method == "REGISTER"
    contacts = msg.headers.get_all("Contact")
    assert contacts == ([lean.contact] if lean.contact is not None else [])
    assert msg.header_int("Expires") == lean.expires
    assert msg.headers.get_all("Authorization") == (
        [lean.authorization] if lean.authorization is not None else [])
    assert (msg.headers.get("User-Agent") or "") == lean.user_agent
    assert msg.body == b""
    # the Via it stamps is the general stamp's
    # (read twice: the second reading knows the Via's shape and its stamp)
    again = read_register(data)
    assert again is not None
    for peer in (Peer("UDP", "198.51.100.7", 40000), Peer("UDP", via.host, via.port or 5060)):
        general = stamp_via_general(via, peer)
        for read in (lean, again, again):
            assert stamp_via(read, peer.host, peer.port) == \
                (str(general) if general else lean.via)


def test_plain_register_is_read() -> None:
    lean = read_register(PLAIN.encode())
    assert lean is not None
    assert (lean.to_user, lean.cseq_number, lean.expires) == ("dev1", 1826, 3600)
    assert lean.branch == "z9hG4bK776asdhds" and lean.rport
    agree(PLAIN.encode())


def test_each_request_of_a_via_shape_is_stamped_with_its_own_branch() -> None:
    """The stamp kept per Via shape and source carries each request's own branch."""
    peer = Peer("UDP", "198.51.100.7", 40000)
    for i in range(3):
        data = PLAIN.replace("z9hG4bK", f"z9hG4bK-{i}-").encode()
        lean = read_register(data)
        msg = parse_message(data)
        assert lean is not None and isinstance(msg, SipRequest)
        assert f"z9hG4bK-{i}-" in stamp_via(lean, peer.host, peer.port)
        assert stamp_via(lean, peer.host, peer.port) == \
            str(stamp_via_general(msg.vias[0], peer))


def test_compact_forms_are_read() -> None:
    text = (PLAIN.replace("Via:", "v:").replace("From:", "f:").replace("To:", "t:")
            .replace("Call-ID:", "i:").replace("Contact:", "m:").replace("Content-Length:", "l:"))
    assert read_register(text.encode()) is not None
    agree(text.encode())


@pytest.mark.parametrize("change", [
    ("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n",
     "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
     "Via: SIP/2.0/UDP 192.0.2.11;branch=z9hG4bKother\r\n"),  # two Vias: a proxy in front
    ("branch=z9hG4bK776asdhds", "branch=776asdhds"),  # RFC 2543 transaction matching
    ("SIP/2.0/UDP", "SIP/2.0/TCP"),
    ("Max-Forwards: 70", "Max-Forwards: 0"),  # 483 is the general path's
    ("Contact: <sip:dev1@192.0.2.10:5060;transport=udp>",
     "Contact: <sip:dev1@192.0.2.10:5060>, <sip:dev1@192.0.2.11:5060>"),
    ("Contact: <sip:dev1@192.0.2.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:1>\"",
     "Contact: *"),
    ("To: <sip:dev1@example.com>", "To: <sip:dev1@example.com>;tag=1"),
    ("To: <sip:dev1@example.com>", "To: \"Dev\" <sip:dev1@example.com>"),
    ("To: <sip:dev1@example.com>", "To: <sip:dev%31@example.com>"),
    ("To: <sip:dev1@example.com>", "To: <sips:dev1@example.com>"),
    ("CSeq: 1826 REGISTER", "CSeq: 1826 INVITE"),
    ("Expires: 3600", "Expires: soon"),
    ("Content-Length: 0\r\n\r\n", "Content-Length: 4\r\n\r\nbody"),
    ("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nRequire: outbound\r\n"),
    ("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nRoute: <sip:proxy;lr>\r\n"),
    ("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nPath: <sip:edge;lr>\r\n"),
    ("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\n continued\r\n"),  # folding
    ("Expires: 3600\r\n", "Expires: 3600\r\nExpires: 60\r\n"),
])
def test_anything_unusual_goes_the_general_way(change: tuple[str, str]) -> None:
    old, new = change
    assert old in PLAIN
    assert read_register(PLAIN.replace(old, new, 1).encode()) is None


def test_torture_messages_are_refused_or_read_alike() -> None:
    files = sorted(shared_data("rfc4475").glob("*.dat")) + \
        sorted(p for p in shared_data("rfc5118").iterdir() if p.is_file())
    assert len(files) >= 49
    for path in files:
        data = path.read_bytes()
        try:
            agree(data)
        except (ParseFailure, SipParseError) as e:  # pragma: no cover - a real failure
            pytest.fail(f"{path.name}: lean accepted what the parser refuses: {e}")


_name = st.sampled_from(["Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact",
                         "m", "Expires", "Authorization", "User-Agent", "Max-Forwards",
                         "Content-Length", "l", "Supported", "Allow", "X-Odd", "route",
                         "VIA", "call-id", "Route ", "Bad Name"])
_value = st.lists(st.sampled_from(
    list("abcAZ09 \t;:=<>@\"',.%*-_/[]") + ["sip:", "z9hG4bK", "REGISTER", "SIP/2.0/UDP ",
                                            "\u00e9", "tag=", "rport", "branch="]),
    max_size=16).map("".join)


@FAST
@given(st.lists(st.tuples(_name, _value), max_size=14), st.booleans())
def test_generated_headers_agree(headers: list[tuple[str, str]], base: bool) -> None:
    lines = [f"{n}: {v}\r\n" for n, v in headers]
    if base:  # start from a valid request so acceptance is reachable
        head, _, _ = PLAIN.partition("\r\n\r\n")
        text = head + "\r\n" + "".join(lines) + "\r\n"
    else:
        text = "REGISTER sip:example.com SIP/2.0\r\n" + "".join(lines) + "\r\n"
    agree(text.encode())


@FAST
@given(st.binary(max_size=300))
def test_mutated_bytes_agree(noise: bytes) -> None:
    data = PLAIN.encode()
    cut = len(noise) % len(data)
    agree(data[:cut] + noise + data[cut + len(noise) // 2:])


def test_rendered_response_parses_and_copies() -> None:
    lean = read_register(PLAIN.encode())
    assert lean is not None
    via = stamp_via(lean, "203.0.113.9", 41000)
    out = render_response(lean, via, 401, "Unauthorized", "t1",
                          'WWW-Authenticate: Digest realm="example.com", nonce="n"\r\n')
    resp = parse_message(out)
    assert isinstance(resp, SipResponse) and resp.status == 401
    v = resp.vias[0]
    assert v.received == "203.0.113.9" and v.rport == 41000 and v.branch == lean.branch
    assert resp.to.tag == "t1" and resp.from_.tag == "456248"
    assert resp.call_id == lean.call_id and resp.cseq.number == 1826
    assert resp.headers.get("WWW-Authenticate", "").startswith("Digest")


def test_replay_cache_holds_for_timer_j_and_is_bounded() -> None:
    cache = ReplayCache(hold=32.0, limit=3)
    cache.put(("b1", "h", 1), Replay.IN_PROGRESS, 0.0)
    cache.put(("b1", "h", 1), b"200", 0.5)  # the answer replaces the marker
    assert cache.get(("b1", "h", 1)) == b"200"
    cache.expire(31.9)
    assert cache.get(("b1", "h", 1)) == b"200"
    cache.expire(32.0)
    assert cache.get(("b1", "h", 1)) is None
    for i in range(5):
        cache.put((f"b{i}", "h", 1), Replay.GENERAL, 40.0)
    assert len(cache) == 3 and cache.get(("b4", "h", 1)) is Replay.GENERAL
