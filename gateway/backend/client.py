"""Typed asyncio client of the call-control backend API (v1): REST over a small HTTP/1.1
keep-alive connection pool on asyncio streams, events over a WebSocket (RFC 6455) on an
asyncio protocol, with Prometheus latency/error metrics.

The REST path carries several requests for every call the gateway bridges, so it is
written for that: persistent connections (RFC 9112 §9.3), one write per request,
``Content-Length`` or chunked bodies (RFC 9112 §6-7), no per-request agent or Deferred
machinery. A request that finds its reused connection closed before any answer byte
is sent again once on a fresh connection (the server closed an idle connection).
The event stream brings several small messages per call too: its WebSocket client is
the few dozen lines the one-way stream needs (handshake, unmasked server frames,
fragments, ping/pong, close), not a general WebSocket stack.

All methods are coroutines to be run as asyncio tasks on the Twisted asyncio
reactor's loop (DESIGN.md principle 2); Twisted Deferreds are bridged with
``Deferred.asFuture``. Errors: ``BackendError`` (the backend answered 4xx/5xx,
with its ``code`` and ``message``) and ``BackendUnavailable`` (no answer,
timeout, or a body that does not match the schema).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import ssl as std_ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlparse

from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.backend.schema import (
    Answer,
    Call,
    CallCreate,
    Dnd,
    Dtmf,
    Endpoint,
    EndpointAction,
    EndpointCreate,
    Event,
    Reject,
    Reoffer,
    ReofferAnswer,
    SchemaError,
    SimAction,
    SimCallCreate,
    SimClientCreate,
    TenantInfo,
    UserInfo,
)

log = logging.getLogger("sipgw.backend.client")
# one encoder for every request body (json.dumps with separators builds one per call)
_compact_json = json.JSONEncoder(separators=(",", ":")).encode
T = TypeVar("T")

ERROR_KINDS = ("http_4xx", "http_5xx", "connection", "timeout", "protocol")


class BackendError(Exception):
    """The backend refused a request (HTTP 4xx/5xx with an ``ApiError`` body)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class BackendUnavailable(Exception):
    """The backend could not be reached, timed out or answered garbage."""


