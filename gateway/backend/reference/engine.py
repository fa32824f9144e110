"""Call routing of the reference backend: endpoints, calls, DND and simulated parties.

All state is in Redis (key schema: ``gateway/backend/reference/SCHEMA.md``), so
several backend processes may share one store; only the no-answer and
simulated-party timers live in the process that created the call, with a cache of
what never changes in it (``_KnownCall``) that spares its ringing, answer and hangup
a read.

Routing follows a forking proxy (RFC 3261 §16.7): a call to a user is offered
to every online, non-DND endpoint of that user; the first 2xx (answer) wins and
the other branches are cancelled (``answered_elsewhere``); a ``declined``
(6xx-like) ends the whole call, ``busy``/``dnd`` (486-like) only drop their
branch and the call fails when no branch is left. Teams SIP Gateway rules on
top [PLAN]: "SIP device users can only call users who have phone numbers",
users need a number with PSTN enabled and AllowSIPDevicesCalling, GCC High
and DoD tenants are refused, emergency numbers are always accepted and their
location (PIDF-LO, RFC 4119) is kept on the call record.

Redis keys (prefix ``bk:``; details in SCHEMA.md beside this module):
``bk:ep:{eid}`` hash with TTL (an online endpoint), ``bk:uep:{oid}`` set (a
user's endpoints), ``bk:call:{cid}`` hash (the call record, state changed only
by the ``_CAS`` Lua script), ``bk:call:{cid}:offered`` / ``:dropped`` sets
(fork branches), ``bk:events`` stream (the event log behind ``/v1/events``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

from gateway.backend.directory import Directory, User
from gateway.backend.schema import (
    Answer,
    Call,
    CallCreate,
    Dtmf,
    Endpoint,
    EndpointCreate,
    Event,
    Reject,
    Reoffer,
    Target,
)
from gateway.sip.sdp import SdpError, SessionDescription, mirror_answer
from gateway.state.pipe import RespPipe, run_commands

log = logging.getLogger("sipgw.backend")

# Compare-and-set of a call's state, publishing its events with it: KEYS[1] = call hash,
# KEYS[2] = event stream, KEYS[3..] = keys that get the TTL too; ARGV[1] =
# ",allowed,states,"; ARGV[2] = new state; ARGV[3] = TTL to set with it (0: keep);
# ARGV[4] = stream MAXLEN; ARGV[5] = n, the number of field/value pairs that follow and
# are set with it; then the events (JSON), added to the stream only when the state moved.
# Returns {"OK", old state, the record after the change as HGETALL gives it} or {"NO",
# current state}: the caller answers from that record, no re-read, and the events leave
# in the same round trip as the change they announce.
_CAS = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return {'NO', ''} end
if not string.find(ARGV[1], ',' .. st .. ',', 1, true) then return {'NO', st} end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
local last = 5 + 2 * tonumber(ARGV[5])
for i = 6, last, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  for k = 3, #KEYS do redis.call('EXPIRE', KEYS[k], ttl) end
end
for i = last + 1, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[i])
end
return {'OK', st, redis.call('HGETALL', KEYS[1])}
"""

ACTIVE_TTL = 12 * 3600  # a call record lives this long while active
ENDED_TTL = 3600  # and this long after it ended, for GET /v1/calls/{id}
EVENTS_MAXLEN = 10000


