"""Device accounts: identity, pairing state and digest credentials in Redis.

A device (RFC 3261 §10.2 address-of-record owner) is created by onboarding or
by an admin. Its SIP credentials exist in clear only once, as the return
value of ``generate_credentials``; Redis holds HA1 per algorithm (RFC 7616
§3.4.2, RFC 8760) under the ``auth`` key, which is the only thing the
REGISTER hot path reads. Key layout: ``gateway/state/SCHEMA.md``.
"""

from __future__ import annotations

import builtins
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.registrar.bindings import UNCOUNT_LUA
from gateway.sip.digest import compute_ha1
from gateway.state import keys
from gateway.state.pipe import LazyPipe, run_commands

MAC_RE = re.compile(r"^[0-9a-f]{12}$")
_USERNAME_RE = re.compile(r"^[A-Za-z0-9._\-+]{1,64}$")

UNPAIRED = "unpaired"
PAIRED = "paired"


class DeviceError(ValueError):
    """An admin or onboarding request for a device is invalid (message says why)."""


def normalise_mac(mac: str) -> str:
    """``00:04:F2-ab...`` -> ``0004f2ab...``; raises DeviceError for anything else."""
    m = re.sub(r"[:\-.\s]", "", mac).lower()
    if not MAC_RE.match(m) or m == "000000000000":
        raise DeviceError(f"not a MAC address: {mac[:40]!r}")
    return m


def user_aor(user: str, realm: str) -> str:
    """The AOR under which a paired user's devices are reachable."""
    if user.startswith(("sip:", "sips:", "tel:")):
        return user
    return f"sip:{user}" if "@" in user else f"sip:{user}@{realm}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What provisioning hands a phone once; only the HA1s are ever stored."""

    username: str
    password: str
    realm: str
    ha1_md5: str
    ha1_sha256: str


def generate_credentials(username: str, realm: str) -> Credentials:
    """A fresh random password (128 bits, URL-safe) and its HA1 per algorithm.

    Never starting with ``0x`` or ``-``: SIPp reads a ``0x`` password as hex, and
    command-line tools take a leading ``-`` for an option (1 password in ~60 would
    otherwise trip one of them); the entropy lost is a fraction of a bit.
    """
    password = secrets.token_urlsafe(16)
    while password.startswith(("0x", "0X", "-")):
        password = secrets.token_urlsafe(16)
    return Credentials(username=username, password=password, realm=realm,
                       ha1_md5=compute_ha1(username, realm, password, "MD5"),
                       ha1_sha256=compute_ha1(username, realm, password, "SHA-256"))


@dataclass(frozen=True, slots=True)
class FirmwareRecord:
    """The last firmware verdict for a device (set on every REGISTER)."""

    compliance: str = ""
    admitted: bool = True
    flagged: bool = False
    reason: str = ""
    upgrade_to: str = ""
    firmware: str = ""
    user_agent: str = ""
    checked: float = 0.0

    @property
    def compliant(self) -> bool:
        return self.admitted and not self.flagged


@dataclass(frozen=True, slots=True)
class Device:
    """A device account (MAC identity, tenant, pairing state)."""

    device_id: str
    vendor: str
    model: str
    tenant: str
    state: str
    sip_username: str
    realm: str
    created: float
    last_seen: float
    user: str = ""
    ha1_md5: str = ""
    ha1_sha256: str = ""
    firmware: FirmwareRecord = FirmwareRecord()

    @property
    def aor(self) -> str:
        return f"sip:{self.sip_username}@{self.realm}"

    @property
    def paired(self) -> bool:
        return self.state == PAIRED

    def public(self) -> dict[str, Any]:
        """Plain data for admins: everything but the HA1s."""
        return {
            "device_id": self.device_id, "vendor": self.vendor, "model": self.model,
            "tenant": self.tenant, "state": self.state, "user": self.user,
            "sip_username": self.sip_username, "realm": self.realm, "aor": self.aor,
            "created": self.created, "last_seen": self.last_seen,
            "firmware": {
                "compliance": self.firmware.compliance, "admitted": self.firmware.admitted,
                "flagged": self.firmware.flagged, "reason": self.firmware.reason,
                "upgrade_to": self.firmware.upgrade_to, "firmware": self.firmware.firmware,
                "user_agent": self.firmware.user_agent, "checked": self.firmware.checked,
            },
        }


def _s(h: Mapping[bytes, bytes], name: str) -> str:
    v = h.get(name.encode())
    return v.decode("utf-8", "replace") if v is not None else ""


