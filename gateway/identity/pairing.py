"""Per-device pairing: unpaired -> pairing -> paired -> signing_out -> unpaired, held in Redis.

Sign-in of a SIP phone is the OAuth 2.0 Device Authorization Grant (RFC 8628)
against Entra ID: ``start_pairing`` gets a user code and verification URL for
the phone to show, a background task polls the token endpoint, validates the
ID token (OIDC Core §3.1.3.7), checks the user may use a SIP device (a phone
number with PSTN calling, Teams + Phone System licences or a common-area
licence for common-area phones, ``AllowSIPDevicesCalling``, a tenant outside
the government clouds) and binds the device to the user. Every transition
is checked against one table and recorded with its reason in a capped
history the ops page shows. The token cache is kept encrypted
(``gateway.identity.cache``) and refreshed ahead of expiry; a failed refresh
signs the device out with the reason.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, NewType, Protocol

import msal  # type: ignore[import-untyped]  # msal ships no type information
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import WatchError

from gateway.backend.directory import UNSUPPORTED_CLOUDS
from gateway.identity.cache import TokenCacheStore, TokenRefresher
from gateway.identity.devicecode import (
    DeviceFlow,
    DeviceFlowFailed,
    EntraSettings,
    build_app_async,
    initiate,
    poll,
)
from gateway.identity.tokens import IdentityClaims, TokenRejected, TokenVerifier

log = logging.getLogger(__name__)

DeviceId = NewType("DeviceId", str)
HISTORY_CAP = 20
GOVERNMENT_CLOUDS = UNSUPPORTED_CLOUDS  # one definition, shared with the backend directory


class PairingState(enum.Enum):
    """States of a device's sign-in."""

    UNPAIRED = "unpaired"
    PAIRING = "pairing"
    PAIRED = "paired"
    SIGNING_OUT = "signing_out"


# The legal transitions; PAIRING -> PAIRING is "Back/retry" restarting an expired code.
TRANSITIONS: dict[PairingState, frozenset[PairingState]] = {
    PairingState.UNPAIRED: frozenset({PairingState.PAIRING}),
    PairingState.PAIRING: frozenset({PairingState.PAIRING, PairingState.PAIRED,
                                     PairingState.UNPAIRED}),
    PairingState.PAIRED: frozenset({PairingState.SIGNING_OUT}),
    PairingState.SIGNING_OUT: frozenset({PairingState.UNPAIRED}),
}


class IllegalTransition(Exception):
    """A transition not in ``TRANSITIONS`` was attempted."""


