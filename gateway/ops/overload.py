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
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Overload:
    """The receive backlog read at most every ``every`` seconds, with hysteresis."""

    def __init__(self, backlog: Callable[[], int], limit: int, *, every: float = 0.01,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit <= 0:
            raise ValueError("the backlog limit must be positive")
        self._backlog = backlog
        self.limit = limit
        self._every = every
        self._clock = clock
        self._at = float("-inf")
        self._behind = False

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


__all__ = ["Overload"]
