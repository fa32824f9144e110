"""SIPp registers 1,000 devices with digest auth against a real `sipgw serve` (UDP and TCP),
then a phone refreshes, removes, and lets a short binding expire (RFC 3261 §10.2-§10.3)."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_sync

from ..gateway_process import GatewayProcess
from .helpers import (
    HERE,
    REALM,
    UdpPhone,
    overrides,
    provision,
    require_tool,
    wait_for,
    write_csv,
)

DEVICES = 1000


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sipp(tmp: Path, target: tuple[str, int], csv: Path, *, calls: int, rate: int,
             flag: str = "u1", timeout: float = 90.0) -> tuple[int, int, str]:
    """Run the REGISTER scenario; returns (exit code, successful calls, diagnostics)."""
    sipp = require_tool("sipp")
    kind = socket.SOCK_DGRAM if flag.startswith("u") else socket.SOCK_STREAM
    errors = tmp / f"sipp_errors_{flag}.log"
    cmd = [sipp, "-sf", str(HERE / "register_uac.xml"), "-inf", str(csv), "-t", flag,
           "-m", str(calls), "-r", str(rate), "-rp", "1000", "-l", "300",
           "-i", "127.0.0.1", "-p", str(_free_port(kind)), "-buff_size", "4194304",
           "-timeout", f"{int(timeout - 10)}s", "-timeout_error", "-nostdin",
           "-trace_err", "-error_file", str(errors), f"{target[0]}:{target[1]}"]
    run = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
    ok = [int(m) for m in re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", run.stdout)]
    detail = run.stdout[-1500:] + run.stderr[-1000:] + (
        errors.read_text()[-2000:] if errors.exists() else "")
    return run.returncode, (ok[-1] if ok else 0), detail


def _aors_with_bindings(r: redis_sync.Redis, users: list[str]) -> int:
    pipe = r.pipeline(transaction=False)
    for u in users:
        pipe.hlen(f"sipgw:reg:{{sip:{u}@{REALM}}}:b")
    return sum(1 for n in pipe.execute() if n >= 1)


@pytest.mark.parametrize("flag", ["u1", "t1"])
def test_sipp_registers_1000_devices(tmp_path: Path, redis_url: str, flag: str) -> None:
    devices = provision(redis_url, DEVICES)
    csv = write_csv(tmp_path / "devices.csv", devices)
    with GatewayProcess(tmp_path, overrides(redis={"url": redis_url})) as gw:
        proto = "udp" if flag.startswith("u") else "tcp"
        started = time.monotonic()
        rc, ok, detail = run_sipp(tmp_path, gw.sip(proto), csv, calls=DEVICES, rate=400,
                                  flag=flag)
        elapsed = time.monotonic() - started
        assert rc == 0 and ok == DEVICES, detail + gw.output()[-2000:]
        r = redis_sync.Redis.from_url(redis_url)
        try:
            users = [u for u, _ in devices]
            assert _aors_with_bindings(r, users) == DEVICES
            assert r.zcard("sipgw:reg:index") == DEVICES
            [b] = [x for x in r.hvals(f"sipgw:reg:{{sip:{users[0]}@{REALM}}}:b")]
            assert b'"transport":"%s"' % proto.upper().encode() in b
            assert b'"node_id":"%s"' % gw.node.encode() in b
        finally:
            r.close()
    assert elapsed < 30, f"1,000 registrations took {elapsed:.1f}s"


def test_refresh_remove_and_expiry_without_request(tmp_path: Path, redis_url: str) -> None:
    [(user, pw)] = provision(redis_url, 1)
    aor = f"sip:{user}@{REALM}"
    cfg = overrides(redis={"url": redis_url},
                    registrar={"min_expires": 5, "sweep_interval": 0.5, "expires_jitter": 0.0})
    r = redis_sync.Redis.from_url(redis_url)
    with GatewayProcess(tmp_path, cfg) as gw:
        phone = UdpPhone(*gw.sip("udp"), user, pw)
        try:
            import json

            def expiry() -> float:
                [raw] = r.hvals(f"sipgw:reg:{{{aor}}}:b")
                return float(json.loads(raw)["expires"])

            resp = phone.register(expires=60)
            assert resp.status == 200, resp.headers.get("Warning")
            first = expiry()
            assert 55 < first - time.time() <= 61
            # a re-REGISTER refreshes: the same binding, a later expiry
            resp = phone.register(expires=600)
            assert resp.status == 200 and "expires=600" in (resp.headers.get("Contact") or "")
            assert expiry() - first > 500
            assert r.hlen(f"sipgw:reg:{{{aor}}}:b") == 1
            # Expires: 0 removes it
            resp = phone.register(expires=0)
            assert resp.status == 200 and resp.headers.get("Contact") is None
            assert r.exists(f"sipgw:reg:{{{aor}}}:b") == 0
            # too brief: 423 with Min-Expires
            resp = phone.register(expires=2)
            assert resp.status == 423 and resp.headers.get("Min-Expires") == "5"
            # a short binding disappears without any request (the sweep)
            resp = phone.register(expires=5)
            assert resp.status == 200
            assert r.hlen(f"sipgw:reg:{{{aor}}}:b") == 1
            wait_for(lambda: r.exists(f"sipgw:reg:{{{aor}}}:b") == 0
                     and r.zscore("sipgw:reg:index", aor) is None, 15,
                     "the expired binding to be swept")
        finally:
            phone.close()
            r.close()
