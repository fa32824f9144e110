"""Admin API pieces without sockets: OpenAPI parity, auth header checks, page escaping."""

from __future__ import annotations

import base64
import json
import re
from importlib import resources
from typing import Any

from gateway.identity.bulk import BulkOutcome
from gateway.ops.admin import AdminApi, _basic_ok, _bearer_ok
from gateway.ops.page import esc, firmware_cell
from gateway.registrar.devices import Device, FirmwareRecord

SPEC = json.loads(resources.files("gateway.ops").joinpath("openapi-admin.json").read_text())


class _Node:
    devices: Any = object()
    redis: Any = None


def _routes() -> set[tuple[str, str]]:
    api = AdminApi(_Node(), "t" * 32, None, None, None)  # type: ignore[arg-type]
    out = set()
    for method, pattern, _ in api.routes:
        path = pattern.pattern.strip("^$")
        path = re.sub(r"\(\[\^/\]\+\)", "{}", path)
        out.add((method, "/admin/v1/" + path))
    return out


def test_openapi_documents_every_route_and_nothing_else() -> None:
    documented = set()
    for path, item in SPEC["paths"].items():
        if not path.startswith("/admin/v1/"):
            continue
        norm = re.sub(r"\{[^}]+\}", "{}", path)
        for method in item:
            if method != "parameters":
                documented.add((method.upper(), norm))
    assert documented == _routes()
    assert SPEC["openapi"].startswith("3.1")
    assert {"/healthz", "/ops"} <= set(SPEC["paths"])


def test_openapi_lists_every_bulk_result_code() -> None:
    enum = SPEC["components"]["schemas"]["Row"]["properties"]["result"]["enum"]
    assert sorted(enum) == sorted(m.code for m in BulkOutcome)


def test_bearer_and_basic_checks() -> None:
    token = "abc123" * 8
    assert _bearer_ok(f"Bearer {token}".encode(), token)
    assert _bearer_ok(f"bearer {token}".encode(), token)
    for bad in (None, b"", b"Bearer", f"Bearer {token}x".encode(), token.encode(),
                f"Basic {token}".encode()):
        assert not _bearer_ok(bad, token)
    good = b"Basic " + base64.b64encode(f"admin:{token}".encode())
    assert _basic_ok(good, token)
    for bad in (None, b"Basic !!!", b"Basic " + base64.b64encode(b"admin:nope"),
                f"Bearer {token}".encode()):
        assert not _basic_ok(bad, token)


def test_escaping_and_firmware_verdicts() -> None:
    hostile = "<script>alert(1)</script>\"'&"
    assert esc(hostile) == "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;"
    base = dict(device_id="0004f2000001", vendor="Yealink", model="T57W", tenant="t",
                state="unpaired", sip_username="u", realm="r", created=0.0, last_seen=0.0)
    flagged = Device(**base, firmware=FirmwareRecord(
        compliance="below_approved", flagged=True, firmware=hostile, upgrade_to="96.86.5.1",
        reason=hostile, checked=1.0))
    cell = firmware_cell(flagged)
    assert "non-compliant; approved 96.86.5.1" in cell and "<script" not in cell
    rejected = Device(**base, firmware=FirmwareRecord(admitted=False, reason="below minimum",
                                                      firmware="80.0", checked=1.0))
    assert "rejected" in firmware_cell(rejected)
    fresh = Device(**base)
    assert "not registered yet" in firmware_cell(fresh)
