"""HTTP (REST) and WebSocket front of the reference backend, on twisted.web + autobahn.

Every request needs ``Authorization: Bearer <token>`` (RFC 6750 §2.1); a
missing or wrong token gets 401 with ``WWW-Authenticate: Bearer``. Bodies are
JSON objects validated by ``gateway.backend.schema``; bad input gets a 400
``{"error": "bad_request", "message": ...}``, never a traceback. The routes
are listed in ``ROUTES`` and documented in ``gateway/backend/openapi.json``
(a unit test keeps the two equal).

``GET /v1/events`` upgrades to a WebSocket (RFC 6455) that streams events
from the Redis stream: first ``{"v":1,"type":"stream.ready","id":...}``,
then every event after that position. ``?since=<id>`` resumes after a
previous event id, ``?user=<oid>`` (repeatable) filters by user.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.backend.directory import Directory, User
from gateway.backend.reference.engine import ApiFailure, CallEngine, EngineConfig, _s
from gateway.backend.reference.fasthttp import FastRestFactory
from gateway.backend.schema import (
    Answer,
    CallCreate,
    Dnd,
    Dtmf,
    EndpointAction,
    EndpointCreate,
    PolicyInfo,
    Reject,
    Reoffer,
    ReofferAnswer,
    SchemaError,
    SimAction,
    SimCallCreate,
    SimClientCreate,
    TenantInfo,
    UserInfo,
    parse_body,
    validate_guid,
    validate_id,
)
from gateway.state.pipe import RespPipe

log = logging.getLogger("sipgw.backend")

Handler = Callable[["Api", dict[str, str], dict[str, Any], dict[bytes, list[bytes]]],
                   Awaitable[tuple[int, Any]]]


_ROUTE_PARTS: dict[str, list[str]] = {}  # path template -> its segments, split once


@dataclass(frozen=True)
class Route:
    """One REST operation: method, path template (OpenAPI syntax), handler."""

    method: str
    path: str
    handler: Handler

    @property
    def parts(self) -> list[str]:
        got: list[str] | None = _ROUTE_PARTS.get(self.path)
        if got is None:
            got = _ROUTE_PARTS[self.path] = self.path.strip("/").split("/")
        return got

    def match(self, parts: list[str]) -> dict[str, str] | None:
        tparts = self.parts
        if len(tparts) != len(parts):
            return None
        params: dict[str, str] = {}
        for t, p in zip(tparts, parts, strict=True):
            if t.startswith("{") and t.endswith("}"):
                if not p:
                    return None
                params[t[1:-1]] = p
            elif t != p:
                return None
        return params


def user_info(engine: CallEngine, u: User) -> UserInfo:
    refusal = u.sip_device_refusal(engine.directory.tenant_of(u)) or ""
    return UserInfo(oid=u.oid, tenant=u.tenant, upn=u.upn, name=u.name, number=u.number,
                    pstn_enabled=u.pstn_enabled, licenses=u.licenses,
                    account_type=u.account_type, enabled=u.enabled, mfa=u.mfa,
                    calling_policy=PolicyInfo(
                        allow_sip_devices_calling=u.calling_policy.allow_sip_devices_calling,
                        allow_call_redirect=u.calling_policy.allow_call_redirect),
                    sip_device_refusal=refusal)


def _oid(params: dict[str, str]) -> str:
    return validate_guid(params["oid"], "oid")


def _cid(params: dict[str, str]) -> str:
    return validate_id(params["call_id"], "call_id")


def _eid(params: dict[str, str]) -> str:
    return validate_id(params["endpoint_id"], "endpoint_id")


class Api:
    """The REST handlers (one coroutine per route) over a ``CallEngine``."""

    def __init__(self, engine: CallEngine) -> None:
        self.engine = engine

    async def get_users(self, p: dict[str, str], b: dict[str, Any],
                        q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        number = q.get(b"number", [b""])[0].decode("utf-8", "replace")
        upn = q.get(b"upn", [b""])[0].decode("utf-8", "replace")
        if bool(number) == bool(upn):
            raise SchemaError("query: give exactly one of number= or upn=")
        u = (self.engine.directory.user_by_number(number) if number
             else self.engine.directory.user_by_upn(upn))
        if u is None:
            raise ApiFailure(404, "user_not_found", "no such user")
        return 200, user_info(self.engine, u).to_json()

    async def get_user(self, p: dict[str, str], b: dict[str, Any],
                       q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        return 200, user_info(self.engine, self.engine.user(_oid(p))).to_json()

    async def get_tenant(self, p: dict[str, str], b: dict[str, Any],
                         q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        t = self.engine.directory.tenants.get(validate_guid(p["tenant_id"], "tenant_id"))
        if t is None:
            raise ApiFailure(404, "tenant_not_found", "no such tenant")
        return 200, TenantInfo(id=t.id, name=t.name, domain=t.domain, cloud=t.cloud,
                               bulk_sign_in=t.bulk_sign_in,
                               sip_gateway_available=t.sip_gateway_available).to_json()

    async def list_endpoints(self, p: dict[str, str], b: dict[str, Any],
                             q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        oid = self.engine.user(_oid(p)).oid
        eps = await self.engine.endpoints_of(oid)
        return 200, {"endpoints": [e.to_json() for e in eps]}

    async def add_endpoint(self, p: dict[str, str], b: dict[str, Any],
                           q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        ep = await self.engine.add_endpoint(_oid(p), EndpointCreate.from_json(b))
        return 201, ep.to_json()

    async def remove_endpoint(self, p: dict[str, str], b: dict[str, Any],
                              q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        await self.engine.remove_endpoint(_oid(p), _eid(p))
        return 204, None

    async def set_dnd(self, p: dict[str, str], b: dict[str, Any],
                      q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        ep = await self.engine.set_dnd(_oid(p), _eid(p), Dnd.from_json(b).dnd)
        return 200, ep.to_json()

    async def create_call(self, p: dict[str, str], b: dict[str, Any],
                          q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        return 201, (await self.engine.create_call(CallCreate.from_json(b))).to_json()

    async def get_call(self, p: dict[str, str], b: dict[str, Any],
                       q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        return 200, (await self.engine.get_call(_cid(p))).to_json()

    async def answer(self, p: dict[str, str], b: dict[str, Any],
                     q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        return 200, (await self.engine.answer(_cid(p), Answer.from_json(b))).to_json()

    async def reoffer(self, p: dict[str, str], b: dict[str, Any],
                      q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        answer = await self.engine.reoffer(_cid(p), Reoffer.from_json(b))
        return 200, ReofferAnswer(sdp_answer=answer).to_json()

    async def reject(self, p: dict[str, str], b: dict[str, Any],
                     q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        return 200, (await self.engine.reject(_cid(p), Reject.from_json(b))).to_json()

    async def cancel(self, p: dict[str, str], b: dict[str, Any],
                     q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        eid = EndpointAction.from_json(b).endpoint_id
        return 200, (await self.engine.cancel(_cid(p), eid)).to_json()

    async def hangup(self, p: dict[str, str], b: dict[str, Any],
                     q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        eid = EndpointAction.from_json(b).endpoint_id
        return 200, (await self.engine.hangup(_cid(p), eid)).to_json()

    async def ringing(self, p: dict[str, str], b: dict[str, Any],
                      q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        eid = EndpointAction.from_json(b).endpoint_id
        return 200, (await self.engine.ringing(_cid(p), eid)).to_json()

    async def dtmf(self, p: dict[str, str], b: dict[str, Any],
                   q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        return 200, (await self.engine.dtmf(_cid(p), Dtmf.from_json(b))).to_json()

    async def sim_client(self, p: dict[str, str], b: dict[str, Any],
                         q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        ep = await self.engine.add_sim_client(SimClientCreate.from_json(b).user)
        return 201, ep.to_json()

    async def sim_answer(self, p: dict[str, str], b: dict[str, Any],
                         q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        a = SimAction.from_json(b)
        return 200, (await self.engine.sim_client_answer(_eid(p), a.call_id)).to_json()

    async def sim_reject(self, p: dict[str, str], b: dict[str, Any],
                         q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        a = SimAction.from_json(b)
        call = await self.engine.sim_client_reject(_eid(p), a.call_id, a.reason)
        return 200, call.to_json()

    async def sim_hangup(self, p: dict[str, str], b: dict[str, Any],
                         q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        a = SimAction.from_json(b)
        return 200, (await self.engine.sim_client_hangup(_eid(p), a.call_id)).to_json()

    async def sim_dtmf(self, p: dict[str, str], b: dict[str, Any],
                       q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        a = SimAction.from_json(b)
        call = await self.engine.sim_client_dtmf(_eid(p), a.call_id, a.digits)
        return 200, call.to_json()

    async def sim_call(self, p: dict[str, str], b: dict[str, Any],
                       q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        c = SimCallCreate.from_json(b)
        call = await self.engine.sim_call(c.from_user, c.to, c.from_endpoint, c.sdp_offer)
        return 201, call.to_json()

    async def sim_far_hangup(self, p: dict[str, str], b: dict[str, Any],
                             q: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        return 200, (await self.engine.far_end_hangup(_cid(p))).to_json()


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/users", Api.get_users),
    Route("GET", "/v1/users/{oid}", Api.get_user),
    Route("GET", "/v1/tenants/{tenant_id}", Api.get_tenant),
    Route("GET", "/v1/users/{oid}/endpoints", Api.list_endpoints),
    Route("POST", "/v1/users/{oid}/endpoints", Api.add_endpoint),
    Route("DELETE", "/v1/users/{oid}/endpoints/{endpoint_id}", Api.remove_endpoint),
    Route("PUT", "/v1/users/{oid}/endpoints/{endpoint_id}/dnd", Api.set_dnd),
    Route("POST", "/v1/calls", Api.create_call),
    Route("GET", "/v1/calls/{call_id}", Api.get_call),
    Route("POST", "/v1/calls/{call_id}/answer", Api.answer),
    Route("POST", "/v1/calls/{call_id}/reject", Api.reject),
    Route("POST", "/v1/calls/{call_id}/reoffer", Api.reoffer),
    Route("POST", "/v1/calls/{call_id}/cancel", Api.cancel),
    Route("POST", "/v1/calls/{call_id}/hangup", Api.hangup),
    Route("POST", "/v1/calls/{call_id}/ringing", Api.ringing),
    Route("POST", "/v1/calls/{call_id}/dtmf", Api.dtmf),
    Route("POST", "/v1/sim/clients", Api.sim_client),
    Route("POST", "/v1/sim/clients/{endpoint_id}/answer", Api.sim_answer),
    Route("POST", "/v1/sim/clients/{endpoint_id}/reject", Api.sim_reject),
    Route("POST", "/v1/sim/clients/{endpoint_id}/hangup", Api.sim_hangup),
    Route("POST", "/v1/sim/clients/{endpoint_id}/dtmf", Api.sim_dtmf),
    Route("POST", "/v1/sim/calls", Api.sim_call),
    Route("POST", "/v1/sim/calls/{call_id}/hangup", Api.sim_far_hangup),
)


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def _shape(parts: list[str]) -> tuple[int, str, str | None]:
    """A template's bucket: segment count, second segment, last segment (None: a
    parameter). Every template's second segment is literal (asserted below)."""
    return len(parts), parts[1], None if _is_param(parts[-1]) else parts[-1]


