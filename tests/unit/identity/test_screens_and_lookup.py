"""Pure checks: sign-in screens per vendor (escaping, refresh), record -> screen mapping,
the backend-API directory lookup mapping, the single government-cloud definition."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from gateway.backend.client import BackendError, BackendUnavailable
from gateway.backend.directory import UNSUPPORTED_CLOUDS, Tenant
from gateway.backend.schema import PolicyInfo, TenantInfo, UserInfo
from gateway.identity.lookup import BackendDirectoryLookup, LookupUnavailable
from gateway.identity.pairing import GOVERNMENT_CLOUDS, PairingRecord, PairingState, Transition
from gateway.identity.screens import (
    ScreenState,
    SignInScreen,
    render_signin,
    screen_from_record,
    vendor_family,
)

T = TypeVar("T")
HOSTILE = "</Text><script>alert(1)</script>&\"'\x00\x1b]"


def test_one_government_cloud_definition_from_the_seed() -> None:
    assert GOVERNMENT_CLOUDS is UNSUPPORTED_CLOUDS
    assert UNSUPPORTED_CLOUDS == {"gcc", "gcchigh", "dod"}
    assert not Tenant("t", "T", "t.example", cloud="gcc").sip_gateway_available
    assert Tenant("t", "T", "t.example").sip_gateway_available


PENDING = SignInScreen(ScreenState.PENDING, "https://idp.example/devicelogin", "BCDF2345", 125)


@pytest.mark.parametrize("vendor", ["Cisco", "Poly", "Yealink", "AudioCodes", "Spectralink",
                                    "Acme"])
def test_pending_screen_shows_url_code_and_countdown(vendor: str) -> None:
    out = render_signin(vendor, PENDING)
    text = out.body.decode()
    assert "https://idp.example/devicelogin" in text and "BCDF2345" in text
    assert "Expires in 2:05" in text
    if vendor_family(vendor) != "spectralink":
        ET.fromstring(out.body)  # well-formed XML / XHTML


def test_vendor_dialects_and_refresh() -> None:
    cisco = render_signin("Cisco", PENDING)
    root = ET.fromstring(cisco.body)
    assert root.tag == "CiscoIPPhoneText" and root.find("Title") is not None
    assert dict(cisco.headers)["Refresh"] == "5" and cisco.content_type.startswith("text/xml")
    yealink = ET.fromstring(render_signin("Yealink", PENDING).body)
    assert yealink.tag == "YealinkIPPhoneTextScreen" and yealink.get("refresh") == "5"
    poly = render_signin("Polycom", PENDING).body.decode()
    assert '<meta http-equiv="refresh" content="5"/>' in poly
    spectralink = render_signin("Spectralink", PENDING)
    assert spectralink.content_type.startswith("text/plain")
    assert dict(spectralink.headers)["Refresh"] == "5"
    # A code about to expire refreshes when it does; a final state refreshes slowly.
    soon = SignInScreen(ScreenState.PENDING, "https://x", "BCDF2345", 2)
    assert dict(render_signin("Cisco", soon).headers)["Refresh"] == "2"
    done = SignInScreen(ScreenState.PAIRED, user_name="A", number="+1")
    assert dict(render_signin("Cisco", done).headers)["Refresh"] == "30"


@pytest.mark.parametrize("vendor", ["Cisco", "Poly", "Yealink", "AudioCodes"])
def test_hostile_values_are_escaped(vendor: str) -> None:
    screen = SignInScreen(ScreenState.PAIRED, user_name=HOSTILE, number=HOSTILE)
    body = render_signin(vendor, screen).body
    root = ET.fromstring(body)  # still well-formed: nothing broke out
    text = "".join(root.itertext())
    assert "<script>" in text  # shown as text ...
    assert b"<script>" not in body and b"\x00" not in body and b"\x1b" not in body  # ... not markup
    failed = SignInScreen(ScreenState.FAILED, reason="x" * 5000 + "<")
    assert len(render_signin(vendor, failed).body) < 2500  # long values are cut


def _record(state: PairingState, reason: str = "", **kw: Any) -> PairingRecord:
    history = kw.pop("history", (Transition(1.0, PairingState.PAIRING, state, reason),))
    return PairingRecord("0004f2000001", state=state, reason=reason, history=history, **kw)


@pytest.mark.parametrize(("record", "state"), [
    (_record(PairingState.UNPAIRED, history=()), ScreenState.NONE),
    (_record(PairingState.PAIRING, user_code="C", verification_uri="u", expires_at=1100.0),
     ScreenState.PENDING),
    (_record(PairingState.PAIRING, expires_at=900.0), ScreenState.EXPIRED),
    (_record(PairingState.PAIRED, user_name="Alice", number="+1"), ScreenState.PAIRED),
    (_record(PairingState.UNPAIRED, "authorization_declined: The sign-in was declined."),
     ScreenState.DECLINED),
    (_record(PairingState.UNPAIRED, "expired_token: The pairing code expired."),
     ScreenState.EXPIRED),
    (_record(PairingState.UNPAIRED, "no_phone_number: a has no phone number assigned."),
     ScreenState.FAILED),
    (_record(PairingState.UNPAIRED, "signed out from the phone",
             history=(Transition(1.0, PairingState.SIGNING_OUT, PairingState.UNPAIRED,
                                 "signed out"),)), ScreenState.NONE),
])
def test_screen_from_record(record: PairingRecord, state: ScreenState) -> None:
    screen = screen_from_record(record, now=1000.0)
    assert screen.state is state
    if state is ScreenState.PENDING:
        assert screen.seconds_left == 100 and screen.user_code == "C"
    if state is ScreenState.DECLINED:
        assert screen.reason == "The sign-in was declined."


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends (the stand-in backend answers at once);
    asyncio.run is unavailable under the Twisted asyncio reactor's running loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("coroutine suspended")


class _Backend:
    """In-memory stand-in for BackendClient (pure unit test of the mapping only)."""

    def __init__(self, user: UserInfo | Exception, tenant: TenantInfo | Exception) -> None:
        self.user, self.tenant = user, tenant

    async def get_user(self, oid: str) -> UserInfo:
        if isinstance(self.user, Exception):
            raise self.user
        return self.user

    async def get_tenant(self, tid: str) -> TenantInfo:
        if isinstance(self.tenant, Exception):
            raise self.tenant
        return self.tenant


USER = UserInfo(oid="o1", tenant="T1", upn="a@c.example", name="A", number="+14255550101",
                pstn_enabled=True, licenses=("teams", "phone_system"), account_type="user",
                enabled=True, mfa=False,
                calling_policy=PolicyInfo(allow_sip_devices_calling=True,
                                          allow_call_redirect=False))
TENANT = TenantInfo(id="T1", name="C", domain="c.example", cloud="GCC", bulk_sign_in=False,
                    sip_gateway_available=False)


def test_lookup_maps_backend_user_and_tenant() -> None:
    user = _run(BackendDirectoryLookup(_Backend(USER, TENANT)).lookup_user("t1", "o1"))
    assert user is not None
    assert (user.oid, user.tenant_id, user.number, user.tenant_cloud) == \
        ("o1", "T1", "+14255550101", "gcc")
    assert user.licenses == {"teams", "phone_system"} and user.allow_sip_devices_calling


def test_lookup_unknown_foreign_and_unavailable() -> None:
    missing = _Backend(BackendError(404, "not_found", "no user"), TENANT)
    assert _run(BackendDirectoryLookup(missing).lookup_user("T1", "o1")) is None
    # The token's tenant must be the backend's tenant of the user.
    assert _run(BackendDirectoryLookup(_Backend(USER, TENANT))
                       .lookup_user("other", "o1")) is None
    down = _Backend(BackendUnavailable("connection refused"), TENANT)
    with pytest.raises(LookupUnavailable):
        _run(BackendDirectoryLookup(down).lookup_user("T1", "o1"))
    broken = _Backend(BackendError(500, "internal", "boom"), TENANT)
    with pytest.raises(LookupUnavailable):
        _run(BackendDirectoryLookup(broken).lookup_user("T1", "o1"))
