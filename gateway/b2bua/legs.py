"""Call legs of the B2BUA and their persistence in Redis (RFC 3261 §12 dialog state).

A ``Leg`` is the phone side of one call: the SIP dialog with the phone, where
the phone is reached (its registration source or flow), and the backend call
it is bridged to. Established legs live in Redis, keyed three ways, all with a
TTL refreshed on every in-dialog transaction so a node restart does not lose
the signalling of a running call:

- ``b2b:leg:<leg id>``               JSON of the leg
- ``b2b:dlg:<call-id>|<local tag>|<remote tag>`` -> leg id (in-dialog requests)
- ``b2b:call:<backend call id>``     set of leg ids (backend events)
- ``b2b:se``                          sorted set leg id -> session-timer deadline
  (RFC 4028 §10: no refresh by then ends the call)

Redis is the record; the node that saved a leg also keeps a copy in memory, so the
in-dialog requests and backend events of its own calls (nearly all of them: a phone's
flow stays on its node) cost no read. Every change is still written through in one
pipeline, so a restarted node, or another one, finds the leg in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.sip.dialog import Dialog
from gateway.sip.peer import FlowId, Peer
from gateway.state.pipe import RespPipe, run_commands

log = logging.getLogger("sipgw.b2bua")

LEG_TTL = 4 * 3600  # an established leg survives this long without any refresh
EVENT_POSITION_DELAY = 0.02  # seconds of backend event positions written at once
PREFIX = "b2b:"
# one encoder for every save (json.dumps with separators builds one per call)
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class Leg:
    """The phone side of one bridged call (direction ``out``: phone called; ``in``: phone
    was called)."""

    leg_id: str
    direction: str  # "out" | "in"
    backend_call_id: str
    endpoint_id: str
    device_id: str
    user: str
    dialog: dict[str, Any]
    peer: dict[str, Any]  # Peer fields: transport, host, port, flow
    state: str = "confirmed"  # early | confirmed | ended
    local_sdp: str = ""
    remote_sdp: str = ""
    session_expires: int = 0  # RFC 4028 interval, 0 = no session timer
    refresher: str = ""  # "uac" | "uas" as negotiated on the initial INVITE
    created: float = 0.0
    answered: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def clone(self) -> Leg:
        """A shallow copy (what ``copy.copy`` makes, without its reduce protocol)."""
        twin = Leg.__new__(Leg)
        twin.__dict__.update(self.__dict__)
        return twin

    # -- typed views ---------------------------------------------------------------
    def get_dialog(self) -> Dialog:
        return Dialog.from_dict(self.dialog)

    def set_dialog(self, dialog: Dialog) -> None:
        self.dialog = dialog.to_dict()

    def get_peer(self) -> Peer:
        p = self.peer
        flow = p.get("flow")
        return Peer(str(p["transport"]), str(p["host"]), int(p["port"]),
                    FlowId(str(flow)) if flow else None)

    @staticmethod
    def peer_dict(peer: Peer) -> dict[str, Any]:
        return {"transport": peer.transport, "host": peer.host, "port": peer.port,
                "flow": peer.flow}

    @property
    def dialog_key(self) -> str:
        d = self.dialog
        return dialog_key(str(d["call_id"]), str(d["local_tag"]), str(d["remote_tag"]))

    # -- serialisation -------------------------------------------------------------
    def to_json(self) -> str:
        # the fields are JSON types already: no deep copy (asdict) on every save
        return _compact_json(vars(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Leg:
        obj = json.loads(raw)
        if not isinstance(obj, Mapping):
            raise ValueError("leg record is not an object")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in obj.items() if k in known})


def dialog_key(call_id: str, local_tag: str, remote_tag: str) -> str:
    return f"{call_id}|{local_tag}|{remote_tag}"


class LegStore:
    """Legs in Redis (key schema in the module docstring); one round trip per operation."""

    def __init__(self, redis: Any, prefix: str = PREFIX, ttl: int = LEG_TTL,
                 local_max: int = 200_000, event_delay: float = EVENT_POSITION_DELAY,
                 pipe: RespPipe | None = None) -> None:
        self.redis = redis
        self.p = prefix
        self.ttl = ttl
        # this node's legs (leg id -> leg; dialog key -> leg id; backend call -> leg ids)
        self._local: dict[str, Leg] = {}
        self._local_dlg: dict[str, str] = {}
        self._local_call: dict[str, set[str]] = {}
        self._local_max = local_max
        self._last_event: dict[str, str] = {}
        self._event_writer: dict[str, Any] = {}
        self.event_delay = event_delay
        # The writes of every call go over a pipelined connection where the store is plain
        # Redis/Valkey (redis-py's per-command pool checkout and layers cost more than the
        # commands); Sentinel/TLS stores keep redis-py. A borrowed ``pipe`` (the
        # registrar's) puts a loop turn's leg writes in the same write as its reads.
        self._own_pipe = pipe is None
        self._pipe = RespPipe.for_client(redis) if pipe is None else pipe

    async def _commands(self, cmds: list[tuple[Any, ...]]) -> list[Any]:
        """Run ``cmds`` in one round trip, in order; their replies."""
        return await run_commands(self._pipe, self.redis, cmds)

    async def close(self) -> None:
        if self._pipe is not None and self._own_pipe:
            await self._pipe.close()

    def _remember(self, leg: Leg) -> None:
        old = self._local.get(leg.leg_id)
        if old is None and len(self._local) >= self._local_max:
            # a bound for legs never ended (their Redis records expire): forget the oldest
            self._forget(self._local[next(iter(self._local))])
        elif old is not None and old.dialog_key != leg.dialog_key:
            self._local_dlg.pop(old.dialog_key, None)
        # a copy: callers change the legs they get and save them only on success
        self._local[leg.leg_id] = leg.clone()
        self._local_dlg[leg.dialog_key] = leg.leg_id
        self._local_call.setdefault(leg.backend_call_id, set()).add(leg.leg_id)

    def _forget(self, leg: Leg) -> None:
        mine = self._local.pop(leg.leg_id, None) or leg
        if self._local_dlg.get(mine.dialog_key) == mine.leg_id:
            del self._local_dlg[mine.dialog_key]
        ids = self._local_call.get(mine.backend_call_id)
        if ids is not None:
            ids.discard(mine.leg_id)
            if not ids:
                del self._local_call[mine.backend_call_id]

    def _leg(self, leg_id: str) -> str:
        return f"{self.p}leg:{leg_id}"

    def _dlg(self, key: str) -> str:
        return f"{self.p}dlg:{key}"

    def _call(self, cid: str) -> str:
        return f"{self.p}call:{cid}"

    @property
    def _se(self) -> str:
        return f"{self.p}se"

    async def save(self, leg: Leg, *, se_deadline: float | None = None) -> None:
        """Write the leg and its indexes and refresh their TTLs (one round trip; no MULTI:
        each write stands alone and the next save rewrites them all)."""
        call_key = self._call(leg.backend_call_id)
        cmds: list[tuple[Any, ...]] = [
            ("SET", self._leg(leg.leg_id), leg.to_json(), "EX", self.ttl),
            ("SET", self._dlg(leg.dialog_key), leg.leg_id, "EX", self.ttl),
            ("SADD", call_key, leg.leg_id),
            ("EXPIRE", call_key, self.ttl)]
        if se_deadline is not None:
            cmds.append(("ZADD", self._se, repr(float(se_deadline)), leg.leg_id))
        await self._commands(cmds)
        self._remember(leg)

    async def get(self, leg_id: str) -> Leg | None:
        mine = self._local.get(leg_id)
        if mine is not None:
            return mine.clone()
        raw = await self.redis.get(self._leg(leg_id))
        if raw is None:
            return None
        try:
            return Leg.from_json(raw)
        except (ValueError, TypeError, KeyError):
            return None

    async def by_dialog(self, call_id: str, local_tag: str, remote_tag: str) -> Leg | None:
        key = dialog_key(call_id, local_tag, remote_tag)
        mine = self._local_dlg.get(key)
        if mine is not None and mine in self._local:
            return self._local[mine].clone()
        leg_id = await self.redis.get(self._dlg(key))
        if leg_id is None:
            return None
        return await self.get(leg_id.decode() if isinstance(leg_id, bytes) else str(leg_id))

    async def by_call(self, backend_call_id: str) -> list[Leg]:
        mine = self._local_call.get(backend_call_id)
        if mine:
            # a call's legs on other nodes are theirs to end (their own events reach them)
            return [self._local[i].clone() for i in sorted(mine) if i in self._local]
        ids = await self.redis.smembers(self._call(backend_call_id))
        out: list[Leg] = []
        for raw in sorted(ids):
            leg = await self.get(raw.decode() if isinstance(raw, bytes) else str(raw))
            if leg is not None:
                out.append(leg)
        return out

    async def delete(self, leg: Leg) -> bool:
        """Remove the leg; True only for the caller that removed it (so exactly one node or
        task ends a call when several notice its end at once)."""
        self._forget(leg)
        cmds: list[tuple[Any, ...]] = [
            ("DEL", self._leg(leg.leg_id)),
            ("DEL", self._dlg(leg.dialog_key)),
            ("SREM", self._call(leg.backend_call_id), leg.leg_id)]
        if leg.session_expires:
            # only a leg with a session timer is ever in the deadline set (see save)
            cmds.append(("ZREM", self._se, leg.leg_id))
        removed = await self._commands(cmds)
        return bool(removed[0])

    async def session_expired(self, now: float, limit: int = 100) -> list[str]:
        ids = await self.redis.zrangebyscore(self._se, "-inf", now, start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def drop_session_timer(self, leg_id: str) -> None:
        await self.redis.zrem(self._se, leg_id)

    async def count(self) -> int:
        n = 0
        async for _ in self.redis.scan_iter(match=f"{self.p}leg:*", count=500):
            n += 1
        return n

    async def set_last_event(self, node_id: str, event_id: str) -> None:
        await self._commands([("SET", f"{self.p}events:{node_id}", event_id, "EX", self.ttl)])

    def note_last_event(self, node_id: str, event_id: str) -> None:
        """Record the backend event position without a write per event: one writer per
        node gathers the positions of ``EVENT_POSITION_DELAY`` and writes the newest,
        so a call's handful of events costs one SET among those of every other call
        (a write is a syscall and a store wake-up). A node that dies without ``stop``
        is resumed up to that much earlier in the stream (before, by the one SET in
        flight); ``stop`` writes the newest position."""
        self._last_event[node_id] = event_id
        task = self._event_writer.get(node_id)
        if task is None or task.done():
            self._event_writer[node_id] = asyncio.ensure_future(self._write_events(node_id))

    async def _write_events(self, node_id: str) -> None:
        written = ""
        while True:
            await asyncio.sleep(self.event_delay)
            latest = self._last_event.get(node_id, "")
            if latest == written:
                return
            try:
                await self.set_last_event(node_id, latest)
            except Exception as e:  # noqa: BLE001 - the next event tries again
                log.warning("saving the backend event position failed: %s", e)
                return
            written = latest

    async def flush_last_event(self) -> None:
        """Wait for the event positions noted so far to be written (at stop)."""
        for task in list(self._event_writer.values()):
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def last_event(self, node_id: str) -> str:
        raw = await self.redis.get(f"{self.p}events:{node_id}")
        return "" if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