# The router tries only the routes with as many path segments as the request has and the
# same second and last segments, plus those ending in a parameter (every route that can
# match a path is in one of the two buckets).
_ROUTES_BY_SHAPE: dict[tuple[int, str, str | None], tuple[Route, ...]] = {}
for _r in ROUTES:
    assert len(_r.parts) >= 2 and not _is_param(_r.parts[1]), _r.path
    _ROUTES_BY_SHAPE[_shape(_r.parts)] = (*_ROUTES_BY_SHAPE.get(_shape(_r.parts), ()), _r)


def _routes_for(parts: list[str]) -> tuple[Route, ...]:
    n = len(parts)
    if n < 2:
        return ()  # every route has two segments at least (asserted above)
    return _ROUTES_BY_SHAPE.get((n, parts[1], parts[-1]), ()) + \
        _ROUTES_BY_SHAPE.get((n, parts[1], None), ())
# Served outside the REST router (a WebSocket upgrade); listed for the OpenAPI parity test.
WEBSOCKET_PATHS = ("/v1/events",)


def registered_paths() -> set[tuple[str, str]]:
    """(method, path) of every REST operation plus the WebSocket GET."""
    return {(r.method, r.path) for r in ROUTES} | {("GET", p) for p in WEBSOCKET_PATHS}


