"""Operator-admitted lab clients: User-Agents outside the compatible-device table.

Interop labs and support desks run softphones (baresip, Linphone, ...) next to the
certified desk phones. ``[registrar] lab_user_agents`` lists User-Agent prefixes the
operator admits anyway; they register as ``LAB_CLIENT``: admitted, always flagged as
non-compliant (ops page, ``sipgw devices show``, metrics), never E911-capable, and
never offered firmware. The list is empty by default, so only the table admits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from firmware_catalog.catalog import AGENT_MAX, Catalog
from firmware_catalog.model import Compliance, DeviceInfo, Verdict
from firmware_catalog.vendors.base import safe_token

__all__ = ["LabClients"]


class LabClients:
    """A catalog that also admits the configured User-Agent prefixes as lab clients."""

    def __init__(self, catalog: Catalog, prefixes: Iterable[str]) -> None:
        self.catalog = catalog
        self.prefixes = tuple(p for p in prefixes if p.strip())
        if any(len(p) > AGENT_MAX for p in self.prefixes):
            raise ValueError(f"lab User-Agent prefixes are at most {AGENT_MAX} characters")

    def evaluate(self, user_agent: str, *, region: str | None = None) -> Verdict:
        agent = user_agent.strip()
        for prefix in self.prefixes:
            if agent.startswith(prefix):
                name = safe_token(agent.split(" ", 1)[0]) or "client"
                return Verdict(Compliance.LAB_CLIENT,
                               f"lab client admitted by configuration ({prefix.strip()})",
                               DeviceInfo(vendor="lab", model=name, firmware=None))
        return self.catalog.evaluate(user_agent, region=region)

    def __getattr__(self, name: str) -> Any:
        # lookup, evaluate_http, entries...: the table's own answers
        return getattr(self.catalog, name)
