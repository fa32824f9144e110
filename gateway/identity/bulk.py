"""Bulk sign-in of common-area phones from a ``Username,HardwareId`` CSV (FIELD-NOTES §1.6).

The Teams SIP Gateway semantics: the admin uploads a CSV (header required;
``HardwareId`` is ``xx-xx-xx-xx-xx-xx`` or ``xx-xx-xx-xx-xx-xx:001`` for an ATA
port, ports from 001) for one region (NOAM, EMEA, APAC). The rows are split
into batches of at most 100 devices; at most 3 batches run at once per region
and the rest wait in a queue. Batches, the queue and every row result live in
Redis, so status survives a restart, and a batch whose runner died is picked
up again once its lease ends (rows already decided are not redone).

Each row gets one result from ``BulkOutcome``: a stable code and a message
telling the admin what to fix. A device may be signed in only within 72 hours
of onboarding (never signed in) or 168 hours of its last sign-out; it must be
online (a live registration), and the user must be a common-area account of the
device's tenant with a phone number, ``AllowSIPDevicesCalling`` and no MFA.
A successful row binds the device to the user (``DeviceStore.set_paired``) and
records the pairing transitions with the reason ``bulk sign-in batch <id>``.

An ATA port ``<mac>:NNN`` is the device account whose SIP username is
``<mac12>-NNN``; port 001 falls back to the MAC's own device account.

Redis keys (prefix ``sipgw:bulk:``): ``batch:<id>`` hash (region, tenant, state,
times, rows as JSON), ``batch:<id>:results`` hash (CSV line -> JSON result),
``queue:<region>`` list of waiting batch ids, ``running:<region>`` zset (batch
id -> lease expiry), ``ledger:<device_id>`` hash (sign-out time when no pairing
store is used). Finished batches expire after ``BulkConfig.keep_seconds``.
"""

from __future__ import annotations

import asyncio
import csv
import enum
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.backend.client import BackendError, BackendUnavailable
from gateway.backend.schema import TenantInfo, UserInfo
from gateway.registrar.bindings import BindingStore
from gateway.registrar.devices import Device, DeviceStore
from gateway.tasks import TaskSet

log = logging.getLogger("sipgw.bulk")

REGIONS = ("NOAM", "EMEA", "APAC")
PREFIX = "sipgw:bulk:"
HOUR = 3600.0

_HWID = re.compile(r"^([0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5})(?::([0-9]{3}))?$")
_BATCH_ID = re.compile(r"^[0-9a-f]{32}$")


