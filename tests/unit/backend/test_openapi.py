"""The OpenAPI document (gateway/backend/openapi.json) matches what the server registers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import gateway.backend.schema as s
from gateway.backend.reference.server import registered_paths

DOC = json.loads((Path(s.__file__).parent / "openapi.json").read_text())
METHODS = {"get", "post", "put", "delete", "patch"}


def test_document_is_openapi_31() -> None:
    assert DOC["openapi"].startswith("3.1")
    assert DOC["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_routes_match_paths() -> None:
    documented = {(m.upper(), p) for p, item in DOC["paths"].items() for m in item
                  if m in METHODS}
    assert documented == registered_paths()


def test_every_ref_resolves() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                _, _, kind, name = ref.split("/")
                assert name in DOC["components"][kind], ref
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(DOC)


SAMPLES: dict[str, Any] = {
    "EndpointCreate": s.EndpointCreate(endpoint_id="e", device_id="d"),
    "Endpoint": s.Endpoint(endpoint_id="e", user="u", kind="sip-device", device_id="d"),
    "Dnd": s.Dnd(dnd=True),
    "Target": s.Target(kind="pstn", value="+14255550100"),
    "CallCreate": s.CallCreate(from_user="u", from_endpoint="e",
                               target=s.Target(kind="user", value="x"), sdp_offer="v=0",
                               location="<presence/>"),
    "Call": s.Call(call_id="c", state="offered"),
    "EndpointAction": s.EndpointAction(endpoint_id="e"),
    "Answer": s.Answer(endpoint_id="e", sdp_answer="v=0"),
    "Reject": s.Reject(endpoint_id="e"),
    "Reoffer": s.Reoffer(endpoint_id="e", sdp_offer="v=0"),
    "ReofferAnswer": s.ReofferAnswer(sdp_answer="v=0"),
    "Dtmf": s.Dtmf(endpoint_id="e", digits="1"),
    "CallingPolicy": s.PolicyInfo(True, True),
    "Tenant": s.TenantInfo("t", "n", "d", "commercial", True, True),
    "SimClientCreate": s.SimClientCreate(user="u"),
    "SimCallCreate": s.SimCallCreate(from_user="u", to="v", from_endpoint="e", sdp_offer="v=0"),
    "SimAction": s.SimAction(call_id="c", reason="busy", digits="1"),
    "Error": s.ApiError(error="e", message="m"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_component_properties_match_dataclasses(name: str) -> None:
    props = set(DOC["components"]["schemas"][name]["properties"])
    assert set(SAMPLES[name].to_json()) == props
