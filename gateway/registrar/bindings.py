"""Registration bindings in Redis (RFC 3261 §10.3, RFC 5626 §6, RFC 3327 §5.3).

Per address-of-record two keys: a hash ``binding key -> JSON`` and a sorted
set ``binding key -> absolute expiry``. Expired bindings vanish without any
request: reads filter by expiry and purge lazily, ``sweep`` removes them in
bulk, and both keys carry a TTL equal to the latest expiry so an idle AOR
disappears even if no sweep runs. One REGISTER's whole update (nonce-count
check, §10.3 step 7 Call-ID/CSeq checks, binding cap, writes, device touch)
is a single Lua script: one round trip, atomic across nodes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from gateway.registrar.guard import GuardConfig
from gateway.sip.peer import FlowId, Peer
from gateway.state import keys
from gateway.state.pipe import LazyPipe, RespPipe

# Extra lifetime of the per-AOR keys beyond the last binding's expiry (s).
KEY_SLACK = 60


# Values built for every REGISTER are plain (not frozen) slotted dataclasses, hashable
# as frozen ones are: a frozen dataclass's __init__ sets each field through
# object.__setattr__, about 0.35 us a field here, 9 us for a Binding. Nothing
# mutates them after construction.
@dataclass(slots=True, unsafe_hash=True)
class Binding:
    """One contact bound to an AOR, with where it really came from (RFC 3261 §10.3, RFC 5626)."""

    key: str  # "ob:<instance>:<reg-id>" for outbound flows, else "uri:<contact URI>"
    aor: str
    contact: str  # the Contact header value as registered (without expires)
    uri: str
    expires: float  # absolute (wall clock)
    q: float | None = None
    call_id: str = ""
    cseq: int = 0
    instance: str | None = None
    reg_id: int | None = None
    outbound: bool = False
    path: tuple[str, ...] = ()
    transport: str = "UDP"
    host: str = ""
    port: int = 0
    flow: str | None = None  # the transport's flow id (stream connection) at the owning node
    node_id: str = ""  # gateway node that owns the flow (sends keep-alives, reaches the phone)
    user_agent: str = ""
    device_id: str = ""
    registered: float = 0.0

    @property
    def source(self) -> Peer:
        """Where requests to the phone must go: the NAT-mapped source, not the Contact."""
        return Peer(self.transport, self.host, self.port,
                    FlowId(self.flow) if self.flow else None)

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires - now + 0.5))

    def to_json(self) -> str:
        # What json.JSONEncoder(separators=(",", ":")) writes for the field dict, built as
        # one f-string around the C string escaper: a quarter of the encoder's time, and
        # this runs for every REGISTER. tests/unit/registrar/test_binding_json.py checks it
        # is complete and equal to the encoder's output.
        e = _esc
        return (
            f'{{"key":{e(self.key)},"aor":{e(self.aor)},"contact":{e(self.contact)},'
            f'"uri":{e(self.uri)},"expires":{_num(self.expires)},"q":{_num(self.q)},'
            f'"call_id":{e(self.call_id)},"cseq":{self.cseq},'
            f'"instance":{"null" if self.instance is None else e(self.instance)},'
            f'"reg_id":{"null" if self.reg_id is None else int(self.reg_id)},'
            f'"outbound":{"true" if self.outbound else "false"},'
            f'"path":{_dumps(list(self.path)) if self.path else "[]"},'
            f'"transport":{e(self.transport)},"host":{e(self.host)},"port":{int(self.port)},'
            f'"flow":{"null" if self.flow is None else e(self.flow)},'
            f'"node_id":{e(self.node_id)},"user_agent":{e(self.user_agent)},'
            f'"device_id":{e(self.device_id)},"registered":{_num(self.registered)}}}')

    @classmethod
    def from_json(cls, raw: bytes | str) -> Binding | None:
        try:
            d = json.loads(raw)
            d["path"] = tuple(d.get("path") or ())
            return cls(**d)
        except (ValueError, TypeError, KeyError):
            return None


_dumps = json.JSONEncoder(separators=(",", ":")).encode
_esc = encode_basestring_ascii


def _guard_keys(source_ip: str, username: str, window: int) -> tuple[str, ...]:
    return (keys.rate("src", source_ip, window), keys.rate("acct", username, window),
            keys.block("src", source_ip), keys.block("acct", username),
            keys.failures("src", source_ip), keys.failures("acct", username))


# the limits are the configuration's: built once, not for every REGISTER
@functools.lru_cache(maxsize=16)
def _guard_args(guard: GuardConfig) -> tuple[str, ...]:
    return (str(guard.rate_window * 2), str(guard.source_rate), str(guard.account_rate),
            str(guard.failure_window), str(guard.source_failures),
            str(guard.account_failures), str(guard.block_seconds))


def _num(v: float | int | None) -> str:
    """A JSON number as the encoder writes it (finite floats: repr)."""
    if v is None:
        return "null"
    if isinstance(v, float) and not math.isfinite(v):
        return _dumps(v)  # NaN / Infinity, as json does
    return repr(v)


@dataclass(slots=True, unsafe_hash=True)
class BindingOp:
    """Add/refresh (``binding``) or remove (``binding is None``) one binding key."""

    key: str
    binding: Binding | None = None


@dataclass(slots=True, unsafe_hash=True)
class RegisterUpdate:
    """Everything the register script needs to do for one authenticated REGISTER."""

    aor: str
    device_id: str
    username: str
    call_id: str
    cseq: int
    ops: Sequence[BindingOp] = ()
    wildcard: bool = False
    nonce: str = ""
    nc: int = 0  # 0: no nonce-count tracking
    nonce_ttl: float = 300.0
    source_ip: str = ""
    device_fields: dict[str, str] = field(default_factory=dict)
    apply: bool = True  # False: only record device fields (e.g. a firmware rejection)
    ha1_field: str = ""  # the auth hash field the digest was checked against ...
    ha1: str = ""  # ... and its value then: the script refuses ("cred") if it changed


@dataclass(slots=True, unsafe_hash=True)
class RegisterResult:
    # ok | replay | cseq | toomany | gone | cred, and from the admission checks:
    # blocked_src (detail: block ms left) | blocked_acct | limited; failure mode: failed
    # (detail "<source blocked now 0/1>,<account blocked now 0/1>")
    outcome: str
    bindings: list[Binding]
    detail: str = ""


class BindingStore:
    """Bindings per AOR in Redis; the only writer of ``sipgw:reg:*`` keys."""

    def __init__(self, redis: aioredis.Redis, *, timeout: float = 2.0) -> None:
        # redis-py's return types are bytes|str unions; results are bytes (no decoding)
        self.redis: Any = redis
        self._register_sha = hashlib.sha1(_REGISTER_LUA.encode()).hexdigest()
        self._purge = redis.register_script(_PURGE_LUA)
        self._pipe = LazyPipe(timeout)

    @property
    def timeout(self) -> float:
        """A hot-path command slower than this (seconds) raises TimeoutError."""
        return self._pipe.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._pipe.timeout = value

    @property
    def pipe(self) -> RespPipe | None:
        """The pipelined hot-path connection to the same server as ``self.redis``."""
        return self._pipe.get(self.redis)

    async def close(self) -> None:
        await self._pipe.close()

    async def command(self, *args: Any) -> Any:
        """One hot-path command, pipelined when the store allows it; TimeoutError after
        ``timeout`` (the pipe's own deadline, else a timer around redis-py)."""
        pipe = self.pipe
        if pipe is not None:
            return await pipe.execute(*args)
        return await asyncio.wait_for(self.redis.execute_command(*args), self.timeout)

    def command_now(self, *args: Any) -> asyncio.Future[Any] | None:
        """Issue a hot-path command without awaiting it, when the pipe is up; else None."""
        pipe = self.pipe
        return pipe.send_now(*args) if pipe is not None else None

    async def _evalsha(self, keys_: list[str], args: list[str]) -> Any:
        try:
            pipe = self.pipe
            if pipe is not None:
                return await pipe.execute("EVALSHA", self._register_sha, len(keys_), *keys_,
                                          *args)
            return await self.command("EVALSHA", self._register_sha, len(keys_), *keys_, *args)
        except NoScriptError:
            await self.command("SCRIPT", "LOAD", _REGISTER_LUA)
            return await self.command("EVALSHA", self._register_sha, len(keys_), *keys_, *args)

    @staticmethod
    def _guard_part(guard: GuardConfig, source_ip: str, username: str, now: float,
                    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return _guard_keys(source_ip, username, int(now // guard.rate_window)), \
            _guard_args(guard)

    async def apply(self, u: RegisterUpdate, now: float, max_bindings: int, *,
                    guard: GuardConfig | None = None) -> RegisterResult:
        """One authenticated REGISTER in one round trip: admission, nc, HA1, bindings."""
        ks, args = self._apply_args(u, now, max_bindings, guard or GuardConfig())
        return self.apply_result(await self._evalsha(ks, args), u, now)

    def apply_now(self, u: RegisterUpdate, now: float, max_bindings: int, *,
                  guard: GuardConfig) -> asyncio.Future[Any] | None:
        """``apply`` without a coroutine: the script's raw reply (for ``apply_result``) as
        a future, or None when the pipe is not up (then use ``apply``). The future fails
        with NoScriptError when the server has not loaded the script yet."""
        pipe = self.pipe
        if pipe is None:
            return None
        ks, args = self._apply_args(u, now, max_bindings, guard)
        return pipe.send_now("EVALSHA", self._register_sha, len(ks), *ks, *args)

    def _apply_args(self, u: RegisterUpdate, now: float, max_bindings: int,
                    g: GuardConfig) -> tuple[list[str], list[str]]:
        # device fields, then one (key, expiry, JSON or "") triple per op, as plain ARGV:
        # no JSON layer for the script to decode
        extra: list[str] = []
        for k, v in u.device_fields.items():
            extra += (k, v)
        for op in u.ops:
            b = op.binding
            extra += (op.key, repr(b.expires), b.to_json()) if b is not None else \
                (op.key, "0", "")
        gk, ga = self._guard_part(g, u.source_ip, u.username, now)
        return ([keys.nonce_count(u.nonce), keys.bindings(u.aor), keys.binding_expiry(u.aor),
                 keys.registrations_index(), keys.device(u.device_id), keys.devices_seen(),
                 keys.device_auth(u.username), *gk],
                [repr(now), str(u.nc), str(int(u.nonce_ttl * 1000)), _esc(u.call_id),
                 str(u.cseq),
                 str(max_bindings), str(len(u.ops)), "1" if u.wildcard else "0",
                 u.aor, u.device_id, u.source_ip, str(KEY_SLACK), "1" if u.apply else "0",
                 str(2 * len(u.device_fields)), "reg", *ga, u.ha1_field, u.ha1, "1", *extra])

    @staticmethod
    def apply_result(res: Any, u: RegisterUpdate, now: float) -> RegisterResult:
        outcome = res[0].decode()
        detail = res[1].decode() if len(res) > 1 and isinstance(res[1], bytes) else ""
        if outcome != "ok":
            return RegisterResult(outcome, [], detail)
        # the script returns the AOR's other bindings; ours are what it just wrote
        mine = [op.binding for op in u.ops if op.binding is not None] \
            if u.apply and not u.wildcard else []
        return RegisterResult("ok", _decode_live(res[2:], now, mine), detail)

    async def record_failure(self, source_ip: str, username: str | None, now: float, *,
                             guard: GuardConfig | None = None) -> RegisterResult:
        """Count a failed digest check (after the same admission checks) in one round trip."""
        g = guard or GuardConfig()
        user = username or ""
        gk, ga = self._guard_part(g, source_ip, user, now)
        res = await self._evalsha(
            ["", "", "", "", "", "", keys.device_auth(user), *gk],
            [repr(now), "0", "0", "", "0", "0", "0", "0", "", "", source_ip, str(KEY_SLACK),
             "0", "0", "fail", *ga, "", "", "1" if username else "0"])
        return RegisterResult(res[0].decode(), [],
                              res[1].decode() if isinstance(res[1], bytes) else "")

    async def get(self, aor: str, now: float) -> list[Binding]:
        raw = await self.redis.hvals(keys.bindings(aor))
        live = _decode_live(raw, now)
        if len(live) != len(raw):
            await self.purge(aor, now)
        return live

    async def get_many(self, aors: Sequence[str], now: float) -> dict[str, list[Binding]]:
        if not aors:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for aor in aors:
            pipe.hvals(keys.bindings(aor))
        return {aor: _decode_live(raw, now) for aor, raw in zip(aors, await pipe.execute(),
                                                               strict=True)}

    async def purge(self, aor: str, now: float) -> int:
        n = await self._purge(keys=[keys.bindings(aor), keys.binding_expiry(aor),
                                    keys.registrations_index()],
                              args=[repr(now), aor, str(KEY_SLACK)])
        return int(n)

    async def remove_binding(self, aor: str, key: str, now: float, *,
                             expected: Binding | None = None) -> bool:
        """Remove one binding; with ``expected``, only if it is still that registration
        (same Call-ID, CSeq and node), so a REGISTER that just replaced it survives."""
        res = await self.redis.eval(
            _REMOVE_LUA, 3, keys.bindings(aor), keys.binding_expiry(aor),
            keys.registrations_index(), key, expected.call_id if expected else "",
            str(expected.cseq) if expected else "", expected.node_id if expected else "",
            "1" if expected else "0", aor, str(KEY_SLACK), repr(now))
        return bool(int(res))

    async def remove_aor(self, aor: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.bindings(aor), keys.binding_expiry(aor))
        pipe.zrem(keys.registrations_index(), aor)
        await pipe.execute()

    async def sweep(self, now: float, batch: int = 500, max_batches: int = 200) -> int:
        """Remove the expired bindings of the AORs that have some (the index is scored by
        each AOR's earliest expiry): work in proportion to what expired, not to the fleet.
        At most ``batch * max_batches`` AORs per call; the next sweep takes the rest."""
        removed = 0
        for _ in range(max_batches):
            aors = await self.redis.zrangebyscore(keys.registrations_index(), "-inf",
                                                  repr(now), start=0, num=batch)
            if not aors:
                break
            pipe = self.redis.pipeline(transaction=False)
            for a in aors:
                aor = a.decode()
                await self._purge(keys=[keys.bindings(aor), keys.binding_expiry(aor),
                                  keys.registrations_index()],
                            args=[repr(now), aor, str(KEY_SLACK)], client=pipe)
            removed += sum(int(n) for n in await pipe.execute())
            if len(aors) < batch:
                break
        return removed

    async def active_aors(self, now: float) -> list[str]:
        """Every AOR with bindings (some may have just expired: readers filter by expiry,
        and the sweep drops what is left of them)."""
        raw = await self.redis.zrange(keys.registrations_index(), 0, -1)
        return [a.decode() for a in raw]


def _decode_live(raw: Sequence[Any], now: float, known: Sequence[Binding] = ()) -> list[Binding]:
    out = [b for b in known if b.expires > now]
    for item in raw:
        b = Binding.from_json(item)
        if b is not None and b.expires > now:
            out.append(b)
    if len(out) > 1:
        out.sort(key=lambda b: (-(b.q if b.q is not None else 1.0), b.key))
    return out


# KEYS: 1 nc, 2 bindings hash, 3 expiry zset, 4 reg index, 5 device hash, 6 devices seen,
#       7 device auth hash, 8 rate src, 9 rate acct, 10 block src, 11 block acct,
#       12 failures src, 13 failures acct
# ARGV: 1 now, 2 nc, 3 nc ttl ms, 4 call-id (JSON-escaped, quoted), 5 cseq,
#       6 max bindings, 7 number of ops,
#       8 wildcard, 9 aor, 10 device id, 11 source ip, 12 key slack, 13 apply,
#       14 number of device field items (2 per field), 15 mode (reg|fail), 16 rate key ttl,
#       17 source rate, 18 account rate, 19 failure window, 20 source failure threshold,
#       21 account failure threshold, 22 block seconds, 23 ha1 field, 24 ha1,
#       25 has account (1/0), then the device fields (name, value, ...), then per op:
#       binding key, absolute expiry, binding JSON ("" removes)
_COMMON_LUA = """
local function purge(hkey, zkey, now)
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
  for _, k in ipairs(gone) do
    redis.call('HDEL', hkey, k)
    redis.call('ZREM', zkey, k)
  end
  return #gone
end
-- the AOR's keys' TTL and index entry after a change; its latest expiry (nil: none left)
local function retime(hkey, zkey, ikey, aor, slack, now)
  -- (an AOR has a handful of bindings at most: all of them in one call)
  local all = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
  if #all == 0 then
    redis.call('DEL', hkey, zkey)
    redis.call('ZREM', ikey, aor)
    return nil
  else
    -- relative TTL: the caller's clock, not the server's, defines "now"
    local last = all[#all]
    local ttl = math.max(1, math.ceil((tonumber(last) - now + slack) * 1000))
    redis.call('PEXPIRE', hkey, ttl)
    redis.call('PEXPIRE', zkey, ttl)
    -- the index holds when each AOR next has a binding to purge, so a sweep reads only
    -- the AORs that are due instead of the whole fleet
    redis.call('ZADD', ikey, all[2], aor)
    return last
  end
end
-- the device's entry in the active-registrations count of its vendor/model/verdict
local function count_active(device, vendor, model, old, new, latest)
  local base = (vendor or '') .. '\t' .. (model or '') .. '\t'
  local verdict = new or old or ''
  if old and old ~= verdict then redis.call('ZREM', '@ACTIVE@' .. base .. old, device) end
  if latest then
    if redis.call('ZADD', '@ACTIVE@' .. base .. verdict, latest, device) == 1 then
      redis.call('SADD', '@LABELS@', base .. verdict)  -- newly counted under this label
    end
  else
    redis.call('ZREM', '@ACTIVE@' .. base .. verdict, device)
  end
end
local function uncount_active(device)
  for _, label in ipairs(redis.call('SMEMBERS', '@LABELS@')) do
    redis.call('ZREM', '@ACTIVE@' .. label, device)
  end
end
""".replace("@ACTIVE@", keys.ACTIVE_PREFIX).replace("@LABELS@", keys.active_labels())

# KEYS: 1 bindings hash, 2 expiry zset, 3 reg index; ARGV: 1 now, 2 aor, 3 key slack
_PURGE_LUA = _COMMON_LUA + """
local n = purge(KEYS[1], KEYS[2], tonumber(ARGV[1]))
retime(KEYS[1], KEYS[2], KEYS[3], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[1]))
return n
"""

# KEYS: 1 bindings hash, 2 expiry zset, 3 reg index
# ARGV: 1 binding key, 2 call-id, 3 cseq, 4 node id, 5 check (1/0), 6 aor, 7 slack, 8 now
_REMOVE_LUA = _COMMON_LUA + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
if ARGV[5] == '1' then
  local ok, b = pcall(cjson.decode, raw)
  if ok and (b['call_id'] ~= ARGV[2] or tostring(b['cseq']) ~= ARGV[3]
             or b['node_id'] ~= ARGV[4]) then
    return 0
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not retime(KEYS[1], KEYS[2], KEYS[3], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])) then
  local ok, b = pcall(cjson.decode, raw)
  if ok and type(b['device_id']) == 'string' then uncount_active(b['device_id']) end
end
return 1
"""

# ARGV: 1 device id (a deleted device is no longer counted as registered)
UNCOUNT_LUA = _COMMON_LUA + """
uncount_active(ARGV[1])
return 1
"""

_REGISTER_LUA = _COMMON_LUA + """
local now = tonumber(ARGV[1])
-- admission (abuse guard, shared by every node): counters, blocks, rate limits
local has_acct = ARGV[25] == '1'
local ns = redis.call('INCR', KEYS[8])
if ns == 1 then redis.call('EXPIRE', KEYS[8], ARGV[16]) end
local na = 0
if has_acct then
  na = redis.call('INCR', KEYS[9])
  if na == 1 then redis.call('EXPIRE', KEYS[9], ARGV[16]) end
end
local left = redis.call('PTTL', KEYS[10])
if left > 0 then return {'blocked_src', tostring(left)} end
if ns > tonumber(ARGV[17]) or na > tonumber(ARGV[18]) then return {'limited', ''} end
if has_acct and redis.call('EXISTS', KEYS[11]) == 1 then
  -- an account block spares the address the device last registered from
  if redis.call('HGET', KEYS[7], 'last_ip') ~= ARGV[11] then return {'blocked_acct', ''} end
end
if ARGV[15] == 'fail' then
  local out = {'failed', ''}
  local s, a = '0', '0'
  local n = redis.call('INCR', KEYS[12])
  if n == 1 then redis.call('EXPIRE', KEYS[12], ARGV[19]) end
  if n >= tonumber(ARGV[20]) and redis.call('EXISTS', KEYS[10]) == 0 then
    redis.call('SET', KEYS[10], ARGV[11], 'EX', ARGV[22])
    s = '1'
  end
  if has_acct then
    local m = redis.call('INCR', KEYS[13])
    if m == 1 then redis.call('EXPIRE', KEYS[13], ARGV[19]) end
    if m >= tonumber(ARGV[21]) and redis.call('EXISTS', KEYS[11]) == 0 then
      redis.call('SET', KEYS[11], '1', 'EX', ARGV[22])
      a = '1'
    end
  end
  out[2] = s .. ',' .. a
  return out
end
if ARGV[23] ~= '' and redis.call('HGET', KEYS[7], ARGV[23]) ~= ARGV[24] then
  return {'cred', ''}
end
local nc = tonumber(ARGV[2])
if nc == 1 then
  -- the first use of a nonce (the answer to a challenge): one call
  if not redis.call('SET', KEYS[1], 1, 'PX', ARGV[3], 'NX') then
    return {'replay', redis.call('GET', KEYS[1]) or ''}
  end
elseif nc > 1 then
  local seen = redis.call('GET', KEYS[1])
  if seen and tonumber(seen) >= nc then return {'replay', seen} end
  redis.call('SET', KEYS[1], nc, 'PX', ARGV[3])
end
-- the device's pairing, for listeners (e.g. the B2BUA's endpoint sync) to skip a read;
-- a device hash always has device_id: none means the device is gone
local su = redis.call('HMGET', KEYS[5], 'device_id', 'state', 'user', 'vendor', 'model',
                      'fw_compliance')
if not su[1] then return {'gone', ''} end
local nf = tonumber(ARGV[14])
redis.call('HSET', KEYS[5], 'last_seen', ARGV[1], unpack(ARGV, 26, 25 + nf))
redis.call('ZADD', KEYS[6], now, ARGV[10])
redis.call('HSET', KEYS[7], 'last_ip', ARGV[11])
purge(KEYS[2], KEYS[3], now)
-- bindings this request wrote: the caller has them already, only the others are returned
local written = {}
local others = nil  -- how many others the AOR has, when known
if ARGV[13] == '1' then
  -- ARGV[4] is the Call-ID as Binding.to_json writes it (a JSON string): finding it in
  -- the stored JSON tells the same Call-ID, and the CSeq follows, without decoding
  local same = ',"call_id":' .. ARGV[4] .. ',"cseq":'
  local cseq = tonumber(ARGV[5])
  local function in_order(raw)
    local at = string.find(raw, same, 1, true)
    if not at then return true end
    local old = tonumber(string.match(raw, '^%d+', at + #same))
    return old == nil or cseq > old
  end
  if ARGV[8] == '1' then
    -- RFC 3261 §10.3 step 6: '*' removes every binding whose Call-ID differs
    -- or whose CSeq is lower; otherwise the whole request fails.
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      if not in_order(all[i + 1]) then return {'cseq', all[i]} end
    end
    redis.call('DEL', KEYS[2], KEYS[3])
  else
    local first = 26 + nf
    local last = first + 3 * tonumber(ARGV[7]) - 1
    local count = redis.call('HLEN', KEYS[2])
    for i = first, last, 3 do
      local old = redis.call('HGET', KEYS[2], ARGV[i])
      if old then
        if not in_order(old) then return {'cseq', ARGV[i]} end
        if ARGV[i + 2] == '' then count = count - 1 end
      elseif ARGV[i + 2] ~= '' then
        count = count + 1
      end
    end
    if count > tonumber(ARGV[6]) then return {'toomany', tostring(count)} end
    others = count
    for i = first, last, 3 do
      if ARGV[i + 2] == '' then
        redis.call('HDEL', KEYS[2], ARGV[i])
        redis.call('ZREM', KEYS[3], ARGV[i])
      else
        redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
        redis.call('ZADD', KEYS[3], ARGV[i + 1], ARGV[i])
        if not written[ARGV[i]] then others = others - 1 end
        written[ARGV[i]] = true
      end
    end
  end
  local latest = retime(KEYS[2], KEYS[3], KEYS[4], ARGV[9], tonumber(ARGV[12]), now)
  local verdict = nil
  for i = 26, 25 + nf, 2 do
    if ARGV[i] == 'fw_compliance' then verdict = ARGV[i + 1] end
  end
  count_active(ARGV[10], su[4], su[5], su[6], verdict, latest)
end
local out = {'ok', (su[2] or '') .. '\t' .. (su[3] or '')}
if others ~= 0 then  -- (a phone refreshing its only binding: nothing else to return)
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if not written[all[i]] then table.insert(out, all[i + 1]) end
  end
end
return out
"""
