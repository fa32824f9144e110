"""Where requests and responses go (RFC 3261 §18.2.1, §18.2.2, §18.1.1; RFC 3581 §4; RFC 3263 §4).

- ``stamp_via``: a server receiving a request records where it really came
  from in the top Via (``received``, and ``rport`` when the client asked).
- ``response_peer``: the destination of a response, from the top Via and the
  peer the request came from.
- ``request_peer`` / ``next_hop``: the destination of a request from a URI or
  the route set, without DNS (hosts are IP literals or were resolved by the
  adapter).
"""

from __future__ import annotations

import ipaddress

from gateway.sip.errors import LocalProtocolError, SipParseError
from gateway.sip.headers import NameAddr, Via
from gateway.sip.message import SipRequest
from gateway.sip.peer import Peer
from gateway.sip.uri import Uri

DEFAULT_PORT = 5060
DEFAULT_TLS_PORT = 5061
_URI_TRANSPORTS = {"udp": "UDP", "tcp": "TCP", "tls": "TLS", "sctp": "SCTP",
                   "ws": "WS", "wss": "WSS"}


def unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") else host


def default_port(transport: str) -> int:
    """5061 for TLS-based transports, 5060 otherwise (RFC 3261 §19.1.2, §18.2.2)."""
    return DEFAULT_TLS_PORT if transport in ("TLS", "WSS") else DEFAULT_PORT


def _same_address(a: str, b: str) -> bool:
    if a == b:
        return True
    if ":" not in a or ":" not in b:
        return a.lower() == b.lower()
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def stamp_via(via: Via, source: Peer) -> Via | None:
    """The top Via with ``received``/``rport`` added, or None when nothing changes.

    RFC 3261 §18.2.1: add ``received`` when the sent-by host differs from the
    packet's source address. RFC 3581 §4: when ``rport`` is present (empty),
    set it to the source port and add ``received`` even if the host matches.
    """
    params = via.params
    has_rport = False
    for k, _ in params:
        if k == "rport":
            has_rport = True
            break
    if not has_rport and _same_address(unbracket(via.host), source.host):
        return None
    # one pass, no dataclasses.replace: this runs for nearly every request
    out: list[tuple[str, str | None]] = []
    for k, v in params:
        if k == "rport":
            out.append((k, str(source.port)))
        elif k != "received":
            out.append((k, v))
    out.append(("received", source.host))
    return Via(via.transport, via.host, via.port, tuple(out), via.version)


def stamp_request(request: SipRequest, via: Via, peer: Peer) -> Via:
    """``stamp_via`` applied to ``request``'s top Via (``via``) in place; the top Via now.

    §18.2.1: the stamped Via travels with the request and into every response.
    """
    stamped = stamp_via(via, peer)
    if stamped is None:
        return via
    headers = request.headers
    headers.remove_first_value("Via")
    headers.prepend("Via", str(stamped))
    request.invalidate()
    request._top = stamped
    return stamped


def _routing_params(via: Via) -> tuple[str | None, str | None, int | None]:
    maddr = received = None
    rport: int | None = None
    for k, v in via.params:
        if k == "received":
            received = v
        elif k == "rport":
            if v and v.isdigit():
                rport = int(v)
        elif k == "maddr":
            maddr = v
    return maddr, received, rport


def response_peer(via: Via, source: Peer) -> Peer:
    """Destination of a response to a request whose (stamped) top Via is ``via`` (§18.2.2).

    Reliable transports reuse the request's connection (``source.flow``); the
    adapter reports a dead flow and ``fallback_response_peer`` takes over.
    """
    if source.reliable:
        if source.flow is not None:
            return source
        return fallback_response_peer(via, source)
    maddr, received, rport = _routing_params(via)
    if maddr:
        return Peer(source.transport, unbracket(maddr), via.port or default_port(source.transport))
    if received:
        if rport is not None:
            if rport == source.port and received == source.host:
                return source  # the common NAT case: straight back where it came from
            return Peer(source.transport, unbracket(received), rport)
        return Peer(source.transport, unbracket(received),
                    via.port or default_port(source.transport))
    if rport is not None:
        return Peer(source.transport, unbracket(via.host), rport)
    port = via.port or default_port(source.transport)
    if port == source.port and via.host == source.host:
        return source  # sent-by is where it came from: no new object per transaction
    return Peer(source.transport, unbracket(via.host), port)


def fallback_response_peer(via: Via, source: Peer) -> Peer:
    """§18.2.2 reliable case when the request's connection is gone: a new connection to
    ``received`` (else the sent-by host) and the sent-by port (else the default)."""
    host = via.received or via.host
    return Peer(source.transport, unbracket(host), via.port or default_port(source.transport))


def request_peer(uri: Uri) -> Peer:
    """Destination of a request sent to ``uri`` (RFC 3263 §4 without DNS).

    Transport from the ``transport`` parameter, TLS for ``sips:``, else UDP;
    ``maddr`` overrides the host; the port defaults to 5060 (5061 for TLS).
    """
    if not uri.is_sip or not uri.host:
        raise LocalProtocolError(f"cannot route a request to {uri.scheme}: URI")
    param = uri.transport
    transport = _URI_TRANSPORTS.get(param or "udp")
    if transport is None:
        raise LocalProtocolError(f"unsupported transport {param!r} in {uri}")
    if uri.scheme == "sips":
        # RFC 3261 §26.2.2: sips means TLS on every hop (tcp becomes TLS)
        transport = "WSS" if transport in ("WS", "WSS") else "TLS"
    host = uri.param("maddr") or uri.host
    return Peer(transport, unbracket(host), uri.port or default_port(transport))


def next_hop(request: SipRequest) -> Peer:
    """Destination of an outgoing request: the first Route if it is a loose router
    (``;lr``), else the Request-URI (RFC 3261 §8.1.2, §12.2.1.1)."""
    routes = request.headers.get_all("Route")
    if routes:
        try:
            first = NameAddr.parse(routes[0]).uri
        except SipParseError as e:
            raise LocalProtocolError(f"bad Route header: {e.reason}") from None
        if first.has_param("lr"):
            return request_peer(first)
        # strict router (§12.2.1.1): the Request-URI already names it
    return request_peer(request.uri)
