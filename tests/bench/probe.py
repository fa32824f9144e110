"""Latency probe: sequential SIP transactions at a fixed low rate, timed with perf_counter_ns.

SIPp's own response-time figures tick in 4 ms steps, so the benchmarks measure
latency here instead: one request outstanding at a time, sent on a fixed
schedule while SIPp loads the server, each request/response pair timestamped
in this process. Kinds:

- ``options``: OPTIONS -> 200 (one round trip).
- ``register``: REGISTER -> 401 -> REGISTER with digest credentials (RFC 3261
  §22.4, RFC 2617/7616 MD5 or SHA-256, qop=auth) -> 200; the sample is the whole
  exchange, the second round trip is reported as ``auth_rtt``.
- ``call``: INVITE -> 200 -> ACK, then BYE -> 200; the sample is the setup time
  (INVITE sent to 200 received), the BYE round trip is ``bye_rtt``.

Run: ``probe.py --target 127.0.0.1:5060 --kind options --rate 50 --seconds 10``;
prints one JSON object (latencies in microseconds). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

COMPACT = {"i": "call-id", "v": "via", "f": "from", "t": "to", "m": "contact",
           "l": "content-length", "c": "content-type"}


@dataclass
class Response:
    """The parts of a SIP response the probe reads."""

    status: int
    headers: dict[str, list[str]]

    def first(self, name: str) -> str:
        values = self.headers.get(name, [])
        return values[0] if values else ""


def parse_response(data: bytes) -> Response | None:
    """A minimal, forgiving reader: None for anything that is not a response."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2 or not first[0].startswith("SIP/") or not first[1].isdigit():
        return None
    headers: dict[str, list[str]] = {}
    last = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last:
            headers[last][-1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = COMPACT.get(key, key)
        headers.setdefault(key, []).append(value.strip())
        last = key
    return Response(int(first[1]), headers)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def summary(samples_ns: list[int]) -> dict[str, float]:
    us = sorted(s / 1000 for s in samples_ns)
    return {"n": len(us), "p50_us": percentile(us, 50), "p90_us": percentile(us, 90),
            "p99_us": percentile(us, 99), "max_us": us[-1] if us else float("nan")}


_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def digest_authorization(challenge: str, *, method: str, uri: str, user: str,
                         password: str, nc: int) -> str:
    """The Authorization value answering one WWW-Authenticate challenge (RFC 7616 §3.4)."""
    scheme, _, rest = challenge.partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"not a digest challenge: {challenge!r}")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(rest)}
    algorithm = params.get("algorithm", "MD5")
    hash_name = {"md5": "md5", "sha-256": "sha256"}.get(algorithm.lower())
    if hash_name is None:
        raise ValueError(f"unsupported digest algorithm {algorithm}")

    def h(text: str) -> str:
        return hashlib.new(hash_name, text.encode()).hexdigest()

    realm, nonce = params["realm"], params["nonce"]
    ha1 = h(f"{user}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    parts = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"',
             f"algorithm={algorithm}"]
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        cnonce = os.urandom(8).hex()
        ncv = f"{nc:08x}"
        resp = h(f"{ha1}:{nonce}:{ncv}:{cnonce}:auth:{ha2}")
        parts += [f'response="{resp}"', "qop=auth", f"nc={ncv}", f'cnonce="{cnonce}"']
    else:
        parts.append(f'response="{h(f"{ha1}:{nonce}:{ha2}")}"')
    if "opaque" in params:
        parts.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(parts)


def pick_challenge(values: list[str]) -> str:
    """Prefer SHA-256, then MD5 (RFC 8760 ordering is the server's; we take what we can)."""
    def algo(v: str) -> str:
        m = re.search(r"algorithm\s*=\s*\"?([\w-]+)", v, re.I)
        return (m.group(1) if m else "MD5").lower()
    for want in ("md5", "sha-256"):
        for v in values:
            if algo(v) == want:
                return v
    raise ValueError(f"no usable digest challenge in {values!r}")


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiters: dict[tuple[str, str], asyncio.Queue[tuple[int, Response]]] = {}
        self.stray = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = time.perf_counter_ns()
        resp = parse_response(data)
        if resp is None:
            self.stray += 1
            return
        key = (resp.first("call-id"), resp.first("cseq").lower())
        q = self.waiters.get(key)
        if q is None:
            self.stray += 1
            return
        q.put_nowait((now, resp))


