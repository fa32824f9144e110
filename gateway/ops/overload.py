"""Is this node behind? The one overload signal every request path shares (RFC 5390 §3).

A single-threaded node that falls behind does not see it in its own event loop (the
loop's lag stays one read batch however deep the backlog grows): the datagrams waiting
unread in the kernel are the measure. Past ``limit`` bytes the node is behind, and
stays so until the backlog is half that again (no flapping at the edge). What to do
about it is the caller's: new work is refused with 503 and Retry-After (RFC 3261
§21.5.4), work under way is finished.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

# the Warning text of every refusal (RFC 3261 §20.43), after who refuses
OVERLOADED = "overloaded, try again later"


class Overload:
    """The receive backlog read at most every ``every`` seconds, with hysteresis."""

    def __init__(self, backlog: Callable[[], int], limit: int, *, every: float = 0.01,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit <= 0:
            raise ValueError("the backlog limit must be positive")
        self._backlog = backlog
        self.limit = limit
        self._every = every
        self._clock = clock
        self._at = float("-inf")
        self._behind = False
        self._refused = Counter(
            "sipgw_requests_shed", "new requests refused with 503 while the node was "
            "behind (unread UDP backlog)", ["method"], registry=registry) \
            if registry is not None else None

    def behind(self) -> bool:
        now = self._clock()
        if now - self._at >= self._every:
            self._at = now
            queued = self._backlog()
            if (queued > (self.limit // 2 if self._behind else self.limit)) != self._behind:
                self._behind = not self._behind
                log.warning("%s: %d bytes of datagrams waiting unread",
                            "behind, refusing new requests with 503" if self._behind
                            else "caught up, no longer refusing", queued)
        return self._behind

    def refusal(self, method: str) -> list[tuple[str, str]]:
        """Count one refused ``method`` request; the headers of its 503 (Retry-After
        spread over 20-39 s so refused phones do not all return at once)."""
        if self._refused is not None:
            self._refused.labels(method).inc()
        retry = 20 + os.urandom(1)[0] % 20
        who = "registrar" if method == "REGISTER" else "gateway"
        return [("Retry-After", str(retry)), ("Warning", f'399 sipgw "{who} {OVERLOADED}"')]


__all__ = ["OVERLOADED", "Overload"]
