"""The everyday REST requests of the reference backend, served without twisted.web's
per-request machinery; everything else is handed to twisted.web unchanged.

A bridged call costs the backend four REST requests, and twisted.web spends more on
each (line-by-line parsing, a ``Request`` with its header objects, a timeout reset per
read, a producer and a deferred write of the response) than the call engine does. This
protocol takes the plain case, RFC 9112 HTTP/1.1 with a ``Content-Length`` body (or
none) on a persistent connection, parses it in one pass and writes each answer in one
``write``. The first request that is anything else (HTTP/1.0, chunked, ``Expect``, an
upgrade such as the ``/v1/events`` WebSocket, an absolute target, a malformed head)
hands the connection, with the bytes not yet consumed, to the twisted.web channel,
which serves it from then on exactly as it serves every connection without this front.

Requests on one connection are answered in order (RFC 9112 §9.3.2): the next is parsed
once the current one is answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.protocol import Factory, Protocol
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.server import Site

log = logging.getLogger("sipgw.backend")

MAX_HEAD = 16 * 1024  # a longer head goes to twisted.web (which answers it as it does)
MAX_BODY = 1024 * 1024
_METHODS = frozenset({b"GET", b"POST", b"PUT", b"DELETE"})
# headers that change how the message is framed or what the connection becomes
_HAND_OFF = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


class FastRestProtocol(Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, factory: FastRestFactory) -> None:
        self.factory = factory
        self._buf = b""
        self._busy = False
        self._gone = False
        self._paused = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self._buf = self._buf + data if self._buf else data
        if not self._busy:
            self._next()
        elif len(self._buf) > MAX_HEAD + MAX_BODY and not self._paused:
            # a client pipelining faster than it is answered waits in its own buffers
            self._paused = True
            transport: Any = self.transport
            transport.pauseProducing()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted's name
        self._gone = True

    def _next(self) -> None:
        buf = self._buf
        if not buf:
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._hand_off()
            return
        request = self._parse(buf[:end])
        if request is None:
            self._hand_off()
            return
        method, target, auth, length, close = request
        start = end + 4
        if len(buf) < start + length:
            return  # the body is still on its way
        body = buf[start:start + length]
        self._buf = buf[start + length:]
        self._busy = True
        path, _, query = target.partition(b"?")
        args = parse_qs(query, keep_blank_values=True) if query else {}
        fut = asyncio.ensure_future(self._serve(method, path, auth, body, args, close))
        fut.add_done_callback(_report)

    def _parse(self, head: bytes) -> tuple[str, bytes, bytes | None, int, bool] | None:
        """(method, target, Authorization, body length, close after) of a plain request,
        or None when twisted.web should have it."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in _METHODS:
            return None
        target = parts[1]
        if not target.startswith(b"/") or target.partition(b"?")[0] == b"/v1/events":
            return None
        auth: bytes | None = None
        length = 0
        seen_length = False
        close = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                return None  # RFC 9112 §5.1: no whitespace before the colon
            name = name.lower()
            value = value.strip()
            if name == b"content-length":
                if seen_length or not value.isdigit() or int(value) > MAX_BODY:
                    return None
                seen_length = True
                length = int(value)
            elif name == b"authorization":
                if auth is not None:
                    return None
                auth = value
            elif name == b"connection":
                close = b"close" in value.lower()
            elif name in _HAND_OFF:
                return None
        return parts[0].decode("ascii"), target, auth, length, close

    async def _serve(self, method: str, path: bytes, auth: bytes | None, body: bytes,
                     args: dict[bytes, list[bytes]], close: bool) -> None:
        try:
            await self._answer(method, path, auth, body, args, close)
        except BaseException:
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            raise

    async def _answer(self, method: str, path: bytes, auth: bytes | None, body: bytes,
                      args: dict[bytes, list[bytes]], close: bool) -> None:
        status, answer, allow = await self.factory.rest.dispatch(method, path, auth, body,
                                                                 args)
        if self._gone:
            return
        reason = RESPONSES.get(status, b"Unknown")
        head = [b"HTTP/1.1 %d %s\r\nDate: %s\r\n" % (status, reason, _date())]
        if status == 401:
            head.append(b'WWW-Authenticate: Bearer realm="sipgw-backend"\r\n')
        if allow:
            head.append(b"Allow: " + allow.encode("ascii") + b"\r\n")
        if close:
            head.append(b"Connection: close\r\n")
        data = b""
        if answer is not None:
            data = json.dumps(answer, separators=(",", ":")).encode("utf-8")
            head.append(b"Content-Type: application/json\r\n")
        if status != 204:  # RFC 9110 §8.6: no Content-Length in a 204
            head.append(b"Content-Length: %d\r\n" % len(data))
        head.append(b"\r\n")
        transport: Any = self.transport
        transport.write(b"".join(head) + data)
        if close:
            transport.loseConnection()
            return
        self._busy = False
        if self._paused:
            self._paused = False
            transport.resumeProducing()
        self._next()

    def _hand_off(self) -> None:
        """From now on twisted.web serves this connection, starting with what is buffered."""
        transport: Any = self.transport
        channel = self.factory.site.buildProtocol(transport.getPeer())
        transport.protocol = channel  # where the reactor delivers reads and the loss
        channel.makeConnection(transport)
        buf, self._buf = self._buf, b""
        if buf:
            channel.dataReceived(buf)


_date_cache: list[Any] = [0, b""]


def _date() -> bytes:
    """RFC 9110 §6.6.1 Date, formatted once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, datetimeToString(now)
    return bytes(_date_cache[1])


def _report(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        exc = fut.exception()
        log.error("backend request crashed: %r", exc, exc_info=exc)


class FastRestFactory(Factory):
    """Listens in place of ``site``; ``rest`` answers the plain requests."""

    def __init__(self, site: Site, rest: Any) -> None:
        self.site = site
        self.rest = rest

    def buildProtocol(self, addr: Any) -> FastRestProtocol:  # noqa: N802 - Twisted's name
        return FastRestProtocol(self)

    def startFactory(self) -> None:  # noqa: N802 - Twisted's name
        self.site.doStart()

    def stopFactory(self) -> None:  # noqa: N802 - Twisted's name
        self.site.doStop()
