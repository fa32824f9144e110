"""Enrollment codes on the real Valkey: format, HMAC at rest, single use, per-device, throttle."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from gateway.identity.enrollment import Enrollment, EnrollmentState, EnrollOutcome
from gateway.state.redis import connect

SECRET = b"s" * 32


@dataclass(frozen=True)
class Dev:
    device_id: str
    paired: bool = False


class Clock:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def with_redis(scenario):  # type: ignore[no-untyped-def]
    @pytest_twisted.ensureDeferred
    async def test(redis_url: str) -> None:
        async def go() -> None:
            redis = connect(redis_url)
            try:
                await scenario(redis)
            finally:
                await redis.aclose()
        await Deferred.fromFuture(asyncio.ensure_future(go()))
    test.__name__ = scenario.__name__
    return test


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        Enrollment(None, SECRET, digits=5)
    with pytest.raises(ValueError):
        Enrollment(None, b"short", digits=6)


async def _issue_and_use(redis: Any) -> None:
    clock = Clock()
    e = Enrollment(redis, SECRET, digits=8, max_attempts=10, clock=clock)
    issued = await e.issue_code("0004f2000001")
    assert len(issued.code) == 8 and issued.code.isdigit()
    assert issued.expires_at == clock.now + e.code_ttl
    stored = await redis.get("sipgw:enroll:0004f2000001:code")
    assert stored is not None and issued.code.encode() not in stored
    assert 0 < await redis.pttl("sipgw:enroll:0004f2000001:code") <= e.code_ttl * 1000
    rec = await e.get("0004f2000001")
    assert rec is not None and rec.state is EnrollmentState.WAITING_ON_ACTIVATION
    # another device cannot use it, a paired device is told so
    assert (await e.handle_enroll(Dev("0004f2000002"), issued.code)).outcome is \
        EnrollOutcome.NO_CODE
    assert (await e.handle_enroll(Dev("0004f2000001", paired=True), issued.code)).outcome is \
        EnrollOutcome.ALREADY_SIGNED_IN
    for junk in ("", "12", "abcdefgh", "1" * 40, issued.code + "0"):
        assert (await e.handle_enroll(Dev("0004f2000001"), junk)).outcome is \
            EnrollOutcome.WRONG_CODE
    ok = await e.handle_enroll(Dev("0004f2000001"), f" {issued.code} ")
    assert ok.ok and ok.sip_status == 200
    rec = await e.get("0004f2000001")
    assert rec is not None and rec.state is EnrollmentState.WAITING_FOR_SIGN_IN
    assert rec.state.label == "Waiting for sign in"
    again = await e.handle_enroll(Dev("0004f2000001"), issued.code)
    assert again.outcome is EnrollOutcome.NO_CODE and again.sip_status == 403
    # a new code replaces the old one and resets the attempt counter
    first = await e.issue_code("0004f2000003")
    second = await e.issue_code("0004f2000003")
    if first.code != second.code:
        assert not (await e.handle_enroll(Dev("0004f2000003"), first.code)).ok
    assert (await e.handle_enroll(Dev("0004f2000003"), second.code)).ok
    await e.clear("0004f2000003")
    assert await e.get("0004f2000003") is None


test_code_is_single_use_per_device = with_redis(_issue_and_use)


async def _throttle(redis: Any) -> None:
    e = Enrollment(redis, SECRET, max_attempts=5, attempt_window=900)
    issued = await e.issue_code("0004f2000009")
    wrong = "000000" if issued.code != "000000" else "111111"
    results = [await e.handle_enroll(Dev("0004f2000009"), wrong) for _ in range(5)]
    assert [r.outcome for r in results] == [EnrollOutcome.WRONG_CODE] * 5
    assert "0 attempts left" in results[-1].message
    sixth = await e.handle_enroll(Dev("0004f2000009"), issued.code)
    assert sixth.outcome is EnrollOutcome.THROTTLED and 0 < sixth.retry_after <= 900
    assert "minutes" in sixth.message
    # the window ends: the code (still valid) works again
    await redis.delete("sipgw:enroll:0004f2000009:tries")
    assert (await e.handle_enroll(Dev("0004f2000009"), issued.code)).ok


test_sixth_attempt_is_throttled = with_redis(_throttle)


async def _concurrent_single_use(redis: Any) -> None:
    e = Enrollment(redis, SECRET, max_attempts=50)
    issued = await e.issue_code("0004f2000010")
    results = await asyncio.gather(*[e.handle_enroll(Dev("0004f2000010"), issued.code)
                                     for _ in range(10)])
    assert sum(r.ok for r in results) == 1


test_concurrent_uses_only_one_wins = with_redis(_concurrent_single_use)