def _f(h: Mapping[bytes, bytes], name: str) -> float:
    try:
        return float(_s(h, name) or 0)
    except ValueError:
        return 0.0


def device_from_hash(h: Mapping[bytes, bytes], auth: Mapping[bytes, bytes] | None = None,
                     ) -> Device:
    fw = FirmwareRecord(
        compliance=_s(h, "fw_compliance"), admitted=_s(h, "fw_admitted") != "0",
        flagged=_s(h, "fw_flagged") == "1", reason=_s(h, "fw_reason"),
        upgrade_to=_s(h, "fw_upgrade_to"), firmware=_s(h, "fw_firmware"),
        user_agent=_s(h, "fw_user_agent"), checked=_f(h, "fw_checked"))
    auth = auth or {}
    return Device(device_id=_s(h, "device_id"), vendor=_s(h, "vendor"), model=_s(h, "model"),
                  tenant=_s(h, "tenant"), state=_s(h, "state") or UNPAIRED,
                  sip_username=_s(h, "sip_username"), realm=_s(h, "realm"),
                  created=_f(h, "created"), last_seen=_f(h, "last_seen"), user=_s(h, "user"),
                  ha1_md5=_s(auth, "ha1_md5"), ha1_sha256=_s(auth, "ha1_sha256"), firmware=fw)


@dataclass(frozen=True, slots=True)
class AuthRecord:
    """What REGISTER needs to verify a digest: read in the first pipelined round trip."""

    device_id: str
    ha1: dict[str, str]
    last_ip: str


