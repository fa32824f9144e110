"""The REGISTER transaction user (RFC 3261 §10.3, RFC 5626 §6, RFC 3327 §5.3).

``Registrar.handle_register`` runs the §10.3 steps on one request and always
returns a response: domain and infrastructure errors map to a status with a
``Warning`` (one place: ``_fail``). Redis work: none for a challenge (per-node
admission; the device's HA1s are prefetched after the 401 is sent), and one
Lua script (EVALSHA) for an authenticated REGISTER that does the shared
admission checks (blocks, rate counters), the nonce-count check, the HA1
re-check and the binding update in one round trip.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import NoScriptError, RedisError

from gateway.ops.metrics import Tally
from gateway.registrar.auth import AuthStatus, DigestAuthenticator
from gateway.registrar.bindings import (
    Binding,
    BindingOp,
    BindingStore,
    RegisterResult,
    RegisterUpdate,
)
from gateway.registrar.devices import (
    AuthRecord,
    DeviceStore,
    hash_pairs,
    parse_auth,
    user_aor,
)
from gateway.registrar.guard import AbuseGuard, GuardConfig
from gateway.sip.digest import DigestCredentials, DigestError, NonceCheck, NonceStatus
from gateway.sip.errors import SipParseError
from gateway.sip.headers import NameAddr
from gateway.sip.message import SipRequest, SipResponse, build_response
from gateway.sip.peer import Peer
from gateway.sip.stack import new_tag
from gateway.sip.uri import Uri
from gateway.state import keys
from gateway.state.pipe import run_commands

log = logging.getLogger(__name__)


# -- the firmware seam -------------------------------------------------------------

class FirmwareVerdict(Protocol):
    """What ``firmware_catalog`` returns for a User-Agent (only the parts we read)."""

    @property
    def admitted(self) -> bool: ...
    @property
    def flagged(self) -> bool: ...
    @property
    def compliance(self) -> Any: ...
    @property
    def reason(self) -> str: ...
    @property
    def upgrade_to(self) -> Any: ...
    @property
    def device(self) -> Any: ...


class FirmwarePolicy(Protocol):
    """``firmware_catalog.load_catalog()`` satisfies this."""

    def evaluate(self, user_agent: str) -> FirmwareVerdict: ...


# -- configuration and metrics -------------------------------------------------------

@dataclass(frozen=True)
class RegistrarConfig:
    """Registrar policy (RFC 3261 §10.3, RFC 5626 §4.4.1 Flow-Timer)."""

    realm: str
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    expires_jitter: float = 0.1  # granted expiry loses up to this fraction, at random
    max_bindings_per_aor: int = 10
    nonce_ttl: int = 300
    flow_timer: int = 120  # seconds between keep-alives on an outbound flow
    max_pending: int = 5000  # REGISTERs in flight on this node before 503
    store_timeout: float = 2.0  # a Redis round trip slower than this answers 503
    retry_after: int = 30  # 503 Retry-After under overload / store failure
    stale_paired_days: int = 30
    stale_unpaired_days: int = 14
    guard: GuardConfig = field(default_factory=GuardConfig)


class RegistrarMetrics:
    """Prometheus series of the registrar, on a registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tally = Tally(registry)  # the per-REGISTER result counts, before their counter
        self.results = Counter("sipgw_register_results", "REGISTER responses by status",
                               ["status"], registry=registry)
        self.auth_failures = Counter("sipgw_register_auth_failures",
                                     "failed REGISTER digest checks", ["reason"],
                                     registry=registry)
        self.blocks = Counter("sipgw_register_blocks", "temporary blocks set",
                              ["scope"], registry=registry)
        self.active = Gauge("sipgw_registrations_active",
                            "devices with live bindings by vendor/model/firmware verdict",
                            ["vendor", "model", "verdict"], registry=registry)
        self.blocked_sources = Gauge("sipgw_blocked_sources",
                                     "source addresses currently blocked", registry=registry)


# How long a fetched credential record is trusted for checking a digest (s). The
# register script re-checks the HA1 at write time ("cred") and a failed check on a
# cached record re-reads it, so a changed password or a new device is never refused for
# it: the TTL bounds only extra work. Long enough that a phone's hourly refresh (and
# the keep-alive rounds between) usually finds its record.
_CRED_CACHE_TTL = 600.0
_CRED_CACHE_MAX = 100_000
_PREFETCH_MAX = 2_000  # credential reads in flight at once
_LOCAL_BLOCK_MAX = 10.0  # s a node answers a blocked source's challenges without Redis
_HA1_FIELD = {"MD5": "ha1_md5", "SHA-256": "ha1_sha256"}
_NO_CHECK = NonceCheck(NonceStatus.INVALID)


@dataclass(frozen=True, slots=True)
class Registration:
    """A successful REGISTER (RFC 3261 §10.3 step 8): what listeners are told.

    ``bindings`` are the AOR's live bindings after the update (empty: all removed);
    ``paired_user`` is the user the device is paired to, or "" when unpaired.
    """

    aor: str
    device_id: str
    username: str
    node_id: str
    source: Peer
    bindings: tuple[Binding, ...]
    paired_user: str


