"""``GET /healthz``: is this node able to serve? (Redis, the call-control backend, SIP listeners).

Answers 200 with ``{"status": "ok", "checks": {...}}`` when every check
passes and 503 with the failing checks named otherwise, so a load balancer or
Kubernetes probe can take the node out. Each check has a short timeout: a
hung dependency makes the probe fail, never hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

log = logging.getLogger("sipgw.health")

# A syntactically valid tenant id nobody has: any answer, even 404, proves the backend is up.
_PROBE_TENANT = "00000000-0000-0000-0000-000000000000"


async def _check_redis(gateway: Any, timeout: float) -> dict[str, Any]:
    try:
        await asyncio.wait_for(gateway.redis.ping(), timeout)
        return {"ok": True}
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}


async def _check_backend(gateway: Any, timeout: float) -> dict[str, Any]:
    from gateway.backend.client import BackendError

    backend = getattr(gateway, "backend", None)
    if backend is None:
        return {"ok": False, "error": "no backend client"}
    try:
        await asyncio.wait_for(backend.get_tenant(_PROBE_TENANT), timeout)
        return {"ok": True, "url": backend.base_url}
    except BackendError as e:
        if e.status >= 500:
            return {"ok": False, "url": backend.base_url, "error": f"HTTP {e.status}"}
        return {"ok": True, "url": backend.base_url}
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "url": getattr(backend, "base_url", ""),
                "error": f"{type(e).__name__}: {str(e)[:200]}"}


def _check_sip(gateway: Any) -> dict[str, Any]:
    listeners = [str(item) for item in getattr(gateway, "listening", [])
                 if getattr(item, "service", "") == "sip"]
    if not listeners:
        return {"ok": False, "error": "no SIP listener", "listeners": []}
    return {"ok": True, "listeners": listeners}


async def health_report(gateway: Any, timeout: float = 2.0) -> tuple[bool, dict[str, Any]]:
    """(healthy, body) for ``gateway`` (needs .redis, .backend, .listening, .node_id)."""
    redis, backend = await asyncio.gather(_check_redis(gateway, timeout),
                                          _check_backend(gateway, timeout))
    checks = {"redis": redis, "backend": backend, "sip": _check_sip(gateway)}
    ok = all(c["ok"] for c in checks.values())
    return ok, {"status": "ok" if ok else "fail", "node": getattr(gateway, "node_id", ""),
                "checks": checks}


class HealthResource(Resource):
    """``GET /healthz`` (no authentication: it reveals only what is up)."""

    isLeaf = True

    def __init__(self, gateway: Any, timeout: float = 2.0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped Twisted API
        self.gateway = gateway
        self.timeout = timeout

    def render_GET(self, request: Request) -> Any:
        d: Deferred[None] = Deferred.fromFuture(asyncio.ensure_future(self._answer(request)))
        d.addErrback(lambda f: log.error("health check crashed: %s", f.getErrorMessage()))
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> None:
        gone = [False]
        request.notifyFinish().addBoth(lambda _: gone.__setitem__(0, True))
        try:
            ok, body = await health_report(self.gateway, self.timeout)
        except Exception as e:  # noqa: BLE001 - the probe reports, it does not crash
            ok, body = False, {"status": "fail", "error": type(e).__name__}
        if gone[0]:
            return
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"application/json")  # type: ignore[no-untyped-call]
        request.setHeader(b"cache-control", b"no-store")  # type: ignore[no-untyped-call]
        request.write(json.dumps(body).encode())
        request.finish()
