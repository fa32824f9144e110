"""Hostile input on real loopback sockets: malformed SIP gets a 400 naming the problem where
RFC 3261 §8.2.6 / §18 allow, garbage is dropped, and the transport keeps serving.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from gateway.ops.metrics import sniff_start_line
from gateway.sip.message import SipResponse, parse_message
from gateway.transport import StreamLimits

from .sip_clients import InProcessSip, StreamClient, options_request, udp_options_answered

pytestmark = pytest.mark.integration
HOST = "127.0.0.1"


@pytest_twisted.async_yield_fixture
async def sip(tmp_path: Path) -> AsyncIterator[InProcessSip]:
    server = InProcessSip(tmp_path, (HOST,), limits=StreamLimits(max_message_size=65535))
    try:
        yield server
    finally:
        await server.driver.stop()


def good() -> bytes:
    return options_request("UDP", HOST, 5060, call_id="good")


def _with(old: bytes, new: bytes) -> bytes:
    raw = good()
    assert old in raw
    return raw.replace(old, new)


BAD_REQUESTS = {
    "bad_content_length": (_with(b"Content-Length: 0", b"Content-Length: abc"), b"Content-Length"),
    "content_length_beyond_body": (_with(b"Content-Length: 0", b"Content-Length: 500"),
                                   b"Content-Length"),
    "negative_content_length": (_with(b"Content-Length: 0", b"Content-Length: -1"),
                                b"Content-Length"),
    "nul_in_header": (_with(b"Accept: application/sdp", b"Accept: appli\x00cation/sdp"),
                      b"Accept"),
    "truncated": (good().split(b"CSeq:")[0], b"CSeq"),
    "cseq_method_mismatch": (_with(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"), b"CSeq"),
    "bad_request_uri": (_with(b"OPTIONS sip:127.0.0.1:5060", b"OPTIONS sip:@@:x"), b"URI"),
    "bad_version": (_with(b"SIP/2.0\r\nVia", b"SIP/7.0\r\nVia"), b"version"),
}


def udp_send_recv(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (HOST, port))
        return s.recvfrom(65535)[0]


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
@pytest_twisted.ensureDeferred
async def test_malformed_udp_request_gets_400_with_warning(sip: InProcessSip, case: str) -> None:
    raw, names = BAD_REQUESTS[case]
    port = sip.port("udp", HOST)
    reply = await deferToThread(udp_send_recv, port, raw)
    # the 400 echoes the request's headers, so it may be as broken as the request:
    # check it as bytes (start line and Warning), not with the parser
    lines = reply.split(b"\r\n")
    assert lines[0].startswith((b"SIP/2.0 400 ", b"SIP/2.0 505 ")), reply
    [warning] = [x for x in lines if x.lower().startswith(b"warning: 399 ")]
    assert names.lower() in (warning + lines[0]).lower(), reply
    # and the socket still serves a good request
    ok = await deferToThread(udp_options_answered, HOST, port)
    assert ok.status == 200


@pytest.mark.parametrize("garbage", [
    b"\x00" * 64, b"\xff\xfe garbage \x01\x02", b"SIP/2.0 200", b"INVITE",
    b"\r\n\r\n\r\n", bytes(range(256)), b"A" * 60000,
], ids=["nuls", "binary", "status-only", "method-only", "crlfs", "bytes", "big"])
@pytest_twisted.ensureDeferred
async def test_udp_garbage_dropped_and_server_keeps_answering(sip: InProcessSip,
                                                            garbage: bytes) -> None:
    port = sip.port("udp", HOST)

    def client() -> tuple[bytes | None, SipResponse]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(garbage, (HOST, port))
            s.sendto(options_request("UDP", HOST, port, call_id="after"), (HOST, port))
            first = s.recvfrom(65535)[0]
            msg = parse_message(first)
            assert isinstance(msg, SipResponse)
            return first, msg

    raw, resp = await deferToThread(client)
    assert resp.status == 200 and resp.call_id == "after", raw


@pytest.mark.parametrize("proto", ["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_stream_bad_content_length_400_then_close(sip: InProcessSip, proto: str) -> None:
    port = sip.port(proto, HOST)
    raw = options_request(proto.upper(), HOST, port).replace(
        b"Content-Length: 0", b"Content-Length: x9")

    def client() -> bytes:
        with StreamClient(HOST, port, tls_ca=sip.tls.ca if proto == "tls" else None) as c:
            c.send(raw)
            return c.read_until_closed()

    out = await deferToThread(client)
    assert out.startswith(b"SIP/2.0 400 "), out
    assert b"Warning: 399 " in out and b"Content-Length" in out
    ok = await deferToThread(_stream_options, sip, proto)
    assert ok.status == 200


def _stream_options(sip: InProcessSip, proto: str) -> SipResponse:
    port = sip.port(proto, HOST)
    with StreamClient(HOST, port, tls_ca=sip.tls.ca if proto == "tls" else None) as c:
        c.send(options_request(proto.upper(), HOST, port))
        [resp] = c.read_messages(1)
        assert isinstance(resp, SipResponse)
        return resp


@pytest_twisted.ensureDeferred
async def test_tcp_huge_header_closes_connection_without_exhausting_memory(
        sip: InProcessSip) -> None:
    port = sip.port("tcp", HOST)

    def client() -> bytes:
        with StreamClient(HOST, port, timeout=10) as c:
            head = b"OPTIONS sip:x SIP/2.0\r\nX-Huge: "
            c.send(head)
            try:
                for _ in range(64):  # 4 MiB offered; the server must hang up long before
                    c.send(b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return c.read_until_closed()

    out = await deferToThread(client)
    assert b"SIP/2.0 200" not in out
    ok = await deferToThread(_stream_options, sip, "tcp")
    assert ok.status == 200


@pytest_twisted.ensureDeferred
async def test_tcp_garbage_without_framing_closes_and_server_lives(sip: InProcessSip) -> None:
    port = sip.port("tcp", HOST)

    def client() -> bytes:
        with StreamClient(HOST, port) as c:
            c.send(b"\x16\x03\x01 not sip at all\r\n\r\n")
            return c.read_until_closed()

    await deferToThread(client)
    ok = await deferToThread(_stream_options, sip, "tcp")
    assert ok.status == 200


def _fuzz_datagrams(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    base = options_request("UDP", HOST, 5060, call_id="fuzz")
    out: list[bytes] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(rng.randbytes(rng.randint(0, 1400)))
        elif kind == 1:  # byte flips in a valid request
            b = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            out.append(bytes(b))
        elif kind == 2:  # truncation
            out.append(base[: rng.randrange(len(base))])
        else:  # header soup
            lines = base.split(b"\r\n")
            rng.shuffle(lines)
            out.append(b"\r\n".join(lines))
    return out


def _udp_received(sip: InProcessSip) -> float:
    return sum(s.value for fam in sip.metrics.registry.collect()
               if fam.name == "sip_messages_received" for s in fam.samples
               if s.name.endswith("_total") and s.labels.get("transport") == "UDP")


@pytest_twisted.ensureDeferred
async def test_ten_thousand_malformed_datagrams_then_options_answered(sip: InProcessSip) -> None:
    port = sip.port("udp", HOST)
    datagrams = _fuzz_datagrams(10_000, seed=5060)
    countable = sum(1 for d in datagrams if sniff_start_line(d) is not None)

    def flood() -> float:
        start = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i, d in enumerate(datagrams):
                s.sendto(d, (HOST, port))
                if i % 100 == 99:
                    # Let the server keep up (the kernel drops what overflows its receive
                    # buffer, which would prove nothing): wait until it has read most of
                    # what was sent, with a deadline, draining its 400s meanwhile.
                    deadline = time.monotonic() + 5
                    while _udp_received(sip) < countable * (i + 1) / len(datagrams) * 0.9:
                        if time.monotonic() > deadline:
                            break
                        s.setblocking(False)
                        try:
                            while s.recv(65535):
                                pass
                        except BlockingIOError:
                            pass
                        s.setblocking(True)
                        time.sleep(0.001)
                    if time.monotonic() - start > 60:
                        raise TimeoutError("flood took longer than 60 s")
        return time.monotonic() - start

    elapsed = await deferToThread(flood)
    assert elapsed < 60
    resp: Any = await deferToThread(udp_options_answered, HOST, port, 10.0)
    assert resp.status == 200
    assert _udp_received(sip) >= 0.9 * countable, "the flood must actually have been read"
    errors = sum(s.value for fam in sip.metrics.registry.collect()
                 if fam.name == "sip_parse_errors" for s in fam.samples
                 if s.name.endswith("_total"))
    assert errors > 5000, "and parsed: most of it is malformed"