@dataclass(slots=True)
class _Ctx:
    """What concluding an authenticated REGISTER needs besides the store's answer."""

    aor: str
    device_id: str
    username: str
    node_id: str
    ops: tuple[BindingOp, ...]
    wildcard: bool
    outbound: bool
    path: list[str]
    verdict_reason: str  # set when the firmware verdict refuses the device


def _chain(task: asyncio.Future[SipResponse], out: asyncio.Future[SipResponse]) -> None:
    if out.done():
        return
    if task.cancelled():
        out.cancel()
    elif task.exception() is not None:
        out.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        out.set_result(task.result())


class _Reject(Exception):
    def __init__(self, status: int, warning: str, headers: list[tuple[str, str]] | None = None,
                 ) -> None:
        super().__init__(warning)
        self.status = status
        self.warning = warning
        self.headers = headers or []


@functools.lru_cache(maxsize=4096)  # User-Agents repeat across a fleet
def _ascii(text: str, limit: int = 200) -> str:
    safe = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "'" if c == '"' else " "
                   for c in text)
    return safe[:limit]


# -- the registrar -------------------------------------------------------------------

class Registrar:
    """RFC 3261 §10.3 registrar over Redis, with RFC 5626 outbound and RFC 3327 Path."""

    def __init__(self, store: BindingStore, devices: DeviceStore, auth: DigestAuthenticator,
                 guard: AbuseGuard, firmware: FirmwarePolicy, config: RegistrarConfig,
                 metrics: RegistrarMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        store.timeout = config.store_timeout
        self.devices = devices
        self.auth = auth
        self.guard = guard
        self.firmware = firmware
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.redis: Any = store.redis
        self.pending = 0
        self._verdicts: dict[str, tuple[FirmwareVerdict, dict[str, str]]] = {}
        self._rand = random.Random()
        # per-node admission state for the Redis-free challenge path
        self._window = -1
        self._counts: dict[str, int] = {}
        self._blocked: dict[str, float] = {}
        # username -> (auth record or None, fetched at): prefetched at challenge time
        self._ha1_cache: dict[str, tuple[AuthRecord | None, float]] = {}
        self._prefetching: dict[str, asyncio.Future[AuthRecord | None]] = {}
        self._results: dict[int, Any] = {}
        self._date: tuple[int, str] = (0, "")
        # called after every successful REGISTER (not awaited: spawn work from them)
        self.listeners: list[Callable[[Registration], None]] = []

    # -- public API --------------------------------------------------------------------
    async def handle_register(self, request: SipRequest, peer: Peer, node_id: str,
                              ) -> SipResponse:
        """Answer one REGISTER. Never raises."""
        first = self.answer(request, peer, node_id)
        if isinstance(first, SipResponse):
            return first
        return await first

    def answer(self, request: SipRequest, peer: Peer, node_id: str,
               ) -> SipResponse | Awaitable[SipResponse]:
        """Answer one REGISTER now when no Redis work is needed, else return an awaitable
        of the answer; neither raises.

        The challenge (no credentials, or a nonce that is not ours) and every request
        refused before the digest check need no Redis: answering them synchronously spares
        the event loop a task per 401, half of all REGISTERs. The common authenticated
        REGISTER (credentials prefetched after its 401) comes back as a future that a
        callback on the store's reply completes, also without a task; the rest runs as a
        coroutine.
        """
        if self.pending >= self.config.max_pending:
            return self._count(self._fail(request, 503, "registrar overloaded",
                                          [("Retry-After", str(self._retry_after()))]))
        now = self.clock()
        counted = False
        try:
            creds, check = self._precheck(request, peer, now)
            if creds is None:
                # The challenge path touches no Redis: a per-node window counter and the
                # blocks this node has learnt. The credentials are fetched in the background
                # (after the 401 is sent, so timing tells nothing) for the answer to come.
                self._admit_locally(peer.host, now)
                self._prefetch(_unescape(request.to.uri.user or ""), now)
                return self._count(self._challenge(request, now))
            if check.status is NonceStatus.INVALID:
                self._admit_locally(peer.host, now)
                return self._count(self._challenge(request, now))
            self.pending += 1
            counted = True
            fast = self._answer_cached(request, peer, node_id, creds, check, now)
        except Exception as e:  # noqa: BLE001 - mapped to a status by the one function
            if counted:
                self.pending -= 1
            return self._count(self._error_response(request, e))
        if fast is not None:
            if isinstance(fast, SipResponse):
                self.pending -= 1
                return self._count(fast)
            return fast
        return self._finish(request, peer, node_id, creds, check, now)

    def _answer_cached(self, request: SipRequest, peer: Peer, node_id: str,
                       creds: DigestCredentials, check: NonceCheck, now: float,
                       out: asyncio.Future[SipResponse] | None = None,
                       ) -> SipResponse | asyncio.Future[SipResponse] | None:
        """The common authenticated REGISTER without a task: credentials prefetched, digest
        right, firmware admitted, pipe up. The script's reply completes a future through a
        callback (into ``out`` when given). None: anything else, for the coroutine
        (``_finish``) to do in full."""
        known, auth, pending = self.cached_auth(creds.username[:128], now)
        if not known:
            if pending is None:
                return None
            # The usual case under load: the answer to the 401 overtakes the prefetch.
            # Carry on when it lands.
            wait: asyncio.Future[SipResponse] = pending.get_loop().create_future()
            pending.add_done_callback(lambda _: self._resume(wait, request, peer, node_id,
                                                             creds, check, now))
            return wait
        if auth is None:
            return None
        status = self.auth.verify_with(creds, request.method, auth.ha1, check)
        if status is AuthStatus.FAILED or \
                _unescape(request.to.uri.user or "") != creds.username:
            return None  # failures are counted in Redis: the coroutine's job
        prepared = self._prepare(request, peer, node_id, creds, auth, status, now)
        if isinstance(prepared, SipResponse):
            return prepared
        update, ctx = prepared
        if not update.apply:
            return None
        raw = self.store.apply_now(update, now, self.config.max_bindings_per_aor,
                                   guard=self.config.guard)
        if raw is None:
            return None
        done = out if out is not None else raw.get_loop().create_future()
        raw.add_done_callback(lambda r: self._applied(r, done, request, peer, update, ctx,
                                                      now))
        return done

    def cached_auth(self, username: str, now: float,
                    ) -> tuple[bool, AuthRecord | None, asyncio.Future[Any] | None]:
        """(known, record, pending): a record fetched less than ``_CRED_CACHE_TTL`` ago
        (``known``; None for no such user), else the prefetch in flight, if any."""
        hit = self._ha1_cache.get(username)
        if hit is not None and now - hit[1] < _CRED_CACHE_TTL:
            return True, hit[0], None
        return False, None, self._prefetching.get(username)

    def _resume(self, out: asyncio.Future[SipResponse], request: SipRequest, peer: Peer,
                node_id: str, creds: DigestCredentials, check: NonceCheck, now: float) -> None:
        """``_answer_cached`` again once the prefetch it waited for has landed."""
        again: SipResponse | asyncio.Future[SipResponse] | None = None
        try:
            # without a cached record the prefetch failed: the coroutine reads afresh
            if creds.username[:128] in self._ha1_cache:
                again = self._answer_cached(request, peer, node_id, creds, check, now, out)
        except Exception as e:  # noqa: BLE001 - mapped to a status by the one function
            again = self._error_response(request, e)
        if again is out:
            return  # the store's reply completes it
        if again is None:
            task = asyncio.ensure_future(self._finish(request, peer, node_id, creds, check,
                                                      now))
            task.add_done_callback(lambda t: _chain(t, out))
        elif isinstance(again, SipResponse):
            self.pending -= 1
            if not out.done():
                out.set_result(self._count(again))
        else:
            again.add_done_callback(lambda f: _chain(f, out))

    def _applied(self, raw: asyncio.Future[Any], out: asyncio.Future[SipResponse],
                 request: SipRequest, peer: Peer, update: RegisterUpdate, ctx: _Ctx,
                 now: float) -> None:
        exc = raw.exception() if not raw.cancelled() else asyncio.CancelledError()
        if isinstance(exc, NoScriptError):  # a restarted server: load it, the slow way
            task = asyncio.ensure_future(self._apply_then_conclude(request, peer, update,
                                                                   ctx, now))
            task.add_done_callback(lambda t: _chain(t, out))
            return
        self.pending -= 1
        try:
            if exc is not None:
                raise exc
            resp = self._conclude(request, peer, self.store.apply_result(raw.result(), update,
                                                                          now), ctx, now)
        except Exception as e:  # noqa: BLE001 - mapped to a status by the one function
            resp = self._error_response(request, e)
        if not out.done():
            out.set_result(self._count(resp))

    async def _apply_then_conclude(self, request: SipRequest, peer: Peer,
                                   update: RegisterUpdate, ctx: _Ctx, now: float,
                                   ) -> SipResponse:
        try:
            resp = self._conclude(request, peer, await self._apply(update, now), ctx, now)
        except Exception as e:  # noqa: BLE001 - mapped to a status by the one function
            resp = self._error_response(request, e)
        finally:
            self.pending -= 1
        return self._count(resp)

    async def _finish(self, request: SipRequest, peer: Peer, node_id: str,
                      creds: DigestCredentials, check: NonceCheck, now: float) -> SipResponse:
        try:
            resp = await self._register(request, peer, node_id, creds, check, now)
        except Exception as e:  # noqa: BLE001 - mapped to a status by the one function
            resp = self._error_response(request, e)
        finally:
            self.pending -= 1
        return self._count(resp)

    def _error_response(self, request: SipRequest, e: Exception) -> SipResponse:
        """Every exception of the REGISTER path as a SIP status (the last net included)."""
        if isinstance(e, _Reject):
            return self._fail(request, e.status, e.warning, e.headers)
        if isinstance(e, (SipParseError, DigestError)):
            return self._fail(request, 400, str(e))
        if isinstance(e, (RedisError, OSError, TimeoutError)):
            log.warning("registration store unavailable: %s", e)
            return self._fail(request, 503, "registration store unavailable",
                              [("Retry-After", str(self._retry_after()))])
        # a bug must not kill the transaction user
        log.error("REGISTER failed", exc_info=e)
        return self._fail(request, 500, "internal error")

    def _count(self, resp: SipResponse) -> SipResponse:
        self._count_status(resp.status)
        return resp

    def _count_status(self, status: int) -> None:
        if self.metrics is not None:
            child = self._results.get(status)
            if child is None:
                child = self._results[status] = self.metrics.results.labels(str(status))
            self.metrics.tally.inc(child)

    async def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of a device AOR, or of every device of a paired user's AOR."""
        now = self.clock()
        aor = _norm_aor(aor)
        own_raw, members = await self._commands(("HVALS", keys.bindings(aor)),
                                                ("SMEMBERS", keys.user_devices(aor)))
        from gateway.registrar.bindings import _decode_live
        out = _decode_live(own_raw, now)
        if len(out) != len(own_raw):
            await self.store.purge(aor, now)  # lazy purge: expired bindings found on read
        if members:
            ids = sorted(m.decode() for m in members)
            found = await self._commands(*(("HMGET", keys.device(i), "sip_username", "realm")
                                           for i in ids))
            aors = [f"sip:{u.decode()}@{r.decode()}" for u, r in found if u and r]
            for raw in await self._commands(*(("HVALS", keys.bindings(a)) for a in aors)):
                out.extend(_decode_live(raw, now))
        return out

    async def _commands(self, *commands: tuple[str, ...]) -> list[Any]:
        """Several reads in one round trip (the pipe's own deadline; redis-py's under the
        store timeout where the store is not plain)."""
        pipe = self.store.pipe
        if pipe is not None:
            return await pipe.commands(commands)
        async with asyncio.timeout(self.config.store_timeout):
            return await run_commands(None, self.redis, commands)

    async def sweep_expired(self, now: float | None = None) -> int:
        """Periodic: purge expired bindings and refresh the gauges."""
        now = self.clock() if now is None else now
        n = await self.store.sweep(now)
        if self.metrics is not None:
            await self.refresh_metrics(now)
        return n

    async def offboard_stale(self, now: float | None = None) -> list[str]:
        from gateway.registrar.lifecycle import offboard_stale
        return await offboard_stale(self.devices, self.clock() if now is None else now,
                                    paired_days=self.config.stale_paired_days,
                                    unpaired_days=self.config.stale_unpaired_days)

    async def refresh_metrics(self, now: float) -> None:
        """The gauges, from the store's per-label counts (a command per label, whatever
        the size of the fleet; the REGISTER script keeps the counts)."""
        if self.metrics is None:
            return
        labels = sorted(raw.decode() for raw in
                        await self.redis.smembers(keys.active_labels()))
        counts: dict[tuple[str, ...], int] = {}
        if labels:
            pipe = self.redis.pipeline(transaction=False)
            for label in labels:  # what expired is trimmed; the rest is live
                pipe.zremrangebyscore(keys.active(label), "-inf", repr(now))
                pipe.zcard(keys.active(label))
            replies = await pipe.execute()
            for label, n in zip(labels, replies[1::2], strict=True):
                parts = tuple(p or "unknown" for p in label.split("\t"))
                if n and len(parts) == 3:
                    counts[parts] = counts.get(parts, 0) + int(n)
        self.metrics.active.clear()
        for (vendor, model, verdict), n in counts.items():
            self.metrics.active.labels(vendor, model, verdict).set(n)
        self.metrics.blocked_sources.set(await self.guard.blocked_sources())

    # -- §10.3 ---------------------------------------------------------------------------
    def _precheck(self, request: SipRequest, peer: Peer, now: float,
                  ) -> tuple[DigestCredentials | None, NonceCheck]:
        """§10.3 steps 1-2 and the credentials' syntax and nonce: all without Redis."""
        if request.method != "REGISTER":
            raise _Reject(405, "only REGISTER is handled here", [("Allow", "REGISTER")])
        to_uri = request.to.uri
        if not to_uri.is_sip or not to_uri.user:
            raise _Reject(404, "To must be the sip: URI of a device account")
        creds = self.auth.credentials(request)  # DigestError -> 400
        if creds is None:
            return None, _NO_CHECK
        return creds, self.auth.nonces.check(creds.nonce, now)

    async def _register(self, request: SipRequest, peer: Peer, node_id: str,
                        creds: DigestCredentials, check: NonceCheck, now: float,
                        ) -> SipResponse:
        to_uri = request.to.uri
        username = creds.username[:128]
        cached = username in self._ha1_cache
        auth = await self._auth_record(username, now)
        status = self.auth.verify_with(creds, request.method,
                                       auth.ha1 if auth is not None else None, check)
        if status is AuthStatus.FAILED and cached:
            # A cached record may predate a new device or password: fail on fresh data only.
            self._ha1_cache.pop(username, None)
            auth = await self._auth_record(username, now)
            status = self.auth.verify_with(creds, request.method,
                                           auth.ha1 if auth is not None else None, check)
        if status is AuthStatus.FAILED or auth is None or \
                _unescape(to_uri.user or "") != creds.username:
            log.info("digest check failed for %r from %s (%s)", _ascii(username, 64), peer,
                     "unknown user" if auth is None else
                     "To/username mismatch" if status is AuthStatus.OK else "wrong response")
            await self._count_failure(peer.host, username, "bad_credentials", now)
            raise _Reject(403, "authentication failed")

        prepared = self._prepare(request, peer, node_id, creds, auth, status, now)
        if isinstance(prepared, SipResponse):
            return prepared
        update, ctx = prepared
        result = await self._apply(update, now)
        if not update.apply:
            raise _Reject(403, ctx.verdict_reason or "device firmware not admitted")
        return self._conclude(request, peer, result, ctx, now)

    def _prepare(self, request: SipRequest, peer: Peer, node_id: str,
                 creds: DigestCredentials, auth: AuthRecord, status: AuthStatus, now: float,
                 ) -> SipResponse | tuple[RegisterUpdate, _Ctx]:
        """After a right digest: the store update to make (or the stale challenge).

        A firmware rejection still records the verdict (``apply=False``) and then fails.
        """
        if status is AuthStatus.STALE:
            self._admit_locally(peer.host, now)
            return self._challenge(request, now, stale=True)
        username = creds.username[:128]
        # Authenticated. The firmware verdict applies to every REGISTER.
        ua = request.headers.get("User-Agent") or ""
        verdict = self._evaluate(ua)
        aor = f"sip:{creds.username}@{self.auth.realm}"
        base = self.update_base(creds, auth, request.call_id, request.cseq.number, peer.host,
                                self._verdict_fields(verdict, ua, now))
        if not verdict.admitted:
            return RegisterUpdate(**base, apply=False), _Ctx(
                aor, auth.device_id, username, node_id, (), False, False, [],
                verdict.reason or "device firmware not admitted")
        ops, wildcard, outbound, path = self._contact_ops(request, peer, node_id, aor,
                                                          auth.device_id, ua, now)
        return RegisterUpdate(**base, ops=ops, wildcard=wildcard), _Ctx(
            aor, auth.device_id, username, node_id, tuple(ops), wildcard, outbound, path, "")

    def update_base(self, creds: DigestCredentials, auth: AuthRecord, call_id: str, cseq: int,
                    source_ip: str, fields: dict[str, str]) -> dict[str, Any]:
        """The ``RegisterUpdate`` fields every authenticated REGISTER has (all but the ops)."""
        return dict(
            aor=f"sip:{creds.username}@{self.auth.realm}", device_id=auth.device_id,
            username=creds.username[:128], call_id=call_id, cseq=cseq, nonce=creds.nonce,
            nc=_nc(creds), nonce_ttl=self.auth.nonce_ttl + 10, source_ip=source_ip,
            device_fields=fields, ha1_field=_HA1_FIELD[creds.algorithm],
            ha1=auth.ha1[creds.algorithm])

    def _conclude(self, request: SipRequest, peer: Peer, result: RegisterResult, ctx: _Ctx,
                  now: float) -> SipResponse:
        """The store's answer to one authenticated REGISTER as a SIP response."""
        cfg = self.config
        outcome = result.outcome
        if outcome == "ok":
            if ctx.wildcard or any(op.binding is None for op in ctx.ops):
                reason = request.headers.get("Reason")
                log.info("bindings removed for %s from %s%s", ctx.aor, peer,
                         f" (Reason: {_ascii(reason)})" if reason else "")
            self._registered(ctx, peer, result)
            return self._ok(request, result.bindings, now, outbound=ctx.outbound,
                            path=ctx.path)
        if outcome == "replay":
            # A reused nonce count: a replay, or a phone that never increments nc. Either way
            # a fresh nonce is the cure; not counted as a failure (the digest was right).
            return self._challenge(request, now, stale=True)
        if outcome == "cred":
            # The password changed between our read and the write: decide afresh.
            self._ha1_cache.pop(ctx.username, None)
            return self._challenge(request, now, stale=True)
        if outcome == "cseq":
            raise _Reject(500, "out-of-order REGISTER (same Call-ID, CSeq not higher)",
                          [("Retry-After", "1")])
        if outcome == "toomany":
            raise _Reject(403, f"too many bindings: at most {cfg.max_bindings_per_aor} "
                               "contacts per address-of-record")
        if outcome == "gone":
            self._ha1_cache.pop(ctx.username, None)
            raise _Reject(403, "authentication failed")
        self._admission_reject(outcome, result.detail, peer.host, now)
        raise _Reject(500, f"unexpected store outcome {outcome[:20]}")

    def _registered(self, ctx: _Ctx, peer: Peer, result: RegisterResult) -> None:
        """Tell the listeners of a successful REGISTER (the store's detail carries the
        device's pairing: "<state>\t<user>")."""
        if self.listeners:
            state, _, user = result.detail.partition("\t")
            self._notify(Registration(
                aor=ctx.aor, device_id=ctx.device_id, username=ctx.username,
                node_id=ctx.node_id, source=peer, bindings=tuple(result.bindings),
                paired_user=user if state == "paired" else ""))

    def _notify(self, reg: Registration) -> None:
        for listener in self.listeners:
            try:
                listener(reg)
            except Exception:  # noqa: BLE001 - a listener's bug must not fail the REGISTER
                log.exception("registration listener failed")

    # -- admission -----------------------------------------------------------------------
    def _admit_locally(self, ip: str, now: float) -> None:
        """Pre-authentication admission on this node alone (RFC 3261 §21.5.4 503)."""
        until = self._blocked.get(ip)
        if until is not None:
            if until > now:
                raise _Reject(403, "too many failed attempts from this address; try later")
            del self._blocked[ip]
        g = self.config.guard
        window = int(now // g.rate_window)
        if window != self._window:
            self._window = window
            self._counts.clear()
        n = self._counts.get(ip, 0) + 1
        self._counts[ip] = n
        if n > g.source_rate:
            retry = max(1, int(g.rate_window - now % g.rate_window + 0.999))
            raise _Reject(503, "request rate limit exceeded", [("Retry-After", str(retry))])

    def _admission_reject(self, outcome: str, detail: str, ip: str, now: float) -> None:
        """Map the register script's admission outcomes (shared across nodes) to SIP."""
        if outcome == "blocked_src":
            ttl = float(detail) / 1000 if detail.isdigit() else 60.0
            self._remember_block(ip, now + ttl, now)
            raise _Reject(403, "too many failed attempts from this address; try later")
        if outcome == "blocked_acct":
            raise _Reject(403, "too many failed attempts for this account; try later")
        if outcome == "limited":
            g = self.config.guard
            retry = max(1, int(g.rate_window - now % g.rate_window + 0.999))
            raise _Reject(503, "request rate limit exceeded", [("Retry-After", str(retry))])

    def _remember_block(self, ip: str, until: float, now: float) -> None:
        # Held locally only briefly: an admin's unblock (in Redis) must take effect on every
        # node soon; meanwhile the next authenticated attempt re-learns a live block.
        if len(self._blocked) > 65536:
            self._blocked.clear()
        self._blocked[ip] = min(until, now + _LOCAL_BLOCK_MAX)

    # -- credentials -----------------------------------------------------------------------
    def _prefetch(self, username: str, now: float) -> None:
        if len(username) > 128 or len(self._prefetching) >= _PREFETCH_MAX:
            # (a flood of challenges from spoofed sources for random users must not become
            # as many store reads: the answers, if any come, fetch for themselves)
            return
        known, _, pending = self.cached_auth(username, now)
        if known or pending is not None:
            return
        # A callback on the pipe's future, not a task: this runs for every challenge.
        raw = self.store.command_now("HGETALL", keys.device_auth(username))
        fut: asyncio.Future[AuthRecord | None]
        if raw is None:  # no pipe (or not connected yet): the slow way, once
            fut = asyncio.ensure_future(self._fetch_auth(username, now))
        else:
            fut = raw.get_loop().create_future()
            raw.add_done_callback(lambda r: self._fetched(username, now, r, fut))
        self._prefetching[username] = fut

    def _fetched(self, username: str, now: float, raw: asyncio.Future[Any],
                 out: asyncio.Future[AuthRecord | None]) -> None:
        self._prefetching.pop(username, None)
        rec: AuthRecord | None = None
        if raw.cancelled() or raw.exception() is not None:
            pass  # the REGISTER that needs it reads afresh (and reports the store's state)
        else:
            rec = self._remember_auth(username, raw.result(), now)
        if not out.done():
            out.set_result(rec)

    async def _fetch_auth(self, username: str, now: float) -> AuthRecord | None:
        try:
            raw = await self.store.command("HGETALL", keys.device_auth(username))
        except (RedisError, OSError, TimeoutError):
            return None
        finally:
            self._prefetching.pop(username, None)
        return self._remember_auth(username, raw, now)

    def _remember_auth(self, username: str, raw: Any, now: float) -> AuthRecord | None:
        rec = parse_auth(hash_pairs(raw))
        if len(self._ha1_cache) >= _CRED_CACHE_MAX:
            self._ha1_cache.clear()
        self._ha1_cache[username] = (rec, now)
        return rec

    async def _auth_record(self, username: str, now: float) -> AuthRecord | None:
        """The HA1s to check a digest against: the prefetched copy when fresh, else Redis.

        A cached copy is only a hint: the register script refuses (``cred``) when the
        stored HA1 no longer matches the one the digest was checked against.
        """
        known, record, pending = self.cached_auth(username, now)
        if known:
            return record
        if pending is not None:  # the prefetch after the 401 is still on its way
            await asyncio.shield(pending)  # bounded by the store's deadline
            hit = self._ha1_cache.get(username)
            if hit is not None:
                return hit[0]
        raw = await self.store.command("HGETALL", keys.device_auth(username))
        return self._remember_auth(username, raw, now)

    def _contact_ops(self, request: SipRequest, peer: Peer, node_id: str, aor: str,
                     device_id: str, ua: str, now: float,
                     ) -> tuple[list[BindingOp], bool, bool, list[str]]:
        cfg = self.config
        raw_contacts = request.headers.get_all("Contact")
        expires_hdr = request.header_int("Expires")
        if "*" in raw_contacts:
            # RFC 3261 §10.3 step 6
            if raw_contacts != ["*"] or expires_hdr != 0:
                raise _Reject(400, "Contact '*' needs Expires: 0 and no other contact")
            return [], True, False, []
        supported = {t.strip().lower() for v in request.headers.get_all("Supported")
                     for t in v.split(",")}
        path = request.headers.get_all("Path")
        ops: list[BindingOp] = []
        seen: set[str] = set()
        too_brief = False
        outbound_used = False
        for c in request.contacts:
            requested = _contact_expires(c, expires_hdr, cfg.default_expires)
            instance = c.param("+sip.instance")
            reg_id_text = c.param("reg-id")
            outbound = "outbound" in supported and bool(instance) and reg_id_text is not None
            reg_id: int | None = None
            if outbound:
                assert reg_id_text is not None
                if not reg_id_text.isdigit() or not 1 <= int(reg_id_text) < 2**31:
                    raise _Reject(400, f"bad reg-id {reg_id_text[:12]!r}")
                reg_id = int(reg_id_text)
                key = f"ob:{instance}:{reg_id}"
            else:
                key = f"uri:{c.uri}"
            if key in seen:
                continue
            seen.add(key)
            if requested == 0:
                ops.append(BindingOp(key))
                continue
            if requested < cfg.min_expires:
                too_brief = True
                continue
            if outbound:
                if outbound_used:
                    # RFC 5626 §6: one flow per REGISTER
                    raise _Reject(400, "more than one Contact with reg-id")
                outbound_used = True
                if path and not NameAddr.parse(path[-1]).uri.has_param("ob"):
                    raise _Reject(439, "first hop lacks outbound support")
            ops.append(BindingOp(key, Binding(
                key=key, aor=aor, contact=_bound_contact(c), uri=str(c.uri),
                expires=now + self.grant(requested), q=_q(c), call_id=request.call_id,
                cseq=request.cseq.number, instance=instance, reg_id=reg_id, outbound=outbound,
                path=tuple(path), transport=peer.transport, host=peer.host, port=peer.port,
                flow=peer.flow, node_id=node_id, user_agent=_ascii(ua, 200),
                device_id=device_id, registered=now)))
        if too_brief:
            raise _Reject(423, f"expiry below the minimum of {cfg.min_expires}s",
                          [("Min-Expires", str(cfg.min_expires))])
        return ops, False, outbound_used, path

    def grant(self, requested: int) -> int:
        """The expiry granted for a requested one at or above the minimum: capped, and
        jittered down so a fleet rebooted at once does not re-register in step."""
        cfg = self.config
        granted = min(requested, cfg.max_expires)
        if cfg.expires_jitter > 0:
            granted = max(cfg.min_expires,
                          int(granted - self._rand.uniform(0, cfg.expires_jitter) * granted))
        return granted

    async def _apply(self, update: RegisterUpdate, now: float) -> RegisterResult:
        # no timer here: the store's hot path has one deadline for all commands in flight
        return await self.store.apply(update, now, self.config.max_bindings_per_aor,
                                      guard=self.config.guard)

    async def _count_failure(self, ip: str, username: str | None, reason: str,
                             now: float) -> None:
        """Count a failed digest check in the shared counters; block on the threshold."""
        g = self.config.guard
        async with asyncio.timeout(self.config.store_timeout):
            out = await self.store.record_failure(ip, username, now, guard=g)
        if out.outcome in ("blocked_src", "blocked_acct", "limited"):
            self._admission_reject(out.outcome, out.detail, ip, now)
        src_now, acct_now = out.detail.split(",") if "," in out.detail else ("0", "0")
        if src_now == "1":
            self._remember_block(ip, now + g.block_seconds, now)
        if self.metrics is not None:
            self.metrics.auth_failures.labels(reason).inc()
            if src_now == "1":
                self.metrics.blocks.labels("source").inc()
            if acct_now == "1":
                self.metrics.blocks.labels("account").inc()
        if src_now == "1":
            log.warning("blocking %s after repeated authentication failures", ip)
        if acct_now == "1":
            log.warning("blocking account %r after repeated authentication failures",
                        _ascii(username or "", 64))

    def _evaluate(self, ua: str) -> FirmwareVerdict:
        hit = self._verdicts.get(ua)
        if hit is None:
            v = self.firmware.evaluate(ua)
            if len(self._verdicts) > 4096:
                self._verdicts.clear()
            hit = self._verdicts[ua] = (v, _verdict_fields(v, ua, 0.0))
        return hit[0]

    def _verdict_fields(self, v: FirmwareVerdict, ua: str, now: float) -> dict[str, str]:
        hit = self._verdicts.get(ua)
        fields = dict(hit[1]) if hit is not None else _verdict_fields(v, ua, now)
        fields["fw_checked"] = repr(now)
        return fields

    # -- responses ----------------------------------------------------------------------
    def _retry_after(self) -> int:
        base = self.config.retry_after
        return base + self._rand.randint(0, max(1, base // 2))

    def date(self, now: float) -> str:
        """The Date header value for ``now`` (formatted once a second)."""
        sec = int(now)
        if self._date[0] != sec:
            self._date = (sec, email.utils.formatdate(sec, usegmt=True))
        return self._date[1]

    def _challenge(self, request: SipRequest, now: float, *, stale: bool = False) -> SipResponse:
        headers = [("WWW-Authenticate", ch) for ch in self.auth.challenges(now, stale=stale)]
        return build_response(request, 401, to_tag=new_tag(), headers=headers)

    def _fail(self, request: SipRequest, status: int, warning: str,
              headers: list[tuple[str, str]] | None = None) -> SipResponse:
        """The one place a registrar error becomes a SIP status with a Warning (RFC 3261 §20.43)."""
        hs = list(headers or [])
        hs.append(("Warning", f'399 {self.auth.realm} "{_ascii(warning)}"'))
        try:
            return build_response(request, status, to_tag=new_tag(), headers=hs)
        except SipParseError:
            return build_response(request, status, headers=hs)

    def _ok(self, request: SipRequest, bindings: list[Binding], now: float, *,
            outbound: bool, path: list[str]) -> SipResponse:
        return build_response(request, 200, to_tag=new_tag(),
                              headers=self.ok_headers(bindings, now, outbound=outbound,
                                                      path=path))

    def ok_headers(self, bindings: list[Binding], now: float, *, outbound: bool = False,
                   path: Sequence[str] = ()) -> list[tuple[str, str]]:
        """What a 200 to a REGISTER carries besides the copied headers (§10.3 step 8)."""
        hs: list[tuple[str, str]] = []
        for b in bindings:
            hs.append(("Contact", f"{b.contact};expires={b.remaining(now)}"))
        hs.append(("Date", self.date(now)))
        if outbound:
            # RFC 5626 §6: the registrar confirms it honoured reg-id, and sets the interval.
            hs.append(("Require", "outbound"))
            hs.append(("Flow-Timer", str(self.config.flow_timer)))
        for p in path:
            hs.append(("Path", p))  # RFC 3327 §5.3
        hs.append(("Supported", "outbound, path"))
        return hs


# -- helpers ---------------------------------------------------------------------------

def _unescape(user: str) -> str:
    return unquote(user) if "%" in user else user


def _norm_aor(aor: str) -> str:
    try:
        return Uri.parse(aor).aor()
    except SipParseError:
        return aor


def _nc(creds: DigestCredentials) -> int:
    # Without qop there is no nc: the nonce is then good for one REGISTER (nc=1).
    return creds.nc if creds.nc is not None else 1


def _bound_contact(c: NameAddr) -> str:
    """The Contact as stored with its binding: as registered, without ``expires``."""
    if not c.params and c.bracketed:
        return str(c)
    return str(NameAddr(uri=c.uri, display=c.display,
                        params=tuple((k, v) for k, v in c.params if k != "expires")))


def _contact_expires(c: NameAddr, header: int | None, default: int) -> int:
    e = c.param("expires")
    if e is not None:
        e = e.strip()
        if not e.isdigit() or len(e) > 10:
            raise _Reject(400, f"bad expires parameter {e[:12]!r}")
        return int(e)
    return header if header is not None else default


def _q(c: NameAddr) -> float | None:
    return _q_value(c.param("q"))


def _q_value(q: str | None) -> float | None:
    """A Contact's q (RFC 3261 §20.10) as a number; _Reject 400 when it is not one."""
    if q is None:
        return None
    try:
        v = float(q)
    except ValueError:
        raise _Reject(400, f"bad q value {q[:12]!r}") from None
    if not 0.0 <= v <= 1.0 or len(q) > 5:
        raise _Reject(400, f"bad q value {q[:12]!r}")
    return v


def _verdict_fields(v: FirmwareVerdict, ua: str, now: float) -> dict[str, str]:
    comp = getattr(v.compliance, "name", None) or str(v.compliance)
    dev = getattr(v, "device", None)
    return {
        "fw_compliance": comp, "fw_admitted": "1" if v.admitted else "0",
        "fw_flagged": "1" if v.flagged else "0", "fw_reason": _ascii(v.reason or "", 300),
        "fw_upgrade_to": str(v.upgrade_to or ""),
        "fw_firmware": str(getattr(dev, "firmware", "") or ""),
        "fw_user_agent": _ascii(ua, 200), "fw_checked": repr(now),
    }


__all__ = ["FirmwarePolicy", "FirmwareVerdict", "Registrar", "RegistrarConfig",
           "RegistrarMetrics", "Registration", "user_aor"]
