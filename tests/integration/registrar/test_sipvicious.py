"""SIPVicious against `sipgw serve` on loopback: svmap may find the gateway, svwar must not
tell provisioned extensions from unknown ones, and svcrack cracks nothing: the abuse guard
blocks the source after the failure threshold (GuardConfig.source_failures, 10), before a
password further down its dictionary is ever tried."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import redis as redis_sync

from ..gateway_process import GatewayProcess
from .helpers import REALM, UdpPhone, overrides, require_tool, wait_for

RANGE = "1995-2010"  # covers the provisioned usernames 2001-2003


def _provision_numbered(redis_url: str) -> list[tuple[str, str]]:
    from gateway.registrar.admin import add_device
    from gateway.state.redis import connect

    from .helpers import run_async

    async def run() -> list[tuple[str, str]]:
        r = connect(redis_url)
        try:
            out = []
            for i in range(3):
                dev, pw = await add_device(r, f"0015aa0000{i:02x}", "Yealink", "T46S", "t",
                                           REALM, sip_username=str(2001 + i))
                out.append((dev.sip_username, pw))
            return out
        finally:
            await r.aclose()
    return list(run_async(run))


def _tool(name: str) -> str:
    return require_tool(f"sipvicious_{name}")


def _run(args: list[str], cwd: Path, timeout: float = 60) -> str:
    run = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                         stdin=subprocess.DEVNULL)
    return run.stdout + run.stderr


def test_svmap_finds_gateway_and_svwar_finds_no_extension(tmp_path: Path,
                                                          redis_url: str) -> None:
    _provision_numbered(redis_url)
    with GatewayProcess(tmp_path, overrides(redis={"url": redis_url})) as gw:
        host, port = gw.sip("udp")
        out = _run([_tool("svmap"), "-p", str(port), host], tmp_path)
        assert f"{host}:{port}" in out and "sipgw" in out, out
        for extra in (["-m", "REGISTER"], ["-m", "REGISTER", "--force"], ["-m", "OPTIONS"],
                      ["-m", "INVITE"]):
            out = _run([_tool("svwar"), "-e", RANGE, *extra, "--maximumtime", "20",
                        f"udp://{host}:{port}"], tmp_path)
            assert "found nothing" in out, (extra, out)
            assert not re.search(r"\|\s*200[123]\s*\|", out), (extra, out)


def _metric(gw: GatewayProcess, status: str) -> float:
    text = httpx.get(gw.metrics_url, timeout=10).text
    pattern = r'^sipgw_register_results_total\{status="' + status + r'"\} (\S+)'
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def _crack(tmp_path: Path, redis_url: str, passwords: list[str], user: str,
           gw: GatewayProcess) -> str:
    host, port = gw.sip("udp")
    words = tmp_path / "dict.txt"
    words.write_text("\n".join(passwords) + "\n")
    log = tmp_path / "svcrack.log"
    with log.open("w") as f:
        proc = subprocess.Popen([_tool("svcrack"), "-u", user, "-d", str(words), "--domain",
                                 REALM, "--maximumtime", "30", f"udp://{host}:{port}"],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=tmp_path)
        try:
            r = redis_sync.Redis.from_url(redis_url)
            try:
                wait_for(lambda: any(r.scan_iter("sipgw:block:src:*")), 30,
                         "the guard to block the cracking source")
            finally:
                r.close()
            # blocked: it now gets 403 even for its unauthenticated REGISTERs (no new nonce
            # to try the next password with)
            failures = _metric(gw, "403")
            wait_for(lambda: _metric(gw, "403") >= failures + 5, 20,
                     "svcrack to be refused while blocked")
        finally:
            proc.kill()
            proc.wait(10)
    return log.read_text()


def test_svcrack_is_blocked_before_success(tmp_path: Path, redis_url: str) -> None:
    devices = _provision_numbered(redis_url)
    (user, password), (user2, password2) = devices[0], devices[1]
    with GatewayProcess(tmp_path, overrides(redis={"url": redis_url})) as gw:
        # 1. a dictionary without the password: nothing cracked, the source blocked
        out = _crack(tmp_path, redis_url, [f"guess{i}" for i in range(15)], user, gw)
        assert password not in out and not re.search(r"\|\s*2001\s*\|", out), out[-2000:]
        phone = UdpPhone(*gw.sip("udp"), user, password)
        try:
            resp = phone.register()
            assert resp.status == 403 and "try later" in (resp.headers.get("Warning") or "")
        finally:
            phone.close()
    # 2. a fresh store and node; the password is 13th, past the failure threshold of 10
    r = redis_sync.Redis.from_url(redis_url)
    for pattern in ("sipgw:block:*", "sipgw:fail:*", "sipgw:rl:*"):
        for k in r.scan_iter(pattern):
            r.delete(k)
    second = tmp_path / "second"
    second.mkdir()
    with GatewayProcess(second, overrides(redis={"url": redis_url})) as gw:
        out = _crack(second, redis_url,
                     [f"guess{i}" for i in range(12)] + [password2], user2, gw)
        assert password2 not in out and not re.search(r"\|\s*2002\s*\|", out), out[-2000:]
        assert r.exists(f"sipgw:reg:{{sip:{user2}@{REALM}}}:b") == 0
    r.close()
