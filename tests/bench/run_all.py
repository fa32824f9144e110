"""`make bench`: the gateway side by side with Kamailio, in one run, on this machine.

Usage: ``.venv/bin/python tests/bench/run_all.py [--quick] [--only parse,options,register,calls]``

Method (DESIGN.md, "Performance: where the bar sits"): the server under test is
pinned to core 0 (Kamailio with one UDP worker; the gateway process), SIPp and the
latency probe to core 1, loopback only. The gateway's embedded Valkey starts on core 0
too; the register and calls benches move it to core 1 (``--store-on-server-core`` keeps
it), as a deployment's shared store runs elsewhere. Each load is an
open-loop SIPp run at a fixed rate for a bounded time, no retransmissions, a
2 s receive timeout; a step passes when fewer than 0.1% of transactions fail
and SIPp delivered at least 93% of the asked rate. A short calibration step
estimates capacity from the server's CPU use, then the rate is stepped up or
down to the boundary; the sustained figure is the highest passing step. A
latency target stated at a rate (calls: p99 setup < 100 ms at 200/s) is read
at a step run at that rate; "latency under load" is the sustained step's, at
saturation, where every server's p99 is its queue. Latency comes from
``probe.py`` (sequential requests at a low fixed rate, timed with
perf_counter_ns) during each step, because SIPp's own figures
tick in 4 ms steps. Run-to-run noise is 10-25%, so only the ratio to Kamailio
measured in the same run means anything.

Exit status: 0 when every benchmark ran (a gateway feature that is not there
yet prints "not available yet"), 2 when the harness itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_sync

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

from harness import (  # noqa: E402
    LOAD_CORE,
    SERVER_CORE,
    BackendProcess,
    GatewayServer,
    HarnessError,
    Kamailio,
    Server,
    Sipp,
    SippResult,
    cores_available,
    cpu_seconds,
    cpu_ticks,
    free_udp_port,
    pin_prefix,
    rss_bytes,
    steal_share,
    steal_text,
)

PYTHON = sys.executable
REALM = "sipgw.localhost"
KAMAILIO_PASSWORD = "bench-secret"
USER_AGENT = "Yealink SIP-T54W 96.86.0.100"  # admitted by the firmware catalog
FAILURE_BUDGET = 0.001
UAS_RECV_TIMEOUT_MS = 300_000  # longer than any held call (held_max_ramp + 5 s)
DELIVERY = 0.93
CALLS_TARGET = 200.0  # calls/s at which the p99 setup target (< 100 ms) is read


class NotAvailable(Exception):  # noqa: N818 - a state, not an error of the harness
    """The gateway does not offer what this benchmark needs yet."""


@dataclass
class Settings:
    step_seconds: float
    max_steps: int
    calibrate_seconds: float
    probe_rate: float
    devices: int
    held_calls: int
    parse_seconds: float
    held_max_ramp: float = 60.0  # seconds to open the held calls in, at most
    embedded_backend: bool = False
    store_on_load_core: bool = True  # register/calls: the gateway's Valkey off its core


FULL = Settings(step_seconds=8, max_steps=8, calibrate_seconds=3, probe_rate=50,
                devices=2000, held_calls=5000, parse_seconds=2, held_max_ramp=120)
QUICK = Settings(step_seconds=2.5, max_steps=3, calibrate_seconds=2, probe_rate=50,
                 devices=200, held_calls=5000, parse_seconds=0.5, held_max_ramp=50)


@dataclass
class Step:
    """One fixed-rate load step and what was seen during it."""

    target: float
    sipp: SippResult
    cpu: float  # server CPU seconds per wall second (1.0 = one full core)
    load_cpu: float  # SIPp CPU seconds per wall second
    probe: dict[str, Any]
    peer_cpu: float | None = None  # the backend's (with its Valkey), on the load core
    steal: tuple[float | None, float | None] = (None, None)  # server core, load core

    @property
    def passed(self) -> bool:
        return (self.sipp.failure_ratio < FAILURE_BUDGET
                and self.sipp.rate >= DELIVERY * self.target)

    def line(self) -> str:
        p = self.probe
        lat = (f"p50 {fmt_us(p.get('p50_us'))} p99 {fmt_us(p.get('p99_us'))}"
               if p.get("n") else f"probe: {p.get('error') or 'no samples'}")
        return (f"    {self.target:9,.0f}/s asked  {self.sipp.rate:9,.0f}/s done  "
                f"failed {self.sipp.failed:6,} ({100 * self.sipp.failure_ratio:.3f}%)  "
                f"server cpu {self.cpu:4.2f}  sipp cpu {self.load_cpu:4.2f}  "
                + (f"backend cpu {self.peer_cpu:4.2f}  " if self.peer_cpu is not None else "")
                + f"{lat}  {self.steal_text()}"
                f"{'ok' if self.passed else 'FAIL'}")

    def steal_text(self) -> str:
        return "" if self.steal == (None, None) else f"steal {steal_text(self.steal)}  "


@dataclass
class Outcome:
    """The sustained figure of one server in one benchmark."""

    server: str
    rate: float | None = None
    step: Step | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    passed: list[Step] = field(default_factory=list)  # every passing step, in run order

    def short(self, unit: str = "/s") -> str:
        if self.rate is None:
            return self.note or "n/a"
        return f"{self.rate:,.0f}{unit}"


def fmt_us(v: Any) -> str:
    if not isinstance(v, (int, float)) or v != v:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} us"


def say(text: str = "") -> None:
    print(text, flush=True)


# -- load steps ----------------------------------------------------------------------------
class ProbeRun:
    """``probe.py`` as a child pinned to the load core, started after SIPp warms up."""

    def __init__(self, server: Server, kind: str, delay: float, seconds: float, rate: float,
                 args: list[str]) -> None:
        self.cmd = [*pin_prefix(LOAD_CORE), PYTHON, str(HERE / "probe.py"),
                    "--target", f"{server.host}:{server.port}", "--kind", kind,
                    "--rate", str(rate), "--seconds", f"{seconds:.2f}",
                    "--delay", f"{delay:.2f}", *args]
        self.seconds = delay + seconds
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, stdin=subprocess.DEVNULL)

    def result(self) -> dict[str, Any]:
        if self.proc is None:
            return {"error": "not started"}
        try:
            out, err = self.proc.communicate(timeout=self.seconds + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise HarnessError("latency probe did not finish") from None
        if self.proc.returncode != 0:
            raise HarnessError(f"latency probe failed ({self.proc.returncode}):\n{err[-1500:]}")
        try:
            return dict(json.loads(out))
        except ValueError:
            raise HarnessError(f"latency probe printed no JSON: {out[-500:]!r}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Load:
    """How to drive one benchmark against one server."""

    scenario: str
    sipp_args: list[str]
    probe_kind: str
    probe_args: list[str]
    limit_seconds: float = 0.5  # SIPp's outstanding-call cap, in seconds of load
    hold_seconds: float = 0.0  # -d: how long each call is held
    port: int = 0  # SIPp's fixed local port (a registered phone); 0: any free port
    rtt: bool = False  # latency from SIPp's per-call rtd (4 ms ticks) instead of the probe
    peer_pid: int = 0  # a process the server depends on (the backend): its CPU is shown too


def run_step(server: Server, load: Load, rate: float, seconds: float, settings: Settings,
             *, probe: bool = True, track_rss: bool = False) -> Step:
    calls = max(1, int(rate * seconds))
    limit = max(200, int(rate * (load.limit_seconds + load.hold_seconds)))
    extra = list(load.sipp_args)
    if load.hold_seconds:
        extra += ["-d", str(int(load.hold_seconds * 1000))]
    sipp = Sipp(load.scenario, (server.host, server.port), calls=calls, rate=rate,
                limit=limit, max_seconds=seconds + load.hold_seconds + 20, extra=extra,
                port=load.port, rtt=load.rtt and probe)
    probe = probe and bool(load.probe_kind)
    warm = min(1.0, seconds / 4)  # let SIPp reach its rate before sampling latency
    pr = (ProbeRun(server, load.probe_kind, warm + 0.3, max(0.5, seconds - warm - 0.3),
                   settings.probe_rate, load.probe_args) if probe else None)
    rss_peak = [0]
    stop_rss = threading.Event()

    def watch_rss() -> None:
        while not stop_rss.wait(0.25):
            rss_peak[0] = max(rss_peak[0], rss_bytes(server.pid))

    watcher = threading.Thread(target=watch_rss, daemon=True)
    try:
        if pr is not None:
            pr.start()  # interpreter start-up happens before the load, off the clock
            time.sleep(0.3)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        peer0 = cpu_seconds(load.peer_pid) if load.peer_pid else 0.0
        skip = getattr(server, "cpu_skip", ())  # a store moved off the server core
        cpu0, t0 = cpu_seconds(server.pid, skip), time.monotonic()
        ticks0 = cpu_ticks()
        sipp.start()
        watcher.start()
        result = sipp.wait()
        cpu1, t1 = cpu_seconds(server.pid, skip), time.monotonic()
        ticks1 = cpu_ticks()
        peer1 = cpu_seconds(load.peer_pid) if load.peer_pid else 0.0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        probe_result = pr.result() if pr is not None else {}
        if sipp.rtt:
            probe_result = rtt_summary(sipp.rtt_ms())
    finally:
        stop_rss.set()
        if pr is not None:
            pr.stop()
        sipp.cleanup()
    if result.successful + result.failed == 0:
        raise HarnessError(f"SIPp {load.scenario} completed no transaction at all "
                           f"(exit {result.returncode}): {result.errors[-800:]}")
    load_cpu = ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
    step = Step(rate, result, (cpu1 - cpu0) / (t1 - t0), load_cpu / (t1 - t0), probe_result)
    step.steal = (steal_share(ticks0, ticks1, SERVER_CORE),
                  steal_share(ticks0, ticks1, LOAD_CORE))
    if load.peer_pid:
        step.peer_cpu = (peer1 - peer0) / (t1 - t0)
    if track_rss:
        step.probe["rss_peak"] = rss_peak[0]
    return step


def find_sustained(server: Server, load: Load, settings: Settings, *, start: float,
                   ceiling: float) -> Outcome:
    """Calibrate on CPU use, then step the rate to the < 0.1%-failure boundary."""
    say(f"  {server.name}: calibrating at {start:,.0f}/s")
    cal = run_step(server, load, start, settings.calibrate_seconds, settings, probe=False)
    say(cal.line())
    if not cal.passed:
        rate = start * 0.5
    else:
        rate = min(ceiling, 0.8 * start / max(cal.cpu, 0.02))
    best: Step | None = cal if cal.passed else None
    passed: list[Step] = []
    low: float | None = None  # the highest rate that passed, and the lowest that failed
    high: float | None = None
    for _ in range(settings.max_steps):
        step = run_step(server, load, rate, settings.step_seconds, settings)
        say(step.line())
        if step.passed:
            passed.append(step)
            if best is None or step.sipp.rate > best.sipp.rate or not best.probe:
                best = step
            low = rate
            if rate >= ceiling:
                break
            if step.load_cpu > 0.9:
                say("    (SIPp is near a full core: the load generator, not the server, "
                    "may be the limit)")
                break
            rate = min(ceiling, rate * (1.15 if step.cpu > 0.85 else 1.3))
        else:
            high = rate
            rate *= 0.75
        if low is not None and high is not None:
            # the boundary is between them: halve the gap (geometrically) until it is
            # within 5%, so neither server's figure depends on where the steps fell
            if high / low <= 1.05:
                break
            rate = (low * high) ** 0.5
    if best is None:
        return Outcome(server.name, note="no passing rate")
    return Outcome(server.name, best.sipp.rate, best, passed=passed)


def at_rate(o: Outcome, rate: float) -> Step | None:
    """The passing step nearest above ``rate`` with latency samples: where a latency target
    stated at a rate is read (the sustained step sits at saturation, where every server's
    p99 is its queue)."""
    steps = [s for s in o.passed if s.target >= rate and s.probe.get("n")]
    return min(steps, key=lambda s: s.target, default=None)


# -- servers -------------------------------------------------------------------------------
@contextmanager
def kamailio(cfg: str, **kw: Any) -> Iterator[Kamailio]:
    k = Kamailio(cfg, **kw)
    try:
        k.start()
        yield k
    finally:
        k.stop()


@contextmanager
def gateway(overrides: dict[str, dict[str, Any]] | None = None) -> Iterator[GatewayServer]:
    with tempfile.TemporaryDirectory(prefix="bench-sipgw-") as tmp:
        gw = GatewayServer(Path(tmp), {"sip": {"domain": REALM}, "server": {"log_level": "warning"},
                                       **(overrides or {})})
        try:
            try:
                gw.start()
            except RuntimeError as e:
                lines = [ln for ln in str(e).splitlines() if ln.strip()]
                raise NotAvailable("gateway did not start: "
                                   + (lines[-1] if lines else str(e))) from None
            yield gw
        finally:
            gw.stop()


def ratio(a: Outcome, b: Outcome) -> float | None:
    if a.rate is None or b.rate is None or b.rate == 0:
        return None
    return a.rate / b.rate


def latency_text(o: Outcome) -> str:
    if o.step is None or not o.step.probe.get("n"):
        return ""
    p = o.step.probe
    return f"p50 {fmt_us(p['p50_us'])} p99 {fmt_us(p['p99_us'])}"


@dataclass
class Row:
    """One line of the final summary table."""

    name: str
    sipgw: str
    kamailio: str
    ratio: float | None
    target: str
    verdict: str = ""


def compare(name: str, gw: Outcome, km: Outcome, target: str,
            checks: Callable[[Outcome, float | None], bool]) -> Row:
    r = ratio(gw, km)
    rtext = f"{r:.2f}" if r is not None else "-"
    say(f"{name:9} sipgw {gw.short():>12}  kamailio {km.short():>12}  ratio {rtext}")
    for o in (gw, km):
        if latency_text(o):
            say(f"{'':9} {o.server:8} latency under load {latency_text(o)}")
        if o.step is not None and o.step.cpu > 0.05:
            # less sensitive to other processes stalling the core than the drop boundary
            say(f"{'':9} {o.server:8} {o.step.sipp.rate / o.step.cpu:,.0f}/s per busy core "
                f"(cpu {o.step.cpu:.2f} at the sustained step)")
        if o.step is not None and o.step.peer_cpu is not None:
            say(f"{'':9} {o.server:8} its backend (own process and Valkey, load core) used "
                f"cpu {o.step.peer_cpu:.2f} at the sustained step")
    verdict = "" if gw.rate is None else ("meets target" if checks(gw, r) else "BELOW target")
    return Row(name, gw.short(), km.short(), r, target, verdict)


# -- 1. parse ------------------------------------------------------------------------------
def bench_parse(settings: Settings) -> Row:
    say("== 1. SIP parse rate (one core, tests/bench/bench_parse.py)")
    script = HERE / "bench_parse.py"
    if not script.exists():
        say("  bench_parse.py not present: not available yet")
        return Row("PARSE", "not available yet", "-", None, "-")
    out = subprocess.run([PYTHON, str(script), "--seconds", str(settings.parse_seconds)],
                         capture_output=True, text=True, timeout=300, check=False)
    for line in out.stdout.splitlines():
        say("  " + line)
    if out.returncode != 0:
        say("  bench_parse.py failed: not available yet\n" + out.stderr[-1500:])
        return Row("PARSE", "failed", "-", None, "-")
    figure = "-"
    for line in out.stdout.splitlines():
        if line.startswith("REGISTER"):
            figure = line.split()[-3] + " REGISTER/s"
            break
    return Row("PARSE", figure, "-", None, "-")


# -- 2. OPTIONS ----------------------------------------------------------------------------
OPTIONS_LOAD = Load("options_uac.xml", [], "options", [])


def bench_options(settings: Settings) -> Row:
    say("== 2. OPTIONS round trips/s (stateless 200), < 0.1% failures")
    with kamailio("options.cfg") as k:
        km = find_sustained(k, OPTIONS_LOAD, settings, start=3000, ceiling=100_000)
    try:
        with gateway() as g:
            gw = find_sustained(g, OPTIONS_LOAD, settings, start=1000, ceiling=100_000)
    except NotAvailable as e:
        say(f"  sipgw: not available yet ({e})")
        gw = Outcome("sipgw", note="not available yet")
    return compare("OPTIONS", gw, km, ">= 0.25 x kamailio",
                   lambda o, r: r is not None and r >= 0.25)


# -- 3. REGISTER ---------------------------------------------------------------------------
def write_devices_csv(path: Path, devices: list[tuple[str, str, str]]) -> Path:
    """SIPp -inf file: user; [authentication ...] keyword; domain; User-Agent."""
    lines = ["SEQUENTIAL"]
    for user, password, ua in devices:
        lines.append(f"{user};[authentication username={user} password={password}];"
                     f"{REALM};{ua}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def _provision(host: str, port: int, count: int) -> list[tuple[str, str, str]]:
    try:
        from gateway.registrar.admin import add_device
    except ImportError as e:
        raise NotAvailable(f"gateway.registrar.admin.add_device missing ({e})") from None
    from gateway.state.redis import connect

    redis = connect(f"redis://{host}:{port}/0")
    out: list[tuple[str, str, str]] = []
    try:
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> tuple[str, str, str]:
            mac = f"0015{0x650000 + i:08x}"[-12:]
            async with sem:
                dev, password = await add_device(redis, mac, "Yealink", "T54W", "bench", REALM)
            return dev.sip_username, password, f"{USER_AGENT} {mac}"

        out = list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        await redis.aclose()
    return out


def register_probe_args(user: str, password: str, ua: str) -> list[str]:
    return ["--user", user, "--password", password, "--domain", REALM, "--user-agent", ua]


def _store_to_load_core(g: GatewayServer) -> None:
    """Move the gateway's embedded Valkey (every thread of it) to the load core, so the
    server core holds the gateway process alone: Valkey stands for the shared store that a
    deployment runs on hosts of its own, as Kamailio's usrloc is not on the measured core
    either (it is in the measured process's memory)."""
    import subprocess

    moved = []
    for task in Path(f"/proc/{g.pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            done = subprocess.run(["taskset", "-a", "-p", "-c", str(LOAD_CORE), pid],
                                  check=False, capture_output=True)
            if done.returncode == 0:
                moved.append(pid)
    g.cpu_skip = tuple(int(p) for p in moved)  # server cpu: the gateway process alone
    say(f"  sipgw: its Valkey (pid {', '.join(moved) or 'none found'}) moved to core "
        f"{LOAD_CORE}; the gateway process alone on core {SERVER_CORE}")


def _store_setting(addr: tuple[str, int], name: str) -> str:
    """One CONFIG GET of the gateway's Valkey, as the bench reports it."""
    r = redis_sync.Redis(host=addr[0], port=addr[1], socket_timeout=5)
    try:
        got = r.config_get(name)
        return str(got.get(name, "?"))
    finally:
        r.close()


def bench_register(settings: Settings) -> Row:
    say(f"== 3. REGISTER with digest/s (401 + REGISTER, {settings.devices} devices), "
        "< 0.1% failures")
    with tempfile.TemporaryDirectory(prefix="bench-register-") as tmp:
        kdevs = [(f"dev{i:05d}", KAMAILIO_PASSWORD, USER_AGENT)
                 for i in range(settings.devices + 1)]
        csv_k = write_devices_csv(Path(tmp) / "kamailio.csv", kdevs[1:])
        # Each server's phones keep one contact address across the steps, as real phones
        # do: a fresh SIPp port per step would add a binding per step to every AOR.
        load_k = Load("register_uac.xml", ["-inf", str(csv_k)], "register",
                      register_probe_args(*kdevs[0]), port=free_udp_port())
        with kamailio("registrar.cfg", defines={"BENCH_PASSWORD": KAMAILIO_PASSWORD}) as k:
            km = find_sustained(k, load_k, settings, start=2000, ceiling=50_000)
        try:
            # SIPp sends every REGISTER from one address, and each of its devices registers
            # many times a second: the abuse guard's per-source and per-account limits
            # (5,000 and 30 / 10 s) would be measured instead of the node: lift them.
            # Kamailio keeps its location table in memory only (usrloc db_mode 0): the
            # gateway's store does too here, without its append-only file (which costs
            # the store a third more CPU on the load core; bench_fastlane shows it).
            with gateway({"redis": {"embedded_tcp_port": 0, "embedded_persist": False},
                          "registrar": {"source_rate": 10**9, "account_rate": 10**9}}) as g:
                if settings.store_on_load_core:
                    _store_to_load_core(g)
                vk = g.valkey_tcp()
                if vk is None:
                    raise NotAvailable("gateway printed no 'listening valkey tcp' line")
                aof = _store_setting(vk, "appendonly")
                say(f"  sipgw: its Valkey keeps bindings in memory only (appendonly {aof}), "
                    "as Kamailio's usrloc does (db_mode 0)")
                devs = asyncio.run(_provision(vk[0], vk[1], settings.devices + 1))
                csv_g = write_devices_csv(Path(tmp) / "sipgw.csv", devs[1:])
                gload = Load("register_uac.xml", ["-inf", str(csv_g)], "register",
                             register_probe_args(*devs[0]), port=free_udp_port())
                check = Sipp("register_uac.xml", (g.host, g.port), calls=1, rate=1,
                             max_seconds=10, extra=["-inf", str(csv_g)], port=gload.port)
                try:
                    one = check.start().wait()
                finally:
                    check.cleanup()
                if one.successful != 1:
                    why = (one.errors.strip().splitlines() or ["no 200"])[-1].split("\t")[-1]
                    if "must use MD5" in why:
                        why = ("SIPp 3.6 answers only the first WWW-Authenticate and only "
                               "MD5; the gateway challenges SHA-256 first")
                    raise NotAvailable(f"one REGISTER with digest did not succeed: {why[-300:]}")
                gw = find_sustained(g, gload, settings, start=500, ceiling=50_000)
        except NotAvailable as e:
            say(f"  sipgw: not available yet ({e})")
            gw = Outcome("sipgw", note="not available yet")
    return compare("REGISTER", gw, km, ">= 0.25 x kamailio and >= 3,000/s",
                   lambda o, r: r is not None and r >= 0.25 and (o.rate or 0) >= 3000)


# -- 4. calls ------------------------------------------------------------------------------
def invite_status(host: str, port: int) -> int | None:
    """Send one INVITE (no SDP) and return the final status, or None on silence."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2.0)
        lport = s.getsockname()[1]
        cid = f"bench-invite-{time.monotonic_ns()}@127.0.0.1"
        msg = (f"INVITE sip:callee@{host}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1:{lport}>;tag=b{lport}\r\n"
               f"To: <sip:callee@{host}:{port}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n"
               f"Contact: <sip:bench@127.0.0.1:{lport}>\r\nContent-Length: 0\r\n\r\n")
        s.sendto(msg.encode(), (host, port))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                data = s.recv(65535)
            except TimeoutError:
                return None
            parts = data.split(b" ", 2)
            if len(parts) > 1 and parts[1].isdigit() and int(parts[1]) >= 200:
                return int(parts[1])
    return None


def rtt_summary(ms: list[float]) -> dict[str, Any]:
    """p50/p99 of SIPp's per-call setup times (INVITE to 200), in the probe's format."""
    if not ms:
        return {"n": 0, "error": "SIPp recorded no response times"}
    ms = sorted(ms)

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, int(q * len(ms)))] * 1000

    return {"n": len(ms), "p50_us": pct(0.50), "p99_us": pct(0.99), "source": "sipp-rtd"}


CALL_CALLER, CALL_CALLEE = "alice@contoso.example", "bob@contoso.example"


async def _provision_pair(host: str, port: int) -> list[tuple[str, str, str]]:
    """Two devices paired with Alice and Bob of the bundled directory: (user, password,
    callee number) for the caller and (user, password, '') for the callee."""
    from gateway.backend.directory import default_directory_path, load_directory
    from gateway.registrar.admin import add_device
    from gateway.registrar.devices import DeviceStore
    from gateway.state.redis import connect

    directory = load_directory(default_directory_path())
    caller, callee = directory.user_by_upn(CALL_CALLER), directory.user_by_upn(CALL_CALLEE)
    assert caller is not None and callee is not None and callee.number
    redis = connect(f"redis://{host}:{port}/0")
    out = []
    try:
        for i, user in enumerate((caller, callee)):
            dev, password = await add_device(redis, f"00156599{i:04x}", "Yealink", "T54W",
                                             user.tenant, REALM)
            await DeviceStore(redis, REALM).set_paired(dev.device_id, user.oid)
            out.append((dev.sip_username, password, callee.number if i == 0 else ""))
    finally:
        await redis.aclose()
    return out


def _register_from(g: GatewayServer, port: int, user: str, password: str, tmp: Path) -> None:
    csv = write_devices_csv(tmp / f"reg-{port}.csv", [(user, password, USER_AGENT)])
    reg = Sipp("register_uac.xml", (g.host, g.port), calls=1, rate=1, max_seconds=10,
               port=port, extra=["-inf", str(csv)])
    try:
        one = reg.start().wait()
    finally:
        reg.cleanup()
    if one.successful != 1:
        why = (one.errors.strip().splitlines() or ["no 200"])[-1].split("\t")[-1]
        raise NotAvailable(f"REGISTER of the bench phone failed: {why[-300:]}")


@contextmanager
def call_backend(tmp: Path, settings: Settings) -> Iterator[tuple[dict[str, Any], int]]:
    """The ``[backend]`` section of the gateway under test. By default the reference
    backend ("the cloud") runs as its own ``sipgw backend`` process with its own Valkey on
    the load core, so the server core holds one gateway process (and its Valkey) alone;
    ``--embedded-backend`` measures ``sipgw serve`` with the backend inside it instead.
    Yields the section and the backend's PID (0 when embedded)."""
    if settings.embedded_backend:
        say("  backend: embedded in the gateway process (server core)")
        yield {"ring_timeout": 30}, 0
        return
    token = os.urandom(16).hex()
    backend = BackendProcess(tmp / "backend", token, ring_timeout=30)
    try:
        backend.start()
        say(f"  backend: `sipgw backend` as its own process on core {LOAD_CORE} "
            f"({backend.url}, own Valkey); gateway alone on core {SERVER_CORE}")
        yield {"url": backend.url, "token": token}, backend.pid
    finally:
        backend.stop()


def gateway_calls(settings: Settings) -> Outcome:
    """SIPp UAC (Alice's registered phone) -> gateway -> reference backend -> gateway ->
    SIPp UAS (Bob's registered phone). The latency probe cannot call from a registered
    source, so setup latency is SIPp's own rtd (4 ms ticks)."""
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp, \
            call_backend(Path(tmp), settings) as (backend_cfg, backend_pid), \
            gateway({"redis": {"embedded_tcp_port": 0}, "backend": backend_cfg}) as g:
        vk = g.valkey_tcp()
        if vk is None:
            raise NotAvailable("gateway printed no 'listening valkey tcp' line")
        if settings.store_on_load_core and not settings.embedded_backend:
            # as in the register bench; the load core has room for it (the backend, its
            # Valkey and SIPp stay under a core at the gateway's rates): its use is shown
            _store_to_load_core(g)
        (a_user, a_pw, number), (b_user, b_pw, _) = asyncio.run(_provision_pair(*vk))
        uac_port, uas_port = free_udp_port(), free_udp_port()
        _register_from(g, uas_port, b_user, b_pw, Path(tmp))
        _register_from(g, uac_port, a_user, a_pw, Path(tmp))
        uas = Sipp("call_uas.xml", None, max_seconds=3600, port=uas_port,
                   extra=["-s", b_user], recv_timeout_ms=UAS_RECV_TIMEOUT_MS)
        try:
            uas.start()
            load = Load("call_uac.xml", ["-s", number, "-key", "caller", a_user], "", [],
                        limit_seconds=1.0, port=uac_port, rtt=True, peer_pid=backend_pid)
            # the backend learns Bob's endpoint just after his REGISTER: first call gets through
            deadline = time.monotonic() + 10
            while True:
                check = run_step(g, load, 5, 0.2, settings, probe=False)
                if check.sipp.successful == 1:
                    break
                if time.monotonic() > deadline:
                    raise NotAvailable("no call got through the gateway: "
                                       + check.sipp.errors[-300:])
            store0, t0 = sum(cpu_seconds(p) for p in g.cpu_skip), time.monotonic()
            out = find_sustained(g, load, settings, start=100, ceiling=5_000)
            if g.cpu_skip:
                used = (sum(cpu_seconds(p) for p in g.cpu_skip) - store0) / \
                    (time.monotonic() - t0)
                say(f"  sipgw: its Valkey (core {LOAD_CORE}) used cpu {used:.2f} on average "
                    "over the steps")
            if out.rate and out.rate >= CALLS_TARGET:
                # the latency target is stated at 200 calls/s: one step exactly there
                at = run_step(g, load, CALLS_TARGET, settings.step_seconds, settings)
                say(at.line() + "  (the target's rate)")
                if at.passed:
                    out.passed.append(at)
            if out.rate:
                out.extra["held"] = held_dialogs(g, load, settings, out.rate)
            return out
        finally:
            uas.cleanup()


def bench_calls(settings: Settings) -> Row:
    say("== 4. Calls/s: SIPp UAC -> server -> SIPp UAS, INVITE...BYE without media")
    # the callee waits for each BYE as long as a held call lasts
    uas = Sipp("call_uas.xml", None, max_seconds=3600, recv_timeout_ms=UAS_RECV_TIMEOUT_MS)
    km = Outcome("kamailio")
    try:
        uas.start()
        load = Load("call_uac.xml", ["-s", "callee", "-key", "caller", "bench-caller"], "call",
                    ["--service", "callee"], limit_seconds=1.0)
        with kamailio("proxy.cfg", defines={"BENCH_UAS": f"sip:127.0.0.1:{uas.port}"}) as k:
            km = find_sustained(k, load, settings, start=200, ceiling=20_000)
            if km.rate:
                km.extra["held"] = held_dialogs(k, load, settings, km.rate)
    finally:
        uas.cleanup()
    try:
        gw = gateway_calls(settings)
    except NotAvailable as e:
        say(f"  sipgw: not available ({e})")
        gw = Outcome("sipgw", note="not available")
    # the target is a rate and a latency at that rate: "200 calls/s with p99 setup under
    # 100 ms", read at the lowest passing step of at least 200/s
    row = compare("CALLS", gw, km, ">= 200 calls/s, p99 setup < 100 ms at 200/s",
                  lambda o, r: (o.rate or 0) >= CALLS_TARGET
                  and _p99_at(o, CALLS_TARGET) < 100_000)
    for o in (gw, km):
        s = at_rate(o, CALLS_TARGET)
        if s is not None:
            say(f"{'':9} {o.server:8} at {s.sipp.rate:,.0f}/s (the target's rate): "
                f"p50 {fmt_us(s.probe.get('p50_us'))} p99 {fmt_us(s.probe.get('p99_us'))}")
    for o in (gw, km):
        held = o.extra.get("held")
        if held:
            say(f"{'':9} {o.server:8} {held}")
    return row


def _p99_at(o: Outcome, rate: float) -> float:
    s = at_rate(o, rate)
    return float(s.probe.get("p99_us") or 1e9) if s is not None else 1e9


def held_dialogs(server: Server, load: Load, settings: Settings, sustained: float) -> str:
    """Open ``settings.held_calls`` calls at the sustained rate and hold every one
    of them until the last is set up (-d), so all are established at once; then they all
    end. The ramp is bounded to ``settings.held_max_ramp`` seconds: a server too slow to
    open them all in that time is held at what it reached, and the line says so. Memory
    is the server's RSS (with its Valkey) before and at the peak, and per held dialog."""
    # the ramp sets calls up and ends none (a setup is about 2/3 of a call's work)
    rate = max(10.0, sustained)
    target = settings.held_calls
    ramp = target / rate
    if ramp > settings.held_max_ramp:
        target = int(rate * settings.held_max_ramp)
        ramp = settings.held_max_ramp
    hold = ramp + 5.0
    held = Load(load.scenario, load.sipp_args, load.probe_kind, load.probe_args,
                limit_seconds=1.0, hold_seconds=hold, port=load.port, peer_pid=load.peer_pid)
    short = "" if target == settings.held_calls else \
        f" (time-bounded: {settings.held_calls:,} would take {settings.held_calls / rate:.0f} s)"
    say(f"  {server.name}: holding {target:,} calls at once{short}: opened at {rate:,.0f}/s "
        f"over {ramp:.0f} s, each held {hold:.0f} s")
    rss0 = rss_bytes(server.pid)
    step = run_step(server, held, rate, ramp, settings, probe=False, track_rss=True)
    peak = step.probe.get("rss_peak", 0)
    open_at_once = step.sipp.peak_calls
    per = (peak - rss0) / open_at_once if open_at_once else 0.0
    say(f"    {step.sipp.successful:,} calls, {open_at_once:,} open at once at the "
        f"peak sample, failed {step.sipp.failed:,}, server cpu {step.cpu:.2f}")
    ok = step.sipp.failure_ratio < FAILURE_BUDGET and open_at_once >= 0.98 * target
    return (f"held {open_at_once:,} concurrent calls (asked {target:,}): "
            f"failed {100 * step.sipp.failure_ratio:.3f}%, "
            f"RSS {rss0 / 2**20:.0f} -> {peak / 2**20:.0f} MiB "
            f"({per / 1024:.1f} KiB per held dialog) {'ok' if ok else 'FAIL'}")


# -- main ----------------------------------------------------------------------------------
BENCHES: dict[str, Callable[[Settings], Row]] = {
    "parse": bench_parse, "options": bench_options,
    "register": bench_register, "calls": bench_calls,
}


def preflight() -> None:
    from harness import KAMAILIO, SIPP

    for tool in (KAMAILIO, SIPP):
        if not os.access(tool, os.X_OK):
            raise HarnessError(f"{tool} not found: run `make bench-tools`")
    if len(cores_available()) < 2:
        say("warning: fewer than 2 cores available; server and load share a core")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # SIPp wants a descriptor budget above its -l call limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs, for smoke checks")
    ap.add_argument("--embedded-backend", action="store_true",
                    help="calls: run the reference backend inside the gateway process "
                         "(default: as its own process on the load core)")
    ap.add_argument("--store-on-server-core", action="store_true",
                    help="register and calls benches: leave the gateway's embedded Valkey on "
                         "the server core (default: moved to the load core, the gateway alone "
                         "on its)")
    ap.add_argument("--only", default=",".join(BENCHES),
                    help="comma-separated subset of: " + ", ".join(BENCHES))
    args = ap.parse_args()
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    settings = QUICK if args.quick else FULL
    from dataclasses import replace
    if args.embedded_backend:
        settings = replace(settings, embedded_backend=True)
    if args.store_on_server_core:
        settings = replace(settings, store_on_load_core=False)
    say(f"sipgw benchmarks ({'quick' if args.quick else 'full'}): server on core "
        f"{SERVER_CORE}, SIPp and probe on core {LOAD_CORE}, loopback UDP; "
        f"{os.cpu_count()} cores, python {sys.version.split()[0]}")
    rows: list[Row] = []
    try:
        preflight()
        for name in chosen:
            say()
            rows.append(BENCHES[name](settings))
    except HarnessError as e:
        say(f"\nHARNESS FAILURE: {e}")
        return 2
    except Exception:  # noqa: BLE001 - a bug in the harness must be loud, not a half table
        say("\nHARNESS FAILURE (unexpected exception):")
        traceback.print_exc()
        return 2
    say()
    say("== summary (same run, same machine; compare ratios, not absolute figures)")
    say(f"{'bench':9} {'sipgw':>20} {'kamailio':>12} {'ratio':>6}  target")
    for r in rows:
        rt = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        say(f"{r.name:9} {r.sipgw:>20} {r.kamailio:>12} {rt:>6}  {r.target} {r.verdict}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
