"""Where a message came from or goes to: transport, address, and the stream flow.

A ``Peer`` is what the transport layer hands the core with every message and
what the core hands back with every message to send (RFC 3261 §18). For stream
transports ``flow`` names the connection, so responses and later requests can
reuse it (RFC 3261 §18.2.2, RFC 5626 §5.3 flows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

FlowId = NewType("FlowId", str)
CallId = NewType("CallId", str)
Branch = NewType("Branch", str)
Tag = NewType("Tag", str)
Aor = NewType("Aor", str)
DeviceId = NewType("DeviceId", str)

RELIABLE = frozenset({"TCP", "TLS", "WS", "WSS", "SCTP"})


@dataclass(frozen=True, slots=True)
class Peer:
    """A transport address: ``transport`` is UDP/TCP/TLS (upper case); IPv6 hosts unbracketed."""

    transport: str
    host: str
    port: int
    flow: FlowId | None = None

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE

    def hostport(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport.lower()}:{self.hostport()}"
