"""Strict validation of the v1 API bodies: bad input is a SchemaError naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backend import schema as s

OID = "a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e01"
GOOD_CALL = {"from_user": OID, "from_endpoint": "desk-1",
             "target": {"kind": "pstn", "value": "+14255550100"}, "sdp_offer": "v=0\r\n"}


def test_roundtrips() -> None:
    c = s.CallCreate.from_json(GOOD_CALL)
    assert s.CallCreate.from_json(c.to_json()) == c
    e = s.Event(type="call.incoming", call_id="c", user=OID, endpoint_id="x", sdp="v=0")
    assert s.Event.from_json(json.loads(json.dumps(e.to_json()))) == e
    call = s.Call(call_id="c1", state="connected", target=s.Target("user", OID))
    assert s.Call.from_json(call.to_json()) == call
    ep = s.EndpointCreate.from_json({"endpoint_id": "e1", "device_id": "mac:001122",
                                     "capabilities": ["audio", "mwi"]})
    assert ep.kind == "sip-device" and ep.expires == 3600
    assert s.Dtmf.from_json({"endpoint_id": "e", "digits": "1a#"}).digits == "1A#"


def test_unpaired_device_may_only_omit_user_for_emergency() -> None:
    body = dict(GOOD_CALL, target={"kind": "emergency", "value": "911"})
    del body["from_user"]
    assert s.CallCreate.from_json(body).from_user == ""
    body["target"] = {"kind": "user", "value": "bob@contoso.example"}
    with pytest.raises(s.SchemaError, match="from_user: missing"):
        s.CallCreate.from_json(body)


@pytest.mark.parametrize(("patch", "needle"), [
    ({"target": {"kind": "fax", "value": "1"}}, "target.kind"),
    ({"target": {"kind": "pstn", "value": "4255550100"}}, "E.164"),
    ({"target": {"kind": "pstn", "value": "+1", "x": 1}}, "unknown field 'x'"),
    ({"target": "911"}, "target"),
    ({"sdp_offer": "hello"}, "sdp_offer: not an SDP"),
    ({"sdp_offer": 5}, "sdp_offer: expected a string, got number"),
    ({"from_user": "alice"}, "from_user: not a GUID"),
    ({"from_endpoint": "a b"}, "from_endpoint: malformed"),
    ({"from_endpoint": "x" * 200}, "from_endpoint: longer than"),
    ({"location": ["x"]}, "location: expected a string, got array"),
    ({"extra": True}, "unknown field 'extra'"),
])
def test_bad_call_bodies(patch: dict[str, Any], needle: str) -> None:
    with pytest.raises(s.SchemaError) as info:
        s.CallCreate.from_json(dict(GOOD_CALL, **patch))
    assert needle in str(info.value)


@pytest.mark.parametrize(("cls", "body", "needle"), [
    (s.Reject, {"endpoint_id": "e", "reason": "nope"}, "reason"),
    (s.Dnd, {"dnd": "yes"}, "dnd: expected true or false, got string"),
    (s.Dnd, {}, "dnd: missing"),
    (s.Dtmf, {"endpoint_id": "e", "digits": "12x"}, "digits: malformed"),
    (s.Dtmf, {"endpoint_id": "e", "digits": "1", "duration_ms": True}, "duration_ms"),
    (s.EndpointCreate, {"endpoint_id": "e", "device_id": "d", "kind": "teams-desktop"},
     "kind"),
    (s.EndpointCreate, {"endpoint_id": "e", "device_id": "d", "capabilities": ["fly"]},
     "capabilities: unknown value"),
    (s.EndpointCreate, {"endpoint_id": "e", "device_id": "d", "expires": 5}, "expires"),
    (s.Answer, {"endpoint_id": "e"}, "sdp_answer: missing"),
    (s.Event, {"v": 2, "type": "call.incoming"}, "unsupported event version"),
    (s.SimAction, {"call_id": "c", "digits": "z"}, "digits"),
    (s.Call, [], "expected a JSON object, got array"),
])
def test_bad_bodies(cls: Any, body: Any, needle: str) -> None:
    with pytest.raises(s.SchemaError) as info:
        cls.from_json(body)
    assert needle in str(info.value)


@pytest.mark.parametrize(("raw", "needle"), [
    (b"{", "malformed JSON"),
    (b"null", "expected a JSON object, got null"),
    (b"\xff", "not UTF-8"),
    (b"[" * 50000, "malformed JSON"),
    (b" " * (s.MAX_BODY + 1), "larger than"),
])
def test_parse_body_errors(raw: bytes, needle: str) -> None:
    with pytest.raises(s.SchemaError) as info:
        s.parse_body(raw)
    assert needle in str(info.value)


def test_unknown_event_types_are_kept_for_the_client_to_skip() -> None:
    ev = s.Event.from_json({"v": 1, "type": "voicemail.mwi", "count": 3})
    assert ev.type == "voicemail.mwi" and ev.extra == {"count": 3}
    assert "voicemail.mwi" in s.RESERVED_EVENT_TYPES


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["from_user", "from_endpoint", "target", "sdp_offer",
                                       "kind", "value", "endpoint_id", "digits", "dnd",
                                       "location", "reason", "x"]), children, max_size=6),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_only_schema_errors(value: Any) -> None:
    for cls in (s.CallCreate, s.Answer, s.Reject, s.Dtmf, s.Dnd, s.EndpointCreate, s.Event,
                s.SimCallCreate, s.SimAction, s.Call, s.UserInfo):
        try:
            cls.from_json(value)
        except s.SchemaError:
            pass
