"""CPU per REGISTER cycle (401 + digest REGISTER + 200) in the registrar's fast lane.

Usage: ``.venv/bin/python tests/bench/bench_fastlane.py [--devices N] [--cycles N]``

The lane is fed datagrams as bytes and hands its answers to a callback: no sockets
and no reactor, so the figure is the Python the gateway spends per cycle above the
transport (and the store round trip's client side, over a real embedded Valkey).
The phones' own work (building requests, computing digests) runs in the same
process; it is timed alone first and subtracted. Run under ``taskset -c 0`` for a
steadier figure; the best of ``--rounds`` is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from firmware_catalog import load_catalog  # noqa: E402
from gateway.registrar import (  # noqa: E402
    AbuseGuard,
    BindingStore,
    DeviceStore,
    DigestAuthenticator,
    GuardConfig,
    Registrar,
    RegistrarConfig,
)
from gateway.registrar.fastlane import FastLane  # noqa: E402
from gateway.runtime import tune_gc  # noqa: E402
from gateway.sip.peer import Peer  # noqa: E402
from gateway.state.redis import connect  # noqa: E402
from gateway.state.valkey import EmbeddedValkey  # noqa: E402

REALM = "bench.localhost"
UA = "Yealink SIP-T54W 96.86.0.100"
NONCE = re.compile(rb'nonce="([^"]+)"')


def request(user: str, i: int, step: int, auth: str = "") -> bytes:
    return (f"REGISTER sip:{REALM} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{i}-{step};rport\r\n"
            f"From: <sip:{user}@{REALM}>;tag={i}t\r\n"
            f"To: <sip:{user}@{REALM}>\r\n"
            f"Call-ID: {i}-bench@127.0.0.1\r\n"
            f"CSeq: {step} REGISTER\r\n"
            f"Contact: <sip:{user}@127.0.0.1:5070;transport=udp>\r\n"
            f"Max-Forwards: 70\r\nExpires: 3600\r\nUser-Agent: {UA}\r\n"
            f"{auth}Content-Length: 0\r\n\r\n").encode()


def answer(user: str, password: str, nonce: str) -> str:
    ha1 = hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:sip:{REALM}".encode()).hexdigest()
    resp = hashlib.md5(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}".encode()).hexdigest()
    return (f'Authorization: Digest username="{user}",realm="{REALM}",nonce="{nonce}",'
            f'uri="sip:{REALM}",response="{resp}",algorithm=MD5,qop=auth,nc=00000001,'
            f'cnonce="c0ffee"\r\n')


async def store_cpu(r: Any) -> float:
    """CPU seconds the Valkey server has used (user + system, all its threads)."""
    info = await r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(devices: int, cycles: int, rounds: int, window: int,
              profile: str | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-fastlane-") as tmp:
        server = EmbeddedValkey(Path(tmp), tcp_port=0)
        server.start()
        try:
            await _bench(server.tcp_url or server.url, devices, cycles, rounds, window,
                         profile)
        finally:
            server.stop()


async def _bench(url: str, devices: int, cycles: int, rounds: int, window: int,
                 profile: str | None) -> None:
    r = connect(url)
    store = DeviceStore(r, REALM)
    fleet: list[tuple[str, str]] = []
    for i in range(devices):
        _, creds = await store.add(f"0015{0x650000 + i:08x}", "Yealink", "T54W", "bench")
        fleet.append((creds.username, creds.password))
    guard = GuardConfig(source_rate=10**9, account_rate=10**9)
    reg = Registrar(BindingStore(r), store,
                    DigestAuthenticator(REALM, [os.urandom(32)], 300, algorithms=("MD5",)),
                    AbuseGuard(r, guard), load_catalog(),
                    RegistrarConfig(realm=REALM, guard=guard))
    waiting: dict[bytes, asyncio.Future[bytes]] = {}

    def send(data: bytes, peer: Peer) -> None:
        key = data[data.index(b"Call-ID: ") + 9:data.index(b"\r\n", data.index(b"Call-ID: "))]
        fut = waiting.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(data)

    def general(data: bytes, peer: Peer) -> None:
        raise SystemExit(f"the lane handed a plain REGISTER over:\n{data.decode()}")

    lane = FastLane(reg, "bench-node", send, general, server="sipgw")
    peer = Peer("UDP", "127.0.0.1", 5070)
    loop = asyncio.get_running_loop()

    async def phone(i: int) -> None:
        user, password = fleet[i % devices]
        key = f"{i}-bench@127.0.0.1".encode()
        waiting[key] = fut = loop.create_future()
        lane.take(request(user, i, 1), peer)
        challenge = await fut
        nonce = NONCE.search(challenge).group(1).decode()  # type: ignore[union-attr]
        waiting[key] = fut = loop.create_future()
        lane.take(request(user, i, 2, answer(user, password, nonce)), peer)
        ok = await fut
        if not ok.startswith(b"SIP/2.0 200"):
            raise SystemExit(f"expected 200, got {ok[:60]!r}")

    async def batch(start: int, n: int) -> None:
        # ``window`` phones in flight, as a loaded node has
        async def worker(k: int) -> None:
            for i in range(start + k, start + n, window):
                await phone(i)
        await asyncio.gather(*(worker(k) for k in range(window)))

    # the phones' own share: requests and digests without the lane
    t0 = time.process_time()
    for i in range(cycles):
        user, password = fleet[i % devices]
        request(user, i, 1)
        request(user, i, 2, answer(user, password, "x" * 40))
        for _ in range(2):  # the two waits of a phone (a future each)
            f: asyncio.Future[Any] = loop.create_future()
            loop.call_soon(f.set_result, None)
            await f
    client = (time.process_time() - t0) / cycles
    await batch(0, devices)  # warm: caches filled, scripts loaded
    tune_gc()  # as `sipgw serve` does after start-up
    best = float("inf")
    best_store = float("inf")
    start = devices
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    for _ in range(rounds):
        s0 = await store_cpu(r)
        t0 = time.process_time()
        await batch(start, cycles)
        best = min(best, (time.process_time() - t0) / cycles)
        best_store = min(best_store, (await store_cpu(r) - s0) / cycles)
        start += cycles
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    lane_us = (best - client) * 1e6
    print(f"fast lane: {lane_us:.0f} us CPU per 401+200 cycle ({1e6 / lane_us:,.0f} cycles/s "
          f"per core before the transport); phones' share {client * 1e6:.0f} us subtracted; "
          f"{devices} devices, best of {rounds} x {cycles} cycles, {window} in flight")
    print(f"store: {best_store * 1e6:.0f} us of Valkey CPU per cycle (its main thread and "
          f"I/O, the AOF included)")
    await reg.store.close()
    await store.close()
    await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--cycles", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--profile", help="write a cProfile of the measured rounds here (the "
                    "figure printed is then the profiler's, not the lane's)")
    a = ap.parse_args()
    asyncio.run(run(a.devices, a.cycles, a.rounds, a.window, a.profile))


if __name__ == "__main__":
    main()
