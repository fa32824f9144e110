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
    # The parser memoises lines and validations that repeat (a phone's From, To,
    # Contact …). So that the figure is not flattered by parsing one message over
    # and over, this row cycles through more distinct messages than the caches
    # hold, each with its own Via branch, Call-ID, From tag and CSeq, like a load
    # of many phones registering for the first time.
    data = (FIXTURES / CASES["REGISTER (digest, 15 headers)"]).read_bytes()
    variants = [data.replace(b"z9hG4bK1788102463", b"z9hG4bK%d" % i)
                .replace(b"1279384792@", b"%d@" % (10**9 + i))
                .replace(b"tag=1954834541", b"tag=%d" % (10**8 + i))
                .replace(b"CSeq: 2 ", b"CSeq: %d " % (i % 5000 + 1)) for i in range(20000)]
    cursor = [0]

    def fresh(read: bool) -> SipMessage:
        i = cursor[0] = (cursor[0] + 1) % len(variants)
        m = parse_message(variants[i])
        if read:
            _touch(m)
        return m

    parse_message(variants[0])
    results["REGISTER, all-new Via/Call-ID/tags"] = (
        _rate(lambda: fresh(False), seconds), _rate(lambda: fresh(True), seconds),
        _rate(lambda: bytes(fresh(False)), seconds))
    return results


def _stack_loop(seconds: float) -> dict[str, float]:
    """Transactions/s through the sans-I/O core: bytes -> parse -> SipStack -> TU -> bytes.

    OPTIONS: one transaction answered by ``options_response``. REGISTER: the
    two transactions of a digest registration (401 challenge, then the
    authenticated REGISTER answered 200), i.e. what one registration costs the
    SIP layer without the registrar's Redis work. Each request carries a fresh
    branch, as a real load does, and time advances so Timer J/K reap the
    transactions.
    """
    from gateway.sip.events import RequestReceived
    from gateway.sip.message import build_response
    from gateway.sip.peer import Peer
    from gateway.sip.stack import SipStack, StackConfig
    from gateway.sip.uas import options_response, precheck

    peer = Peer("UDP", "192.0.2.44", 5060)
    results: dict[str, float] = {}
    templates = {
        "OPTIONS (1 transaction)": [(FIXTURES / "options_keepalive.sip").read_bytes()],
        "REGISTER 401 + 200 (2 transactions)": [
            (FIXTURES / "register_yealink.sip").read_bytes(),
            (FIXTURES / "register_yealink.sip").read_bytes()],
    }
    for label, datas in templates.items():
        stack = SipStack(StackConfig(server_header="sipgw"))
        branch = b"z9hG4bK1788102463" if b"z9hG4bK1788102463" in datas[0] else \
            b"z9hG4bK-524287-1---8a1d2b3c4d5e6f70"
        counter = [0]
        clock = [0.0]

        def one(datas: list[bytes] = datas, branch: bytes = branch,
                stack: SipStack = stack, counter: list[int] = counter,
                clock: list[float] = clock) -> None:
            for i, data in enumerate(datas):
                counter[0] += 1
                clock[0] += 0.0001
                now = clock[0]
                raw = data.replace(branch, b"z9hG4bK%d" % counter[0])
                stack.receive_datagram(raw, peer, now)
                for ev in stack.events():
                    if isinstance(ev, RequestReceived):
                        req = ev.request
                        tag = stack.new_tag()
                        resp = precheck(req, tag=tag)
                        if resp is None:
                            if req.method == "OPTIONS":
                                resp = options_response(req, tag=tag)
                            elif i == 0:
                                resp = build_response(req, 401, to_tag=tag, headers=[(
                                    "WWW-Authenticate", 'Digest realm="sip.example.com", '
                                    'nonce="abc", algorithm=MD5, qop="auth"')])
                            else:
                                resp = build_response(
                                    req, 200, to_tag=tag,
                                    headers=[("Contact", str(req.contacts[0])
                                              + ";expires=3600")])
                        stack.respond(ev.key, resp, now)
                stack.datagrams_to_send()
                if counter[0] % 256 == 0:
                    stack.handle_timer(now)

        results[label] = _rate(one, seconds)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--profile", action="store_true", help="cProfile the REGISTER parse")
    ap.add_argument("--stack", action="store_true",
                    help="also time whole transactions through SipStack (parse+stack+bytes)")
    ap.add_argument("--profile-stack", action="store_true",
                    help="cProfile the stack loop instead of timing it")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    if args.profile:
        import cProfile

        data = (FIXTURES / CASES["REGISTER (digest, 15 headers)"]).read_bytes()
        cProfile.runctx("for _ in range(20000): parse_message(data)", globals(),
                        {"data": data}, sort="tottime")
        return
    if args.profile_stack:
        import cProfile

        cProfile.runctx("_stack_loop(3.0)", globals(), {}, sort="tottime")
        return
    print(f"python {sys.version.split()[0]}, one core, best 500-message batch over "
          f"{args.seconds:.1f} s per figure")
    print(f"{'message':36} {'parse/s':>10} {'parse+read/s':>13} {'parse+bytes/s':>14}")
    for label, (p, r, b) in run_benchmark(args.seconds).items():
        print(f"{label:36} {p:10,.0f} {r:13,.0f} {b:14,.0f}")
    if args.stack:
        print(f"{'through SipStack':40} {'loops/s':>10} {'us/transaction':>15}")
        for label, rate in _stack_loop(args.seconds).items():
            n = 2 if "REGISTER" in label else 1
            print(f"{label:40} {rate:10,.0f} {1e6 / rate / n:15.1f}")


if __name__ == "__main__":
    main()
