"""Device accounts, pairing aliases, credentials at rest, stale offboarding, admin helpers."""

from __future__ import annotations

import pytest
from conftest import REALM, Env, arun, register_text

from gateway.registrar import DeviceError, DeviceStore, normalise_mac
from gateway.registrar.admin import add_device, list_devices, remove_device, show_device
from gateway.registrar.lifecycle import DAY
from gateway.sip.peer import Peer


def test_normalise_mac() -> None:
    assert normalise_mac("00:04:F2-AA.bb cc") == "0004f2aabbcc"
    for bad in ("", "0004f2", "000000000000", "zz04f2aabbcc", "0004f2aabbccdd"):
        with pytest.raises(DeviceError):
            normalise_mac(bad)


def test_passwords_never_stored_in_clear(env: Env) -> None:
    async def body() -> None:
        reg, r = env.make()
        dev, pw = await add_device(r, "00:04:f2:11:22:33", "Poly", "VVX410", "t1", REALM)
        assert len(pw) >= 20
        resp = await env.register(reg, register_text(dev.sip_username), dev.sip_username, pw)
        assert resp.status == 200
        needle = pw.encode()
        found = []
        async for k in r.scan_iter(count=1000):
            t = await r.type(k)
            if t == b"string":
                vals = [await r.get(k)]
            elif t == b"hash":
                vals = [x for kv in (await r.hgetall(k)).items() for x in kv]
            elif t == b"set":
                vals = list(await r.smembers(k))
            elif t == b"zset":
                vals = [m for m, _ in await r.zrange(k, 0, -1, withscores=True)]
            else:
                vals = []
            if needle in k or any(needle in (v or b"") for v in vals):
                found.append(k)
        assert found == []
        full = await reg.devices.get(dev.device_id)
        assert full is not None and len(full.ha1_md5) == 32 and len(full.ha1_sha256) == 64
        assert "ha1_md5" not in str(full.public())
        await r.aclose()
    return arun(body())


def test_duplicates_refused_and_remove(env: Env) -> None:
    async def body() -> None:
        reg, r = env.make()
        await add_device(r, "0004f2000001", "Poly", "VVX410", "t1", REALM)
        with pytest.raises(DeviceError):
            await add_device(r, "00-04-F2-00-00-01", "Poly", "VVX410", "t1", REALM)
        with pytest.raises(DeviceError):
            await add_device(r, "0004f2000002", "Poly", "VVX410", "t1", REALM,
                             sip_username="0004f2000001")
        listed = await list_devices(r, REALM)
        assert [d["device_id"] for d in listed] == ["0004f2000001"]
        shown = await show_device(r, "0004f2000001", REALM)
        assert shown is not None and shown["state"] == "unpaired" and shown["bindings"] == []
        assert await remove_device(r, "0004f2000001", REALM) is True
        assert await remove_device(r, "0004f2000001", REALM) is False
        assert await show_device(r, "0004f2000001", REALM) is None
        await r.aclose()
    return arun(body())


def test_pairing_alias_routes_user_aor(env: Env) -> None:
    async def body() -> None:
        reg, r = env.make()
        store = DeviceStore(r, REALM, clock=env.clock)
        d1, c1 = await store.add("0004f2000011", "Poly", "VVX410", "t1")
        d2, c2 = await store.add("805ec0000022", "Yealink", "T46S", "t1")
        for c in (c1, c2):
            resp = await env.register(reg, register_text(c.username), c.username, c.password)
            assert resp.status == 200
        user = "alice@contoso.example"
        assert await reg.lookup(f"sip:{user}") == []
        await store.set_paired(d1.device_id, user)
        await store.set_paired(d2.device_id, user)
        got = await reg.lookup(f"sip:{user}")
        assert sorted(b.device_id for b in got) == [d1.device_id, d2.device_id]
        # the device AOR keeps working
        assert [b.device_id for b in await reg.lookup(d1.aor)] == [d1.device_id]
        await store.set_unpaired(d1.device_id)
        assert [b.device_id for b in await reg.lookup(f"sip:{user}")] == [d2.device_id]
        dev = await store.get(d1.device_id)
        assert dev is not None and dev.state == "unpaired" and dev.user == ""
        await r.aclose()
    return arun(body())


