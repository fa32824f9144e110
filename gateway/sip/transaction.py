"""The four RFC 3261 transaction state machines (§17) with the RFC 6026 Accepted states.

- ``InviteClientTransaction``  §17.1.1 (+ RFC 6026 §8.4 Accepted, Timer M)
- ``NonInviteClientTransaction`` §17.1.2
- ``InviteServerTransaction``  §17.2.1 (+ RFC 6026 §8.7 Accepted, Timer L)
- ``NonInviteServerTransaction`` §17.2.2

Each machine is a table ``(state, input) -> (action, next state)``; an input
with no entry is absorbed. Timers are the RFC letters, handled by
``_on_timer_<letter>``. The machines do no I/O: they hand bytes, events and
timers to their ``TransactionHost`` (the ``SipStack``). Messages are
serialised once and the bytes kept for retransmission.

Also here: transaction matching keys (§17.1.3, §17.2.3, RFC 2543 fallback,
§9.2 CANCEL) and the ACK a client transaction builds for a non-2xx final
response (§17.1.1.3), plus ``build_cancel`` (§9.1).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import ClassVar, Protocol

from gateway.sip.errors import SipParseError
from gateway.sip.events import (
    AckReceived,
    ResponseReceived,
    StackEvent,
    TransactionKey,
    TransactionTimeout,
)
from gateway.sip.headers import Headers, Via
from gateway.sip.message import SipRequest, SipResponse
from gateway.sip.peer import Peer
from gateway.sip.timers import TimerConfig

MAGIC_COOKIE = "z9hG4bK"


class State(enum.Enum):
    """Transaction states by their RFC 3261 / RFC 6026 names."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(enum.Enum):
    """What drives a machine: a response by class, a request retransmission, an ACK."""

    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "300-699"
    REQUEST = "request"
    ACK = "ACK"


def response_input(status: int) -> Input:
    if status < 200:
        return Input.PROVISIONAL
    if status < 300:
        return Input.SUCCESS
    return Input.FAILURE


class TransactionHost(Protocol):
    """What a transaction needs from its stack: send, report, arm timers, be forgotten."""

    @property
    def timer_config(self) -> TimerConfig: ...

    def send(self, data: bytes, peer: Peer) -> None: ...

    def emit(self, event: StackEvent) -> None: ...

    def schedule(self, txn: Transaction, letter: str, when: float) -> None: ...

    def terminated(self, txn: Transaction) -> None: ...


# -- matching keys ---------------------------------------------------------------------

def sent_by_text(via: Via) -> str:
    port = via.port
    if port is None:
        port = 5061 if via.transport in ("TLS", "WSS") else 5060
    return f"{via.host}:{port}"


def server_key(request: SipRequest, via: Via, method: str | None = None) -> TransactionKey:
    """Server transaction key of ``request`` (RFC 3261 §17.2.3).

    ``method`` overrides the request's method (ACK and CANCEL look up their
    INVITE, §9.2). With the magic cookie: branch + sent-by + method. Without it
    (RFC 2543 peers): Request-URI, From tag, Call-ID, CSeq number, method and the
    top Via; the To tag is checked separately for ACK (it carries ours).
    May raise ``SipParseError`` on unparsable From/CSeq.
    """
    m = method or request.method
    if m == "ACK":
        m = "INVITE"
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return TransactionKey(f"s|{branch}|{sent_by_text(via)}|{m}")
    return TransactionKey(
        f"s2543|{request.uri}|{request.from_.tag}|{request.call_id}|"
        f"{request.cseq.number}|{m}|{via}")


def client_key(branch: str, method: str) -> TransactionKey:
    """Client transaction key: top Via branch + CSeq method (§17.1.3; ACK is never a client txn)."""
    return TransactionKey(f"c|{branch}|{method}")


# -- message builders ------------------------------------------------------------------

