"""Overload end to end against `sipgw serve`: a burst of new calls far beyond what the
node reads at once is refused with 503 + Retry-After (not left to time out), while an
emergency call sent in the middle of the burst is never refused for overload."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import httpx

from gateway.sip.message import SipResponse, parse_message

from .gateway_process import GatewayProcess
from .registrar.helpers import REALM, overrides


def _invite(i: int, lport: int, user: str) -> bytes:
    return (f"INVITE sip:{user}@{REALM} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKflood{i};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:flood@{REALM}>;tag=f{i}\r\n"
            f"To: <sip:{user}@{REALM}>\r\nCall-ID: flood-{i}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:flood@127.0.0.1:{lport}>\r\nContent-Length: 0\r\n\r\n").encode()


def test_call_burst_is_shed_with_503_but_not_emergency(tmp_path: Path, redis_url: str) -> None:
    cfg = overrides(redis={"url": redis_url}, sip={"shed_backlog_kib": 16})
    with GatewayProcess(tmp_path, cfg) as gw:
        host, port = gw.sip("udp")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        lport = sock.getsockname()[1]
        burst, emergency = 1200, 600
        try:
            for i in range(burst):
                sock.sendto(_invite(i, lport, "911" if i == emergency else "+14255550100"),
                            (host, port))
            final: dict[str, SipResponse] = {}
            sock.settimeout(0.5)
            deadline = time.monotonic() + 30
            while len(final) < burst and time.monotonic() < deadline:
                try:
                    msg = parse_message(sock.recvfrom(65535)[0])
                except TimeoutError:
                    continue
                if isinstance(msg, SipResponse) and msg.status >= 200:
                    final.setdefault(msg.call_id, msg)
        finally:
            sock.close()
        assert len(final) == burst, f"{burst - len(final)} INVITEs got no final answer"
        shed = [r for r in final.values() if r.status == 503]
        assert shed, {r.status for r in final.values()}
        for r in shed:
            assert (r.headers.get("Retry-After") or "").isdigit()
            assert "overloaded" in (r.headers.get("Warning") or "")
        assert final[f"flood-{emergency}"].status != 503 or \
            "overloaded" not in (final[f"flood-{emergency}"].headers.get("Warning") or "")
        text = httpx.get(gw.metrics_url, timeout=10).text
        m = re.search(r'^sipgw_requests_shed_total\{method="INVITE"\} (\S+)$', text, re.M)
        assert m and float(m.group(1)) == len(shed)