class BackendMetrics:
    """Client-side latency and error metrics of the backend API, in the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "backend_api_request_seconds", "Latency of backend API requests", ("op",),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry)
        self.errors = Counter(
            "backend_api_errors_total", "Failed backend API requests", ("op", "kind"),
            registry=registry)
        self.events = Counter(
            "backend_events_received_total", "Events received on the backend event stream",
            registry=registry)
        self.reconnects = Counter(
            "backend_event_stream_reconnects_total",
            "Reconnections of the backend event stream", registry=registry)


class BackendClient:
    """``BackendClient(base_url, token, ca_file=None)``: one client per gateway process."""

    def __init__(self, base_url: str, token: str, ca_file: str | None = None, *,
                 registry: CollectorRegistry | None = None, timeout: float = 10.0,
                 reactor: Any = None, directory_ttl: float = 10.0) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.base_url = base_url.rstrip("/")
        parsed = urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"backend URL must be http(s)://host[:port]: {base_url!r}")
        self._host = parsed.hostname
        self._token = token
        self._timeout = timeout
        self._reactor = reactor
        self._directory_ttl = directory_ttl
        self._directory: dict[tuple[str, str], tuple[float, UserInfo | None]] = {}
        tls: std_ssl.SSLContext | None = None
        if parsed.scheme == "https":
            tls = std_ssl.create_default_context(cafile=ca_file or None)
        self._tls = tls  # REST and the event WebSocket trust the same roots
        self._port = parsed.port or (443 if tls else 80)
        self._netloc = parsed.netloc.rsplit("@", 1)[-1]
        self._prefix = parsed.path.rstrip("/")
        self._http = _HttpPool(parsed.hostname, parsed.port or (443 if tls else 80), tls,
                               max_idle=64)
        host_header = parsed.netloc.rsplit("@", 1)[-1]
        self._fixed_headers = (f"Host: {host_header}\r\nAuthorization: Bearer {token}\r\n"
                               "Accept: application/json\r\n").encode("latin-1")
        self.metrics = BackendMetrics(registry) if registry is not None else None
        self._latency: dict[str, Any] = {}

    async def close(self) -> None:
        await self._http.close()

    # --- transport -------------------------------------------------------------------
    async def _request(self, op: str, method: str, path: str, body: Any = None,
                       query: dict[str, str] | None = None) -> Any:
        target = self._prefix + path + (("?" + urlencode(query)) if query else "")
        head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._fixed_headers
        if body is not None:
            data = _compact_json(body).encode("utf-8")
            wire = (head + b"Content-Type: application/json\r\nContent-Length: "
                    + str(len(data)).encode() + b"\r\n\r\n" + data)
        else:
            wire = head + b"Content-Length: 0\r\n\r\n" if method in ("POST", "PUT") \
                else head + b"\r\n"
        start = time.monotonic()
        kind = ""
        try:
            try:
                status, raw = await self._http.exchange(wire, method, self._timeout)
            except TimeoutError:
                kind = "timeout"
                raise BackendUnavailable(f"{op}: backend did not answer within "
                                         f"{self._timeout:g} s") from None
            except (OSError, EOFError, asyncio.IncompleteReadError, _HttpProtocolError) as exc:
                kind = "protocol" if isinstance(exc, _HttpProtocolError) else "connection"
                raise BackendUnavailable(f"{op}: backend unreachable: {exc}") from None
            if status == 204:
                return None
            try:
                # decoded here: json.loads would first guess the encoding of bytes
                payload = json.loads(raw.decode("utf-8")) if raw else None
            except (UnicodeDecodeError, ValueError):
                kind = "protocol"
                raise BackendUnavailable(f"{op}: backend sent a non-JSON body "
                                         f"(HTTP {status})") from None
            if status >= 400:
                kind = "http_4xx" if status < 500 else "http_5xx"
                code = payload.get("error", "") if isinstance(payload, dict) else ""
                msg = payload.get("message", "") if isinstance(payload, dict) else ""
                raise BackendError(status, str(code) or "error", str(msg) or f"HTTP {status}")
            return payload
        finally:
            if self.metrics is not None:
                child = self._latency.get(op)
                if child is None:  # labels() costs a lock and a tuple per call: once per op
                    child = self._latency[op] = self.metrics.latency.labels(op=op)
                child.observe(time.monotonic() - start)
                if kind:
                    self.metrics.errors.labels(op=op, kind=kind).inc()

    async def _typed(self, op: str, cls: type[T], method: str, path: str,
                     body: Any = None, query: dict[str, str] | None = None) -> T:
        payload = await self._request(op, method, path, body, query)
        try:
            return cls.from_json(payload)  # type: ignore[attr-defined, no-any-return]
        except SchemaError as exc:
            if self.metrics is not None:
                self.metrics.errors.labels(op=op, kind="protocol").inc()
            raise BackendUnavailable(f"{op}: backend answer does not match schema: "
                                     f"{exc}") from None

    # --- directory -------------------------------------------------------------------
    async def get_user(self, oid: str) -> UserInfo:
        return await self._typed("get_user", UserInfo, "GET", f"/v1/users/{_q(oid)}")

    async def user_by_number(self, number: str) -> UserInfo | None:
        """The user a number belongs to (None: no user; a PSTN number). Answers, including
        "no user", are kept ``directory_ttl`` seconds: every outbound call asks, and
        number assignments change on an administrator's time scale, not a call's."""
        key = ("number", number)
        hit = self._directory.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        user = await self._maybe(self._typed("user_by_number", UserInfo, "GET", "/v1/users",
                                             query={"number": number}))
        if self._directory_ttl > 0:
            if len(self._directory) >= 10_000:
                self._directory.clear()
            self._directory[key] = (now + self._directory_ttl, user)
        return user  # type: ignore[no-any-return]

    async def user_by_upn(self, upn: str) -> UserInfo | None:
        return await self._maybe(self._typed("user_by_upn", UserInfo, "GET", "/v1/users",
                                             query={"upn": upn}))

    async def get_tenant(self, tenant_id: str) -> TenantInfo:
        return await self._typed("get_tenant", TenantInfo, "GET",
                                 f"/v1/tenants/{_q(tenant_id)}")

    @staticmethod
    async def _maybe(coro: Any) -> Any:
        try:
            return await coro
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise

    # --- endpoints -------------------------------------------------------------------
    async def add_endpoint(self, oid: str, endpoint: EndpointCreate) -> Endpoint:
        return await self._typed("add_endpoint", Endpoint, "POST",
                                 f"/v1/users/{_q(oid)}/endpoints", endpoint.to_json())

    async def remove_endpoint(self, oid: str, endpoint_id: str) -> None:
        await self._request("remove_endpoint", "DELETE",
                            f"/v1/users/{_q(oid)}/endpoints/{_q(endpoint_id)}")

    async def list_endpoints(self, oid: str) -> list[Endpoint]:
        payload = await self._request("list_endpoints", "GET", f"/v1/users/{_q(oid)}/endpoints")
        try:
            return [Endpoint.from_json(e) for e in payload["endpoints"]]
        except (SchemaError, KeyError, TypeError) as exc:
            raise BackendUnavailable(f"list_endpoints: bad answer: {exc}") from None

    async def set_dnd(self, oid: str, endpoint_id: str, dnd: bool) -> Endpoint:
        return await self._typed("set_dnd", Endpoint, "PUT",
                                 f"/v1/users/{_q(oid)}/endpoints/{_q(endpoint_id)}/dnd",
                                 Dnd(dnd=dnd).to_json())

    # --- calls -----------------------------------------------------------------------
    async def create_call(self, call: CallCreate) -> Call:
        return await self._typed("create_call", Call, "POST", "/v1/calls", call.to_json())

    async def get_call(self, call_id: str) -> Call:
        return await self._typed("get_call", Call, "GET", f"/v1/calls/{_q(call_id)}")

    async def answer(self, call_id: str, endpoint_id: str, sdp_answer: str) -> Call:
        return await self._typed("answer", Call, "POST", f"/v1/calls/{_q(call_id)}/answer",
                                 Answer(endpoint_id=endpoint_id,
                                        sdp_answer=sdp_answer).to_json())

    async def reoffer(self, call_id: str, endpoint_id: str, sdp_offer: str) -> str:
        """Re-offer a connected call's session (hold/resume/refresh); returns the SDP answer."""
        answer = await self._typed("reoffer", ReofferAnswer, "POST",
                                   f"/v1/calls/{_q(call_id)}/reoffer",
                                   Reoffer(endpoint_id=endpoint_id,
                                           sdp_offer=sdp_offer).to_json())
        return answer.sdp_answer

    async def reject(self, call_id: str, endpoint_id: str, reason: str = "declined") -> Call:
        return await self._typed("reject", Call, "POST", f"/v1/calls/{_q(call_id)}/reject",
                                 Reject(endpoint_id=endpoint_id, reason=reason).to_json())

    async def cancel(self, call_id: str, endpoint_id: str) -> Call:
        return await self._typed("cancel", Call, "POST", f"/v1/calls/{_q(call_id)}/cancel",
                                 EndpointAction(endpoint_id=endpoint_id).to_json())

    async def hangup(self, call_id: str, endpoint_id: str) -> Call:
        return await self._typed("hangup", Call, "POST", f"/v1/calls/{_q(call_id)}/hangup",
                                 EndpointAction(endpoint_id=endpoint_id).to_json())

    async def ringing(self, call_id: str, endpoint_id: str) -> Call:
        return await self._typed("ringing", Call, "POST", f"/v1/calls/{_q(call_id)}/ringing",
                                 EndpointAction(endpoint_id=endpoint_id).to_json())

    async def dtmf(self, call_id: str, endpoint_id: str, digits: str,
                   duration_ms: int = 100) -> Call:
        return await self._typed("dtmf", Call, "POST", f"/v1/calls/{_q(call_id)}/dtmf",
                                 Dtmf(endpoint_id=endpoint_id, digits=digits,
                                      duration_ms=duration_ms).to_json())

    # --- simulation (reference backend only) ------------------------------------------
    async def sim_client(self, user: str) -> Endpoint:
        return await self._typed("sim_client", Endpoint, "POST", "/v1/sim/clients",
                                 SimClientCreate(user=user).to_json())

    async def sim_call(self, from_user: str, to: str, from_endpoint: str = "") -> Call:
        return await self._typed("sim_call", Call, "POST", "/v1/sim/calls",
                                 SimCallCreate(from_user=from_user, to=to,
                                               from_endpoint=from_endpoint).to_json())

    async def sim_answer(self, endpoint_id: str, call_id: str) -> Call:
        return await self._sim_action("answer", endpoint_id, SimAction(call_id=call_id))

    async def sim_reject(self, endpoint_id: str, call_id: str, reason: str = "declined") -> Call:
        return await self._sim_action("reject", endpoint_id,
                                      SimAction(call_id=call_id, reason=reason))

    async def sim_hangup(self, endpoint_id: str, call_id: str) -> Call:
        return await self._sim_action("hangup", endpoint_id, SimAction(call_id=call_id))

    async def sim_dtmf(self, endpoint_id: str, call_id: str, digits: str) -> Call:
        return await self._sim_action("dtmf", endpoint_id,
                                      SimAction(call_id=call_id, digits=digits))

    async def sim_far_end_hangup(self, call_id: str) -> Call:
        return await self._typed("sim_far_hangup", Call, "POST",
                                 f"/v1/sim/calls/{_q(call_id)}/hangup", {})

    async def _sim_action(self, action: str, endpoint_id: str, body: SimAction) -> Call:
        return await self._typed(f"sim_{action}", Call, "POST",
                                 f"/v1/sim/clients/{_q(endpoint_id)}/{action}", body.to_json())

    # --- events ----------------------------------------------------------------------
    def events(self, users: tuple[str, ...] = (), since: str = "") -> EventStream:
        """The ``/v1/events`` stream: ``async for ev in client.events(): ...``.

        Reconnects with back-off and resumes after the last event seen; ``await
        stream.ready()`` returns once the backend confirmed the subscription.
        """
        return EventStream(self, users, since)

    def _ws_target(self, users: tuple[str, ...], since: str) -> str:
        """The request target of the event stream's upgrade request."""
        q: list[tuple[str, str]] = [("user", u) for u in users]
        if since:
            q.append(("since", since))
        return f"{self._prefix}/v1/events" + (("?" + urlencode(q)) if q else "")