def build_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client transaction sends for a non-2xx final response (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE; To from the
    response (with its tag); only the INVITE's top Via (same branch); the
    INVITE's Route headers.
    """
    items: list[tuple[str, str]] = [("Via", request.headers.get_all("Via")[0])]
    items.append(("Max-Forwards", "70"))
    h = request.headers
    items.append(("From", h.get("From") or ""))
    items.append(("To", response.headers.get("To") or h.get("To") or ""))
    items.append(("Call-ID", h.get("Call-ID") or ""))
    items.append(("CSeq", f"{request.cseq.number} ACK"))
    for route in h.get_raw("Route"):
        items.append(("Route", route))
    return SipRequest(method="ACK", uri=request.uri, headers=Headers._trusted(items))


def build_cancel(request: SipRequest) -> SipRequest:
    """A CANCEL for a pending ``request`` (§9.1): same Request-URI, Call-ID, From, To,
    CSeq number and a single Via equal to the request's top Via; Route copied."""
    h = request.headers
    items: list[tuple[str, str]] = [("Via", h.get_all("Via")[0]), ("Max-Forwards", "70")]
    for name in ("From", "To", "Call-ID"):
        items.append((name, h.get(name) or ""))
    items.append(("CSeq", f"{request.cseq.number} CANCEL"))
    for route in h.get_raw("Route"):
        items.append(("Route", route))
    return SipRequest(method="CANCEL", uri=request.uri, headers=Headers._trusted(items))


# -- the machines ----------------------------------------------------------------------

class Transaction:
    """State shared by the four machines: key, original request, destination, timers."""

    __slots__ = ("key", "host", "request", "peer", "state", "reliable", "timers", "interval",
                 "cfg")

    _TIMERS: ClassVar[dict[str, Callable[..., None]]] = {}
    is_server: ClassVar[bool] = False
    is_invite: ClassVar[bool] = False

    def __init__(self, key: TransactionKey, host: TransactionHost, request: SipRequest,
                 peer: Peer, state: State) -> None:
        self.key = key
        self.host = host
        self.request = request
        self.peer = peer
        self.state = state
        self.reliable = peer.reliable
        self.timers: dict[str, int] = {}
        self.interval = 0.0
        self.cfg = host.timer_config

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key} {self.state.name}>"

    def on_timer(self, letter: str, now: float) -> None:
        if self.state is not State.TERMINATED:
            self._TIMERS[letter](self, now)

    def _arm(self, letter: str, delay: float, now: float) -> None:
        if delay <= 0:
            # zero-length timers on reliable transports (§17.1.1.2 Timer D etc.)
            self.timers.pop(letter, None)
            self._TIMERS[letter](self, now)
        else:
            self.host.schedule(self, letter, now + delay)

    def _cancel(self, *letters: str) -> None:
        for letter in letters:
            self.timers.pop(letter, None)

    def terminate(self) -> None:
        """Enter TERMINATED and leave the stack (idempotent)."""
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        self.timers.clear()
        self.host.terminated(self)

    def _timeout(self, now: float) -> None:
        self.host.emit(TransactionTimeout(self.key))
        self.terminate()

    def _terminate_timer(self, now: float) -> None:
        self.terminate()


class ClientTransaction(Transaction):
    """Common part of the client machines: the request bytes, sent once serialised."""

    __slots__ = ("data",)

    def __init__(self, key: TransactionKey, host: TransactionHost, request: SipRequest,
                 peer: Peer, state: State) -> None:
        super().__init__(key, host, request, peer, state)
        self.data = bytes(request)

    # (state, input) -> (action(self, response, source, now), next state)
    _TABLE: ClassVar[dict[tuple[State, Input], tuple[Callable[..., None], State]]] = {}

    def receive_response(self, response: SipResponse, source: Peer, now: float) -> None:
        """A response matched this transaction (§17.1.3)."""
        entry = self._TABLE.get((self.state, response_input(response.status)))
        if entry is None:
            return  # absorbed
        action, nxt = entry
        self.state = nxt
        action(self, response, source, now)

    def _pass_up(self, response: SipResponse, source: Peer, now: float) -> None:
        self.host.emit(ResponseReceived(self.key, response, source))


