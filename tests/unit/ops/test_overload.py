"""The overload signal: behind above the limit, caught up below half of it, read sparingly."""

from __future__ import annotations

import pytest

from gateway.ops.overload import Overload


def test_hysteresis_and_read_interval() -> None:
    queued = [0]
    reads = [0]
    now = [0.0]

    def backlog() -> int:
        reads[0] += 1
        return queued[0]

    o = Overload(backlog, 1000, every=0.01, clock=lambda: now[0])
    assert not o.behind()
    queued[0] = 1001
    assert not o.behind() and reads[0] == 1  # read again only after `every`
    now[0] += 0.02
    assert o.behind()
    queued[0] = 600  # below the limit, above half: still behind (no flapping)
    now[0] += 0.02
    assert o.behind()
    queued[0] = 500
    now[0] += 0.02
    assert not o.behind()


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Overload(lambda: 0, 0)
