"""RespPipe against a real Valkey: commands in one write come back in order, an error
reply is raised only after every reply is read (the connection stays in step), a pipe
not yet connected connects on first use, and a store that stops answering fails every
waiting command after the pipe's deadline instead of hanging."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.state.pipe import RespPipe, run_commands
from integration.identity.helpers import aio


@aio
async def test_commands_in_order_errors_after_all_replies(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    pipe = RespPipe.for_client(client, timeout=2.0)
    assert pipe is not None
    try:
        # not connected yet: the first command connects, the rest follow
        assert await pipe.commands([("SET", "k1", "a"), ("SET", "k2", "b"),
                                    ("MGET", "k1", "k2")]) == [b"OK", b"OK", [b"a", b"b"]]
        with pytest.raises(ResponseError):
            await pipe.commands([("INCR", "n"), ("HGET", "k1", "f"), ("INCR", "n")])
        # both INCRs ran and the pipe is still in step with the server
        assert await pipe.commands([("GET", "n"), ("PING",)]) == [b"2", b"PONG"]
        # the redis-py fallback gives the same replies
        assert await run_commands(None, client, [("GET", "k1"), ("GET", "n")]) == \
            await run_commands(pipe, client, [("GET", "k1"), ("GET", "n")])
    finally:
        await pipe.close()
        await client.aclose()


@aio
async def test_a_silent_store_fails_waiting_commands_after_the_deadline(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    pipe = RespPipe.for_client(client, timeout=0.3)
    assert pipe is not None
    try:
        await pipe.execute("PING")
        loop = asyncio.get_running_loop()
        started = loop.time()
        # BLPOP on an empty list holds the connection: everything behind it waits
        blocked = pipe.send_now("BLPOP", "empty-list", "5")
        behind = pipe.send_now("PING")
        assert blocked is not None and behind is not None
        for fut in (blocked, behind):
            with pytest.raises(TimeoutError):
                await fut
        assert loop.time() - started < 2.0
        assert await pipe.execute("PING") == b"PONG"  # a new connection serves again
    finally:
        await pipe.close()
        await client.aclose()