class InviteClientTransaction(ClientTransaction):
    """INVITE client transaction, RFC 3261 §17.1.1 (Figure 5) as amended by RFC 6026 §8.4."""

    __slots__ = ("ack",)
    is_invite = True

    def __init__(self, key: TransactionKey, host: TransactionHost, request: SipRequest,
                 peer: Peer) -> None:
        super().__init__(key, host, request, peer, State.CALLING)
        self.ack: bytes | None = None

    def start(self, now: float) -> None:
        self.host.send(self.data, self.peer)
        if not self.reliable:
            self.interval = self.cfg.t1
            self._arm("A", self.interval, now)  # §17.1.1.2
        self._arm("B", self.cfg.timer_b, now)

    def _on_timer_a(self, now: float) -> None:
        # §17.1.1.2: retransmit, doubling the interval (no T2 cap for INVITE)
        self.host.send(self.data, self.peer)
        self.interval *= 2
        self._arm("A", self.interval, now)

    def _on_timer_b(self, now: float) -> None:
        self._cancel("A")
        self._timeout(now)

    def _on_timer_d(self, now: float) -> None:
        self.terminate()

    def _on_timer_m(self, now: float) -> None:
        self.terminate()

    def _proceeding(self, response: SipResponse, source: Peer, now: float) -> None:
        # §17.1.1.2: no more retransmissions; Timer B only guards the Calling state
        self._cancel("A", "B")
        self._pass_up(response, source, now)

    def _accepted(self, response: SipResponse, source: Peer, now: float) -> None:
        # RFC 6026 §8.4: stay to pass 2xx retransmissions (and forks) up for Timer M
        self._cancel("A", "B")
        self._pass_up(response, source, now)
        self._arm("M", self.cfg.timer_m, now)

    def _completed(self, response: SipResponse, source: Peer, now: float) -> None:
        self._cancel("A", "B")
        self.ack = bytes(build_ack(self.request, response))
        self.host.send(self.ack, self.peer)
        self._pass_up(response, source, now)
        self._arm("D", self.cfg.timer_d(self.reliable), now)

    def _resend_ack(self, response: SipResponse, source: Peer, now: float) -> None:
        # §17.1.1.2: a retransmitted final response is answered with the ACK, not passed up
        if self.ack is not None:
            self.host.send(self.ack, self.peer)


class NonInviteClientTransaction(ClientTransaction):
    """Non-INVITE client transaction, RFC 3261 §17.1.2 (Figure 6)."""

    __slots__ = ()

    def __init__(self, key: TransactionKey, host: TransactionHost, request: SipRequest,
                 peer: Peer) -> None:
        super().__init__(key, host, request, peer, State.TRYING)

    def start(self, now: float) -> None:
        self.host.send(self.data, self.peer)
        if not self.reliable:
            self.interval = self.cfg.t1
            self._arm("E", self.interval, now)
        self._arm("F", self.cfg.timer_f, now)

    def _on_timer_e(self, now: float) -> None:
        # §17.1.2.2: doubling up to T2 while Trying, every T2 once Proceeding
        self.host.send(self.data, self.peer)
        if self.state is State.PROCEEDING:
            self.interval = self.cfg.t2
        else:
            self.interval = min(self.interval * 2, self.cfg.t2)
        self._arm("E", self.interval, now)

    def _on_timer_f(self, now: float) -> None:
        self._cancel("E")
        self._timeout(now)

    def _on_timer_k(self, now: float) -> None:
        self.terminate()

    def _completed(self, response: SipResponse, source: Peer, now: float) -> None:
        self._cancel("E", "F")
        self._pass_up(response, source, now)
        self._arm("K", self.cfg.timer_k(self.reliable), now)


class ServerTransaction(Transaction):
    """Common part of the server machines: the last response's bytes for retransmission."""

    __slots__ = ("last", "fell_back", "final")
    is_server = True

    # network input: (state, input) -> (action(self, request, source, now), next state)
    _NET: ClassVar[dict[tuple[State, Input], tuple[Callable[..., None], State]]] = {}
    # TU input: (state, response class) -> (action(self, response, data, now), next state)
    _TU: ClassVar[dict[tuple[State, Input], tuple[Callable[..., None], State]]] = {}

    def __init__(self, key: TransactionKey, host: TransactionHost, request: SipRequest,
                 peer: Peer, state: State) -> None:
        super().__init__(key, host, request, peer, state)
        self.last: bytes | None = None
        self.fell_back = False
        self.final: SipResponse | None = None

    def receive_request(self, request: SipRequest, source: Peer, now: float) -> None:
        """A retransmission of the request, or an ACK (INVITE only), matched (§17.2.3)."""
        inp = Input.ACK if request.method == "ACK" else Input.REQUEST
        entry = self._NET.get((self.state, inp))
        if entry is None:
            return  # absorbed
        action, nxt = entry
        self.state = nxt
        action(self, request, source, now)

    def send_response(self, response: SipResponse, now: float) -> bool:
        """The TU's response; False when the state machine discards it (§17.2.1, §17.2.2)."""
        entry = self._TU.get((self.state, response_input(response.status)))
        if entry is None:
            return False
        data = bytes(response)
        action, nxt = entry
        self.state = nxt
        if response.status >= 200 and self.is_invite:
            # Only INVITE needs it (RFC 2543 ACK matching by To tag, §17.2.3). A completed
            # non-INVITE transaction lingers 32 s (Timer J) holding just the bytes, so the
            # objects of a busy second of OPTIONS/REGISTER are freed, not kept for the GC
            # to scan.
            self.final = response
        action(self, response, data, now)
        return True

    @property
    def to_tag(self) -> str | None:
        """The To tag of our final response (RFC 2543 ACK matching, §17.2.3)."""
        if self.final is None:
            return None
        try:
            return self.final.to.tag
        except SipParseError:
            return None

    def _send(self, response: SipResponse, data: bytes, now: float) -> None:
        self.last = data
        self.host.send(data, self.peer)

    def _resend_last(self, request: SipRequest, source: Peer, now: float) -> None:
        if self.last is not None:
            self.host.send(self.last, self.peer)