def test_stale_offboarding_and_reonboarding(env: Env) -> None:
    async def body() -> None:
        reg, r = env.make()
        store = DeviceStore(r, REALM, clock=env.clock)
        paired, pc = await store.add("0004f2000031", "Poly", "VVX410", "t1")
        unpaired, uc = await store.add("0004f2000032", "Poly", "VVX410", "t1")
        fresh, fc = await store.add("0004f2000033", "Poly", "VVX410", "t1")
        await store.set_paired(paired.device_id, "bob")
        for c in (pc, uc):
            resp = await env.register(reg, register_text(c.username), c.username, c.password,
                                      peer=Peer("UDP", "203.0.113.1", 5060))
            assert resp.status == 200
        t0 = env.clock.now
        env.clock.now = t0 + 13 * DAY
        await env.register(reg, register_text(fc.username), fc.username, fc.password)
        assert await reg.offboard_stale() == []
        env.clock.now = t0 + 14 * DAY + 1
        assert await reg.offboard_stale() == [unpaired.device_id]
        env.clock.now = t0 + 30 * DAY - 10
        await store.touch(fresh.device_id)
        assert await reg.offboard_stale() == []
        env.clock.now = t0 + 30 * DAY + 1
        await store.touch(fresh.device_id)
        assert await reg.offboard_stale() == [paired.device_id]
        assert await store.get(paired.device_id) is None
        assert await store.devices_of_user("bob") == []
        assert await r.exists(f"sipgw:reg:{{{paired.aor}}}:b") == 0
        # old credentials are gone: same answer as any unknown user
        resp = await env.register(reg, register_text(pc.username, cseq=7), pc.username,
                                  pc.password)
        assert resp.status == 403
        # ... and the MAC can be onboarded again with new credentials
        again, ac = await store.add("0004f2000031", "Poly", "VVX410", "t1")
        resp = await env.register(reg, register_text(ac.username, cseq=8), ac.username,
                                  ac.password)
        assert resp.status == 200
        assert sorted(d.device_id for d in await store.list()) == sorted(
            [fresh.device_id, again.device_id])
        await r.aclose()
    return arun(body())


def test_generated_passwords_avoid_prefixes_tools_misread() -> None:
    from gateway.registrar.devices import generate_credentials

    for _ in range(3000):
        pw = generate_credentials("u", "r").password
        assert not pw.startswith(("0x", "0X", "-")) and len(pw) >= 22


def test_get_by_username_reads_credentials_and_account(env: Env) -> None:
    """The INVITE path's device read (one round trip for MAC-named usernames) gives what
    ``get`` gives, and None for unknown or half-gone accounts."""
    async def body() -> None:
        _, r = env.make()
        store = DeviceStore(r, REALM, clock=env.clock)
        dev, _ = await store.add("0004f2000031", "Poly", "VVX410", "t1",
                                 sip_username="desk-31")
        await store.set_paired(dev.device_id, "alice@contoso.example")
        want = await store.get(dev.device_id)
        assert want is not None and want.paired and want.ha1_sha256
        assert await store.get_by_username("desk-31") == want
        mac, _ = await store.add("0004f2000032", "Poly", "VVX410", "t1")
        assert mac.sip_username == mac.device_id
        assert await store.get_by_username(mac.sip_username) == await store.get(mac.device_id)
        assert await store.get_by_username("nobody") is None
        await r.delete(f"sipgw:dev:{dev.device_id}")
        assert await store.get_by_username("desk-31") is None
        await store.close()
        await r.aclose()
    return arun(body())
