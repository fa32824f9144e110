"""``DirectoryLookup`` over the call-control backend API (one code path to the backend).

After the ID token is validated (OIDC Core §3.1.3.7) the pairing manager asks
who the user is for calling purposes: number, PSTN enablement, licences,
account type, ``AllowSIPDevicesCalling`` and the tenant's cloud. The gateway
learns these only through ``BackendClient.get_user`` and ``get_tenant``
(DESIGN principle 5), also when the reference backend runs in-process.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.backend.client import BackendError, BackendUnavailable
from gateway.identity.pairing import DirectoryUser

log = logging.getLogger(__name__)


class LookupUnavailable(Exception):
    """The backend could not be asked (network, 5xx); the sign-in ends with this reason."""


class BackendDirectoryLookup:
    """Resolves a signed-in user with ``GET /v1/users/{oid}`` and ``GET /v1/tenants/{tid}``."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    async def lookup_user(self, tenant_id: str, oid: str) -> DirectoryUser | None:
        """The user as the pairing manager checks them; None when unknown or of another tenant.

        Raises ``LookupUnavailable`` when the backend cannot answer, so an
        outage is not reported to the user as "you are not known".
        """
        try:
            user = await self._backend.get_user(oid)
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise LookupUnavailable(f"user lookup failed: {exc}") from None
        except BackendUnavailable as exc:
            raise LookupUnavailable(f"calling service unavailable: {exc}") from None
        if user.tenant.lower() != tenant_id.lower():
            # The token's tid and the backend's record disagree: never bind across tenants.
            log.warning("user %s: token tenant %s, backend tenant %s", oid, tenant_id,
                        user.tenant)
            return None
        cloud = await self.tenant_cloud(user.tenant)
        return DirectoryUser.from_user(user, cloud)

    async def tenant_cloud(self, tenant_id: str) -> str:
        """The tenant's cloud (``commercial``, ``gcc``, ...); ``unknown`` for an unknown tenant."""
        try:
            tenant = await self._backend.get_tenant(tenant_id)
        except BackendError as exc:
            if exc.status == 404:
                return "unknown"
            raise LookupUnavailable(f"tenant lookup failed: {exc}") from None
        except BackendUnavailable as exc:
            raise LookupUnavailable(f"calling service unavailable: {exc}") from None
        return tenant.cloud.lower()
