"""Admin API, /healthz and /ops over real HTTP on loopback; Valkey and the backend are real."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import pytest_twisted

from gateway.identity.enrollment import EnrollOutcome
from gateway.identity.pairing import PairingState, PairingStore
from gateway.state import keys
from integration.ops.env import CONTOSO, aio, oid_of

from .env import Env, admin_env

pytestmark = pytest.mark.integration

HOSTILE = "<script>alert(1)</script>"


def run(scenario):  # type: ignore[no-untyped-def]
    @pytest_twisted.ensureDeferred
    async def test(redis_url: str, tmp_path: Path) -> None:
        async def go() -> None:
            async with admin_env(redis_url, tmp_path) as env:
                await scenario(env)
        await aio(go())
    test.__name__ = scenario.__name__
    return test


async def _auth(env: Env) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic Zm9v"},
                    {"Authorization": f"Bearer {env.token}x"}):
        r = await env.http.get("/admin/v1/devices", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized"
        assert "Traceback" not in r.text
    r = await env.http.get("/ops")
    assert r.status_code == 401 and "basic" in r.headers["www-authenticate"].lower()
    # Basic with the token is for the browser page only, never for the API
    basic = "Basic " + base64.b64encode(f"admin:{env.token}".encode()).decode()
    assert (await env.http.get("/admin/v1/devices",
                               headers={"Authorization": basic})).status_code == 401
    r = await env.http.get("/admin/v1/devices", headers=env.auth)
    assert r.status_code == 200 and r.json() == {"devices": []}


test_auth_required = run(_auth)


async def _errors_are_json(env: Env) -> None:
    cases = [
        ("GET", "/admin/v1/nothing", None, 404),
        ("PUT", "/admin/v1/devices", None, 405),
        ("POST", "/admin/v1/devices", b"{not json", 400),
        ("POST", "/admin/v1/devices", b"[1,2]", 400),
        ("POST", "/admin/v1/devices", json.dumps({"mac": "zz"}).encode(), 400),
        ("GET", "/admin/v1/devices/not-a-mac", None, 400),
        ("GET", "/admin/v1/devices/00-04-f2-00-00-99", None, 404),
        ("POST", "/admin/v1/bulk-sign-in", b"Username,HardwareId\n", 400),
        ("POST", "/admin/v1/bulk-sign-in?region=MARS", b"Username,HardwareId\na,b\n", 400),
        ("GET", "/admin/v1/bulk-sign-in/../../etc", None, 404),
        ("POST", "/admin/v1/devices/00-04-f2-00-00-99/sign-in", None, 404),
        ("GET", "/nowhere", None, 404),
    ]
    for method, path, body, status in cases:
        r = await env.http.request(method, path, headers=env.auth, content=body)
        assert r.status_code == status, (method, path, r.text)
        assert set(r.json()) == {"error", "message"}, r.text
    # an oversized upload is discarded as it arrives and answered 413
    r = await env.http.post("/admin/v1/bulk-sign-in?region=NOAM", headers=env.auth,
                            content=b"x" * (2 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error"] == "too_large"


test_errors_are_json = run(_errors_are_json)


async def _add_device_password_once(env: Env) -> None:
    dev, password = await env.add_device("00:04:F2:AA:BB:01")
    assert len(password) >= 20
    r = await env.http.get(f"/admin/v1/devices/{dev.device_id}", headers=env.auth)
    assert r.status_code == 200
    assert password not in r.text and "ha1" not in r.text
    listing = (await env.http.get("/admin/v1/devices", headers=env.auth)).text
    assert password not in listing and dev.device_id in listing
    # nowhere in Redis in clear
    redis = env.node.redis
    async for key in redis.scan_iter(match="*"):
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            blob = b" ".join(k + b"=" + v for k, v in (await redis.hgetall(key)).items())
        elif kind == "string":
            blob = await redis.get(key) or b""
        elif kind == "list":
            blob = b" ".join(await redis.lrange(key, 0, -1))
        else:
            continue
        assert password.encode() not in blob, key
    r = await env.http.post("/admin/v1/devices", headers=env.auth, json={
        "mac": "0004f2aabb01", "vendor": "Yealink", "model": "T57W", "tenant": CONTOSO})
    assert r.status_code == 409 and "sip_password" not in r.text
    r = await env.http.delete(f"/admin/v1/devices/{dev.device_id}", headers=env.auth)
    assert r.status_code == 200 and r.json()["removed"] is True
    assert await env.node.devices.get(dev.device_id) is None


test_add_device_password_shown_once = run(_add_device_password_once)


async def _enrollment(env: Env) -> None:
    dev, _ = await env.add_device("00:04:F2:AA:BB:02")
    r = await env.http.post(f"/admin/v1/devices/{dev.device_id}/verification-code",
                            headers=env.auth)
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    assert code.isdigit() and 6 <= len(code) <= 8 and r.json()["dial"] == f"*55*{code}"
    # the code is not in Redis in clear
    async for key in env.node.redis.scan_iter(match="sipgw:enroll:*"):
        if (await env.node.redis.type(key)) == b"string":
            assert code.encode() not in (await env.node.redis.get(key) or b"")
    wrong = "0" * len(code) if code != "0" * len(code) else "1" * len(code)
    assert (await env.enrollment.handle_enroll(dev, wrong)).outcome is EnrollOutcome.WRONG_CODE
    result = await env.enrollment.handle_enroll(dev, code)
    assert result.ok and "sign-in" in result.message
    again = await env.enrollment.handle_enroll(dev, code)
    assert not again.ok and again.outcome is EnrollOutcome.NO_CODE
    shown = (await env.http.get(f"/admin/v1/devices/{dev.device_id}", headers=env.auth)).json()
    assert shown["enrollment"]["state"] == "waiting_for_sign_in"
    page = await env.http.get("/ops", headers=env.auth)
    assert "Waiting for sign in" in page.text

    # throttling: five wrong codes, then even the right one is refused
    other, _ = await env.add_device("00:04:F2:AA:BB:03")
    r = await env.http.post(f"/admin/v1/devices/{other.device_id}/verification-code",
                            headers=env.auth)
    code = r.json()["code"]
    bad = str((int(code) + 1) % 10 ** len(code)).zfill(len(code))
    for _ in range(5):
        res = await env.enrollment.handle_enroll(other, bad)
        assert res.outcome is EnrollOutcome.WRONG_CODE
    sixth = await env.enrollment.handle_enroll(other, code)
    assert sixth.outcome is EnrollOutcome.THROTTLED and sixth.retry_after > 0
    # the first device's own code does not open the other device
    r = await env.http.post(f"/admin/v1/devices/{dev.device_id}/verification-code",
                            headers=env.auth)
    third, _ = await env.add_device("00:04:F2:AA:BB:04")
    assert (await env.enrollment.handle_enroll(third, r.json()["code"])).outcome is \
        EnrollOutcome.NO_CODE


test_enrollment_code_single_use_and_throttled = run(_enrollment)


async def _ops_page_escapes(env: Env) -> None:
    dev, _ = await env.add_device("00:04:F2:AA:BB:05", model=HOSTILE)
    await env.node.redis.hset(keys.device(dev.device_id), mapping={
        "fw_user_agent": HOSTILE, "fw_firmware": "96.80.0.1", "fw_flagged": "1",
        "fw_admitted": "1", "fw_checked": "1700000000", "fw_compliance": "below_approved",
        "fw_upgrade_to": "96.86.5.1", "fw_reason": f"old firmware {HOSTILE}"})
    dev = await env.node.devices.get(dev.device_id)
    assert dev is not None
    await env.put_binding(dev, user_agent=HOSTILE)
    await env.node.redis.set(keys.block("src", "198.51.100.7"), "198.51.100.7", ex=600)
    basic = "Basic " + base64.b64encode(f"ops:{env.token}".encode()).decode()
    r = await env.http.get("/ops", headers={"Authorization": basic})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["content-security-policy"]
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2
    assert "non-compliant; approved 96.86.5.1" in page
    assert "192.0.2.10:5062" in page and env.node.node_id in page
    assert "198.51.100.7" in page


test_ops_page_escapes_hostile_values = run(_ops_page_escapes)


async def _healthz(env: Env) -> None:
    r = await env.http.get("/healthz")
    assert r.status_code == 503  # no SIP listener on this node
    checks = r.json()["checks"]
    assert checks["redis"]["ok"] and checks["backend"]["ok"] and not checks["sip"]["ok"]
    from gateway.app import Listening
    env.node.listening.append(Listening("sip", "udp", "127.0.0.1", 5060))
    r = await env.http.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    await env.stop_backend()
    await env.node.backend.close()  # drop the kept-alive connection to the stopped backend
    r = await env.http.get("/healthz")
    assert r.status_code == 503 and not r.json()["checks"]["backend"]["ok"]


test_healthz = run(_healthz)


async def _sign_in_out_without_pairing_manager(env: Env) -> None:
    dev, _ = await env.add_device("00:04:F2:AA:BB:06")
    r = await env.http.post(f"/admin/v1/devices/{dev.device_id}/sign-in", headers=env.auth)
    assert r.status_code == 503 and r.json()["error"] == "pairing_unavailable"
    store = PairingStore(env.node.redis)
    await store.transition(dev.device_id, PairingState.PAIRING, "test sign-in")
    await store.transition(dev.device_id, PairingState.PAIRED, "test")
    await env.node.devices.set_paired(dev.device_id, oid_of("lobby@contoso.example"))
    r = await env.http.post(f"/admin/v1/devices/{dev.device_id}/sign-out", headers=env.auth,
                            json={"reason": "desk moved"})
    assert r.status_code == 200 and r.json()["state"] == "unpaired"
    record = await store.get(dev.device_id)
    assert record.state is PairingState.UNPAIRED
    assert record.history[0].reason == "signed out by admin: desk moved"
    assert record.history[1].to_state is PairingState.SIGNING_OUT


test_sign_in_and_out_without_pairing_manager = run(_sign_in_out_without_pairing_manager)
