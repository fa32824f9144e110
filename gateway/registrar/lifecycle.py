"""Stale-device offboarding (the Teams SIP Gateway rule: 30 days paired, 14 unpaired).

A periodic sweep removes devices whose last REGISTER is older than the limit
for their state: the device record, its credentials, bindings and user alias
go together (``DeviceStore.remove``), so the same MAC can be onboarded again.
The clock is a parameter so tests can move time.
"""

from __future__ import annotations

import logging

from gateway.registrar.devices import PAIRED, DeviceStore
from gateway.state import keys

log = logging.getLogger(__name__)

DAY = 86400.0


async def offboard_stale(devices: DeviceStore, now: float, *, paired_days: int = 30,
                         unpaired_days: int = 14) -> list[str]:
    """Remove stale devices; returns the device ids removed."""
    horizon = now - min(paired_days, unpaired_days) * DAY
    candidates = await devices.redis.zrangebyscore(keys.devices_seen(), "-inf", horizon)
    removed: list[str] = []
    for raw in candidates:
        device_id = raw.decode()
        dev = await devices.get(device_id)
        if dev is None:
            await devices.redis.zrem(keys.devices_seen(), device_id)
            continue
        limit = (paired_days if dev.state == PAIRED else unpaired_days) * DAY
        if now - dev.last_seen >= limit and await devices.remove(device_id):
            log.info("offboarded stale %s device %s (%s %s, last seen %.0f days ago)",
                     dev.state, device_id, dev.vendor, dev.model, (now - dev.last_seen) / DAY)
            removed.append(device_id)
    return removed
