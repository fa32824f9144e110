"""The B2BUA between phones' SIP dialogs and the call-control backend's calls.

RFC 3261 §13 (INVITE sessions, UAS and UAC cores), §15 (BYE), §9 (CANCEL),
RFC 3262 (reliable provisionals, PRACK), RFC 3311 (UPDATE), RFC 4028 (session
timers), RFC 3326 (Reason), RFC 6442 (Geolocation for emergency calls).

The controller sees only call events, in the sippy/livekit shape: from the
phone side try (INVITE), cancel (CANCEL), disconnect (BYE); from the backend
side ring, connect, fail, disconnect (``call.*`` events). Pending transactions
are process state (they die with their transactions); established legs are in
Redis (``gateway.b2bua.legs``) so any node, or this node after a restart, can
still end the call on both sides.

``attach_b2bua(gateway)`` registers the handlers on a started ``Gateway`` and
returns the ``B2BUA`` (``stop()`` to detach).
"""

from __future__ import annotations

import asyncio
import email.message
import email.parser
import email.policy
import logging
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from gateway.b2bua.dialplan import DialPlan, DialTarget, Feature, TargetKind
from gateway.b2bua.legs import Leg, LegStore
from gateway.b2bua.mapping import (
    COMPLETED_ELSEWHERE,
    backend_error_to_sip,
    from_sip,
    reason_header,
    to_sip,
)
from gateway.backend.client import BackendError, BackendUnavailable
from gateway.backend.schema import CallCreate, EndpointCreate, Event, Target
from gateway.registrar.auth import AuthStatus
from gateway.registrar.registrar import Registration
from gateway.sip.dialog import Dialog, DialogError, build_ack_for_2xx
from gateway.sip.digest import DigestCredentials, DigestError
from gateway.sip.errors import SipParseError
from gateway.sip.events import RequestReceived, StrayResponse, TransactionKey
from gateway.sip.headers import Headers, NameAddr
from gateway.sip.message import SipRequest, SipResponse, build_response
from gateway.sip.peer import Peer
from gateway.sip.sdp import SdpError, SessionDescription, mirror_answer, simple_answer
from gateway.sip.stack import new_tag
from gateway.sip.transaction import build_cancel
from gateway.sip.uri import Uri
from gateway.state.pipe import RespPipe
from gateway.tasks import TaskSet

log = logging.getLogger("sipgw.b2bua")

ENDPOINT_PREFIX = "sipdev-"
MIN_SE = 90  # RFC 4028 §4: the smallest Session-Expires we accept
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, PRACK, INFO"
SUPPORTED = "100rel, timer, replaces"
CAPABILITIES = ("audio", "dtmf-rfc4733", "dtmf-info", "hold")
FEATURE_BYE_DELAY = 1.0  # seconds a feature-code call stays up (confirmation prompt later)
_SIGNAL_RE = re.compile(r"(?im)^\s*signal\s*=\s*([0-9*#A-Da-d])\s*$")

FeatureHandler = Callable[[RequestReceived, Any, DialTarget], Awaitable[SipResponse | None]]


def endpoint_id_for(device_id: str) -> str:
    """The backend endpoint id of a SIP device."""
    return f"{ENDPOINT_PREFIX}{device_id}"


def device_id_for(endpoint_id: str) -> str | None:
    if endpoint_id.startswith(ENDPOINT_PREFIX):
        return endpoint_id[len(ENDPOINT_PREFIX):] or None
    return None


@dataclass(frozen=True)
class B2buaConfig:
    """Tunables of the B2BUA."""

    t1: float = 0.5
    t2: float = 4.0
    min_se: int = MIN_SE
    sweep_interval: float = 1.0  # seconds between session-timer checks
    feature_bye_delay: float = FEATURE_BYE_DELAY
    event_user: str = ""  # empty: every event (a gateway serves many users)


class B2buaMetrics:
    """Calls through the B2BUA (backend API latency/errors are the client's)."""

    def __init__(self, registry: Any) -> None:
        self.active = Gauge("b2bua_calls_active", "Established calls bridged by this node",
                            registry=registry)
        self.calls = Counter("b2bua_calls_total", "Call attempts by direction and final status",
                             ("direction", "status"), registry=registry)
        self.setup = Histogram(
            "b2bua_call_setup_seconds", "INVITE (or backend offer) to answer",
            ("direction",), buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry)

        # labels() costs a lock and a tuple per call: each child is looked up once
        self._finals: dict[tuple[str, int], Any] = {}
        self._setups: dict[str, Any] = {}

    def final(self, direction: str, status: int) -> None:
        child = self._finals.get((direction, status))
        if child is None:
            child = self._finals[(direction, status)] = self.calls.labels(direction, str(status))
        child.inc()

    def setup_time(self, direction: str, seconds: float) -> None:
        child = self._setups.get(direction)
        if child is None:
            child = self._setups[direction] = self.setup.labels(direction)
        child.observe(seconds)


# -- bodies ------------------------------------------------------------------------------

def split_body(request: SipRequest | SipResponse) -> tuple[str, str]:
    """The SDP and the PIDF-LO (RFC 4119) in a message body (single part or
    multipart/mixed, RFC 6442 §4.1). Returns (sdp, pidf), empty strings when absent."""
    ctype = (request.headers.get("Content-Type") or "").strip()
    main = ctype.split(";")[0].strip().lower()
    body = request.body
    if not body:
        return "", ""
    if main == "application/sdp":
        return body.decode("utf-8", "replace"), ""
    if main == "application/pidf+xml":
        return "", body.decode("utf-8", "replace")
    if main != "multipart/mixed":
        return "", ""
    raw = b"Content-Type: " + ctype.encode("utf-8", "replace") + b"\r\n\r\n" + body
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    sdp = pidf = ""
    if not msg.is_multipart():
        return "", ""
    for part in msg.get_payload():
        if not isinstance(part, email.message.Message):
            continue
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        ptype = part.get_content_type()
        if ptype == "application/sdp" and not sdp:
            sdp = text
        elif ptype == "application/pidf+xml" and not pidf:
            pidf = text
    return sdp, pidf


def _parse_sdp(text: str) -> SessionDescription | None:
    try:
        return SessionDescription.parse(text)
    except SdpError:
        return None


# -- in-memory state of pending transactions -------------------------------------------

@dataclass
class _Outbound:
    """A phone's INVITE waiting for the backend (UAS side, RFC 3261 §13.3)."""

    event: RequestReceived
    device: Any
    endpoint_id: str
    tag: str
    contact: str
    started: float
    reliable_1xx: bool = False
    rseq: int = 0
    pracked: asyncio.Event = field(default_factory=asyncio.Event)
    backend_call_id: str = ""
    finished: bool = False
    rang: bool = False
    session_expires: int = 0
    refresher: str = ""
    stash: list[Event] = field(default_factory=list)
    sdp_offer: str = ""  # the INVITE's offer, split out of its body once


@dataclass
class _Branch:
    request: SipRequest
    peer: Peer
    provisional: asyncio.Event = field(default_factory=asyncio.Event)
    final: int = 0
    cancelled: bool = False


@dataclass(frozen=True)
class _KnownDevice:
    """What an offered call needs of a device this node registered (from its Registration
    event): its AOR never changes, and the callee user comes with the offer."""

    device_id: str
    aor: str
    user: str