class InviteServerTransaction(ServerTransaction):
    """INVITE server transaction, RFC 3261 §17.2.1 (Figure 7) as amended by RFC 6026 §8.7.

    With ``retransmit_2xx`` the transaction also does the UAS core's 2xx
    retransmission of §13.3.1.4 while Accepted (T1 doubling to T2, on every
    transport, until the ACK), so a lost 200 over UDP does not lose the call;
    no ACK by Timer L (= 64*T1) is reported as ``TransactionTimeout``.
    """

    __slots__ = ("awaiting_ack",)
    is_invite = True

    def __init__(self, key: TransactionKey, host: TransactionHost, request: SipRequest,
                 peer: Peer, *, retransmit_2xx: bool = False) -> None:
        super().__init__(key, host, request, peer, State.PROCEEDING)
        self.awaiting_ack = retransmit_2xx

    def _send_final(self, response: SipResponse, data: bytes, now: float) -> None:
        self._send(response, data, now)
        if not self.reliable:
            self.interval = self.cfg.t1
            self._arm("G", self.interval, now)
        self._arm("H", self.cfg.timer_h, now)

    def _send_accept(self, response: SipResponse, data: bytes, now: float) -> None:
        # RFC 6026 §8.7: Timer L absorbs INVITE retransmissions and lets 2xx through
        self._send(response, data, now)
        self._arm("L", self.cfg.timer_l, now)
        if self.awaiting_ack:
            self.interval = self.cfg.t1
            self._arm("2xx", self.interval, now)

    def _on_timer_2xx(self, now: float) -> None:
        # §13.3.1.4: resend the (latest) 2xx, doubling up to T2, until the ACK arrives
        if self.last is not None:
            self.host.send(self.last, self.peer)
        self.interval = min(self.interval * 2, self.cfg.t2)
        self._arm("2xx", self.interval, now)

    def ack_for_2xx(self) -> None:
        """The ACK for our 2xx arrived (matched by the stack on Call-ID and CSeq)."""
        self.awaiting_ack = False
        self._cancel("2xx")

    def _on_timer_g(self, now: float) -> None:
        # §17.2.1: retransmit the final response, doubling up to T2, until ACK or Timer H
        if self.last is not None:
            self.host.send(self.last, self.peer)
        self.interval = min(self.interval * 2, self.cfg.t2)
        self._arm("G", self.interval, now)

    def _on_timer_h(self, now: float) -> None:
        self._cancel("G")
        self._timeout(now)

    def _on_timer_i(self, now: float) -> None:
        self.terminate()

    def _on_timer_l(self, now: float) -> None:
        if self.awaiting_ack:
            # §13.3.1.4: no ACK within 64*T1: the TU should end the session
            self._cancel("2xx")
            self._timeout(now)
            return
        self.terminate()

    def _confirm(self, request: SipRequest, source: Peer, now: float) -> None:
        # §17.2.1: the ACK is absorbed; Timer I soaks up its retransmissions
        self._cancel("G", "H")
        self._arm("I", self.cfg.timer_i(self.reliable), now)

    def _ack_up(self, request: SipRequest, source: Peer, now: float) -> None:
        # RFC 6026 §8.7: an ACK matching in Accepted goes to the TU
        self.ack_for_2xx()
        self.host.emit(AckReceived(request, source))


class NonInviteServerTransaction(ServerTransaction):
    """Non-INVITE server transaction, RFC 3261 §17.2.2 (Figure 8)."""

    __slots__ = ()

    def __init__(self, key: TransactionKey, host: TransactionHost, request: SipRequest,
                 peer: Peer) -> None:
        super().__init__(key, host, request, peer, State.TRYING)

    def _send_final(self, response: SipResponse, data: bytes, now: float) -> None:
        self._send(response, data, now)
        if not self.reliable:
            # Completed: only the bytes are needed for the next 32 s (Timer J). Dropping
            # the request's cached views (top Via …) leaves fewer live objects for the GC.
            self.request.invalidate()
        self._arm("J", self.cfg.timer_j(self.reliable), now)

    def _on_timer_j(self, now: float) -> None:
        self.terminate()


