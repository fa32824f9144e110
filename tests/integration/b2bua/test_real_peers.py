"""B2BUA calls with real SIP peers against a real `sipgw serve` process.

SIPp phones (tests/integration/b2bua/sipp/*.xml) register with MD5 digest and call,
or are called, through the gateway and its embedded reference backend; the Teams side
is the backend's simulated client, driven over the backend API with BackendClient.
Devices are provisioned into the gateway's embedded Valkey (its unix socket) and
paired with users of the bundled directory. Each test runs its own gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support import require_tool
from twisted.internet.defer import Deferred

from gateway.backend.client import BackendClient
from gateway.backend.directory import default_directory_path, load_directory
from gateway.backend.schema import Event
from gateway.config import Config
from gateway.state.redis import connect
from gateway.state.valkey import EmbeddedValkey

from ..gateway_process import GatewayProcess
from .peers import COMPLETED_ELSEWHERE_RE, SippPhone, provision, wait_until

pytestmark = pytest.mark.integration

DIRECTORY = load_directory(default_directory_path())
ALICE = DIRECTORY.user_by_upn("alice@contoso.example")
BOB = DIRECTORY.user_by_upn("bob@contoso.example")
CAROL = DIRECTORY.user_by_upn("carol@contoso.example")
assert ALICE and BOB and CAROL and BOB.number and CAROL.number
TENANT = ALICE.tenant
RING_TIMEOUT = 3  # seconds the backend rings before "no answer"


def aio(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


def in_task(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Any]:
    """Run an async test as an asyncio task (redis.asyncio needs one) under pytest-twisted."""
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> None:
        await aio(fn(*args, **kwargs))
    return pytest_twisted.ensureDeferred(wrapper)


@pytest.fixture(autouse=True)
def _sipp() -> None:
    require_tool("sipp")


@dataclass
class Env:
    gw: GatewayProcess
    tmp: Path
    redis: Any = None
    backend: BackendClient | None = None
    phones: list[SippPhone] = field(default_factory=list)

    @property
    def api(self) -> BackendClient:
        assert self.backend is not None
        return self.backend

    async def open(self) -> Env:
        path, _ = self.gw.addr("valkey", "unix")
        self.redis = connect(f"unix://{path}")
        host, port = self.gw.addr("backend", "http")
        token = (self.gw.data_dir / "secrets" / "backend.token").read_bytes().hex()
        self.backend = BackendClient(f"http://{host}:{port}", token)
        return self

    async def close(self) -> None:
        for p in self.phones:
            p.stop()
        self.phones.clear()
        backend, redis, self.backend, self.redis = self.backend, self.redis, None, None
        if backend is not None:
            await backend.close()
        if redis is not None:
            await redis.aclose()

    async def device(self, user: Any | None) -> SippPhone:
        """A provisioned device (paired with ``user`` unless None), not yet registered."""
        phone = await provision(self.redis, user=user.oid if user else None, tenant=TENANT,
                                n=len(self.phones) + 1, workdir=self.tmp / "sipp",
                                gateway=self.gw.sip("udp"))
        self.phones.append(phone)
        return phone

    async def phone(self, user: Any | None) -> SippPhone:
        """A registered device; for a paired one, once the backend knows its endpoint."""
        phone = await self.device(user)
        await phone.register()
        if user is not None:
            async def online() -> bool:
                eps = await self.api.list_endpoints(user.oid)
                return any(e.endpoint_id == phone.endpoint_id for e in eps)
            await wait_until(online, what=f"endpoint {phone.endpoint_id} online")
        return phone

    async def legs(self) -> list[dict[str, Any]]:
        out = []
        async for key in self.redis.scan_iter(match="b2b:leg:*"):
            raw = await self.redis.get(key)
            if raw:
                out.append(json.loads(raw))
        return out


def overrides(**extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Config for a test gateway: every listener ephemeral (also listeners added to the
    config after GatewayProcess was written), a short backend ring timeout."""
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            if f.name.endswith("_port") and f.name != "embedded_tcp_port" and f.type in (
                    int, "int") and f.default != -1:
                out.setdefault(section.name, {})[f.name] = 0
    out.setdefault("backend", {})["ring_timeout"] = RING_TIMEOUT
    for name, values in extra.items():
        out.setdefault(name, {}).update(values)
    return out


def start_gateway(tmp: Path) -> GatewayProcess:
    return GatewayProcess(tmp, overrides()).start()


@asynccontextmanager
async def gateway_env(tmp: Path) -> AsyncIterator[Env]:
    gw = await asyncio.to_thread(start_gateway, tmp)
    env = Env(gw, tmp)
    try:
        yield await env.open()
    except BaseException:
        print(gw.output()[-20000:])
        raise
    finally:
        await env.close()
        await asyncio.to_thread(gw.stop)


