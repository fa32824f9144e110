"""A pipelined RESP connection for the REGISTER hot path.

redis-py's asyncio client checks out a pooled connection, wraps every command
in retry, observability and deprecation-check layers, and holds the
connection for the whole round trip: under load the Python around each
command costs more than Redis does, and a full pool stalls every request
behind it. Redis answers commands on one connection in order, so this client
writes each command at once on a single shared connection and resolves the
callers' futures as the replies arrive (parsed by hiredis): many requests in
flight, one ``write`` and no lock per command.

It speaks only what the registrar's hot path needs (``EVALSHA``, ``SCRIPT
LOAD``, ``HGETALL``) over ``redis://`` or ``unix://``; for any other URL
scheme ``RespPipe.for_client`` returns None and callers keep using redis-py.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


def _pack(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode("utf-8", "surrogateescape")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: RespPipe) -> None:
        self.pipe = pipe
        self.reader = hiredis.Reader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pipe._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.pipe._waiting
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = waiting.popleft()
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                fut.set_exception(NoScriptError(text) if text.startswith("NOSCRIPT")
                                  else ResponseError(text))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._lost(exc)


class RespPipe:
    """One pipelined connection; reconnects on the next command after a loss."""

    def __init__(self, *, host: str | None = None, port: int = 6379, path: str | None = None,
                 password: str | None = None, username: str | None = None, db: int = 0) -> None:
        self.host, self.port, self.path = host, port, path
        self.password, self.username, self.db = password, username, db
        self._transport: asyncio.WriteTransport | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._connecting: asyncio.Future[None] | None = None

    @classmethod
    def for_client(cls, redis: Any) -> RespPipe | None:
        """A pipe to the same server as a redis-py client, or None if it is not plain."""
        pool = getattr(redis, "connection_pool", None)
        kw = getattr(pool, "connection_kwargs", None)
        if not isinstance(kw, dict) or kw.get("ssl") or type(redis).__name__ != "Redis":
            return None
        cls_name = getattr(getattr(pool, "connection_class", None), "__name__", "")
        password, username = kw.get("password"), kw.get("username")
        db = int(kw.get("db") or 0)
        if cls_name == "UnixDomainSocketConnection" and kw.get("path"):
            return cls(path=str(kw["path"]), password=password, username=username, db=db)
        if cls_name == "Connection":
            return cls(host=str(kw.get("host") or "localhost"), port=int(kw.get("port") or 6379),
                       password=password, username=username, db=db)
        return None

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self.path is not None:
            await loop.create_unix_connection(lambda: _Protocol(self), self.path)
        else:
            await loop.create_connection(lambda: _Protocol(self), self.host or "localhost",
                                         self.port)
        setup: list[tuple[Any, ...]] = []
        if self.password:
            setup.append(("AUTH", self.username, self.password) if self.username
                         else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        for cmd in setup:
            await self._send(cmd)

    async def _ensure(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            return
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        fut = self._connecting
        try:
            await asyncio.shield(fut)
        except OSError as e:
            raise RedisConnectionError(f"cannot connect to the store: {e}") from None
        finally:
            if self._connecting is fut and fut.done():
                self._connecting = None

    def _send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        assert self._transport is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        self._transport.write(_pack(args))
        return fut

    async def execute(self, *args: Any) -> Any:
        if self._transport is None or self._transport.is_closing():
            await self._ensure()
        return await self._send(args)

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        err = RedisConnectionError(f"store connection lost: {exc or 'closed'}")
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(err)

    async def close(self) -> None:
        t, self._transport = self._transport, None
        if t is not None:
            t.close()
