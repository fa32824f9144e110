"""B2BUA calls end to end: phones on real UDP sockets -> in-process Gateway -> the reference
backend over real HTTP/WebSocket -> Gateway -> phones; state in a real Valkey."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from gateway.app import Gateway
from gateway.b2bua.legs import Leg
from gateway.backend.directory import default_directory_path, load_directory
from gateway.backend.reference.engine import EngineConfig
from gateway.backend.reference.server import start_reference_backend
from gateway.config import Config
from gateway.registrar.devices import DeviceStore
from gateway.sip.message import SipRequest
from gateway.sip.sdp import Direction, SessionDescription
from gateway.state.redis import connect

from .phone import SDP, Phone

pytestmark = pytest.mark.integration

TOKEN = "b2bua-test-token-0123456789"
DIRECTORY = load_directory(default_directory_path())
ALICE = DIRECTORY.user_by_upn("alice@contoso.example")
BOB = DIRECTORY.user_by_upn("bob@contoso.example")
CAROL = DIRECTORY.user_by_upn("carol@contoso.example")
assert ALICE and BOB and CAROL
TENANT = "7f3e1c9a-0d52-4b8e-9a41-3c2f6b1d8e01"
REALM = "sipgw.test"


def aio(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


def in_task(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Any]:
    """Run an async test as an asyncio task (redis.asyncio needs one) under pytest-twisted."""
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> None:
        await aio(fn(*args, **kwargs))
    return pytest_twisted.ensureDeferred(wrapper)


@dataclass
class Env:
    gw: Gateway
    devices: DeviceStore
    sip: tuple[str, int]
    redis: Any
    phones: list[Phone]
    n: int = 0

    async def phone(self, user: str | None, *, model: str = "T54W") -> Phone:
        """A registered device, paired with ``user`` (oid) unless None."""
        self.n += 1
        mac = f"00156511{self.n:04x}"
        vendor = "Poly" if model.startswith("VVX") else "Yealink"
        dev, creds = await self.devices.add(mac, vendor, model, TENANT)
        if user:
            await self.devices.set_paired(dev.device_id, user)
        p = await Phone(creds.username, creds.password, REALM, self.sip).open()
        self.phones.append(p)
        resp = await p.register()
        assert resp.status == 200, resp
        if user:
            await self.wait_endpoint(user, f"sipdev-{dev.device_id}")
        p.device_id = dev.device_id  # type: ignore[attr-defined]
        return p

    async def wait_endpoint(self, user: str, eid: str, present: bool = True) -> None:
        for _ in range(200):
            eps = [e.endpoint_id for e in await self.gw.backend.list_endpoints(user)]
            if (eid in eps) == present:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"endpoint {eid} never {'appeared' if present else 'left'}")

    async def wait_call_state(self, cid: str, state: str, timeout: float = 5.0) -> Any:
        for _ in range(int(timeout / 0.02)):
            call = await self.gw.backend.get_call(cid)
            if call.state == state:
                return call
            await asyncio.sleep(0.02)
        raise AssertionError(f"call {cid} never reached {state}: {call}")


@asynccontextmanager
async def environment(tmp_path: Path, redis_url: str, **engine: Any) -> AsyncIterator[Env]:
    from twisted.internet import reactor

    redis = connect(redis_url)
    port, stop_backend = await start_reference_backend(
        redis, DIRECTORY, "127.0.0.1", 0, TOKEN, reactor,
        EngineConfig(**({"ring_timeout": 3.0} | engine)))
    cfg = Config()
    cfg.server.data_dir = str(tmp_path / "data")
    cfg.sip.hosts = ["127.0.0.1"]
    cfg.sip.udp_port = 0
    cfg.sip.tcp_port = -1
    cfg.sip.tls_port = -1
    cfg.sip.domain = REALM
    cfg.redis.url = redis_url
    cfg.metrics.port = -1
    cfg.identity.devidp_port = 0
    cfg.identity.phone_ui_port = -1
    cfg.backend.url = f"http://127.0.0.1:{port}"
    cfg.backend.token = TOKEN
    gw = Gateway(cfg, reactor)
    await gw.start()
    udp = next(li for li in gw.listening if li.service == "sip" and li.proto == "udp")
    env = Env(gw=gw, devices=gw.devices, sip=("127.0.0.1", udp.port), redis=redis, phones=[])
    try:
        yield env
    finally:
        for p in env.phones:
            p.close()
        await gw.stop()
        await stop_backend()
        await redis.aclose()


def answer_invite(phone: Phone, invite: SipRequest, tag: str = "calleetag") -> None:
    phone.respond(invite, 180, tag=tag)
    answer = SDP.replace("o=phone 1 1", "o=callee 7 7")
    phone.respond(invite, 200, tag=tag, body=answer)


async def ack_of(phone: Phone) -> SipRequest:
    return await phone.expect_request("ACK")


async def teams_call_answered(env: Any, phone: Phone, tag: str = "calleetag",
                              ) -> tuple[Any, Any, SipRequest]:
    """Carol's simulated Teams client calls Alice, whose phone answers (with ``tag``):
    (Carol's endpoint, the backend call, the INVITE the phone got) once connected."""
    sim = await env.gw.backend.sim_client(CAROL.oid)
    call = await env.gw.backend.sim_call(CAROL.oid, ALICE.oid, sim.endpoint_id)
    invite = await phone.expect_request("INVITE")
    answer_invite(phone, invite, tag=tag)
    await ack_of(phone)
    await env.wait_call_state(call.call_id, "connected")
    return sim, call, invite


@in_task
async def test_device_calls_device_and_hangs_up(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        b = await env.phone(BOB.oid)
        call = a.invite(BOB.number)
        invite = await b.expect_request("INVITE")
        assert invite.from_.uri.user == ALICE.number
        assert "m=audio 5004" in invite.body.decode()
        # 180 first and only then 200: sent back to back, the B2BUA may legitimately
        # see the answer before the ringing reaches the caller and skip the 180.
        b.respond(invite, 180, tag="calleetag")
        ringing = await a.expect_response(call.call_id, "INVITE", final=False, status=180)
        assert ringing.to.tag
        b.respond(invite, 200, tag="calleetag",
                  body=SDP.replace("o=phone 1 1", "o=callee 7 7"))
        ok = await call.final()
        assert ok.status == 200
        assert b"o=callee 7 7" in ok.body
        assert ok.contacts, "our Contact in the 200"
        await ack_of(b)
        call.in_dialog("BYE")
        bye_ok = await a.expect_response(call.call_id, "BYE")
        assert bye_ok.status == 200
        bye = await b.expect_request("BYE")
        b.respond(bye, 200)
        metrics = env.gw.registry.get_sample_value("b2bua_calls_total",
                                                   {"direction": "out", "status": "200"})
        assert metrics == 1.0


@in_task
async def test_teams_client_calls_device_then_hangs_up(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        sim, call, invite = await teams_call_answered(env, a)
        assert invite.uri.port == a.port
        await env.gw.backend.sim_hangup(sim.endpoint_id, call.call_id)
        bye = await a.expect_request("BYE")
        assert bye.from_.tag == invite.from_.tag and bye.to.tag == "calleetag"
        a.respond(bye, 200)


@in_task
async def test_device_hangs_up_teams_call(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        sim, call, invite = await teams_call_answered(env, a, tag="t1")
        # the phone hangs up: BYE in the dialog the gateway created
        from gateway.sip.message import build_response  # noqa: F401
        bye = (f"BYE {invite.headers.get('Contact').strip('<>')} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{a.port};branch=z9hG4bKbye1;rport\r\n"
               "Max-Forwards: 70\r\n"
               f"From: {invite.headers.get('To')};tag=t1\r\n"
               f"To: {invite.headers.get('From')}\r\n"
               f"Call-ID: {invite.call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n")
        a.send(bye.encode())
        resp = await a.expect_response(invite.call_id, "BYE")
        assert resp.status == 200
        ended = await env.wait_call_state(call.call_id, "ended")
        assert ended.end_reason == "hangup"


@in_task
async def test_forking_other_device_gets_cancel_with_reason(tmp_path: Path,
                                                            redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a1 = await env.phone(ALICE.oid)
        a2 = await env.phone(ALICE.oid)
        sim = await env.gw.backend.sim_client(CAROL.oid)
        await env.gw.backend.sim_call(CAROL.oid, ALICE.oid, sim.endpoint_id)
        inv1 = await a1.expect_request("INVITE")
        inv2 = await a2.expect_request("INVITE")
        a2.respond(inv2, 180, tag="a2")
        answer_invite(a1, inv1, tag="a1")
        await ack_of(a1)
        cancel = await a2.expect_request("CANCEL")
        assert cancel.headers.get("Reason") == 'SIP;cause=200;text="Call completed elsewhere"'
        a2.respond(cancel, 200)
        a2.respond(inv2, 487, tag="a2")
        await a2.expect_request("ACK")


@in_task
async def test_phone_cancels_outgoing_call(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        b = await env.phone(BOB.oid)
        call = a.invite(BOB.number)
        invite = await b.expect_request("INVITE")
        b.respond(invite, 180, tag="b")
        await a.expect_response(call.call_id, "INVITE", final=False, status=180)
        call.cancel()
        assert (await a.expect_response(call.call_id, "CANCEL")).status == 200
        final = await call.final()
        assert final.status == 487
        cancel = await b.expect_request("CANCEL")
        assert cancel.headers.get("Reason") is None
        b.respond(cancel, 200)
        b.respond(invite, 487, tag="b")


@in_task
async def test_callee_busy_and_pstn_outcomes(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url, ring_timeout=1.0) as env:
        a = await env.phone(ALICE.oid)
        b = await env.phone(BOB.oid)
        call = a.invite(BOB.number)
        invite = await b.expect_request("INVITE")
        b.respond(invite, 486, tag="b")
        final = await call.final()
        assert final.status == 486
        assert "cause=486" in (final.headers.get("Reason") or "")
        # simulated PSTN: answers, busy, never answers, unallocated
        ok = await a.invite("+12065550123").final()
        assert ok.status == 200 and ok.body.startswith(b"v=0")
        assert (await a.invite("+12065560000").final()).status == 486
        no_answer = await a.invite("+12065570000").final(timeout=5)
        assert no_answer.status == 480
        assert (await a.invite("+19995550000").final()).status == 404


@in_task
async def test_unpaired_device_may_only_call_emergency(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        u = await env.phone(None)
        refused = await u.invite("+12065550123").final()
        assert refused.status == 403
        assert "sign in to make calls" in (refused.headers.get("Warning") or "")
        signin = await u.invite("*77*").final()
        # the identity service answers the sign-in code and shows the pairing code
        assert signin.status == 200
        assert (signin.headers.get("P-Asserted-Identity") or "").startswith('"Sign in: ')
        ok = await u.invite("911").final()
        assert ok.status == 200


@in_task
async def test_dnd_feature_code_then_calls_are_rejected(tmp_path: Path,
                                                        redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        b = await env.phone(BOB.oid)
        fc = a.invite("*30*")
        ok = await fc.final()
        assert ok.status == 200
        sdp = SessionDescription.parse(ok.body)
        assert sdp.media[0].formats == ["8"] and sdp.media[0].direction is Direction.SENDRECV
        bye = await a.expect_request("BYE")
        a.respond(bye, 200)
        busy = await b.invite(ALICE.number).final()
        assert busy.status == 486
        assert "do not disturb" in (busy.headers.get("Reason") or "")
        assert (await a.invite("*31*").final()).status == 200
        a.respond(await a.expect_request("BYE"), 200)
        call = b.invite(ALICE.number)
        invite = await a.expect_request("INVITE")
        a.respond(invite, 603, tag="x")
        assert (await call.final()).status == 603


@in_task
async def test_teams_client_reoffer_reaches_the_phone(tmp_path: Path, redis_url: str) -> None:
    """A Teams client puts the call on hold (a re-offer through the backend): the phone
    gets a re-INVITE in the call's dialog carrying that offer, its answer is ACKed, and
    the call goes on (the hang-up still reaches the phone in the same dialog)."""
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        sim, call, invite = await teams_call_answered(env, a, tag="t9")
        hold = SDP.replace("o=phone 1 1", "o=carol 3 4").replace("a=sendrecv", "a=sendonly")
        await env.gw.backend.reoffer(call.call_id, sim.endpoint_id, hold)
        reinvite = await a.expect_request("INVITE")
        assert reinvite.call_id == invite.call_id
        assert reinvite.from_.tag == invite.from_.tag and reinvite.to.tag == "t9"
        assert reinvite.cseq.number > invite.cseq.number
        offer = SessionDescription.parse(reinvite.body)
        assert offer.media[0].direction is Direction.SENDONLY
        a.respond(reinvite, 200, tag="t9",
                  body=SDP.replace("o=phone 1 1", "o=callee 7 8").replace("a=sendrecv",
                                                                         "a=recvonly"))
        ack = await ack_of(a)
        assert ack.call_id == invite.call_id and ack.cseq.number == reinvite.cseq.number
        await env.gw.backend.sim_hangup(sim.endpoint_id, call.call_id)
        bye = await a.expect_request("BYE")
        assert bye.call_id == invite.call_id and bye.cseq.number > reinvite.cseq.number
        a.respond(bye, 200)


@in_task
async def test_hold_reinvite_and_update_mirror_direction(tmp_path: Path,
                                                          redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        call = a.invite("+12065550123")
        assert (await call.final()).status == 200
        hold = SDP.replace("o=phone 1 1", "o=phone 1 2").replace("a=sendrecv", "a=sendonly")
        call.in_dialog("INVITE", body=hold)
        resp = await a.expect_response(call.call_id, "INVITE")
        assert resp.status == 200
        assert SessionDescription.parse(resp.body).media[0].direction is Direction.RECVONLY
        call.ack_cseq = call.cseq  # type: ignore[attr-defined]
        a.send(a.request("ACK", call.remote_target, call_id=call.call_id, to=call.to,
                         from_tag=call.from_tag, cseq=call.cseq))
        inactive = SDP.replace("a=sendrecv", "a=inactive")
        call.in_dialog("UPDATE", body=inactive)
        resp = await a.expect_response(call.call_id, "UPDATE")
        assert SessionDescription.parse(resp.body).media[0].direction is Direction.INACTIVE
        call.in_dialog("BYE")
        assert (await a.expect_response(call.call_id, "BYE")).status == 200
        # BYE again: the dialog is gone
        call.in_dialog("BYE")
        assert (await a.expect_response(call.call_id, "BYE")).status == 481


@in_task
async def test_reliable_ringing_needs_prack(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        b = await env.phone(BOB.oid)
        call = a.invite(BOB.number, headers=[("Require", "100rel"), ("Supported", "100rel")])
        invite = await b.expect_request("INVITE")
        b.respond(invite, 180, tag="b")
        r1 = await a.expect_response(call.call_id, "INVITE", final=False, status=180)
        assert r1.headers.get("RSeq") == "1" and "100rel" in r1.require
        # not PRACKed: retransmitted (T1)
        r2 = await a.expect_response(call.call_id, "INVITE", final=False, status=180)
        assert r2.headers.get("RSeq") == "1"
        b.respond(invite, 200, tag="b", body=SDP)
        call.to = r1.headers.get("To") or call.to
        call.remote_target = str(r1.contacts[0].uri)
        call.in_dialog("PRACK", headers=[("RAck", "1 1 INVITE")])
        assert (await a.expect_response(call.call_id, "PRACK")).status == 200
        final = await call.final()
        assert final.status == 200


@in_task
async def test_session_timer_too_small_and_expiry(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        env.gw.b2bua.config = type(env.gw.b2bua.config)(
            t1=0.5, t2=4.0, min_se=1, sweep_interval=0.2)
        a = await env.phone(ALICE.oid)
        env.gw.b2bua.config = type(env.gw.b2bua.config)(t1=0.5, t2=4.0, min_se=90,
                                                        sweep_interval=0.2)
        small = await a.invite("+12065550123",
                               headers=[("Session-Expires", "30"),
                                        ("Supported", "timer")]).final()
        assert small.status == 422 and small.headers.get("Min-SE") == "90"
        env.gw.b2bua.config = type(env.gw.b2bua.config)(t1=0.5, t2=4.0, min_se=1,
                                                        sweep_interval=0.2)
        call = a.invite("+12065550123", headers=[("Session-Expires", "2;refresher=uac"),
                                                 ("Supported", "timer")])
        ok = await call.final()
        assert ok.status == 200
        assert ok.headers.get("Session-Expires") == "2;refresher=uac"
        bye = await a.expect_request("BYE", timeout=6)
        assert "cause=408" in (bye.headers.get("Reason") or "")
        a.respond(bye, 200)


@in_task
async def test_untrusted_source_is_challenged(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        other = await Phone(a.username, a.password, REALM, env.sip).open()
        env.phones.append(other)
        call = other.invite("+12065550123")
        challenge = await call.final()
        assert challenge.status == 407
        auth = other.authorization(challenge, "INVITE", call.uri, "Proxy-Authenticate")
        call.cseq += 1
        call.send_invite(headers=[("Proxy-Authorization", auth)])
        assert (await call.final()).status == 200


PIDF = ('<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'entity="pres:phone@example.com"><tuple id="t1"><status><geopriv>'
        '<location-info><civicAddress>Main St 1</civicAddress></location-info>'
        '</geopriv></status></tuple></presence>')


@in_task
async def test_emergency_call_passes_pidf_lo(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        e = await env.phone(None, model="VVX150")  # e911-capable catalog row
        body = ("--bnd\r\nContent-Type: application/sdp\r\n\r\n" + SDP +
                "\r\n--bnd\r\nContent-Type: application/pidf+xml\r\nContent-ID: <loc@phone>\r\n"
                "\r\n" + PIDF + "\r\n--bnd--\r\n")
        call = e.invite("911", body=body, ctype="multipart/mixed;boundary=bnd",
                        headers=[("Geolocation", "<cid:loc@phone>"),
                                 ("Geolocation-Routing", "yes")])
        ok = await call.final()
        assert ok.status == 200
        leg_calls = [k async for k in env.redis.scan_iter(match="b2b:leg:*")]
        assert len(leg_calls) == 1
        leg = Leg.from_json(await env.redis.get(leg_calls[0]))
        record = await env.gw.backend.get_call(leg.backend_call_id)
        assert record.target is not None and record.target.kind == "emergency"
        assert "civicAddress" in record.location


async def _restart(env: Env) -> None:
    """Stop this node (all in-memory call state is lost) and start a fresh one on the
    same address, state store and backend."""
    cfg = env.gw.config
    cfg.sip.udp_port = env.sip[1]
    await env.gw.stop()
    gw = Gateway(cfg, env.gw.reactor)
    await gw.start()
    env.gw = gw
    env.devices = gw.devices


@in_task
async def test_calls_survive_a_node_restart(tmp_path: Path, redis_url: str) -> None:
    async with environment(tmp_path, redis_url) as env:
        a = await env.phone(ALICE.oid)
        first = a.invite("+12065550123")
        assert (await first.final()).status == 200
        second = a.invite("+12065550124")
        assert (await second.final()).status == 200
        legs = [Leg.from_json(await env.redis.get(k))
                async for k in env.redis.scan_iter(match="b2b:leg:*")]
        by_sip = {leg.dialog["call_id"]: leg.backend_call_id for leg in legs}
        await _restart(env)
        # the phone hangs up call 1 after the restart: the backend call ends
        first.in_dialog("BYE")
        assert (await a.expect_response(first.call_id, "BYE")).status == 200
        await env.wait_call_state(by_sip[first.call_id], "ended")
        # the far end hangs up call 2: the phone gets a BYE in its dialog
        await env.gw.backend.sim_far_end_hangup(by_sip[second.call_id])
        bye = await a.expect_request("BYE")
        assert bye.call_id == second.call_id
        a.respond(bye, 200)