class DeviceStore:
    """Device accounts in Redis hashes (``sipgw:dev:*``, ``sipgw:auth:*``)."""

    def __init__(self, redis: aioredis.Redis, realm: str,
                 clock: Callable[[], float] = time.time) -> None:
        # redis-py's return types are bytes|str unions; results are bytes (no decoding)
        self.redis: Any = redis
        self.realm = realm
        self.clock = clock
        # An INVITE reads its caller's device: over the pipelined connection where the
        # store is plain Redis/Valkey, as the registrar's hot path does.
        self._pipe = LazyPipe()
        self._uncount = redis.register_script(UNCOUNT_LUA)

    async def close(self) -> None:
        await self._pipe.close()

    async def add(self, mac: str, vendor: str, model: str, tenant: str, *,
                  sip_username: str | None = None) -> tuple[Device, Credentials]:
        """Create a device; returns it and its credentials (the password exists only here)."""
        device_id = normalise_mac(mac)
        username = sip_username or device_id
        if not _USERNAME_RE.match(username):
            raise DeviceError(f"bad SIP username {username[:40]!r}")
        for label, v in (("vendor", vendor), ("model", model), ("tenant", tenant)):
            if not v or len(v) > 128 or any(ord(c) < 32 for c in v):
                raise DeviceError(f"bad {label} {v[:40]!r}")
        creds = generate_credentials(username, self.realm)
        now = self.clock()
        dev_key = keys.device(device_id)
        auth_key = keys.device_auth(username)
        # WATCH-free atomic create: the script refuses if the MAC or username is taken.
        ok = await self.redis.eval(
            _ADD_LUA, 3, dev_key, auth_key, keys.devices_seen(),
            device_id, vendor, model, tenant, username, self.realm, str(now),
            creds.ha1_md5, creds.ha1_sha256)
        if ok == b"dev":
            raise DeviceError(f"device {device_id} already exists")
        if ok == b"user":
            raise DeviceError(f"SIP username {username} already in use")
        dev = await self.get(device_id)
        assert dev is not None
        return dev, creds

    async def get(self, device_id: str) -> Device | None:
        h = await self.redis.hgetall(keys.device(device_id))
        if not h:
            return None
        auth = await self.redis.hgetall(
            keys.device_auth(_s(h, "sip_username")))
        return device_from_hash(h, auth)

    async def get_by_username(self, username: str) -> Device | None:
        """The device whose SIP username this is. Usernames are MAC-named device ids unless
        provisioning chose otherwise, so the device hash of that name is read with the
        credentials, in one round trip; another name costs a second one."""
        auth, h = (hash_pairs(r) for r in await run_commands(
            self._pipe.get(self.redis), self.redis,
            [("HGETALL", keys.device_auth(username)), ("HGETALL", keys.device(username))]))
        if not auth:
            return None
        device_id = _s(auth, "device_id")
        if device_id != username:
            h = await self.redis.hgetall(keys.device(device_id))
        if not h:
            return None
        if _s(h, "sip_username") != username:
            # the account names other credentials than these (an admin renamed it): read
            # them as ``get`` does
            auth = await self.redis.hgetall(keys.device_auth(_s(h, "sip_username")))
        return device_from_hash(h, auth)

    async def get_auth(self, username: str) -> AuthRecord | None:
        return parse_auth(await self.redis.hgetall(keys.device_auth(username)))

    def queue_get_auth(self, pipe: Any, username: str) -> None:
        """Add the auth lookup to a caller's pipeline (parse the result with ``parse_auth``)."""
        pipe.hgetall(keys.device_auth(username))

    async def list(self, *, tenant: str | None = None) -> builtins.list[Device]:
        ids = [i.decode() for i in await self.redis.zrange(keys.devices_seen(), 0, -1)]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(keys.device(i))
        out = [device_from_hash(h) for h in await pipe.execute() if h]
        return [d for d in out if tenant is None or d.tenant == tenant]

    async def remove(self, device_id: str) -> bool:
        """Delete the device, its credentials, its bindings and its user alias."""
        h = await self.redis.hgetall(keys.device(device_id))
        if not h:
            return False
        username = _s(h, "sip_username")
        aor = f"sip:{username}@{_s(h, 'realm')}"
        pipe = self.redis.pipeline(transaction=True)
        await self._uncount(args=[device_id], client=pipe)  # the register script's own
        pipe.delete(keys.device(device_id), keys.device_auth(username), keys.bindings(aor),
                    keys.binding_expiry(aor))
        pipe.zrem(keys.devices_seen(), device_id)
        pipe.zrem(keys.registrations_index(), aor)
        user = _s(h, "user")
        if user:
            pipe.srem(keys.user_devices(user_aor(user, _s(h, "realm") or self.realm)), device_id)
        await pipe.execute()
        return True

    async def set_paired(self, device_id: str, user: str) -> None:
        """Bind the device to a user: its bindings become reachable as the user's AOR."""
        h = await self.redis.hgetall(keys.device(device_id))
        if not h:
            raise DeviceError(f"no device {device_id}")
        old = _s(h, "user")
        pipe = self.redis.pipeline(transaction=True)
        if old and old != user:
            pipe.srem(keys.user_devices(user_aor(old, self.realm)), device_id)
        pipe.hset(keys.device(device_id), mapping={"state": PAIRED, "user": user})
        pipe.sadd(keys.user_devices(user_aor(user, self.realm)), device_id)
        await pipe.execute()

    async def set_unpaired(self, device_id: str) -> None:
        h = await self.redis.hgetall(keys.device(device_id))
        if not h:
            raise DeviceError(f"no device {device_id}")
        old = _s(h, "user")
        pipe = self.redis.pipeline(transaction=True)
        if old:
            pipe.srem(keys.user_devices(user_aor(old, self.realm)), device_id)
        pipe.hset(keys.device(device_id), mapping={"state": UNPAIRED, "user": ""})
        await pipe.execute()

    async def touch(self, device_id: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.device(device_id), "last_seen", str(now))
        pipe.zadd(keys.devices_seen(), {device_id: now}, xx=True)
        await pipe.execute()

    async def devices_of_user(self, user: str) -> builtins.list[str]:
        members = await self.redis.smembers(
            keys.user_devices(user_aor(user, self.realm)))
        return sorted(m.decode() for m in members)


def hash_pairs(raw: Any) -> dict[bytes, bytes]:
    """An HGETALL reply as a dict: RESP2's flat field, value, ... array (the pipelined
    connection) or redis-py's dict."""
    if isinstance(raw, dict):
        return raw
    it = iter(raw or ())
    return dict(zip(it, it, strict=False))


def parse_auth(h: Mapping[bytes, bytes] | None) -> AuthRecord | None:
    if not h:
        return None
    return AuthRecord(device_id=_s(h, "device_id"),
                      ha1={"MD5": _s(h, "ha1_md5"), "SHA-256": _s(h, "ha1_sha256")},
                      last_ip=_s(h, "last_ip"))


_ADD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'dev' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'user' end
redis.call('HSET', KEYS[1], 'device_id', ARGV[1], 'vendor', ARGV[2], 'model', ARGV[3],
  'tenant', ARGV[4], 'state', 'unpaired', 'user', '', 'sip_username', ARGV[5],
  'realm', ARGV[6], 'created', ARGV[7], 'last_seen', ARGV[7])
redis.call('HSET', KEYS[2], 'device_id', ARGV[1], 'ha1_md5', ARGV[8], 'ha1_sha256', ARGV[9])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
return 'ok'
"""

