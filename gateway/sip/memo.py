"""Bounded memories of pure functions of peer-controlled text.

A fleet repeats itself (the same request line, From, Via shape, digest URI on every
REGISTER), so the parsers remember what they proved or computed. Peers control the
keys, so every memory is bounded: when full it is emptied and refills with what is
current, instead of evicting one entry at a time.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

LIMIT = 8192


def remember(valid: set[K], value: K, limit: int = LIMIT) -> None:
    """Add ``value`` to a set of values proven valid."""
    if len(valid) >= limit:
        valid.clear()
    valid.add(value)


def remember_as(memo: dict[K, V], key: K, value: V, limit: int = LIMIT) -> V:
    """Keep ``value`` as what ``key`` gave; returns it."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


__all__ = ["LIMIT", "remember", "remember_as"]
