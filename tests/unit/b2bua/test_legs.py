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
