"""Transaction timer values and the timer heap (RFC 3261 §17 and Table 4; RFC 6026 §8.11).

``TimerConfig`` holds T1, T2 and T4; every lettered timer derives from them.
On reliable transports the retransmission timers (A, E, G) are not run and
the absorption timers (D, I, J, K) are zero (§17.1.1.2, §17.1.2.2, §17.2.1,
§17.2.2).

``TimerHeap`` is the one priority queue of a ``SipStack``: entries are
cancelled lazily (an entry is live only while its owner still holds the same
sequence number for that letter), so arming and cancelling are O(log n) and
O(1) with thousands of transactions.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 Table 4 base values, in seconds (§17.1.1.1)."""

    t1: float = 0.5
    """RTT estimate; the initial retransmission interval."""
    t2: float = 4.0
    """Maximum retransmit interval for non-INVITE requests and INVITE responses."""
    t4: float = 5.0
    """Maximum time a message may stay in the network."""

    @property
    def timer_b(self) -> float:
        """INVITE client transaction timeout (§17.1.1.2)."""
        return 64 * self.t1

    timer_f = timer_b  # non-INVITE client transaction timeout (§17.1.2.2)
    timer_h = timer_b  # wait time for ACK receipt (§17.2.1)
    timer_l = timer_b  # Accepted state of the INVITE server (RFC 6026 §8.7)
    timer_m = timer_b  # Accepted state of the INVITE client (RFC 6026 §8.4)

    def timer_d(self, reliable: bool) -> float:
        """Wait for response retransmissions: >32 s on UDP, 0 on reliable (§17.1.1.2)."""
        return 0.0 if reliable else max(32.0, 64 * self.t1)

    def timer_i(self, reliable: bool) -> float:
        """Wait for ACK retransmissions (§17.2.1)."""
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        """Wait for non-INVITE request retransmissions (§17.2.2)."""
        return 0.0 if reliable else 64 * self.t1

    def timer_k(self, reliable: bool) -> float:
        """Wait for non-INVITE response retransmissions (§17.1.2.2)."""
        return 0.0 if reliable else self.t4


class TimerOwner(Protocol):
    """Something that arms lettered timers: holds ``letter -> sequence`` of its live ones."""

    timers: dict[str, int]

    def on_timer(self, letter: str, now: float) -> None: ...


_COMPACT_EVERY = 4096


class TimerHeap:
    """Earliest-first timers with lazy cancellation (cancel = ``owner.timers.pop(letter)``)."""

    __slots__ = ("_heap", "_seq", "_next_compact")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerOwner, str]] = []
        self._seq = 0
        self._next_compact = _COMPACT_EVERY

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, owner: TimerOwner, letter: str, when: float) -> None:
        """Arm (or re-arm) ``owner``'s timer ``letter`` at absolute time ``when``."""
        self._seq += 1
        seq = self._seq
        owner.timers[letter] = seq
        heapq.heappush(self._heap, (when, seq, owner, letter))
        # Cancelled entries linger until they surface; rebuild when they dominate. The
        # check scans the heap, so it runs at most once per len(heap) schedules: O(1)
        # amortised even with 100k transactions waiting on Timer J.
        if seq >= self._next_compact:
            if len(self._heap) > _COMPACT_EVERY:
                self._compact()
            self._next_compact = seq + max(_COMPACT_EVERY, len(self._heap))

    def next_time(self) -> float | None:
        heap = self._heap
        while heap:
            when, seq, owner, letter = heap[0]
            if owner.timers.get(letter) == seq:
                return when
            heapq.heappop(heap)
        return None

    def run_due(self, now: float) -> int:
        """Fire every live timer due at ``now``, earliest first; return how many fired.

        One at a time, so a handler that cancels a sibling timer due in the same
        instant (Timer B cancelling A) is honoured.
        """
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            _, seq, owner, letter = heapq.heappop(heap)
            if owner.timers.get(letter) == seq:
                del owner.timers[letter]
                fired += 1
                owner.on_timer(letter, now)
        return fired

    def _compact(self) -> None:
        live = [e for e in self._heap if e[2].timers.get(e[3]) == e[1]]
        if len(live) * 2 < len(self._heap):
            heapq.heapify(live)
            self._heap = live
