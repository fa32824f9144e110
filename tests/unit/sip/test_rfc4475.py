"""RFC 4475 SIP torture tests: all 49 messages, read in place from the shared test data.

§3.1.1 valid-but-tricky messages must parse to the right values, §3.1.2 invalid
ones must be rejected with a reason naming the problem (and a 400 where a Via
is usable), §3.2/§3.3 parse and expose what a server needs to react.
"""

from __future__ import annotations

import pytest
from support import testdata_dir as shared_data

from gateway.sip.errors import SipParseError
from gateway.sip.headers import NameAddr
from gateway.sip.message import (
    ParseFailure,
    SipRequest,
    SipResponse,
    build_error_response,
    parse_message,
)

ALL = {
    # §3.1.1 valid
    "wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq",
    "semiuri", "transports", "mpart01", "unreason", "noreason",
    # §3.1.2 invalid
    "badinv01", "clerr", "ncl", "scalar02", "scalarlg", "quotbal", "ltgtruri", "lwsruri",
    "lwsstart", "trws", "escruri", "baddate", "regbadct", "badaspec", "baddn", "badvers",
    "mismatch01", "mismatch02", "bigcode",
    # §3.2
    "badbranch",
    # §3.3
    "insuf", "unkscm", "novelsc", "unksm2", "bext01", "invut", "regaut01", "multi01",
    "mcl01", "bcast", "zeromf", "cparam01", "cparam02", "regescrt", "sdp01", "inv2543",
}


def raw(name: str) -> bytes:
    return (shared_data("rfc4475") / f"{name}.dat").read_bytes()


def req(name: str) -> SipRequest:
    m = parse_message(raw(name))
    assert isinstance(m, SipRequest)
    assert_round_trip(m)
    return m


def resp(name: str) -> SipResponse:
    m = parse_message(raw(name))
    assert isinstance(m, SipResponse)
    assert_round_trip(m)
    return m


def assert_round_trip(m: SipRequest | SipResponse) -> None:
    """What we accept we can re-emit (Content-Length is always written, §20.14)."""
    again = parse_message(bytes(m))
    if "Content-Length" not in m.headers:
        again.headers.remove("Content-Length")
    assert again == m


def rejected(name: str, *needles: str) -> ParseFailure:
    with pytest.raises(ParseFailure) as ei:
        parse_message(raw(name))
    f = ei.value
    for needle in needles:
        assert needle in f.reason, f.reason
    return f


def answered_400(f: ParseFailure) -> bytes:
    """The answer build_error_response gives: status line, Warning 399 naming the problem."""
    assert f.is_request is True
    out = build_error_response(f)
    assert out is not None
    head = out.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    assert lines[0].startswith(f"SIP/2.0 {f.status} ")
    if f.status == 400:
        assert lines[0] == f"SIP/2.0 400 Bad Request - {f.reason}"
    assert f'Warning: 399 sipgw "{f.reason}"' in lines
    assert f.headers is not None
    for value in f.headers.get_raw("Via"):
        assert f"Via: {value}" in lines
    for name in ("Call-ID", "CSeq"):
        values = f.headers.get_raw(name)
        if values:
            assert f"{name}: {values[0]}" in lines
    for line in lines:
        if line.startswith("To: "):
            try:
                to = NameAddr.parse(line[4:])
            except SipParseError:
                continue  # a To we cannot parse is echoed as it came
            assert to.tag  # §8.2.6.2
    return out


def test_every_file_is_covered() -> None:
    names = {p.stem for p in shared_data("rfc4475").glob("*.dat")}
    assert names == ALL and len(names) == 49


# -- §3.1.1 valid messages ---------------------------------------------------------