@dataclass
class _Inbound:
    """A backend offer forked to one device's registered contacts (UAC side, §13.2)."""

    call_id: str
    endpoint_id: str
    device: Any
    started: float
    branches: list[_Branch] = field(default_factory=list)
    answered: bool = False
    rang: bool = False
    cancel_reason: str | None = None


class B2BUA:
    """Bridges phone dialogs and backend calls (see the module docstring)."""

    def __init__(self, gateway: Any, config: B2buaConfig | None = None,
                 dialplan: DialPlan | None = None, catalog: Any = None) -> None:
        self.gw = gateway
        cfg = gateway.config
        self.config = config or B2buaConfig(t1=cfg.sip.t1, t2=cfg.sip.t2)
        self.dialplan = dialplan or DialPlan()
        self.domain = cfg.sip.domain
        store = getattr(getattr(gateway, "registrar", None), "store", None)
        shared = getattr(store, "pipe", None) if getattr(store, "redis", None) is \
            gateway.redis else None
        self.legs = LegStore(gateway.redis, pipe=shared if isinstance(shared, RespPipe) else None)
        self.metrics = B2buaMetrics(gateway.registry)
        self.feature_handlers: dict[Feature, FeatureHandler] = {}
        self._catalog = catalog
        self._outbound: dict[TransactionKey, _Outbound] = {}
        self._out_by_call: dict[str, _Outbound] = {}
        self._out_by_tag: dict[tuple[str, str], _Outbound] = {}
        self._creating = 0
        self._early_events: dict[str, list[Event]] = {}
        self._inbound: dict[tuple[str, str], _Inbound] = {}
        # 2xx awaiting their ACK: the future is set True by the ACK, False on giving up
        self._acks: dict[tuple[str, str, int], asyncio.Future[bool]] = {}
        self._local: dict[tuple[str, str, str], Dialog] = {}
        # call (or endpoint) -> its events waiting for the one task handling that key
        self._serial: dict[str, list[Event]] = {}
        # legs with a re-INVITE to their phone under way -> the newest offer still to send
        self._reoffers: dict[str, str | None] = {}
        # endpoint id -> (user, monotonic time its backend lifetime ends, lifetime granted)
        self._endpoints: dict[str, tuple[str, float, int]] = {}
        self._aors: dict[str, str] = {}  # device id -> AOR, from Registration events
        self._tasks = TaskSet(log, "b2bua")
        self._stream: Any = None
        self._stopped = False
        self._prev_stray: Callable[[StrayResponse], None] | None = None
        self.event_node = cfg.server.node_id or "local"
        self.ready = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        gw = self.gw
        gw.registrar.listeners.append(self._on_registration)
        gw.on_request("INVITE", self._handle_invite_request)
        gw.on_request_now("ACK", self._on_ack)
        gw.on_request("BYE", self._handle_bye_request)
        gw.on_request("CANCEL", self._handle_cancel_request)
        gw.on_request("UPDATE", self._handle_update_request)
        gw.on_request("PRACK", self._handle_prack_request)
        gw.on_request("INFO", self._handle_info_request)
        self._prev_stray = gw.on_stray
        gw.on_stray = self._on_stray
        self.metrics.active.set(await self.legs.count())
        since = await self.legs.last_event(self.event_node)
        users = (self.config.event_user,) if self.config.event_user else ()
        self._stream = gw.backend.events(users, since)
        self._stream.deliver_to(self._on_backend_event)
        self._spawn(self._session_timer_loop())
        try:
            await self._stream.ready(10.0)
            self.ready.set()
        except TimeoutError:
            log.warning("backend event stream not ready yet; calls from the backend may wait")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._stream is not None:
            await self._stream.close()
        for fut in list(self._acks.values()):
            fut.cancel()  # their retransmission timers with them
        await self._tasks.cancel()
        await self.legs.flush_last_event()
        await self.legs.close()
        if self.gw.on_stray == self._on_stray:
            self.gw.on_stray = self._prev_stray

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    # -- helpers ----------------------------------------------------------------------
    def _now(self) -> float:
        return time.monotonic()

    def our_contact(self, transport: str) -> str:
        host, port = self.gw.stack.config.via_hosts.get(
            transport, next(iter(self.gw.stack.config.via_hosts.values())))
        h = f"[{host}]" if ":" in host and not host.startswith("[") else host
        tp = "" if transport == "UDP" else f";transport={transport.lower()}"
        return f"<sip:sipgw@{h}:{port}{tp}>"

    def _respond(self, key: TransactionKey | None, response: SipResponse) -> None:
        if key is not None:
            self.gw.driver.respond(key, response)

    def _fail(self, request: SipRequest, status: int, warning: str = "", *,
              tag: str | None = None, reason: str | None = None,
              headers: list[tuple[str, str]] | None = None) -> SipResponse:
        hdrs = list(headers or [])
        if warning:
            hdrs.append(("Warning", f'399 sipgw "{warning.replace(chr(34), chr(39))}"'))
        if reason:
            hdrs.append(("Reason", reason))
        return build_response(request, status, to_tag=tag or new_tag(), headers=hdrs)

    def _e911_capable(self, device: Any) -> bool:
        try:
            if self._catalog is None:
                from firmware_catalog import load_catalog
                self._catalog = load_catalog()
            entry = self._catalog.lookup(device.vendor, device.model)
        except Exception:  # noqa: BLE001 - an unreadable catalog must not block 911
            log.exception("firmware catalog lookup failed")
            return False
        return bool(entry is not None and entry.e911)

    # -- REGISTER: backend endpoints follow registrations -----------------------------
    def _on_registration(self, reg: Registration) -> None:
        """A paired device's endpoint is online while it has bindings (registrar event).

        Refreshes do not each cost a backend call: the endpoint is (re)announced when it
        appears, when its remaining backend lifetime falls under half, or when the user it
        belongs to changes; it is withdrawn when the last binding goes.
        """
        eid = endpoint_id_for(reg.device_id)
        if reg.bindings:
            self._aors[reg.device_id] = reg.aor
        else:
            self._aors.pop(reg.device_id, None)
        if not reg.paired_user:
            self._endpoints.pop(eid, None)  # signed out: the binder withdrew it
            return
        now = self._now()
        if reg.bindings:
            remaining = max(b.expires for b in reg.bindings) - time.time()
            ttl = int(min(86400, max(30, remaining + 30)))
            known = self._endpoints.get(eid)
            if known is not None and known[0] == reg.paired_user and \
                    known[1] - now > min(ttl, known[2]) / 2:
                return
            self._endpoints[eid] = (reg.paired_user, now + ttl, ttl)
            self._spawn(self._announce_endpoint(reg.paired_user, reg.device_id, eid, ttl))
        else:
            self._endpoints.pop(eid, None)
            self._spawn(self._withdraw_endpoint(reg.paired_user, eid))

    async def _announce_endpoint(self, user: str, device_id: str, eid: str, ttl: int) -> None:
        try:
            await self.gw.backend.add_endpoint(user, EndpointCreate(
                endpoint_id=eid, device_id=device_id, capabilities=CAPABILITIES, expires=ttl))
        except (BackendError, BackendUnavailable) as e:
            self._endpoints.pop(eid, None)  # try again on the next refresh
            log.warning("backend endpoint %s for %s: %s", eid, device_id, e)

    async def _withdraw_endpoint(self, user: str, eid: str) -> None:
        try:
            await self.gw.backend.remove_endpoint(user, eid)
        except BackendError as e:
            if e.status != 404:
                log.warning("backend endpoint %s removal: %s", eid, e)
        except BackendUnavailable as e:
            log.warning("backend unavailable for endpoint %s removal: %s", eid, e)

    # -- trust: is the INVITE from the device it claims? -------------------------------
    async def _authenticate(self, event: RequestReceived) -> tuple[Any, SipResponse | None]:
        """The calling device, or the response to send (407 challenge, 403)."""
        request, peer = event.request, event.peer
        registrar = self.gw.registrar
        auth = registrar.auth
        try:
            username = request.from_.uri.user_unescaped or ""
        except SipParseError:
            username = ""
        device = None
        if username:
            # The AOR is almost always the username at our realm: its bindings are read
            # alongside the device, one round trip instead of two (the task is queued
            # before the device read, so both go out in the same loop turn).
            guess = f"sip:{username}@{self.gw.devices.realm}"
            early = asyncio.ensure_future(registrar.lookup(guess))
            try:
                device = await self.gw.devices.get_by_username(username)
            finally:
                if device is None or device.aor != guess:
                    early.cancel()
                    await asyncio.gather(early, return_exceptions=True)
        if device is not None:
            bindings = await early if device.aor == guess else \
                await registrar.lookup(device.aor)
            for b in bindings:
                src = b.source
                if (src.flow is not None and src.flow == peer.flow) or (
                        src.transport == peer.transport and src.host == peer.host
                        and src.port == peer.port):
                    return device, None
        # Not from its registration path: RFC 3261 §22.3 proxy-style digest challenge.
        creds: DigestCredentials | None = None
        try:
            for value in request.headers.get_raw("Proxy-Authorization"):
                c = DigestCredentials.parse(value)
                if c.realm == auth.realm:
                    creds = c
        except DigestError as e:
            return None, self._fail(request, 400, f"bad Proxy-Authorization: {e}")
        now = time.time()
        if creds is None:
            return None, self._challenge(request, now)
        record = await self.gw.devices.get_auth(creds.username)
        status = auth.verify(creds, request.method, record.ha1 if record else None, now)
        if status in (AuthStatus.BAD_NONCE, AuthStatus.NONE):
            return None, self._challenge(request, now)
        if status is AuthStatus.STALE:
            return None, self._challenge(request, now, stale=True)
        if status is not AuthStatus.OK or record is None or creds.username != username:
            return None, self._fail(request, 403, "authentication failed")
        device = await self.gw.devices.get(record.device_id)
        if device is None:
            return None, self._fail(request, 403, "authentication failed")
        return device, None

    def _challenge(self, request: SipRequest, now: float, *, stale: bool = False
                   ) -> SipResponse:
        hdrs = [("Proxy-Authenticate", c)
                for c in self.gw.registrar.auth.challenges(now, stale=stale)]
        return build_response(request, 407, to_tag=new_tag(), headers=hdrs)

    # -- INVITE -----------------------------------------------------------------------
    async def _handle_invite_request(self, event: RequestReceived) -> SipResponse | None:
        request = event.request
        try:
            to_tag = request.to.tag
        except SipParseError as e:
            return self._fail(request, 400, e.reason)
        if to_tag:
            return await self._reinvite(event)
        device, refusal = await self._authenticate(event)
        if refusal is not None:
            return refusal
        # RFC 4028 §8.1: too small a session interval gets 422 with our Min-SE
        se, refresher, error = self._session_timer(request)
        if error is not None:
            return error
        sdp_text, pidf = split_body(request)
        if request.body and not sdp_text:
            return self._fail(request, 488, "no SDP offer in the INVITE")
        if sdp_text and _parse_sdp(sdp_text) is None:
            return self._fail(request, 488, "malformed SDP offer")
        target = self.dialplan.classify(request.uri.user_unescaped)
        if target.kind is TargetKind.INVALID:
            self.metrics.final("out", 484)
            return self._fail(request, 484, "number not recognised")
        if target.kind is TargetKind.FEATURE:
            return await self._feature(event, device, target, sdp_text)
        if target.kind is not TargetKind.EMERGENCY and not device.paired:
            self.metrics.final("out", 403)
            return self._fail(request, 403, "sign in to make calls")
        if not sdp_text:
            # offerless INVITE: the backend API needs an offer (RFC 3264 §4 late offer)
            return self._fail(request, 488, "an SDP offer is required")
        location = ""
        if target.kind is TargetKind.EMERGENCY and self._e911_capable(device):
            location = pidf
            if not location:
                geo = request.headers.get("Geolocation")
                if geo:
                    location = geo
        requires = {t.lower() for t in request.require}
        supported = {t.lower() for t in request.supported}
        out = _Outbound(event=event, device=device,
                        endpoint_id=endpoint_id_for(device.device_id),
                        tag=new_tag(), contact=self.our_contact(event.peer.transport),
                        started=self._now(), reliable_1xx="100rel" in requires,
                        session_expires=se, refresher=refresher, sdp_offer=sdp_text)
        if se and "timer" not in supported and refresher == "uac":
            out.refresher = "uas"
        self._outbound[event.key] = out
        self._out_by_tag[(request.call_id, out.tag)] = out
        if target.kind is TargetKind.EMERGENCY:
            tgt = Target(kind="emergency", value=target.value)
        else:
            tgt = await self._target_for(target.value)
        body = CallCreate(from_user=device.user if device.paired else "",
                          from_endpoint=out.endpoint_id, target=tgt, sdp_offer=sdp_text,
                          location=location)
        self._creating += 1
        try:
            call = await self.gw.backend.create_call(body)
        except BackendError as e:
            self._forget_outbound(out)
            st, phrase, warning = backend_error_to_sip(e.status, e.code, e.message)
            self.metrics.final("out", st)
            return self._fail(request, st, warning, tag=out.tag,
                              reason=reason_header(st, phrase))
        except BackendUnavailable as e:
            self._forget_outbound(out)
            self.metrics.final("out", 503)
            return self._fail(request, 503, f"calling service unavailable: {e}",
                              tag=out.tag, headers=[("Retry-After", "5")])
        finally:
            self._creating -= 1
        out.backend_call_id = call.call_id
        self._out_by_call[call.call_id] = out
        stashed = self._early_events.pop(call.call_id, [])
        if out.finished:  # CANCEL arrived while the call was being created
            await self._backend_cancel(out)
            return None
        for ev in stashed:
            await self._outbound_event(out, ev)
        if call.state == "ended" and not out.finished:
            await self._finish_outbound(out, call.end_reason or "unavailable")
        return None

    async def _target_for(self, number: str) -> Target:
        if number.startswith("+"):
            try:
                user = await self.gw.backend.user_by_number(number)
            except (BackendError, BackendUnavailable):
                user = None
            if user is not None:
                return Target(kind="user", value=user.oid)
            return Target(kind="pstn", value=number)
        return Target(kind="user", value=number)  # extensions: the backend resolves them

    def _session_timer(self, request: SipRequest
                       ) -> tuple[int, str, SipResponse | None]:
        raw = request.headers.get("Session-Expires")
        if not raw:
            return 0, "", None
        value, _, params = raw.partition(";")
        try:
            se = int(value.strip())
        except ValueError:
            return 0, "", self._fail(request, 400, "malformed Session-Expires")
        min_se = self.config.min_se
        mse = request.header_int("Min-SE") if "Min-SE" in request.headers else None
        if se < min_se:
            return 0, "", build_response(request, 422, to_tag=new_tag(),
                                         headers=[("Min-SE", str(min_se))])
        if mse is not None and mse > se:
            return 0, "", self._fail(request, 400, "Min-SE larger than Session-Expires")
        m = re.search(r"refresher\s*=\s*(uac|uas)", params, re.I)
        return se, (m.group(1).lower() if m else "uac"), None

    def _forget_outbound(self, out: _Outbound) -> None:
        out.finished = True
        self._outbound.pop(out.event.key, None)
        self._out_by_tag.pop((out.event.request.call_id, out.tag), None)
        if out.backend_call_id:
            self._out_by_call.pop(out.backend_call_id, None)

    def _provisional(self, out: _Outbound, status: int,
                     extra: list[tuple[str, str]] | None = None) -> SipResponse:
        """A provisional response to the phone's INVITE (``extra``: 100rel's headers)."""
        return build_response(out.event.request, status, to_tag=out.tag,
                              headers=[("Contact", out.contact), ("Allow", ALLOW),
                                       *(extra or ())])

    def _ring(self, out: _Outbound) -> None:
        """The phone's 180, once, when the backend says the callee rings. Nothing to await,
        so an event stream reader can send it at once."""
        if out.finished or out.rang:
            return
        out.rang = True
        if not out.reliable_1xx:
            self._respond(out.event.key, self._provisional(out, 180))
            return
        # RFC 3262 §3: reliable provisional, retransmitted until PRACK (T1 doubling)
        out.rseq += 1
        out.pracked.clear()
        response = self._provisional(out, 180,
                                     [("Require", "100rel"), ("RSeq", str(out.rseq))])
        self._respond(out.event.key, response)
        self._spawn(self._retransmit_1xx(out, response))

    async def _retransmit_1xx(self, out: _Outbound, response: SipResponse) -> None:
        interval, waited = self.config.t1, 0.0
        limit = 64 * self.config.t1
        while not out.finished and waited < limit:
            try:
                await asyncio.wait_for(out.pracked.wait(), interval)
                return
            except TimeoutError:
                waited += interval
                if out.finished:
                    return
                if not out.event.peer.reliable:
                    self._respond(out.event.key, response)
                interval = min(interval * 2, self.config.t2)
        if not out.finished and not out.pracked.is_set():
            # §3: no PRACK within 64*T1: reject the INVITE with a 5xx and give up the call
            log.info("no PRACK for call %s; giving up", out.event.request.call_id)
            await self._backend_cancel(out)
            self._respond(out.event.key, self._fail(out.event.request, 504,
                                                    "no PRACK", tag=out.tag))
            self.metrics.final("out", 504)

    async def _outbound_event(self, out: _Outbound, ev: Event) -> None:
        if out.finished:
            return
        if ev.type == "call.ringing":
            self._ring(out)
        elif ev.type == "call.answered":
            await self._answer_outbound(out, ev.sdp)
        elif ev.type in ("call.rejected", "call.ended", "call.cancelled"):
            await self._finish_outbound(out, ev.reason)

    async def _finish_outbound(self, out: _Outbound, reason: str) -> None:
        outcome = to_sip(reason)
        self._forget_outbound(out)
        self.metrics.final("out", outcome.status)
        self._respond(out.event.key, self._fail(
            out.event.request, outcome.status, tag=out.tag,
            reason=reason_header(outcome.status, outcome.cause_text)))

    async def _answer_outbound(self, out: _Outbound, sdp: str) -> None:
        request = out.event.request
        if out.reliable_1xx and out.rseq and not out.pracked.is_set():
            try:  # §3: the 2xx waits for the PRACK of the outstanding reliable 1xx
                await asyncio.wait_for(out.pracked.wait(), 64 * self.config.t1)
            except TimeoutError:
                return
        if out.finished:
            return
        headers = [("Contact", out.contact), ("Allow", ALLOW), ("Supported", SUPPORTED)]
        if out.session_expires:
            headers += [("Session-Expires", f"{out.session_expires};refresher={out.refresher}"),
                        ("Require", "timer")]
        response = build_response(request, 200, to_tag=out.tag, headers=headers,
                                  body=sdp.encode("utf-8"), content_type="application/sdp")
        try:
            dialog = Dialog.from_uas(request, response, out.tag, out.contact)
        except DialogError as e:
            await self._backend_hangup(out.backend_call_id, out.endpoint_id)
            self._forget_outbound(out)
            self._respond(out.event.key, self._fail(request, 400, str(e), tag=out.tag))
            return
        sdp_offer = out.sdp_offer
        leg = Leg(leg_id=secrets.token_hex(10), direction="out",
                  backend_call_id=out.backend_call_id, endpoint_id=out.endpoint_id,
                  device_id=out.device.device_id, user=out.device.user or "",
                  dialog=dialog.to_dict(), peer=Leg.peer_dict(out.event.peer),
                  local_sdp=sdp, remote_sdp=sdp_offer, session_expires=out.session_expires,
                  refresher=out.refresher, created=time.time(), answered=time.time())
        await self.legs.save(leg, se_deadline=self._se_deadline(leg))
        self._forget_outbound(out)
        self.metrics.final("out", 200)
        self.metrics.setup_time("out", self._now() - out.started)
        self.metrics.active.inc()
        ack_key = (request.call_id, out.tag, request.cseq.number)  # the 2xx's, unparsed
        self._watch_ack(out.event.key, response, leg, ack_key=ack_key)
        self._respond(out.event.key, response)

    def _se_deadline(self, leg: Leg) -> float | None:
        if not leg.session_expires:
            return None
        if self._we_refresh(leg):
            return time.time() + leg.session_expires / 2
        return time.time() + leg.session_expires

    @staticmethod
    def _we_refresh(leg: Leg) -> bool:
        # uac/uas refer to the roles on the dialog-creating INVITE
        return (leg.refresher == "uas") == (leg.direction == "out")

    def _watch_ack(self, key: TransactionKey, response: SipResponse, leg: Leg | None, *,
                   peer_reliable: bool | None = None,
                   ack_key: tuple[str, str, int] | None = None) -> asyncio.Future[bool]:
        """RFC 3261 §13.3.1.4: retransmit the 2xx (T1 doubling to T2) until the ACK; no
        ACK within 64*T1 ends the dialog with a BYE. Timer callbacks, not a task per
        answered call; the future says whether the ACK came. ACKs are handled at once (no
        task), so call this before the 2xx goes out."""
        if ack_key is None:
            ack_key = (response.call_id, response.to.tag or "", response.cseq.number)
        fut = self._acks.get(ack_key)
        if fut is None:
            fut = self._acks[ack_key] = asyncio.get_running_loop().create_future()
        reliable = peer_reliable if peer_reliable is not None else (
            leg is not None and leg.get_peer().reliable)
        loop = asyncio.get_running_loop()
        t2, limit = self.config.t2, 64 * self.config.t1
        interval, waited = self.config.t1, 0.0
        handle: asyncio.TimerHandle | None = None

        def arm() -> None:
            nonlocal handle
            wait = interval if not reliable else limit - waited
            handle = loop.call_later(wait, expired, wait)

        def expired(wait: float) -> None:
            nonlocal interval, waited
            if fut.done():
                return
            waited += wait
            if waited < limit:
                if not reliable:
                    self._respond(key, response)
                interval = min(interval * 2, t2)
                arm()
                return
            fut.set_result(False)
            if leg is not None:
                log.info("no ACK for call %s: ending it", response.call_id)
                self._spawn(self._end_leg(leg, bye_phone=True, hangup_backend=True))

        def finished(_: asyncio.Future[bool]) -> None:
            if handle is not None:
                handle.cancel()
            if self._acks.get(ack_key) is fut:
                del self._acks[ack_key]

        if not fut.done():
            arm()
        fut.add_done_callback(finished)
        return fut

    @staticmethod
    async def _acked(fut: asyncio.Future[bool]) -> bool:
        """A ``_watch_ack`` future, awaited: True when the ACK came."""
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not fut.done():
                fut.cancel()  # the waiter went away: stop retransmitting
            raise

    # -- feature codes ------------------------------------------------------------------
    async def _feature(self, event: RequestReceived, device: Any, target: DialTarget,
                       sdp: str) -> SipResponse | None:
        request = event.request
        feature = target.feature
        assert feature is not None
        handler = self.feature_handlers.get(feature)
        if handler is not None:
            return await handler(event, device, target)
        if feature in (Feature.DND_ON, Feature.DND_OFF):
            if not device.paired or not device.user:
                return self._fail(request, 403, "sign in to make calls")
            try:
                await self.gw.backend.set_dnd(device.user, endpoint_id_for(device.device_id),
                                              feature is Feature.DND_ON)
            except BackendError as e:
                st, _, warning = backend_error_to_sip(e.status, e.code, e.message)
                return self._fail(request, st, warning)
            except BackendUnavailable as e:
                return self._fail(request, 503, f"calling service unavailable: {e}",
                                  headers=[("Retry-After", "5")])
            self.metrics.final("feature", 200)
            self.answer_locally(event, sdp)
            return None
        if feature in (Feature.SIGN_IN, Feature.ENROLL, Feature.SIGN_OUT):
            return self._fail(request, 480, "sign-in not available")
        return self._fail(request, 480, "feature not available")

    def answer_locally(self, event: RequestReceived, sdp: str | None = None, *,
                       display: str = "", asserted: str = "",
                       bye_delay: float | None = None) -> None:
        """Answer a call the gateway terminates itself (feature codes: sign-in, sign-out,
        enrollment, DND), then hang up after ``bye_delay`` (the configured feature delay).

        ``display`` and ``asserted`` show the caller a text: the To display name and an
        RFC 3325 §9.1 P-Asserted-Identity are where Cisco, Poly and Yealink phones show
        the connected party. ``sdp``: the request's offer, when already split out.
        """
        request = event.request
        if sdp is None:
            sdp, _ = split_body(request)
        tag = new_tag()
        contact = self.our_contact(event.peer.transport)
        offer = _parse_sdp(sdp) if sdp else None
        host, _ = self.gw.stack.config.via_hosts.get(event.peer.transport, ("127.0.0.1", 0))
        body = b""
        if offer is not None:
            answer = simple_answer(offer, host, 0 if not offer.media else 40000,
                                   secrets.randbelow(2**31))
            body = bytes(answer)
        headers = [("Contact", contact), ("Allow", ALLOW)]
        if asserted:
            headers.append(("P-Asserted-Identity", asserted))
        response = build_response(request, 200, to_tag=tag, headers=headers,
                                  body=body, content_type="application/sdp")
        if display:
            try:
                to = request.to
                response.headers.set("To", str(NameAddr(to.uri, display=display,
                                                        params=to.params).with_tag(tag)))
            except SipParseError:
                pass
        dialog = Dialog.from_uas(request, response, tag, contact)
        self._local[dialog.key] = dialog  # the phone's ACK and an early BYE find it
        watch = self._watch_ack(event.key, response, None, peer_reliable=event.peer.reliable)
        self._respond(event.key, response)
        delay = self.config.feature_bye_delay if bye_delay is None else bye_delay

        async def run() -> None:
            try:
                acked = await self._acked(watch)
                if not acked or dialog.key not in self._local:
                    return
                await asyncio.sleep(delay)
                if self._local.pop(dialog.key, None) is None:
                    return  # the phone hung up first
                resp = await self.gw.request(dialog.create_request("BYE"), event.peer)
                if resp.status >= 300:
                    log.info("BYE of feature call %s answered %s", dialog.call_id,
                             resp.status)
            finally:
                self._local.pop(dialog.key, None)
        self._spawn(run())

    # -- ACK ------------------------------------------------------------------------------
    def _on_ack(self, event: RequestReceived) -> None:
        request = event.request
        try:
            key = (request.call_id, request.to.tag or "", request.cseq.number)
        except SipParseError:
            return None
        fut = self._acks.get(key)
        if fut is not None and not fut.done():
            fut.set_result(True)
        return None

    async def _handle_ack_request(self, event: RequestReceived) -> None:
        self._on_ack(event)

    def _on_stray(self, event: StrayResponse) -> None:
        """A 2xx retransmission after our INVITE transaction ended: ACK it again (§13.2.2.4)."""
        self._spawn(self._reack(event.response, event.peer))
        if self._prev_stray is not None:
            self._prev_stray(event)

    async def _reack(self, response: SipResponse, peer: Peer) -> None:
        try:
            if response.status < 200 or response.status >= 300 or \
                    response.cseq.method != "INVITE":
                return
            leg = await self.legs.by_dialog(response.call_id, response.from_.tag or "",
                                            response.to.tag or "")
        except SipParseError:
            return
        if leg is None:
            return
        dialog = leg.get_dialog()
        ack = dialog.create_request("ACK", cseq=response.cseq.number)
        self.gw.driver.send_ack_2xx(ack, leg.get_peer())

    # -- CANCEL ---------------------------------------------------------------------------
    async def _handle_cancel_request(self, event: RequestReceived) -> None:
        request = event.request
        out = self._outbound.get(event.cancels) if event.cancels else None
        # RFC 3261 §9.2: the CANCEL's 200 first, then the INVITE's 487 (phones and SIPp
        # scenarios expect that order)
        self._respond(event.key, build_response(request, 200))
        if out is not None and not out.finished:
            out.finished = True
            self._forget_outbound(out)
            self.metrics.final("out", 487)
            self._respond(out.event.key, self._fail(
                out.event.request, 487, tag=out.tag,
                reason=reason_header(487, "Caller cancelled")))
            if out.backend_call_id:
                self._spawn(self._backend_cancel(out))
        elif event.cancels is not None:
            self._respond(event.cancels, self._fail(request, 487))
        return None

    async def _backend_cancel(self, out: _Outbound) -> None:
        if not out.backend_call_id:
            return
        try:
            await self.gw.backend.cancel(out.backend_call_id, out.endpoint_id)
        except (BackendError, BackendUnavailable) as e:
            log.info("backend cancel of %s: %s", out.backend_call_id, e)

    async def _backend_hangup(self, call_id: str, endpoint_id: str) -> None:
        try:
            await self.gw.backend.hangup(call_id, endpoint_id)
        except (BackendError, BackendUnavailable) as e:
            log.info("backend hangup of %s: %s", call_id, e)

    # -- in-dialog requests ----------------------------------------------------------------
    async def _dialog_leg(self, request: SipRequest) -> Leg | None:
        return await self.legs.by_dialog(request.call_id, request.to.tag or "",
                                         request.from_.tag or "")

    async def _handle_bye_request(self, event: RequestReceived) -> SipResponse:
        request = event.request
        try:
            dkey = (request.call_id, request.to.tag or "", request.from_.tag or "")
        except SipParseError as e:
            return self._fail(request, 400, e.reason)
        if self._local.pop(dkey, None) is not None:
            return build_response(request, 200)
        leg = await self._dialog_leg(request)
        if leg is None:
            return build_response(request, 481)
        await self._end_leg(leg, bye_phone=False, hangup_backend=True)
        return build_response(request, 200)

    async def _end_leg(self, leg: Leg, *, bye_phone: bool, hangup_backend: bool,
                       reason: str | None = None) -> None:
        """Every way an established call ends goes through here (STYLE §15)."""
        if not await self.legs.delete(leg):
            return  # someone else ended it already
        self.metrics.active.dec()
        if hangup_backend:
            self._spawn(self._backend_hangup(leg.backend_call_id, leg.endpoint_id))
        if bye_phone:
            dialog = leg.get_dialog()
            headers = [("Reason", reason)] if reason else None
            bye = dialog.create_request("BYE", headers=headers)
            resp = await self.gw.request(bye, leg.get_peer())
            if resp.status >= 300:
                log.info("BYE for %s answered %s", dialog.call_id, resp.status)

    async def _reinvite(self, event: RequestReceived) -> SipResponse | None:
        request = event.request
        leg = await self._dialog_leg(request)
        if leg is None:
            early = self._out_by_tag.get((request.call_id, request.to.tag or ""))
            if early is not None:
                return self._fail(request, 491, "call not answered yet")
            return build_response(request, 481)
        response = await self._target_refresh(request, leg, event.peer)
        if response.status == 200:
            self._watch_ack(event.key, response, None, peer_reliable=event.peer.reliable)
            self._respond(event.key, response)
            return None
        return response

    async def _handle_update_request(self, event: RequestReceived) -> SipResponse:
        request = event.request
        leg = await self._dialog_leg(request)
        if leg is None:
            out = self._out_by_tag.get((request.call_id, request.to.tag or ""))
            if out is not None:  # RFC 3311 §5.2 UPDATE in an early dialog: refresh only
                return build_response(request, 200, headers=[("Contact", out.contact)])
            return build_response(request, 481)
        return await self._target_refresh(request, leg, event.peer)

    async def _target_refresh(self, request: SipRequest, leg: Leg, peer: Peer
                              ) -> SipResponse:
        """re-INVITE or UPDATE (RFC 3261 §14.2, RFC 3311 §5.2): hold/resume and session
        refresh. A new offer goes to the backend's re-offer API, whose answer we relay;
        a backend without it (404/501) or out of reach gets the local answer: our last
        SDP with the direction mirrored (RFC 3264 §8.4)."""
        dialog = leg.get_dialog()
        try:
            dialog.receive_request(request)
        except DialogError as e:
            return self._fail(request, e.status if hasattr(e, "status") else 500, str(e))
        sdp_text, _ = split_body(request)
        body = leg.local_sdp.encode("utf-8")
        if sdp_text:
            offer = _parse_sdp(sdp_text)
            previous = _parse_sdp(leg.local_sdp)
            if offer is None:
                return self._fail(request, 488, "malformed SDP offer")
            relayed: str | None = None
            try:
                relayed = await self.gw.backend.reoffer(leg.backend_call_id, leg.endpoint_id,
                                                        sdp_text)
            except BackendError as e:
                if e.status not in (404, 501):
                    st, phrase, warning = backend_error_to_sip(e.status, e.code, e.message)
                    return self._fail(request, st, warning, reason=reason_header(st, phrase))
            except BackendUnavailable as e:
                log.info("re-offer of %s answered locally: %s", leg.backend_call_id, e)
            if relayed is not None:
                leg.local_sdp = relayed
                body = relayed.encode("utf-8")
            elif previous is not None:
                answer = mirror_answer(previous, offer)
                leg.local_sdp = str(answer)
                body = bytes(answer)
            leg.remote_sdp = sdp_text
        leg.set_dialog(dialog)
        leg.peer = Leg.peer_dict(peer) if peer.flow or not leg.get_peer().flow else leg.peer
        headers = [("Contact", dialog.local_contact), ("Allow", ALLOW),
                   ("Supported", SUPPORTED)]
        if leg.session_expires:
            se, refresher, error = self._session_timer(request)
            if error is not None:
                return error
            if se:
                leg.session_expires = se
                leg.refresher = _role_refresher(refresher, leg)
            headers += [("Session-Expires",
                         f"{leg.session_expires};refresher={_refresher_for(leg, request)}"),
                        ("Require", "timer")]
        await self.legs.save(leg, se_deadline=self._se_deadline(leg))
        return build_response(request, 200, headers=headers, body=body,
                              content_type="application/sdp" if body else None)

    async def _handle_prack_request(self, event: RequestReceived) -> SipResponse:
        request = event.request
        out = self._out_by_tag.get((request.call_id, request.to.tag or ""))
        if out is None:
            return build_response(request, 481)
        rack = (request.headers.get("RAck") or "").split()
        if len(rack) != 3 or not rack[0].isdigit() or int(rack[0]) != out.rseq:
            return self._fail(request, 481, "RAck matches no reliable provisional")
        out.pracked.set()
        return build_response(request, 200)

    async def _handle_info_request(self, event: RequestReceived) -> SipResponse:
        request = event.request
        leg = await self._dialog_leg(request)
        if leg is None:
            return build_response(request, 481)
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/dtmf-relay":
            m = _SIGNAL_RE.search(request.body.decode("utf-8", "replace"))
            if m:
                try:
                    await self.gw.backend.dtmf(leg.backend_call_id, leg.endpoint_id,
                                               m.group(1).upper())
                except (BackendError, BackendUnavailable) as e:
                    log.info("DTMF relay for %s failed: %s", leg.backend_call_id, e)
        return build_response(request, 200)

    # -- session timers ---------------------------------------------------------------------
    async def _session_timer_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                for leg_id in await self.legs.session_expired(time.time()):
                    leg = await self.legs.get(leg_id)
                    if leg is None:
                        await self.legs.drop_session_timer(leg_id)
                        continue
                    if self._we_refresh(leg):
                        self._spawn(self._refresh_session(leg))
                        await self.legs.drop_session_timer(leg_id)
                    else:
                        log.info("session timer expired for %s", leg.dialog.get("call_id"))
                        self._spawn(self._end_leg(
                            leg, bye_phone=True, hangup_backend=True,
                            reason=reason_header(408, "Session timer expired")))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next sweep must run
                log.exception("session timer sweep failed")

    # -- re-offers from the backend ---------------------------------------------------------
    def _relay_reoffer(self, leg_id: str, sdp: str) -> None:
        """The other party re-offered (hold, resume, a media change: RFC 3264 §8): the
        phone gets it in a re-INVITE. One re-INVITE per leg at a time (a second would meet
        our own pending one, RFC 3261 §14.1); a newer offer waiting replaces an older."""
        if leg_id in self._reoffers:
            self._reoffers[leg_id] = sdp
            return
        self._reoffers[leg_id] = sdp
        self._spawn(self._reoffer_loop(leg_id))

    async def _reoffer_loop(self, leg_id: str) -> None:
        try:
            while True:
                sdp = self._reoffers.get(leg_id)
                if sdp is None:
                    return
                self._reoffers[leg_id] = None
                leg = await self.legs.get(leg_id)
                if leg is None:
                    return  # the call ended meanwhile
                await self._reinvite_phone(leg, sdp)
        finally:
            self._reoffers.pop(leg_id, None)

    async def _reinvite_phone(self, leg: Leg, sdp: str, *, glare_retry: bool = True) -> None:
        # a re-INVITE refreshes the session too (RFC 4028 §7.4): keep who refreshes
        refresher = "uac" if self._we_refresh(leg) else "uas"
        resp, fresh = await self._send_reinvite(leg, sdp, refresher)
        if 200 <= resp.status < 300:
            if fresh is not None:
                fresh.local_sdp = sdp
                answer, _ = split_body(resp)
                if answer:
                    fresh.remote_sdp = answer
                await self.legs.save(fresh, se_deadline=self._se_deadline(fresh))
        elif resp.status == 491 and glare_retry:
            # both sides re-offered at once (§14.1): we own no Call-ID here, so wait 0-2 s
            await asyncio.sleep(random.uniform(0.0, 2.0))
            fresh = await self.legs.get(leg.leg_id)
            if fresh is not None:
                await self._reinvite_phone(fresh, sdp, glare_retry=False)
        elif resp.status in (408, 481):
            await self._end_leg(leg, bye_phone=resp.status == 408, hangup_backend=True)
        else:
            # §14.1: a refused re-INVITE leaves the session as it was
            log.info("re-offer to the phone of %s answered %s", leg.backend_call_id,
                     resp.status)

    async def _send_reinvite(self, leg: Leg, sdp: str, refresher: str,
                             ) -> tuple[SipResponse, Leg | None]:
        """A re-INVITE with ``sdp`` to the leg's phone, ACKed on 2xx; the final response and,
        after a 2xx, the leg as stored now with the dialog's new state (not yet saved)."""
        dialog = leg.get_dialog()
        headers = [("Supported", SUPPORTED), ("Allow", ALLOW)]
        if leg.session_expires:
            headers.insert(0, ("Session-Expires",
                               f"{leg.session_expires};refresher={refresher}"))
        invite = dialog.create_request("INVITE", headers=headers, body=sdp.encode("utf-8"),
                                       content_type="application/sdp")
        leg.set_dialog(dialog)
        await self.legs.save(leg)
        peer = leg.get_peer()
        resp = await self.gw.request(invite, peer)
        if not 200 <= resp.status < 300:
            return resp, None
        dialog.receive_response("INVITE", resp)
        self.gw.driver.send_ack_2xx(build_ack_for_2xx(invite, resp, dialog), peer)
        fresh = await self.legs.get(leg.leg_id)
        if fresh is not None:
            fresh.set_dialog(dialog)
        return resp, fresh

    async def _refresh_session(self, leg: Leg) -> None:
        """We are the refresher (RFC 4028 §10): a re-INVITE with our last SDP."""
        resp, fresh = await self._send_reinvite(leg, leg.local_sdp, "uac")
        if 200 <= resp.status < 300:
            if fresh is not None:
                await self.legs.save(fresh, se_deadline=self._se_deadline(fresh))
        elif resp.status in (408, 481):
            await self._end_leg(leg, bye_phone=resp.status == 408, hangup_backend=True)
        else:
            fresh = await self.legs.get(leg.leg_id)
            if fresh is not None:
                await self.legs.save(fresh, se_deadline=self._se_deadline(fresh))

    # -- backend events -------------------------------------------------------------------
    def _on_backend_event(self, ev: Event) -> None:
        """Each event as the stream reads it. A call's events are handled one after the
        other, in stream order, by one task per call at a time; other calls' events run
        alongside."""
        if ev.id:
            self.legs.note_last_event(self.event_node, ev.id)
        key = ev.call_id or ev.endpoint_id
        waiting = self._serial.get(key)
        if waiting is not None:
            waiting.append(ev)  # the task handling this key takes it next
            return
        if ev.type == "call.ringing":
            out = self._out_by_call.get(ev.call_id)
            if out is not None and ev.endpoint_id == out.endpoint_id:
                self._ring(out)  # nothing to await: no task
                return
        self._serial[key] = []
        self._spawn(self._dispatch_serial(key, ev))

    async def _dispatch_serial(self, key: str, ev: Event) -> None:
        try:
            while True:
                try:
                    await self._dispatch(ev)
                except Exception:  # noqa: BLE001 - one bad event must not stop the stream
                    log.exception("handling backend event %s for %s failed", ev.type,
                                  ev.call_id)
                waiting = self._serial.get(key)
                if not waiting:
                    break
                ev = waiting.pop(0)
        finally:
            self._serial.pop(key, None)

    async def _dispatch(self, ev: Event) -> None:
        if not ev.call_id:
            return
        if ev.type == "call.reoffer":
            if ev.sdp:
                for leg in await self.legs.by_call(ev.call_id):
                    if leg.endpoint_id == ev.endpoint_id:
                        self._relay_reoffer(leg.leg_id, ev.sdp)
            return
        if ev.type == "call.incoming":
            if device_id_for(ev.endpoint_id) is not None:
                await self._incoming(ev)
            return
        out = self._out_by_call.get(ev.call_id)
        if out is not None and ev.endpoint_id == out.endpoint_id:
            await self._outbound_event(out, ev)
            return
        if ev.type in ("call.ringing", "call.answered", "call.rejected") and \
                self._creating and device_id_for(ev.endpoint_id) is not None:
            # the event beat create_call's answer: keep it for the INVITE being set up
            stash = self._early_events.setdefault(ev.call_id, [])
            if len(stash) < 16:
                stash.append(ev)
            asyncio.get_running_loop().call_later(
                30, self._early_events.pop, ev.call_id, None)
            return
        if ev.type == "call.cancelled":
            inbound = self._inbound.get((ev.call_id, ev.endpoint_id))
            if inbound is not None:
                await self._cancel_inbound(inbound, ev.reason)
            return
        if ev.type == "call.ended":
            for leg in await self.legs.by_call(ev.call_id):
                if leg.endpoint_id == ev.endpoint_id:
                    await self._end_leg(leg, bye_phone=True, hangup_backend=False)

    # -- inbound: backend -> phones ------------------------------------------------------
    async def _incoming(self, ev: Event) -> None:
        key = (ev.call_id, ev.endpoint_id)
        if key in self._inbound:
            return
        device_id = device_id_for(ev.endpoint_id)
        if not device_id:
            return
        aor = self._aors.get(device_id)
        device: Any
        if aor is not None and ev.user:
            # registered here: no device read (an offboarded device has no bindings left)
            device = _KnownDevice(device_id, aor, ev.user)
        else:
            device = await self.gw.devices.get(device_id)
            if device is None:
                return
        bindings = [b for b in await self.gw.registrar.lookup(device.aor)
                    if b.node_id == self.gw.node_id]
        if not bindings:
            return  # another node owns this phone's flows
        inbound = _Inbound(call_id=ev.call_id, endpoint_id=ev.endpoint_id, device=device,
                           started=self._now())
        self._inbound[key] = inbound
        caller = ev.caller or "anonymous"
        caller_uri = f"sip:{caller}" if "@" in caller else f"sip:{caller}@{self.domain}"
        display = caller.replace('"', "'").replace("\\", "")
        call_id = secrets.token_hex(16)
        from_tag = new_tag()
        for cseq, b in enumerate(bindings, 1):
            headers = [
                ("Max-Forwards", "70"),
                ("From", f'"{display}" <{caller_uri}>;tag={from_tag}'),
                ("To", f"<{device.aor}>"),
                ("Call-ID", f"{call_id}-{cseq}"),
                ("CSeq", "1 INVITE"),
            ]
            headers += [("Route", r) for r in b.path]
            headers += [("Contact", self.our_contact(b.source.transport)),
                        ("Allow", ALLOW), ("Supported", "replaces")]
            try:
                uri = Uri.parse(b.uri)
            except SipParseError:
                continue
            invite = SipRequest(method="INVITE", uri=uri, headers=Headers(headers),
                                body=ev.sdp.encode("utf-8"))
            if ev.sdp:
                invite.headers.add("Content-Type", "application/sdp")
            branch = _Branch(request=invite, peer=b.source)
            inbound.branches.append(branch)
        if not inbound.branches:
            self._inbound.pop(key, None)
            return
        for branch in inbound.branches:
            self._spawn(self._ring_branch(inbound, branch))

    async def _ring_branch(self, inbound: _Inbound, branch: _Branch) -> None:
        def provisional(resp: SipResponse) -> None:
            branch.provisional.set()
            if resp.status in (180, 183) and not inbound.rang and not inbound.answered:
                inbound.rang = True
                self._spawn(self._backend_ringing(inbound))

        def extra_2xx(resp: SipResponse) -> None:
            self._spawn(self._ack_and_bye(branch, resp))

        resp = await self.gw.request(branch.request, branch.peer,
                                     on_provisional=provisional, on_extra_2xx=extra_2xx)
        branch.final = resp.status
        if 200 <= resp.status < 300:
            if inbound.answered or inbound.cancel_reason is not None:
                await self._ack_and_bye(branch, resp)
                return
            inbound.answered = True
            await self._connect_inbound(inbound, branch, resp)
            return
        if all(b.final for b in inbound.branches) and not inbound.answered:
            self._inbound.pop((inbound.call_id, inbound.endpoint_id), None)
            self.metrics.final("in", resp.status)
            if inbound.cancel_reason is None and resp.status in (403, 486, 600, 603):
                try:
                    await self.gw.backend.reject(inbound.call_id, inbound.endpoint_id,
                                                 from_sip(resp.status))
                except (BackendError, BackendUnavailable) as e:
                    log.info("backend reject of %s: %s", inbound.call_id, e)

    async def _backend_ringing(self, inbound: _Inbound) -> None:
        try:
            await self.gw.backend.ringing(inbound.call_id, inbound.endpoint_id)
        except (BackendError, BackendUnavailable) as e:
            log.info("backend ringing of %s: %s", inbound.call_id, e)

    async def _ack_and_bye(self, branch: _Branch, resp: SipResponse) -> Dialog | None:
        try:
            dialog = Dialog.from_uac(branch.request, resp)
        except (DialogError, SipParseError):
            return None
        dialog.receive_response("INVITE", resp)
        self.gw.driver.send_ack_2xx(build_ack_for_2xx(branch.request, resp, dialog),
                                    branch.peer)
        bye = dialog.create_request(
            "BYE", headers=[("Reason", COMPLETED_ELSEWHERE)])
        await self.gw.request(bye, branch.peer)
        return dialog

    async def _connect_inbound(self, inbound: _Inbound, branch: _Branch,
                               resp: SipResponse) -> None:
        try:
            dialog = Dialog.from_uac(branch.request, resp)
        except (DialogError, SipParseError) as e:
            log.info("unusable 2xx from %s: %s", branch.peer, e)
            return
        dialog.receive_response("INVITE", resp)
        self.gw.driver.send_ack_2xx(build_ack_for_2xx(branch.request, resp, dialog),
                                    branch.peer)
        for other in inbound.branches:
            if other is not branch and not other.final:
                self._spawn(self._cancel_branch(other, COMPLETED_ELSEWHERE))
        self._inbound.pop((inbound.call_id, inbound.endpoint_id), None)
        sdp = resp.body.decode("utf-8", "replace")
        se, refresher = _response_session_timer(resp)
        leg = Leg(leg_id=secrets.token_hex(10), direction="in",
                  backend_call_id=inbound.call_id, endpoint_id=inbound.endpoint_id,
                  device_id=inbound.device.device_id, user=inbound.device.user or "",
                  dialog=dialog.to_dict(), peer=Leg.peer_dict(branch.peer),
                  local_sdp=branch.request.body.decode("utf-8", "replace"), remote_sdp=sdp,
                  session_expires=se, refresher=refresher, created=time.time(),
                  answered=time.time())
        await self.legs.save(leg, se_deadline=self._se_deadline(leg))
        self.metrics.active.inc()
        try:
            await self.gw.backend.answer(inbound.call_id, inbound.endpoint_id, sdp)
        except (BackendError, BackendUnavailable) as e:
            # answered elsewhere first, or the caller gave up: this phone's call ends
            log.info("backend answer of %s refused: %s", inbound.call_id, e)
            self.metrics.final("in", 487)
            await self._end_leg(leg, bye_phone=True, hangup_backend=False,
                                reason=COMPLETED_ELSEWHERE)
            return
        self.metrics.final("in", 200)
        self.metrics.setup_time("in", self._now() - inbound.started)

    async def _cancel_inbound(self, inbound: _Inbound, reason: str) -> None:
        inbound.cancel_reason = reason or "cancelled"
        header = COMPLETED_ELSEWHERE if reason == "answered_elsewhere" else None
        for branch in inbound.branches:
            if not branch.final:
                self._spawn(self._cancel_branch(branch, header))

    async def _cancel_branch(self, branch: _Branch, reason: str | None) -> None:
        if branch.cancelled:
            return
        branch.cancelled = True
        # RFC 3261 §9.1: no CANCEL before a provisional response arrived
        try:
            await asyncio.wait_for(branch.provisional.wait(), 64 * self.config.t1)
        except TimeoutError:
            return
        if branch.final:
            return
        cancel = build_cancel(branch.request)
        if reason:
            cancel.headers.add("Reason", reason)
        await self.gw.request(cancel, branch.peer)


