"""The backend event stream's WebSocket client (RFC 6455) against a raw loopback server
that frames its messages as servers may: fragmented, with a ping between fragments, with
16-bit and 64-bit lengths; then it closes. Events arrive whole and in order, the ping is
answered with a pong carrying its payload, the close is echoed; a server that breaks the
framing rules is disconnected, and the stream reconnects."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred

from gateway.backend.client import BackendClient, EventStream
from gateway.backend.schema import SCHEMA_VERSION

pytestmark = pytest.mark.integration

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def aio(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A server frame (unmasked, RFC 6455 §5.2) with the shortest length encoding."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One frame from the client, which must mask it (§5.3)."""
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames are masked"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4)
    data = await reader.readexactly(n)
    return b0 & 0x0F, bytes(c ^ mask[i % 4] for i, c in enumerate(data))


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    m = re.search(rb"Sec-WebSocket-Key: (\S+)", head)
    assert m is not None and head.startswith(b"GET /v1/events")
    key = base64.b64encode(hashlib.sha1(m.group(1) + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + key + b"\r\n\r\n")
    writer.write(frame(1, json.dumps({"type": "stream.ready", "id": "0"}).encode()))
    return head


@asynccontextmanager
async def stream_from(server_side: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                            Awaitable[None]]) -> AsyncIterator[EventStream]:
    """An event stream of a client of a loopback server answering with ``server_side``."""
    server = await asyncio.start_server(server_side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = BackendClient(f"http://127.0.0.1:{port}", "tok", registry=CollectorRegistry(),
                           timeout=5.0)
    stream = client.events(("user-1",))
    try:
        yield stream
    finally:
        await stream.close()
        await client.close()
        server.close()


def event(i: int, sdp: str = "") -> bytes:
    obj: dict[str, Any] = {"v": SCHEMA_VERSION, "type": "call.ringing", "id": str(i),
                           "call_id": f"call-{i}"}
    if sdp:
        obj["sdp"] = sdp
    return json.dumps(obj).encode()


@pytest_twisted.ensureDeferred
async def test_fragments_pings_long_frames_and_close() -> None:
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def server_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await accept(reader, writer)
            first = event(1)
            # a text message in three fragments, a ping between the first two
            writer.write(frame(1, first[:10], fin=False) + frame(9, b"are you there")
                         + frame(0, first[10:20], fin=False) + frame(0, first[20:]))
            writer.write(frame(1, event(2, "v=0\r\n" + "a" * 300)))  # 16-bit length
            writer.write(frame(1, event(3, "b" * 65_000 + "\r\n")))  # 64-bit length
            seen["pong"] = await read_client_frame(reader)
            writer.write(frame(8, (1000).to_bytes(2, "big") + b"bye"))
            seen["close"] = await read_client_frame(reader)
        finally:
            writer.close()
            done.set()

    async def scenario() -> None:
        async with stream_from(server_side) as stream:
            await stream.ready(5)
            got = [await stream.next(5) for _ in range(3)]
            assert [(e.id, e.call_id) for e in got] == [("1", "call-1"), ("2", "call-2"),
                                                        ("3", "call-3")]
            assert len(got[1].sdp) == 305 and len(got[2].sdp) == 65_002
            await asyncio.wait_for(done.wait(), 5)
            assert seen["pong"] == (0xA, b"are you there")
            assert seen["close"] == (8, (1000).to_bytes(2, "big"))
    await aio(scenario())


@pytest_twisted.ensureDeferred
async def test_framing_error_disconnects_and_the_stream_reconnects() -> None:
    """A frame with reserved bits set (no extension negotiated, §5.2) ends the connection;
    the stream connects again, resuming after the last event it read."""
    heads: list[bytes] = []

    async def server_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heads.append(await accept(reader, writer))
            if len(heads) == 1:
                writer.write(frame(1, event(7)))
                writer.write(bytes([0xC1, 2]) + b"{}")  # RSV1 set
                await reader.read()  # until the client drops us
            else:
                writer.write(frame(1, event(8)))
                await reader.read()
        finally:
            writer.close()

    async def scenario() -> None:
        async with stream_from(server_side) as stream:
            assert (await stream.next(5)).id == "7"
            assert (await stream.next(5)).id == "8"
            assert len(heads) == 2 and b"since=7" in heads[1].split(b"\r\n")[0]
            assert "reserved bits" in stream.last_error
    await aio(scenario())
