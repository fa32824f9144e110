"""The backend client's HTTP/1.1 connection pool against a raw loopback server that
behaves as servers may: closes an idle keep-alive connection, frames bodies chunked,
never answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred

from gateway.backend.client import BackendClient, BackendUnavailable

pytestmark = pytest.mark.integration

OID = "00000000-0000-0000-0000-000000000001"
BODY = b'{"endpoints":[]}'


def aio(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.AbstractServer, str, list[bytes]]:
    seen: list[bytes] = []

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer, seen)
        finally:
            writer.close()

    server = await asyncio.start_server(conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", seen


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_request_after_the_server_closed_the_idle_connection() -> None:
    """One answer per connection, then the server closes it without saying so: the next
    request finds its pooled connection closed and goes out again on a fresh one."""
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        await writer.drain()

    async def scenario() -> None:
        server, url, seen = await serve(answer_once)
        client = BackendClient(url, "tok", registry=CollectorRegistry(), timeout=2.0)
        try:
            assert await client.list_endpoints(OID) == []
            await asyncio.sleep(0.05)  # the server's close reaches the idle connection
            assert await client.list_endpoints(OID) == []
            assert len(seen) == 2
            assert seen[0].startswith(b"GET /v1/users/" + OID.encode() + b"/endpoints HTTP/1.1")
            assert b"Authorization: Bearer tok\r\n" in seen[0]
        finally:
            await client.close()
            server.close()
    await aio(scenario())


@pytest_twisted.ensureDeferred
async def test_chunked_body_and_keep_alive() -> None:
    """A chunked answer (RFC 9112 §7.1) is read whole, and the connection is reused."""
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      seen: list[bytes]) -> None:
        while True:
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\n" + BODY[:5] + b"\r\n"
                         + b"%x;ext=1\r\n" % (len(BODY) - 5) + BODY[5:] + b"\r\n0\r\n\r\n")
            await writer.drain()

    async def scenario() -> None:
        server, url, seen = await serve(chunked)
        client = BackendClient(url, "tok", timeout=2.0)
        try:
            for _ in range(3):
                assert await client.list_endpoints(OID) == []
            assert len(seen) == 3
        finally:
            await client.close()
            server.close()
    await aio(scenario())


@pytest_twisted.ensureDeferred
async def test_silent_server_is_unavailable_after_the_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        await reader.read()  # until the client gives up and closes

    async def scenario() -> None:
        server, url, _ = await serve(silent)
        registry = CollectorRegistry()
        client = BackendClient(url, "tok", registry=registry, timeout=0.3)
        try:
            with pytest.raises(BackendUnavailable, match="did not answer"):
                await client.list_endpoints(OID)
            assert registry.get_sample_value(
                "backend_api_errors_total", {"op": "list_endpoints", "kind": "timeout"}) == 1
        finally:
            await client.close()
            server.close()
    await aio(scenario())


@pytest_twisted.ensureDeferred
async def test_answer_without_header_fields() -> None:
    """A status line and the empty line, nothing else (a 204 needs no field): read as the
    end of that answer, and the connection serves the next request."""
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   seen: list[bytes]) -> None:
        while True:
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    async def scenario() -> None:
        server, url, seen = await serve(bare)
        client = BackendClient(url, "tok", timeout=2.0)
        try:
            for _ in range(2):
                assert await client.remove_endpoint(OID, "ep-1") is None
            assert len(seen) == 2
        finally:
            await client.close()
            server.close()
    await aio(scenario())