def check_token(header: bytes | str | None, token: str) -> bool:
    """RFC 6750 §2.1 bearer check in constant time."""
    if not header or not token:
        return False
    value = header.decode("latin-1") if isinstance(header, bytes) else header
    scheme, _, cred = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(cred.strip().encode("utf-8"), token.encode("utf-8"))


def _report_crash(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("backend request crashed: %r", exc, exc_info=exc)


def _write_json(request: Request, status: int, body: Any) -> None:
    request.setResponseCode(status)
    if status == 401:
        request.setHeader(b"www-authenticate", b'Bearer realm="sipgw-backend"')
    if body is None:
        request.finish()
        return
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    request.setHeader(b"content-type", b"application/json")
    # a length instead of chunked framing: cheaper for both ends of a keep-alive connection
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


class RestResource(Resource):
    """All of ``/v1/*`` except the event stream: routing, auth, JSON and error mapping."""

    isLeaf = True

    def __init__(self, api: Api, token: str) -> None:
        super().__init__()
        self.api = api
        self.token = token

    def render(self, request: Request) -> Any:
        # redis.asyncio needs an asyncio task, not a Deferred-driven coroutine.
        asyncio.ensure_future(self._handle(request)).add_done_callback(_report_crash)
        return NOT_DONE_YET

    async def _handle(self, request: Request) -> None:
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))
        status, body, allow = await self.dispatch(
            _s(request.method), request.path, request.getHeader(b"authorization"),
            request.content.read() if request.content is not None else b"",
            request.args or {})
        if allow:
            request.setHeader(b"allow", allow.encode("ascii"))
        if not finished[0]:
            _write_json(request, status, body)

    async def dispatch(self, method: str, raw_path: bytes, authorization: bytes | None,
                       raw_body: bytes, args: dict[bytes, list[bytes]],
                       ) -> tuple[int, Any, str]:
        """One REST request: (status, JSON body or None, Allow header value or "")."""
        try:
            path = _s(raw_path)
            if not check_token(authorization, self.token):
                return 401, {"error": "unauthorized",
                             "message": "bearer token missing or wrong"}, ""
            parts = path.strip("/").split("/")
            candidates = [(r, p) for r in _routes_for(parts)
                          if (p := r.match(parts)) is not None]
            if not candidates:
                return 404, {"error": "not_found",
                             "message": f"no such resource {path[:80]}"}, ""
            for route, params in candidates:
                if route.method == method and params is not None:
                    body = parse_body(raw_body) if method in ("POST", "PUT") else {}
                    status, answer = await route.handler(self.api, params, body, args)
                    return status, answer, ""
            allowed = ", ".join(sorted({r.method for r, _ in candidates}))
            return 405, {"error": "method_not_allowed", "message": f"use {allowed}"}, allowed
        except SchemaError as exc:
            return 400, {"error": "bad_request", "message": str(exc)}, ""
        except ApiFailure as exc:
            return exc.status, {"error": exc.code, "message": exc.message}, ""
        except Exception:
            log.exception("backend %s %r failed", method, raw_path[:80])
            return 500, {"error": "internal", "message": "internal error"}, ""


