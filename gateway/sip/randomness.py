"""Cryptographic randomness for the per-message hot path, drawn from the OS in blocks.

Every REGISTER cycle needs three random values (a nonce's randomness, RFC 7616
§3.3, and two To tags, RFC 3261 §19.3), every transaction a branch (§8.1.1.7);
each ``os.urandom`` call is a system call. ``RandomPool`` reads the kernel's
CSPRNG 4 KiB at a time and hands out each byte once, so the values are exactly as
unpredictable, at a fraction of the cost. A forked child starts with an empty pool
(it must never repeat the parent's bytes), and a lock keeps two threads from taking
the same bytes.
"""

from __future__ import annotations

import base64
import os
import threading

_BLOCK = 4096


class RandomPool:
    """Bytes from ``os.urandom``, read in blocks and never handed out twice
    (RFC 3261 §19.3 tags, §8.1.1.7 branches, RFC 7616 §3.3 nonces)."""

    def __init__(self, block: int = _BLOCK) -> None:
        self._block = block
        self._buf = b""
        self._at = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        if n > self._block:
            return os.urandom(n)
        with self._lock:
            at = self._at
            end = at + n
            if end > len(self._buf):
                self._buf = os.urandom(self._block)
                at, end = 0, n
            self._at = end
            return self._buf[at:end]

    def urlsafe(self, n: int) -> str:
        """``n`` random bytes as URL-safe base64 without padding (``secrets.token_urlsafe``:
        token characters, fit for tags and branches)."""
        return base64.urlsafe_b64encode(self.take(n)).rstrip(b"=").decode("ascii")

    def reset(self) -> None:
        """Forget the unused bytes: a forked child must draw its own. (A fresh lock too:
        another thread of the parent may have held this one when it forked.)"""
        self._lock = threading.Lock()
        self._buf, self._at = b"", 0


POOL = RandomPool()
os.register_at_fork(after_in_child=POOL.reset)

__all__ = ["POOL", "RandomPool"]
