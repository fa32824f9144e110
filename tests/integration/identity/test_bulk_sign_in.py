"""Bulk sign-in through the admin API over loopback HTTP: real Valkey, real reference backend."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from gateway.identity.pairing import PairingState, PairingStore
from gateway.registrar.devices import user_aor
from integration.ops.env import FABRIKAM, Env, admin_env, aio, oid_of

pytestmark = pytest.mark.integration


async def _wait_done(env: Env, batch_id: str, timeout: float = 10.0) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            r = await env.http.get(f"/admin/v1/bulk-sign-in/{batch_id}", headers=env.auth)
            assert r.status_code == 200, r.text
            if r.json()["state"] == "done":
                return dict(r.json())
            await asyncio.sleep(0.05)
    return await asyncio.wait_for(poll(), timeout)


@pytest_twisted.ensureDeferred
async def test_bulk_sign_in_mixed_rows(redis_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        async with admin_env(redis_url, tmp_path) as env:
            online = {}
            for n, upn in enumerate(["lobby", "nonumber", "nopolicy", "alice", "mfa", "ghost"], 1):
                dev, _ = await env.add_device(f"00:04:f2:00:00:0{n}")
                await env.put_binding(dev)
                online[upn] = dev
            offline, _ = await env.add_device("00:04:f2:00:00:10")
            dup, _ = await env.add_device("00:04:f2:00:00:11")
            fab, _ = await env.add_device("00:04:f2:00:00:12", tenant=FABRIKAM)
            await env.put_binding(fab)
            csv = ("\ufeffUsername,HardwareId\r\n"
                   "lobby@contoso.example,00-04-F2-00-00-01\r\n"
                   "nonumber@contoso.example,00-04-f2-00-00-02\r\n"
                   "\r\n"
                   "nopolicy@contoso.example,00-04-f2-00-00-03\r\n"
                   "alice@contoso.example,00-04-f2-00-00-04\r\n"
                   "mfa@contoso.example,00-04-f2-00-00-05\r\n"
                   "kitchen@contoso.example,00-04-f2-00-00-10\r\n"
                   "ghost@contoso.example,00-04-f2-00-00-06\r\n"
                   "kitchen@contoso.example,00-04-f2-00-00-99\r\n"
                   "kitchen@contoso.example,00:04:f2:00:00:13\r\n"
                   "kitchen@contoso.example,00-04-f2-00-00-11\r\n"
                   "lobby@contoso.example,00-04-f2-00-00-11\r\n"
                   "lobby@fabrikam.example,00-04-f2-00-00-12\r\n")
            r = await env.http.post("/admin/v1/bulk-sign-in?region=noam", headers={
                **env.auth, "Content-Type": "text/csv"}, content=csv.encode())
            assert r.status_code == 202, r.text
            (batch_id,) = r.json()["batch_ids"]
            status = await _wait_done(env, batch_id)
            got = {row["line"]: row["result"] for row in status["rows"]}
            assert got == {
                2: "signed_in",
                3: "user_missing_phone_number",
                5: "user_missing_allow_sip_devices_calling",
                6: "user_missing_cap_policy",
                7: "user_mfa_enabled",
                8: "device_offline",
                9: "user_not_found",
                10: "device_not_found",
                11: "bad_hardware_id",
                12: "duplicate_device",
                13: "duplicate_device",
                14: "bulk_sign_in_disabled",
            }, status["rows"]
            rows = {row["line"]: row for row in status["rows"]}
            assert "lines 12, 13" in rows[12]["message"]
            assert all(row["message"] for row in status["rows"])
            assert status["counts"]["signed_in"] == 1
            # the row after the signed-in one: device already signed in, now
            lobby = online["lobby"]
            dev = await env.node.devices.get(lobby.device_id)
            assert dev is not None and dev.paired and dev.user == oid_of("lobby@contoso.example")
            members = await env.node.redis.smembers(
                f"sipgw:user:{user_aor(dev.user, dev.realm)}:devices")
            assert lobby.device_id.encode() in members
            record = await PairingStore(env.node.redis).get(lobby.device_id)
            assert record.state is PairingState.PAIRED
            assert record.upn == "lobby@contoso.example"
            assert record.history[0].reason == f"bulk sign-in batch {batch_id}"
            assert [t.to_state for t in record.history] == [PairingState.PAIRED,
                                                            PairingState.PAIRING]
            # a second run of the same row finds the device signed in
            r = await env.http.post("/admin/v1/bulk-sign-in?region=EMEA", headers=env.auth,
                                    content=b"Username,HardwareId\n"
                                            b"lobby@contoso.example,00-04-f2-00-00-01\n")
            again = await _wait_done(env, r.json()["batch_ids"][0])
            assert again["rows"][0]["result"] == "device_already_signed_in"
            for other in ("nonumber", "nopolicy", "alice", "mfa"):
                d = await env.node.devices.get(online[other].device_id)
                assert d is not None and not d.paired
    await aio(go())


@pytest_twisted.ensureDeferred
async def test_bulk_status_survives_a_new_service(redis_url: str, tmp_path: Path) -> None:
    """Batches live in Redis: a fresh BulkSignIn (a restarted node) reports and resumes them."""
    async def go() -> None:
        async with admin_env(redis_url, tmp_path) as env:
            from gateway.ops.admin import make_bulk

            paused = make_bulk(env.node)
            held: list[Any] = []
            paused._spawn = held.append  # this "node" dies before running anything
            rows = "".join(f"lobby@contoso.example,00-04-f2-00-01-{i:02x}\n" for i in range(250))
            ids = await paused.submit(b"Username,HardwareId\n" + rows.encode(), "APAC")
            assert len(ids) == 3 and len(held) == 3
            for coro in held:
                coro.close()
            st = await paused.status(ids[0])
            assert st is not None and st.state == "running" and len(st.rows) == 100
            assert {r.outcome.code for r in st.rows} == {"pending"}
            # leases lapse; the surviving node's service picks the batches up
            await env.node.redis.zadd("sipgw:bulk:running:APAC",
                                      {i: 0 for i in ids}, xx=True)
            await env.bulk.resume()
            for batch_id in ids:
                done = await _wait_done(env, batch_id)
                assert {row["result"] for row in done["rows"]} == {"device_not_found"}
            assert [len((await env.bulk.status(i)).rows) for i in ids] == [100, 100, 50]
    await aio(go())
