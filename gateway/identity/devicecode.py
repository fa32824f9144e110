"""The OAuth 2.0 Device Authorization Grant (RFC 8628) with msal's PublicClientApplication.

msal is synchronous: every call that does HTTP runs in a worker thread
(``asyncio.to_thread``) so the event loop never blocks. Polling is ours:
one token request per round (msal's ``exit_condition`` returns at once), then
an asyncio sleep of the flow's ``interval``, which msal raises by 5 s on
``slow_down`` (RFC 8628 §3.5). ``authorization_pending`` keeps polling;
``authorization_declined``, ``expired_token``, ``bad_verification_code`` and
any other error end the flow with ``DeviceFlowFailed``. Cancelling the
polling task stops it between requests.

Against a real tenant the configuration is only the tenant id, the client id
and the allowed tenants; the authority defaults to Entra's public cloud. The
development identity provider differs only in the authority URL and the CA
bundle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msal  # type: ignore[import-untyped]  # msal ships no type information

from gateway.identity.http import http_client

ENTRA_AUTHORITY = "https://login.microsoftonline.com"
RETRIABLE = frozenset({"authorization_pending", "slow_down"})


@dataclass(frozen=True, slots=True)
class EntraSettings:
    """What the gateway needs to know about the identity provider."""

    tenant_id: str
    client_id: str
    allowed_tenants: frozenset[str] = frozenset()
    authority_base: str = ENTRA_AUTHORITY
    ca_file: Path | None = None  # extra trust root; None: the system's
    scopes: tuple[str, ...] = ()  # msal adds openid, profile, offline_access
    http_timeout: float = 10.0

    @property
    def authority(self) -> str:
        return f"{self.authority_base.rstrip('/')}/{self.tenant_id}"

    @property
    def tenants(self) -> frozenset[str]:
        return self.allowed_tenants or frozenset({self.tenant_id})


class DeviceFlowFailed(Exception):
    """The device flow ended without tokens; ``error`` is the OAuth error code (RFC 8628 §3.5)."""

    def __init__(self, error: str, description: str = "",
                 error_codes: Collection[int] = ()) -> None:
        first = description.split(" Trace ID:")[0].strip()
        super().__init__(f"{error}: {first}" if first else error)
        self.error = error
        self.description = first
        self.error_codes = tuple(error_codes)


@dataclass(slots=True)
class DeviceFlow:
    """A started device flow: what to show the user, and msal's flow state (kept private)."""

    user_code: str
    verification_uri: str
    expires_at: float  # wall-clock seconds
    interval: int
    message: str
    _flow: dict[str, Any] = field(repr=False)


def build_app(settings: EntraSettings,
              cache: msal.SerializableTokenCache | None = None,
              tenant: str | None = None) -> msal.PublicClientApplication:
    """A PublicClientApplication for ``tenant`` (blocking: fetches the OIDC metadata)."""
    authority = (f"{settings.authority_base.rstrip('/')}/{tenant}" if tenant
                 else settings.authority)
    return msal.PublicClientApplication(
        settings.client_id, authority=authority, token_cache=cache,
        http_client=http_client(settings.ca_file, settings.http_timeout),
        # Known Microsoft hosts skip instance discovery anyway; any other host
        # (the development provider, a sovereign proxy) is trusted by configuration.
        instance_discovery=False)


async def build_app_async(settings: EntraSettings,
                          cache: msal.SerializableTokenCache | None = None,
                          tenant: str | None = None) -> msal.PublicClientApplication:
    try:
        return await asyncio.to_thread(build_app, settings, cache, tenant)
    except ValueError as exc:  # msal's message for an unreachable/unknown authority
        raise DeviceFlowFailed("authority_unavailable", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - requests' network and TLS errors
        raise DeviceFlowFailed("authority_unavailable", f"{type(exc).__name__}: {exc}") from None


async def initiate(app: msal.PublicClientApplication,
                   scopes: Collection[str] = ()) -> DeviceFlow:
    """RFC 8628 §3.1: ask for a device code and user code."""
    try:
        flow = await asyncio.to_thread(app.initiate_device_flow, scopes=list(scopes))
    except Exception as exc:  # noqa: BLE001 - network, TLS, or a non-JSON answer
        raise DeviceFlowFailed("idp_unavailable", f"{type(exc).__name__}: {exc}") from None
    if "user_code" not in flow or "device_code" not in flow:
        raise DeviceFlowFailed(str(flow.get("error", "invalid_response")),
                               str(flow.get("error_description", "")),
                               flow.get("error_codes") or ())
    flow["interval"] = max(1, int(flow.get("interval", 5)))
    return DeviceFlow(
        user_code=str(flow["user_code"]), verification_uri=str(flow["verification_uri"]),
        expires_at=float(flow["expires_at"]), interval=flow["interval"],
        message=str(flow.get("message", "")), _flow=flow)


async def poll(app: msal.PublicClientApplication, flow: DeviceFlow,
               clock: Callable[[], float] = time.time,
               on_pending: Callable[[str], None] | None = None) -> dict[str, Any]:
    """RFC 8628 §3.4/§3.5: poll until tokens arrive; raise ``DeviceFlowFailed`` otherwise."""
    raw = flow._flow
    while True:
        try:
            result: dict[str, Any] = await asyncio.to_thread(
                app.acquire_token_by_device_flow, raw, exit_condition=lambda _f: True)
        except Exception as exc:  # noqa: BLE001 - one failed poll is retried like pending
            result = {"error": "transient", "error_description": f"{type(exc).__name__}: {exc}"}
        if "access_token" in result:
            return result
        error = str(result.get("error", "invalid_response"))
        if error not in RETRIABLE and error != "transient":
            raise DeviceFlowFailed(error, str(result.get("error_description", "")),
                                   result.get("error_codes") or ())
        if on_pending is not None:
            on_pending(error)
        flow.interval = max(1, int(raw.get("interval", flow.interval)))
        if clock() > flow.expires_at + 1:  # the IdP is silent or wrong about expiry
            raise DeviceFlowFailed("expired_token", "The device code expired while polling.")
        await asyncio.sleep(flow.interval)
