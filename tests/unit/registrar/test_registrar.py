"""Registrar behaviour against a real Valkey (RFC 3261 §10.3, RFC 5626, RFC 3327)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from conftest import REALM, Env, Verdict, arun, authorize, parse, register_text
from twisted.internet.defer import Deferred

from gateway.registrar import DeviceStore
from gateway.sip.digest import DigestChallenge
from gateway.sip.errors import SipParseError
from gateway.sip.peer import FlowId, Peer
from gateway.state.keys import device_auth

MAC = "0004f2aabbcc"
# Poly VVX410 firmware 5.9.5: admitted, flagged, an upgrade offered
BELOW_APPROVED = Verdict(admitted=True, flagged=True, compliance="BELOW_APPROVED",
                         reason="firmware 5.9.5 below approved 5.9.7", upgrade_to="5.9.7")


async def _device(env: Env, mac: str = MAC, **kw: Any) -> tuple[str, str]:
    reg, r = env.make()
    dev, creds = await DeviceStore(r, REALM, clock=env.clock).add(mac, "Poly", "VVX410", "t1",
                                                                   **kw)
    await r.aclose()
    return dev.sip_username, creds.password


def _contacts(resp: Any) -> dict[str, int]:
    out = {}
    for v in resp.headers.get_all("Contact"):
        uri, _, params = v.partition(">")
        exp = [p.split("=")[1] for p in params.split(";") if p.startswith("expires=")]
        out[uri.lstrip("<")] = int(exp[0])
    return out


def test_first_register_challenges_both_algorithms(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, _ = await _device(env)
        reg, r = env.make()
        resp = await reg.handle_register(parse(register_text(user)), Peer("UDP", "1.2.3.4", 5),
                                         "n")
        assert resp.status == 401
        chs = [DigestChallenge.parse(v) for v in resp.headers.get_raw("WWW-Authenticate")]
        # the harness opts in to SHA-256 (RFC 8760 §2.4: preference order) ...
        assert [c.algorithm for c in chs] == ["SHA-256", "MD5"]
        assert {c.nonce for c in chs} == {chs[0].nonce} and all(c.qop == "auth" for c in chs)
        assert all(c.realm == REALM for c in chs)
        # ... the default challenges MD5 alone (interop: libre aborts on unknown algorithms)
        from gateway.registrar.auth import DigestAuthenticator
        plain = DigestAuthenticator(REALM, [b"k" * 32], 300)
        assert [DigestChallenge.parse(v).algorithm for v in plain.challenges(0.0)] == ["MD5"]
        with pytest.raises(ValueError):
            DigestAuthenticator(REALM, [b"k" * 32], 300, algorithms=("SHA-512",))
        await r.aclose()
    return arun(body())


def test_register_refresh_and_remove(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        for alg in ("SHA-256", "MD5"):
            resp = await env.register(reg, register_text(user, expires=600, cseq=1,
                                                         call_id=f"c-{alg}"),
                                      user, pw, algorithm=alg)
            assert resp.status == 200, resp.headers.get("Warning")
            contacts = _contacts(resp)
            assert contacts == {f"sip:{user}@192.168.1.10:5060": 600}
            assert resp.headers.get("Date", "").endswith("GMT")
        # refresh with the same Call-ID and a higher CSeq, 30 s later
        env.clock.now += 30
        resp = await env.register(reg, register_text(user, expires=900, cseq=2, call_id="c-MD5"),
                                  user, pw)
        assert resp.status == 200 and _contacts(resp)[f"sip:{user}@192.168.1.10:5060"] == 900
        (b,) = await reg.lookup(f"sip:{user}@{REALM}")
        assert b.source == Peer("UDP", "203.0.113.5", 40000)  # NAT: the source, not Contact
        assert b.node_id == "node-a" and b.user_agent.startswith("Yealink")
        dev = await reg.devices.get(MAC)
        assert dev is not None and dev.last_seen == env.clock.now
        # Expires: 0 removes (Cisco reset style, with a Reason)
        resp = await env.register(reg, register_text(user, expires=0, cseq=3, call_id="c-MD5",
                                                     extra=["Reason: Last=reset-restart"]),
                                  user, pw)
        assert resp.status == 200 and resp.headers.get_all("Contact") == []
        assert await reg.lookup(f"sip:{user}@{REALM}") == []
        await r.aclose()
    return arun(body())


def test_expiry_without_any_request(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        assert (await env.register(reg, register_text(user, expires=120), user, pw)).status == 200
        aor = f"sip:{user}@{REALM}"
        env.clock.now += 119
        assert len(await reg.lookup(aor)) == 1
        env.clock.now += 2
        assert await reg.lookup(aor) == []
        assert await reg.sweep_expired() == 0  # the lazy purge on read already removed it
        # the keys carry a TTL, so an idle AOR vanishes from Redis by itself
        assert await r.exists(f"sipgw:reg:{{{aor}}}:b") == 0
        resp = await env.register(reg, register_text(user, expires=120, cseq=5), user, pw)
        assert resp.status == 200, resp.headers.get("Warning")
        ttl = await r.pttl(f"sipgw:reg:{{{aor}}}:b")
        assert 0 < ttl <= (120 + 60) * 1000 + 1000
        env.clock.now += 500
        assert await reg.sweep_expired() == 1
        await r.aclose()
    return arun(body())


def test_sweep_reads_only_due_aors(env: Env) -> Deferred[None]:
    """The index is scored by each AOR's earliest expiry: a sweep purges the one expired
    binding of an AOR whose other binding lives on, and touches no AOR that is not due."""
    async def body() -> None:
        user, pw = await _device(env)
        other, other_pw = await _device(env, mac="0004f2bb0001")
        reg, r = env.make()
        aor = f"sip:{user}@{REALM}"
        resp = await env.register(reg, register_text(
            user, [f"<sip:{user}@10.0.0.1>;expires=120", f"<sip:{user}@10.0.0.2>;expires=900"]),
            user, pw)
        assert resp.status == 200
        assert (await env.register(reg, register_text(other, expires=3600), other,
                                   other_pw)).status == 200
        index = "sipgw:reg:index"
        assert await r.zscore(index, aor) == env.clock.now + 120
        env.clock.now += 121
        assert await reg.sweep_expired() == 1
        assert await r.hlen(f"sipgw:reg:{{{aor}}}:b") == 1  # the live one stays
        assert await r.zscore(index, aor) == env.clock.now - 121 + 900  # due next then
        assert await reg.sweep_expired() == 0  # nothing due: nothing purged
        env.clock.now += 800
        assert await reg.sweep_expired() == 1
        assert await r.zscore(index, aor) is None
        assert await r.zscore(index, f"sip:{other}@{REALM}") is not None
        await r.aclose()
    return arun(body())


def test_interval_too_brief_and_max(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        resp = await env.register(reg, register_text(user, expires=30), user, pw)
        assert resp.status == 423 and resp.headers.get("Min-Expires") == "60"
        resp = await env.register(reg, register_text(
            user, [f"<sip:{user}@10.0.0.1>;expires=10"], cseq=2, expires=3600), user, pw)
        assert resp.status == 423
        resp = await env.register(reg, register_text(user, expires=99999, cseq=3), user, pw)
        assert resp.status == 200 and list(_contacts(resp).values()) == [3600]
        await r.aclose()
    return arun(body())


def test_jitter_spreads_granted_expiry(env: Env) -> Deferred[None]:
    env.config = dataclasses.replace(env.config, expires_jitter=0.1)

    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        granted = set()
        for i in range(8):
            resp = await env.register(reg, register_text(user, expires=3600, cseq=i + 1), user,
                                      pw, nc=1)
            assert resp.status == 200
            granted |= set(_contacts(resp).values())
        assert all(3240 <= g <= 3600 for g in granted) and len(granted) > 1
        await r.aclose()
    return arun(body())


def test_wildcard_removal(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        two = [f"<sip:{user}@10.0.0.1>", f"<sip:{user}@10.0.0.2>"]
        assert (await env.register(reg, register_text(user, two), user, pw)).status == 200
        assert len(await reg.lookup(f"sip:{user}@{REALM}")) == 2
        resp = await env.register(reg, register_text(user, ["*"], expires=5, cseq=2), user, pw)
        assert resp.status == 400
        mixed = register_text(user, ["*", f"<sip:{user}@x>"], expires=0, cseq=2)
        with pytest.raises(SipParseError):  # the parser refuses it before the registrar
            parse(mixed)
        resp = await env.register(reg, register_text(user, ["*"], expires=0, cseq=3), user, pw)
        assert resp.status == 200 and resp.headers.get_all("Contact") == []
        assert await reg.lookup(f"sip:{user}@{REALM}") == []
        await r.aclose()
    return arun(body())


def test_cseq_ordering(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        assert (await env.register(reg, register_text(user, cseq=10), user, pw)).status == 200
        for stale_cseq in (10, 9):
            resp = await env.register(reg, register_text(user, cseq=stale_cseq), user, pw)
            assert resp.status == 500, stale_cseq
        # wildcard with the same Call-ID and lower CSeq is refused too
        resp = await env.register(reg, register_text(user, ["*"], expires=0, cseq=3), user, pw)
        assert resp.status == 500
        # a different Call-ID (phone rebooted) may replace the binding with any CSeq
        resp = await env.register(reg, register_text(user, cseq=1, call_id="other"), user, pw)
        assert resp.status == 200
        (b,) = await reg.lookup(f"sip:{user}@{REALM}")
        assert b.call_id == "other" and b.cseq == 1
        # a Call-ID JSON must escape (the script finds it in the stored JSON as written)
        odd = 'q"uo\\te@h'
        assert (await env.register(reg, register_text(user, cseq=7, call_id=odd), user,
                                   pw)).status == 200
        resp = await env.register(reg, register_text(user, cseq=6, call_id=odd), user, pw)
        assert resp.status == 500
        assert (await env.register(reg, register_text(user, cseq=8, call_id=odd), user,
                                   pw)).status == 200
        await r.aclose()
    return arun(body())


def test_multiple_contacts_q_values(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        cs = [f"<sip:{user}@10.0.0.1>;q=0.5", f"<sip:{user}@10.0.0.2>;q=1.0;expires=300",
              f"<sip:{user}@10.0.0.3>;q=0.1"]
        resp = await env.register(reg, register_text(user, cs, expires=1200), user, pw)
        assert resp.status == 200
        assert _contacts(resp) == {f"sip:{user}@10.0.0.2": 300, f"sip:{user}@10.0.0.1": 1200,
                                   f"sip:{user}@10.0.0.3": 1200}
        got = await reg.lookup(f"sip:{user}@{REALM}")
        assert [b.q for b in got] == [1.0, 0.5, 0.1]
        resp = await env.register(reg, register_text(user, [f"<sip:{user}@10.0.0.1>;q=7"],
                                                     cseq=2), user, pw)
        assert resp.status == 400
        # an empty Contact list is a query: the current bindings come back
        resp = await env.register(reg, register_text(user, [], cseq=3), user, pw)
        assert resp.status == 200 and len(_contacts(resp)) == 3
        await r.aclose()
    return arun(body())


def test_binding_cap(env: Env) -> Deferred[None]:
    env.config = dataclasses.replace(env.config, max_bindings_per_aor=2)

    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        cs = [f"<sip:{user}@10.0.0.{i}>" for i in range(3)]
        resp = await env.register(reg, register_text(user, cs), user, pw)
        assert resp.status == 403 and "at most 2" in (resp.headers.get("Warning") or "")
        assert await reg.lookup(f"sip:{user}@{REALM}") == []
        assert (await env.register(reg, register_text(user, cs[:2], cseq=2), user,
                                   pw)).status == 200
        await r.aclose()
    return arun(body())


def test_outbound_flow_and_path(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        inst = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
        c = f"<sip:{user}@192.168.1.10:5060;transport=tcp;ob>;+sip.instance={inst};reg-id=1"
        peer = Peer("TCP", "198.51.100.7", 61000, FlowId("flow-42"))
        text = register_text(user, [c], transport="TCP",
                             extra=["Supported: outbound, path",
                                    "Path: <sip:edge.example;lr;ob>"])
        resp = await env.register(reg, text, user, pw, peer=peer, node="node-b")
        assert resp.status == 200
        assert resp.headers.get("Require") == "outbound"
        assert resp.headers.get("Flow-Timer") == "120"
        assert resp.headers.get_all("Path") == ["<sip:edge.example;lr;ob>"]
        (b,) = await reg.lookup(f"sip:{user}@{REALM}")
        assert b.outbound and b.reg_id == 1 and b.key.startswith("ob:")
        assert b.instance == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
        assert b.source == peer and b.node_id == "node-b"
        assert b.path == ("<sip:edge.example;lr;ob>",)
        # the same instance/reg-id from a new connection replaces the flow
        c2 = c.replace("5060", "5070")
        peer2 = Peer("TCP", "198.51.100.7", 62000, FlowId("flow-43"))
        text = register_text(user, [c2], cseq=2, transport="TCP",
                             extra=["Supported: outbound"])
        assert (await env.register(reg, text, user, pw, peer=peer2)).status == 200
        (b,) = await reg.lookup(f"sip:{user}@{REALM}")
        assert b.flow == "flow-43" and "5070" in b.uri
        # a Path whose first hop lacks ;ob cannot carry an outbound flow
        text = register_text(user, [c], cseq=3, extra=["Supported: outbound",
                                                       "Path: <sip:edge.example;lr>"])
        assert (await env.register(reg, text, user, pw)).status == 439
        await r.aclose()
    return arun(body())


def test_firmware_rejected_and_flagged(env: Env) -> Deferred[None]:
    env.policy.rules["VVX_410-UA/5.9.4"] = Verdict(
        admitted=False, compliance="BELOW_MINIMUM",
        reason="firmware 5.9.4 below minimum 5.9.5 for Poly VVX410")
    env.policy.rules["VVX_410-UA/5.9.5"] = BELOW_APPROVED

    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        resp = await env.register(reg, register_text(
            user, ua="PolycomVVX-VVX_410-UA/5.9.4.1234"), user, pw)
        assert resp.status == 403
        assert resp.headers.get("Warning") == \
            f'399 {REALM} "firmware 5.9.4 below minimum 5.9.5 for Poly VVX410"'
        assert await reg.lookup(f"sip:{user}@{REALM}") == []
        dev = await reg.devices.get(MAC)
        assert dev is not None and not dev.firmware.admitted
        assert dev.firmware.compliance == "BELOW_MINIMUM"
        resp = await env.register(reg, register_text(
            user, cseq=2, ua="PolycomVVX-VVX_410-UA/5.9.5.1"), user, pw)
        assert resp.status == 200
        dev = await reg.devices.get(MAC)
        assert dev is not None and dev.firmware.flagged and not dev.firmware.compliant
        assert dev.firmware.upgrade_to == "5.9.7"
        await reg.refresh_metrics(env.clock.now)
        assert env.registry.get_sample_value(
            "sipgw_registrations_active",
            {"vendor": "Poly", "model": "VVX410", "verdict": "BELOW_APPROVED"}) == 1
        assert env.registry.get_sample_value("sipgw_register_results_total",
                                             {"status": "403"}) == 1
        await r.aclose()
    return arun(body())


def test_active_registrations_gauge_follows_every_change(env: Env) -> Deferred[None]:
    """sipgw_registrations_active comes from counts the REGISTER script keeps per
    vendor/model/verdict: a firmware upgrade moves the device between labels, and a
    removal, an expiry, a keep-alive removal or the device's deletion takes it out."""
    env.policy.rules["VVX_410-UA/5.9.5"] = BELOW_APPROVED

    def active(verdict: str) -> float | None:
        return env.registry.get_sample_value(  # type: ignore[no-any-return]
            "sipgw_registrations_active",
            {"vendor": "Poly", "model": "VVX410", "verdict": verdict})

    async def body() -> None:
        a, a_pw = await _device(env)
        b, b_pw = await _device(env, mac="0004f2cc0001")
        reg, r = env.make()
        old_ua = "PolycomVVX-VVX_410-UA/5.9.5.1"
        for user, pw in ((a, a_pw), (b, b_pw)):
            assert (await env.register(reg, register_text(user, ua=old_ua, expires=600),
                                       user, pw)).status == 200
        await reg.refresh_metrics(env.clock.now)
        assert active("BELOW_APPROVED") == 2 and active("SUPPORTED") is None
        # a upgrades its firmware: it moves to the other label
        assert (await env.register(reg, register_text(a, cseq=2, expires=600), a,
                                   a_pw)).status == 200
        await reg.refresh_metrics(env.clock.now)
        assert active("BELOW_APPROVED") == 1 and active("SUPPORTED") == 1
        # Expires: 0 takes a out
        assert (await env.register(reg, register_text(a, cseq=3, expires=0), a,
                                   a_pw)).status == 200
        await reg.refresh_metrics(env.clock.now)
        assert active("SUPPORTED") is None and active("BELOW_APPROVED") == 1
        # b's binding removed by the keep-alive path, then back, then expired
        (bb,) = await reg.lookup(f"sip:{b}@{REALM}")
        assert await reg.store.remove_binding(bb.aor, bb.key, env.clock.now, expected=bb)
        await reg.refresh_metrics(env.clock.now)
        assert active("BELOW_APPROVED") is None
        assert (await env.register(reg, register_text(b, ua=old_ua, cseq=2, expires=600),
                                   b, b_pw)).status == 200
        await reg.refresh_metrics(env.clock.now)
        assert active("BELOW_APPROVED") == 1
        env.clock.now += 601
        await reg.refresh_metrics(env.clock.now)
        assert active("BELOW_APPROVED") is None
        # a deleted device is not counted either
        env.clock.now += 1
        assert (await env.register(reg, register_text(b, ua=old_ua, cseq=3, expires=600),
                                   b, b_pw)).status == 200
        await reg.refresh_metrics(env.clock.now)
        assert active("BELOW_APPROVED") == 1
        assert await reg.devices.remove("0004f2cc0001")
        await reg.refresh_metrics(env.clock.now)
        assert active("BELOW_APPROVED") is None
        await r.aclose()
    return arun(body())


