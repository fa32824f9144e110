"""Twisted adapters that run the sans-I/O SIP stack on UDP, TCP and TLS (RFC 3261 §18).

``SipDriver`` is the one entry point: it listens, frames, moves bytes and keeps
the stack's single timer. ``TlsFiles`` / ``ensure_dev_certificate`` provide
TLS material; ``StreamLimits`` bounds what stream peers can make us hold.
"""

from gateway.transport.certs import (
    TlsFiles,
    client_tls_options,
    ensure_dev_certificate,
    server_tls_options,
)
from gateway.transport.driver import SipDriver, SipStackLike
from gateway.transport.stream import SipStreamProtocol, StreamLimits
from gateway.transport.udp import SipDatagramProtocol

__all__ = [
    "SipDatagramProtocol", "SipDriver", "SipStackLike", "SipStreamProtocol", "StreamLimits",
    "TlsFiles", "client_tls_options", "ensure_dev_certificate", "server_tls_options",
]