@dataclass
class Probe:
    """Sequential transactions against one UDP target (see the module docstring)."""

    host: str
    port: int
    timeout: float = 1.0
    user: str = "probe"
    password: str = ""
    domain: str = ""
    service: str = "callee"
    user_agent: str = "sipgw-bench-probe"
    samples: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    timeouts: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    _ep: _Endpoint = field(default_factory=_Endpoint)
    _lport: int = 0
    _seq: int = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self._ep, local_addr=("127.0.0.1", 0))
        assert self._ep.transport is not None
        self._lport = self._ep.transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self._ep.transport is not None:
            self._ep.transport.close()

    def _ids(self) -> tuple[str, str]:
        self._seq += 1
        return f"probe-{os.getpid()}-{self._seq}@127.0.0.1", f"probe{self._seq}"

    def _via(self) -> str:
        return (f"Via: SIP/2.0/UDP 127.0.0.1:{self._lport};"
                f"branch=z9hG4bK{os.urandom(6).hex()};rport")

    async def _transact(self, msg: str, call_id: str, cseq: str,
                        final_only: bool = True) -> tuple[int, int, Response] | None:
        """Send, return (sent_ns, received_ns, final response) or None on timeout."""
        key = (call_id, cseq.lower())
        q: asyncio.Queue[tuple[int, Response]] = asyncio.Queue()
        self._ep.waiters[key] = q
        assert self._ep.transport is not None
        sent = time.perf_counter_ns()
        self._ep.transport.sendto(msg.encode(), (self.host, self.port))
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    got, resp = await asyncio.wait_for(q.get(), remaining)
                except TimeoutError:
                    return None
                if resp.status >= 200 or not final_only:
                    return sent, got, resp
        finally:
            del self._ep.waiters[key]

    def _fail(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def options(self) -> None:
        call_id, tag = self._ids()
        msg = (f"OPTIONS sip:{self.host}:{self.port} SIP/2.0\r\n{self._via()}\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@127.0.0.1:{self._lport}>;tag={tag}\r\n"
               f"To: <sip:{self.host}:{self.port}>\r\nCall-ID: {call_id}\r\n"
               f"CSeq: 1 OPTIONS\r\nUser-Agent: {self.user_agent}\r\nContent-Length: 0\r\n\r\n")
        got = await self._transact(msg, call_id, "1 OPTIONS")
        if got is None:
            self.timeouts += 1
        elif got[2].status != 200:
            self._fail(f"OPTIONS {got[2].status}")
        else:
            self.samples.append(got[1] - got[0])

    def _register(self, call_id: str, tag: str, cseq: int, auth: str | None) -> str:
        domain = self.domain or self.host
        lines = [f"REGISTER sip:{domain} SIP/2.0", self._via(), "Max-Forwards: 70",
                 f"From: <sip:{self.user}@{domain}>;tag={tag}", f"To: <sip:{self.user}@{domain}>",
                 f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER",
                 f"Contact: <sip:{self.user}@127.0.0.1:{self._lport};transport=udp>",
                 "Expires: 3600", f"User-Agent: {self.user_agent}"]
        if auth:
            lines.append(f"Authorization: {auth}")
        return "\r\n".join([*lines, "Content-Length: 0", "", ""])

    async def register(self) -> None:
        call_id, tag = self._ids()
        domain = self.domain or self.host
        first = await self._transact(self._register(call_id, tag, 1, None), call_id, "1 REGISTER")
        if first is None:
            self.timeouts += 1
            return
        if first[2].status != 401:
            self._fail(f"REGISTER {first[2].status} (expected 401)")
            return
        try:
            challenge = pick_challenge(first[2].headers.get("www-authenticate", []))
            auth = digest_authorization(challenge, method="REGISTER", uri=f"sip:{domain}",
                                        user=self.user, password=self.password, nc=1)
        except (ValueError, KeyError) as e:
            self._fail(f"challenge: {e}")
            return
        second = await self._transact(self._register(call_id, tag, 2, auth), call_id,
                                      "2 REGISTER")
        if second is None:
            self.timeouts += 1
        elif second[2].status != 200:
            self._fail(f"REGISTER {second[2].status} (expected 200)")
        else:
            self.samples.append(second[1] - first[0])
            self.extra.append(second[1] - second[0])

    async def call(self) -> None:
        call_id, tag = self._ids()
        target = f"{self.host}:{self.port}"
        from_ = f"From: <sip:{self.user}@127.0.0.1:{self._lport}>;tag={tag}"
        contact = f"Contact: <sip:{self.user}@127.0.0.1:{self._lport}>"
        invite = (f"INVITE sip:{self.service}@{target} SIP/2.0\r\n{self._via()}\r\n"
                  f"Max-Forwards: 70\r\n{from_}\r\nTo: <sip:{self.service}@{target}>\r\n"
                  f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n{contact}\r\n"
                  f"User-Agent: {self.user_agent}\r\nContent-Length: 0\r\n\r\n")
        got = await self._transact(invite, call_id, "1 INVITE")
        if got is None:
            self.timeouts += 1
            return
        sent, received, ok = got
        if ok.status != 200:
            self._fail(f"INVITE {ok.status}")
            return
        # RFC 3261 §12.1.2: the route set is the Record-Route list reversed; the
        # remote target is the Contact. Datagrams go to the server under test
        # (the only hop on loopback), which routes by Route/R-URI.
        rr = [v.strip() for h in ok.headers.get("record-route", []) for v in h.split(",")]
        routes = "".join(f"Route: {r}\r\n" for r in reversed(rr))
        m = re.search(r"<([^>]+)>", ok.first("contact"))
        remote = m.group(1) if m else f"sip:{self.service}@{target}"
        to = ok.first("to")
        ack = (f"ACK {remote} SIP/2.0\r\n{self._via()}\r\n{routes}Max-Forwards: 70\r\n{from_}\r\n"
               f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
        assert self._ep.transport is not None
        self._ep.transport.sendto(ack.encode(), (self.host, self.port))
        self.samples.append(received - sent)
        bye = (f"BYE {remote} SIP/2.0\r\n{self._via()}\r\n{routes}Max-Forwards: 70\r\n{from_}\r\n"
               f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")
        done = await self._transact(bye, call_id, "2 BYE")
        if done is None:
            self.timeouts += 1
        elif done[2].status != 200:
            self._fail(f"BYE {done[2].status}")
        else:
            self.extra.append(done[1] - done[0])

    def report(self, kind: str) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": kind, **summary(self.samples), "timeouts": self.timeouts,
                               "errors": self.errors, "stray": self._ep.stray}
        if self.extra:
            name = {"register": "auth_rtt", "call": "bye_rtt"}.get(kind, "extra")
            out[name] = summary(self.extra)
        return out


async def run(probe: Probe, kind: str, rate: float, seconds: float,
              delay: float = 0.0) -> dict[str, Any]:
    """After ``delay``, one transaction every 1/rate s (one outstanding) for ``seconds``."""
    action = {"options": probe.options, "register": probe.register, "call": probe.call}[kind]
    await probe.open()
    try:
        await asyncio.sleep(delay)
        interval = 1.0 / rate
        start = time.monotonic()
        n = 0
        while True:
            slot = start + n * interval
            now = time.monotonic()
            if now - start >= seconds:
                break
            if slot > now:
                await asyncio.sleep(slot - now)
            await action()
            n += 1
            if time.monotonic() > slot + interval:  # fell behind: skip the missed slots
                n = int((time.monotonic() - start) / interval) + 1
    finally:
        probe.close()
    return probe.report(kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="host:port of the server under test (UDP)")
    ap.add_argument("--kind", choices=("options", "register", "call"), default="options")
    ap.add_argument("--rate", type=float, default=50.0, help="transactions per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--delay", type=float, default=0.0,
                    help="wait this long before the first request (start-up off the clock)")
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--user", default="probe")
    ap.add_argument("--password", default="", help="digest password (register)")
    ap.add_argument("--domain", default="", help="AOR domain and realm (register)")
    ap.add_argument("--service", default="callee", help="callee user part (call)")
    ap.add_argument("--user-agent", default="sipgw-bench-probe")
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    probe = Probe(host, int(port), timeout=args.timeout, user=args.user, password=args.password,
                  domain=args.domain, service=args.service, user_agent=args.user_agent)
    result = asyncio.run(run(probe, args.kind, args.rate, args.seconds, args.delay))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
