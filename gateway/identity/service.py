"""Entra ID sign-in wired into a running gateway: feature codes, NOTIFY, phone screens.

``attach_identity(gateway)`` builds the identity parts from ``[identity]``:
the development identity provider when no authority is configured (else the
configured Entra authority, tenant, client and CA), the ID-token validator,
the encrypted token caches and their refresher, and the ``PairingManager``
with a backend-API ``DirectoryLookup`` and a ``DeviceStore`` binder. It
registers the B2BUA feature handlers:

* sign-in (``*77*``): starts the OAuth 2.0 Device Authorization Grant
  (RFC 8628 §3.1) for the calling device and answers the call (RFC 3261
  §13.3.1.4) with the code where phones show the connected party
  (``P-Asserted-Identity``, RFC 3325 §9.1, and the To display name), then
  hangs up; refusals get 403 (503 when the identity provider is down) with a
  ``Warning`` (RFC 3261 §20.43) carrying the reason;
* sign-out (``*78*``): revokes (token cache deleted, device unbound) and
  answers 200, or 403 when the phone is not signed in.

After a pairing or a sign-out the phone is told to re-fetch its configuration
with an out-of-dialog NOTIFY (RFC 6665 §4.2.1 unsolicited, the vendors'
``check-sync``/``resync`` events) to each live binding. ``IdentityService``
also offers the admin seam (``PairingControl``: ``start_pairing``,
``sign_out``, ``status``) and serves the phones' sign-in screens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.error import CannotListenError
from twisted.web import server

from gateway.b2bua.dialplan import DialTarget, Feature
from gateway.backend.directory import UNSUPPORTED_CLOUDS
from gateway.identity.binder import DeviceStoreBinder
from gateway.identity.cache import TokenCacheStore, TokenRefresher, load_or_create_key
from gateway.identity.devicecode import EntraSettings
from gateway.identity.lookup import BackendDirectoryLookup, LookupUnavailable
from gateway.identity.pairing import (
    DirectoryUser,
    PairingManager,
    PairingPrompt,
    PairingRecord,
    PairingRefused,
    PairingState,
    PairingStore,
)
from gateway.identity.screens import (
    PhoneScreens,
    ScreenDenied,
    SignInScreen,
    screen_from_record,
    vendor_family,
)
from gateway.identity.tokens import TokenValidator
from gateway.registrar.devices import DeviceError, normalise_mac
from gateway.sip.errors import SipParseError
from gateway.sip.events import RequestReceived
from gateway.sip.headers import NameAddr
from gateway.sip.message import SipRequest, SipResponse, build_response
from gateway.sip.stack import new_tag
from gateway.sip.uri import Uri
from gateway.tasks import TaskSet

log = logging.getLogger("sipgw.identity")

SIGN_IN_BYE_DELAY = 2.0  # seconds the sign-in call stays up so the display can be read
# Out-of-dialog NOTIFY asking a phone to re-fetch its configuration, per vendor family.
CHECK_SYNC_EVENT = {
    "cisco": "resync",  # Cisco MPP
    "poly": "check-sync",
    "yealink": "check-sync;reboot=false",
    "audiocodes": "check-sync",
    "spectralink": "check-sync",
}
NOTIFY_OK = frozenset({200, 202, 481, 489})  # answered; 481/489: phone has no such event
UNAVAILABLE_REASONS = frozenset({"idp_unavailable", "authority_unavailable",
                                 "backend_unavailable"})


class PairingControl(Protocol):
    """What the admin API (gateway.ops) needs of sign-in: remote sign-in, sign-out, status."""

    async def start_pairing(self, device_id: str, tenant: str | None = None, *,
                            common_area: bool = False) -> PairingPrompt: ...

    async def sign_out(self, device_id: str, reason: str) -> bool: ...

    async def status(self, device_id: str) -> PairingRecord: ...


def _warning(text: str) -> str:
    safe = "".join(ch for ch in text if ch >= " " and ch != "\x7f")
    return '399 sipgw "' + safe.replace("\\", "/").replace('"', "'")[:200] + '"'


class IdentityService:
    """Sign-in and sign-out of the gateway's devices (see the module docstring)."""

    def __init__(self, gateway: Any, manager: PairingManager, caches: TokenCacheStore,
                 refresher: TokenRefresher, binder: DeviceStoreBinder,
                 lookup: BackendDirectoryLookup, *, devidp: Any = None,
                 bye_delay: float = SIGN_IN_BYE_DELAY) -> None:
        self.gw = gateway
        self.manager = manager
        self.caches = caches
        self.refresher = refresher
        self.binder = binder
        self.lookup = lookup
        self.devidp = devidp
        self.bye_delay = bye_delay
        self.domain: str = gateway.config.sip.domain
        self.phone_ui_port: int | None = None
        self._phone_ui: Any = None
        self._tasks = TaskSet(log, "identity")
        self._stopped = False
        manager.on_paired = self._on_paired

    # -- PairingControl ----------------------------------------------------------------
    async def start_pairing(self, device_id: str, tenant: str | None = None, *,
                            common_area: bool = False) -> PairingPrompt:
        """Start (or restart) the sign-in of ``device_id`` in its tenant (RFC 8628 §3.1);
        ``common_area``: a common-area account signs in instead of a user.

        ``tenant``, when given (the admin API passes the device's), must be the device's.
        """
        device = await self.gw.devices.get(device_id)
        if device is None:
            raise PairingRefused("unknown_device", f"No device {device_id[:40]}.")
        if tenant is not None and tenant.lower() != device.tenant.lower():
            raise PairingRefused("tenant_not_allowed",
                                 f"Device {device_id[:40]} belongs to another tenant.")
        try:
            cloud = await self.lookup.tenant_cloud(device.tenant)
        except LookupUnavailable as exc:
            raise PairingRefused("backend_unavailable", str(exc)) from None
        if cloud in UNSUPPORTED_CLOUDS:
            raise PairingRefused("government_cloud",
                                 f"SIP devices are not available in the {cloud} cloud.")
        return await self.manager.start_pairing(device_id, device.tenant,
                                                common_area=common_area)

    async def sign_out(self, device_id: str, reason: str) -> bool:
        """Sign the device out (tokens deleted, device unbound); False when it was not
        signed in. The phone is told to re-fetch its configuration."""
        record = await self.manager.status(device_id)
        device = await self.gw.devices.get(device_id)
        was_paired = record.state in (PairingState.PAIRED, PairingState.SIGNING_OUT) or (
            device is not None and device.paired)
        if record.state is not PairingState.UNPAIRED:
            await self.manager.sign_out(device_id, reason)
        elif device is not None and device.paired:
            # Paired outside the sign-in flow (admin tooling): release it all the same.
            await self.refresher.unschedule(device_id)
            await self.caches.delete(device_id)
            await self.binder.unbind(device_id)
        else:
            return False
        if was_paired:
            self._spawn(self.notify_check_sync(device_id))
        return True

    async def status(self, device_id: str) -> PairingRecord:
        return await self.manager.status(device_id)

    # -- feature codes -----------------------------------------------------------------
    async def handle_sign_in(self, event: RequestReceived, device: Any,
                             target: DialTarget) -> SipResponse | None:
        request = event.request
        try:
            prompt = await self.start_pairing(device.device_id)
        except PairingRefused as exc:
            return self._refusal(request, exc)
        display = f"Sign in: {prompt.user_code} at {prompt.verification_uri}"
        # The spoken prompt (the code read out over the call's media) comes with the
        # media bridge (gateway/media); until then the display carries the code.
        self._answer_locally(event, display, "signin")
        return None

    async def handle_sign_out(self, event: RequestReceived, device: Any,
                              target: DialTarget) -> SipResponse | None:
        request = event.request
        if not await self.sign_out(device.device_id, "signed out from the phone"):
            return build_response(request, 403, to_tag=new_tag(), headers=[
                ("Warning", _warning("this phone is not signed in"))])
        self._answer_locally(event, "Signed out", "signout")
        return None

    def _refusal(self, request: SipRequest, exc: PairingRefused) -> SipResponse:
        headers = [("Warning", _warning(exc.message))]
        status = 503 if exc.reason in UNAVAILABLE_REASONS else 403
        if exc.retry_after or status == 503:
            headers.append(("Retry-After", str(int(max(exc.retry_after, 5)))))
        return build_response(request, status, to_tag=new_tag(), headers=headers)

    def _answer_locally(self, event: RequestReceived, display: str, user: str) -> None:
        """Answer the feature call showing ``display`` (as ``user`` of our domain); the
        B2BUA hangs up after a moment."""
        identity = str(NameAddr(Uri.parse(f"sip:{user}@{self.domain}"), display=display))
        self.gw.b2bua.answer_locally(event, display=display, asserted=identity,
                                     bye_delay=self.bye_delay)

    # -- NOTIFY check-sync ---------------------------------------------------------------
    async def _on_paired(self, device_id: str, user: DirectoryUser) -> None:
        log.info("device %s paired to %s", device_id, user.upn)
        self._spawn(self.notify_check_sync(device_id))

    async def notify_check_sync(self, device_id: str) -> list[int]:
        """Send the vendor's re-sync NOTIFY to each live binding; returns the statuses."""
        device = await self.gw.devices.get(device_id)
        if device is None:
            return []
        event = CHECK_SYNC_EVENT.get(vendor_family(device.vendor), "check-sync")
        statuses: list[int] = []
        for b in await self.gw.registrar.lookup(device.aor):
            if b.flow and b.node_id != self.gw.node_id:
                continue  # a stream flow of another node: only that node can reach it
            try:
                resp = await self.gw.request_binding("NOTIFY", b, [
                    ("Event", event), ("Subscription-State", "terminated;reason=noresource")])
            except SipParseError:
                continue
            statuses.append(resp.status)
            if resp.status not in NOTIFY_OK:
                log.info("check-sync NOTIFY to %s (%s) answered %s %s", device_id, b.source,
                         resp.status, resp.reason)
        return statuses

    # -- phone screens -------------------------------------------------------------------
    async def phone_screen(self, mac: str, client_host: str) -> tuple[str, SignInScreen]:
        """The sign-in screen for the phone ``mac``, only to a client at one of its
        registered addresses (the code must not be readable by anyone else)."""
        try:
            device_id = normalise_mac(mac)
        except DeviceError:
            raise ScreenDenied(404, "unknown device") from None
        device = await self.gw.devices.get(device_id)
        if device is None:
            raise ScreenDenied(404, "unknown device")
        bindings = await self.gw.registrar.lookup(device.aor)
        if not any(b.host == client_host for b in bindings):
            raise ScreenDenied(403, "this screen is shown only to the registered phone")
        record = await self.manager.status(device_id)
        return device.vendor, screen_from_record(
            record, time.time(), self.gw.b2bua.dialplan.sign_in_code)

    def screens_resource(self) -> PhoneScreens:
        """The ``/phone/<mac>/signin`` resource (for mounting on the ops site)."""
        return PhoneScreens(self)

    def serve_phone_ui(self, host: str, port: int) -> int:
        site = server.Site(self.screens_resource())
        site.displayTracebacks = False
        self._phone_ui = self.gw.reactor.listenTCP(port, site, interface=host)
        self.phone_ui_port = int(self._phone_ui.getHost().port)
        return self.phone_ui_port

    # -- lifecycle -----------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any]) -> None:
        self._tasks.spawn(coro)

    def register_features(self) -> None:
        handlers = self.gw.b2bua.feature_handlers
        handlers[Feature.SIGN_IN] = self.handle_sign_in
        handlers[Feature.SIGN_OUT] = self.handle_sign_out

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        handlers = self.gw.b2bua.feature_handlers
        for feature, fn in ((Feature.SIGN_IN, self.handle_sign_in),
                            (Feature.SIGN_OUT, self.handle_sign_out)):
            if handlers.get(feature) == fn:
                del handlers[feature]
        await self.manager.stop()
        await self._tasks.cancel()
        if self._phone_ui is not None:
            loop = asyncio.get_running_loop()
            await self._phone_ui.stopListening().asFuture(loop)
        if self.devidp is not None:
            await self.devidp.stop()


