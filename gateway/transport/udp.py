"""SIP over UDP (RFC 3261 §18.1.1, §18.2.1): one ``DatagramProtocol`` per listening socket.

The adapter only moves datagrams: each one goes to the owner (the driver) with
the sender as a ``Peer``; the owner decides what to send back and through
which socket. No SIP rules live here.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from gateway.sip.peer import Peer

log = Logger(namespace="sipgw.transport")  # the driver's

# RFC 3261 §18.1.1 lets UDP carry up to 65535 bytes; Twisted's default read size is 8192.
MAX_DATAGRAM = 65535
# Bytes read per readiness callback before the loop serves others (Redis replies, timers):
# Twisted's 256 KiB is ~400 SIP datagrams, a long time for a reply to wait.
READ_BATCH = 48 * 1024
_SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux; sk_rmem_alloc comes first


def normalise_host(host: str) -> str:
    """Unbracketed address; IPv4-mapped IPv6 (dual-stack sockets) reported as plain IPv4."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def is_ipv6(host: str) -> bool:
    return ":" in host


class DatagramSink(Protocol):
    """What a UDP socket reports to: the driver."""

    def datagram_received(self, sock: SipDatagramProtocol, data: bytes, peer: Peer) -> None: ...


class SipDatagramProtocol(DatagramProtocol):
    """One UDP listening socket carrying SIP (RFC 3261 §18.1.1 / §18.2.1)."""

    def __init__(self, sink: DatagramSink, host: str) -> None:
        self._sink = sink
        self.host = host
        self.family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
        self.port = 0
        self._sendto: Callable[[bytes, tuple[str, int]], int] | None = None
        self._sock: socket.socket | None = None
        self._loop: Any = None  # the asyncio loop reading the socket (read_directly)
        self._fd = -1

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802 - Twisted API
        # addr is (host, port) for IPv4 and (host, port, flowinfo, scope_id) for IPv6
        host = addr[0]
        if host.startswith("::ffff:"):
            host = normalise_host(host)
        self._sink.datagram_received(self, datagram, Peer("UDP", host, addr[1]))

    def read_directly(self, reactor: Any) -> bool:
        """Have the asyncio loop call ``_read_ready`` when the socket is readable, instead
        of Twisted's reader (its per-wakeup logging context and per-datagram checks cost
        a sixth of a bare echo here). False: not on the asyncio reactor, Twisted reads."""
        loop = getattr(reactor, "_asyncioEventloop", None)
        sock = self._sock
        if loop is None or sock is None:
            return False
        reactor.removeReader(self.transport)
        self._fd = sock.fileno()
        self._loop = loop
        loop.add_reader(self._fd, self._read_ready)
        return True

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        budget = READ_BATCH
        while budget > 0:
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue  # ICMP for an earlier datagram: meaningless on unconnected UDP
            except OSError as e:
                log.warn("UDP read on {host}:{port} failed: {error}", host=self.host,
                         port=self.port, error=str(e))
                return
            budget -= len(data)
            try:
                self.datagramReceived(data, addr)
            except Exception:  # noqa: BLE001 - one datagram's failure must not stop the rest
                log.failure("UDP datagram from {addr} failed", addr=addr)

    def startProtocol(self) -> None:  # noqa: N802 - Twisted API
        # The hot path writes to the socket itself: Twisted's Port.write re-validates the
        # address (three isIPAddress calls) on every datagram, which the driver has done.
        sock = getattr(self.transport, "socket", None)
        self._sock = sock if isinstance(sock, socket.socket) else None
        self._sendto = sock.sendto if isinstance(sock, socket.socket) else None

    def stopProtocol(self) -> None:  # noqa: N802 - Twisted API
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self._sendto = None
        self._sock = None

    def backlog(self) -> int:
        """Bytes of datagrams waiting in the kernel's receive buffer (Linux SO_MEMINFO,
        kernel accounting: a few hundred bytes more than the payload each); 0 when the
        platform cannot tell."""
        sock = self._sock
        if sock is None:
            return 0
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 4)
        except OSError:
            return 0
        return int.from_bytes(raw[:4], sys.byteorder)

    def send(self, data: bytes, host: str, port: int) -> None:
        """Write one datagram; raises OSError/ValueError/MessageLengthError on failure.

        ``host`` is an IP address literal (the driver resolves names first).
        """
        if self.family == socket.AF_INET6 and not is_ipv6(host):
            host = "::ffff:" + host  # a dual-stack IPv6 socket reaches IPv4 peers this way
        sendto = self._sendto
        if sendto is None:
            transport: Any = self.transport  # IUDPTransport; zope interfaces aren't mypy types
            transport.write(data, (host, port))
            return
        try:
            sendto(data, (host, port))  # EINTR is retried by Python itself (PEP 475)
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                raise MessageLengthError("message too long") from None
            if e.errno != errno.ECONNREFUSED:
                raise
            # ECONNREFUSED: ICMP for an earlier datagram, meaningless on unconnected UDP

    @property
    def wildcard(self) -> bool:
        return self.host in ("", "0.0.0.0", "::")

    @property
    def loopback(self) -> bool:
        return self.host.startswith("127.") or self.host == "::1" or self.host == "localhost"