class _HttpProtocolError(Exception):
    """The backend's answer is not HTTP/1.1 we can read."""


class _HttpConnection(asyncio.Protocol):
    """One persistent HTTP/1.1 connection, one request at a time. The answer is read
    from the bytes as they arrive (no stream reader and no await per header line): the
    request's future gets (status, keep-alive, body) once the answer is whole."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bool, bytes]] | None = None
        self._method = ""
        self._got_any = False  # an answer byte arrived for the request in flight
        self._head: tuple[int, bool, int, bool] | None = None  # status, keep, length, chunked
        self._body_at = 0
        self._chunks: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is None:
            return  # bytes nobody asked for: the connection is not reused (see idle())
        self._got_any = True
        try:
            done = self._parse()
        except _HttpProtocolError as exc:
            self._finish(exc=exc)
            return
        if done is not None:
            self._finish(result=done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None:
            return
        head = self._head
        if head is not None and head[2] < 0 and not head[3]:
            # a body delimited by the close (RFC 9112 §6.3)
            self._finish(result=(head[0], False, bytes(self._buf[self._body_at:])))
        elif not self._got_any:
            self._finish(exc=_StaleConnection())
        else:
            self._finish(exc=asyncio.IncompleteReadError(bytes(self._buf), None))

    # -- one request ---------------------------------------------------------------
    def idle(self) -> bool:
        """Fit to carry the next request: open, nothing unasked-for received."""
        return not self.closed and not self._buf and self.transport is not None \
            and not self.transport.is_closing()

    def request(self, wire: bytes, method: str, deadline: float
                ) -> asyncio.Future[tuple[int, bool, bytes]]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bool, bytes]] = loop.create_future()
        self._waiter = waiter
        self._method = method
        self._got_any = False
        self._head = None
        self._chunks = []
        # a deadline handle per request (cheaper than asyncio.timeout around the await)
        self._timer = loop.call_at(deadline, self._timed_out)
        assert self.transport is not None
        self.transport.write(wire)
        return waiter

    def _timed_out(self) -> None:
        self._timer = None
        self._finish(exc=TimeoutError())

    def _finish(self, *, result: tuple[int, bool, bytes] | None = None,
                exc: BaseException | None = None) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is not None or result is None or not result[1]:
            self.close()
        if waiter is None or waiter.done():
            return
        if exc is not None:
            waiter.set_exception(exc)
        elif result is not None:
            waiter.set_result(result)

    def _parse(self) -> tuple[int, bool, bytes] | None:
        """The whole answer once it is in the buffer (consumed), else None."""
        buf = self._buf
        head = self._head
        if head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                # the header section ends with an empty line (RFC 9112 §2.1)
                if len(buf) > 65536:
                    raise _HttpProtocolError("response header section too large")
                return None
            head = self._head = _read_head(bytes(buf[:end + 2]))
            self._body_at = end + 4
        status, keep, length, chunked = head
        at = self._body_at
        if self._method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            del buf[:at]
            return status, keep, b""
        if chunked:
            while True:
                eol = buf.find(b"\r\n", at)
                if eol < 0:
                    return None
                try:
                    size = int(bytes(buf[at:eol]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _HttpProtocolError("bad chunk size") from None
                if size == 0:
                    # trailer fields (RFC 9112 §7.1.2), up to the empty line
                    if buf.startswith(b"\r\n", eol + 2):
                        del buf[:eol + 4]
                        return status, keep, b"".join(self._chunks)
                    end = buf.find(b"\r\n\r\n", eol + 2)
                    if end < 0:
                        return None
                    del buf[:end + 4]
                    return status, keep, b"".join(self._chunks)
                if len(buf) < eol + 2 + size + 2:
                    return None
                self._chunks.append(bytes(buf[eol + 2:eol + 2 + size]))
                at = self._body_at = eol + 2 + size + 2
        if length >= 0:
            if len(buf) < at + length:
                return None
            body = bytes(buf[at:at + length])
            del buf[:at + length]
            return status, keep, body
        return None  # delimited by the close: connection_lost finishes it

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _read_head(head: bytes) -> tuple[int, bool, int, bool]:
    """(status, keep-alive, Content-Length or -1, chunked) of a response header section
    (status line and fields, each ending in CRLF)."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _HttpProtocolError(f"bad status line {line[:60]!r}")
    status = int(parts[1])
    keep = parts[0] == b"HTTP/1.1"
    length = -1
    chunked = False
    for h in rest.split(b"\r\n"):
        name, sep, value = h.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise _HttpProtocolError("bad Content-Length") from None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            v = value.strip().lower()
            keep = keep and v != b"close" or v == b"keep-alive"
    if length < 0 and not chunked:
        keep = False  # the body runs to the close
    return status, keep, length, chunked