class ApiFailure(Exception):
    """A request the backend refuses: HTTP status, stable error code, human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PstnSimulation:
    """Simulated PSTN and emergency service: which numbers answer, are busy, never answer.

    Matching is by prefix of the E.164 number; the first matching list wins in
    the order answer, busy, no_answer. Other numbers are unallocated (404).
    """

    answer: tuple[str, ...] = ("+1206555",)
    busy: tuple[str, ...] = ("+1206556",)
    no_answer: tuple[str, ...] = ("+1206557",)
    emergency: tuple[str, ...] = ("911", "112", "999", "933")
    answer_delay: float = 0.05  # seconds of ringing before a simulated party answers

    def classify(self, number: str) -> str | None:
        for outcome, prefixes in (("answer", self.answer), ("busy", self.busy),
                                  ("no_answer", self.no_answer)):
            if any(number.startswith(p) for p in prefixes):
                return outcome
        return None


@dataclass(frozen=True)
class EngineConfig:
    """Tunables of the reference backend."""

    prefix: str = "bk:"
    ring_timeout: float = 30.0  # unanswered calls end with no_answer after this
    pstn: PstnSimulation = field(default_factory=PstnSimulation)


def _s(v: Any) -> str:
    if v is None:
        return ""
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _hash(reply: Any) -> dict[Any, Any]:
    """An HGETALL reply as a dict: redis-py gives one, the pipe the flat RESP list."""
    if isinstance(reply, dict):
        return reply
    it = iter(reply or ())
    return dict(zip(it, it, strict=True))


def _xadd(key: str, event: Event) -> tuple[Any, ...]:
    return ("XADD", key, "MAXLEN", "~", EVENTS_MAXLEN, "*", "e",
            json.dumps(event.to_json(), separators=(",", ":")))


def simulated_answer(offer: str) -> str:
    """An RFC 3264 answer accepting the first audio codec of ``offer`` (for simulated parties)."""
    pt, rtpmap = "0", "a=rtpmap:0 PCMU/8000"
    for line in offer.splitlines():
        if line.startswith("m=audio "):
            parts = line.split()
            if len(parts) > 3:
                pt = parts[3]
            break
    for line in offer.splitlines():
        if line.startswith(f"a=rtpmap:{pt} "):
            rtpmap = line.strip()
    port = 40000 + 2 * secrets.randbelow(5000)
    sess = secrets.randbelow(2**31)
    return ("v=0\r\n"
            f"o=refbackend {sess} {sess} IN IP4 127.0.0.1\r\n"
            "s=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {pt}\r\n{rtpmap}\r\na=sendrecv\r\n")


def simulated_offer() -> str:
    """The SDP offer of a simulated Teams client (PCMU, PCMA, telephone-event)."""
    port = 40000 + 2 * secrets.randbelow(5000)
    sess = secrets.randbelow(2**31)
    return ("v=0\r\n"
            f"o=teamsim {sess} {sess} IN IP4 127.0.0.1\r\n"
            "s=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 8 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n")


@dataclass(frozen=True, slots=True)
class _KnownCall:
    """What never changes in a call record this process created: the parties and the
    branches it was offered to; ``answered_endpoint`` once this process saw the answer.
    Lets ringing, answer and hangup go straight to the compare-and-set (one round trip);
    whatever the script refuses takes the full path, which reads the record."""

    from_user: str
    from_endpoint: str
    callee_user: str
    offered: frozenset[str]
    answered_endpoint: str = ""


KNOWN_CALLS_MAX = 100_000


class CallEngine:
    """The backend's call control over Redis (RFC 3261 §16.7 forking semantics)."""

    def __init__(self, redis: Any, directory: Directory, reactor: Any,
                 config: EngineConfig | None = None) -> None:
        self.redis = redis
        self.directory = directory
        self.reactor = reactor
        self.config = config or EngineConfig()
        self._p = self.config.prefix
        self._cas = redis.register_script(_CAS)
        self._cas_sha = hashlib.sha1(_CAS.encode()).hexdigest()
        # The commands of every call go over one pipelined connection where the store is
        # plain Redis/Valkey (redis-py's pool checkout and per-command layers cost more
        # than the commands); Sentinel/TLS stores keep redis-py.
        self._pipe = RespPipe.for_client(redis)
        self._timers: dict[tuple[str, str], Any] = {}  # IDelayedCall
        self._known: dict[str, _KnownCall] = {}
        self.events_key = f"{self._p}events"

    # --- keys ------------------------------------------------------------------------
    def _ep_key(self, eid: str) -> str:
        return f"{self._p}ep:{eid}"

    def _user_eps_key(self, oid: str) -> str:
        return f"{self._p}uep:{oid}"

    def _call_key(self, cid: str) -> str:
        return f"{self._p}call:{cid}"

    def _offered_key(self, cid: str) -> str:
        return f"{self._p}call:{cid}:offered"

    def _dropped_key(self, cid: str) -> str:
        return f"{self._p}call:{cid}:dropped"

    # --- timers ----------------------------------------------------------------------
    def _later(self, cid: str, name: str, delay: float,
               fn: Callable[[], Awaitable[None]]) -> None:
        def fire() -> None:
            self._timers.pop((cid, name), None)

            async def run() -> None:
                try:
                    await fn()
                except Exception:
                    log.exception("reference backend timer %s of call %s failed", name, cid)
            asyncio.ensure_future(run())
        self._cancel_timer(cid, name)
        self._timers[(cid, name)] = self.reactor.callLater(delay, fire)

    def _cancel_timer(self, cid: str, name: str) -> None:
        t = self._timers.pop((cid, name), None)
        if t is not None and t.active():
            t.cancel()

    def _cancel_timers(self, cid: str) -> None:
        for key in [k for k in self._timers if k[0] == cid]:
            self._cancel_timer(*key)

    def stop(self) -> None:
        for key in list(self._timers):
            self._cancel_timer(*key)

    async def close(self) -> None:
        """Stop the timers and close the pipelined connection (idempotent)."""
        self.stop()
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.close()

    # --- store -----------------------------------------------------------------------
    async def _commands(self, cmds: list[tuple[Any, ...]]) -> list[Any]:
        """Run ``cmds`` in one round trip, in order (no MULTI); their raw replies.
        An error reply raises once every reply is in."""
        return await run_commands(self._pipe, self.redis, cmds)

    async def _command(self, *args: Any) -> Any:
        pipe = self._pipe
        if pipe is None:
            return await self.redis.execute_command(*args)
        return await pipe.execute(*args)

    async def _run_cas(self, keys: list[str], args: list[str]) -> Any:
        if self._pipe is None:
            return await self._cas(keys=keys, args=args)
        try:
            return await self._pipe.execute("EVALSHA", self._cas_sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted server: load it once, the slow way
            await self._pipe.execute("SCRIPT", "LOAD", _CAS)
            return await self._pipe.execute("EVALSHA", self._cas_sha, len(keys), *keys,
                                            *args)

    # --- events ----------------------------------------------------------------------
    async def publish(self, events: Iterable[Event]) -> None:
        cmds = [_xadd(self.events_key, ev) for ev in events]
        if cmds:
            await self._commands(cmds)

    # --- directory -------------------------------------------------------------------
    def user(self, oid: str) -> User:
        u = self.directory.users.get(oid.lower())
        if u is None:
            raise ApiFailure(404, "user_not_found", f"no user with oid {oid}")
        return u

    def resolve_user(self, ref: str) -> User | None:
        """A user by oid, UPN or E.164 number."""
        if ref.startswith("+"):
            return self.directory.user_by_number(ref)
        if "@" in ref:
            return self.directory.user_by_upn(ref)
        return self.directory.users.get(ref.lower())

    # --- endpoints -------------------------------------------------------------------
    async def add_endpoint(self, oid: str, body: EndpointCreate) -> Endpoint:
        user = self.user(oid)
        refusal = user.sip_device_refusal(self.directory.tenant_of(user))
        if refusal:
            raise ApiFailure(403, refusal, f"{user.upn} may not use a SIP device: {refusal}")
        return await self._store_endpoint(user, body.endpoint_id, "sip-device", body.device_id,
                                          body.capabilities, body.expires)

    async def _store_endpoint(self, user: User, eid: str, kind: str, device_id: str,
                              caps: tuple[str, ...], expires: int) -> Endpoint:
        key = self._ep_key(eid)
        owner = _s(await self.redis.hget(key, "user"))
        if owner and owner != user.oid:
            raise ApiFailure(409, "endpoint_exists", f"endpoint {eid} belongs to another user")
        dnd = _s(await self.redis.hget(key, "dnd")) == "1"
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"user": user.oid, "kind": kind, "device_id": device_id,
                                "caps": json.dumps(list(caps)), "dnd": "1" if dnd else "0"})
        pipe.expire(key, expires)
        pipe.sadd(self._user_eps_key(user.oid), eid)
        await pipe.execute()
        ep = Endpoint(endpoint_id=eid, user=user.oid, kind=kind, device_id=device_id,
                      capabilities=caps, dnd=dnd)
        if not owner:
            await self.publish([Event(type="endpoint.online", user=user.oid, endpoint_id=eid)])
        return ep

    async def get_endpoint(self, eid: str) -> Endpoint | None:
        return self._endpoint_record(eid, await self._command("HGETALL", self._ep_key(eid)))

    @staticmethod
    def _endpoint_record(eid: str, reply: Any) -> Endpoint | None:
        h = _hash(reply)
        if not h:
            return None
        d = {_s(k): _s(v) for k, v in h.items()}
        try:
            caps = tuple(json.loads(d.get("caps", "[]")))
        except ValueError:
            caps = ()
        return Endpoint(endpoint_id=eid, user=d.get("user", ""), kind=d.get("kind", ""),
                        device_id=d.get("device_id", ""), capabilities=caps,
                        dnd=d.get("dnd") == "1")

    async def owned_endpoint(self, oid: str, eid: str) -> Endpoint:
        ep = await self.get_endpoint(eid)
        if ep is None or ep.user != oid.lower():
            raise ApiFailure(404, "endpoint_not_found", f"no endpoint {eid} of user {oid}")
        return ep

    async def endpoints_of(self, oid: str, members: Any = None) -> list[Endpoint]:
        """The user's online endpoints; ``members``: the user's endpoint set when the
        caller read it already (create_call does, in the round trip of its own checks)."""
        if members is None:
            members = await self._command("SMEMBERS", self._user_eps_key(oid))
        eids = sorted(_s(e) for e in members)
        out: list[Endpoint] = []
        stale: list[str] = []
        records = await self._commands([("HGETALL", self._ep_key(eid)) for eid in eids]) \
            if eids else []
        for eid, h in zip(eids, records, strict=True):
            ep = self._endpoint_record(eid, h)
            if ep is None or ep.user != oid:
                stale.append(eid)  # expired without a DELETE
            else:
                out.append(ep)
        if stale:
            await self._command("SREM", self._user_eps_key(oid), *stale)
        return out

    async def remove_endpoint(self, oid: str, eid: str) -> None:
        await self.owned_endpoint(oid, eid)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._ep_key(eid))
        pipe.srem(self._user_eps_key(oid.lower()), eid)
        await pipe.execute()
        await self.publish([Event(type="endpoint.offline", user=oid.lower(), endpoint_id=eid)])

    async def set_dnd(self, oid: str, eid: str, dnd: bool) -> Endpoint:
        ep = await self.owned_endpoint(oid, eid)
        await self.redis.hset(self._ep_key(eid), "dnd", "1" if dnd else "0")
        await self.publish([Event(type="endpoint.dnd", user=ep.user, endpoint_id=eid, dnd=dnd)])
        return Endpoint(endpoint_id=eid, user=ep.user, kind=ep.kind, device_id=ep.device_id,
                        capabilities=ep.capabilities, dnd=dnd)

    async def add_sim_client(self, ref: str) -> Endpoint:
        user = self.resolve_user(ref)
        if user is None:
            raise ApiFailure(404, "user_not_found", f"no user {ref!r}")
        if not user.enabled:
            raise ApiFailure(403, "user_disabled", f"{user.upn} is disabled")
        eid = "sim-" + secrets.token_hex(8)
        return await self._store_endpoint(user, eid, "teams-desktop", eid, ("audio",), 86400)

    # --- calls -----------------------------------------------------------------------
    async def get_call(self, cid: str) -> Call:
        h = await self._command("HGETALL", self._call_key(cid))
        if not h:
            raise ApiFailure(404, "call_not_found", f"no call {cid}")
        return self._call_record(cid, h)

    @staticmethod
    def _call_record(cid: str, reply: Any) -> Call:
        d = {_s(k): _s(v) for k, v in _hash(reply).items()}
        target = Target(kind=d["target_kind"], value=d["target_value"]) \
            if d.get("target_kind") else None
        return Call(call_id=cid, state=d.get("state", "ended"),
                    from_user=d.get("from_user", ""), from_endpoint=d.get("from_endpoint", ""),
                    target=target, callee_user=d.get("callee_user", ""),
                    answered_endpoint=d.get("answered_endpoint", ""),
                    sdp_answer=d.get("sdp_answer", ""), end_reason=d.get("end_reason", ""),
                    location=d.get("location", ""), created=float(d.get("created", "0")))

    async def _transition(self, cid: str, allowed: Iterable[str], new: str,
                          **fields: str) -> str | None:
        """Atomically move ``cid`` to ``new`` if its state is in ``allowed``; old state or None."""
        old, _ = await self._move(cid, allowed, new, **fields)
        return old

    async def _move(self, cid: str, allowed: Iterable[str], new: str,
                    events: Iterable[Event] = (), **fields: str,
                    ) -> tuple[str | None, Call | None]:
        """``_transition`` that also publishes ``events`` when the state moved (atomically,
        in the same round trip) and returns the call as it is right after the change."""
        ended = new == "ended"
        args: list[str] = ["," + ",".join(allowed) + ",", new, str(ENDED_TTL if ended else 0),
                           str(EVENTS_MAXLEN), str(len(fields))]
        for k, v in fields.items():
            args += [k, v]
        args += [json.dumps(ev.to_json(), separators=(",", ":")) for ev in events]
        keys = [self._call_key(cid), self.events_key]
        if ended:
            keys += [self._offered_key(cid), self._dropped_key(cid)]
        res = await self._run_cas(keys, args)
        if _s(res[0]) != "OK":
            return None, None
        if ended:
            self._cancel_timers(cid)
            self._known.pop(cid, None)
        return _s(res[1]), self._call_record(cid, res[2])

    def _remember(self, cid: str, known: _KnownCall) -> None:
        if cid not in self._known and len(self._known) >= KNOWN_CALLS_MAX:
            # calls that never ended here (another process ended them): forget the oldest
            del self._known[next(iter(self._known))]
        self._known[cid] = known

    async def create_call(self, body: CallCreate) -> Call:
        """``POST /v1/calls`` from a SIP device endpoint."""
        emergency = body.target.kind == "emergency" or (
            body.target.value in self.config.pstn.emergency)
        caller: User | None = None
        callee_members: tuple[str, Any] | None = None
        if body.from_user:
            caller = self.user(body.from_user)
            callee_ref = None if emergency else self.resolve_user(body.target.value)
            # the caller's endpoint and the callee's endpoint list in one round trip
            cmds: list[tuple[Any, ...]] = [("HGETALL", self._ep_key(body.from_endpoint))]
            if callee_ref is not None:
                cmds.append(("SMEMBERS", self._user_eps_key(callee_ref.oid)))
            got = await self._commands(cmds)
            ep = self._endpoint_record(body.from_endpoint, got[0])
            if callee_ref is not None:
                callee_members = (callee_ref.oid, got[1])
            if not emergency:
                if ep is None or ep.user != caller.oid:
                    raise ApiFailure(403, "endpoint_not_found",
                                     f"endpoint {body.from_endpoint} is not online for "
                                     f"user {caller.oid}")
                refusal = caller.sip_device_refusal(self.directory.tenant_of(caller))
                if refusal:
                    raise ApiFailure(403, refusal, f"{caller.upn} may not call from a SIP "
                                                   f"device: {refusal}")
        elif not emergency:
            raise ApiFailure(403, "not_signed_in", "a device without a user may only call "
                                                   "emergency numbers")
        if emergency:
            target = Target(kind="emergency", value=body.target.value)
            return await self._call_simulated(body.from_user, body.from_endpoint, target,
                                              body.sdp_offer, "answer", body.location)
        if body.target.kind == "meeting":
            return await self._call_simulated(body.from_user, body.from_endpoint, body.target,
                                              body.sdp_offer, "answer", "")
        callee = self.resolve_user(body.target.value)
        if callee is None and body.target.kind == "user":
            raise ApiFailure(404, "user_not_found", f"no user {body.target.value!r}")
        if callee is not None:
            self._check_callee_for_sip_device(callee)
            members = callee_members[1] if callee_members and \
                callee_members[0] == callee.oid else None
            return await self._call_user(body.from_user, body.from_endpoint, body.target,
                                         callee, body.sdp_offer, members)
        outcome = self.config.pstn.classify(body.target.value)
        if outcome is None:
            raise ApiFailure(404, "number_unallocated",
                             f"{body.target.value} is not a reachable number")
        return await self._call_simulated(body.from_user, body.from_endpoint, body.target,
                                          body.sdp_offer, outcome, "")

    def _check_callee_for_sip_device(self, callee: User) -> None:
        tenant = self.directory.tenant_of(callee)
        if tenant is None or not tenant.sip_gateway_available:
            raise ApiFailure(403, "cloud_not_supported",
                             f"{callee.upn} is in a cloud SIP devices cannot call")
        if not callee.number:
            raise ApiFailure(403, "callee_has_no_number",
                             "SIP devices can only call users who have phone numbers")
        if not callee.enabled:
            raise ApiFailure(404, "user_not_found", f"no user {callee.upn!r}")

    async def sim_call(self, from_ref: str, to: str, from_endpoint: str,
                       sdp_offer: str) -> Call:
        """``POST /v1/sim/calls``: a simulated Teams client calls a user or a number."""
        caller = self.resolve_user(from_ref)
        if caller is None:
            raise ApiFailure(404, "user_not_found", f"no user {from_ref!r}")
        if from_endpoint:
            ep = await self.get_endpoint(from_endpoint)
            if ep is None or ep.user != caller.oid or ep.kind != "teams-desktop":
                raise ApiFailure(404, "endpoint_not_found",
                                 f"no simulated client {from_endpoint} of {caller.upn}")
        else:
            eps = [e for e in await self.endpoints_of(caller.oid) if e.kind == "teams-desktop"]
            from_endpoint = eps[0].endpoint_id if eps else \
                (await self.add_sim_client(caller.oid)).endpoint_id
        offer = sdp_offer or simulated_offer()
        callee = self.resolve_user(to)
        if callee is not None:
            tenant = self.directory.tenant_of(callee)
            if tenant is None or not tenant.sip_gateway_available:
                raise ApiFailure(403, "cloud_not_supported", f"{callee.upn} is not reachable")
            return await self._call_user(caller.oid, from_endpoint,
                                         Target(kind="user", value=callee.oid), callee, offer)
        if to.startswith("+"):
            outcome = self.config.pstn.classify(to)
            if outcome is None:
                raise ApiFailure(404, "number_unallocated", f"{to} is not a reachable number")
            return await self._call_simulated(caller.oid, from_endpoint,
                                              Target(kind="pstn", value=to), offer, outcome, "")
        raise ApiFailure(404, "user_not_found", f"no user or number {to!r}")

    async def _new_call(self, from_user: str, from_endpoint: str, target: Target,
                        callee_user: str, sdp_offer: str, location: str,
                        offered: list[str], *, cid: str = "",
                        events: Iterable[Event] = ()) -> str:
        """Write a new call record and publish ``events`` after it, in one round trip. No
        MULTI: nobody knows the call id before its events, which come after the record."""
        cid = cid or secrets.token_hex(12)
        key = self._call_key(cid)
        cmds: list[tuple[Any, ...]] = [
            ("HSET", key, "state", "offered", "from_user", from_user,
             "from_endpoint", from_endpoint, "target_kind", target.kind,
             "target_value", target.value, "callee_user", callee_user, "sdp_offer", sdp_offer,
             "location", location, "created", repr(time.time())),
            ("EXPIRE", key, ACTIVE_TTL)]
        if offered:
            cmds += [("SADD", self._offered_key(cid), *offered),
                     ("EXPIRE", self._offered_key(cid), ACTIVE_TTL)]
        cmds += [_xadd(self.events_key, ev) for ev in events]
        await self._commands(cmds)
        return cid

    def _caller_display(self, from_user: str) -> str:
        u = self.directory.users.get(from_user)
        if u is None:
            return ""
        return u.number or u.upn

    async def _call_user(self, from_user: str, from_endpoint: str, target: Target,
                         callee: User, sdp_offer: str, members: Any = None) -> Call:
        eps = [e for e in await self.endpoints_of(callee.oid, members)
               if e.endpoint_id != from_endpoint]
        available = [e for e in eps if not e.dnd]
        cid = secrets.token_hex(12)
        caller_display = self._caller_display(from_user)
        # the offers leave with the record that makes them answerable
        offers = [Event(type="call.incoming", call_id=cid, user=callee.oid,
                        endpoint_id=e.endpoint_id, sdp=sdp_offer, caller=caller_display,
                        callee=callee.number or callee.upn) for e in available]
        await self._new_call(from_user, from_endpoint, target, callee.oid, sdp_offer, "",
                             [e.endpoint_id for e in available], cid=cid, events=offers)
        if available:
            self._remember(cid, _KnownCall(from_user, from_endpoint, callee.oid,
                                           frozenset(e.endpoint_id for e in available)))
        if not available:
            reason = "dnd" if eps else "unavailable"
            _, ended = await self._move(cid, ("offered",), "ended", end_reason=reason)
            await self.publish([Event(type="call.rejected", call_id=cid, user=from_user,
                                      endpoint_id=from_endpoint, reason=reason)])
            return ended or await self.get_call(cid)
        # the record as written; the answer to POST /v1/calls is a snapshot at creation
        call = Call(call_id=cid, state="offered", from_user=from_user,
                    from_endpoint=from_endpoint, target=target, callee_user=callee.oid,
                    created=time.time())
        self._later(cid, "no_answer", self.config.ring_timeout,
                    lambda: self._no_answer(cid))
        for e in available:
            if e.kind == "teams-desktop":  # simulated clients ring at once
                try:
                    call = await self.ringing(cid, e.endpoint_id)
                except ApiFailure:
                    # the call moved on before this client rang (its offer went out
                    # with the record, and someone answered or every branch refused):
                    # the caller learns that from the events; this is a snapshot
                    call = await self.get_call(cid)
        return call

    async def _call_simulated(self, from_user: str, from_endpoint: str, target: Target,
                              sdp_offer: str, outcome: str, location: str) -> Call:
        cid = await self._new_call(from_user, from_endpoint, target, "", sdp_offer, location, [])
        delay = self.config.pstn.answer_delay

        async def ring() -> None:
            if await self._transition(cid, ("offered",), "ringing") is None:
                return
            await self.publish([Event(type="call.ringing", call_id=cid, user=from_user,
                                      endpoint_id=from_endpoint)])
            if outcome == "answer":
                self._later(cid, "answer", delay, answer)
            elif outcome == "busy":
                self._later(cid, "busy", delay, busy)
            else:
                self._later(cid, "no_answer", self.config.ring_timeout,
                            lambda: self._no_answer(cid))

        async def answer() -> None:
            sdp = simulated_answer(sdp_offer)
            if await self._transition(cid, ("offered", "ringing"), "connected",
                                      sdp_answer=sdp, answered_at=repr(time.time())) is None:
                return
            await self.publish([Event(type="call.answered", call_id=cid, user=from_user,
                                      endpoint_id=from_endpoint, sdp=sdp)])

        async def busy() -> None:
            if await self._transition(cid, ("offered", "ringing"), "ended",
                                      end_reason="busy") is None:
                return
            await self.publish([Event(type="call.rejected", call_id=cid, user=from_user,
                                      endpoint_id=from_endpoint, reason="busy")])

        self._later(cid, "ring", 0.0, ring)
        return await self.get_call(cid)

    async def _no_answer(self, cid: str) -> None:
        call = await self.get_call(cid)
        if await self._transition(cid, ("offered", "ringing"), "ended",
                                  end_reason="no_answer") is None:
            return
        events = [Event(type="call.rejected", call_id=cid, user=call.from_user,
                        endpoint_id=call.from_endpoint, reason="no_answer")]
        events += await self._cancel_branches(cid, call.callee_user, "no_answer", exclude="")
        await self.publish(events)

    async def _cancel_branches(self, cid: str, callee: str, reason: str,
                               exclude: str) -> list[Event]:
        offered_raw, dropped_raw = await self._commands([
            ("SMEMBERS", self._offered_key(cid)), ("SMEMBERS", self._dropped_key(cid))])
        offered = {_s(e) for e in offered_raw}
        dropped = {_s(e) for e in dropped_raw}
        return [Event(type="call.cancelled", call_id=cid, user=callee, endpoint_id=eid,
                      reason=reason)
                for eid in sorted(offered - dropped - {exclude})]

    async def _offered_endpoint(self, cid: str, eid: str) -> Call:
        call, _, _ = await self._offered_call(cid, eid)
        return call

    async def _offered_call(self, cid: str, eid: str, *, branches: bool = False
                            ) -> tuple[Call, bool, list[str]]:
        """The call offered to ``eid``, whether ``eid`` already dropped out and (with
        ``branches``) the branches still ringing, sorted: one round trip."""
        h, offered_raw, dropped_raw = await self._commands([
            ("HGETALL", self._call_key(cid)), ("SMEMBERS", self._offered_key(cid)),
            ("SMEMBERS", self._dropped_key(cid))])
        if not h:
            raise ApiFailure(404, "call_not_found", f"no call {cid}")
        offered = {_s(e) for e in offered_raw}
        if eid not in offered:
            raise ApiFailure(403, "not_offered", f"call {cid} was not offered to {eid}")
        dropped = {_s(e) for e in dropped_raw}
        ringing = sorted(offered - dropped) if branches else []
        return self._call_record(cid, h), eid in dropped, ringing

    async def ringing(self, cid: str, eid: str) -> Call:
        known = self._known.get(cid)
        if known is not None and eid in known.offered:
            old, after = await self._move(cid, ("offered",), "ringing", events=[
                Event(type="call.ringing", call_id=cid, user=known.from_user,
                      endpoint_id=known.from_endpoint)])
            if old is not None and after is not None:
                return after
        call = await self._offered_endpoint(cid, eid)
        old, after = await self._move(cid, ("offered",), "ringing", events=[
            Event(type="call.ringing", call_id=cid, user=call.from_user,
                  endpoint_id=call.from_endpoint)])
        if old is not None:
            return after or call
        if call.state not in ("ringing",):
            raise ApiFailure(409, "call_not_ringing", f"call {cid} is {call.state}")
        return await self.get_call(cid)

    async def answer(self, cid: str, body: Answer) -> Call:
        known = self._known.get(cid)
        if known is not None and known.offered == {body.endpoint_id}:
            # the only branch: no other branch to cancel, and had it rejected the call
            # the call would have ended, so the state check covers "already rejected"
            after = await self._answer_move(cid, body, known.from_user, known.from_endpoint,
                                            [])
            if after is not None:
                return after
        call, dropped, branches = await self._offered_call(cid, body.endpoint_id,
                                                           branches=True)
        if dropped:
            raise ApiFailure(409, "call_not_ringing", "this endpoint already rejected the call")
        # a forked call: the other branches stop ringing
        cancelled = [Event(type="call.cancelled", call_id=cid, user=call.callee_user,
                           endpoint_id=eid, reason="answered_elsewhere")
                     for eid in branches if eid != body.endpoint_id]
        after = await self._answer_move(cid, body, call.from_user, call.from_endpoint,
                                        cancelled)
        if after is None:
            fresh = await self.get_call(cid)
            code = "answered_elsewhere" if fresh.state == "connected" else "call_not_ringing"
            raise ApiFailure(409, code, f"call {cid} is {fresh.state}")
        return after

    async def _answer_move(self, cid: str, body: Answer, from_user: str, from_endpoint: str,
                           cancelled: list[Event]) -> Call | None:
        """The answer's compare-and-set; the call after it, or None when it was refused."""
        events = [Event(type="call.answered", call_id=cid, user=from_user,
                        endpoint_id=from_endpoint, sdp=body.sdp_answer), *cancelled]
        old, after = await self._move(cid, ("offered", "ringing"), "connected", events=events,
                                      answered_endpoint=body.endpoint_id,
                                      sdp_answer=body.sdp_answer,
                                      answered_at=repr(time.time()))
        if old is None:
            return None
        self._cancel_timer(cid, "no_answer")
        after = after or await self.get_call(cid)
        known = self._known.get(cid)
        if known is not None:
            self._known[cid] = _KnownCall(known.from_user, known.from_endpoint,
                                          known.callee_user, known.offered,
                                          after.answered_endpoint)
        return after

    async def reoffer(self, cid: str, body: Reoffer) -> str:
        """``POST /v1/calls/{id}/reoffer``: a party re-offers (hold, resume, refresh).

        The answer is the other side's current SDP with each stream's direction
        mirrored (RFC 3264 §8.4: ``sendonly`` gets ``recvonly``, ``inactive`` stays)
        and its version one above the answer this endpoint last got (§8). The offer
        becomes this party's current SDP and the other party gets ``call.reoffer``."""
        call = await self.get_call(cid)
        eid = body.endpoint_id
        if not eid or eid not in (call.from_endpoint, call.answered_endpoint):
            raise ApiFailure(403, "not_a_party", f"{eid} is not a party of call {cid}")
        if call.state != "connected":
            raise ApiFailure(409, "call_not_connected", f"call {cid} is {call.state}")
        key = self._call_key(cid)
        caller = eid == call.from_endpoint
        mine, theirs = ("sdp_offer", "sdp_answer") if caller else ("sdp_answer", "sdp_offer")
        other, last = await self.redis.hmget(key, [theirs, f"reoffer_answer:{eid}"])
        try:
            offer = SessionDescription.parse(body.sdp_offer)
        except SdpError as e:
            raise ApiFailure(400, "bad_request", f"sdp_offer: {e}") from None
        try:
            base = SessionDescription.parse(_s(last) or _s(other))
        except SdpError:  # a simulated party without a usable SDP answers afresh
            base = SessionDescription.parse(simulated_answer(body.sdp_offer))
        answer = str(mirror_answer(base, offer))
        await self.redis.hset(key, mapping={mine: body.sdp_offer,
                                            f"reoffer_answer:{eid}": answer})
        events = self._other_party_events(call, eid, "call.reoffer", sdp=body.sdp_offer)
        if events:
            await self.publish(events)
        return answer

    async def reject(self, cid: str, body: Reject) -> Call:
        call = await self._offered_endpoint(cid, body.endpoint_id)
        if call.state not in ("offered", "ringing"):
            raise ApiFailure(409, "call_not_ringing", f"call {cid} is {call.state}")
        await self.redis.sadd(self._dropped_key(cid), body.endpoint_id)
        offered = {_s(e) for e in await self.redis.smembers(self._offered_key(cid))}
        dropped = {_s(e) for e in await self.redis.smembers(self._dropped_key(cid))}
        # RFC 3261 §16.7 step 5: a 6xx (declined) ends every branch; a 486 only its own.
        if body.reason == "declined" or offered <= dropped:
            if await self._transition(cid, ("offered", "ringing"), "ended",
                                      end_reason=body.reason) is not None:
                events = [Event(type="call.rejected", call_id=cid, user=call.from_user,
                                endpoint_id=call.from_endpoint, reason=body.reason)]
                events += await self._cancel_branches(cid, call.callee_user, body.reason,
                                                      exclude=body.endpoint_id)
                await self.publish(events)
        return await self.get_call(cid)

    async def cancel(self, cid: str, eid: str) -> Call:
        call = await self.get_call(cid)
        if eid != call.from_endpoint:
            raise ApiFailure(403, "not_caller", f"only the calling endpoint may cancel {cid}")
        old, after = await self._move(cid, ("offered", "ringing"), "ended",
                                      end_reason="caller_cancelled")
        if old is None:
            raise ApiFailure(409, "call_not_ringing", f"call {cid} is {call.state}")
        await self.publish(await self._cancel_branches(cid, call.callee_user,
                                                       "caller_cancelled", exclude=""))
        return after or await self.get_call(cid)

    async def hangup(self, cid: str, eid: str) -> Call:
        known = self._known.get(cid)
        if known is not None and known.answered_endpoint and \
                eid in (known.from_endpoint, known.answered_endpoint):
            parties = Call(call_id=cid, state="connected", from_user=known.from_user,
                           from_endpoint=known.from_endpoint, callee_user=known.callee_user,
                           answered_endpoint=known.answered_endpoint)
            old, after = await self._move(
                cid, ("connected",), "ended",
                events=self._other_party_events(parties, eid, "call.ended", reason="hangup"),
                end_reason="hangup", ended_by=eid)
            if old is not None and after is not None:
                return after
        call = await self.get_call(cid)
        if call.state in ("offered", "ringing") and eid == call.from_endpoint:
            return await self.cancel(cid, eid)
        if eid not in (call.from_endpoint, call.answered_endpoint):
            raise ApiFailure(403, "not_a_party", f"{eid} is not a party of call {cid}")
        old, after = await self._move(
            cid, ("connected",), "ended",
            events=self._other_party_events(call, eid, "call.ended", reason="hangup"),
            end_reason="hangup", ended_by=eid)
        if old is None:
            raise ApiFailure(409, "call_not_connected", f"call {cid} is {call.state}")
        return after or await self.get_call(cid)

    async def far_end_hangup(self, cid: str) -> Call:
        """The simulated PSTN/meeting/emergency party hangs up (``/v1/sim/calls/{id}/hangup``)."""
        call = await self.get_call(cid)
        if call.callee_user:
            raise ApiFailure(409, "not_simulated", f"call {cid} goes to a user endpoint")
        if await self._transition(cid, ("connected",), "ended", end_reason="hangup",
                                  ended_by="far_end") is None:
            raise ApiFailure(409, "call_not_connected", f"call {cid} is {call.state}")
        await self.publish([Event(type="call.ended", call_id=cid, user=call.from_user,
                                  endpoint_id=call.from_endpoint, reason="hangup")])
        return await self.get_call(cid)

    def _other_party_events(self, call: Call, eid: str, etype: str, **kw: Any) -> list[Event]:
        if eid == call.from_endpoint:
            if not call.answered_endpoint:
                return []  # the other party is simulated
            return [Event(type=etype, call_id=call.call_id, user=call.callee_user,
                          endpoint_id=call.answered_endpoint, **kw)]
        return [Event(type=etype, call_id=call.call_id, user=call.from_user,
                      endpoint_id=call.from_endpoint, **kw)]

    async def dtmf(self, cid: str, body: Dtmf) -> Call:
        call = await self.get_call(cid)
        if body.endpoint_id not in (call.from_endpoint, call.answered_endpoint):
            raise ApiFailure(403, "not_a_party", f"{body.endpoint_id} is not in call {cid}")
        if call.state != "connected":
            raise ApiFailure(409, "call_not_connected", f"call {cid} is {call.state}")
        events = self._other_party_events(call, body.endpoint_id, "call.dtmf",
                                          digits=body.digits)
        if events:
            await self.publish(events)
        else:
            await self.redis.hset(self._call_key(cid), "dtmf_received",
                                  _s(await self.redis.hget(self._call_key(cid),
                                                           "dtmf_received")) + body.digits)
        return call

    async def sim_client_answer(self, eid: str, cid: str) -> Call:
        ep = await self._sim_endpoint(eid)
        offer = _s(await self.redis.hget(self._call_key(cid), "sdp_offer"))
        return await self.answer(cid, Answer(endpoint_id=ep.endpoint_id,
                                             sdp_answer=simulated_answer(offer)))

    async def _sim_endpoint(self, eid: str) -> Endpoint:
        ep = await self.get_endpoint(eid)
        if ep is None or ep.kind != "teams-desktop":
            raise ApiFailure(404, "endpoint_not_found", f"no simulated client {eid}")
        return ep

    async def sim_client_reject(self, eid: str, cid: str, reason: str) -> Call:
        await self._sim_endpoint(eid)
        return await self.reject(cid, Reject(endpoint_id=eid, reason=reason))

    async def sim_client_hangup(self, eid: str, cid: str) -> Call:
        await self._sim_endpoint(eid)
        return await self.hangup(cid, eid)

    async def sim_client_dtmf(self, eid: str, cid: str, digits: str) -> Call:
        await self._sim_endpoint(eid)
        if not digits:
            raise ApiFailure(400, "bad_request", "digits: missing")
        return await self.dtmf(cid, Dtmf(endpoint_id=eid, digits=digits))