class PairingRefused(Exception):
    """Pairing cannot start (throttled, tenant not allowed, IdP down); ``reason`` says why."""

    def __init__(self, reason: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded state change, for the ops page."""

    at: float
    from_state: PairingState
    to_state: PairingState
    reason: str

    def to_json(self) -> str:
        return json.dumps({"at": self.at, "from": self.from_state.value,
                           "to": self.to_state.value, "reason": self.reason})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Transition:
        d = json.loads(raw)
        return cls(at=float(d["at"]), from_state=PairingState(d["from"]),
                   to_state=PairingState(d["to"]), reason=str(d["reason"]))


@dataclass(frozen=True, slots=True)
class PairingRecord:
    """A device's pairing state as stored in Redis."""

    device_id: str
    state: PairingState = PairingState.UNPAIRED
    reason: str = ""
    updated_at: float = 0.0
    tenant: str = ""
    user_oid: str = ""
    upn: str = ""
    user_name: str = ""  # display name and number shown on the phone once paired
    number: str = ""
    user_code: str = ""
    verification_uri: str = ""
    expires_at: float = 0.0
    history: tuple[Transition, ...] = ()


@dataclass(frozen=True, slots=True)
class PairingPrompt:
    """What the phone shows (display or spoken prompt) while pairing."""

    user_code: str
    verification_uri: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    """The facts about a user that decide whether a SIP device may be bound to them."""

    oid: str
    tenant_id: str
    upn: str
    name: str
    number: str
    pstn_enabled: bool
    licenses: frozenset[str]
    account_type: str
    enabled: bool
    allow_sip_devices_calling: bool
    tenant_cloud: str

    @classmethod
    def from_user(cls, user: Any, cloud: str) -> DirectoryUser:
        """From a backend/directory user record (``UserInfo`` or the reference directory's)."""
        return cls(
            oid=user.oid, tenant_id=user.tenant, upn=user.upn, name=user.name,
            number=user.number, pstn_enabled=user.pstn_enabled,
            licenses=frozenset(user.licenses), account_type=user.account_type,
            enabled=user.enabled,
            allow_sip_devices_calling=user.calling_policy.allow_sip_devices_calling,
            tenant_cloud=cloud)


class DirectoryLookup(Protocol):
    """Resolves a signed-in user at the call-control backend."""

    async def lookup_user(self, tenant_id: str, oid: str) -> DirectoryUser | None: ...


class DeviceBinder(Protocol):
    """Binds a device to a user and releases it (the registrar's DeviceStore)."""

    async def bind(self, device_id: str, user: DirectoryUser) -> None: ...

    async def unbind(self, device_id: str) -> None: ...


class DirectoryBackedLookup:
    """``DirectoryLookup`` over an in-process ``gateway.backend.directory.Directory``."""

    def __init__(self, directory: Any) -> None:
        self.directory = directory

    async def lookup_user(self, tenant_id: str, oid: str) -> DirectoryUser | None:
        user = self.directory.users.get(oid)
        if user is None or user.tenant != tenant_id:
            return None
        tenant = self.directory.tenants.get(user.tenant)
        return DirectoryUser.from_user(user, tenant.cloud if tenant is not None else "unknown")


def eligibility_refusal(user: DirectoryUser, *, common_area: bool,
                        blocked_clouds: Collection[str] = GOVERNMENT_CLOUDS
                        ) -> tuple[str, str] | None:
    """Why ``user`` may not be bound to a SIP device, as (code, human text); None if allowed.

    A common-area licence includes Teams and Phone System, so common-area
    phones need only it; personal phones need Teams and Phone System.
    """
    if user.tenant_cloud in blocked_clouds:
        return ("government_cloud",
                f"SIP devices are not available in the {user.tenant_cloud} cloud.")
    if not user.enabled:
        return "user_disabled", f"The account {user.upn} is disabled."
    if not user.number:
        return "no_phone_number", f"{user.upn} has no phone number assigned."
    if not user.pstn_enabled:
        return "pstn_not_enabled", f"{user.upn} is not enabled for PSTN calling."
    if common_area:
        if "common_area" not in user.licenses:
            return ("missing_license",
                    f"{user.upn} has no common-area phone licence for this shared phone.")
    else:
        missing = sorted({"teams", "phone_system"} - user.licenses)
        if missing:
            return ("missing_license",
                    f"{user.upn} lacks the licence(s): {', '.join(missing)}.")
    if not user.allow_sip_devices_calling:
        return ("sip_devices_not_allowed",
                f"The calling policy of {user.upn} does not allow SIP devices calling.")
    return None


class PairingStore:
    """Pairing records in Redis: a hash per device, a capped history list, a set of paired ids."""

    def __init__(self, redis: Any, prefix: str = "sipgw:pairing:",
                 history_cap: int = HISTORY_CAP, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._prefix = prefix
        self._cap = history_cap
        self._clock = clock
        self.paired_set = prefix + "paired"

    def _key(self, device_id: str) -> str:
        return f"{self._prefix}dev:{device_id}"

    def _hkey(self, device_id: str) -> str:
        return f"{self._prefix}dev:{device_id}:history"

    async def get(self, device_id: str) -> PairingRecord:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._key(device_id))
        pipe.lrange(self._hkey(device_id), 0, -1)
        raw, hist = await pipe.execute()
        return self._record(device_id, raw, hist)

    @staticmethod
    def _record(device_id: str, raw: dict[Any, Any], hist: list[Any]) -> PairingRecord:
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                            else v) for k, v in raw.items()}
        return PairingRecord(
            device_id=device_id, state=PairingState(d.get("state", "unpaired")),
            reason=d.get("reason", ""), updated_at=float(d.get("updated_at", 0) or 0),
            tenant=d.get("tenant", ""), user_oid=d.get("user_oid", ""), upn=d.get("upn", ""),
            user_name=d.get("user_name", ""), number=d.get("number", ""),
            user_code=d.get("user_code", ""), verification_uri=d.get("verification_uri", ""),
            expires_at=float(d.get("expires_at", 0) or 0),
            history=tuple(Transition.from_json(h) for h in hist))

    async def transition(self, device_id: str, to: PairingState, reason: str,
                         expect: Collection[PairingState] | None = None,
                         **fields: str | float) -> PairingRecord:
        """Move ``device_id`` to ``to`` atomically (WATCH/MULTI), recording ``reason``.

        ``expect`` narrows the states the move may start from (a stale poller
        must not overwrite a newer pairing); the table in ``TRANSITIONS`` always applies.
        """
        key, hkey = self._key(device_id), self._hkey(device_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hget(key, "state")
                    current = PairingState(raw.decode() if isinstance(raw, bytes)
                                           else raw or "unpaired")
                    if to not in TRANSITIONS[current] or (
                            expect is not None and current not in expect):
                        await pipe.unwatch()
                        raise IllegalTransition(
                            f"{device_id}: {current.value} -> {to.value} not allowed")
                    now = self._clock()
                    mapping: dict[str, str | float] = {
                        "state": to.value, "reason": reason, "updated_at": now}
                    if to in (PairingState.UNPAIRED, PairingState.PAIRING):
                        mapping.update({"user_oid": "", "upn": "", "user_name": "",
                                        "number": ""})
                    if to is not PairingState.PAIRING:
                        mapping.update({"user_code": "", "verification_uri": "",
                                        "expires_at": 0})
                    mapping.update(fields)
                    pipe.multi()
                    pipe.hset(key, mapping=mapping)
                    pipe.lpush(hkey, Transition(now, current, to, reason).to_json())
                    pipe.ltrim(hkey, 0, self._cap - 1)
                    if to is PairingState.PAIRED:
                        pipe.sadd(self.paired_set, device_id)
                    else:
                        pipe.srem(self.paired_set, device_id)
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        return await self.get(device_id)

    async def paired_count(self) -> int:
        return int(await self._redis.scard(self.paired_set))


@dataclass(slots=True)
class _Metrics:
    attempts: Counter
    results: Counter
    paired: Gauge


@dataclass(slots=True)
class _Session:
    task: asyncio.Task[None]
    flow: DeviceFlow
    tenant: str
    common_area: bool
    cache: msal.SerializableTokenCache = field(repr=False)


class PairingManager:
    """Runs device sign-in and sign-out (see the module docstring)."""

    def __init__(self, redis: Any, store: PairingStore, settings: EntraSettings,
                 verifier: TokenVerifier, directory: DirectoryLookup, binder: DeviceBinder,
                 caches: TokenCacheStore, registry: CollectorRegistry | None = None, *,
                 refresher: TokenRefresher | None = None,
                 blocked_clouds: Collection[str] = GOVERNMENT_CLOUDS,
                 max_attempts: int = 5, attempt_window: int = 300,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self.store = store
        self.settings = settings
        self._verifier = verifier
        self._directory = directory
        self._binder = binder
        self._caches = caches
        self._blocked = frozenset(blocked_clouds)
        self._max_attempts = max_attempts
        self._window = attempt_window
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        # Called after a device became PAIRED (tell the phone to re-fetch its configuration).
        self.on_paired: Callable[[str, DirectoryUser], Awaitable[None]] | None = None
        registry = registry if registry is not None else CollectorRegistry()
        self.metrics = _Metrics(
            attempts=Counter("sipgw_pairing_attempts", "Device sign-ins started",
                             registry=registry),
            results=Counter("sipgw_pairing_results", "Device sign-ins ended, by result",
                            ["result"], registry=registry),
            paired=Gauge("sipgw_paired_devices", "Devices paired to a user",
                         registry=registry))
        self.refresher = refresher or TokenRefresher(
            redis, caches, settings, self._on_refresh_failed, registry)

    async def _update_gauge(self) -> None:
        self.metrics.paired.set(await self.store.paired_count())

    async def status(self, device_id: str) -> PairingRecord:
        return await self.store.get(device_id)

    async def _throttle(self, device_id: str) -> None:
        key = f"sipgw:pairing:attempts:{device_id}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, self._window, nx=True)
        pipe.ttl(key)
        count, _, ttl = await pipe.execute()
        if int(count) > self._max_attempts:
            raise PairingRefused("throttled",
                                 "Too many sign-in attempts from this phone; try again later.",
                                 retry_after=float(max(int(ttl), 1)))

    async def start_pairing(self, device_id: str, tenant: str, *,
                            common_area: bool = False) -> PairingPrompt:
        """RFC 8628 §3.1-3.3: start (or restart, "Back/retry") the sign-in of ``device_id``."""
        if tenant.lower() not in {t.lower() for t in self.settings.tenants}:
            raise PairingRefused("tenant_not_allowed",
                                 f"Tenant {tenant[:64]} is not allowed on this gateway.")
        record = await self.store.get(device_id)
        if record.state not in (PairingState.UNPAIRED, PairingState.PAIRING):
            raise PairingRefused("already_paired",
                                 "This phone is signed in; sign out first.")
        await self._throttle(device_id)
        self.metrics.attempts.inc()
        await self._cancel_session(device_id)
        cache = msal.SerializableTokenCache()
        try:
            app = await build_app_async(self.settings, cache, tenant)
            flow = await initiate(app, self.settings.scopes)
        except DeviceFlowFailed as exc:
            self.metrics.results.labels(result=exc.error).inc()
            raise PairingRefused(exc.error, f"The sign-in service is unavailable: {exc}") from None
        restarted = record.state is PairingState.PAIRING
        await self.store.transition(
            device_id, PairingState.PAIRING,
            "sign-in restarted with a new code" if restarted else "sign-in started",
            tenant=tenant, user_code=flow.user_code, verification_uri=flow.verification_uri,
            expires_at=flow.expires_at)
        task = asyncio.ensure_future(self._run(device_id, app, flow))
        self._sessions[device_id] = _Session(task, flow, tenant, common_area, cache)
        task.add_done_callback(functools.partial(self._forget, device_id))
        return PairingPrompt(flow.user_code, flow.verification_uri, flow.expires_at)

    def _forget(self, device_id: str, task: asyncio.Task[None]) -> None:
        s = self._sessions.get(device_id)
        if s is not None and s.task is task:
            del self._sessions[device_id]

    async def _cancel_session(self, device_id: str) -> None:
        s = self._sessions.pop(device_id, None)
        if s is not None and not s.task.done():
            s.task.cancel()
            try:
                await s.task
            except asyncio.CancelledError:
                pass

    async def _end(self, device_id: str, code: str, message: str) -> None:
        self.metrics.results.labels(result=code).inc()
        try:
            await self.store.transition(device_id, PairingState.UNPAIRED,
                                        f"{code}: {message}",
                                        expect=(PairingState.PAIRING,))
        except IllegalTransition:
            log.info("pairing of %s ended (%s) after its state moved on", device_id, code)

    async def _run(self, device_id: str, app: msal.PublicClientApplication,
                   flow: DeviceFlow) -> None:
        session = self._sessions.get(device_id)
        try:
            result = await poll(app, flow, self._clock)
        except DeviceFlowFailed as exc:
            text = {
                "expired_token": "The pairing code expired. Press Back and sign in again.",
                "authorization_declined": "The sign-in was declined.",
                "bad_verification_code": "The sign-in service did not recognise the code.",
            }.get(exc.error, exc.description or "The sign-in failed.")
            await self._end(device_id, exc.error, text)
            return
        try:
            claims = await self._verifier.validate(str(result.get("id_token", "")))
        except TokenRejected as exc:
            await self._end(device_id, "token_rejected",
                            f"The sign-in token was rejected ({exc.reason}).")
            return
        await self._bind(device_id, claims, result, session)

    async def _bind(self, device_id: str, claims: IdentityClaims, result: dict[str, Any],
                    session: _Session | None) -> None:
        common_area = session.common_area if session else False
        try:
            user = await self._directory.lookup_user(claims.tid, claims.oid)
        except Exception as exc:  # noqa: BLE001 - backend outage: end with the reason
            await self._end(device_id, "lookup_failed",
                            f"The calling service could not be asked about the user ({exc}).")
            return
        if user is None:
            await self._end(device_id, "user_not_found",
                            f"{claims.preferred_username} is not known to the calling service.")
            return
        refusal = eligibility_refusal(user, common_area=common_area,
                                      blocked_clouds=self._blocked)
        if refusal is not None:
            await self._end(device_id, *refusal)
            return
        if session is not None:
            await self._caches.save(device_id, session.cache)
        try:
            await self._binder.bind(device_id, user)
        except Exception as exc:  # noqa: BLE001 - device removed meanwhile, backend down
            log.warning("binding %s to %s failed: %s", device_id, user.upn, exc)
            await self._caches.delete(device_id)
            await self._end(device_id, "bind_failed",
                            f"The phone could not be bound to {user.upn} ({exc}).")
            return
        try:
            await self.store.transition(
                device_id, PairingState.PAIRED, f"signed in as {user.upn}",
                expect=(PairingState.PAIRING,), user_oid=user.oid, upn=user.upn,
                tenant=user.tenant_id, user_name=user.name, number=user.number)
        except IllegalTransition:
            await self._binder.unbind(device_id)
            await self._caches.delete(device_id)
            return
        await self.refresher.schedule(device_id, float(result.get("expires_in", 3600)))
        self.metrics.results.labels(result="paired").inc()
        await self._update_gauge()
        if self.on_paired is not None:
            try:
                await self.on_paired(device_id, user)
            except Exception:  # noqa: BLE001 - the pairing stands even if the phone is not told
                log.exception("on_paired hook for %s failed", device_id)

    async def cancel(self, device_id: str, reason: str = "sign-in cancelled") -> None:
        """Back on the phone: abandon a pairing in progress."""
        await self._cancel_session(device_id)
        record = await self.store.get(device_id)
        if record.state is PairingState.PAIRING:
            await self._end(device_id, "cancelled", reason)

    async def sign_out(self, device_id: str, reason: str) -> None:
        """paired -> signing_out -> unpaired: unbind, forget tokens, keep the reason."""
        record = await self.store.get(device_id)
        if record.state is PairingState.PAIRING:
            await self.cancel(device_id, reason)
            return
        if record.state is PairingState.PAIRED:
            await self.store.transition(device_id, PairingState.SIGNING_OUT, reason)
            record = await self.store.get(device_id)
        if record.state is not PairingState.SIGNING_OUT:
            return
        await self.refresher.unschedule(device_id)
        await self._caches.delete(device_id)
        await self._binder.unbind(device_id)
        await self.store.transition(device_id, PairingState.UNPAIRED, reason,
                                    expect=(PairingState.SIGNING_OUT,))
        await self._update_gauge()

    async def _on_refresh_failed(self, device_id: str, reason: str) -> None:
        await self.sign_out(device_id, reason)

    async def stop(self) -> None:
        for device_id in list(self._sessions):
            await self._cancel_session(device_id)
        await self.refresher.stop()
