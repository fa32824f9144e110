"""Measure authenticated REGISTERs per second against `sipgw serve` (not run by pytest).

    .venv/bin/python -m tests.integration.registrar.perf_register --devices 6000 \
        --rates 300,400,500,600 --seconds 8 [--lift-source-limit] [--profile out.txt]

Each SIPp "call" is REGISTER -> 401 -> REGISTER with digest -> 200, so calls/s is
authenticated REGISTERs/s. The gateway and its Valkey run on core 0 and SIPp on core
1; a small probe (a digest-speaking UDP phone) measures its own latency during each
step, since SIPp's timings tick in 4 ms. A step passes at < 0.1 % failed calls. Each
step also shows the CPU share of the gateway and of Valkey (they share core 0), and the
run ends with Valkey's per-command cost (INFO commandstats; wall time, so inflated
while the two compete for the core).

``--lift-source-limit``: SIPp sends from one address, and the abuse guard admits at
most ``[registrar] source_rate`` REGISTERs per source per window (5,000 / 10 s); this
flag raises it for the measured gateway, so the measurement shows the node's capacity,
not the guard.

``--store-core 1``: move the embedded Valkey to core 1 (with SIPp) after start, so core
0 holds the gateway process alone: Valkey stands for the shared store, which a
deployment runs on its own hosts. Default: Valkey shares core 0 with the gateway.

``--general``: turn the registrar's fast lane off (``[registrar] fast_lane = false``) to
measure the general SIP path.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis as redis_sync

from tests.bench.harness import cpu_seconds, cpu_ticks, steal_share, steal_text

from ..gateway_process import GatewayProcess
from .helpers import HERE, UdpPhone, overrides, provision, write_csv


def _probe(host: str, port: int, user: str, pw: str, stop: threading.Event,
           out: list[float]) -> None:
    phone = UdpPhone(host, port, user, pw)
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                resp = phone.register(expires=3600)
            except OSError:
                continue
            if resp.status == 200:
                out.append((time.perf_counter() - t0) * 1000)
            stop.wait(0.02)
    finally:
        phone.close()


def _lane_counts(url: str) -> dict[str, float]:
    """sipgw_register_fast_lane_total by outcome, from the gateway's /metrics."""
    import urllib.request

    try:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    except OSError:
        return {}
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^sipgw_register_fast_lane_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=6000)
    ap.add_argument("--reuse", action="store_true",
                    help="cycle through the devices (refreshes of a warm fleet, as make bench)")
    ap.add_argument("--rates", default="300,400,500,600")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--lift-source-limit", action="store_true")
    ap.add_argument("--store-core", type=int, default=0, choices=(0, 1))
    ap.add_argument("--general", action="store_true")
    ap.add_argument("--aof", action="store_true",
                    help="keep the store's append-only file (the bench runs it in memory)")
    ap.add_argument("--profile", help="py-spy raw profile of the gateway during the last step")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="perf-register-") as tmp_s:
        tmp = Path(tmp_s)
        reg: dict[str, object] = {}
        if args.lift_source_limit:
            reg["source_rate"] = 10**9
        if args.general:
            reg["fast_lane"] = False
        # Spawned on core 0 so every thread and the Valkey child inherit it (pinning the
        # process afterwards would leave Valkey and early threads free to use core 1).
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {0})
        try:
            gw = GatewayProcess(tmp, overrides(redis={"embedded_tcp_port": 0,
                                                      "embedded_persist": args.aof},
                                               registrar=reg)).start()
        finally:
            os.sched_setaffinity(0, mine)
        try:
            vh, vp = gw.addr("valkey", "tcp")
            store = redis_sync.Redis(host=vh, port=vp)
            devices = provision(f"redis://{vh}:{vp}", args.devices + 1)
            store.config_resetstat()
            probe_dev, devices = devices[0], devices[1:]
            host, port = gw.sip("udp")
            # the embedded Valkey shares core 0 with the gateway: show each one's share
            gw_pid = gw.proc.pid  # type: ignore[union-attr]
            store_pids = _children(gw_pid)
            for pid in store_pids:  # every thread of it
                subprocess.run(["taskset", "-a", "-p", "-c", str(args.store_core), str(pid)],
                               check=True, capture_output=True)
            print(f"gateway on core 0, Valkey on core {args.store_core}, SIPp on core 1; "
                  f"REGISTERs by the {'general path' if args.general else 'fast lane'}")
            print(f"{'rate':>6} {'ok':>7} {'failed':>7} {'reg/s':>7} {'p50 ms':>7} "
                  f"{'p99 ms':>7} {'gw cpu':>6} {'valkey':>6} {'steal':>7}  "
                  "(probe: full 401+200 cycle; steal: core 0/core 1)")
            offset = 0
            shed_before = 0.0
            for i, rate in enumerate(rates):
                calls = int(rate * args.seconds)
                if args.reuse:
                    chunk = [devices[(offset + k) % len(devices)] for k in range(calls)]
                else:
                    chunk = devices[offset:offset + calls]
                offset += calls
                if len(chunk) < calls:
                    print(f"not enough devices for {rate}/s x {args.seconds}s")
                    break
                csv = write_csv(tmp / f"step{rate}.csv", chunk)
                lat: list[float] = []
                stop = threading.Event()
                t = threading.Thread(target=_probe, args=(host, port, *probe_dev, stop, lat),
                                     daemon=True)
                t.start()
                spy = None
                if args.profile and i == len(rates) - 1:
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).with_name("py-spy")), "record", "-f", "raw",
                         "-o", args.profile, "-r", "200",
                         "-d", str(int(args.seconds)), "-p", str(gw.proc.pid)],  # type: ignore
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started = time.monotonic()
                # the gateway process alone (its stores skipped), and its stores
                cpu0 = (cpu_seconds(gw_pid, store_pids),
                        sum(cpu_seconds(p) for p in store_pids))
                ticks0 = cpu_ticks()
                run = subprocess.run(
                    ["taskset", "-c", "1", "sipp", "-sf", str(HERE / "register_uac.xml"),
                     "-inf", str(csv), "-m", str(calls), "-r", str(rate), "-t", "u1",
                     "-i", "127.0.0.1", "-nostdin", "-nd", "-recv_timeout", "4000",
                     "-buff_size", "4194304",
                     "-timeout", f"{int(args.seconds * 3 + 10)}s", "-timeout_error",
                     f"{host}:{port}"],
                    capture_output=True, text=True, cwd=tmp, timeout=args.seconds * 4 + 30)
                elapsed = time.monotonic() - started
                ticks1 = cpu_ticks()
                steal = steal_text([steal_share(ticks0, ticks1, c) for c in (0, 1)])
                cpu_gw = (cpu_seconds(gw_pid, store_pids) - cpu0[0]) / elapsed
                cpu_kv = (sum(cpu_seconds(p) for p in store_pids) - cpu0[1]) / elapsed
                stop.set()
                t.join(10)
                if spy is not None:
                    spy.wait(60)
                ok = [int(x) for x in re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)",
                                                 run.stdout)]
                bad = [int(x) for x in re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)",
                                                  run.stdout)]
                # a call neither answered nor failed in time (a 503 SIPp did not expect,
                # a lost response) counts as failed
                n_ok = ok[-1] if ok else 0
                n_bad = max(bad[-1] if bad else calls, calls - n_ok)
                p50 = statistics.median(lat) if lat else float("nan")
                p99 = (statistics.quantiles(lat, n=100)[98] if len(lat) >= 20
                       else max(lat, default=float("nan")))
                verdict = "ok" if n_bad <= calls * 0.001 else "FAIL"
                lane = _lane_counts(gw.metrics_url)
                shed = lane.get("shed", 0) - shed_before
                shed_before = lane.get("shed", 0)
                if shed:
                    verdict += f" (shed {shed:.0f}: the node was behind)"
                print(f"{rate:>6} {n_ok:>7} {n_bad:>7} {n_ok / elapsed:>7.0f} {p50:>7.1f} "
                      f"{p99:>7.1f} {cpu_gw:>6.0%} {cpu_kv:>6.0%} {steal:>7}  {verdict}",
                      flush=True)
            # where the store's time went (µs per call), for the Lua script's share of core 0
            stats = store.info("commandstats")
            top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:5]
            print("store: " + ", ".join(f"{k.removeprefix('cmdstat_')} {v['calls']}x "
                                        f"{v['usec_per_call']:.1f}us" for k, v in top))
            store.close()
        finally:
            gw.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
