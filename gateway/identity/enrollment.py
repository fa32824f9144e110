"""Enrollment of admin-provisioned (common-area) phones with a one-time code (FIELD-NOTES §1.6).

The Teams Admin Center flow: the admin adds a device by MAC ("waiting on
activation") and generates a one-time verification code; on the phone the user
dials ``*55*<code>``; the device moves to "waiting for sign-in" and the admin
completes the sign-in remotely (``POST /admin/v1/devices/{mac}/sign-in``).

The code is 6-8 random digits. Redis holds only HMAC-SHA256(secret, device id
and code) with the code's lifetime as TTL, so a Redis dump does not reveal
codes; nodes that verify codes share the secret file like the nonce key. A
code is checked for the dialling device only, compared in constant time,
consumed atomically (compare-and-delete) and attempts are throttled per
device (5 per 15 minutes by default; the sixth is refused even if right).

Keys (prefix ``sipgw:enroll:``): ``<device_id>`` hash (``state``,
``updated``, ``issued``, ``expires``), ``<device_id>:code`` string (the HMAC,
TTL = code lifetime), ``<device_id>:tries`` counter (TTL = throttle window).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("sipgw.enrollment")

PREFIX = "sipgw:enroll:"
_CODE_RE = re.compile(r"^[0-9]{6,8}$")

# KEYS: 1 code key. ARGV: 1 the HMAC read before. Deletes only that exact value (single use).
_TAKE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class EnrollmentState(enum.Enum):
    """Where an admin-provisioned device is in enrollment (Teams Admin Center wording)."""

    WAITING_ON_ACTIVATION = "waiting_on_activation"
    WAITING_FOR_SIGN_IN = "waiting_for_sign_in"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ").capitalize()


class EnrollOutcome(enum.Enum):
    ENROLLED = "enrolled"
    WRONG_CODE = "wrong_code"
    NO_CODE = "no_code"
    THROTTLED = "throttled"
    ALREADY_SIGNED_IN = "already_signed_in"


@dataclass(frozen=True, slots=True)
class EnrollResult:
    """What ``*55*<code>`` achieved, with the text the phone shows or speaks."""

    outcome: EnrollOutcome
    message: str
    retry_after: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome is EnrollOutcome.ENROLLED

    @property
    def sip_status(self) -> int:
        """The final response for the feature-code INVITE (200: answered with a prompt)."""
        return {EnrollOutcome.ENROLLED: 200, EnrollOutcome.THROTTLED: 403,
                EnrollOutcome.ALREADY_SIGNED_IN: 403}.get(self.outcome, 403)


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """A freshly generated code: shown once to the admin, never stored in clear."""

    device_id: str
    code: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class EnrollmentRecord:
    device_id: str
    state: EnrollmentState
    updated: float
    code_expires: float

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "label": self.state.label, "updated": self.updated,
                "code_expires": self.code_expires}


class EnrollingDevice(Protocol):
    """The dialling device, as the B2BUA knows it (``registrar.Device`` fits)."""

    @property
    def device_id(self) -> str: ...

    @property
    def paired(self) -> bool: ...


class Enrollment:
    """Issues and verifies one-time enrollment codes (see the module docstring)."""

    def __init__(self, redis: Any, secret: bytes, *, digits: int = 6,
                 code_ttl: float = 24 * 3600.0, max_attempts: int = 5,
                 attempt_window: int = 900, record_ttl: int = 30 * 24 * 3600,
                 clock: Callable[[], float] = time.time) -> None:
        if not 6 <= digits <= 8:
            raise ValueError("enrollment codes have 6 to 8 digits")
        if len(secret) < 16:
            raise ValueError("the enrollment secret must have at least 16 bytes")
        self.redis = redis
        self._secret = secret
        self.digits = digits
        self.code_ttl = code_ttl
        self.max_attempts = max_attempts
        self.window = attempt_window
        self.record_ttl = record_ttl
        self.clock = clock
        self._take = redis.register_script(_TAKE_LUA)

    @staticmethod
    def _key(device_id: str) -> str:
        return f"{PREFIX}{device_id}"

    def _mac(self, device_id: str, code: str) -> str:
        return hmac.new(self._secret, f"{device_id}\x00{code}".encode(),
                        hashlib.sha256).hexdigest()

    async def issue_code(self, device_id: str) -> IssuedCode:
        """A new one-time code for ``device_id`` (replacing any earlier one)."""
        code = "".join(secrets.choice("0123456789") for _ in range(self.digits))
        now = self.clock()
        expires = now + self.code_ttl
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._key(device_id) + ":code", self._mac(device_id, code),
                 px=int(self.code_ttl * 1000))
        pipe.delete(self._key(device_id) + ":tries")
        pipe.hset(self._key(device_id), mapping={
            "state": EnrollmentState.WAITING_ON_ACTIVATION.value, "updated": repr(now),
            "issued": repr(now), "expires": repr(expires)})
        pipe.expire(self._key(device_id), self.record_ttl)
        await pipe.execute()
        log.info("enrollment code issued for device %s (valid until %.0f)", device_id, expires)
        return IssuedCode(device_id, code, expires)

    async def handle_enroll(self, device: EnrollingDevice, code: str) -> EnrollResult:
        """``*55*<code>`` from ``device``: verify, consume, move to waiting for sign-in."""
        device_id = device.device_id
        key = self._key(device_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key + ":tries")
        pipe.expire(key + ":tries", self.window, nx=True)
        pipe.ttl(key + ":tries")
        pipe.get(key + ":code")
        tries, _, ttl, stored = await pipe.execute()
        if int(tries) > self.max_attempts:
            wait = max(int(ttl), 1)
            log.warning("enrollment of device %s throttled (%d attempts)", device_id, tries)
            return EnrollResult(EnrollOutcome.THROTTLED,
                                f"Too many wrong codes. Try again in {(wait + 59) // 60} "
                                "minutes.", retry_after=wait)
        if device.paired:
            return EnrollResult(EnrollOutcome.ALREADY_SIGNED_IN,
                                "This phone is already signed in.")
        if stored is None:
            return EnrollResult(EnrollOutcome.NO_CODE,
                                "No verification code is waiting for this phone. Ask your "
                                "admin to generate one.")
        expected = stored.decode() if isinstance(stored, bytes) else str(stored)
        candidate = code.strip() if _CODE_RE.match(code.strip()) else ""
        # compare even for malformed input, so timing does not tell the two apart
        given = self._mac(device_id, candidate or "-")
        if not hmac.compare_digest(given, expected) or not candidate:
            left = max(self.max_attempts - int(tries), 0)
            return EnrollResult(EnrollOutcome.WRONG_CODE,
                                f"Wrong verification code. {left} attempts left.")
        if not int(await self._take(keys=[key + ":code"], args=[expected])):
            return EnrollResult(EnrollOutcome.NO_CODE, "This verification code was already used.")
        now = self.clock()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"state": EnrollmentState.WAITING_FOR_SIGN_IN.value,
                                "updated": repr(now), "expires": "0"})
        pipe.expire(key, self.record_ttl)
        pipe.delete(key + ":tries")
        await pipe.execute()
        log.info("device %s enrolled: waiting for sign-in", device_id)
        return EnrollResult(EnrollOutcome.ENROLLED,
                            "Code accepted. This phone is waiting for sign-in: your admin "
                            "completes it.")

    async def get(self, device_id: str) -> EnrollmentRecord | None:
        return (await self.get_many([device_id])).get(device_id)

    async def get_many(self, device_ids: Sequence[str]) -> dict[str, EnrollmentRecord]:
        if not device_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for d in device_ids:
            pipe.hgetall(self._key(d))
        out: dict[str, EnrollmentRecord] = {}
        for d, h in zip(device_ids, await pipe.execute(), strict=True):
            if not h:
                continue
            try:
                state = EnrollmentState(h.get(b"state", b"").decode())
            except ValueError:
                continue
            out[d] = EnrollmentRecord(d, state, float(h.get(b"updated", b"0") or 0),
                                      float(h.get(b"expires", b"0") or 0))
        return out

    async def clear(self, device_id: str) -> None:
        """Forget the device's enrollment (signed in, or removed)."""
        key = self._key(device_id)
        await self.redis.delete(key, key + ":code", key + ":tries")
