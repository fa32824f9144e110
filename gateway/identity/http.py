"""HTTP client for msal: one ``requests`` session that really uses the configured CA bundle.

``requests`` lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` from the
environment override a session's ``verify``; a private CA (the development
identity provider's, or a corporate TLS inspection root) given in the
configuration must win, so it is passed on every request explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests


class PinnedSession(requests.Session):
    """A ``requests.Session`` whose ``verify`` and ``timeout`` apply to every request."""

    def __init__(self, ca_file: Path | str | None, timeout: float = 10.0) -> None:
        super().__init__()
        self.verify = str(ca_file) if ca_file else True
        self.timeout = timeout

    def request(self, method: str, url: str,  # type: ignore[override]
                *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


def http_client(ca_file: Path | str | None, timeout: float = 10.0) -> PinnedSession:
    """The session to hand to ``msal.PublicClientApplication(http_client=...)``."""
    return PinnedSession(ca_file, timeout)