def test_device_record_follows_the_phone(env: Env) -> Deferred[None]:
    """What the REGISTER script keeps of the device: a refresh moves last_seen and the
    verdict's check time and keeps the rest; a firmware upgrade rewrites the verdict; a
    new source address is remembered for the account."""
    env.policy.rules["VVX_410-UA/5.9.5"] = BELOW_APPROVED

    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        store = DeviceStore(r, REALM, clock=env.clock)
        old_ua = "PolycomVVX-VVX_410-UA/5.9.5.1"
        first = Peer("UDP", "203.0.113.9", 5060)
        assert (await env.register(reg, register_text(user, ua=old_ua), user, pw,
                                   peer=first)).status == 200
        before = await store.get(MAC)
        assert before is not None and before.firmware.user_agent == old_ua
        assert before.firmware.flagged and before.firmware.upgrade_to == "5.9.7"
        assert before.last_seen == env.clock.now == before.firmware.checked
        env.clock.now += 30
        assert (await env.register(reg, register_text(user, ua=old_ua, cseq=2), user, pw,
                                   peer=first)).status == 200
        again = await store.get(MAC)
        assert again is not None and again.last_seen == env.clock.now
        assert again.firmware == dataclasses.replace(before.firmware, checked=env.clock.now)
        env.clock.now += 30
        moved = Peer("UDP", "203.0.113.77", 5062)
        assert (await env.register(reg, register_text(user, cseq=3), user, pw,
                                   peer=moved)).status == 200
        upgraded = await store.get(MAC)
        assert upgraded is not None and upgraded.firmware.user_agent != old_ua
        assert upgraded.firmware.compliance == "SUPPORTED" and not upgraded.firmware.flagged
        assert upgraded.firmware.reason == upgraded.firmware.upgrade_to == ""
        assert (await r.hget(device_auth(user), "last_ip")) == b"203.0.113.77"
        await r.aclose()
    return arun(body())