class EventStreamProtocol(WebSocketServerProtocol):
    """One ``/v1/events`` subscriber: replays the Redis stream from its position."""

    factory: EventStreamFactory

    def onConnect(self, request: ConnectionRequest) -> None:
        if not check_token(request.headers.get("authorization"), self.factory.token):
            raise ConnectionDeny(401, "bearer token missing or wrong")
        since = request.params.get("since", [""])[0]
        if since and not _valid_stream_id(since):
            raise ConnectionDeny(400, "since: not an event id")
        self._since = since
        self._users = set(request.params.get("user", []))
        self._task: asyncio.Task[None] | None = None

    def onOpen(self) -> None:
        self._task = asyncio.ensure_future(self._pump())
        self.factory.clients.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        pass  # the stream is one-way; pings are answered by autobahn

    def _send_event(self, data: bytes) -> None:
        """One event as one unmasked text frame (RFC 6455 §5.2), written straight to the
        transport: the stream sends several per call and autobahn's ``sendMessage``
        (checks, statistics, fragmentation and compression choices per frame) cost more
        than the frame. Anything but a plain open connection goes through autobahn."""
        transport: Any = self.transport
        if self.state != WebSocketServerProtocol.STATE_OPEN or transport is None or \
                self._perMessageCompress is not None or getattr(self, "autoFragmentSize", None) \
                or 0 < (getattr(self, "maxMessagePayloadSize", None) or 0) < len(data):
            self.sendMessage(data)
            return
        n = len(data)
        if n < 126:
            head = bytes((0x81, n))
        elif n < 65536:
            head = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            head = b"\x81\x7f" + n.to_bytes(8, "big")
        transport.write(head + data)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._gone = True
        self.factory.clients.discard(self)
        task = getattr(self, "_task", None)
        if task is not None:
            task.cancel()

    async def _pump(self) -> None:
        redis = self.factory.engine.redis
        key = self.factory.engine.events_key
        # A blocking XREAD holds its connection: each subscriber reads on its own, over a
        # pipelined connection where the store allows (redis-py's layers cost more than
        # the read), with a deadline above the block time.
        pipe = RespPipe.for_client(redis, timeout=_XREAD_BLOCK_MS / 1000 + 4)
        try:
            last = self._since
            if not last:
                newest = await redis.xrevrange(key, count=1)
                last = _s(newest[0][0]) if newest else "0-0"
            self.sendMessage(json.dumps({"v": 1, "type": "stream.ready", "id": last}).encode())
            while True:
                try:
                    if pipe is None:
                        # Well under redis-py's default 5 s socket timeout.
                        res = await redis.xread({key: last}, block=_XREAD_BLOCK_MS, count=200)
                    else:
                        res = await pipe.execute("XREAD", "COUNT", 200, "BLOCK",
                                                 _XREAD_BLOCK_MS, "STREAMS", key, last)
                except (RedisTimeoutError, RedisConnectionError, TimeoutError) as exc:
                    log.warning("event stream: Redis read failed, retrying: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                for _stream, entries in res or []:
                    for eid, fields in entries:
                        last = _s(eid)
                        raw = _field(fields, b"e")
                        if not self._users:
                            self._send_event(_with_id(raw, last))
                            continue
                        ev = json.loads(_s(raw))
                        if ev.get("user") not in self._users:
                            continue
                        ev["id"] = last
                        self._send_event(json.dumps(ev).encode("utf-8"))
        except asyncio.CancelledError:
            raise
        except Exception:
            if getattr(self, "_gone", False):
                return  # redis-py turns the cancellation at close into its own errors
            log.exception("event stream to a subscriber failed")
            self.sendClose(4500, "event stream failed")
        finally:
            if pipe is not None:
                await pipe.close()


_XREAD_BLOCK_MS = 1000


def _field(fields: Any, name: bytes) -> Any:
    """A stream entry's field: redis-py gives a dict, the pipe the flat RESP list."""
    if not fields:
        return None
    if isinstance(fields, dict):
        return fields.get(name, fields.get(name.decode()))
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


def _with_id(raw: bytes | str, event_id: str) -> bytes:
    """The stored event (a JSON object written by ``CallEngine.publish``) with its stream
    id added, without decoding it: an unfiltered subscriber gets every event as stored."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    body = data.rstrip()
    if not body.endswith(b"}") or body == b"{}":
        obj = json.loads(data)
        obj["id"] = event_id
        return json.dumps(obj).encode("utf-8")
    return body[:-1] + b',"id":' + json.dumps(event_id).encode("ascii") + b"}"


def _valid_stream_id(v: str) -> bool:
    a, _, b = v.partition("-")
    return a.isdigit() and (b == "" or b.isdigit()) and len(v) < 42


class EventStreamFactory(WebSocketServerFactory):
    protocol = EventStreamProtocol  # type: ignore[assignment]

    def __init__(self, engine: CallEngine, token: str) -> None:
        super().__init__()
        self.engine = engine
        self.token = token
        self.clients: set[EventStreamProtocol] = set()


class V1Resource(Resource):
    def __init__(self, rest: RestResource, events: WebSocketResource) -> None:
        super().__init__()
        self.rest = rest
        self.events = events

    def getChild(self, path: bytes, request: Request) -> Any:
        if path == b"events" and not request.postpath:
            return self.events
        return self.rest


class _Root(Resource):
    def __init__(self, v1: V1Resource, rest: RestResource) -> None:
        super().__init__()
        self.v1 = v1
        self.rest = rest

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self.v1 if path == b"v1" else self.rest


class _ApiSite(Site):
    """No access-log line per request: a call costs several requests, and twisted.web
    writes each one through the global log (errors are still logged by the handlers)."""

    def log(self, request: Request) -> None:
        pass


def build_site(engine: CallEngine, token: str) -> tuple[Site, EventStreamFactory]:
    site, ws_factory, _ = _build(engine, token)
    return site, ws_factory


def _build(engine: CallEngine, token: str) -> tuple[Site, EventStreamFactory, RestResource]:
    rest = RestResource(Api(engine), token)
    ws_factory = EventStreamFactory(engine, token)
    root = _Root(V1Resource(rest, WebSocketResource(ws_factory)), rest)
    # the API takes JSON only: no form parsing (twisted.web's goes through the email package)
    site = _ApiSite(root, parsePOSTFormSubmission=False)
    site.displayTracebacks = False
    return site, ws_factory, rest


async def start_reference_backend(
    redis: Any, directory: Directory, host: str, port: int, token: str, reactor: Any,
    config: EngineConfig | None = None,
) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Serve the reference backend on ``host:port`` (0: ephemeral); returns (port, stop).

    ``redis`` is a ``redis.asyncio`` client; ``stop()`` closes the listener,
    the event streams and the timers (idempotent).
    """
    if not token:
        raise ValueError("the reference backend needs a bearer token")
    engine = CallEngine(redis, directory, reactor, config)
    site, ws_factory, rest = _build(engine, token)
    # plain REST requests skip twisted.web's per-request machinery; the rest is the site's
    listening: Any = reactor.listenTCP(port, FastRestFactory(site, rest),
                                       interface=host)  # IListeningPort
    stopped = [False]

    async def stop() -> None:
        if stopped[0]:
            return
        stopped[0] = True
        await engine.close()
        for client in list(ws_factory.clients):
            client.sendClose(1000, "backend stopping")
            if client.transport is not None:
                client.transport.abortConnection()
        d: Deferred[None] | None = listening.stopListening()
        if d is not None:
            await d.asFuture(asyncio.get_running_loop())

    return int(listening.getHost().port), stop


def main(argv: list[str] | None = None) -> int:
    """``sipgw backend``: run the reference backend alone (foreground, Ctrl-C stops)."""
    from twisted.internet import asyncioreactor

    from gateway.backend.directory import default_directory_path, load_directory
    from gateway.state.redis import connect

    ap = argparse.ArgumentParser(prog="sipgw backend",
                                 description="Run the reference call-control backend.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8280)
    ap.add_argument("--redis-url", default=os.environ.get("SIPGW_REDIS_URL", ""),
                    help="Redis/Valkey URL (required; e.g. redis://127.0.0.1:6379/0)")
    ap.add_argument("--directory", default="", help="directory TOML (default: bundled)")
    ap.add_argument("--token-env", default="SIPGW_BACKEND_TOKEN",
                    help="environment variable holding the bearer token")
    ap.add_argument("--ring-timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    token = os.environ.get(args.token_env, "")
    if not token:
        ap.error(f"set the bearer token in ${args.token_env}")
    if not args.redis_url:
        ap.error("--redis-url (or $SIPGW_REDIS_URL) is required")
    try:
        directory = load_directory(args.directory or default_directory_path())
    except ValueError as exc:
        ap.error(str(exc))
    if "twisted.internet.reactor" not in sys.modules:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # asyncio.ensure_future must find the reactor's loop
        asyncioreactor.install(loop)
    from twisted.internet import reactor as _reactor
    reactor: Any = _reactor

    async def run() -> None:
        redis = connect(args.redis_url)
        bound, _stop = await start_reference_backend(
            redis, directory, args.host, args.port, token, reactor,
            EngineConfig(ring_timeout=args.ring_timeout))
        print(f"listening backend http {args.host}:{bound}", flush=True)
        from gateway.runtime import tune_gc

        tune_gc()

    def boot() -> None:
        d: Deferred[None] = Deferred.fromFuture(asyncio.ensure_future(run()))
        def failed(f: Any) -> None:
            log.error("backend failed: %s", f.getErrorMessage())
            reactor.stop()
        d.addErrback(failed)

    reactor.callWhenRunning(boot)
    reactor.run()
    return 0


