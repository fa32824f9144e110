"""Keep-alives: only the owning node pings its UDP bindings; unanswered ones are removed."""

from __future__ import annotations

from conftest import REALM, Env, arun, register_text
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred

from gateway.registrar import DeviceStore
from gateway.registrar.bindings import Binding
from gateway.registrar.keepalive import KeepAlive
from gateway.sip.peer import Peer


def test_owner_pings_udp_and_removes_unreachable(env: Env) -> Deferred[None]:
    async def body() -> None:
        reg, r = env.make()
        store = DeviceStore(r, REALM, clock=env.clock)
        users = []
        for i in range(3):
            _, c = await store.add(f"0004f2aa00{i:02x}", "Poly", "VVX410", "t1")
            users.append(c)
        _, direct = await store.add("0004f2aa0010", "Poly", "VVX410", "t1")
        # UDP phones behind NAT on node-a and node-b, a TCP phone without a flow on node-a,
        # and a UDP phone on node-a reachable at its own Contact (no NAT: nothing to keep
        # open, as nathelper pings only NATed contacts)
        plan = [(users[0], "UDP", "node-a", "203.0.113.1", None),
                (users[1], "TCP", "node-a", "203.0.113.2", None),
                (users[2], "UDP", "node-b", "203.0.113.3", None),
                (direct, "UDP", "node-a", "203.0.113.4", "<sip:x@203.0.113.4:5060>")]
        for c, transport, node, ip, contact in plan:
            resp = await env.register(reg, register_text(
                c.username, [contact] if contact else None, transport=transport),
                c.username, c.password, peer=Peer(transport, ip, 5060), node=node)
            assert resp.status == 200
        answering = {"203.0.113.1": True}
        pinged: list[Peer] = []

        async def send_options(peer: Peer, b: Binding) -> int | None:
            pinged.append(peer)
            return 200 if answering.get(peer.host) else None

        registry = CollectorRegistry()
        ka = KeepAlive(reg.store, "node-a", send_options, max_failures=2, registry=registry,
                       clock=env.clock)
        report = await ka.run_once()
        # only node-a's NATed UDP binding: not the TCP one, not node-b's, not the direct one
        assert [p.host for p in pinged] == ["203.0.113.1"] and report.answered == 1
        answering["203.0.113.1"] = False
        assert (await ka.run_once()).removed == 0  # one miss is not enough
        report = await ka.run_once()
        assert report.failed == 1 and report.removed == 1
        assert await reg.lookup(f"sip:{users[0].username}@{REALM}") == []
        assert len(await reg.lookup(f"sip:{users[2].username}@{REALM}")) == 1
        assert len(await reg.lookup(f"sip:{direct.username}@{REALM}")) == 1
        assert registry.get_sample_value("sipgw_keepalive_removed_total") == 1
        assert registry.get_sample_value("sipgw_keepalive_pings_total",
                                         {"result": "failed"}) == 2
        await r.aclose()
    return arun(body())


def test_refreshed_binding_is_not_removed(env: Env) -> Deferred[None]:
    async def body() -> None:
        reg, r = env.make()
        _, c = await DeviceStore(r, REALM, clock=env.clock).add("0004f2aa0100", "Poly",
                                                               "VVX410", "t1")
        peer = Peer("UDP", "203.0.113.7", 5060)
        assert (await env.register(reg, register_text(c.username), c.username, c.password,
                                   peer=peer)).status == 200
        [old] = await reg.lookup(f"sip:{c.username}@{REALM}")
        # the phone re-registers (higher CSeq) between the ping and the removal
        assert (await env.register(reg, register_text(c.username, cseq=5), c.username,
                                   c.password, peer=peer)).status == 200
        assert not await reg.store.remove_binding(old.aor, old.key, env.clock(), expected=old)
        assert len(await reg.lookup(f"sip:{c.username}@{REALM}")) == 1
        await r.aclose()
    return arun(body())


def test_listeners_hear_successful_registrations(env: Env) -> Deferred[None]:
    async def body() -> None:
        reg, r = env.make()
        store = DeviceStore(r, REALM, clock=env.clock)
        dev, c = await store.add("0004f2aa0200", "Poly", "VVX410", "t1")
        heard: list[object] = []
        reg.listeners.append(heard.append)
        reg.listeners.append(lambda _: 1 / 0)  # a broken listener changes nothing
        peer = Peer("UDP", "203.0.113.8", 5060)
        assert (await env.register(reg, register_text(c.username), c.username, c.password,
                                   peer=peer)).status == 200
        await store.set_paired(dev.device_id, "alice@example.com")
        assert (await env.register(reg, register_text(c.username, cseq=2, expires=0),
                                   c.username, c.password, peer=peer)).status == 200
        first, second = heard
        assert first.device_id == dev.device_id and first.paired_user == ""  # type: ignore
        assert len(first.bindings) == 1 and first.source == peer  # type: ignore
        assert second.paired_user == "alice@example.com" and second.bindings == ()  # type: ignore
        await r.aclose()
    return arun(body())
