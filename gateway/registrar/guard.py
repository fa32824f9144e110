"""Abuse protection for REGISTER: rate limits, failed-auth counting, temporary blocks.

All state is in Redis, so a block set by one node holds on every node.

* Rate limits are fixed windows per source IP and per account (SIP username).
  The per-source limit is generous because an IP-DECT server registers one
  account per handset from one address; the per-account limit catches a
  single looping phone. Over the limit: 503 with Retry-After (RFC 3261
  §21.5.4), which well-behaved phones honour.
* Failed digest checks are counted per source IP and per username (known or
  not, so counting reveals nothing). Reaching the threshold within the window
  blocks that source or account for ``block_seconds``. Blocked requests get
  403 (not silence: an admin debugging a phone sees why, and a 403 tells an
  attacker nothing the 401/403 did not).
* An account block is not applied to requests from the address the device
  last registered from, so a stranger guessing passwords for a known
  username cannot lock the real phone out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.state import keys


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Limits; defaults suit a site with a few thousand phones behind a handful of NATs."""

    rate_window: int = 10  # seconds
    source_rate: int = 5000  # requests per window per source IP (IP-DECT servers, big NATs)
    account_rate: int = 30  # requests per window per username
    failure_window: int = 300
    source_failures: int = 10  # failures per window before a source is blocked
    account_failures: int = 10
    block_seconds: int = 900


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of the pre-authentication checks for one request."""

    source_blocked: bool = False
    account_blocked: bool = False
    source_limited: bool = False
    account_limited: bool = False
    retry_after: int = 0


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    source_blocked_now: bool = False
    account_blocked_now: bool = False


class AbuseGuard:
    """Redis-backed counters and blocks (``sipgw:rl:*``, ``sipgw:fail:*``, ``sipgw:block:*``)."""

    def __init__(self, redis: aioredis.Redis, config: GuardConfig | None = None) -> None:
        # redis-py's return types are bytes|str unions; results are bytes (no decoding)
        self.redis: Any = redis
        self.config = config or GuardConfig()
        self._fail = redis.register_script(_FAIL_LUA)

    def queue_check(self, pipe: Any, source_ip: str, username: str | None, now: float) -> int:
        """Queue the checks on ``pipe``; returns how many results they produce."""
        c = self.config
        window = int(now // c.rate_window)
        ttl = c.rate_window * 2
        pipe.incr(keys.rate("src", source_ip, window))
        pipe.expire(keys.rate("src", source_ip, window), ttl, nx=True)
        pipe.exists(keys.block("src", source_ip))
        if username is None:
            return 3
        pipe.incr(keys.rate("acct", username, window))
        pipe.expire(keys.rate("acct", username, window), ttl, nx=True)
        pipe.exists(keys.block("acct", username))
        return 6

    def parse_check(self, results: list[Any], now: float) -> Admission:
        c = self.config
        retry = max(1, int(c.rate_window - now % c.rate_window + 0.999))
        src_limited = int(results[0]) > c.source_rate
        src_blocked = bool(results[2])
        acct_limited = acct_blocked = False
        if len(results) > 3:
            acct_limited = int(results[3]) > c.account_rate
            acct_blocked = bool(results[5])
        return Admission(source_blocked=src_blocked, account_blocked=acct_blocked,
                         source_limited=src_limited, account_limited=acct_limited,
                         retry_after=retry)

    async def check(self, source_ip: str, username: str | None, now: float) -> Admission:
        pipe = self.redis.pipeline(transaction=False)
        self.queue_check(pipe, source_ip, username, now)
        return self.parse_check(await pipe.execute(), now)

    async def record_failure(self, source_ip: str, username: str | None) -> FailureOutcome:
        """Count one failed authentication; set blocks when a threshold is reached."""
        c = self.config
        user = username or ""
        res = await self._fail(
            keys=[keys.failures("src", source_ip), keys.block("src", source_ip),
                  keys.failures("acct", user), keys.block("acct", user)],
            args=[str(c.failure_window), str(c.source_failures), str(c.account_failures),
                  str(c.block_seconds), "1" if username else "0", source_ip])
        return FailureOutcome(source_blocked_now=bool(int(res[0])),
                              account_blocked_now=bool(int(res[1])))

    async def unblock(self, source_ip: str | None = None, username: str | None = None) -> None:
        """Admin action: lift a block and reset its failure counter."""
        names = []
        if source_ip:
            names += [keys.block("src", source_ip), keys.failures("src", source_ip)]
        if username:
            names += [keys.block("acct", username), keys.failures("acct", username)]
        if names:
            await self.redis.delete(*names)

    async def blocked_sources(self) -> int:
        n = 0
        async for _ in self.redis.scan_iter(match=keys.block_pattern("src"), count=500):
            n += 1
        return n


# KEYS: 1 src failures, 2 src block, 3 acct failures, 4 acct block
# ARGV: 1 window, 2 src threshold, 3 acct threshold, 4 block seconds, 5 has account, 6 ip
_FAIL_LUA = """
local out = {0, 0}
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[6], 'EX', ARGV[4])
  out[1] = 1
end
if ARGV[5] == '1' then
  local m = redis.call('INCR', KEYS[3])
  if m == 1 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end
  if m >= tonumber(ARGV[3]) and redis.call('EXISTS', KEYS[4]) == 0 then
    redis.call('SET', KEYS[4], '1', 'EX', ARGV[4])
    out[2] = 1
  end
end
return out
"""
