"""``DeviceBinder`` over the registrar's ``DeviceStore`` and the backend's endpoints.

Binding a device to a user makes its registrations reachable as the user's
AOR (``DeviceStore.set_paired``) and, when the phone is registered right now,
adds its backend endpoint at once (``POST /v1/users/{oid}/endpoints``) so
calls reach it before its next re-REGISTER (the B2BUA keeps the endpoint
fresh on every REGISTER after that). Unbinding reverses both. The user's
display name and number are kept in the pairing record
(``PairingRecord.user_name``/``number``): the device record has no room for them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.b2bua.service import CAPABILITIES, endpoint_id_for
from gateway.backend.client import BackendError, BackendUnavailable
from gateway.backend.schema import EndpointCreate
from gateway.identity.pairing import DirectoryUser

log = logging.getLogger(__name__)


class DeviceStoreBinder:
    """Binds devices to users in the registrar and at the backend (RFC 3261 §10.3 AORs)."""

    def __init__(self, devices: Any, registrar: Any, backend: Any) -> None:
        self._devices = devices
        self._registrar = registrar
        self._backend = backend

    async def bind(self, device_id: str, user: DirectoryUser) -> None:
        await self._devices.set_paired(device_id, user.oid)
        device = await self._devices.get(device_id)
        if device is None:
            return
        now = time.time()
        remaining = [b.expires - now for b in await self._registrar.lookup(device.aor)]
        if not remaining or max(remaining) <= 0:
            return  # not registered now: its next REGISTER adds the endpoint
        ttl = int(min(86400, max(30, max(remaining) + 30)))
        try:
            await self._backend.add_endpoint(user.oid, EndpointCreate(
                endpoint_id=endpoint_id_for(device_id), device_id=device_id,
                capabilities=CAPABILITIES, expires=ttl))
        except (BackendError, BackendUnavailable) as exc:
            # The pairing stands: the next REGISTER adds the endpoint again.
            log.warning("backend endpoint for %s: %s", device_id, exc)

    async def unbind(self, device_id: str) -> None:
        device = await self._devices.get(device_id)
        if device is None:
            return
        oid = device.user
        await self._devices.set_unpaired(device_id)
        if not oid:
            return
        try:
            await self._backend.remove_endpoint(oid, endpoint_id_for(device_id))
        except BackendError as exc:
            if exc.status != 404:
                log.warning("removing backend endpoint of %s: %s", device_id, exc)
        except BackendUnavailable as exc:
            log.warning("removing backend endpoint of %s: %s", device_id, exc)
