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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.sip.dialog import Dialog
from gateway.sip.peer import FlowId, Peer

LEG_TTL = 4 * 3600  # an established leg survives this long without any refresh
PREFIX = "b2b:"


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
        return json.dumps(asdict(self), separators=(",", ":"))

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
    """Legs in Redis (key schema in the module docstring); one pipeline per operation."""

    def __init__(self, redis: Any, prefix: str = PREFIX, ttl: int = LEG_TTL) -> None:
        self.redis = redis
        self.p = prefix
        self.ttl = ttl

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
        """Write the leg and its indexes and refresh their TTLs."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._leg(leg.leg_id), leg.to_json(), ex=self.ttl)
        pipe.set(self._dlg(leg.dialog_key), leg.leg_id, ex=self.ttl)
        pipe.sadd(self._call(leg.backend_call_id), leg.leg_id)
        pipe.expire(self._call(leg.backend_call_id), self.ttl)
        if se_deadline is not None:
            pipe.zadd(self._se, {leg.leg_id: se_deadline})
        await pipe.execute()

    async def get(self, leg_id: str) -> Leg | None:
        raw = await self.redis.get(self._leg(leg_id))
        if raw is None:
            return None
        try:
            return Leg.from_json(raw)
        except (ValueError, TypeError, KeyError):
            return None

    async def by_dialog(self, call_id: str, local_tag: str, remote_tag: str) -> Leg | None:
        leg_id = await self.redis.get(self._dlg(dialog_key(call_id, local_tag, remote_tag)))
        if leg_id is None:
            return None
        return await self.get(leg_id.decode() if isinstance(leg_id, bytes) else str(leg_id))

    async def by_call(self, backend_call_id: str) -> list[Leg]:
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
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._leg(leg.leg_id))
        pipe.delete(self._dlg(leg.dialog_key))
        pipe.srem(self._call(leg.backend_call_id), leg.leg_id)
        pipe.zrem(self._se, leg.leg_id)
        removed = await pipe.execute()
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
        await self.redis.set(f"{self.p}events:{node_id}", event_id, ex=self.ttl)

    async def last_event(self, node_id: str) -> str:
        raw = await self.redis.get(f"{self.p}events:{node_id}")
        return "" if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))