def test_wsinv_short_tortuous_invite() -> None:
    m = req("wsinv")
    assert m.method == "INVITE"
    assert m.uri.user == "vivekg" and m.uri.host == "chair-dnrc.example.com"
    assert m.uri.has_param("unknownparam")
    assert m.to.uri.user == "vivekg" and m.to.tag == "1918181833n" and not m.to.bracketed
    assert m.from_.display == 'J Rosenberg \\"' and m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (m.cseq.number, m.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host) for v in m.vias] == [
        ("UDP", "192.0.2.2"), ("TCP", "spindle.example.com"), ("UDP", "192.168.255.111")]
    assert [v.branch for v in m.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert m.headers.get("Subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    route = m.headers.get("Route") or ""
    assert "unknown-no-value" in route
    (contact,) = m.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue" and contact.param("secondparam") == ""
    assert contact.param("q") == "0.33"
    assert m.content_type == "application/sdp" and len(m.body) == 150


def test_intmeth_wide_range_of_valid_characters() -> None:
    m = req("intmeth")
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method == method and m.cseq.method == method and m.cseq.number == 139122385
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.uri.host == "example.com" and m.uri.params == ()
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.from_.param("fromparam''~+*_!.-%") == "работающий"
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.max_forwards == 255
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


def test_esc01_valid_percent_escapes() -> None:
    m = req("esc01")
    assert m.uri.user == "sips%3Auser%40example.com"
    assert m.uri.user_unescaped == "sips:user@example.com" and m.uri.host == "example.net"
    assert m.to.uri.user_unescaped == "user"
    assert m.from_.uri.user_unescaped == "I have spaces"
    assert m.content_type == "application/sdp"
    (c,) = m.contacts
    assert c.uri.user_unescaped == "caller"
    assert c.uri.equivalent(parse_uri("sip:caller@host5.example.net;lr;name=value%2541"))
    assert not c.uri.equivalent(parse_uri("sip:caller@host5.example.net;lr;name=valueA"))


def parse_uri(text: str):  # noqa: ANN201 - tiny helper
    from gateway.sip.uri import Uri

    return Uri.parse(text)


def test_escnull_escaped_nulls() -> None:
    m = req("escnull")
    assert m.to.uri.user_unescaped == "null-\x00-null"
    assert m.from_.uri.user_unescaped == "null-\x00-null"
    assert [c.uri.user_unescaped for c in m.contacts] == ["\x00", "\x00\x00"]


def test_esc02_percent_that_is_not_an_escape() -> None:
    m = req("esc02")
    assert m.method == "RE%47IST%45R"  # not REGISTER: tokens are not unescaped
    assert m.cseq.method == "RE%47IST%45R"
    assert m.to.display == "%Z%45" and m.from_.display == "%Z%45"
    assert m.top_via.branch == "z9hG4bK209%fzsnel234"
    assert [c.uri.user for c in m.contacts] == ["alias1", "alias3"]
    assert m.headers.get("C%6fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_no_lws_between_display_and_bracket() -> None:
    m = req("lwsdisp")
    assert m.from_.display == "caller" and m.from_.uri.user == "caller"
    assert m.from_.tag == "323"


def test_longreq_long_values() -> None:
    m = req("longreq")
    assert m.to.display is not None and m.to.display.startswith("I have a user name of ")
    assert "proportion" in m.to.display
    assert m.to.uri.port == 6000
    assert m.from_.uri.user.startswith("amazinglylongcallername")
    assert m.from_.tag is not None and len(m.from_.tag) > 150
    assert len(m.vias) == 34
    assert m.vias[-1].received == "192.0.2.5" and m.vias[0].host == "sip33.example.com"
    assert len(m.headers.get_all("Unknown-LongLongLongLongLongLongLongLongLongLongLongLong"
                                 "LongLongLongLongLongLongLongLong-Name")) == 1
    assert m.call_id.startswith("longreq.onereallyreally")
    assert len(m.contacts) == 1
    assert m.content_type == "application/sdp"


def test_dblreq_extra_octets_in_datagram_are_ignored() -> None:
    m = req("dblreq")
    assert m.method == "REGISTER" and m.body == b""
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_semiuri_semicolons_in_user_part() -> None:
    m = req("semiuri")
    assert m.uri.user == "user;par=u%40example.net"
    assert m.uri.host == "example.com" and m.uri.params == ()
    assert m.headers.get_all("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed", "multipart/signed",
        "message/sip", "message/sipfrag"]


def test_transports_varied_and_unknown() -> None:
    m = req("transports")
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_multipart_body() -> None:
    m = req("mpart01")
    assert m.method == "MESSAGE" and len(m.body) == 553
    assert m.content_type == "multipart/mixed"
    assert m.top_via.has_rport and m.top_via.rport is None
    assert b"--7a9cbec02ceef655--" in m.body


def test_unreason_unusual_reason_phrase() -> None:
    m = resp("unreason")
    assert m.status == 200 and m.reason.startswith("= 2**3 * 5**2 ")
    assert "\u043d\u043e" in m.reason
    assert len(m.body) == 154


def test_noreason_empty_reason_phrase() -> None:
    m = resp("noreason")
    assert m.status == 100 and m.reason == ""


# -- §3.1.2 invalid messages -------------------------------------------------------


def test_badinv01_extraneous_separators() -> None:
    f = rejected("badinv01", "Via")
    answered_400(f)  # the sent-by is still usable


def test_clerr_content_length_larger_than_body() -> None:
    answered_400(rejected("clerr", "Content-Length 9999"))


def test_ncl_negative_content_length() -> None:
    answered_400(rejected("ncl", "bad Content-Length '-999'"))


def test_scalar02_overlarge_request_scalars() -> None:
    answered_400(rejected("scalar02", "CSeq"))


def test_scalarlg_overlarge_response_scalars_dropped() -> None:
    f = rejected("scalarlg", "CSeq")
    assert f.is_request is False and build_error_response(f) is None


def test_quotbal_unterminated_quoted_display_name() -> None:
    answered_400(rejected("quotbal", "To", "unterminated quoted string"))


def test_ltgtruri_request_uri_in_brackets() -> None:
    answered_400(rejected("ltgtruri", "bad Request-URI"))


def test_lwsruri_whitespace_in_request_uri() -> None:
    answered_400(rejected("lwsruri", "Request-URI"))


def test_lwsstart_multiple_spaces_in_request_line() -> None:
    answered_400(rejected("lwsstart", "multiple spaces in Request-Line"))


def test_trws_trailing_whitespace_in_request_line() -> None:
    answered_400(rejected("trws", "trailing whitespace in Request-Line"))


def test_escruri_escaped_headers_in_request_uri() -> None:
    answered_400(rejected("escruri", "bad Request-URI", "headers"))


def test_baddate_non_gmt_date() -> None:
    answered_400(rejected("baddate", "bad Date", "EST"))


def test_regbadct_name_addr_needs_brackets() -> None:
    answered_400(rejected("regbadct", "Contact", "<>"))


def test_badaspec_spaces_inside_brackets() -> None:
    answered_400(rejected("badaspec", "To", "whitespace inside <URI>"))


def test_baddn_non_token_display_name() -> None:
    answered_400(rejected("baddn", "From", "display name"))


def test_badvers_unknown_version_gets_505() -> None:
    f = rejected("badvers", "SIP version 7.0 not supported")
    assert f.status == 505
    out = build_error_response(f)
    assert out is not None and out.startswith(b"SIP/2.0 505 ")


def test_mismatch01_cseq_method_mismatch() -> None:
    answered_400(rejected("mismatch01", "CSeq method INVITE", "OPTIONS"))


def test_mismatch02_unknown_method_cseq_mismatch() -> None:
    answered_400(rejected("mismatch02", "CSeq method INVITE", "NEWMETHOD"))


def test_bigcode_overlarge_status_code_dropped() -> None:
    f = rejected("bigcode", "bad status code '4294967301'")
    assert f.is_request is False and build_error_response(f) is None


# -- §3.2 transaction layer ----------------------------------------------------------


def test_badbranch_bare_magic_cookie() -> None:
    m = req("badbranch")
    assert m.top_via.branch == "z9hG4bK"
    assert not m.top_via.has_rfc3261_branch


# -- §3.3 application layer ----------------------------------------------------------


def test_insuf_missing_required_headers() -> None:
    f = rejected("insuf", "missing From, To and Call-ID headers")
    out = answered_400(f)
    assert b"CSeq: 193942 INVITE" in out


def test_unkscm_unknown_scheme_is_opaque_for_416() -> None:
    m = req("unkscm")
    assert m.uri.scheme == "nobodyknowsthisscheme"
    assert m.uri.opaque == "totallyopaquecontent" and not m.uri_scheme_supported


def test_novelsc_atypical_scheme_is_opaque_for_416() -> None:
    m = req("novelsc")
    assert m.uri.scheme == "soap.beep" and m.uri.opaque == "//192.0.2.103:3002"
    assert not m.uri_scheme_supported


def test_unksm2_unknown_schemes_in_headers_accepted() -> None:
    m = req("unksm2")
    assert m.to.uri.scheme == "isbn" and m.to.uri.opaque == "2983792873"
    assert m.from_.uri.scheme == "http" and m.from_.tag == "3234233"
    (c,) = m.contacts
    assert c.uri.scheme == "name" and c.uri.opaque == "John_Smith"


def test_bext01_unknown_require_and_proxy_require_exposed() -> None:
    m = req("bext01")
    assert m.require == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.proxy_require == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


def test_invut_unknown_content_type_exposed_for_415() -> None:
    m = req("invut")
    assert m.content_type == "application/unknownformat" and len(m.body) == 40


def test_regaut01_unknown_authorization_scheme_parses() -> None:
    m = req("regaut01")
    auth = m.headers.get("Authorization") or ""
    assert auth.split(" ", 1)[0] == "NoOneKnowsThisScheme"


def test_multi01_multiple_single_valued_headers() -> None:
    answered_400(rejected("multi01", "multiple CSeq headers"))


def test_mcl01_multiple_content_length() -> None:
    answered_400(rejected("mcl01", "multiple Content-Length headers"))


def test_bcast_broadcast_via_in_response_parses() -> None:
    m = resp("bcast")
    assert m.status == 200 and m.vias[1].host == "255.255.255.255"


def test_zeromf_max_forwards_zero() -> None:
    m = req("zeromf")
    assert m.max_forwards == 0 and m.method == "OPTIONS"


def test_cparam01_contact_header_parameter() -> None:
    m = req("cparam01")
    (c,) = m.contacts
    assert not c.bracketed and c.uri.params == () and c.param("unknownparam") == ""
    assert c.uri.user == "+19725552222"


def test_cparam02_contact_uri_parameter() -> None:
    m = req("cparam02")
    (c,) = m.contacts
    assert c.bracketed and c.uri.has_param("unknownparam") and c.params == ()


def test_regescrt_escaped_header_in_contact_uri() -> None:
    m = req("regescrt")
    (c,) = m.contacts
    assert c.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)


def test_sdp01_accept_without_sdp_exposed() -> None:
    m = req("sdp01")
    assert m.headers.get_all("Accept") == ["text/nobodyKnowsThis"]
    assert m.content_type == "application/sdp"


def test_inv2543_rfc2543_syntax_accepted() -> None:
    m = req("inv2543")
    assert m.top_via.branch is None and not m.top_via.has_rfc3261_branch
    assert m.max_forwards is None and "Content-Length" not in m.headers
    assert m.to.param("user") == "phone" and m.to.uri.params == ()  # §20.10
    assert m.body.startswith(b"v=0")
