"""The I/O driver of the sans-I/O SIP stack: sockets in, stack, sockets out (RFC 3261 §18).

``SipDriver`` owns the UDP sockets, the TCP/TLS listeners and connections, and
one timer. Every input runs the same loop (STYLE guideline 3, the aioquic
shape): feed bytes to the stack, drain its events to the handler (a plain
synchronous call; the handler may start async work and later call ``respond``),
write what the stack wants sent, re-arm the single timer at
``stack.next_timer()``. The adapters only frame and move bytes: Via handling,
response routing and retransmissions are the stack's.

Outgoing routing, by the ``Peer`` the stack gives:

- UDP: out of a listening socket of the peer's address family (a loopback
  socket for loopback peers, else a wildcard or public one; with several
  candidates, the socket the peer last reached us on).
- TCP/TLS with ``flow``: over that connection only (RFC 5626 §5.3); when the
  flow is gone the stack is told (``transport_error``) instead of opening a
  new connection to a NATed ephemeral port.
- TCP/TLS without ``flow``: over a live connection to that address if any
  (RFC 3261 §18.2.2 connection reuse), else a new outbound connection.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from gateway.ops.metrics import SipMetrics
from gateway.sip.events import MalformedMessage, StackEvent, TransactionKey
from gateway.sip.message import ParseFailure, SipMessage, SipRequest, SipResponse
from gateway.sip.peer import FlowId, Peer
from gateway.transport.certs import TlsFiles, client_tls_options, server_tls_options
from gateway.transport.stream import (
    DelayedCall,
    SipStreamClientFactory,
    SipStreamProtocol,
    SipStreamServerFactory,
    StreamLimits,
)
from gateway.transport.udp import (
    MAX_DATAGRAM,
    READ_BATCH,
    SipDatagramProtocol,
    is_ipv6,
    normalise_host,
)

log = Logger(namespace="sipgw.transport")

# Remember which socket a peer reached us on, for hosts listening on several addresses
# of one family; bounded so a spoofing flood cannot grow it.
_PEER_SOCKET_CACHE = 4096
# Bytes queued for an outbound connection that is still being set up.
_MAX_CONNECT_QUEUE = 256 * 1024


class SipStackLike(Protocol):
    """The sans-I/O stack as the driver uses it (``gateway.sip.stack.SipStack``)."""

    def receive_datagram(self, data: bytes, peer: Peer, now: float) -> None: ...

    def receive_message(self, msg: SipMessage, peer: Peer, now: float) -> None: ...

    def receive_parse_failure(self, failure: ParseFailure, peer: Peer, now: float) -> None: ...

    def events(self) -> list[StackEvent]: ...

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]: ...

    def next_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def respond(self, key: TransactionKey, response: SipResponse, now: float) -> None: ...

    def send_request(self, request: SipRequest, peer: Peer, now: float) -> TransactionKey: ...

    def send_ack_2xx(self, ack: SipRequest, peer: Peer) -> None: ...

    def send_stateless(self, msg: SipMessage, peer: Peer) -> None: ...

    def transport_error(self, peer: Peer, now: float) -> None: ...


class _Connecting:
    """An outbound connection being set up and the bytes waiting for it."""

    def __init__(self, factory: SipStreamClientFactory) -> None:
        self.factory = factory
        self.queue: list[bytes] = []
        self.size = 0


class SipDriver:
    """Runs a ``SipStack`` on Twisted: UDP, TCP and TLS listeners, flows, one timer (RFC 3261 §18).

    ``reactor`` must provide IReactorTime, IReactorUDP, IReactorTCP (the
    asyncio reactor in production, ``MemoryReactorClock`` in unit tests).
    """

    def __init__(self, stack: SipStackLike, handler: Callable[[StackEvent], None],
                 reactor: IReactorTime | None = None, metrics: SipMetrics | None = None,
                 *, limits: StreamLimits | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        # zope interfaces are not structural types: keep the reactor untyped internally.
        self._reactor: Any = reactor
        self._stack = stack
        self._handler = handler
        self._metrics = metrics
        self.limits = limits or StreamLimits()
        self.addresses: list[tuple[str, str, int]] = []
        self._ports: list[Any] = []  # IListeningPort
        self._udp: list[SipDatagramProtocol] = []
        # per address family (v6?), the UDP sockets that can send to it; reset on listen
        self._udp_by_family: dict[bool, list[SipDatagramProtocol]] = {}
        self._udp_many = False  # more than two UDP sockets: remember each peer's socket
        self._ip_literal: dict[str, bool] = {}
        self._peer_socket: OrderedDict[tuple[str, int], SipDatagramProtocol] = OrderedDict()
        self._flows: dict[FlowId, SipStreamProtocol] = {}
        self._by_remote: dict[tuple[str, str, int], FlowId] = {}
        self._connecting: dict[tuple[str, str, int], _Connecting] = {}
        self._per_ip: dict[str, int] = {}
        self._inbound = 0
        self._flow_seq = 0
        self._tls_client: TlsFiles | None = None
        self._timer: DelayedCall | None = None
        self._timer_when: float | None = None
        self._pumping = False
        self._pump_again = False
        self._stopped = False
        # Sees every UDP datagram first; True: it took it (gateway.registrar.fastlane,
        # which takes REGISTERs only: they are counted as such, unread).
        self.udp_fast: Callable[[bytes, Peer], bool] | None = None

    # -- listening ---------------------------------------------------------------------

    def listen_udp(self, host: str, port: int) -> int:
        """Bind a UDP socket (``port`` 0: ephemeral); returns the bound port."""
        proto = SipDatagramProtocol(self, host)
        lp = self._reactor.listenUDP(port, proto, interface=host or "", maxPacketSize=MAX_DATAGRAM)
        bound = int(lp.getHost().port)
        _grow_socket_buffers(lp)
        lp.maxThroughput = READ_BATCH
        proto.read_directly(self._reactor)
        proto.port = bound
        self._ports.append(lp)
        self._udp.append(proto)
        self._udp_by_family.clear()
        self._udp_many = len(self._udp) > 2
        self.addresses.append(("UDP", host, bound))
        return bound

    def listen_tcp(self, host: str, port: int) -> int:
        """Listen for SIP over TCP; returns the bound port."""
        factory = SipStreamServerFactory(self, "TCP", self.limits, self._reactor)
        return self._listen_stream("TCP", host, port, factory)

    def listen_tls(self, host: str, port: int, tls: TlsFiles) -> int:
        """Listen for SIP over TLS (RFC 3261 §26.2) with ``tls``; returns the bound port.

        ``tls.ca`` (if set) is also the trust root of TLS connections the driver opens.
        """
        options = server_tls_options(tls)
        inner = SipStreamServerFactory(self, "TLS", self.limits, self._reactor)
        self._tls_client = self._tls_client or tls
        wrapped = TLSMemoryBIOFactory(options, False, inner)  # type: ignore[arg-type]  # zope
        return self._listen_stream("TLS", host, port, wrapped)

    def _listen_stream(self, transport: str, host: str, port: int, factory: Any) -> int:
        lp = self._reactor.listenTCP(port, factory, interface=host or "")
        bound = int(lp.getHost().port)
        self._ports.append(lp)
        self.addresses.append((transport, host, bound))
        return bound

    # -- the transaction user's calls --------------------------------------------------

    def now(self) -> float:
        return float(self._reactor.seconds())

    def respond(self, key: TransactionKey, response: SipResponse) -> None:
        self._stack.respond(key, response, self.now())
        self.flush()

    def send_request(self, request: SipRequest, peer: Peer) -> TransactionKey:
        key = self._stack.send_request(request, peer, self.now())
        self.flush()
        return key

    def send_ack_2xx(self, ack: SipRequest, peer: Peer) -> None:
        self._stack.send_ack_2xx(ack, peer)
        self.flush()

    def send_stateless(self, msg: SipMessage, peer: Peer) -> None:
        self._stack.send_stateless(msg, peer)
        self.flush()

    def flow_alive(self, flow: FlowId) -> bool:
        conn = self._flows.get(flow)
        return conn is not None and not conn.closing

    def flush(self) -> None:
        """Drain events to the handler and bytes to the network, then re-arm the timer."""
        if self._pumping:
            self._pump_again = True  # re-entered from the handler: the outer loop repeats
            return
        self._pumping = True
        try:
            while True:
                self._pump_again = False
                events = self._stack.events()
                for event in events:
                    self._dispatch(event)
                out = self._stack.datagrams_to_send()
                for data, peer in out:
                    self._send(data, peer)
                if not events and not out and not self._pump_again:
                    break
        finally:
            self._pumping = False
        self._rearm()

    def _dispatch(self, event: StackEvent) -> None:
        if isinstance(event, MalformedMessage) and self._metrics is not None:
            self._metrics.parse_error(event.reason)
        try:
            self._handler(event)
        except Exception:  # one failing handler call must not take the transport down
            log.failure("SIP event handler failed on {event!r}", event=type(event).__name__)

    # -- the one timer -----------------------------------------------------------------

    def _rearm(self) -> None:
        if self._stopped:
            return
        when = self._stack.next_timer()
        timer = self._timer
        if when is None:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer, self._timer_when = None, None
            return
        if timer is not None and timer.active() and self._timer_when == when:
            return
        delay = max(0.0, when - self.now())
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._timer = self._reactor.callLater(delay, self._on_timer)
        self._timer_when = when

    def _on_timer(self) -> None:
        self._timer, self._timer_when = None, None
        self._stack.handle_timer(self.now())
        self.flush()

    # -- UDP ---------------------------------------------------------------------------

    def datagram_received(self, sock: SipDatagramProtocol, data: bytes, peer: Peer) -> None:
        if self._udp_many:
            key = (peer.host, peer.port)
            self._peer_socket[key] = sock
            self._peer_socket.move_to_end(key)
            if len(self._peer_socket) > _PEER_SOCKET_CACHE:
                self._peer_socket.popitem(last=False)
        metrics = self._metrics
        fast = self.udp_fast
        if fast is not None and fast(data, peer):
            if metrics is not None:  # the fast lane takes REGISTERs only
                metrics.request_taken("UDP", "REGISTER")
            return
        if metrics is not None:
            metrics.raw_received("UDP", data)
        self.receive_general(data, peer)

    def receive_general(self, data: bytes, peer: Peer) -> None:
        """A UDP datagram through the stack (also one the fast lane took, then handed back)."""
        self._stack.receive_datagram(data, peer, self.now())
        self.flush()

    def udp_backlog(self) -> int:
        """Bytes waiting unread in the UDP sockets' receive buffers: how far behind the
        node is (the event loop's own lag stays one read batch however deep this grows)."""
        return sum(s.backlog() for s in self._udp)

    def send_datagram(self, data: bytes, peer: Peer) -> None:
        """Bytes built outside the stack (the fast lane's responses), counted and routed
        like the stack's own."""
        self._send(data, peer)

    def _udp_candidates(self, v6: bool) -> list[SipDatagramProtocol]:
        same = self._udp_by_family.get(v6)
        if same is None:
            same = [s for s in self._udp if (s.family == socket.AF_INET6) == v6]
            if not v6:
                # a dual-stack IPv6 wildcard socket can reach IPv4 peers as a last resort
                same = same or [s for s in self._udp
                                if s.family == socket.AF_INET6 and s.wildcard]
            self._udp_by_family[v6] = same
        return same

    def _udp_socket_for(self, host: str, port: int) -> SipDatagramProtocol | None:
        same = self._udp_candidates(is_ipv6(host))
        if len(same) <= 1:
            return same[0] if same else None
        cached = self._peer_socket.get((host, port))
        if cached is not None:
            return cached
        loop = host.startswith("127.") or host == "::1"
        for s in same:
            if s.loopback == loop:
                return s
        for s in same:
            if s.wildcard:
                return s
        return same[0]

    def _send_udp(self, data: bytes, peer: Peer) -> None:
        if not self._is_ip_literal(peer.host):
            self._resolve_then_send(data, peer)
            return
        sock = self._udp_socket_for(peer.host, peer.port)
        if sock is None:
            log.warn("no UDP socket for {peer}", peer=str(peer))
            self._transport_error(peer)
            return
        try:
            sock.send(data, peer.host, peer.port)
        except (OSError, ValueError, MessageLengthError) as e:
            log.info("UDP send to {peer} failed: {error}", peer=str(peer), error=str(e))
            self._transport_error(peer)

    def _is_ip_literal(self, host: str) -> bool:
        known = self._ip_literal.get(host)
        if known is None:
            known = isIPAddress(host) or isIPv6Address(host)
            if len(self._ip_literal) >= _PEER_SOCKET_CACHE:
                self._ip_literal.clear()
            self._ip_literal[host] = known
        return known

    def _resolve_then_send(self, data: bytes, peer: Peer) -> None:
        # sent-by / maddr may name a host (§18.2.2); resolution is async, the send follows.
        d = self._reactor.resolve(peer.host)

        def resolved(address: str) -> None:
            self._send_udp(data, Peer(peer.transport, address, peer.port, peer.flow))
            self.flush()

        def failed(reason: Failure) -> None:
            log.info("cannot resolve {host}: {error}", host=peer.host,
                     error=reason.getErrorMessage())
            self._transport_error(peer)
            self.flush()

        d.addCallbacks(resolved, failed)

    # -- TCP / TLS ---------------------------------------------------------------------

    def new_flow(self, transport_name: str) -> FlowId:
        self._flow_seq += 1
        return FlowId(f"{transport_name.lower()}-{self._flow_seq}")

    def admit(self, transport_name: str, host: str) -> bool:
        """Connection caps (total and per source IP) for inbound connections."""
        if self._stopped or self._inbound >= self.limits.max_connections \
                or self._per_ip.get(host, 0) >= self.limits.max_connections_per_ip:
            if self._metrics is not None:
                self._metrics.connection_rejected(transport_name)
            return False
        self._inbound += 1
        self._per_ip[host] = self._per_ip.get(host, 0) + 1
        return True

    def stream_opened(self, conn: SipStreamProtocol) -> None:
        self._flows[conn.flow] = conn
        self._by_remote[(conn.transport_name, conn.peer.host, conn.peer.port)] = conn.flow
        if self._metrics is not None:
            self._metrics.connection_opened(conn.transport_name)
        if conn.target is not None:
            key = (conn.transport_name, *conn.target)
            pending = self._connecting.pop(key, None)
            self._by_remote[key] = conn.flow
            if pending is not None:
                for data in pending.queue:
                    conn.write(data)
        if self._stopped:
            conn.close(abort=True)

    def stream_items(self, conn: SipStreamProtocol,
                     items: list[SipMessage | ParseFailure | str]) -> None:
        now = self.now()
        for item in items:
            if isinstance(item, ParseFailure):
                self._stack.receive_parse_failure(item, conn.peer, now)
            elif not isinstance(item, str):
                if self._metrics is not None:
                    if isinstance(item, SipRequest):
                        self._metrics.request_received(conn.transport_name, item.method)
                    else:
                        self._metrics.response_received(conn.transport_name, item.status)
                self._stack.receive_message(item, conn.peer, now)
        self.flush()

    def stream_closed(self, conn: SipStreamProtocol, reason: Failure) -> None:
        if self._flows.pop(conn.flow, None) is None:
            return
        for key in [k for k, f in self._by_remote.items() if f == conn.flow]:
            del self._by_remote[key]
        if conn.counted_ip is not None:
            self._inbound -= 1
            left = self._per_ip.get(conn.counted_ip, 1) - 1
            if left > 0:
                self._per_ip[conn.counted_ip] = left
            else:
                self._per_ip.pop(conn.counted_ip, None)
        if self._metrics is not None:
            self._metrics.connection_closed(conn.transport_name)
        if not self._stopped:
            # RFC 3261 §18.4 / RFC 5626 §5.3: the stack fails what depended on this flow
            self._transport_error(conn.peer)
            if conn.target is not None:
                # requests we sent before the connection had a flow name the bare address
                self._transport_error(Peer(conn.transport_name, *conn.target))
            self.flush()

    def connect_failed(self, factory: SipStreamClientFactory, reason: Failure) -> None:
        key = (factory.transport_name, factory.host, factory.port)
        pending = self._connecting.get(key)
        if pending is not None and pending.factory is factory:
            del self._connecting[key]
        log.info("connecting to {host}:{port} over {transport} failed: {error}",
                 host=factory.host, port=factory.port, transport=factory.transport_name,
                 error=reason.getErrorMessage())
        if not self._stopped:
            self._transport_error(Peer(factory.transport_name, factory.host, factory.port))
            self.flush()

    def _send_stream(self, data: bytes, peer: Peer) -> None:
        if peer.flow is not None:
            conn = self._flows.get(peer.flow)
            if conn is None or conn.closing:
                self._transport_error(peer)  # RFC 5626 §5.3: a dead flow is not re-created
                return
            conn.write(data)
            return
        key = (peer.transport, peer.host, peer.port)
        flow = self._by_remote.get(key)
        if flow is not None and self.flow_alive(flow):
            self._flows[flow].write(data)
            return
        pending = self._connecting.get(key)
        if pending is None:
            if self._stopped:
                return
            pending = self._connect(peer)
        if pending.size + len(data) > _MAX_CONNECT_QUEUE:
            log.warn("dropping {n} bytes for {peer}: connection not up yet", n=len(data),
                     peer=str(peer))
            return
        pending.queue.append(data)
        pending.size += len(data)

    def _connect(self, peer: Peer) -> _Connecting:
        factory = SipStreamClientFactory(self, peer.transport, peer.host, peer.port, self.limits,
                                   self._reactor)
        wrapped: Any = factory
        if peer.transport == "TLS":
            wrapped = TLSMemoryBIOFactory(client_tls_options(self._tls_client, peer.host),
                                          True, factory)  # type: ignore[arg-type]  # zope
        pending = _Connecting(factory)
        self._connecting[(peer.transport, peer.host, peer.port)] = pending
        self._reactor.connectTCP(peer.host, peer.port, wrapped,
                                 timeout=self.limits.connect_timeout)
        return pending

    # -- sending -----------------------------------------------------------------------

    def _send(self, data: bytes, peer: Peer) -> None:
        if self._metrics is not None:
            self._metrics.raw_sent(peer.transport, data)
        if peer.transport == "UDP":
            self._send_udp(data, peer)
        elif peer.transport in ("TCP", "TLS"):
            self._send_stream(data, peer)
        else:
            log.warn("no transport {transport} for {peer}", transport=peer.transport,
                     peer=str(peer))
            self._transport_error(peer)

    def _transport_error(self, peer: Peer) -> None:
        self._stack.transport_error(peer, self.now())

    # -- shutdown ----------------------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """Close listeners and connections; idempotent. Fires when all are closed."""
        if self._stopped:
            return defer.succeed(None)
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waits: list[Deferred[Any]] = []
        for lp in self._ports:
            d = lp.stopListening()
            if isinstance(d, Deferred):
                waits.append(d)
        self._ports.clear()
        self._udp.clear()
        self._udp_by_family.clear()
        self._udp_many = False
        for conn in list(self._flows.values()):
            waits.append(conn.when_closed())
            conn.close(abort=True)
        for pending in self._connecting.values():
            pending.factory.stop_connecting()
        self._connecting.clear()
        done: Deferred[None] = defer.DeferredList(waits, consumeErrors=True).addCallback(
            lambda _: None)
        return done


__all__ = ["SipDriver", "SipStackLike", "StreamLimits", "TlsFiles", "normalise_host"]


UDP_BUFFER_BYTES = 4 * 1024 * 1024


def _grow_socket_buffers(port: Any) -> None:
    """Ask for 4 MiB UDP buffers: bursts (a mass re-registration) queue in the kernel
    instead of being dropped while the single-threaded loop is busy."""
    import socket

    sock = port.getHandle() if hasattr(port, "getHandle") else None
    if sock is None:
        return
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER_BYTES)
        except OSError:
            pass  # the kernel caps it at net.core.rmem_max; what we get is still best effort