def _entra_settings(gateway: Any) -> tuple[EntraSettings, Any]:
    """The identity provider settings; starts the development provider when needed."""
    from gateway.app import Listening

    cfg = gateway.config
    ic = cfg.identity
    ca_file = Path(ic.ca_file) if ic.ca_file else None
    if ic.authority:
        if not ic.tenant_id:
            raise ValueError("identity.tenant_id is required with identity.authority")
        return EntraSettings(
            tenant_id=ic.tenant_id, client_id=ic.client_id,
            allowed_tenants=frozenset(ic.allowed_tenants), authority_base=ic.authority,
            ca_file=ca_file), None
    from gateway.backend.directory import default_directory_path, load_directory
    from gateway.identity.devidp import DevIdpSettings, start_devidp

    directory = load_directory(cfg.backend.directory or default_directory_path())
    settings = DevIdpSettings(interval=max(1, ic.devidp_interval),
                              code_ttl=max(10, ic.devidp_code_ttl))
    from gateway.transport.certs import ensure_dev_certificate

    # One development CA for the whole gateway (SIP over TLS and the provider).
    tls = ensure_dev_certificate(cfg.data_path)
    idp = start_devidp(cfg.data_path, ic.devidp_host, ic.devidp_port, directory,
                       gateway.reactor, settings=settings, client_ids=[ic.client_id],
                       tls=tls)
    gateway.listening.append(Listening("idp", "https", ic.devidp_host, idp.port))
    tenants = sorted(directory.tenants)
    tenant_id = ic.tenant_id or (tenants[0] if tenants else "")
    if not tenant_id:
        raise ValueError("the directory has no tenant to sign in to")
    allowed = frozenset(ic.allowed_tenants) or frozenset(tenants)
    return EntraSettings(tenant_id=tenant_id, client_id=ic.client_id, allowed_tenants=allowed,
                         authority_base=idp.base_url, ca_file=idp.ca_file), idp


