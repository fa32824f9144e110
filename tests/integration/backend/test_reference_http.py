"""The reference backend's HTTP front on raw sockets: plain requests answered in order on
one connection, anything else (chunked bodies, HTTP/1.0) still served by twisted.web."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlparse

import pytest

from .test_reference_backend import BOB, TOKEN, backend, run

pytestmark = pytest.mark.integration

AUTH = f"Authorization: Bearer {TOKEN}\r\n"


async def exchange(url: str, wire: bytes, answers: int) -> list[tuple[int, dict[str, str],
                                                                     bytes]]:
    """Send ``wire`` at once and read ``answers`` responses (status, headers, body)."""
    u = urlparse(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    writer.write(wire)
    out = []
    try:
        for _ in range(answers):
            status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            fields: dict[str, str] = {}
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                fields[name.strip().lower()] = value.strip()
            if fields.get("transfer-encoding") == "chunked":
                body = b""
                while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)):
                    body += await reader.readexactly(size + 2)
                    body = body[:-2]
                await reader.readuntil(b"\r\n")
            else:
                body = await reader.readexactly(int(fields.get("content-length", "0")))
            out.append((int(status_line.split()[1]), fields, body))
    finally:
        writer.close()
    return out


@run
async def test_pipelined_requests_answered_in_order(redis_url: str) -> None:
    async with backend(redis_url) as env:
        ep = json.dumps({"endpoint_id": "bob-http", "device_id": "d-http",
                         "capabilities": ["audio"]}).encode()
        wire = (f"POST /v1/users/{BOB.oid}/endpoints HTTP/1.1\r\nHost: t\r\n{AUTH}"
                f"Content-Type: application/json\r\nContent-Length: {len(ep)}\r\n\r\n"
                ).encode() + ep
        wire += f"GET /v1/users/{BOB.oid}/endpoints HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n".encode()
        wire += f"GET /v1/users?number=%2B999 HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n".encode()
        wire += f"DELETE /v1/calls HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n".encode()
        wire += b"GET /v1/calls/abc HTTP/1.1\r\nHost: t\r\n\r\n"
        wire += f"DELETE /v1/users/{BOB.oid}/endpoints/bob-http HTTP/1.1\r\n{AUTH}\r\n".encode()
        got = await exchange(env.url, wire, 6)
        assert [s for s, _, _ in got] == [201, 200, 404, 405, 401, 204]
        assert json.loads(got[0][2])["endpoint_id"] == "bob-http"
        assert [e["endpoint_id"] for e in json.loads(got[1][2])["endpoints"]] == ["bob-http"]
        assert json.loads(got[2][2])["error"] == "user_not_found"
        assert got[3][1]["allow"] == "POST"
        assert got[4][1]["www-authenticate"].startswith("Bearer")
        assert got[5][2] == b"" and "date" in got[5][1]


@run
async def test_chunked_and_http10_requests_still_served(redis_url: str) -> None:
    async with backend(redis_url) as env:
        ep = json.dumps({"endpoint_id": "bob-chunk", "device_id": "d-chunk",
                         "capabilities": ["audio"]}).encode()
        wire = (f"POST /v1/users/{BOB.oid}/endpoints HTTP/1.1\r\nHost: t\r\n{AUTH}"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
        wire += b"%x\r\n%s\r\n0\r\n\r\n" % (len(ep), ep)
        wire += f"GET /v1/users/{BOB.oid} HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n".encode()
        got = await exchange(env.url, wire, 2)
        assert [s for s, _, _ in got] == [201, 200]
        assert json.loads(got[1][2])["upn"] == BOB.upn
        old = await exchange(env.url, f"GET /v1/users/{BOB.oid} HTTP/1.0\r\n{AUTH}\r\n"
                             .encode(), 1)
        assert old[0][0] == 200 and json.loads(old[0][2])["oid"] == BOB.oid


@run
async def test_connection_close_is_honoured(redis_url: str) -> None:
    async with backend(redis_url) as env:
        u = urlparse(env.url)
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        writer.write(f"GET /v1/users/{BOB.oid} HTTP/1.1\r\nConnection: close\r\n{AUTH}\r\n"
                     .encode())
        data = await asyncio.wait_for(reader.read(), 5)  # to the server's close
        writer.close()
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in data
