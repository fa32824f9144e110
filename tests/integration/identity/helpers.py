"""Set-up shared by the identity integration tests: a directory with known passwords, helpers."""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from twisted.internet import defer

from gateway.backend.directory import Directory, hash_password, load_directory

CONTOSO = "7f3e1c9a-0d52-4b8e-9a41-3c2f6b1d8e01"
FABRIKAM = "2b6d9e4f-1a37-4c58-b0e2-5d8f3a6c9b02"
NORTHWIND = "9c4a7b1e-6f28-4d93-a5c0-8e1b4d7f2a03"
ALICE = "a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e01"
CLIENT_ID = "sipgw-test-client"


def aio(fn: Callable[..., Awaitable[Any]]) -> Callable[..., defer.Deferred[Any]]:
    """Run an asyncio test coroutine as a real asyncio Task on the reactor's loop."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromFuture(asyncio.ensure_future(fn(*args, **kwargs)))

    return wrapper


_USER = """
[[users]]
oid = "{oid}"
tenant = "{tenant}"
upn = "{upn}"
name = "{name}"
number = "{number}"
pstn_enabled = {pstn}
licenses = {licenses}
account_type = "{account_type}"
enabled = {enabled}
password_hash = "{hash}"
[users.calling_policy]
allow_sip_devices_calling = {sip}
allow_call_redirect = true
"""

_TENANTS = f"""
[[tenants]]
id = "{CONTOSO}"
name = "Contoso"
domain = "contoso.example"
cloud = "commercial"

[[tenants]]
id = "{FABRIKAM}"
name = "Fabrikam"
domain = "fabrikam.example"
cloud = "commercial"

[[tenants]]
id = "{NORTHWIND}"
name = "Northwind Government"
domain = "northwind.example"
cloud = "gcchigh"
"""

# upn -> (oid, tenant, number, pstn, licences, account type, enabled, AllowSIPDevicesCalling)
USERS: dict[str, tuple[str, str, str, bool, list[str], str, bool, bool]] = {
    "alice@contoso.example": (ALICE, CONTOSO, "+14255550101", True,
                              ["teams", "phone_system"], "user", True, True),
    "nonumber@contoso.example": ("a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e02", CONTOSO, "", False,
                                 ["teams", "phone_system"], "user", True, True),
    "nolicence@contoso.example": ("a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e03", CONTOSO,
                                  "+14255550103", True, ["teams"], "user", True, True),
    "nosip@contoso.example": ("a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e04", CONTOSO, "+14255550104",
                              True, ["teams", "phone_system"], "user", True, False),
    "disabled@contoso.example": ("a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e05", CONTOSO,
                                 "+14255550105", True, ["teams", "phone_system"], "user",
                                 False, True),
    "lobby@contoso.example": ("a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e06", CONTOSO, "+14255550106",
                              True, ["common_area"], "common_area", True, True),
    "frank@fabrikam.example": ("b1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e01", FABRIKAM,
                               "+14255550201", True, ["teams", "phone_system"], "user", True,
                               True),
    "gov@northwind.example": ("c1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e01", NORTHWIND,
                              "+14255550301", True, ["teams", "phone_system"], "user", True,
                              True),
}


def _b(v: bool) -> str:
    return "true" if v else "false"


def make_directory(tmp: Path) -> tuple[Directory, dict[str, str]]:
    """A directory file with a fresh random password per user; returns it and the passwords."""
    passwords = {upn: secrets.token_urlsafe(12) for upn in USERS}
    text = _TENANTS
    for upn, (oid, tenant, number, pstn, lic, kind, enabled, sip) in USERS.items():
        text += _USER.format(oid=oid, tenant=tenant, upn=upn, name=upn.split("@")[0].title(),
                             number=number, pstn=_b(pstn),
                             licenses="[" + ", ".join(f'"{x}"' for x in lic) + "]",
                             account_type=kind, enabled=_b(enabled),
                             hash=hash_password(passwords[upn]), sip=_b(sip))
    path = tmp / "directory.toml"
    path.write_text(text)
    return load_directory(path), passwords


async def sign_in_on_page(base_url: str, ca_file: Path, code: str, username: str,
                          password: str, action: str = "approve") -> httpx.Response:
    """Act as the user at the verification page (RFC 8628 §3.3) with a real HTTPS client."""
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca_file)),
                                 timeout=10) as client:
        page = await client.get(f"{base_url}/devicelogin")
        assert page.status_code == 200 and re.search(r'name="code"', page.text)
        return await client.post(f"{base_url}/devicelogin", data={
            "code": code, "username": username, "password": password, "action": action})


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0,
                   step: float = 0.05) -> None:
    """Poll an async condition until true; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f}s")
        await asyncio.sleep(step)


class RecordingBinder:
    """A ``DeviceBinder`` that keeps the bindings in a dict (the registrar's store comes later)."""

    def __init__(self) -> None:
        self.bound: dict[str, Any] = {}
        self.unbound: list[str] = []

    async def bind(self, device_id: str, user: Any) -> None:
        self.bound[device_id] = user

    async def unbind(self, device_id: str) -> None:
        self.bound.pop(device_id, None)
        self.unbound.append(device_id)