async def attach_identity(gateway: Any) -> IdentityService:
    """Build the identity parts of a started ``Gateway`` and register the sign-in features."""
    from gateway.app import Listening

    cfg = gateway.config
    ic = cfg.identity
    settings, idp = _entra_settings(gateway)
    try:
        key_path = Path(ic.key_file) if ic.key_file else \
            cfg.data_path / "secrets" / "token-cache.key"
        key = await asyncio.to_thread(load_or_create_key, key_path)
        redis = gateway.redis
        caches = TokenCacheStore(redis, key)
        validator = TokenValidator(settings.tenants, settings.client_id,
                                   settings.authority_base, settings.ca_file)
        lookup = BackendDirectoryLookup(gateway.backend)
        binder = DeviceStoreBinder(gateway.devices, gateway.registrar, gateway.backend)
        holder: list[IdentityService] = []

        async def sign_out(device_id: str, reason: str) -> None:
            await holder[0].sign_out(device_id, reason)

        refresher = TokenRefresher(redis, caches, settings, sign_out, gateway.registry)
        manager = PairingManager(redis, PairingStore(redis), settings, validator, lookup,
                                 binder, caches, gateway.registry, refresher=refresher)
        service = IdentityService(gateway, manager, caches, refresher, binder, lookup,
                                  devidp=idp)
        holder.append(service)
        if ic.phone_ui_port >= 0:
            try:
                port = service.serve_phone_ui(ic.phone_ui_host, ic.phone_ui_port)
            except CannotListenError as exc:
                # The screens are a convenience (the code is also on the call's display):
                # a taken port must not keep the gateway from serving calls.
                log.warning("phone sign-in screens disabled: %s", exc)
            else:
                gateway.listening.append(Listening("phone-ui", "http", ic.phone_ui_host,
                                                   port))
    except BaseException:
        if idp is not None:
            await idp.stop()
        raise
    refresher.start()
    service.register_features()
    return service