async def next_event(stream: Any, match: Callable[[Event], bool], timeout: float = 10.0
                     ) -> Event:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ev = await stream.next(max(0.01, deadline - loop.time()))
        if match(ev):
            return ev


# -- device to device ------------------------------------------------------------------------

@in_task
async def test_sipp_device_calls_sipp_device_through_backend(tmp_path: Path) -> None:
    """SIPp UAC -> gateway -> backend -> gateway -> SIPp UAS, several calls; both SIPp
    instances must see every call succeed, and no leg may stay behind."""
    calls = 5
    async with gateway_env(tmp_path) as env:
        alice = await env.phone(ALICE)
        bob = await env.phone(BOB)
        uas = bob.answer(calls=calls)
        uac = alice.call(BOB.number, calls=calls, rate=5, pause_ms=200)
        await uac.succeeded()
        await uas.succeeded()
        await wait_until(lambda: _no_legs(env), what="legs removed after BYE")


async def _no_legs(env: Env) -> bool:
    return not await env.legs()


# -- Teams side ---------------------------------------------------------------------------------

@in_task
async def test_teams_client_calls_sipp_device(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        bob = await env.phone(BOB)
        uas = bob.answer()
        teams = await env.api.sim_client(ALICE.oid)
        call = await env.api.sim_call(ALICE.oid, BOB.number, teams.endpoint_id)

        async def answered() -> bool:
            return (await env.api.get_call(call.call_id)).state == "connected"
        await wait_until(answered, what="backend call answered by the SIPp phone")
        assert uas.running()
        await env.api.sim_hangup(teams.endpoint_id, call.call_id)
        await uas.succeeded(15)  # the Teams hangup reached the phone as a BYE


@in_task
async def test_sipp_device_calls_teams_client(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        alice = await env.phone(ALICE)
        teams = await env.api.sim_client(CAROL.oid)
        stream = env.api.events((CAROL.oid,))
        await stream.ready(10)
        try:
            uac = alice.call(CAROL.number, pause_ms=500)
            ev = await next_event(stream, lambda e: e.type == "call.incoming"
                                  and e.endpoint_id == teams.endpoint_id)
            assert "m=audio" in ev.sdp  # the phone's offer crossed the B2BUA
            await env.api.sim_answer(teams.endpoint_id, ev.call_id)
            await uac.succeeded()
            ended = await next_event(stream, lambda e: e.type == "call.ended"
                                     and e.call_id == ev.call_id)
            assert ended.call_id == ev.call_id
            assert (await env.api.get_call(ev.call_id)).state == "ended"
        finally:
            await stream.close()


# -- PSTN ------------------------------------------------------------------------------------

@in_task
async def test_sipp_device_calls_pstn_numbers(tmp_path: Path) -> None:
    """+1206555... answers, +1206556... is busy (486), +1206557... rings out (480)."""
    async with gateway_env(tmp_path) as env:
        alice = await env.phone(ALICE)
        await alice.call("+12065550100", pause_ms=300).succeeded()
        await alice.call_refused("+12065560100", 486).succeeded()
        await alice.call_refused("+12065570100", 480,
                                 timeout=RING_TIMEOUT + 15).succeeded()
        await alice.call_refused("+12065580100", 404).succeeded()  # unallocated


# -- forking, CANCEL, busy, no answer, DND -----------------------------------------------------

@in_task
async def test_forked_call_cancels_other_device_with_reason(tmp_path: Path) -> None:
    """Two registered devices of Bob: one answers, the other gets CANCEL with
    Reason: SIP;cause=200;text="Call completed elsewhere" (RFC 3326)."""
    async with gateway_env(tmp_path) as env:
        alice = await env.phone(ALICE)
        bob1 = await env.phone(BOB)
        bob2 = await env.phone(BOB)
        cancelled = bob2.ring_until_cancelled(COMPLETED_ELSEWHERE_RE)
        answering = bob1.answer()
        uac = alice.call(BOB.number, pause_ms=300)
        await uac.succeeded()
        await answering.succeeded()
        await cancelled.succeeded()


@in_task
async def test_caller_cancel_and_callee_busy_and_no_answer(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        alice = await env.phone(ALICE)
        bob = await env.phone(BOB)
        # the caller gives up: the ringing callee gets CANCEL
        ringing = bob.ring_until_cancelled()
        await alice.call(BOB.number, "uac_cancel.xml").succeeded()
        await ringing.succeeded()
        # the callee is busy: 486 reaches the caller
        busy = bob.sipp("uas_busy.xml", service=bob.username).start()
        await alice.call_refused(BOB.number, 486).succeeded()
        await busy.succeeded()
        # nobody answers: the backend's ring timeout ends it (480), the callee is cancelled
        ringing = bob.ring_until_cancelled(timeout=RING_TIMEOUT + 15)
        await alice.call_refused(BOB.number, 480, timeout=RING_TIMEOUT + 15).succeeded()
        await ringing.succeeded()


@in_task
async def test_dnd_feature_code_makes_callee_busy(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        alice = await env.phone(ALICE)
        bob = await env.phone(BOB)
        await bob.call("*30*", "uac_local.xml").succeeded()  # answered, then BYE by gateway
        eps = await env.api.list_endpoints(BOB.oid)
        assert [e.dnd for e in eps if e.endpoint_id == bob.endpoint_id] == [True]
        await alice.call_refused(BOB.number, 486).succeeded()
        await bob.call("*31*", "uac_local.xml").succeeded()
        uas = bob.answer()
        await alice.call(BOB.number, pause_ms=100).succeeded()
        await uas.succeeded()


# -- unpaired devices and emergency calls -------------------------------------------------------

@in_task
async def test_unpaired_device_refused_except_emergency_with_location(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        lobby = await env.phone(None)
        await lobby.call_refused("+12065550100", 403).succeeded()
        await lobby.call_refused(BOB.number, 403).succeeded()
        await lobby.call_refused("*30*", 403).succeeded()
        uac = lobby.call("911", "uac_emergency.xml", pause_ms=3000)

        async def leg() -> dict[str, Any] | None:
            legs = [x for x in await env.legs() if x["device_id"] == lobby.device_id]
            return legs[0] if legs else None
        found = await wait_until(leg, what="the emergency call's leg")
        call = await env.api.get_call(found["backend_call_id"])
        assert call.target.kind == "emergency" and call.target.value == "911"
        assert "SIPP-TEST-STREET" in call.location  # the PIDF-LO crossed to the backend
        assert "civicAddress" in call.location
        await uac.succeeded()


# -- restart mid-call ------------------------------------------------------------------------------

@in_task
async def test_gateway_restart_mid_call_bye_still_ends_both_sides(tmp_path: Path) -> None:
    """SIGKILL the gateway (and with it the embedded backend) during a call; a new
    process on the same data directory takes the phone's BYE, ends the backend call
    and BYEs the other phone."""
    async with gateway_env(tmp_path) as env:
        alice = await env.phone(ALICE)
        bob = await env.phone(BOB)
        uas = bob.answer(timeout=60)
        uac = alice.call(BOB.number, pause_ms=6000, timeout=60)
        legs = await wait_until(lambda: _two_legs(env), what="both legs established")
        call_id = legs[0]["backend_call_id"]
        old = env.gw
        sip_port = old.sip("udp")
        env.phones.clear()  # the SIPp runs outlive this gateway
        await env.close()
        valkey = EmbeddedValkey(old.data_dir / "valkey")
        old_valkey = int(valkey.pid_path.read_text())
        await asyncio.to_thread(old.kill)
        # SIGKILL leaves the gateway's private valkey-server running, orphaned
        assert valkey.orphan_pid() == old_valkey
        # the new process must listen where the phones registered and send from there
        (tmp_path / "restart").mkdir()
        gw2 = GatewayProcess(tmp_path / "restart", overrides(sip={"udp_port": sip_port[1]}),
                             data_dir=old.data_dir)
        await asyncio.to_thread(gw2.start)
        env2 = Env(gw2, tmp_path)
        try:
            # the new process shut the orphan down before starting its own server
            assert valkey.orphan_pid() not in (None, old_valkey)  # the new one's server
            assert not Path(f"/proc/{old_valkey}/cwd").exists()
            await env2.open()
            await uac.succeeded(40)  # the BYE after the pause got its 200 from the new node
            await uas.succeeded(20)  # ... and the other phone got a BYE

            async def ended() -> bool:
                return (await env2.api.get_call(call_id)).state == "ended"
            await wait_until(ended, what="backend call ended")
            assert not await env2.legs()
        except BaseException:
            print(gw2.output()[-20000:])
            raise
        finally:
            uac.kill()
            uas.kill()
            await env2.close()
            await asyncio.to_thread(gw2.stop)
            valkey.stop_orphan()  # only if the new gateway failed to


async def _two_legs(env: Env) -> list[dict[str, Any]] | None:
    legs = await env.legs()
    return legs if len(legs) == 2 else None
