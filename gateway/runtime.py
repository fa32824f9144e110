"""Process-wide settings of a long-running node (not for code embedded in tests)."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Collect once, move everything start-up made out of the collector's sight, and
    collect far less often. With the default thresholds the collector's passes over a
    node's long-lived caches (credentials, replay cache, dialogs) stalled the loop long
    enough for UDP to back up into overload (503s) at two thirds of capacity; measured
    with perf_register: no failures at 1,500 and 2,000 REGISTER/s, p99 7 vs 190 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


__all__ = ["tune_gc"]
