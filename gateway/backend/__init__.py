"""Call-control backend: API schema (v1), typed client, directory; reference/ is the
embedded Teams-like backend. The gateway reaches the backend only through
``BackendClient`` (DESIGN.md principle 5)."""

from gateway.backend.client import BackendClient, BackendError, BackendMetrics, BackendUnavailable
from gateway.backend.directory import (
    CallingPolicy,
    Directory,
    Tenant,
    User,
    hash_password,
    load_directory,
    set_password,
    verify_password,
)

__all__ = [
    "BackendClient", "BackendError", "BackendMetrics", "BackendUnavailable", "CallingPolicy",
    "Directory", "Tenant", "User", "hash_password", "load_directory", "set_password",
    "verify_password",
]
