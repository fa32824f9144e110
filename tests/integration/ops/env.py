"""A gateway-like node for admin API tests: real Valkey, real reference backend over HTTP,
the registrar's DeviceStore on the same Redis, the admin site on a loopback port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred

from gateway.backend.client import BackendClient
from gateway.backend.directory import parse_directory
from gateway.backend.reference.server import start_reference_backend
from gateway.config import Config
from gateway.ops.admin import admin_token, attach_admin, make_bulk, make_enrollment
from gateway.registrar.bindings import Binding
from gateway.registrar.devices import Device, DeviceStore
from gateway.state import keys
from gateway.state.redis import connect

CONTOSO = "7f3e1c9a-0d52-4b8e-9a41-3c2f6b1d8e01"
FABRIKAM = "2b6d9e4f-1a37-4c58-b0e2-5d8f3a6c9b02"
BACKEND_TOKEN = "ops-test-backend-token-0123456789"

_TENANTS = f"""
[[tenants]]
id = "{CONTOSO}"
name = "Contoso"
domain = "contoso.example"
bulk_sign_in = true

[[tenants]]
id = "{FABRIKAM}"
name = "Fabrikam"
domain = "fabrikam.example"
bulk_sign_in = false
"""

_USER = """
[[users]]
oid = "{oid}"
tenant = "{tenant}"
upn = "{upn}"
name = "{upn}"
number = "{number}"
pstn_enabled = true
licenses = {licenses}
account_type = "{account_type}"
mfa = {mfa}
[users.calling_policy]
allow_sip_devices_calling = {sip}
"""

CAP = '["common_area", "phone_system"]'
USERS = {
    # upn: (tenant, number, licenses, account_type, mfa, sip policy)
    "lobby@contoso.example": (CONTOSO, "+14255550110", CAP, "common_area", "false", "true"),
    "kitchen@contoso.example": (CONTOSO, "+14255550111", CAP, "common_area", "false", "true"),
    "nonumber@contoso.example": (CONTOSO, "", CAP, "common_area", "false", "true"),
    "nopolicy@contoso.example": (CONTOSO, "+14255550112", CAP, "common_area", "false", "false"),
    "alice@contoso.example": (CONTOSO, "+14255550101", '["teams", "phone_system"]', "user",
                              "false", "true"),
    "mfa@contoso.example": (CONTOSO, "+14255550113", CAP, "common_area", "true", "true"),
    "lobby@fabrikam.example": (FABRIKAM, "+13125550110", CAP, "common_area", "false", "true"),
}


def directory_text() -> str:
    out = [_TENANTS]
    for i, (upn, (tenant, number, lic, kind, mfa, sip)) in enumerate(USERS.items()):
        oid = f"d0000000-0000-4000-8000-{i:012d}"
        out.append(_USER.format(oid=oid, tenant=tenant, upn=upn, number=number, licenses=lic,
                                account_type=kind, mfa=mfa, sip=sip))
    return "".join(out)


def oid_of(upn: str) -> str:
    return f"d0000000-0000-4000-8000-{list(USERS).index(upn):012d}"


def aio(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    """Run an asyncio coroutine (redis.asyncio needs a real task) from a Twisted test."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


@dataclass
class Node:
    """The attributes of ``gateway.app.Gateway`` the admin site uses."""

    config: Config
    redis: Any
    devices: DeviceStore
    backend: BackendClient
    reactor: Any
    node_id: str = "ops-test-node"
    listening: list[Any] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)


@dataclass
class Env:
    node: Node
    url: str
    token: str
    http: httpx.AsyncClient
    enrollment: Any
    bulk: Any
    stop_backend: Any

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def add_device(self, mac: str, tenant: str = CONTOSO, model: str = "T57W",
                         vendor: str = "Yealink") -> tuple[Device, str]:
        r = await self.http.post("/admin/v1/devices", headers=self.auth, json={
            "mac": mac, "vendor": vendor, "model": model, "tenant": tenant})
        assert r.status_code == 201, r.text
        body = r.json()
        dev = await self.node.devices.get(body["device"]["device_id"])
        assert dev is not None
        return dev, body["sip_password"]

    async def put_binding(self, dev: Device, *, user_agent: str = "Yealink SIP-T57W 96.86.5.1",
                          host: str = "192.0.2.10", port: int = 5062) -> None:
        """A live registration of ``dev`` in the registrar's Redis layout (SCHEMA.md)."""
        now = time.time()
        b = Binding(key=f"uri:sip:{dev.sip_username}@{host}:{port}", aor=dev.aor,
                    contact=f"<sip:{dev.sip_username}@{host}:{port}>",
                    uri=f"sip:{dev.sip_username}@{host}:{port}", expires=now + 600,
                    transport="UDP", host=host, port=port, node_id=self.node.node_id,
                    user_agent=user_agent, device_id=dev.device_id, registered=now)
        r = self.node.redis
        await r.hset(keys.bindings(dev.aor), b.key, b.to_json())
        await r.zadd(keys.binding_expiry(dev.aor), {b.key: b.expires})
        await r.zadd(keys.registrations_index(), {dev.aor: b.expires})


@asynccontextmanager
async def admin_env(redis_url: str, data_dir: Path, *,
                    pairing: Any = None) -> AsyncIterator[Env]:
    from twisted.internet import reactor

    redis = connect(redis_url)
    directory = parse_directory(directory_text())
    bport, stop_backend = await start_reference_backend(
        redis, directory, "127.0.0.1", 0, BACKEND_TOKEN, reactor)
    backend = BackendClient(f"http://127.0.0.1:{bport}", BACKEND_TOKEN, reactor=reactor)
    config = Config()
    config.server.data_dir = str(data_dir)
    node = Node(config=config, redis=redis, devices=DeviceStore(redis, config.sip.domain),
                backend=backend, reactor=reactor)
    enrollment = make_enrollment(node)
    bulk = make_bulk(node)
    port, stop = await attach_admin(node, pairing, enrollment=enrollment, bulk=bulk,
                                    host="127.0.0.1", port=0)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
    try:
        yield Env(node, f"http://127.0.0.1:{port}", admin_token(config), http, enrollment,
                  bulk, stop_backend)
    finally:
        await http.aclose()
        await stop()
        await stop_backend()
        await backend.close()
        await redis.aclose()
