"""Server-side NAT keep-alives for UDP bindings (RFC 3261 §11 OPTIONS; RFC 5626 §3.5).

A phone using SIP outbound keeps its own flow alive (CRLF on TCP/TLS, STUN on
UDP, RFC 5626 §3.5.1/§4.4); the transport answers those. A UDP phone without
outbound relies on the server: some NAT bindings close after 30 s of silence.
So the node that owns the binding (``Binding.node_id``; only that node can
reach the phone's NAT mapping from the right socket, and one pinger per phone
avoids the N-fold pings of replicated registrars, kamailio#310/#1299) sends an
OPTIONS to the binding's source address every ``interval`` seconds. After
``max_failures`` pings in a row without an answer, the binding is removed: a
phone that cannot be reached must not attract calls, and its next REGISTER
restores it. Any response, even an error status, proves the path is open.

Like Kamailio's nathelper, only UDP phones behind a NAT are pinged (their Contact
is not where their packets come from): a phone reachable at its own Contact has
no pinhole to hold open, and pinging a whole fleet every round would cost a node
more than the REGISTERs do. A round reads only the AORs this node registered (told
by the registrar's listeners, plus one scan of the store when the node starts),
not every AOR of the deployment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.registrar.bindings import Binding, BindingStore
from gateway.sip.errors import SipParseError
from gateway.sip.peer import Peer
from gateway.sip.uri import Uri

if TYPE_CHECKING:
    from gateway.registrar.registrar import Registration

log = logging.getLogger(__name__)

# send_options(peer, binding) -> the final status, or None when nothing came back.
# The gateway's client transactions report a timeout as a synthetic 408 (RFC 3261
# §8.1.3.1), so 408 counts as no answer too.
SendOptions = Callable[[Peer, Binding], Awaitable[int | None]]


@dataclass(frozen=True, slots=True)
class KeepAliveReport:
    """What one round did."""

    pinged: int
    answered: int
    failed: int
    removed: int


def behind_nat(b: Binding) -> bool:
    """The phone's packets come from elsewhere than its Contact (RFC 3581 §4: the
    address its requests were received from differs from the one it advertises)."""
    try:
        uri = Uri.parse(b.uri)
    except SipParseError:
        return True  # an address we cannot read: ping rather than lose the phone
    host = uri.host.strip("[]").lower()
    port = uri.port or (5061 if uri.scheme == "sips" else 5060)
    return host != b.host.strip("[]").lower() or port != b.port


class KeepAliveMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pings = Counter("sipgw_keepalive_pings", "NAT keep-alive OPTIONS by result",
                             ["result"], registry=registry)
        self.removed = Counter("sipgw_keepalive_removed",
                               "bindings removed after unanswered keep-alives",
                               registry=registry)
        self.unreachable = Gauge("sipgw_keepalive_unreachable",
                                 "owned UDP bindings with unanswered keep-alives",
                                 registry=registry)


class KeepAlive:
    """Periodic OPTIONS pings to this node's UDP bindings (call ``run_once`` on a timer)."""

    def __init__(self, store: BindingStore, node_id: str, send_options: SendOptions, *,
                 interval: float = 30.0, max_failures: int = 3, concurrency: int = 200,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if max_failures < 1 or concurrency < 1 or interval <= 0:
            raise ValueError("keep-alive interval, max_failures and concurrency must be > 0")
        self.store = store
        self.node_id = node_id
        self.send_options = send_options
        self.interval = interval
        self.max_failures = max_failures
        self.clock = clock
        self.metrics = KeepAliveMetrics(registry) if registry is not None else None
        self._sem = asyncio.Semaphore(concurrency)
        self._failures: dict[tuple[str, str], int] = {}
        self._aors: set[str] = set()  # AORs with bindings this node may ping
        self._scanned = False

    def owned(self, b: Binding) -> bool:
        """Bindings this node pings: its own UDP ones behind a NAT and its own live
        stream flows.

        Outbound phones keep their flows alive themselves (RFC 5626 §4.4). Over TCP/TLS
        the OPTIONS travels the phone's connection, so a flow that died silently is found
        and its binding dropped (kamailio#1481: pinging UDP only leaves those behind).
        """
        if b.node_id != self.node_id or b.outbound:
            return False
        if b.transport.upper() == "UDP":
            return behind_nat(b)
        return bool(b.flow)

    def track(self, reg: Registration) -> None:
        """A registrar listener: remember the AORs whose bindings this node may ping."""
        if any(self.owned(b) for b in reg.bindings):
            self._aors.add(reg.aor)

    async def run_once(self, now: float | None = None) -> KeepAliveReport:
        now = self.clock() if now is None else now
        if not self._scanned:  # bindings made before this node (re)started
            self._aors.update(await self.store.active_aors(now))
            self._scanned = True
        aors = sorted(self._aors)
        targets: list[Binding] = []
        for i in range(0, len(aors), 500):
            got = await self.store.get_many(aors[i:i + 500], now)
            for aor in aors[i:i + 500]:
                mine = [b for b in got.get(aor, ()) if self.owned(b)]
                if mine:
                    targets += mine
                else:  # expired, removed or re-registered through another node
                    self._aors.discard(aor)
        live = {(b.aor, b.key) for b in targets}
        for k in [k for k in self._failures if k not in live]:
            del self._failures[k]  # re-registered elsewhere, removed or expired
        results = await asyncio.gather(*(self._ping(b) for b in targets))
        answered = sum(1 for ok in results if ok)
        removed = 0
        for b, ok in zip(targets, results, strict=True):
            k = (b.aor, b.key)
            if ok:
                self._failures.pop(k, None)
                continue
            n = self._failures.get(k, 0) + 1
            self._failures[k] = n
            if n >= self.max_failures:
                if await self.store.remove_binding(b.aor, b.key, now, expected=b):
                    removed += 1
                    log.info("removed unreachable binding %s of %s (%s, %d keep-alives "
                             "unanswered)", b.contact, b.aor, b.source, n)
                del self._failures[k]
        if self.metrics is not None:
            self.metrics.pings.labels("answered").inc(answered)
            self.metrics.pings.labels("failed").inc(len(targets) - answered)
            self.metrics.removed.inc(removed)
            self.metrics.unreachable.set(len(self._failures))
        return KeepAliveReport(len(targets), answered, len(targets) - answered, removed)

    async def _ping(self, b: Binding) -> bool:
        async with self._sem:
            try:
                status = await asyncio.wait_for(self.send_options(b.source, b),
                                                self.interval)
            except (TimeoutError, OSError):
                return False
            except Exception:  # noqa: BLE001 - one bad ping must not stop the round
                log.exception("keep-alive to %s failed", b.source)
                return False
        return status is not None and status != 408
