"""Leg persistence in a real Valkey: round trip, indexes, exactly-once delete."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from gateway.b2bua.legs import Leg, LegStore
from gateway.sip.dialog import Dialog
from gateway.sip.peer import FlowId, Peer
from gateway.state.redis import connect


def _leg() -> Leg:
    d = Dialog(call_id="c1@x", local_tag="lt", remote_tag="rt", local_uri="<sip:a@x>",
               remote_uri="<sip:b@x>", remote_target="sip:b@192.0.2.1:5060",
               route_set=["<sip:p@x;lr>"], local_seq=3, remote_seq=7,
               local_contact="<sip:sipgw@x>")
    return Leg(leg_id="L1", direction="in", backend_call_id="bc1", endpoint_id="sipdev-d1",
               device_id="d1", user="u1", dialog=d.to_dict(),
               peer=Leg.peer_dict(Peer("TCP", "192.0.2.1", 5060, FlowId("f7"))),
               local_sdp="v=0\r\n", session_expires=90, refresher="uac")


@pytest_twisted.ensureDeferred
async def test_leg_round_trip_through_redis(redis_url: str) -> None:
    async def run() -> None:
        redis = connect(redis_url)
        store = LegStore(redis)
        leg = _leg()
        await store.save(leg, se_deadline=100.0)
        got = await store.by_dialog("c1@x", "lt", "rt")
        assert got == leg
        assert got is not None and got.get_dialog() == leg.get_dialog()
        assert got.get_peer() == Peer("TCP", "192.0.2.1", 5060, FlowId("f7"))
        assert [x.leg_id for x in await store.by_call("bc1")] == ["L1"]
        assert await store.session_expired(99.0) == []
        assert await store.session_expired(100.0) == ["L1"]
        assert await redis.ttl("b2b:leg:L1") > 0
        assert await store.delete(leg) is True
        assert await store.delete(leg) is False  # a second remover gets False
        assert await store.by_dialog("c1@x", "lt", "rt") is None
        assert await store.by_call("bc1") == []
        assert await store.session_expired(1e12) == []
        await redis.set("b2b:leg:bad", b"{not json")
        assert await store.get("bad") is None
        await redis.aclose()
    d: Deferred[Any] = Deferred.fromFuture(asyncio.ensure_future(run()))
    await d


@pytest_twisted.ensureDeferred
async def test_node_local_copy_and_the_record_in_redis(redis_url: str) -> None:
    """The saving node answers from memory; another node (or this one after a restart)
    reads the same leg from Redis; a leg a caller changed is not the stored one until
    saved; a delete by another node wins over this node's copy."""
    async def run() -> None:
        redis = connect(redis_url)
        mine, other = LegStore(redis, prefix="t2:"), LegStore(redis, prefix="t2:")
        try:
            leg = _leg()
            await mine.save(leg)
            got = await mine.by_dialog("c1@x", "lt", "rt")
            assert got == leg
            assert got is not None
            got.local_sdp = "changed, not saved"
            assert (await mine.get("L1")) == leg  # the copy handed out is not the record
            assert (await other.by_dialog("c1@x", "lt", "rt")) == leg  # from Redis
            assert [x.leg_id for x in await other.by_call("bc1")] == ["L1"]
            assert await other.delete(leg) is True
            assert await mine.delete(leg) is False  # exactly one remover
            assert await mine.by_dialog("c1@x", "lt", "rt") is None
        finally:
            await mine.close()
            await other.close()
            await redis.aclose()
    d: Deferred[Any] = Deferred.fromFuture(asyncio.ensure_future(run()))
    await d


@pytest_twisted.ensureDeferred
async def test_event_position_keeps_the_newest_id(redis_url: str) -> None:
    """A burst of noted event ids ends with the newest one stored, and a fresh store (a
    restarted node) reads it back."""
    async def run() -> None:
        redis = connect(redis_url)
        store = LegStore(redis, prefix="t3:")
        try:
            for i in range(50):
                store.note_last_event("node-a", f"1700000000000-{i}")
            await store.flush_last_event()
            assert await LegStore(redis, prefix="t3:").last_event("node-a") == \
                "1700000000000-49"
        finally:
            await store.close()
            await redis.aclose()
    d: Deferred[Any] = Deferred.fromFuture(asyncio.ensure_future(run()))
    await d
