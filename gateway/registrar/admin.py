"""Admin operations behind ``sipgw devices add|list|show|remove``: plain data in and out."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from gateway.registrar.bindings import BindingStore
from gateway.registrar.devices import Device, DeviceStore, normalise_mac


async def add_device(redis: aioredis.Redis, mac: str, vendor: str, model: str, tenant: str,
                     realm: str, *, sip_username: str | None = None) -> tuple[Device, str]:
    """Create a device; returns it and its SIP password (shown once, never stored)."""
    dev, creds = await DeviceStore(redis, realm).add(mac, vendor, model, tenant,
                                                     sip_username=sip_username)
    return dev, creds.password


async def list_devices(redis: aioredis.Redis, realm: str, *,
                       tenant: str | None = None) -> list[dict[str, Any]]:
    return [d.public() for d in await DeviceStore(redis, realm).list(tenant=tenant)]


async def show_device(redis: aioredis.Redis, mac: str, realm: str,
                      now: float | None = None) -> dict[str, Any] | None:
    """The device and its live bindings (with the source each phone registered from)."""
    import time

    store = DeviceStore(redis, realm)
    dev = await store.get(normalise_mac(mac))
    if dev is None:
        return None
    out = dev.public()
    bindings = await BindingStore(redis).get(dev.aor, time.time() if now is None else now)
    out["bindings"] = [{"contact": b.contact, "expires": b.expires, "q": b.q,
                        "source": str(b.source), "node_id": b.node_id,
                        "outbound": b.outbound, "user_agent": b.user_agent}
                       for b in bindings]
    return out


async def remove_device(redis: aioredis.Redis, mac: str, realm: str) -> bool:
    return await DeviceStore(redis, realm).remove(normalise_mac(mac))
