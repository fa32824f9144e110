"""Bulk sign-in: CSV parsing, batching, the per-region cap, deadlines and every result code.

The backend directory is an in-memory double of the ``UserDirectory`` seam;
devices, bindings, batches and the pairing store are on the real Valkey.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from gateway.backend.client import BackendError, BackendUnavailable
from gateway.backend.schema import PolicyInfo, TenantInfo, UserInfo
from gateway.identity.bulk import (
    BulkConfig,
    BulkInputError,
    BulkOutcome,
    BulkSignIn,
    CsvRow,
    PairingStoreLedger,
    parse_csv,
    parse_hardware_id,
    prejudge,
    split_batches,
)
from gateway.identity.pairing import PairingState, PairingStore
from gateway.registrar.bindings import Binding
from gateway.registrar.devices import DeviceStore
from gateway.state import keys
from gateway.state.redis import connect

T1 = "11111111-1111-4111-8111-111111111111"
T2 = "22222222-2222-4222-8222-222222222222"
H = 3600.0


def _user(upn: str, tenant: str = T1, *, number: str = "+14255550100", sip: bool = True,
          kind: str = "common_area", lic: tuple[str, ...] = ("common_area",), mfa: bool = False,
          enabled: bool = True, refusal: str = "") -> UserInfo:
    return UserInfo(oid=f"oid-{upn}", tenant=tenant, upn=upn, name=upn, number=number,
                    pstn_enabled=True, licenses=lic, account_type=kind, enabled=enabled,
                    mfa=mfa, calling_policy=PolicyInfo(sip, False), sip_device_refusal=refusal)


class Directory:
    """In-memory double of the backend's user/tenant lookups."""

    def __init__(self) -> None:
        self.down = False
        self.users = {u.upn: u for u in [
            _user("cap@t1"), _user("cap2@t1"), _user("nonum@t1", number=""),
            _user("nosip@t1", sip=False), _user("person@t1", kind="user", lic=("teams",)),
            _user("mfa@t1", mfa=True), _user("off@t1", enabled=False),
            _user("nopstn@t1", refusal="user_missing_pstn"), _user("cap@t2", T2)]}
        self.tenants = {T1: TenantInfo(T1, "One", "one.example", "commercial", True, True),
                        T2: TenantInfo(T2, "Two", "two.example", "commercial", False, True)}

    async def user_by_upn(self, upn: str) -> UserInfo | None:
        if self.down:
            raise BackendUnavailable("down")
        return self.users.get(upn)

    async def get_tenant(self, tenant_id: str) -> TenantInfo:
        if tenant_id not in self.tenants:
            raise BackendError(404, "not_found", "no tenant")
        return self.tenants[tenant_id]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def aio(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


# -- pure parsing -------------------------------------------------------------------------
def test_csv_bom_blank_lines_and_case_insensitive_header() -> None:
    rows = parse_csv(b"\xef\xbb\xbfusername , HARDWAREID\r\n\r\n a@x ,00-04-f2-aa-bb-cc\r\n"
                     b",,\r\nb@x,00-04-f2-aa-bb-cd:001\n")
    assert rows == [CsvRow(3, "a@x", "00-04-f2-aa-bb-cc"),
                    CsvRow(5, "b@x", "00-04-f2-aa-bb-cd:001")]


@pytest.mark.parametrize("data,why", [
    (b"", "empty"), (b"\n\n", "empty"), (b"User,Mac\na,b\n", "header"),
    (b"Username,HardwareId\n", "no rows"), (b"Username,HardwareId\n\xff\xfe\n", "UTF-8"),
    (b"Username,HardwareId\na,\"b\n", "malformed"), (b"Username,HardwareId\na\x00,b\n", "NUL"),
    (b"Username,HardwareId,Extra\na,b,c\n", "header"),
])
def test_unusable_csv_says_why(data: bytes, why: str) -> None:
    with pytest.raises(BulkInputError, match=why):
        parse_csv(data)


def test_size_and_row_limits() -> None:
    cfg = BulkConfig(max_rows=3, max_bytes=200)
    with pytest.raises(BulkInputError, match="more than 3 rows"):
        parse_csv(b"Username,HardwareId\n" + b"a,b\n" * 4, cfg)
    with pytest.raises(BulkInputError, match="larger than 200"):
        parse_csv(b"Username,HardwareId\n" + b"a,b\n" * 60, cfg)


@pytest.mark.parametrize("text,ok", [
    ("00-04-f2-aa-bb-cc", True), ("00-04-F2-AA-BB-CC:001", True), ("00-04-f2-aa-bb-cc:024", True),
    ("00:04:f2:aa:bb:cc", False), ("0004f2aabbcc", False), ("00-04-f2-aa-bb", False),
    ("00-04-f2-aa-bb-cc:000", False), ("00-04-f2-aa-bb-cc:1", False),
    ("00-00-00-00-00-00", False), ("gg-04-f2-aa-bb-cc", False), ("", False),
    ("00-04-f2-aa-bb-cc:0001", False),
])
def test_hardware_id_format(text: str, ok: bool) -> None:
    hw = parse_hardware_id(text)
    assert (hw is not None) is ok
    if hw is not None:
        assert str(hw) == text.lower()


def test_prejudge_bad_ids_and_lists_duplicates() -> None:
    rows = [CsvRow(2, "a", "00-04-f2-aa-bb-cc"), CsvRow(3, "b", "bad"),
            CsvRow(4, "c", "00-04-F2-AA-BB-CC"), CsvRow(5, "d", "00-04-f2-aa-bb-cc:001"),
            CsvRow(6, "e", "00-04-f2-aa-bb-cc")]
    out = prejudge(rows)
    assert out[3].outcome is BulkOutcome.BAD_HARDWARE_ID
    assert {n for n, r in out.items() if r.outcome is BulkOutcome.DUPLICATE_DEVICE} == {2, 4, 6}
    assert "lines 2, 4, 6" in out[2].message
    assert 5 not in out  # another port of the same ATA is another device


def test_batches_of_at_most_100() -> None:
    rows = [CsvRow(i, "u", "x") for i in range(2, 252)]
    assert [len(b) for b in split_batches(rows, 100)] == [100, 100, 50]


def test_every_outcome_has_a_message_and_unique_code() -> None:
    codes = [m.code for m in BulkOutcome]
    assert len(set(codes)) == len(codes)
    for m in BulkOutcome:
        assert BulkOutcome.by_code(m.code) is m and len(m.template) > 10


# -- with Valkey ----------------------------------------------------------------------------
class Env:
    def __init__(self, redis: Any, clock: Clock, spawned: list[Coroutine[Any, Any, None]],
                 directory: Directory) -> None:
        self.redis = redis
        self.clock = clock
        self.devices = DeviceStore(redis, "test.example", clock=clock)
        self.pairing = PairingStore(redis, clock=clock)
        self.directory = directory
        self.spawned = spawned
        self.bulk = BulkSignIn(redis, self.devices, directory,
                               ledger=PairingStoreLedger(self.pairing), clock=clock,
                               spawn=spawned.append)

    async def device(self, mac: str, tenant: str = T1, *, online: bool = True,
                     username: str | None = None) -> str:
        dev, _ = await self.devices.add(mac, "Yealink", "T57W", tenant, sip_username=username)
        if online:
            b = Binding(key="uri:x", aor=dev.aor, contact="<sip:x@192.0.2.1>",
                        uri="sip:x@192.0.2.1", expires=self.clock() + 600, host="192.0.2.1",
                        port=5060, device_id=dev.device_id)
            await self.redis.hset(keys.bindings(dev.aor), b.key, b.to_json())
        return dev.device_id

    async def run_all(self) -> None:
        while self.spawned:
            await self.spawned.pop(0)


def with_env(scenario):  # type: ignore[no-untyped-def]
    @pytest_twisted.ensureDeferred
    async def test(redis_url: str) -> None:
        async def go() -> None:
            redis = connect(redis_url)
            spawned: list[Coroutine[Any, Any, None]] = []
            try:
                await scenario(Env(redis, Clock(1_700_000_000.0), spawned, Directory()))
            finally:
                for c in spawned:
                    c.close()
                await redis.aclose()
        await aio(go())
    test.__name__ = scenario.__name__
    return test


async def _cap_per_region(env: Env) -> None:
    rows = "".join(f"cap@t1,00-04-f2-00-{i // 256:02x}-{i % 256:02x}\n" for i in range(1, 451))
    ids = await env.bulk.submit(b"Username,HardwareId\n" + rows.encode(), "NOAM")
    assert len(ids) == 5
    assert len(env.spawned) == 3 and sorted(await env.bulk.running("NOAM")) == sorted(ids[:3])
    assert await env.bulk.queued("NOAM") == ids[3:]
    # another region has its own three slots
    other = await env.bulk.submit(b"Username,HardwareId\ncap@t1,00-04-f2-aa-aa-aa\n", "EMEA")
    assert await env.bulk.running("EMEA") == other and len(env.spawned) == 4
    assert (await env.bulk.status(ids[3])).state == "queued"  # type: ignore[union-attr]
    # finishing one NOAM batch starts exactly the next one
    await env.spawned.pop(0)
    assert (await env.bulk.status(ids[0])).state == "done"  # type: ignore[union-attr]
    assert sorted(await env.bulk.running("NOAM")) == sorted(ids[1:4])
    assert await env.bulk.queued("NOAM") == ids[4:]
    await env.run_all()
    for i in ids:
        st = await env.bulk.status(i)
        assert st is not None and st.state == "done"
        assert {r.outcome for r in st.rows} == {BulkOutcome.DEVICE_NOT_FOUND}
    assert await env.bulk.running("NOAM") == []


test_three_concurrent_batches_per_region = with_env(_cap_per_region)


async def _expired_lease_requeued(env: Env) -> None:
    ids = [(await env.bulk.submit(b"Username,HardwareId\ncap@t1,00-04-f2-aa-aa-0%d\n" % i,
                                  "APAC"))[0] for i in range(4)]
    assert sorted(await env.bulk.running("APAC")) == sorted(ids[:3])
    for c in env.spawned:
        c.close()
    env.spawned.clear()
    env.clock.now += env.bulk.config.lease_seconds + 1  # the runner died: leases lapse
    started = await env.bulk.pump("APAC")
    assert sorted(started) == sorted(ids[:3]) and await env.bulk.queued("APAC") == [ids[3]]


test_dead_runner_batches_are_requeued = with_env(_expired_lease_requeued)


async def _catalogue(env: Env) -> None:
    created = env.clock()
    for n in range(1, 16):
        await env.device(f"00:04:f2:00:00:{n:02x}")
    await env.device("00:04:f2:00:00:20", online=False)
    await env.device("00:04:f2:00:00:21", T2)
    await env.device("00:04:f2:00:00:30", username="0004f2000030-002")
    await env.device("00:04:f2:00:00:31")  # port 001 falls back to the MAC's account
    await env.devices.set_paired("0004f200000f", "oid-cap2@t1")
    env.directory.tenants.pop(T2)
    env.directory.tenants[T2] = TenantInfo(T2, "Two", "two.example", "commercial", False, True)
    csv = ("Username,HardwareId\n"
           "cap@t1,00-04-f2-00-00-01\n"        # 2 signed in
           "nobody@t1,00-04-f2-00-00-02\n"     # 3
           "cap@t2,00-04-f2-00-00-03\n"        # 4 user of another tenant
           "nonum@t1,00-04-f2-00-00-04\n"      # 5
           "nosip@t1,00-04-f2-00-00-05\n"      # 6
           "person@t1,00-04-f2-00-00-06\n"     # 7
           "mfa@t1,00-04-f2-00-00-07\n"        # 8
           "off@t1,00-04-f2-00-00-08\n"        # 9
           "nopstn@t1,00-04-f2-00-00-09\n"     # 10
           "cap@t1,00-04-f2-00-00-99\n"        # 11 device not found
           "cap@t1,00-04-f2-00-00-20\n"        # 12 offline
           "cap@t1,00-04-f2-00-00-0f\n"        # 13 already signed in
           "cap@t1,00-04-f2-00-00-0a\n"        # 14 dup
           "cap@t1,00-04-f2-00-00-0A\n"        # 15 dup
           "cap@t1,not-a-mac\n"                # 16 bad id
           "cap@t2,00-04-f2-00-00-21\n"        # 17 bulk disabled
           "cap2@t1,00-04-f2-00-00-30:002\n"   # 18 ATA port account
           "cap2@t1,00-04-f2-00-00-31:001\n"   # 19 port 001 -> MAC account
           "cap2@t1,00-04-f2-00-00-0b\n"       # 20 service unavailable (set below)
           ",00-04-f2-00-00-0c\n")             # 21 empty username
    ids = await env.bulk.submit(csv.encode(), "NOAM")
    batch = env.spawned.pop(0)
    # decide rows 2-19 with the backend up, then take it down for the rest
    real = env.bulk.check_row

    async def check_row(row: CsvRow, *a: Any) -> Any:
        env.directory.down = row.line == 20
        return await real(row, *a)
    env.bulk.check_row = check_row  # type: ignore[method-assign]
    await batch
    st = await env.bulk.status(ids[0])
    assert st is not None
    got = {r.line: r.outcome for r in st.rows}
    O = BulkOutcome  # noqa: E741
    assert got == {
        2: O.SIGNED_IN, 3: O.USER_NOT_FOUND, 4: O.USER_NOT_FOUND,
        5: O.USER_MISSING_PHONE_NUMBER, 6: O.USER_MISSING_SIP_POLICY, 7: O.USER_MISSING_CAP,
        8: O.USER_MFA_ENABLED, 9: O.USER_NOT_ELIGIBLE, 10: O.USER_NOT_ELIGIBLE,
        11: O.DEVICE_NOT_FOUND, 12: O.DEVICE_OFFLINE, 13: O.DEVICE_SIGNED_IN,
        14: O.DUPLICATE_DEVICE, 15: O.DUPLICATE_DEVICE, 16: O.BAD_HARDWARE_ID,
        17: O.BULK_SIGN_IN_DISABLED, 18: O.SIGNED_IN, 19: O.SIGNED_IN,
        20: O.SERVICE_UNAVAILABLE, 21: O.USER_NOT_FOUND,
    }
    rows = {r.line: r for r in st.rows}
    assert rows[18].device_id == "0004f2000030" and rows[19].device_id == "0004f2000031"
    assert "user missing pstn" in rows[10].message
    assert created == env.clock()
    rec = await env.pairing.get("0004f2000001")
    assert rec.state is PairingState.PAIRED and rec.history[0].reason == f"bulk sign-in " \
        f"batch {ids[0]}"
    # restricted to a tenant: a device of another tenant is "not found" there
    ids = await env.bulk.submit(b"Username,HardwareId\ncap@t2,00-04-f2-00-00-21\n", "NOAM",
                                tenant=T1)
    await env.run_all()
    st = await env.bulk.status(ids[0])
    assert st is not None and st.rows[0].outcome is BulkOutcome.DEVICE_NOT_FOUND
    assert f"of tenant {T1}" in st.rows[0].message
    reached = {r.outcome for r in rows.values()} | {BulkOutcome.DEADLINE_PASSED,
                                                    BulkOutcome.PENDING}
    assert reached == set(BulkOutcome)  # DEADLINE_PASSED: next test; PENDING: status tests


test_every_catalogue_entry_is_reachable = with_env(_catalogue)


async def _deadlines(env: Env) -> None:
    d1 = await env.device("00:04:f2:00:01:01")
    d2 = await env.device("00:04:f2:00:01:02")
    csv = b"Username,HardwareId\ncap@t1,00-04-f2-00-01-01\n"

    async def attempt(data: bytes) -> BulkOutcome:
        (bid,) = await env.bulk.submit(data, "NOAM")
        await env.run_all()
        st = await env.bulk.status(bid)
        assert st is not None
        return st.rows[0].outcome

    env.clock.now += 72 * H + 1  # never signed in: 72 h after onboarding
    assert await attempt(csv) is BulkOutcome.DEADLINE_PASSED
    # a device signed out 167 h ago may be bulk signed in; 169 h ago it may not
    for s in (PairingState.PAIRING, PairingState.PAIRED, PairingState.SIGNING_OUT,
              PairingState.UNPAIRED):
        await env.pairing.transition(d2, s, "manual")
    env.clock.now += 167 * H
    dev = await env.devices.get(d2)  # keep its registration alive at the new time
    assert dev is not None
    b = Binding(key="uri:y", aor=dev.aor, contact="<sip:y@192.0.2.2>", uri="sip:y@192.0.2.2",
                expires=env.clock() + 600, host="192.0.2.2", port=5060, device_id=d2)
    await env.redis.hset(keys.bindings(dev.aor), b.key, b.to_json())
    assert await attempt(b"Username,HardwareId\ncap@t1,00-04-f2-00-01-02\n") is \
        BulkOutcome.SIGNED_IN
    for s in (PairingState.SIGNING_OUT, PairingState.UNPAIRED):
        await env.pairing.transition(d2, s, "manual")
    await env.devices.set_unpaired(d2)
    env.clock.now += 168 * H + 1
    assert await attempt(b"Username,HardwareId\ncap@t1,00-04-f2-00-01-02\n") is \
        BulkOutcome.DEADLINE_PASSED
    # before its batch runs, a row reads as pending
    st = await env.bulk.status((await env.bulk.submit(csv, "NOAM"))[0])
    assert st is not None and st.rows[0].outcome is BulkOutcome.PENDING and d1


test_deadlines_72h_after_onboarding_168h_after_sign_out = with_env(_deadlines)


async def _bad_input(env: Env) -> None:
    with pytest.raises(BulkInputError, match="region"):
        await env.bulk.submit(b"Username,HardwareId\na,b\n", "MARS")
    with pytest.raises(BulkInputError, match="tenant"):
        await env.bulk.submit(b"Username,HardwareId\na,b\n", "NOAM", tenant="x y")
    assert await env.bulk.status("../../x") is None
    assert await env.bulk.status("0" * 32) is None


test_bad_region_tenant_and_batch_id = with_env(_bad_input)


def test_time_is_injected() -> None:
    assert BulkSignIn.__init__.__kwdefaults__["clock"] is time.time  # type: ignore[index]
