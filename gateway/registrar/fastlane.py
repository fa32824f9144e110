"""The registrar's fast lane: everyday UDP REGISTERs answered straight from the datagram.

RFC 3261 §10.3 as ``Registrar`` does it, for the one shape a fleet sends all
day (``gateway.sip.lean``): one Via, one Contact, digest credentials or none.
The request is not built into a ``SipRequest``, there is no transaction object
(``ReplayCache`` answers retransmissions), and the response is rendered
straight to bytes. The decisions are the registrar's own (its nonce, digest,
admission, firmware verdict, binding and store code); anything outside the
common case is handed to the general path untouched, before any state has
changed, so it is answered exactly as it would have been without this lane:

- no credentials: local admission, credentials prefetch, 401 (not remembered:
  a challenge is stateless, a retransmission gets a fresh one);
- credentials: nonce, digest against the prefetched HA1s, firmware admitted,
  a Contact with an expiry at or above the minimum, then the register script;
  its ``ok`` is answered here (200 with the AOR's bindings) and listeners are
  told, its other outcomes by the registrar's own mapping.

Under overload (a deep receive backlog) new registrations are refused with 503 and
Retry-After before any other work.

Handed over: removals (expiry 0), fetches (no Contact), outbound reg-id, Path,
wrong or unknown credentials (failure counting), firmware refusals, overload,
and every request whose credentials are not cached yet (the prefetch failed).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from redis.exceptions import NoScriptError

from gateway.ops.overload import Overload
from gateway.registrar.auth import AuthStatus
from gateway.registrar.bindings import Binding, BindingOp, RegisterUpdate
from gateway.registrar.devices import AuthRecord
from gateway.registrar.registrar import (
    Registrar,
    _ascii,
    _bound_contact,
    _Ctx,
    _q_value,
    _Reject,
)
from gateway.sip.digest import DigestCredentials, DigestError, NonceCheck, NonceStatus
from gateway.sip.errors import SipParseError
from gateway.sip.headers import NameAddr, unquote_param
from gateway.sip.lean import (
    LeanRegister,
    Replay,
    ReplayCache,
    read_register,
    render_response,
    stamp_via,
)
from gateway.sip.message import ParseFailure, SipRequest, SipResponse, parse_message
from gateway.sip.peer import Peer
from gateway.sip.routing import stamp_request
from gateway.sip.stack import new_tag

log = logging.getLogger(__name__)

_CONTACT_CACHE_MAX = 50_000
_SWEEP_EVERY = 1.0  # s between replay-cache expiry passes


class _Contact:
    """The parts of a registered Contact the binding needs."""

    __slots__ = ("key", "contact", "uri", "expires", "q", "instance", "general")

    def __init__(self, uri: str, params: tuple[tuple[str, str | None], ...]) -> None:
        named = dict(params)

        def get(name: str) -> str | None:  # NameAddr.param: "" for a flag
            v = named.get(name)
            return v if v is not None else "" if name in named else None

        e = get("expires")
        e = e.strip() if e is not None else None
        # RFC 5626 outbound, repeated parameters and garbled expiries (400) are the
        # general path's
        self.general = "reg-id" in named or len(named) != len(params) or \
            (e is not None and (not e.isdigit() or len(e) > 10))
        self.expires = int(e) if e is not None and not self.general else None
        self.key = f"uri:{uri}"
        self.uri = uri
        # as registered, without expires: _bound_contact's text
        self.contact = f"<{uri}>" + "".join(
            f";{k}" if v is None else f";{k}={v}" for k, v in params if k != "expires")
        self.instance = unquote_param(get("+sip.instance"))
        self.q = _q_value(get("q"))

    @classmethod
    def parse(cls, raw: str) -> _Contact:
        """Any Contact value, by the general header model (SipParseError, _Reject)."""
        c = NameAddr.parse(raw)
        if c.display is not None or not c.bracketed:
            contact = _bound_contact(c)  # rare forms: let the model render them
            out = cls(str(c.uri), c.params)
            out.contact = contact
            return out
        return cls(str(c.uri), c.params)

    @classmethod
    def lean(cls, raw: str) -> _Contact | None:
        """The everyday ``<sip:user@host:port;uri-params>;params`` without the header
        model, or None. Same result as ``parse`` (tests/unit/registrar/test_fastlane_contact.py)."""
        m = _LEAN_CONTACT.fullmatch(raw)
        if m is None or (m.group(2) is not None and int(m.group(2)) > 65535):
            return None
        rest = m.group(3)
        params: tuple[tuple[str, str | None], ...] = ()
        if rest:
            params = tuple((k.lower(), v if eq else None)
                           for k, eq, v in (p.partition("=") for p in rest[1:].split(";")))
        return cls(m.group(1), params)


# A subset of what NameAddr.parse accepts, in the form Uri keeps verbatim: token-ish user,
# host name or IPv4 address (IPv6 goes the general way), port, token URI parameters;
# header parameters with token values or a quoted <urn:...> (+sip.instance).
_LEAN_CONTACT = re.compile(
    r"<(sip:[A-Za-z0-9\-_.!~*'()&=+$,]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*"
    r"(?::([0-9]{1,5}))?(?:;[A-Za-z0-9\-_.]+(?:=[A-Za-z0-9\-_.]+)?)*)>"
    r"((?:;[A-Za-z0-9\-_.+]+(?:=(?:[A-Za-z0-9\-_.!~*%]+|\"<[A-Za-z0-9:\-.]+>\"))?)*)")


class FastLane:
    """Answer everyday UDP REGISTERs without the general SIP path (RFC 3261 §10.3, §17.2.2).

    ``take(data, peer)`` is called for every UDP datagram before the general
    path; it returns True when it has taken the datagram (answered it, or will),
    False to let the general path have it. ``send`` writes a datagram; ``general``
    feeds one to the general path (for requests handed over after waiting).
    """

    def __init__(self, registrar: Registrar, node_id: str,
                 send: Callable[[bytes, Peer], None],
                 general: Callable[[bytes, Peer], None], *, server: str | None = None,
                 registry: CollectorRegistry | None = None,
                 overload: Overload | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registrar = registrar
        self.node_id = node_id
        self._send = send
        self._general = general
        self._server = server
        self._server_line = f"Server: {server}\r\n" if server else ""
        self.clock = clock
        self.replays = ReplayCache()
        self._contacts: dict[str, _Contact | None] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._next_sweep = 0.0
        # plain counts (a Prometheus child's lock per REGISTER is measurable here),
        # exported as sipgw_register_fast_lane_total{outcome}
        self.taken = 0  # REGISTERs answered (or being answered) here
        self.handed_over = 0  # REGISTERs of the plain shape the general path answered
        self.replayed = 0  # retransmissions answered from the replay cache
        self.shed = 0  # new REGISTERs refused with 503 while the node was behind
        # RFC 3261 §21.5.4: while the node is behind, new registrations get 503 and
        # Retry-After (cheap, and phones back off); the ones under way, whose challenge
        # was already paid for, are still served.
        self._overload = overload
        if registry is not None:
            registry.register(_Collector(self))

    # -- the entry point -------------------------------------------------------------
    def take(self, data: bytes, peer: Peer) -> bool:
        req = read_register(data)
        if req is None:
            return False
        key = (req.branch, peer.host, peer.port)
        replays = self.replays
        seen = replays.get(key)
        if seen is not None:
            if seen is Replay.GENERAL:
                return False  # its transaction lives in the general path
            if seen is not Replay.IN_PROGRESS:
                self.replayed += 1
                self._send(seen, peer)  # type: ignore[arg-type]
            return True
        now = self.clock()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
            replays.expire(now)
        try:
            out = self._answer(req, data, peer, key, now)
        except Exception as e:  # noqa: BLE001 - a bug here must not lose the request
            if not isinstance(e, (_Reject, SipParseError, DigestError)):
                log.error("fast lane failed; handing the REGISTER over", exc_info=e)
            out = None
        if out is None:
            replays.put(key, Replay.GENERAL, now)
            self.handed_over += 1
            return False
        self.taken += 1
        return True

    # -- decisions ---------------------------------------------------------------------
    def _answer(self, req: LeanRegister, data: bytes, peer: Peer, key: tuple[str, str, int],
                now: float) -> bool | None:
        """True when answered (or being answered); None: hand over untouched."""
        reg = self.registrar
        if reg.pending >= reg.config.max_pending:
            return None
        if req.authorization is None:
            if self._overload is not None and self._overload.behind():
                self.shed += 1
                reg._count_status(503)
                headers = "".join(f"{n}: {v}\r\n"
                                  for n, v in self._overload.refusal("REGISTER"))
                self._send(render_response(
                    req, stamp_via(req, peer.host, peer.port), 503, "Service Unavailable",
                    new_tag(), headers + self._server_line), peer)
                return True
            reg._admit_locally(peer.host, now)  # _Reject: the general path refuses it
            reg._prefetch(req.to_user, now)
            self._challenge(req, peer, now, stale=False)
            return True
        creds = DigestCredentials.parse(req.authorization)
        auth = reg.auth
        if creds.realm != auth.realm or (creds.qop is None and not auth.allow_no_qop):
            return None
        check = auth.nonces.check(creds.nonce, now)
        if check.status is NonceStatus.INVALID:
            reg._admit_locally(peer.host, now)
            self._challenge(req, peer, now, stale=False)
            return True
        known, record, pending = reg.cached_auth(creds.username[:128], now)
        if not known:
            if pending is None:
                return None
            # The answer to the 401 usually overtakes the prefetch: carry on when it lands.
            self.replays.put(key, Replay.IN_PROGRESS, now)
            reg.pending += 1
            pending.add_done_callback(
                lambda _: self._resume(req, data, peer, key, creds, check, now))
            return True
        return self._authorised(req, data, peer, key, creds, check, record, now)

    def _resume(self, req: LeanRegister, data: bytes, peer: Peer, key: tuple[str, str, int],
                creds: DigestCredentials, check: NonceCheck, now: float) -> None:
        reg = self.registrar
        reg.pending -= 1
        known, record, _ = reg.cached_auth(creds.username[:128], now)
        try:  # without a record the prefetch failed: the general path reads afresh
            done = known and self._authorised(req, data, peer, key, creds, check, record,
                                              now)
        except Exception as e:  # noqa: BLE001 - handed over, never lost
            if not isinstance(e, (_Reject, SipParseError, DigestError)):
                log.error("fast lane failed; handing the REGISTER over", exc_info=e)
            done = False
        if not done:
            self.taken -= 1
            self.handed_over += 1
            self.replays.put(key, Replay.GENERAL, now)
            self._general(data, peer)

    def _authorised(self, req: LeanRegister, data: bytes, peer: Peer,
                    key: tuple[str, str, int], creds: DigestCredentials, check: NonceCheck,
                    auth: AuthRecord | None, now: float) -> bool | None:
        reg = self.registrar
        if auth is None or creds.username != req.to_user:
            return None  # unknown user or a mismatch: counted as a failure there
        status = reg.auth.verify_with(creds, "REGISTER", auth.ha1, check)
        if status is AuthStatus.FAILED:
            return None
        if status is AuthStatus.STALE:
            reg._admit_locally(peer.host, now)
            self._challenge(req, peer, now, stale=True)
            return True
        verdict = reg._evaluate(req.user_agent)
        if not verdict.admitted or req.contact is None:
            return None
        contact = self._contact(req.contact)
        if contact is None or contact.general:
            return None
        requested = contact.expires if contact.expires is not None else \
            req.expires if req.expires is not None else reg.config.default_expires
        if requested < reg.config.min_expires:
            return None  # 0 (removal) or too brief (423): the general path
        base = reg.update_base(creds, auth, req.call_id, req.cseq_number, peer.host,
                               reg._verdict_fields(verdict, req.user_agent, now))
        aor = base["aor"]
        binding = Binding(
            key=contact.key, aor=aor, contact=contact.contact, uri=contact.uri,
            expires=now + reg.grant(requested), q=contact.q, call_id=req.call_id,
            cseq=req.cseq_number, instance=contact.instance, transport=peer.transport,
            host=peer.host, port=peer.port, flow=peer.flow, node_id=self.node_id,
            user_agent=_ascii(req.user_agent, 200), device_id=auth.device_id,
            registered=now)
        ops = (BindingOp(contact.key, binding),)
        update = RegisterUpdate(**base, ops=ops)
        raw = reg.store.apply_now(update, now, reg.config.max_bindings_per_aor,
                                  guard=reg.config.guard)
        if raw is None:
            return None
        ctx = _Ctx(aor, auth.device_id, base["username"], self.node_id, ops, False,
                   False, [], "")
        self.replays.put(key, Replay.IN_PROGRESS, now)
        reg.pending += 1
        raw.add_done_callback(lambda r: self._applied(r, req, data, peer, key, update, ctx,
                                                      now))
        return True

    def _applied(self, raw: asyncio.Future[Any], req: LeanRegister, data: bytes, peer: Peer,
                 key: tuple[str, str, int], update: RegisterUpdate, ctx: _Ctx,
                 now: float) -> None:
        reg = self.registrar
        exc = raw.exception() if not raw.cancelled() else asyncio.CancelledError()
        if isinstance(exc, NoScriptError):
            # a restarted server: the registrar loads the script and answers
            task = asyncio.ensure_future(self._general_answer(data, peer, key, update, ctx,
                                                               now))
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)
            return
        reg.pending -= 1
        try:
            if exc is not None:
                raise exc
            result = reg.store.apply_result(raw.result(), update, now)
            if result.outcome != "ok":
                self._respond_general(data, peer, key, now, lambda request: reg._conclude(
                    request, peer, result, ctx, now))
                return
            reg._registered(ctx, peer, result)
            self._reply(req, peer, key, now, 200, "OK", "".join(
                f"{n}: {v}\r\n" for n, v in reg.ok_headers(result.bindings, now)))
        except Exception as e:  # noqa: BLE001 - mapped to a status by the registrar
            err = e
            self._respond_general(data, peer, key, now,
                                  lambda request: reg._error_response(request, err))

    async def _general_answer(self, data: bytes, peer: Peer, key: tuple[str, str, int],
                              update: RegisterUpdate, ctx: _Ctx, now: float) -> None:
        reg = self.registrar
        request = self._general_request(data, peer)
        if request is None:
            reg.pending -= 1
            return
        resp = await reg._apply_then_conclude(request, peer, update, ctx, now)
        self._send_response(resp, peer, key, now, counted=True)

    # -- responses -----------------------------------------------------------------------
    def _challenge(self, req: LeanRegister, peer: Peer, now: float, *, stale: bool) -> None:
        reg = self.registrar
        lines = "".join(f"WWW-Authenticate: {ch}\r\n"
                        for ch in reg.auth.challenges(now, stale=stale))
        reg._count_status(401)
        self._send(render_response(req, stamp_via(req, peer.host, peer.port), 401,
                                   "Unauthorized", new_tag(), lines + self._server_line), peer)

    def _reply(self, req: LeanRegister, peer: Peer, key: tuple[str, str, int], now: float,
               status: int, reason: str, headers: str) -> None:
        self.registrar._count_status(status)
        data = render_response(req, stamp_via(req, peer.host, peer.port), status, reason,
                               new_tag(), headers + self._server_line)
        self.replays.put(key, data, now)
        self._send(data, peer)

    def _respond_general(self, data: bytes, peer: Peer, key: tuple[str, str, int],
                         now: float, build: Callable[[SipRequest], SipResponse]) -> None:
        """A rare outcome, answered by the registrar's general mapping on a parsed request."""
        request = self._general_request(data, peer)
        if request is None:
            return
        try:
            resp = build(request)
        except Exception as e:  # noqa: BLE001 - _Reject and friends, as the registrar maps them
            resp = self.registrar._error_response(request, e)
        self._send_response(resp, peer, key, now, counted=False)

    def _send_response(self, resp: SipResponse, peer: Peer, key: tuple[str, str, int],
                       now: float, *, counted: bool) -> None:
        if not counted:
            self.registrar._count(resp)
        if self._server and "Server" not in resp.headers:
            resp.headers.add("Server", self._server)
        out = bytes(resp)
        self.replays.put(key, out, now)
        self._send(out, peer)

    @staticmethod
    def _general_request(data: bytes, peer: Peer) -> SipRequest | None:
        """``data`` as the general path would hand it to the registrar (Via stamped)."""
        try:
            msg = parse_message(data)
            if not isinstance(msg, SipRequest):
                return None
            stamp_request(msg, msg.vias[0], peer)
            return msg
        except (ParseFailure, SipParseError, IndexError):
            log.error("fast lane: a lean REGISTER the general parser refuses")
            return None

    def _contact(self, raw: str) -> _Contact | None:
        cache = self._contacts
        if raw in cache:
            return cache[raw]
        try:
            c = _Contact.lean(raw) or _Contact.parse(raw)
        except (SipParseError, _Reject):
            c = None
        if len(cache) >= _CONTACT_CACHE_MAX:
            cache.clear()
        cache[raw] = c
        return c


class _Collector:
    """``sipgw_register_fast_lane_total{outcome}`` read off the lane's counts at scrape."""

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane

    def collect(self) -> Any:
        c = CounterMetricFamily("sipgw_register_fast_lane",
                                "UDP REGISTERs of the plain shape, by who answered them",
                                labels=["outcome"])
        c.add_metric(["answered"], self._lane.taken)
        c.add_metric(["handed_over"], self._lane.handed_over)
        c.add_metric(["retransmission"], self._lane.replayed)
        c.add_metric(["shed"], self._lane.shed)
        yield c


__all__ = ["FastLane"]