class BulkOutcome(enum.Enum):
    """The result catalogue of a bulk sign-in row (FIELD-NOTES §1.6 error list).

    Each member is (code, message template); the template names what the admin
    must fix. Placeholders: ``{user}``, ``{hw}``, ``{tenant}``, ``{detail}``.
    """

    SIGNED_IN = ("signed_in", "Signed in: {hw} is now the common-area phone of {user}.")
    PENDING = ("pending", "Waiting for its batch to run.")
    USER_NOT_FOUND = (
        "user_not_found",
        "User {user} was not found in the device's tenant: check the Username column "
        "(the account's UPN) and that the account belongs to the same tenant as the device.")
    USER_MISSING_PHONE_NUMBER = (
        "user_missing_phone_number",
        "User {user} has no phone number assigned: assign one, then resubmit the row.")
    USER_MISSING_SIP_POLICY = (
        "user_missing_allow_sip_devices_calling",
        "User {user} has no calling policy with AllowSIPDevicesCalling: assign one "
        "(Set-CsTeamsCallingPolicy -AllowSIPDevicesCalling $true), allow time for the policy "
        "to propagate, then resubmit.")
    USER_MISSING_CAP = (
        "user_missing_cap_policy",
        "User {user} is not a common-area phone account with a common-area licence: assign "
        "the common-area licence and the CommonAreaPhone policy, then resubmit.")
    USER_MFA_ENABLED = (
        "user_mfa_enabled",
        "User {user} has multi-factor authentication: bulk sign-in accounts must not use MFA.")
    USER_NOT_ELIGIBLE = (
        "user_not_eligible",
        "User {user} may not use SIP devices ({detail}): fix the account, then resubmit.")
    DEVICE_NOT_FOUND = (
        "device_not_found",
        "Device {hw} was not found in the records{detail}: onboard it first (the phone must "
        "fetch its provisioning file from the tenant-tagged URL).")
    DEVICE_OFFLINE = (
        "device_offline",
        "Device {hw} is offline (no live registration): check it is powered and connected, "
        "then resubmit the row.")
    DEVICE_SIGNED_IN = (
        "device_already_signed_in",
        "Device {hw} is already signed in{detail}: sign it out first, then resubmit.")
    DUPLICATE_DEVICE = (
        "duplicate_device",
        "Device {hw} appears more than once in the request (CSV lines {detail}): keep one row "
        "per device and resubmit.")
    BAD_HARDWARE_ID = (
        "bad_hardware_id",
        "HardwareId {hw} has the wrong format: use xx-xx-xx-xx-xx-xx, or "
        "xx-xx-xx-xx-xx-xx:001 for an ATA port (ports start at 001).")
    BULK_SIGN_IN_DISABLED = (
        "bulk_sign_in_disabled",
        "Bulk sign-in is disabled for tenant {tenant}: enable it "
        "(Set-CsTeamsSipDevicesConfiguration -BulkSignIn Enabled), then resubmit.")
    DEADLINE_PASSED = (
        "bulk_sign_in_deadline_expired",
        "The bulk sign-in window of {hw} closed {detail}: a device can be bulk signed in "
        "within 72 h of onboarding or 168 h of its last sign-out. Sign in on the phone, or "
        "factory-reset and re-onboard it.")
    SERVICE_UNAVAILABLE = (
        "service_unavailable",
        "The calling service did not answer while checking this row: resubmit it later.")

    def __init__(self, code: str, template: str) -> None:
        self.code = code
        self.template = template

    @property
    def ok(self) -> bool:
        return self is BulkOutcome.SIGNED_IN

    @classmethod
    def by_code(cls, code: str) -> BulkOutcome | None:
        for m in cls:
            if m.code == code:
                return m
        return None


class BulkInputError(ValueError):
    """The CSV as a whole cannot be used (no header, not UTF-8, too large); says why."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One data row of the CSV; ``line`` is its 1-based line number in the file."""

    line: int
    username: str
    hardware_id: str


@dataclass(frozen=True, slots=True)
class HardwareId:
    """A parsed ``HardwareId``: MAC (12 lower-hex) and the ATA port (None for a phone)."""

    mac: str
    port: int | None

    def __str__(self) -> str:
        pairs = "-".join(self.mac[i:i + 2] for i in range(0, 12, 2))
        return pairs if self.port is None else f"{pairs}:{self.port:03d}"


def parse_hardware_id(text: str) -> HardwareId | None:
    """``xx-xx-xx-xx-xx-xx[:NNN]`` -> HardwareId; None when malformed (port 000 too)."""
    m = _HWID.match(text.strip())
    if m is None:
        return None
    mac = m.group(1).replace("-", "").lower()
    if mac == "000000000000":
        return None
    port = int(m.group(2)) if m.group(2) is not None else None
    if port == 0:
        return None
    return HardwareId(mac, port)


@dataclass(frozen=True, slots=True)
class RowResult:
    """The outcome of one CSV row."""

    line: int
    username: str
    hardware_id: str
    outcome: BulkOutcome
    message: str
    device_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "username": self.username, "hardware_id": self.hardware_id,
                "result": self.outcome.code, "ok": self.outcome.ok, "message": self.message,
                "device_id": self.device_id}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RowResult:
        outcome = BulkOutcome.by_code(str(d.get("result", ""))) or BulkOutcome.PENDING
        return cls(line=int(d["line"]), username=str(d["username"]),
                   hardware_id=str(d["hardware_id"]), outcome=outcome,
                   message=str(d.get("message", "")), device_id=str(d.get("device_id", "")))