# -- the tables ------------------------------------------------------------------------

_S = State
_I = Input
ICT, NICT = InviteClientTransaction, NonInviteClientTransaction
IST, NIST = InviteServerTransaction, NonInviteServerTransaction

ICT._TABLE = {
    (_S.CALLING, _I.PROVISIONAL): (ICT._proceeding, _S.PROCEEDING),
    (_S.PROCEEDING, _I.PROVISIONAL): (ICT._pass_up, _S.PROCEEDING),
    (_S.CALLING, _I.SUCCESS): (ICT._accepted, _S.ACCEPTED),
    (_S.PROCEEDING, _I.SUCCESS): (ICT._accepted, _S.ACCEPTED),
    (_S.ACCEPTED, _I.SUCCESS): (ICT._pass_up, _S.ACCEPTED),
    (_S.CALLING, _I.FAILURE): (ICT._completed, _S.COMPLETED),
    (_S.PROCEEDING, _I.FAILURE): (ICT._completed, _S.COMPLETED),
    (_S.COMPLETED, _I.FAILURE): (ICT._resend_ack, _S.COMPLETED),
}
ICT._TIMERS = {
    "A": ICT._on_timer_a, "B": ICT._on_timer_b, "D": ICT._on_timer_d, "M": ICT._on_timer_m,
}

NICT._TABLE = {
    (_S.TRYING, _I.PROVISIONAL): (NICT._pass_up, _S.PROCEEDING),
    (_S.PROCEEDING, _I.PROVISIONAL): (NICT._pass_up, _S.PROCEEDING),
    (_S.TRYING, _I.SUCCESS): (NICT._completed, _S.COMPLETED),
    (_S.PROCEEDING, _I.SUCCESS): (NICT._completed, _S.COMPLETED),
    (_S.TRYING, _I.FAILURE): (NICT._completed, _S.COMPLETED),
    (_S.PROCEEDING, _I.FAILURE): (NICT._completed, _S.COMPLETED),
}
NICT._TIMERS = {
    "E": NICT._on_timer_e, "F": NICT._on_timer_f, "K": NICT._on_timer_k,
}

IST._NET = {
    (_S.PROCEEDING, _I.REQUEST): (IST._resend_last, _S.PROCEEDING),
    (_S.COMPLETED, _I.REQUEST): (IST._resend_last, _S.COMPLETED),
    (_S.COMPLETED, _I.ACK): (IST._confirm, _S.CONFIRMED),
    (_S.ACCEPTED, _I.ACK): (IST._ack_up, _S.ACCEPTED),
}
IST._TU = {
    (_S.PROCEEDING, _I.PROVISIONAL): (IST._send, _S.PROCEEDING),
    (_S.PROCEEDING, _I.SUCCESS): (IST._send_accept, _S.ACCEPTED),
    (_S.ACCEPTED, _I.SUCCESS): (IST._send, _S.ACCEPTED),
    (_S.PROCEEDING, _I.FAILURE): (IST._send_final, _S.COMPLETED),
}
IST._TIMERS = {
    "G": IST._on_timer_g, "H": IST._on_timer_h, "I": IST._on_timer_i, "L": IST._on_timer_l,
    "2xx": IST._on_timer_2xx,
}

NIST._NET = {
    (_S.PROCEEDING, _I.REQUEST): (NIST._resend_last, _S.PROCEEDING),
    (_S.COMPLETED, _I.REQUEST): (NIST._resend_last, _S.COMPLETED),
}
NIST._TU = {
    (_S.TRYING, _I.PROVISIONAL): (NIST._send, _S.PROCEEDING),
    (_S.PROCEEDING, _I.PROVISIONAL): (NIST._send, _S.PROCEEDING),
    (_S.TRYING, _I.SUCCESS): (NIST._send_final, _S.COMPLETED),
    (_S.PROCEEDING, _I.SUCCESS): (NIST._send_final, _S.COMPLETED),
    (_S.TRYING, _I.FAILURE): (NIST._send_final, _S.COMPLETED),
    (_S.PROCEEDING, _I.FAILURE): (NIST._send_final, _S.COMPLETED),
}
NIST._TIMERS = {"J": NIST._on_timer_j}
