"""RFC 5118 IPv6 torture tests, read in place from the shared test data."""

from __future__ import annotations

import pytest
from support import testdata_dir as shared_data

from gateway.sip.message import ParseFailure, SipRequest, build_error_response, parse_message
from gateway.sip.uri import Uri


def req(name: str) -> SipRequest:
    m = parse_message((shared_data("rfc5118") / name).read_bytes())
    assert isinstance(m, SipRequest)
    assert parse_message(bytes(m)) == m
    return m


def test_every_file_is_covered() -> None:
    assert len(list(shared_data("rfc5118").iterdir())) == 12


def test_4_1_valid_ipv6_reference() -> None:
    m = req("ipv6-good")
    assert m.uri.host == "[2001:db8::10]" and m.uri.host_unbracketed == "2001:db8::10"
    assert m.top_via.host == "[2001:db8::9:1]" and m.top_via.port is None
    assert m.contacts[0].uri.host == "[2001:db8::1]"


def test_4_2_unbracketed_ipv6_request_uri_rejected() -> None:
    with pytest.raises(ParseFailure) as ei:
        parse_message((shared_data("rfc5118") / "ipv6-bad").read_bytes())
    assert "bad Request-URI" in ei.value.reason and "IPv6" in ei.value.reason
    out = build_error_response(ei.value)
    assert out is not None and out.startswith(b"SIP/2.0 400 ")


def test_4_3_port_ambiguous_is_part_of_the_address() -> None:
    m = req("port-ambiguous")
    assert m.uri.host == "[2001:db8::10:5070]" and m.uri.port is None


def test_4_4_port_unambiguous() -> None:
    m = req("port-unambiguous")
    assert m.uri.host == "[2001:db8::10]" and m.uri.port == 5070


@pytest.mark.parametrize("name, raw", [
    ("via-received-param-with-delim", "[2001:db8::9:255]"),
    ("via-received-param-no-delim", "2001:db8::9:255"),
])
def test_4_5_received_with_and_without_delimiters(name: str, raw: str) -> None:
    via = req(name).top_via
    assert via.received == raw and via.received_host == "2001:db8::9:255"
    assert via.host == "[2001:db8::9:1]"


@pytest.mark.parametrize("name", ["ipv6-in-sdp", "mult-ip-in-sdp"])
def test_4_6_4_8_ipv6_in_sdp_body_kept(name: str) -> None:
    m = req(name)
    assert m.content_type == "application/sdp"
    assert len(m.body) == m.header_int("Content-Length")
    assert b"IN IP6" in m.body


def test_4_7_multiple_ip_versions_in_headers() -> None:
    m = req("mult-ip-in-header")
    assert [(v.transport, v.host, v.port) for v in m.vias] == [
        ("UDP", "[2001:db8::9:1]", 6050), ("UDP", "192.0.2.1", None),
        ("TCP", "[2001:db8::9:255]", None)]
    assert m.vias[2].received == "192.0.2.200"


def test_4_9_ipv4_mapped_ipv6() -> None:
    m = req("ipv4-mapped-ipv6")
    assert m.top_via.host == "[::ffff:192.0.2.10]" and m.top_via.port == 19823
    assert m.vias[1].host == "[::ffff:192.0.2.2]"
    assert m.contacts[0].display == "T. desk phone"
    assert m.contacts[0].uri.host == "[::ffff:192.0.2.2]"


def test_4_10_two_colon_form() -> None:
    m = req("ipv6-correct-abnf-2-colons")
    assert m.uri.host == "[2001:db8::192.0.2.1]" and m.to.uri.host == "[2001:db8::192.0.2.1]"


def test_4_10_three_colon_form_accepted_leniently() -> None:
    # RFC 5118 §4.10: the RFC 3261 ABNF derives it; be liberal in what we accept
    m = req("ipv6-bug-abnf-3-colons")
    assert m.uri.host == "[2001:db8:::192.0.2.1]"


@pytest.mark.parametrize("bad", [
    "sip:[2001:db8::10", "sip:[2001:db8::g]", "sip:[1:2:3:4:5:6:7:8:9]", "sip:[::1]x",
    "sip:[2001:db8::::1.2.3.4]", "sip:[::1]:65536", "sip:[1:::2]",
])
def test_bad_ipv6_references_rejected(bad: str) -> None:
    from gateway.sip.errors import SipParseError

    with pytest.raises(SipParseError):
        Uri.parse(bad)