def _result(row: CsvRow, outcome: BulkOutcome, *, tenant: str = "", detail: str = "",
            device_id: str = "") -> RowResult:
    shown = row.hardware_id[:40] if row.hardware_id else "(empty)"
    msg = outcome.template.format(user=row.username[:120] or "(empty)", hw=shown,
                                  tenant=tenant, detail=detail)
    return RowResult(row.line, row.username, row.hardware_id, outcome, msg, device_id)


@dataclass(frozen=True)
class BulkConfig:
    """Limits of bulk sign-in (the Teams SIP Gateway numbers by default)."""

    batch_size: int = 100
    max_concurrent: int = 3  # per region
    max_rows: int = 5000
    max_bytes: int = 1024 * 1024
    new_device_window: float = 72 * HOUR
    signed_out_window: float = 168 * HOUR
    lease_seconds: float = 120.0  # a running batch not renewed for this long is re-queued
    keep_seconds: float = 30 * 24 * HOUR  # how long finished batch results are kept


def parse_csv(data: bytes, config: BulkConfig | None = None) -> list[CsvRow]:
    """The data rows of a bulk sign-in CSV (UTF-8, optional BOM, blank lines skipped).

    Raises ``BulkInputError`` when the file cannot be used at all; row-level
    problems (a bad HardwareId, an empty Username) are left to the row checks.
    """
    cfg = config or BulkConfig()
    if len(data) > cfg.max_bytes:
        raise BulkInputError(f"the CSV is larger than {cfg.max_bytes} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BulkInputError(f"the CSV is not UTF-8 (byte {e.start})") from None
    if "\x00" in text:
        raise BulkInputError("the CSV contains NUL characters")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[CsvRow] = []
    header: list[str] | None = None
    try:
        for cells in reader:
            line = reader.line_num
            cells = [c.strip() for c in cells]
            if not any(cells):
                continue
            if header is None:
                header = [c.lower() for c in cells]
                if header[:2] != ["username", "hardwareid"] or any(header[2:]):
                    raise BulkInputError(
                        f"line {line}: the header must be 'Username,HardwareId' "
                        f"(got {','.join(cells)[:80]!r})")
                continue
            if len(rows) >= cfg.max_rows:
                raise BulkInputError(f"more than {cfg.max_rows} rows: split the file")
            if any(cells[2:]):
                # extra non-empty columns: the row is not what the admin meant
                rows.append(CsvRow(line, cells[0], ",".join(cells[1:])[:80]))
                continue
            username = cells[0] if cells else ""
            hwid = cells[1] if len(cells) > 1 else ""
            rows.append(CsvRow(line, username[:320], hwid[:80]))
    except csv.Error as e:
        raise BulkInputError(f"line {reader.line_num}: malformed CSV ({e})") from None
    if header is None:
        raise BulkInputError("the CSV is empty: the header 'Username,HardwareId' is required")
    if not rows:
        raise BulkInputError("the CSV has a header but no rows")
    return rows


def prejudge(rows: Sequence[CsvRow]) -> dict[int, RowResult]:
    """Results decided from the file alone: bad HardwareIds and duplicate devices."""
    out: dict[int, RowResult] = {}
    seen: dict[HardwareId, list[int]] = {}
    for row in rows:
        hw = parse_hardware_id(row.hardware_id)
        if hw is None:
            out[row.line] = _result(row, BulkOutcome.BAD_HARDWARE_ID)
            continue
        seen.setdefault(hw, []).append(row.line)
    dups = {hw: lines for hw, lines in seen.items() if len(lines) > 1}
    for row in rows:
        hw = parse_hardware_id(row.hardware_id)
        if hw is not None and hw in dups:
            out[row.line] = _result(row, BulkOutcome.DUPLICATE_DEVICE,
                                    detail=", ".join(str(n) for n in dups[hw]))
    return out


def split_batches(rows: Sequence[CsvRow], size: int) -> list[list[CsvRow]]:
    return [list(rows[i:i + size]) for i in range(0, len(rows), size)]


# -- seams ---------------------------------------------------------------------------------
class UserDirectory(Protocol):
    """What bulk sign-in asks the call-control backend (``BackendClient`` fits)."""

    async def user_by_upn(self, upn: str) -> UserInfo | None: ...

    async def get_tenant(self, tenant_id: str) -> TenantInfo: ...


class PairingConflict(Exception):
    """The pairing state machine refuses the bulk sign-in (the device is signed in)."""


class PairingLedger(Protocol):
    """Where sign-in history is kept: the identity pairing store, or ``RedisPairingLedger``."""

    async def last_sign_out(self, device_id: str) -> float | None: ...

    async def signed_in_as(self, device_id: str) -> str | None: ...

    async def begin(self, device_id: str, reason: str) -> None: ...

    async def complete(self, device_id: str, user: UserInfo, reason: str) -> None: ...

    async def abort(self, device_id: str, reason: str) -> None: ...


class RedisPairingLedger:
    """A minimal ledger for nodes without the pairing store: sign-out times and the last reason."""

    def __init__(self, redis: Any, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.clock = clock

    @staticmethod
    def key(device_id: str) -> str:
        return f"{PREFIX}ledger:{device_id}"

    async def last_sign_out(self, device_id: str) -> float | None:
        raw = await self.redis.hget(self.key(device_id), "signed_out")
        return float(raw) if raw else None

    async def signed_in_as(self, device_id: str) -> str | None:
        return None  # the device record's state is the only truth without a pairing store

    async def begin(self, device_id: str, reason: str) -> None:
        return None

    async def complete(self, device_id: str, user: UserInfo, reason: str) -> None:
        await self.redis.hset(self.key(device_id), mapping={
            "signed_in": repr(self.clock()), "user": user.upn, "reason": reason})

    async def abort(self, device_id: str, reason: str) -> None:
        return None

    async def record_sign_out(self, device_id: str, reason: str) -> None:
        await self.redis.hset(self.key(device_id), mapping={
            "signed_out": repr(self.clock()), "reason": reason})


class PairingStoreLedger:
    """``PairingLedger`` over ``gateway.identity.pairing.PairingStore`` (its transition table).

    Bulk sign-in walks the same machine as a user sign-in: unpaired -> pairing
    -> paired, each transition with the reason ``bulk sign-in batch <id>``.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    async def last_sign_out(self, device_id: str) -> float | None:
        record = await self.store.get(device_id)
        times = [float(t.at) for t in record.history
                 if t.to_state.value == "unpaired" and t.from_state.value == "signing_out"]
        return max(times) if times else None

    async def signed_in_as(self, device_id: str) -> str | None:
        record = await self.store.get(device_id)
        if record.state.value in ("paired", "signing_out"):
            return str(record.upn or record.user_oid or "a user")
        return None

    async def begin(self, device_id: str, reason: str) -> None:
        from gateway.identity.pairing import IllegalTransition, PairingState

        try:
            await self.store.transition(device_id, PairingState.PAIRING, reason)
        except IllegalTransition as e:
            raise PairingConflict(str(e)) from None

    async def complete(self, device_id: str, user: UserInfo, reason: str) -> None:
        from gateway.identity.pairing import IllegalTransition, PairingState

        try:
            await self.store.transition(device_id, PairingState.PAIRED, reason,
                                        expect=(PairingState.PAIRING,), user_oid=user.oid,
                                        upn=user.upn, tenant=user.tenant)
        except IllegalTransition as e:
            raise PairingConflict(str(e)) from None

    async def abort(self, device_id: str, reason: str) -> None:
        from gateway.identity.pairing import IllegalTransition, PairingState

        try:
            await self.store.transition(device_id, PairingState.UNPAIRED, reason,
                                        expect=(PairingState.PAIRING,))
        except IllegalTransition:
            pass


Spawn = Callable[[Coroutine[Any, Any, None]], Any]


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """A batch and its per-row results, as ``GET /admin/v1/bulk-sign-in/{id}`` returns it."""

    batch_id: str
    region: str
    tenant: str
    state: str  # queued | running | done
    submitted: float
    started: float
    finished: float
    rows: tuple[RowResult, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r.outcome.code] = counts.get(r.outcome.code, 0) + 1
        return {"batch_id": self.batch_id, "region": self.region, "tenant": self.tenant,
                "state": self.state, "submitted": self.submitted, "started": self.started,
                "finished": self.finished, "counts": counts,
                "rows": [r.to_json() for r in self.rows]}


# KEYS: 1 queue, 2 running zset. ARGV: 1 now, 2 lease seconds, 3 max concurrent.
# Re-queues batches whose lease ran out (their runner died), then starts what fits.
_PUMP_LUA = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for i = #expired, 1, -1 do
  redis.call('ZREM', KEYS[2], expired[i])
  redis.call('LPUSH', KEYS[1], expired[i])
end
local started = {}
while redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[3]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
  table.insert(started, id)
end
return started
"""


class BulkSignIn:
    """Queues, runs and reports bulk sign-in batches (see the module docstring)."""

    def __init__(self, redis: Any, devices: DeviceStore, directory: UserDirectory, *,
                 ledger: PairingLedger | None = None, config: BulkConfig | None = None,
                 clock: Callable[[], float] = time.time, spawn: Spawn | None = None) -> None:
        self.redis = redis
        self.devices = devices
        self.bindings = BindingStore(redis)
        self.directory = directory
        self.ledger: PairingLedger = ledger or RedisPairingLedger(redis, clock)
        self.config = config or BulkConfig()
        self.clock = clock
        self._tasks = TaskSet(log, "bulk sign-in")
        self._spawn = spawn or self._default_spawn
        self._pump = redis.register_script(_PUMP_LUA)

    def _default_spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    async def stop(self) -> None:
        """Cancel the batches this node runs; their leases lapse and another node resumes them."""
        await self._tasks.cancel()

    # -- keys ----------------------------------------------------------------------------
    @staticmethod
    def _batch_key(batch_id: str) -> str:
        return f"{PREFIX}batch:{batch_id}"

    @staticmethod
    def _results_key(batch_id: str) -> str:
        return f"{PREFIX}batch:{batch_id}:results"

    @staticmethod
    def _queue_key(region: str) -> str:
        return f"{PREFIX}queue:{region}"

    @staticmethod
    def _running_key(region: str) -> str:
        return f"{PREFIX}running:{region}"

    # -- submit / status -------------------------------------------------------------------
    async def submit(self, data: bytes, region: str, tenant: str = "") -> list[str]:
        """Parse ``data``, queue its batches for ``region``; returns the batch ids."""
        region = region.strip().upper()
        if region not in REGIONS:
            raise BulkInputError(f"region must be one of {', '.join(REGIONS)}")
        if tenant and (len(tenant) > 64 or not re.fullmatch(r"[0-9A-Za-z\-]+", tenant)):
            raise BulkInputError("tenant must be a tenant id")
        rows = parse_csv(data, self.config)
        decided = prejudge(rows)
        now = self.clock()
        ids: list[str] = []
        pipe = self.redis.pipeline(transaction=True)
        for batch in split_batches(rows, self.config.batch_size):
            batch_id = uuid.uuid4().hex
            ids.append(batch_id)
            pipe.hset(self._batch_key(batch_id), mapping={
                "region": region, "tenant": tenant, "state": "queued", "submitted": repr(now),
                "started": "0", "finished": "0",
                "rows": json.dumps([[r.line, r.username, r.hardware_id] for r in batch])})
            results = {str(r.line): json.dumps(decided[r.line].to_json())
                       for r in batch if r.line in decided}
            if results:
                pipe.hset(self._results_key(batch_id), mapping=results)
            pipe.rpush(self._queue_key(region), batch_id)
        await pipe.execute()
        log.info("bulk sign-in: %d rows in %d batches queued for %s", len(rows), len(ids), region)
        await self.pump(region)
        return ids

    async def status(self, batch_id: str) -> BatchStatus | None:
        if not _BATCH_ID.match(batch_id):
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._batch_key(batch_id))
        pipe.hgetall(self._results_key(batch_id))
        h, res = await pipe.execute()
        if not h:
            return None
        d = {k.decode(): v.decode() for k, v in h.items()}
        results = {int(k): RowResult.from_json(json.loads(v)) for k, v in res.items()}
        out: list[RowResult] = []
        for line, username, hwid in json.loads(d.get("rows", "[]")):
            r = results.get(int(line))
            out.append(r if r is not None else _result(CsvRow(int(line), username, hwid),
                                                       BulkOutcome.PENDING))
        return BatchStatus(batch_id=batch_id, region=d.get("region", ""),
                           tenant=d.get("tenant", ""), state=d.get("state", ""),
                           submitted=float(d.get("submitted", 0)),
                           started=float(d.get("started", 0)),
                           finished=float(d.get("finished", 0)), rows=tuple(out))

    # -- scheduling ------------------------------------------------------------------------
    async def pump(self, region: str) -> list[str]:
        """Start the queued batches of ``region`` that fit under the concurrency cap."""
        started = await self._pump(
            keys=[self._queue_key(region), self._running_key(region)],
            args=[repr(self.clock()), str(self.config.lease_seconds),
                  str(self.config.max_concurrent)])
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in started]
        for batch_id in ids:
            await self.redis.hset(self._batch_key(batch_id), mapping={
                "state": "running", "started": repr(self.clock())})
            self._spawn(self.run_batch(batch_id, region))
        return ids

    async def resume(self) -> None:
        """At start-up: re-queue batches whose runner died and start what fits, every region."""
        for region in REGIONS:
            await self.pump(region)

    async def running(self, region: str) -> list[str]:
        raw = await self.redis.zrange(self._running_key(region), 0, -1)
        return [r.decode() for r in raw]

    async def queued(self, region: str) -> list[str]:
        raw = await self.redis.lrange(self._queue_key(region), 0, -1)
        return [r.decode() for r in raw]

    async def run_batch(self, batch_id: str, region: str) -> None:
        """Decide every undecided row of the batch, then free its slot and start the next."""
        try:
            await self._run(batch_id, region)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the slot must be freed; the lease would be slower
            log.exception("bulk sign-in batch %s failed", batch_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self._running_key(region), batch_id)
        pipe.hset(self._batch_key(batch_id), mapping={
            "state": "done", "finished": repr(self.clock())})
        keep = int(self.config.keep_seconds)
        pipe.expire(self._batch_key(batch_id), keep)
        pipe.expire(self._results_key(batch_id), keep)
        await pipe.execute()
        await self.pump(region)

    async def _run(self, batch_id: str, region: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._batch_key(batch_id))
        pipe.hkeys(self._results_key(batch_id))
        h, done_raw = await pipe.execute()
        if not h:
            return
        tenant = h.get(b"tenant", b"").decode()
        rows = [CsvRow(int(a), str(b), str(c)) for a, b, c in json.loads(h[b"rows"])]
        done = {int(x) for x in done_raw}
        tenants: dict[str, TenantInfo | None] = {}
        reason = f"bulk sign-in batch {batch_id}"
        for row in rows:
            if row.line in done:
                continue
            result = await self.check_row(row, tenant, tenants, reason)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self._results_key(batch_id), str(row.line), json.dumps(result.to_json()))
            pipe.zadd(self._running_key(region),
                      {batch_id: self.clock() + self.config.lease_seconds}, xx=True)
            await pipe.execute()

    # -- one row ---------------------------------------------------------------------------
    async def _tenant(self, tenant_id: str, cache: dict[str, TenantInfo | None]
                      ) -> TenantInfo | None:
        if tenant_id not in cache:
            try:
                cache[tenant_id] = await self.directory.get_tenant(tenant_id)
            except BackendError as e:
                if e.status != 404:
                    raise
                cache[tenant_id] = None
        return cache[tenant_id]

    async def _device(self, hw: HardwareId) -> Device | None:
        if hw.port is not None:
            dev = await self.devices.get_by_username(f"{hw.mac}-{hw.port:03d}")
            if dev is not None or hw.port != 1:
                return dev
        return await self.devices.get(hw.mac)

    async def check_row(self, row: CsvRow, tenant: str,
                        tenants: dict[str, TenantInfo | None], reason: str) -> RowResult:
        """Check one row and, when every check passes, sign the device in."""
        try:
            return await self._check_row(row, tenant, tenants, reason)
        except (BackendUnavailable, BackendError) as e:
            log.warning("bulk sign-in row %d: backend error: %s", row.line, e)
            return _result(row, BulkOutcome.SERVICE_UNAVAILABLE)

    async def _check_row(self, row: CsvRow, tenant: str,
                         tenants: dict[str, TenantInfo | None], reason: str) -> RowResult:
        hw = parse_hardware_id(row.hardware_id)
        if hw is None:
            return _result(row, BulkOutcome.BAD_HARDWARE_ID)
        dev = await self._device(hw)
        if dev is None or (tenant and dev.tenant != tenant):
            where = f" of tenant {tenant}" if tenant and dev is not None else ""
            return _result(row, BulkOutcome.DEVICE_NOT_FOUND, detail=where)
        info = await self._tenant(dev.tenant, tenants)
        if info is None or not info.bulk_sign_in:
            return _result(row, BulkOutcome.BULK_SIGN_IN_DISABLED, tenant=dev.tenant,
                           device_id=dev.device_id)
        user = await self.directory.user_by_upn(row.username) if row.username else None
        if user is None or user.tenant != dev.tenant:
            return _result(row, BulkOutcome.USER_NOT_FOUND, device_id=dev.device_id)
        refusal = _user_refusal(user)
        if refusal is not None:
            outcome, detail = refusal
            return _result(row, outcome, detail=detail, device_id=dev.device_id)
        who = await self.ledger.signed_in_as(dev.device_id)
        if dev.paired or who is not None:
            shown = who or dev.user
            return _result(row, BulkOutcome.DEVICE_SIGNED_IN,
                           detail=f" as {shown}" if shown else "", device_id=dev.device_id)
        now = self.clock()
        signed_out = await self.ledger.last_sign_out(dev.device_id)
        if signed_out is not None:
            deadline = signed_out + self.config.signed_out_window
            window = "168 h after its last sign-out"
        else:
            deadline = dev.created + self.config.new_device_window
            window = "72 h after onboarding"
        if now > deadline:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(deadline))
            return _result(row, BulkOutcome.DEADLINE_PASSED, detail=f"at {when} ({window})",
                           device_id=dev.device_id)
        if not await self.bindings.get(dev.aor, now):
            return _result(row, BulkOutcome.DEVICE_OFFLINE, device_id=dev.device_id)
        try:
            await self.ledger.begin(dev.device_id, reason)
        except PairingConflict:
            return _result(row, BulkOutcome.DEVICE_SIGNED_IN, detail="",
                           device_id=dev.device_id)
        try:
            await self.devices.set_paired(dev.device_id, user.oid)
            await self.ledger.complete(dev.device_id, user, reason)
        except PairingConflict:
            await self.devices.set_unpaired(dev.device_id)
            return _result(row, BulkOutcome.DEVICE_SIGNED_IN, detail="",
                           device_id=dev.device_id)
        except BaseException:
            await self.ledger.abort(dev.device_id, f"{reason}: failed")
            raise
        log.info("bulk sign-in: device %s signed in as %s (%s)", dev.device_id, user.upn, reason)
        return _result(CsvRow(row.line, user.upn, row.hardware_id), BulkOutcome.SIGNED_IN,
                       device_id=dev.device_id)


def _user_refusal(user: UserInfo) -> tuple[BulkOutcome, str] | None:
    """Why a common-area account may not be bulk signed in (None when it may)."""
    if not user.number:
        return BulkOutcome.USER_MISSING_PHONE_NUMBER, ""
    if not user.calling_policy.allow_sip_devices_calling:
        return BulkOutcome.USER_MISSING_SIP_POLICY, ""
    if user.account_type != "common_area" or "common_area" not in user.licenses:
        return BulkOutcome.USER_MISSING_CAP, ""
    if user.mfa:
        return BulkOutcome.USER_MFA_ENABLED, ""
    if not user.enabled:
        return BulkOutcome.USER_NOT_ELIGIBLE, "the account is disabled"
    if user.sip_device_refusal:
        return BulkOutcome.USER_NOT_ELIGIBLE, user.sip_device_refusal.replace("_", " ")
    return None
