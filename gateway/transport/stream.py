"""SIP over TCP and TLS (RFC 3261 §18.3 framing, RFC 5626 §3.5.1 CRLF keep-alive).

One ``SipStreamProtocol`` per connection. It frames the byte stream with
``gateway.sip.message.StreamParser`` (partial and pipelined messages), answers
a double-CRLF ping with a single CRLF pong, and hands each message to the
owner (the driver) together with the connection's flow (RFC 5626 §5.3), so
responses and later requests can reuse the connection (RFC 3261 §18.2.2).
TLS is the same protocol under ``TLSMemoryBIOFactory``.

Hostile peers are bounded: a connection that sends no valid message within
``idle_timeout`` is closed, so is one silent for ``inactivity_timeout``;
the parser caps the buffered message at ``max_message_size``; reading stops
while the peer does not read our writes, and a peer that lets more than
``max_write_backlog`` bytes pile up is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]  # no stubs shipped

from gateway.sip.message import MAX_MESSAGE_SIZE, ParseFailure, SipMessage, StreamParser
from gateway.sip.peer import FlowId, Peer
from gateway.transport.udp import normalise_host

PONG = b"\r\n"


class DelayedCall(Protocol):
    """The part of Twisted's IDelayedCall we use (zope interfaces are not mypy types)."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds on stream connections; hostile peers must not exhaust memory or sockets.

    ``idle_timeout``: seconds a new connection may stay without sending one valid
    SIP message. ``inactivity_timeout``: seconds without any bytes before an
    established connection is closed (longer than a typical 3600 s registration
    refresh, since phones without RFC 5626 keep-alives re-register that rarely);
    0 disables it. ``max_connections`` / ``max_connections_per_ip`` cap inbound
    connections. ``max_message_size`` caps one framed message (and so the read
    buffer). ``max_write_backlog`` caps bytes written to a peer that does not read.
    """

    idle_timeout: float = 60.0
    inactivity_timeout: float = 3900.0
    max_connections: int = 10000
    max_connections_per_ip: int = 100
    max_message_size: int = MAX_MESSAGE_SIZE
    max_write_backlog: int = 1 << 20
    connect_timeout: float = 10.0


class StreamOwner(Protocol):
    """What a stream connection reports to: the driver."""

    def stream_opened(self, conn: SipStreamProtocol) -> None: ...

    def stream_items(self, conn: SipStreamProtocol,
                     items: list[SipMessage | ParseFailure | str]) -> None: ...

    def stream_closed(self, conn: SipStreamProtocol, reason: Failure) -> None: ...


@implementer(IPushProducer)
class SipStreamProtocol(TwistedProtocol):
    """One SIP connection over TCP or TLS (RFC 3261 §18.3; RFC 5626 §3.5.1 keep-alive)."""

    def __init__(self, owner: StreamOwner, transport_name: str, flow: FlowId,
                 limits: StreamLimits, reactor: Any, *, outbound: bool = False) -> None:
        self._owner = owner
        self.transport_name = transport_name
        self.flow = flow
        self.outbound = outbound
        self._limits = limits
        self._reactor = reactor
        self.parser = StreamParser(limits.max_message_size)
        self.peer = Peer(transport_name, "", 0, flow)
        self.established = False  # a valid SIP message arrived (or we opened it)
        self.closing = False
        self.counted_ip: str | None = None  # set by the server factory for the per-IP cap
        self.target: tuple[str, int] | None = None  # the address an outbound connection dialled
        self._closed_waiters: list[Deferred[None]] = []
        self._write_paused = False
        self._backlog = 0
        self._last_activity = 0.0
        self._timer: DelayedCall | None = None

    @property
    def _t(self) -> Any:
        # ITCPTransport or TLSMemoryBIOProtocol; zope interfaces are not mypy types.
        return self.transport

    # -- connection lifecycle ----------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        addr = self._t.getPeer()
        self.peer = Peer(self.transport_name, normalise_host(str(addr.host)), int(addr.port),
                         self.flow)
        self._last_activity = self._reactor.seconds()
        # Backpressure: Twisted pauses us when the peer stops reading our writes.
        self._t.registerProducer(self, True)
        self.established = self.outbound
        self._arm(self._limits.idle_timeout if not self.outbound
                  else self._limits.inactivity_timeout)
        self._owner.stream_opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.closing = True
        self._cancel_timer()
        try:
            self._owner.stream_closed(self, reason)
        finally:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires once the connection is gone."""
        d: Deferred[None] = Deferred()
        if self.transport is None or (self.closing and not self.connected):
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    def close(self, abort: bool = False) -> None:
        if self.transport is None or self.closing:
            return
        self.closing = True
        self._cancel_timer()
        if abort:
            self._t.abortConnection()
        else:
            # TLS waits for the producer to go before it sends close_notify and hangs up
            self._t.unregisterProducer()
            self._t.loseConnection()

    # -- bytes in ----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        if self.closing:
            return
        self._last_activity = self._reactor.seconds()
        items = self.parser.feed(data)
        if not items:
            return
        deliver: list[SipMessage | ParseFailure | str] = []
        for item in items:
            if item == StreamParser.PING:
                # RFC 5626 §3.5.1: answer CRLFCRLF with CRLF; a ping alone does not make
                # a connection established (it would let idle sockets live forever).
                self.write(PONG)
                continue
            if not self.established and not isinstance(item, (ParseFailure, str)):
                self.established = True
                self._arm(self._limits.inactivity_timeout)
            deliver.append(item)
        if deliver:
            self._owner.stream_items(self, deliver)
        if self.parser.broken:
            # Framing is lost (§18.3): whatever we queued (a 400) is flushed, then close.
            self.close()

    # -- bytes out ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closing:
            return
        if self._write_paused:
            self._backlog += len(data)
            if self._backlog > self._limits.max_write_backlog:
                self.close(abort=True)  # the peer stopped reading; do not buffer for it
                return
        self._t.write(data)

    # IPushProducer: called by our transport when its write buffer fills / drains.
    def pauseProducing(self) -> None:  # noqa: N802 - Twisted API
        self._write_paused = True
        if self.transport is not None and not self.closing:
            self._t.pauseProducing()  # stop reading requests we cannot answer

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted API
        self._write_paused = False
        self._backlog = 0
        if self.transport is not None and not self.closing:
            self._t.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted API
        self.close(abort=True)

    # -- timers ------------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        if delay > 0:
            self._timer = self._reactor.callLater(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if not self.established:
            self.close(abort=True)  # never sent a valid message within idle_timeout
            return
        timeout = self._limits.inactivity_timeout
        if timeout <= 0:
            return
        # One timer per connection, re-armed lazily instead of on every read.
        remaining = self._last_activity + timeout - self._reactor.seconds()
        if remaining > 0:
            self._arm(remaining)
        else:
            self.close(abort=True)


class StreamConnectionRegistry(Protocol):
    """The driver's side of the server factory: flow ids and connection admission."""

    def new_flow(self, transport_name: str) -> FlowId: ...

    def admit(self, transport_name: str, host: str) -> bool: ...


class SipStreamServerFactory(Factory):
    """Builds a ``SipStreamProtocol`` per accepted connection, refusing those over the caps."""

    def __init__(self, owner: Any, transport_name: str, limits: StreamLimits,
                 reactor: Any) -> None:
        self._owner = owner
        self.transport_name = transport_name
        self._limits = limits
        self._reactor = reactor

    def buildProtocol(self, addr: Any) -> SipStreamProtocol | None:  # noqa: N802 - Twisted API
        host = normalise_host(str(getattr(addr, "host", "")))
        if not self._owner.admit(self.transport_name, host):
            return None  # Twisted closes the socket at once
        proto = SipStreamProtocol(self._owner, self.transport_name,
                                  self._owner.new_flow(self.transport_name), self._limits,
                                  self._reactor)
        proto.counted_ip = host
        return proto


class SipStreamClientFactory(ClientFactory):
    """One outbound connection to ``(host, port)``; failures go back to the owner."""

    def __init__(self, owner: Any, transport_name: str, host: str, port: int,
                 limits: StreamLimits, reactor: Any) -> None:
        self._owner = owner
        self.transport_name = transport_name
        self.host = host
        self.port = port
        self._limits = limits
        self._reactor = reactor
        self._connector: Any = None

    def startedConnecting(self, connector: Any) -> None:  # noqa: N802 - Twisted API
        self._connector = connector

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:  # noqa: N802 - Twisted API
        proto = SipStreamProtocol(self._owner, self.transport_name,
                                  self._owner.new_flow(self.transport_name), self._limits,
                                  self._reactor, outbound=True)
        proto.target = (self.host, self.port)
        return proto

    def stop_connecting(self) -> None:
        if self._connector is not None and self._connector.state == "connecting":
            self._connector.stopConnecting()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self._owner.connect_failed(self, reason)