def test_unknown_user_indistinguishable_from_wrong_password(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        peer = Peer("UDP", "198.51.100.1", 5060)

        def shape(resp: Any) -> tuple[Any, ...]:
            chs = [DigestChallenge.parse(v) for v in resp.headers.get_raw("WWW-Authenticate")]
            return (resp.status, resp.reason, [n for n, _ in resp.headers],
                    [(c.realm, c.algorithm, c.qop, c.stale) for c in chs],
                    resp.headers.get("Warning"))

        known = await reg.handle_register(parse(register_text(user)), peer, "n")
        ghost = await reg.handle_register(parse(register_text("ghost99")), peer, "n")
        assert shape(known) == shape(ghost)
        wrong = await env.register(reg, register_text(user, cseq=2), user, "not-it", peer=peer)
        unknown = await env.register(reg, register_text("ghost99", cseq=2), "ghost99", pw,
                                     peer=peer)
        assert wrong.status == 403 and shape(wrong) == shape(unknown)
        assert env.registry.get_sample_value("sipgw_register_auth_failures_total",
                                             {"reason": "bad_credentials"}) == 2
        await r.aclose()
    return arun(body())


def test_blocking_holds_across_nodes(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        node_a, ra = env.make("node-a")
        node_b, rb = env.make("node-b")
        attacker = Peer("UDP", "198.51.100.66", 5060)
        for i in range(5):
            node = node_a if i % 2 == 0 else node_b
            resp = await env.register(node, register_text(user, cseq=i + 1), user, f"guess{i}",
                                      peer=attacker)
            assert resp.status == 403
        # now blocked on both nodes, even with the right password and without one
        for node in (node_a, node_b):
            resp = await env.register(node, register_text(user, cseq=9), user, pw, peer=attacker)
            assert resp.status == 403 and "try later" in (resp.headers.get("Warning") or "")
        # the real phone elsewhere: the account is blocked too (it never registered before)
        phone = Peer("UDP", "203.0.113.9", 5060)
        resp = await env.register(node_b, register_text(user, cseq=10), user, pw, peer=phone)
        assert resp.status == 403
        await node_a.guard.unblock(username=user)
        resp = await env.register(node_b, register_text(user, cseq=11), user, pw, peer=phone)
        assert resp.status == 200
        # block expires with time (the Redis TTL): advance past it for real is too slow, so
        # check the TTL that enforces it
        ttl = await ra.ttl(next(iter([k async for k in ra.scan_iter("sipgw:block:src:*")])))
        assert 0 < ttl <= env.config.guard.block_seconds
        assert env.registry.get_sample_value("sipgw_register_blocks_total",
                                             {"scope": "source"}) is not None
        await ra.aclose()
        await rb.aclose()
    return arun(body())


def test_account_block_spares_the_phones_own_address(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        phone = Peer("UDP", "203.0.113.9", 5060)
        assert (await env.register(reg, register_text(user), user, pw, peer=phone)).status == 200
        for i in range(5):  # five different attackers: no single source reaches its limit
            await env.register(reg, register_text(user, cseq=i + 2), user, "x",
                               peer=Peer("UDP", f"198.51.100.{i + 1}", 5060))
        stranger = Peer("UDP", "198.51.100.200", 5060)
        assert (await env.register(reg, register_text(user, cseq=20), user, pw,
                                   peer=stranger)).status == 403
        assert (await env.register(reg, register_text(user, cseq=21), user, pw,
                                   peer=phone)).status == 200
        await r.aclose()
    return arun(body())


def test_rate_limits(env: Env) -> Deferred[None]:
    env.config = dataclasses.replace(
        env.config, guard=dataclasses.replace(env.config.guard, source_rate=20, account_rate=4))

    async def body() -> None:
        reg, r = env.make()
        src = Peer("UDP", "192.0.2.1", 5060)
        statuses = [(await reg.handle_register(parse(register_text(f"u{i}")), src, "n")).status
                    for i in range(25)]
        assert statuses[:20] == [401] * 20 and statuses[20:] == [503] * 5
        resp = await reg.handle_register(parse(register_text("u0")), src, "n")
        assert resp.headers.get("Retry-After") is not None
        # the next window admits again
        env.clock.now += env.config.guard.rate_window
        assert (await reg.handle_register(parse(register_text("u0")), src, "n")).status == 401
        await r.aclose()
    return arun(body())


def test_ip_dect_server_many_accounts_one_source(env: Env) -> Deferred[None]:
    async def body() -> None:
        reg, r = env.make()
        store = DeviceStore(r, REALM, clock=env.clock)
        creds = []
        for i in range(40):
            _, c = await store.add(f"0013d1{i:06x}", "Spectralink", "IP-DECT 400", "t1",
                                   sip_username=f"dect{i}")
            creds.append(c)
        server = Peer("UDP", "192.0.2.50", 5060)
        for c in creds:
            resp = await env.register(reg, register_text(c.username), c.username, c.password,
                                      peer=server)
            assert resp.status == 200
        await r.aclose()
    return arun(body())


def test_nonce_reuse_replay_and_stale(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        peer = Peer("UDP", "203.0.113.5", 40000)
        text = register_text(user)
        ch = await reg.handle_register(parse(text), peer, "n")
        signed = authorize(text, ch, user, pw, nc=1)
        assert (await reg.handle_register(parse(signed), peer, "n")).status == 200
        # replay of the same Authorization (nc=1 again): refused with a fresh stale challenge
        again = await reg.handle_register(parse(signed.replace("CSeq: 1", "CSeq: 1")), peer, "n")
        assert again.status == 401
        assert all(DigestChallenge.parse(v).stale
                   for v in again.headers.get_raw("WWW-Authenticate"))
        # the same nonce with a higher nc is fine (phones reuse nonces for refreshes)
        text2 = register_text(user, cseq=2)
        assert (await reg.handle_register(parse(authorize(text2, ch, user, pw, nc=2)), peer,
                                          "n")).status == 200
        # nonce older than its lifetime: stale=true when the password was right ...
        env.clock.now += env.config.nonce_ttl + 1
        text3 = register_text(user, cseq=3)
        resp = await reg.handle_register(parse(authorize(text3, ch, user, pw, nc=3)), peer, "n")
        assert resp.status == 401
        assert DigestChallenge.parse(resp.headers.get_raw("WWW-Authenticate")[0]).stale
        # ... and a plain failure when it was not
        resp = await reg.handle_register(parse(authorize(text3, ch, user, "bad", nc=4)), peer,
                                         "n")
        assert resp.status == 403
        await r.aclose()
    return arun(body())


def test_malformed_inputs_get_clear_errors(env: Env) -> Deferred[None]:
    async def body() -> None:
        user, pw = await _device(env)
        reg, r = env.make()
        peer = Peer("UDP", "203.0.113.5", 40000)
        bad_auth = register_text(user, extra=['Authorization: Digest username="a'])
        resp = await reg.handle_register(parse(bad_auth), peer, "n")
        assert resp.status == 400 and resp.headers.get("Warning")
        forged = register_text(user, extra=[
            f'Authorization: Digest username="{user}", realm="{REALM}", nonce="forged", '
            'uri="sip:gw.test", response="00", algorithm=MD5'])
        resp = await reg.handle_register(parse(forged), peer, "n")
        assert resp.status == 401  # not our nonce: just a fresh challenge
        bad_exp = register_text(user, [f"<sip:{user}@10.0.0.1>;expires=abc"])
        resp = await env.register(reg, bad_exp, user, pw)
        assert resp.status == 400
        tel = register_text(user).replace(f"To: <sip:{user}@{REALM}>", "To: <tel:+15551234>")
        assert (await reg.handle_register(parse(tel), peer, "n")).status == 404
        await r.aclose()
    return arun(body())


def test_store_unavailable_gives_503(env: Env) -> Deferred[None]:
    async def body() -> None:
        reg, r = env.make()
        await r.aclose()
        from gateway.state.redis import connect
        dead = connect("redis://127.0.0.1:1")
        reg.redis = dead
        reg.store.redis = dead
        # the challenge needs no store: it still works
        peer = Peer("UDP", "1.1.1.1", 1)
        challenge = await reg.handle_register(parse(register_text("x")), peer, "n")
        assert challenge.status == 401
        resp = await reg.handle_register(parse(authorize(register_text("x"), challenge, "x",
                                                         "pw")), peer, "n")
        assert resp.status == 503 and resp.headers.get("Retry-After")
        await dead.aclose()
    return arun(body())


def test_overload_gives_503(env: Env) -> Deferred[None]:
    env.config = dataclasses.replace(env.config, max_pending=0)

    async def body() -> None:
        reg, r = env.make()
        resp = await reg.handle_register(parse(register_text("x")), Peer("UDP", "1.1.1.1", 1),
                                         "n")
        assert resp.status == 503 and int(resp.headers.get("Retry-After") or 0) > 0
        await r.aclose()
    return arun(body())