def _response_session_timer(resp: SipResponse) -> tuple[int, str]:
    raw = resp.headers.get("Session-Expires")
    if not raw:
        return 0, ""
    value, _, params = raw.partition(";")
    try:
        se = int(value.strip())
    except ValueError:
        return 0, ""
    m = re.search(r"refresher\s*=\s*(uac|uas)", params, re.I)
    return se, (m.group(1).lower() if m else "uas")


def _role_refresher(refresher: str, leg: Leg) -> str:
    """Session refresh requests may come from either side; the refresher named in them is
    relative to that request, so convert it to the roles of the initial INVITE."""
    # The phone sent this refresh: uac == the phone.
    phone_is_initial_uac = leg.direction == "out"
    if refresher == "uac":
        return "uac" if phone_is_initial_uac else "uas"
    return "uas" if phone_is_initial_uac else "uac"


def _refresher_for(leg: Leg, request: SipRequest) -> str:
    """The refresher parameter for our answer to a refresh request from the phone."""
    phone_is_initial_uac = leg.direction == "out"
    phone_refreshes = (leg.refresher == "uac") == phone_is_initial_uac
    return "uac" if phone_refreshes else "uas"


async def attach_b2bua(gateway: Any, config: B2buaConfig | None = None) -> B2BUA:
    """Register the B2BUA on a started ``Gateway`` and start its backend subscription."""
    b2bua = B2BUA(gateway, config)
    await b2bua.start()
    return b2bua
