"""Single-core parse throughput of typical SIP messages (not collected by pytest).

Run: ``.venv/bin/python tests/bench/bench_parse.py [--seconds 2]``. Prints
messages/s (best batch, so other load on the machine does not hide the figure)
for a REGISTER with a digest Authorization header, an INVITE with
an SDP body and a 200 OK, each parsed from bytes by ``parse_message`` (the
work a transport does per datagram), plus the same with the headers every
REGISTER handler reads (top Via, From/To tags, Call-ID, CSeq, Contact) and a
re-serialisation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from gateway.sip.message import SipMessage, parse_message  # noqa: E402

FIXTURES = HERE.parent / "fixtures" / "sip"
CASES = {
    "REGISTER (digest, 15 headers)": "register_yealink.sip",
    "INVITE with SDP": "invite_sdp_poly.sip",
    "200 OK (REGISTER)": "ok_200_register.sip",
}


def _touch(msg: SipMessage) -> None:
    """What a registrar reads from every message."""
    msg.top_via.branch  # noqa: B018
    msg.from_.tag  # noqa: B018
    msg.to.tag  # noqa: B018
    msg.call_id  # noqa: B018
    msg.cseq.number  # noqa: B018
    msg.contacts  # noqa: B018


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Best rate over short batches: on a shared machine the minimum time is the signal."""
    batch = 500
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        best = min(best, time.perf_counter() - t0)
    return batch / best


def run_benchmark(seconds: float) -> dict[str, tuple[float, float, float]]:
    results: dict[str, tuple[float, float, float]] = {}
    for label, name in CASES.items():
        data = (FIXTURES / name).read_bytes()
        parse_message(data)  # fail loudly before timing

        def parse_only(data: bytes = data) -> object:
            return parse_message(data)

        def parse_and_read(data: bytes = data) -> object:
            m = parse_message(data)
            _touch(m)
            return m

        def round_trip(data: bytes = data) -> object:
            return bytes(parse_message(data))

        results[label] = (_rate(parse_only, seconds), _rate(parse_and_read, seconds),
                          _rate(round_trip, seconds))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--profile", action="store_true", help="cProfile the REGISTER parse")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    if args.profile:
        import cProfile

        data = (FIXTURES / CASES["REGISTER (digest, 15 headers)"]).read_bytes()
        cProfile.runctx("for _ in range(20000): parse_message(data)", globals(),
                        {"data": data}, sort="tottime")
        return
    print(f"python {sys.version.split()[0]}, one core, best 500-message batch over "
          f"{args.seconds:.1f} s per figure")
    print(f"{'message':32} {'parse/s':>10} {'parse+read/s':>13} {'parse+bytes/s':>14}")
    for label, (p, r, b) in run_benchmark(args.seconds).items():
        print(f"{label:32} {p:10,.0f} {r:13,.0f} {b:14,.0f}")


if __name__ == "__main__":
    main()