class _HttpPool:
    """Persistent HTTP/1.1 connections to one origin: one request at a time on each,
    idle ones kept for reuse (at most ``max_idle``), as many open as requests in flight."""

    def __init__(self, host: str, port: int, tls: std_ssl.SSLContext | None, *,
                 max_idle: int) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.max_idle = max_idle
        self._idle: list[_HttpConnection] = []
        self._busy: set[_HttpConnection] = set()

    async def _open(self) -> _HttpConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            _HttpConnection, self.host, self.port, ssl=self.tls,
            server_hostname=self.host if self.tls is not None else None)
        return conn

    async def exchange(self, wire: bytes, method: str, timeout: float) -> tuple[int, bytes]:
        """Send one request, return (status, body); TimeoutError after ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._idle:
            conn = self._idle.pop()
            if not conn.idle():
                conn.close()
                continue
            try:
                return await self._on(conn, wire, method, deadline)
            except _StaleConnection:
                continue  # closed by the server while idle: nothing was processed
        async with asyncio.timeout_at(deadline):  # only a new connection's set-up
            conn = await self._open()
        try:
            return await self._on(conn, wire, method, deadline)
        except _StaleConnection:
            raise ConnectionError("connection closed before any answer") from None

    async def _on(self, conn: _HttpConnection, wire: bytes, method: str,
                  deadline: float) -> tuple[int, bytes]:
        self._busy.add(conn)
        keep = False
        try:
            status, keep, body = await conn.request(wire, method, deadline)
            return status, body
        finally:
            self._busy.discard(conn)
            if keep and len(self._idle) < self.max_idle and conn.idle():
                self._idle.append(conn)
            else:
                conn.close()

    async def close(self) -> None:
        conns = self._idle + list(self._busy)
        self._idle.clear()
        self._busy.clear()
        for conn in conns:
            conn.close()


class _StaleConnection(Exception):
    """A reused connection was closed before the request got any answer."""


def _q(v: str) -> str:
    return quote(v, safe="")


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_WS_MAX_MESSAGE = 16 * 2**20
_WS_PING_INTERVAL = 20.0  # seconds between our keep-alive pings
_WS_PING_TIMEOUT = 10.0  # no pong by then: the connection is dead


class _WebSocketError(Exception):
    """The server broke RFC 6455 (handshake or framing)."""


class _EventSocket(asyncio.Protocol):
    """The client side of one ``/v1/events`` WebSocket (RFC 6455), on the loop's own
    transport: the events are small text messages, several per call the gateway bridges,
    and a generic WebSocket stack's per-frame layers (Deferreds, observers, logging
    calls) cost more than reading them. The stream is one-way: we answer pings, send
    our own keep-alive pings and close frames, nothing else."""

    def __init__(self, stream: EventStream, key: bytes) -> None:
        self.stream = stream
        self.key = key
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._open = False
        self._message: list[bytes] = []
        self._message_size = 0
        self._closing = False
        self._close_code: int | None = None
        self._close_reason = ""
        self._ping: asyncio.TimerHandle | None = None
        self._pong_deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        try:
            if not self._open:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        raise _WebSocketError("handshake answer too large")
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._check_handshake(head)
                self._open = True
                self._arm_ping()
                if not self.handshake.done():
                    self.handshake.set_result(None)
            self._frames()
        except _WebSocketError as exc:
            self._fail(str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(
                f"connection closed during the handshake{f': {exc}' if exc else ''}"))
        code = self._close_code if self._close_code is not None else 1006
        self.stream._closed(self, code, self._close_reason or (str(exc) if exc else ""))

    # -- handshake (RFC 6455 §4.1) --------------------------------------------------
    def _check_handshake(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or parts[1] != b"101":
            status = parts[1].decode("latin-1") if len(parts) > 1 else "?"
            phrase = parts[2].decode("latin-1") if len(parts) > 2 else ""
            raise _WebSocketError(f"handshake refused: HTTP {status} {phrase}".rstrip())
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest())
        if fields.get(b"sec-websocket-accept") != accept:
            raise _WebSocketError("handshake: wrong Sec-WebSocket-Accept")
        if fields.get(b"upgrade", b"").lower() != b"websocket":
            raise _WebSocketError("handshake: no Upgrade: websocket")

    # -- frames (RFC 6455 §5) ---------------------------------------------------------
    def _frames(self) -> None:
        buf = self._buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            if b0 & 0x70:
                raise _WebSocketError("reserved bits set (no extension was negotiated)")
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            pos = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length = int.from_bytes(buf[2:10], "big")
                pos = 10
            masked = b1 & 0x80
            if masked:  # §5.1: servers do not mask, but a masked frame is still readable
                pos += 4
            if length > _WS_MAX_MESSAGE:
                raise _WebSocketError("frame too large")
            if len(buf) < pos + length:
                return
            payload = bytes(buf[pos:pos + length])
            if masked:
                payload = _unmask(bytes(buf[pos - 4:pos]), payload)
            del buf[:pos + length]
            self._frame(bool(b0 & 0x80), opcode, payload)
            if self.transport is None or self.transport.is_closing():
                return

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode >= 8:  # control frames (§5.5): never fragmented, at most 125 bytes
            if not fin or len(payload) > 125:
                raise _WebSocketError("bad control frame")
            if opcode == 8:
                self._on_close(payload)
            elif opcode == 9:
                self._send(0xA, payload)
            elif opcode == 0xA:
                if self._pong_deadline is not None:
                    self._pong_deadline.cancel()
                    self._pong_deadline = None
            else:
                raise _WebSocketError(f"unknown opcode {opcode}")
            return
        if opcode == 0:
            if not self._message:
                raise _WebSocketError("continuation without a message")
        elif opcode in (1, 2):
            if self._message:
                raise _WebSocketError("new message inside a fragmented one")
        else:
            raise _WebSocketError(f"unknown opcode {opcode}")
        if fin and not self._message:
            self.stream._message(payload)
            return
        self._message.append(payload)
        self._message_size += len(payload)
        if self._message_size > _WS_MAX_MESSAGE:
            raise _WebSocketError("message too large")
        if fin:
            whole = b"".join(self._message)
            self._message.clear()
            self._message_size = 0
            self.stream._message(whole)

    def _on_close(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        self._close_code = code
        self._close_reason = payload[2:].decode("utf-8", "replace")
        if not self._closing:
            self._closing = True
            self._send(8, payload[:2])  # §5.5.1: echo the status code
        if self.transport is not None:
            self.transport.close()

    def _send(self, opcode: int, payload: bytes) -> None:
        """One masked frame (§5.3: a client masks every frame)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        mask = os.urandom(4)
        transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + mask
                        + _unmask(mask, payload))

    def close(self, code: int = 1000) -> None:
        """Send our close frame and close the connection once it is written (we are
        leaving: the server's answering close is not waited for)."""
        if self.transport is None:
            return
        if not self._closing:
            self._closing = True
            self._send(8, code.to_bytes(2, "big"))
        self.transport.close()

    def _fail(self, why: str) -> None:
        self.stream.last_error = why
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(why))
        self._close_code = 1002 if self._open else None
        self._close_reason = why
        if self.transport is not None:
            self.transport.abort()

    # -- keep-alive (the autobahn options we used: ping every 20 s, 10 s for the pong) --
    def _arm_ping(self) -> None:
        loop = asyncio.get_running_loop()
        self._ping = loop.call_later(_WS_PING_INTERVAL, self._send_ping)

    def _send_ping(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._send(9, os.urandom(8))
        if self._pong_deadline is None:
            loop = asyncio.get_running_loop()
            self._pong_deadline = loop.call_later(_WS_PING_TIMEOUT, self._pong_missing)
        self._arm_ping()

    def _pong_missing(self) -> None:
        self._pong_deadline = None
        self._close_reason = "no pong within the keep-alive timeout"
        if self.transport is not None:
            self.transport.abort()

    def _stop_timers(self) -> None:
        for handle in (self._ping, self._pong_deadline):
            if handle is not None:
                handle.cancel()
        self._ping = self._pong_deadline = None


def _unmask(mask: bytes, payload: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class EventStream:
    """An ``AsyncIterator[Event]`` over the backend WebSocket, reconnecting on loss."""

    def __init__(self, client: BackendClient, users: tuple[str, ...], since: str) -> None:
        self._client = client
        self._users = users
        self._last = since
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._proto: _EventSocket | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._deliver: Callable[[Event], None] | None = None
        self.last_error = ""

    def deliver_to(self, callback: Callable[[Event], None]) -> None:
        """Hand every event to ``callback`` as it is read, instead of queueing it for
        ``async for`` / ``next()``: a consumer that only routes events (the B2BUA) saves
        a queue hand-off and a loop turn per event. Starts the stream."""
        self._deliver = callback
        self._start()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        self._start()
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def ready(self, timeout: float = 10.0) -> None:
        """Wait until the backend acknowledged the subscription (``stream.ready``)."""
        self._start()
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def next(self, timeout: float = 10.0) -> Event:
        """The next event, or TimeoutError."""
        self._start()
        ev = await asyncio.wait_for(self._queue.get(), timeout)
        if ev is None:
            raise EOFError("event stream closed")
        return ev

    async def close(self) -> None:
        self._closing = True
        proto = self._proto
        if proto is not None:
            proto.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._queue.put_nowait(None)

    async def _run(self) -> None:
        delay = 0.1
        first = True
        while not self._closing:
            if not first and self._client.metrics is not None:
                self._client.metrics.reconnects.inc()
            first = False
            self._disconnected.clear()
            try:
                await self._connect()
                await self._disconnected.wait()
                if self._ready.is_set():
                    delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = str(exc)
                log.warning("backend event stream: %s", exc)
            self._ready.clear()
            if self._closing:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _connect(self) -> None:
        """Open the WebSocket (RFC 6455 §4.1) and wait for the server's handshake."""
        c = self._client
        key = base64.b64encode(os.urandom(16))
        loop = asyncio.get_running_loop()
        proto = _EventSocket(self, key)
        request = (f"GET {c._ws_target(self._users, self._last)} HTTP/1.1\r\n"
                   f"Host: {c._netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Authorization: Bearer {c._token}\r\n\r\n").encode("latin-1")
        try:
            async with asyncio.timeout(c._timeout):
                await loop.create_connection(
                    lambda: proto, c._host, c._port, ssl=c._tls,
                    server_hostname=c._host if c._tls is not None else None)
                self._proto = proto
                assert proto.transport is not None
                proto.transport.write(request)
                await proto.handshake
        except BaseException:
            self._proto = None  # its connection_lost is not a disconnection of ours
            if proto.transport is not None:
                proto.transport.abort()
            raise

    def _message(self, payload: bytes) -> None:
        try:
            obj = json.loads(payload.decode("utf-8"))
            if isinstance(obj, dict) and obj.get("type") == "stream.ready":
                if not self._last:
                    self._last = str(obj.get("id", ""))
                self._ready.set()
                return
            ev = Event.from_json(obj)
        except (ValueError, UnicodeDecodeError) as exc:
            if self._client.metrics is not None:
                self._client.metrics.errors.labels(op="events", kind="protocol").inc()
            log.warning("backend event stream: dropped a malformed event: %s", exc)
            return
        if ev.id:
            self._last = ev.id
        if self._client.metrics is not None:
            self._client.metrics.events.inc()
        deliver = self._deliver
        if deliver is None:
            self._queue.put_nowait(ev)
            return
        try:
            deliver(ev)
        except Exception:  # noqa: BLE001 - one bad event must not end the stream
            log.exception("handling backend event %s failed", ev.type)

    def _closed(self, proto: _EventSocket, code: int | None, reason: str | None) -> None:
        if proto is not self._proto:
            return  # a connection given up on already (failed handshake)
        self._proto = None
        if code != 1000:
            self.last_error = f"closed {code} {reason or ''}".strip()
        self._disconnected.set()
