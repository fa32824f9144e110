"""The hot path's random pool: every byte handed out once, blocks refilled, forks fresh."""

from __future__ import annotations

import os
import re
import threading

from gateway.sip.randomness import POOL, RandomPool


def test_bytes_are_never_handed_out_twice_across_refills() -> None:
    pool = RandomPool(block=64)
    taken = [pool.take(6) for _ in range(200)]  # 1,200 bytes: many refills of 64
    assert all(len(t) == 6 for t in taken)
    assert len(set(taken)) == len(taken)  # 48-bit values: a repeat means reuse
    assert len(pool.take(100)) == 100  # larger than a block: straight from the OS
    tag = pool.urlsafe(8)  # secrets.token_urlsafe's form: 11 token characters for 8 bytes
    assert re.fullmatch(r"[A-Za-z0-9_-]{11}", tag) and tag != pool.urlsafe(8)


def test_threads_never_share_bytes() -> None:
    pool = RandomPool(block=256)
    out: list[bytes] = []

    def worker() -> None:
        got = [pool.take(8) for _ in range(500)]
        out.extend(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2000 and len(set(out)) == 2000


def test_a_forked_child_draws_its_own_bytes() -> None:
    POOL.take(1)  # the parent's block is loaded
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next bytes, then leave without cleanup
        os.close(r)
        os.write(w, POOL.take(16))
        os._exit(0)
    os.close(w)
    try:
        child = os.read(r, 16)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != POOL.take(16)  # the parent's next bytes are not the child's
