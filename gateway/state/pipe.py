"""A pipelined RESP connection for the REGISTER hot path.

redis-py's asyncio client checks out a pooled connection, wraps every command
in retry, observability and deprecation-check layers, and holds the
connection for the whole round trip: under load the Python around each
command costs more than Redis does, and a full pool stalls every request
behind it. Redis answers commands on one connection in order, so this client
writes each command at once on a single shared connection and resolves the
callers' futures as the replies arrive (parsed by hiredis): many requests in
flight and no lock per command. Commands issued during one event-loop turn
leave in one ``write`` (a burst of REGISTERs costs one syscall here and one
read in the server), and one deadline covers the whole pipe: when the oldest
command has waited ``timeout`` seconds every waiting caller gets
``TimeoutError`` and the connection is dropped (the next command reconnects),
so callers need no per-command timer.

It speaks only what the registrar's hot path needs (``EVALSHA``, ``SCRIPT
LOAD``, ``HGETALL``) over ``redis://`` or ``unix://``; for any other URL
scheme ``RespPipe.for_client`` returns None and callers keep using redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


def _pack(args: tuple[Any, ...]) -> bytes:
    try:
        return hiredis.pack_command(args)  # type: ignore[no-any-return]  # C, ~4x faster
    except (UnicodeEncodeError, TypeError):
        return _pack_py(args)  # text that came in undecodable (surrogate escapes)


def _pack_py(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode("utf-8", "surrogateescape")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def replies(futs: Sequence[Awaitable[Any]]) -> list[Any]:
    """The replies of commands sent together, in order. They arrive in order on one
    connection, so awaiting them one by one suspends about once (gather would add a
    future and a callback per command); every one is retrieved, the first error raised."""
    out: list[Any] = []
    error: BaseException | None = None
    for fut in futs:
        try:
            out.append(await fut)
        except Exception as e:  # noqa: BLE001 - raised below, after the others are read
            error = error or e
            out.append(e)
    if error is not None:
        raise error
    return out


async def run_commands(pipe: RespPipe | None, redis: Any, cmds: Sequence[tuple[Any, ...]],
                       ) -> list[Any]:
    """``cmds`` in one round trip: over ``pipe`` where the store has one, else a redis-py
    pipeline on ``redis`` (Sentinel, TLS)."""
    if pipe is not None:
        return await pipe.commands(cmds)
    rp = redis.pipeline(transaction=False)
    for c in cmds:
        rp.execute_command(*c)
    return list(await rp.execute())


class LazyPipe:
    """The pipelined connection to the server of a redis-py client, opened on first use
    (short-lived users such as admin commands never open one) and again when the client
    is replaced; None where the store is not plain Redis/Valkey (Sentinel, TLS)."""

    def __init__(self, timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._for: Any = None
        self._pipe: RespPipe | None = None

    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = value
        if self._pipe is not None:
            self._pipe.timeout = value

    def get(self, redis: Any) -> RespPipe | None:
        if self._for is not redis:
            self._for = redis
            self._pipe = RespPipe.for_client(redis, self._timeout)
        return self._pipe

    async def close(self) -> None:
        """Close the connection, if one was opened (idempotent)."""
        pipe, self._pipe, self._for = self._pipe, None, None
        if pipe is not None:
            await pipe.close()


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: RespPipe) -> None:
        self.pipe = pipe
        self.reader = hiredis.Reader()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pipe._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.pipe._waiting
        sent = self.pipe._sent_at
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = waiting.popleft()
            sent.popleft()
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                fut.set_exception(NoScriptError(text) if text.startswith("NOSCRIPT")
                                  else ResponseError(text))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        # a connection the watchdog dropped has failed its callers already, and a newer
        # one may be carrying commands by now
        if self.pipe._transport is self.transport:
            self.pipe._lost(exc)


class RespPipe:
    """One pipelined connection; reconnects on the next command after a loss."""

    def __init__(self, *, host: str | None = None, port: int = 6379, path: str | None = None,
                 password: str | None = None, username: str | None = None, db: int = 0,
                 timeout: float = 2.0) -> None:
        self.host, self.port, self.path = host, port, path
        self.password, self.username, self.db = password, username, db
        self.timeout = timeout
        self._transport: asyncio.WriteTransport | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._sent_at: collections.deque[float] = collections.deque()
        self._connecting: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None

    @classmethod
    def for_client(cls, redis: Any, timeout: float = 2.0) -> RespPipe | None:
        """A pipe to the same server as a redis-py client, or None if it is not plain."""
        pool = getattr(redis, "connection_pool", None)
        kw = getattr(pool, "connection_kwargs", None)
        if not isinstance(kw, dict) or kw.get("ssl") or type(redis).__name__ != "Redis":
            return None
        cls_name = getattr(getattr(pool, "connection_class", None), "__name__", "")
        password, username = kw.get("password"), kw.get("username")
        db = int(kw.get("db") or 0)
        if cls_name == "UnixDomainSocketConnection" and kw.get("path"):
            return cls(path=str(kw["path"]), password=password, username=username, db=db,
                       timeout=timeout)
        if cls_name == "Connection":
            return cls(host=str(kw.get("host") or "localhost"), port=int(kw.get("port") or 6379),
                       password=password, username=username, db=db, timeout=timeout)
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
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting.append(fut)
        self._sent_at.append(time.monotonic())
        if not self._out:
            loop.call_soon(self._write_out)
        self._out.append(_pack(args))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout / 2, self._watch)
        return fut

    def _write_out(self) -> None:
        out, self._out = self._out, []
        if not out:
            return  # failed and cleared since this write was scheduled
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(out[0] if len(out) == 1 else b"".join(out))
        # else: connection_lost has failed (or will fail) every waiting future

    def _watch(self) -> None:
        self._watchdog = None
        if not self._sent_at:
            return
        loop = asyncio.get_running_loop()
        if time.monotonic() - self._sent_at[0] < self.timeout:
            self._watchdog = loop.call_later(self.timeout / 2, self._watch)
            return
        # Replies come in order: the oldest being late means the server (or the link) is
        # stuck, and everything queued behind it with it.
        self._fail_all(TimeoutError(f"store did not answer within {self.timeout:g}s"))
        t, self._transport = self._transport, None
        if t is not None:
            t.abort()

    def send_now(self, *args: Any) -> asyncio.Future[Any] | None:
        """Queue a command without awaiting; None when the connection is not up yet."""
        if self._transport is None or self._transport.is_closing():
            return None
        return self._send(args)

    async def execute(self, *args: Any) -> Any:
        if self._transport is None or self._transport.is_closing():
            await self._ensure()
        return await self._send(args)

    async def commands(self, cmds: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``cmds`` in one write, in order (no MULTI); their raw replies. Every reply
        is read before the first error reply is raised."""
        if not cmds:
            return []
        first = self.send_now(*cmds[0])
        if first is None:  # not connected yet: the first command connects
            return [await self.execute(*cmds[0]), *(await self.commands(cmds[1:]))]
        return await replies([first, *(self._send(c) for c in cmds[1:])])

    def _fail_all(self, err: Exception) -> None:
        self._out.clear()
        self._sent_at.clear()
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(err)

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail_all(RedisConnectionError(f"store connection lost: {exc or 'closed'}"))

    async def close(self) -> None:
        t, self._transport = self._transport, None
        if t is not None:
            t.close()
