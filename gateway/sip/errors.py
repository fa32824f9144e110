"""Errors raised by the sans-I/O SIP core.

Like h11, errors say whose fault they are: ``SipParseError`` is the remote
peer's (a malformed message), ``LocalProtocolError`` is ours (the caller asked
the core to do something the protocol forbids).
"""

from __future__ import annotations


class SipError(Exception):
    """Base class of every error the SIP core raises."""


class SipParseError(SipError):
    """A message, header or URI could not be parsed (RFC 3261 §25 grammar).

    ``reason`` is a short human-readable text that names the problem; it goes
    into the 400 response's reason phrase and Warning header. ``status`` is the
    response code a server should answer with (400 unless the grammar is fine
    but the content is not acceptable, e.g. 416 for an unsupported URI scheme,
    413 for an oversized message, 505 for an unsupported SIP version).
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class LocalProtocolError(SipError):
    """The local application misused the core (e.g. responding twice with a final)."""
