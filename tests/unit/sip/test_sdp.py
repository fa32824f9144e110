"""SDP (RFC 4566) parse/serialise, hold detection and answer mirroring (RFC 3264)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip.sdp import (
    Direction,
    SdpError,
    SessionDescription,
    answer_direction,
    is_hold,
    mirror_answer,
    offered_direction,
    simple_answer,
)

OFFER = ("v=0\r\no=phone 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
         "m=audio 5004 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
         "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n")
ANSWER = ("v=0\r\no=sipgw 5 5 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\n"
          "t=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n")


def test_round_trip_keeps_text() -> None:
    sdp = SessionDescription.parse(OFFER)
    assert str(sdp) == OFFER
    assert bytes(sdp) == OFFER.encode()
    assert sdp.media[0].formats == ["8", "0", "101"]
    assert sdp.media[0].rtpmap("0") == "PCMU/8000"
    assert sdp.origin_version == 1


def test_lf_only_is_accepted_and_normalised() -> None:
    assert str(SessionDescription.parse(OFFER.replace("\r\n", "\n"))) == OFFER


@pytest.mark.parametrize("bad", [
    "", "o=x 1 1 IN IP4 1.2.3.4\r\n", "v=0\r\nbogus\r\n", "v=0\r\n",
    "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\nm=audio port RTP/AVP 0\r\n",
    "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
    "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\nc=IN IP9 x\r\n",
    "v=0\r\no=broken\r\n",
])
def test_malformed_is_an_sdp_error(bad: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(bad)


def test_non_utf8_and_oversize() -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(b"v=0\r\n\xff\xfe")
    with pytest.raises(SdpError):
        SessionDescription.parse("v=0\r\n" + "a=x\r\n" * 20000)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_sdp_error(data: bytes) -> None:
    try:
        SessionDescription.parse(data)
    except SdpError:
        pass


@pytest.mark.parametrize(("change", "held"), [
    (("a=sendrecv", "a=sendonly"), True),
    (("a=sendrecv", "a=inactive"), True),
    (("a=sendrecv", "a=recvonly"), False),
    (("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0"), True),
    (("a=sendrecv", "a=sendrecv"), False),
])
def test_hold_detection(change: tuple[str, str], held: bool) -> None:
    assert is_hold(SessionDescription.parse(OFFER.replace(*change))) is held


def test_session_level_direction_applies() -> None:
    text = OFFER.replace("a=sendrecv\r\n", "").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    sdp = SessionDescription.parse(text)
    assert is_hold(sdp)
    assert offered_direction(sdp) is Direction.SENDONLY


def test_answer_direction_table() -> None:
    assert answer_direction(Direction.SENDONLY) is Direction.RECVONLY
    assert answer_direction(Direction.RECVONLY) is Direction.SENDONLY
    assert answer_direction(Direction.INACTIVE) is Direction.INACTIVE
    assert answer_direction(Direction.SENDRECV) is Direction.SENDRECV


@pytest.mark.parametrize(("offer_change", "expected"), [
    (("a=sendrecv", "a=sendonly"), Direction.RECVONLY),
    (("a=sendrecv", "a=inactive"), Direction.INACTIVE),
    (("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0"), Direction.RECVONLY),
    (("a=sendrecv", "a=sendrecv"), Direction.SENDRECV),
])
def test_mirror_answer(offer_change: tuple[str, str], expected: Direction) -> None:
    previous = SessionDescription.parse(ANSWER)
    answer = mirror_answer(previous, SessionDescription.parse(OFFER.replace(*offer_change)))
    assert answer.media[0].direction is expected
    assert answer.origin_version == 6
    assert answer.media[0].formats == ["8"]
    assert str(previous) == ANSWER  # the previous answer is left alone


def test_mirror_answer_disables_streams_the_offer_disabled() -> None:
    offer = SessionDescription.parse(OFFER.replace("m=audio 5004", "m=audio 0"))
    assert mirror_answer(SessionDescription.parse(ANSWER), offer).media[0].port == 0


def test_simple_answer_takes_first_codec() -> None:
    answer = simple_answer(SessionDescription.parse(OFFER), "198.51.100.1", 40000, 7)
    m = answer.media[0]
    assert m.formats == ["8"] and m.rtpmap("8") == "PCMA/8000"
    assert m.direction is Direction.SENDRECV
    assert SessionDescription.parse(str(answer)).connection == "IN IP4 198.51.100.1"
