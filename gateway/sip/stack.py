"""The sans-I/O SIP stack: transport rules and transactions behind one object (RFC 3261 §17, §18).

An I/O adapter feeds ``SipStack`` datagrams (or framed stream messages) with
the current monotonic time, then drains ``events()`` for the transaction user
and ``datagrams_to_send()`` for the wire, and re-arms one timer at
``next_timer()`` (the aioquic shape). The stack:

- stamps ``received``/``rport`` into the top Via of incoming requests
  (§18.2.1, RFC 3581 §4) and routes responses back per §18.2.2;
- matches requests and responses to transactions (§17.1.3, §17.2.3, the RFC
  2543 fallback, CANCEL to its INVITE per §9.2) and runs the four transaction
  machines of ``gateway.sip.transaction``;
- answers what needs no transaction user: 400 to malformed requests (§8.2.6,
  RFC 3261 §21.4.1), 100 Trying to INVITE (§17.2.1), 481 to a CANCEL that
  matches nothing (§9.2).

Nothing a peer sends makes it raise; misuse by the local TU raises
``LocalProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sip.errors import LocalProtocolError, SipError, SipParseError
from gateway.sip.events import (
    AckReceived,
    MalformedMessage,
    RequestReceived,
    StackEvent,
    StrayResponse,
    TransactionKey,
    TransactionTerminated,
    TransportFailed,
)
from gateway.sip.headers import Via
from gateway.sip.message import (
    ParseFailure,
    SipMessage,
    SipRequest,
    SipResponse,
    build_error_response,
    build_response,
    parse_message,
)
from gateway.sip.peer import FlowId, Peer
from gateway.sip.randomness import POOL
from gateway.sip.routing import fallback_response_peer, response_peer, stamp_request
from gateway.sip.timers import TimerConfig, TimerHeap
from gateway.sip.transaction import (
    MAGIC_COOKIE,
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    State,
    Transaction,
    client_key,
    server_key,
)


@dataclass
class StackConfig:
    """Configuration of a ``SipStack`` (built once in the composition root).

    ``via_hosts`` maps a transport name (UDP, TCP, TLS …) to the sent-by host
    and port we put in the Via of requests we originate (§18.1.1); it is read at
    send time, so listeners may fill it in after the stack is created.
    """

    timers: TimerConfig = field(default_factory=TimerConfig)
    via_hosts: dict[str, tuple[str, int]] = field(default_factory=dict)
    server_header: str | None = None
    auto_100_trying: bool = True
    """Send 100 Trying as soon as an INVITE server transaction starts (§17.2.1)."""
    retransmit_2xx: bool = True
    """Retransmit our 2xx to INVITE until its ACK arrives (the UAS core's §13.3.1.4 duty)."""


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie plus 96 random bits (§8.1.1.7)."""
    return MAGIC_COOKIE + POOL.urlsafe(12)


def new_tag() -> str:
    """A fresh From/To tag with 64 random bits (§19.3)."""
    return POOL.urlsafe(8)


def _top_via(msg: SipMessage) -> Via | None:
    """Only the topmost Via: the stack never needs the others, so it never parses them."""
    return msg.first_via()


class SipStack:
    """Transaction layer and transport rules of RFC 3261 §17/§18 as a sans-I/O object."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self._txns: dict[TransactionKey, Transaction] = {}
        self._by_flow: dict[FlowId, set[TransactionKey]] = {}
        # INVITE server transactions retransmitting a 2xx, by (Call-ID, CSeq number): the
        # ACK for a 2xx has its own branch (§17.1.1.3), so it is matched like a dialog's
        self._awaiting_ack: dict[tuple[str, int], InviteServerTransaction] = {}
        self._events: list[StackEvent] = []
        self._out: list[tuple[bytes, Peer]] = []
        self._heap = TimerHeap()

    # -- TransactionHost ----------------------------------------------------------------
    @property
    def timer_config(self) -> TimerConfig:
        return self.config.timers

    def send(self, data: bytes, peer: Peer) -> None:
        self._out.append((data, peer))

    def emit(self, event: StackEvent) -> None:
        self._events.append(event)

    def schedule(self, txn: Transaction, letter: str, when: float) -> None:
        self._heap.schedule(txn, letter, when)

    def terminated(self, txn: Transaction) -> None:
        key = txn.key
        if self._txns.get(key) is txn:
            del self._txns[key]
        if isinstance(txn, InviteServerTransaction) and self._awaiting_ack:
            ident = (txn.request.call_id, txn.request.cseq.number)
            if self._awaiting_ack.get(ident) is txn:
                del self._awaiting_ack[ident]
        flow = txn.peer.flow
        if flow is not None:
            keys = self._by_flow.get(flow)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_flow[flow]
        self._events.append(TransactionTerminated(key))

    # -- output ---------------------------------------------------------------------------
    def events(self) -> list[StackEvent]:
        """Drain the pending events, oldest first."""
        out, self._events = self._events, []
        return out

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        """Drain the serialised messages to send, oldest first."""
        out, self._out = self._out, []
        return out

    def next_timer(self) -> float | None:
        """Absolute time of the earliest live timer, or None."""
        return self._heap.next_time()

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        self._heap.run_due(now)

    @property
    def transaction_count(self) -> int:
        return len(self._txns)

    def transaction(self, key: TransactionKey) -> Transaction | None:
        """The live transaction with ``key`` (for inspection and tests)."""
        return self._txns.get(key)

    new_branch = staticmethod(new_branch)
    new_tag = staticmethod(new_tag)

    # -- input ----------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, peer: Peer, now: float) -> None:
        """One UDP datagram from ``peer`` (§18.1.2, §18.2.1)."""
        if not data.strip(b"\r\n"):
            return  # RFC 5626 §4.4.1 CRLF keep-alive: nothing to answer on UDP
        try:
            msg = parse_message(data)
        except ParseFailure as failure:
            self.receive_parse_failure(failure, peer, now)
            return
        self.receive_message(msg, peer, now)

    def receive_parse_failure(self, failure: ParseFailure, peer: Peer, now: float) -> None:
        """A message that failed to parse: 400 (or the failure's status) where §8.2.6 allows."""
        data = build_error_response(failure)
        if data is not None:
            self._out.append((data, peer))
        self._events.append(MalformedMessage(failure.reason, peer, failure.is_request))

    def receive_message(self, msg: SipMessage, peer: Peer, now: float) -> None:
        """A parsed message from ``peer`` (stream adapters call this after framing)."""
        try:
            if isinstance(msg, SipRequest):
                self._receive_request(msg, peer, now)
            else:
                self._receive_response(msg, peer, now)
        except SipParseError as e:
            # headers parsed lazily past the parser's checks: the peer's fault, never ours
            self._events.append(MalformedMessage(e.reason, peer, msg.is_request))

    def _receive_request(self, request: SipRequest, peer: Peer, now: float) -> None:
        via = _top_via(request)
        if via is None:
            self._events.append(MalformedMessage("missing Via", peer, True))
            return
        via = stamp_request(request, via, peer)
        key = server_key(request, via)
        txn = self._txns.get(key)
        method = request.method
        if method == "ACK":
            if isinstance(txn, InviteServerTransaction) and (
                    key.startswith("s|") or txn.to_tag == request.to.tag):
                txn.receive_request(request, peer, now)
            else:
                # ACK for a 2xx (new branch, §17.1.1.3) or for nothing: the TU's business
                if self._awaiting_ack:
                    ist = self._awaiting_ack.pop((request.call_id, request.cseq.number), None)
                    if ist is not None:
                        ist.ack_for_2xx()
                self._events.append(AckReceived(request, peer))
            return
        if txn is not None:
            if isinstance(txn, ServerTransaction):
                txn.receive_request(request, peer, now)  # retransmission (§17.2.3)
            return
        dest = response_peer(via, peer)
        if method == "INVITE":
            ist = InviteServerTransaction(key, self, request, dest,
                                          retransmit_2xx=self.config.retransmit_2xx)
            self._register(ist)
            self._events.append(RequestReceived(key, request, peer))
            if self.config.auto_100_trying:
                ist.send_response(build_response(request, 100), now)
            return
        nist = NonInviteServerTransaction(key, self, request, dest)
        self._register(nist)
        if method == "CANCEL":
            # §9.2: CANCEL matches the INVITE by the same rules, with the method INVITE
            invite_key = server_key(request, via, "INVITE")
            if isinstance(self._txns.get(invite_key), InviteServerTransaction):
                self._events.append(RequestReceived(key, request, peer, cancels=invite_key))
            else:
                self._respond(nist, build_response(request, 481, to_tag=new_tag()), now)
            return
        self._events.append(RequestReceived(key, request, peer))

    def _receive_response(self, response: SipResponse, peer: Peer, now: float) -> None:
        via = _top_via(response)
        branch = via.branch if via is not None else None
        txn = None
        if branch is not None:
            txn = self._txns.get(client_key(branch, response.cseq.method))
        if isinstance(txn, ClientTransaction):
            txn.receive_response(response, peer, now)
        else:
            # §17.1.1.2 / RFC 6026: 2xx retransmissions after Timer M go to the TU core
            self._events.append(StrayResponse(response, peer))

    def _register(self, txn: Transaction) -> None:
        self._txns[txn.key] = txn
        flow = txn.peer.flow
        if flow is not None:
            keys = self._by_flow.get(flow)
            if keys is None:
                self._by_flow[flow] = {txn.key}
            else:
                keys.add(txn.key)

    # -- TU calls -------------------------------------------------------------------------
    def respond(self, key: TransactionKey, response: SipResponse, now: float) -> None:
        """Send ``response`` through server transaction ``key`` (§17.2, routed per §18.2.2).

        A response for a transaction that has already ended, or one its state
        machine must discard (a second final, §17.2.2), is dropped.
        """
        txn = self._txns.get(key)
        if isinstance(txn, ServerTransaction):
            self._respond(txn, response, now)

    def _respond(self, txn: ServerTransaction, response: SipResponse, now: float) -> None:
        server = self.config.server_header
        if server is not None and "Server" not in response.headers:
            response.headers.add("Server", server)
        if txn.send_response(response, now) and isinstance(txn, InviteServerTransaction) \
                and txn.awaiting_ack and txn.state is State.ACCEPTED:
            self._awaiting_ack[(txn.request.call_id, txn.request.cseq.number)] = txn

    def _add_via(self, request: SipRequest, peer: Peer) -> str:
        sent_by = self.config.via_hosts.get(peer.transport)
        if sent_by is None:
            raise LocalProtocolError(f"no Via address configured for transport {peer.transport}")
        host, port = sent_by
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        branch = new_branch()
        # RFC 3581 §3: ask for rport so responses find us through NAT
        request.headers.prepend(
            "Via", f"SIP/2.0/{peer.transport} {host}:{port};branch={branch};rport")
        request.invalidate()
        return branch

    def send_request(self, request: SipRequest, peer: Peer, now: float) -> TransactionKey:
        """Start a client transaction for ``request`` to ``peer`` (§17.1).

        Without a Via from the TU, ours goes on top with a fresh branch and
        ``rport``. A CANCEL must carry its INVITE's top Via (see
        ``transaction.build_cancel``).
        """
        method = request.method
        if method == "ACK":
            raise LocalProtocolError("ACK has no client transaction: use send_ack_2xx")
        if "Via" not in request.headers:
            branch = self._add_via(request, peer)
        else:
            try:
                top = request.top_via.branch
            except SipError as e:
                raise LocalProtocolError(f"unusable Via on outgoing request: {e}") from None
            if not top or not top.startswith(MAGIC_COOKIE):
                raise LocalProtocolError("outgoing request needs an RFC 3261 branch (z9hG4bK)")
            branch = top
        key = client_key(branch, method)
        if key in self._txns:
            raise LocalProtocolError(f"a client transaction with branch {branch} exists")
        txn: InviteClientTransaction | NonInviteClientTransaction
        if method == "INVITE":
            txn = InviteClientTransaction(key, self, request, peer)
        else:
            txn = NonInviteClientTransaction(key, self, request, peer)
        self._register(txn)
        txn.start(now)
        return key

    def send_ack_2xx(self, ack: SipRequest, peer: Peer) -> None:
        """Send the TU's ACK for a 2xx: no transaction, a new branch (§13.2.2.4, §17.1.1.3)."""
        if ack.method != "ACK":
            raise LocalProtocolError(f"send_ack_2xx got a {ack.method}")
        if "Via" not in ack.headers:
            self._add_via(ack, peer)
        self._out.append((bytes(ack), peer))

    def send_stateless(self, msg: SipMessage, peer: Peer) -> None:
        """Send ``msg`` as is, outside any transaction (stateless proxying, keep-alives)."""
        self._out.append((bytes(msg), peer))

    def transport_error(self, peer: Peer, now: float) -> None:
        """The adapter could not send to ``peer`` or its flow died (§17.1.4, §17.2.4, §18.4)."""
        if peer.flow is not None:
            keys = list(self._by_flow.pop(peer.flow, ()))
        else:
            keys = [k for k, t in self._txns.items()
                    if t.peer.flow is None and t.peer.port == peer.port
                    and t.peer.host == peer.host and t.peer.transport == peer.transport]
        for key in keys:
            txn = self._txns.get(key)
            if txn is not None:
                self._fail(txn, now)

    def _fail(self, txn: Transaction, now: float) -> None:
        if isinstance(txn, ServerTransaction) and txn.peer.flow is not None and not txn.fell_back:
            # §18.2.2: the request's connection is gone: open one to received / sent-by
            txn.fell_back = True
            try:
                via = txn.request.top_via
            except SipError:
                via = None
            if via is not None:
                txn.peer = fallback_response_peer(via, txn.peer)
                if txn.last is not None:
                    self._out.append((txn.last, txn.peer))
                return
        awaiting = txn.state in (State.CALLING, State.TRYING, State.PROCEEDING) \
            or isinstance(txn, ServerTransaction)
        if awaiting:
            self._events.append(TransportFailed(txn.key))
        txn.terminate()
