"""The reference backend over real HTTP/WebSocket on loopback, state in a real Valkey."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
import treq
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred

from gateway.backend.client import BackendClient, BackendError, EventStream
from gateway.backend.directory import default_directory_path, load_directory
from gateway.backend.reference.engine import CallEngine, EngineConfig, PstnSimulation
from gateway.backend.reference.server import start_reference_backend
from gateway.backend.schema import Call, CallCreate, EndpointCreate, Event, Target
from gateway.state.redis import connect

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789"
DIRECTORY = load_directory(default_directory_path())
ALICE = DIRECTORY.user_by_upn("alice@contoso.example")
BOB = DIRECTORY.user_by_upn("bob@contoso.example")
assert ALICE is not None and BOB is not None
OFFER = ("v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
         "m=audio 5004 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
         "a=rtpmap:101 telephone-event/8000\r\n")


def aio(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    """Run an asyncio coroutine (redis.asyncio needs a real task) from a Twisted test."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


@dataclass
class Env:
    url: str
    client: BackendClient
    events: EventStream
    registry: CollectorRegistry
    backlog: list[Event] = field(default_factory=list)

    async def expect(self, predicate: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        """The first event matching ``predicate``; others stay in the backlog for later."""
        for i, ev in enumerate(self.backlog):
            if predicate(ev):
                return self.backlog.pop(i)

        async def wait() -> Event:
            while True:
                ev = await self.events.next(timeout)
                if predicate(ev):
                    return ev
                self.backlog.append(ev)
        return await asyncio.wait_for(wait(), timeout)

    async def expect_n(self, n: int, predicate: Callable[[Event], bool],
                       timeout: float = 5.0) -> list[Event]:
        return [await self.expect(predicate, timeout) for _ in range(n)]


@asynccontextmanager
async def backend(redis_url: str, **cfg: Any) -> AsyncIterator[Env]:
    from twisted.internet import reactor

    redis = connect(redis_url)
    config = EngineConfig(**cfg) if cfg else EngineConfig(ring_timeout=5.0)
    port, stop = await start_reference_backend(redis, DIRECTORY, "127.0.0.1", 0, TOKEN,
                                               reactor, config)
    registry = CollectorRegistry()
    url = f"http://127.0.0.1:{port}"
    client = BackendClient(url, TOKEN, registry=registry)
    events = client.events()
    try:
        await events.ready()
        yield Env(url, client, events, registry)
    finally:
        await events.close()
        await client.close()
        await stop()
        await redis.aclose()


def ev_is(etype: str, endpoint: str, call_id: str = "") -> Callable[[Event], bool]:
    return lambda e: (e.type == etype and e.endpoint_id == endpoint
                      and (not call_id or e.call_id == call_id))


async def phone(env: Env, oid: str, eid: str) -> None:
    await env.client.add_endpoint(oid, EndpointCreate(endpoint_id=eid, device_id="dev-" + eid,
                                                      capabilities=("audio",)))


def run(scenario: Callable[[str], Awaitable[None]]) -> Callable[[str], Deferred[Any]]:
    @pytest_twisted.ensureDeferred
    async def test(redis_url: str) -> None:
        await aio(scenario(redis_url))
    test.__name__ = scenario.__name__
    test.__doc__ = scenario.__doc__
    return test  # type: ignore[return-value]


@run
async def test_teams_call_forks_to_two_phones_first_answer_wins(redis_url: str) -> None:
    async with backend(redis_url) as env:
        await phone(env, BOB.oid, "bob-desk")
        await phone(env, BOB.oid, "bob-dect")
        call = await env.client.sim_call("alice@contoso.example", BOB.number)
        incoming = {e.endpoint_id: e for e in await env.expect_n(2, lambda e: (
            e.type == "call.incoming" and e.call_id == call.call_id))}
        inc1, inc2 = incoming["bob-desk"], incoming["bob-dect"]
        assert inc1.sdp.startswith("v=0") and inc2.user == BOB.oid
        assert inc1.caller == ALICE.number
        sim_ep = call.from_endpoint
        await env.client.ringing(call.call_id, "bob-desk")
        await env.expect(ev_is("call.ringing", sim_ep, call.call_id))
        answered = await env.client.answer(call.call_id, "bob-dect", OFFER)
        assert answered.state == "connected" and answered.answered_endpoint == "bob-dect"
        cancelled = await env.expect(ev_is("call.cancelled", "bob-desk", call.call_id))
        assert cancelled.reason == "answered_elsewhere"
        ans = await env.expect(ev_is("call.answered", sim_ep, call.call_id))
        assert ans.sdp == OFFER
        with pytest.raises(BackendError) as late:
            await env.client.answer(call.call_id, "bob-desk", OFFER)
        assert late.value.status == 409 and late.value.code == "answered_elsewhere"
        # DTMF both ways, then the Teams side hangs up.
        await env.client.dtmf(call.call_id, "bob-dect", "12#")
        d = await env.expect(ev_is("call.dtmf", sim_ep, call.call_id))
        assert d.digits == "12#"
        await env.client.sim_dtmf(sim_ep, call.call_id, "9")
        d = await env.expect(ev_is("call.dtmf", "bob-dect", call.call_id))
        assert d.digits == "9"
        await env.client.sim_hangup(sim_ep, call.call_id)
        ended = await env.expect(ev_is("call.ended", "bob-dect", call.call_id))
        assert ended.reason == "hangup"
        final = await env.client.get_call(call.call_id)
        assert final.state == "ended" and final.end_reason == "hangup"


@run
async def test_phone_calls_teams_user_and_hangs_up(redis_url: str) -> None:
    async with backend(redis_url) as env:
        await phone(env, ALICE.oid, "alice-desk")
        bob_sim = await env.client.sim_client(BOB.upn)
        call = await env.client.create_call(CallCreate(
            from_user=ALICE.oid, from_endpoint="alice-desk",
            target=Target(kind="user", value=BOB.upn), sdp_offer=OFFER))
        assert call.state in ("offered", "ringing")
        await env.expect(ev_is("call.incoming", bob_sim.endpoint_id, call.call_id))
        await env.expect(ev_is("call.ringing", "alice-desk", call.call_id))
        await env.client.sim_answer(bob_sim.endpoint_id, call.call_id)
        ans = await env.expect(ev_is("call.answered", "alice-desk", call.call_id))
        assert "m=audio" in ans.sdp and "PCMA" in ans.sdp  # answered with the offer's codec
        done = await env.client.hangup(call.call_id, "alice-desk")
        assert done.state == "ended"
        ended = await env.expect(ev_is("call.ended", bob_sim.endpoint_id, call.call_id))
        assert ended.reason == "hangup"


@run
async def test_a_teams_client_answering_before_it_rang_does_not_fail_the_call(
        redis_url: str) -> None:
    """The offer to a simulated Teams client leaves with the call record, before the
    client is marked ringing: a client that answers in between (as a quick one did in a
    B2BUA test) must not turn the caller's POST /v1/calls into a 409."""
    from twisted.internet import reactor

    class AnswersFirst(CallEngine):
        async def ringing(self, cid: str, eid: str) -> Call:
            await self.sim_client_answer(eid, cid)  # the client is quicker than its ring
            return await super().ringing(cid, eid)

    redis = connect(redis_url)
    try:
        engine = AnswersFirst(redis, DIRECTORY, reactor, EngineConfig(ring_timeout=5.0))
        await engine.add_endpoint(ALICE.oid, EndpointCreate(
            endpoint_id="alice-desk", device_id="dev-alice-desk", capabilities=("audio",)))
        bob_sim = await engine.add_sim_client(BOB.upn)
        call = await engine.create_call(CallCreate(
            from_user=ALICE.oid, from_endpoint="alice-desk",
            target=Target(kind="user", value=BOB.upn), sdp_offer=OFFER))
        assert call.state == "connected" and call.answered_endpoint == bob_sim.endpoint_id
        await engine.hangup(call.call_id, "alice-desk")
    finally:
        await redis.aclose()


@run
async def test_reoffer_hold_resume_mirrors_direction_and_tells_other_party(
        redis_url: str) -> None:
    """RFC 3264 §8.4: a sendonly re-offer (hold) is answered recvonly from the other side's
    SDP, resume sendrecv; versions rise by one; the other party gets call.reoffer."""
    from gateway.sip.sdp import Direction, SessionDescription

    async with backend(redis_url) as env:
        await phone(env, ALICE.oid, "alice-desk")
        bob_sim = await env.client.sim_client(BOB.upn)
        call = await env.client.create_call(CallCreate(
            from_user=ALICE.oid, from_endpoint="alice-desk",
            target=Target(kind="user", value=BOB.upn), sdp_offer=OFFER))
        with pytest.raises(BackendError) as early:  # not connected yet
            await env.client.reoffer(call.call_id, "alice-desk", OFFER)
        assert early.value.status == 409 and early.value.code == "call_not_connected"
        await env.expect(ev_is("call.incoming", bob_sim.endpoint_id, call.call_id))
        await env.client.sim_answer(bob_sim.endpoint_id, call.call_id)
        ans = await env.expect(ev_is("call.answered", "alice-desk", call.call_id))
        first = SessionDescription.parse(ans.sdp)

        hold = OFFER.replace("o=phone 1 1", "o=phone 1 2") + "a=sendonly\r\n"
        held = SessionDescription.parse(await env.client.reoffer(call.call_id, "alice-desk",
                                                                 hold))
        assert held.media_direction(held.media[0]) is Direction.RECVONLY
        assert held.media[0].port == first.media[0].port  # the other side's SDP, mirrored
        assert held.origin_version == first.origin_version + 1
        ev = await env.expect(ev_is("call.reoffer", bob_sim.endpoint_id, call.call_id))
        assert ev.sdp == hold

        resume = OFFER.replace("o=phone 1 1", "o=phone 1 3") + "a=sendrecv\r\n"
        resumed = SessionDescription.parse(await env.client.reoffer(
            call.call_id, "alice-desk", resume))
        assert resumed.media_direction(resumed.media[0]) is Direction.SENDRECV
        assert resumed.origin_version == first.origin_version + 2
        await env.expect(ev_is("call.reoffer", bob_sim.endpoint_id, call.call_id))

        with pytest.raises(BackendError) as stranger:
            await env.client.reoffer(call.call_id, "someone-else", OFFER)
        assert stranger.value.status == 403 and stranger.value.code == "not_a_party"
        with pytest.raises(BackendError) as bad:
            await env.client.reoffer(call.call_id, "alice-desk", "v=0\r\nm=broken\r\n")
        assert bad.value.status == 400
        with pytest.raises(BackendError) as gone:
            await env.client.reoffer("nosuchcall", "alice-desk", OFFER)
        assert gone.value.status == 404


@run
async def test_reject_busy_and_declined(redis_url: str) -> None:
    async with backend(redis_url) as env:
        await phone(env, BOB.oid, "bob-desk")
        await phone(env, BOB.oid, "bob-dect")
        call = await env.client.sim_call(ALICE.upn, BOB.upn)
        # 486-like: one branch busy, the other still rings.
        after = await env.client.reject(call.call_id, "bob-desk", "busy")
        assert after.state in ("offered", "ringing")
        await env.client.reject(call.call_id, "bob-dect", "busy")
        rej = await env.expect(ev_is("call.rejected", call.from_endpoint, call.call_id))
        assert rej.reason == "busy"
        # 603-like: a decline ends every branch at once.
        call2 = await env.client.sim_call(ALICE.upn, BOB.upn)
        await env.client.reject(call2.call_id, "bob-desk", "declined")
        c = await env.expect(ev_is("call.cancelled", "bob-dect", call2.call_id))
        assert c.reason == "declined"
        assert (await env.client.get_call(call2.call_id)).end_reason == "declined"


@run
async def test_caller_cancel_and_no_answer(redis_url: str) -> None:
    async with backend(redis_url, ring_timeout=0.3) as env:
        await phone(env, BOB.oid, "bob-desk")
        call = await env.client.sim_call(ALICE.upn, BOB.upn)
        await env.expect(ev_is("call.incoming", "bob-desk", call.call_id))
        await env.client.cancel(call.call_id, call.from_endpoint)
        c = await env.expect(ev_is("call.cancelled", "bob-desk", call.call_id))
        assert c.reason == "caller_cancelled"
        call2 = await env.client.sim_call(ALICE.upn, BOB.upn)
        c = await env.expect(ev_is("call.cancelled", "bob-desk", call2.call_id))
        assert c.reason == "no_answer"
        r = await env.expect(ev_is("call.rejected", call2.from_endpoint, call2.call_id))
        assert r.reason == "no_answer"


@run
async def test_dnd_endpoint_not_offered(redis_url: str) -> None:
    async with backend(redis_url) as env:
        await phone(env, BOB.oid, "bob-desk")
        await phone(env, BOB.oid, "bob-dect")
        ep = await env.client.set_dnd(BOB.oid, "bob-desk", True)
        assert ep.dnd
        await env.expect(lambda e: e.type == "endpoint.dnd" and e.dnd is True)
        call = await env.client.sim_call(ALICE.upn, BOB.upn)
        await env.expect(ev_is("call.incoming", "bob-dect", call.call_id))
        await env.client.set_dnd(BOB.oid, "bob-dect", True)
        call2 = await env.client.sim_call(ALICE.upn, BOB.upn)
        assert call2.state == "ended" and call2.end_reason == "dnd"
        # Nobody got the second call, and the DND phone never got the first.
        await env.client.remove_endpoint(BOB.oid, "bob-dect")
        await env.expect(ev_is("endpoint.offline", "bob-dect"))
        seen = list(env.backlog)
        while not env.events._queue.empty():
            ev = env.events._queue.get_nowait()
            if ev is not None:
                seen.append(ev)
        assert not any(e.type == "call.incoming" and e.endpoint_id == "bob-desk" for e in seen)
        assert [e.endpoint_id for e in await env.client.list_endpoints(BOB.oid)] == ["bob-desk"]


@run
async def test_pstn_answer_busy_no_answer_and_far_end_hangup(redis_url: str) -> None:
    pstn = PstnSimulation(answer=("+1206555",), busy=("+1206556",), no_answer=("+1206557",),
                          answer_delay=0.01)
    async with backend(redis_url, ring_timeout=0.3, pstn=pstn) as env:
        await phone(env, ALICE.oid, "alice-desk")

        async def dial(number: str) -> str:
            call = await env.client.create_call(CallCreate(
                from_user=ALICE.oid, from_endpoint="alice-desk",
                target=Target(kind="pstn", value=number), sdp_offer=OFFER))
            return call.call_id

        cid = await dial("+12065550123")
        await env.expect(ev_is("call.ringing", "alice-desk", cid))
        ans = await env.expect(ev_is("call.answered", "alice-desk", cid))
        assert ans.sdp.startswith("v=0") and "RTP/AVP 8" in ans.sdp
        await env.client.dtmf(cid, "alice-desk", "5")
        await env.client.sim_far_end_hangup(cid)
        assert (await env.expect(ev_is("call.ended", "alice-desk", cid))).reason == "hangup"

        cid = await dial("+12065560123")
        assert (await env.expect(ev_is("call.rejected", "alice-desk", cid))).reason == "busy"
        cid = await dial("+12065570123")
        await env.expect(ev_is("call.ringing", "alice-desk", cid))
        assert (await env.expect(ev_is("call.rejected", "alice-desk", cid))).reason == \
            "no_answer"
        with pytest.raises(BackendError) as info:
            await dial("+19995550100")
        assert info.value.status == 404 and info.value.code == "number_unallocated"
        # An answered PSTN call hung up by the phone.
        cid = await dial("+12065550124")
        await env.expect(ev_is("call.answered", "alice-desk", cid))
        assert (await env.client.hangup(cid, "alice-desk")).end_reason == "hangup"


@run
async def test_emergency_always_accepted_with_location(redis_url: str) -> None:
    async with backend(redis_url) as env:
        pidf = ('<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
                'entity="pres:alice@contoso.example"/>')
        # An unpaired device (no user) may call 911.
        call = await env.client.create_call(CallCreate(
            from_user="", from_endpoint="unpaired-dev-1",
            target=Target(kind="emergency", value="911"), sdp_offer=OFFER, location=pidf))
        await env.expect(ev_is("call.answered", "unpaired-dev-1", call.call_id))
        assert (await env.client.get_call(call.call_id)).location == pidf
        # A user whose device may not call anything else still reaches 933 dialled as PSTN.
        dave = DIRECTORY.user_by_upn("dave@contoso.example")
        assert dave is not None
        call = await env.client.create_call(CallCreate(
            from_user=dave.oid, from_endpoint="dave-desk",
            target=Target(kind="emergency", value="933"), sdp_offer=OFFER))
        await env.expect(ev_is("call.answered", "dave-desk", call.call_id))
        with pytest.raises(BackendError) as info:
            await env.client.create_call(CallCreate(
                from_user=dave.oid, from_endpoint="dave-desk",
                target=Target(kind="user", value=BOB.upn), sdp_offer=OFFER))
        assert info.value.status == 403


@run
async def test_refusals_no_number_policy_government(redis_url: str) -> None:
    async with backend(redis_url) as env:
        for upn, code in (("dave@contoso.example", "user_missing_phone_number"),
                          ("erin@contoso.example", "user_missing_pstn"),
                          ("frank@contoso.example", "user_missing_allow_sip_devices_calling"),
                          ("grace@contoso.example", "user_disabled"),
                          ("hank@northwind.example", "cloud_not_supported")):
            u = DIRECTORY.user_by_upn(upn)
            assert u is not None
            with pytest.raises(BackendError) as info:
                await phone(env, u.oid, "dev-" + upn.split("@")[0])
            assert (info.value.status, info.value.code) == (403, code), upn
            info_u = await env.client.get_user(u.oid)
            assert info_u.sip_device_refusal == code
        await phone(env, ALICE.oid, "alice-desk")
        for target, code in (("dave@contoso.example", "callee_has_no_number"),
                             ("hank@northwind.example", "cloud_not_supported"),
                             ("+12025550101", "cloud_not_supported")):
            kind = "pstn" if target.startswith("+") else "user"
            with pytest.raises(BackendError) as info:
                await env.client.create_call(CallCreate(
                    from_user=ALICE.oid, from_endpoint="alice-desk",
                    target=Target(kind=kind, value=target), sdp_offer=OFFER))
            assert (info.value.status, info.value.code) == (403, code), target
        # Calling from an endpoint that is not online for the user is refused too.
        with pytest.raises(BackendError) as info:
            await env.client.create_call(CallCreate(
                from_user=ALICE.oid, from_endpoint="someone-else",
                target=Target(kind="user", value=BOB.upn), sdp_offer=OFFER))
        assert info.value.code == "endpoint_not_found"


@run
async def test_directory_lookups(redis_url: str) -> None:
    async with backend(redis_url) as env:
        u = await env.client.user_by_number(ALICE.number)
        assert u is not None and u.oid == ALICE.oid and u.calling_policy.allow_call_redirect
        assert (await env.client.user_by_upn("BOB@contoso.example")).oid == BOB.oid  # type: ignore[union-attr]
        assert await env.client.user_by_number("+19999999999") is None
        t = await env.client.get_tenant(ALICE.tenant)
        assert t.name == "Contoso" and t.sip_gateway_available
        gov = await env.client.get_tenant("9c4a7b1e-6f28-4d93-a5c0-8e1b4d7f2a03")
        assert not gov.sip_gateway_available
        with pytest.raises(BackendError) as info:
            await env.client.get_user("00000000-0000-0000-0000-000000000000")
        assert info.value.status == 404
        lat = env.registry.get_sample_value("backend_api_request_seconds_count",
                                            {"op": "get_tenant"})
        assert lat == 2.0
        assert env.registry.get_sample_value("backend_api_errors_total",
                                             {"op": "get_user", "kind": "http_4xx"}) == 1.0


async def _raw(url: str, method: str, path: str, body: bytes | None = None,
               token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    headers = {b"Content-Type": [b"application/json"]}
    if token is not None:
        headers[b"Authorization"] = [f"Bearer {token}".encode()]
    resp = await treq.request(method, url + path, data=body, headers=headers).asFuture(loop)
    raw = await treq.content(resp).asFuture(loop)
    return resp.code, json.loads(raw)


@run
async def test_bad_token_and_malformed_json(redis_url: str) -> None:
    async with backend(redis_url) as env:
        path = f"/v1/users/{ALICE.oid}/endpoints"
        good = json.dumps({"endpoint_id": "e1", "device_id": "d1"}).encode()
        for token in (None, "wrong", ""):
            code, body = await _raw(env.url, "POST", path, good, token)
            assert code == 401 and body["error"] == "unauthorized"
        cases = [
            (b"{not json", "malformed JSON"),
            (b"[1, 2]", "expected a JSON object"),
            (b'{"endpoint_id": "e1"}', "device_id: missing"),
            (b'{"endpoint_id": "e 1", "device_id": "d"}', "endpoint_id: malformed"),
            (b'{"endpoint_id": "e1", "device_id": "d", "x": 1}', "unknown field 'x'"),
            (b'{"endpoint_id": "e1", "device_id": "d", "expires": "9"}', "expires"),
            (b"\xff\xfe", "not UTF-8"),
            (b"[" * 100000, "malformed JSON"),
        ]
        for raw, needle in cases:
            code, body = await _raw(env.url, "POST", path, raw)
            assert code == 400, raw[:40]
            assert body["error"] == "bad_request" and needle in body["message"], body
            assert "Traceback" not in body["message"]
        code, body = await _raw(env.url, "POST", "/v1/calls", b'{"target": {"kind": "fax"}}')
        assert code == 400 and "target" in body["message"]
        code, body = await _raw(env.url, "GET", "/v1/users/not-a-guid")
        assert code == 400
        code, body = await _raw(env.url, "GET", "/v1/nowhere")
        assert code == 404
        code, body = await _raw(env.url, "DELETE", "/v1/calls")
        assert code == 405
        code, body = await _raw(env.url, "GET", "/v1/calls/nope")
        assert code == 404 and body["error"] == "call_not_found"


@run
async def test_event_stream_bad_token_and_resume(redis_url: str) -> None:
    async with backend(redis_url) as env:
        bad = BackendClient(env.url, "wrong")
        stream = bad.events()
        with pytest.raises(asyncio.TimeoutError):
            await stream.ready(timeout=0.5)
        assert "401" in stream.last_error or "closed" in stream.last_error
        await stream.close()
        await bad.close()
        # Resume after a known event: the events after it are replayed.
        await phone(env, BOB.oid, "bob-desk")
        first = await env.expect(ev_is("endpoint.online", "bob-desk"))
        await env.client.set_dnd(BOB.oid, "bob-desk", True)
        resumed = env.client.events(since=first.id)
        try:
            ev = await resumed.next()
            assert ev.type == "endpoint.dnd" and ev.endpoint_id == "bob-desk"
        finally:
            await resumed.close()


@run
async def test_event_stream_reconnects_and_resumes(redis_url: str) -> None:
    """The backend restarts on the same port: the stream reconnects and misses nothing."""
    from twisted.internet import reactor

    redis = connect(redis_url)
    port, stop = await start_reference_backend(redis, DIRECTORY, "127.0.0.1", 0, TOKEN, reactor)
    registry = CollectorRegistry()
    client = BackendClient(f"http://127.0.0.1:{port}", TOKEN, registry=registry)
    stream = client.events(users=(BOB.oid,))
    stop2 = None
    try:
        await stream.ready()
        await client.add_endpoint(BOB.oid, EndpointCreate(endpoint_id="b1", device_id="d"))
        assert (await stream.next()).endpoint_id == "b1"
        await stop()
        # Published while no backend serves the stream: must be replayed after reconnecting.
        other = BackendClient(f"http://127.0.0.1:{port}", TOKEN)
        _, stop2 = await start_reference_backend(redis, DIRECTORY, "127.0.0.1", port, TOKEN,
                                                 reactor)
        await other.set_dnd(BOB.oid, "b1", True)
        await other.add_endpoint(ALICE.oid, EndpointCreate(endpoint_id="a1", device_id="d"))
        await other.add_endpoint(BOB.oid, EndpointCreate(endpoint_id="b2", device_id="d"))
        await other.close()
        got = [await stream.next(), await stream.next()]
        assert [(e.type, e.endpoint_id) for e in got] == [("endpoint.dnd", "b1"),
                                                          ("endpoint.online", "b2")]
        assert registry.get_sample_value("backend_event_stream_reconnects_total") >= 1
    finally:
        await stream.close()
        await client.close()
        await stop()
        if stop2 is not None:
            await stop2()
        await redis.aclose()


@run
async def test_phone_to_phone_call_answers_and_refusals_across_two_backends(
        redis_url: str) -> None:
    """Phone to phone, one branch: ringing, answer and hangup give the same answers and
    events whether the backend process that created the call serves them or another one
    sharing the store (state lives in Redis, not in the process)."""
    async with backend(redis_url) as env, backend(redis_url) as other:
        await phone(env, ALICE.oid, "alice-desk2")
        await phone(env, BOB.oid, "bob-desk2")
        for served_by in (env, other):
            call = await env.client.create_call(CallCreate(
                from_user=ALICE.oid, from_endpoint="alice-desk2",
                target=Target(kind="user", value=BOB.upn), sdp_offer=OFFER))
            cid = call.call_id
            await env.expect(ev_is("call.incoming", "bob-desk2", cid))
            c = served_by.client
            rang = await c.ringing(cid, "bob-desk2")
            assert rang.state == "ringing"
            await env.expect(ev_is("call.ringing", "alice-desk2", cid))
            again = await c.ringing(cid, "bob-desk2")
            assert again.state == "ringing"
            with pytest.raises(BackendError) as stranger:
                await c.ringing(cid, "alice-desk2")
            assert stranger.value.status == 403 and stranger.value.code == "not_offered"
            answered = await c.answer(cid, "bob-desk2", OFFER)
            assert answered.state == "connected" and answered.answered_endpoint == "bob-desk2"
            ans = await env.expect(ev_is("call.answered", "alice-desk2", cid))
            assert ans.sdp == OFFER
            with pytest.raises(BackendError) as late:
                await c.answer(cid, "bob-desk2", OFFER)
            assert late.value.status == 409 and late.value.code == "answered_elsewhere"
            with pytest.raises(BackendError) as outsider:
                await c.hangup(cid, "carol-desk")
            assert outsider.value.status == 403 and outsider.value.code == "not_a_party"
            done = await c.hangup(cid, "bob-desk2")
            assert done.state == "ended" and done.end_reason == "hangup"
            ended = await env.expect(ev_is("call.ended", "alice-desk2", cid))
            assert ended.reason == "hangup"
            with pytest.raises(BackendError) as twice:
                await c.hangup(cid, "alice-desk2")
            assert twice.value.status == 409 and twice.value.code == "call_not_connected"
            assert not [e for e in env.backlog if e.call_id == cid]
