"""Events the SIP stack (``gateway.sip.stack.SipStack``) reports to its transaction user.

Frozen, slotted dataclasses; the transaction user (registrar, B2BUA, OPTIONS
responder) reacts to these and calls back into the stack to respond or send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

from gateway.sip.message import SipRequest, SipResponse
from gateway.sip.peer import Peer

# Opaque handle of a transaction inside the stack (branch + method + direction).
TransactionKey = NewType("TransactionKey", str)


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request created a server transaction (RFC 3261 §17.2). Respond with ``stack.respond``.

    For CANCEL, ``cancels`` is the key of the INVITE server transaction it
    matches (§9.2). A CANCEL that matches nothing never reaches the TU: the
    stack answers it 481 itself.
    """

    key: TransactionKey
    request: SipRequest
    peer: Peer
    cancels: TransactionKey | None = None


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx (it has no transaction; §17.1.1.3, §13.3.1.4), an ACK that matched
    nothing, or one matching an INVITE server transaction in Accepted (RFC 6026 §8.7)."""

    request: SipRequest
    peer: Peer


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response matched a client transaction (§17.1.3)."""

    key: TransactionKey
    response: SipResponse
    peer: Peer


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response that matched no client transaction: 2xx retransmissions to an INVITE
    whose transaction is gone are delivered here so the UAC core can re-ACK (§13.2.2.4)."""

    response: SipResponse
    peer: Peer


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B/F fired (client) or Timer H fired (server: no ACK for a final response)."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """Sending for a transaction failed (§17.1.4, §17.2.4); the TU treats it like a 503/timeout."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """The transaction reached TERMINATED and was removed (useful for bookkeeping)."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """A message failed to parse. ``reason`` names the problem; the stack already sent a
    400 where RFC 3261 allows (requests with a usable Via); responses are dropped."""

    reason: str
    peer: Peer
    is_request: bool | None


StackEvent = (
    RequestReceived | AckReceived | ResponseReceived | StrayResponse | TransactionTimeout
    | TransportFailed | TransactionTerminated | MalformedMessage
)
