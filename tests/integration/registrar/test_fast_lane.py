"""The registrar's fast lane, end to end against `sipgw serve` over real UDP.

A phone registered by the fast lane of node A and refreshed through the general path
of node B (``fast_lane = false``) sharing one Valkey keeps one binding with the same
fields: both paths make the same decisions and write the same state. A retransmitted
REGISTER gets the very same 200 back (no second processing, no 500 for a CSeq not
higher). Requests off the plain shape (two Contacts, a wrong password) are answered by
the general path, as before.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import redis as redis_sync

from gateway.sip.message import SipResponse, parse_message

from ..gateway_process import GatewayProcess
from .helpers import REALM, UdpPhone, live_bindings, overrides, provision


def _lane(gw: GatewayProcess) -> dict[str, float]:
    text = httpx.get(gw.metrics_url, timeout=10).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^sipgw_register_fast_lane_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}


def _recv(sock: socket.socket) -> bytes:
    while True:
        data, _ = sock.recvfrom(65535)
        msg = parse_message(data)
        if isinstance(msg, SipResponse) and msg.status >= 200:
            return data


def test_fast_and_general_paths_agree(tmp_path: Path, redis_url: str) -> None:
    (user, pw), (other, other_pw) = provision(redis_url, 2, prefix=0x6A0000)
    r = redis_sync.Redis.from_url(redis_url)
    aor = f"sip:{user}@{REALM}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with GatewayProcess(tmp_path / "a", overrides(redis={"url": redis_url})) as fast, \
            GatewayProcess(tmp_path / "b", overrides(
                redis={"url": redis_url}, server={"node_id": "general"},
                registrar={"fast_lane": False})) as general:
        phone = UdpPhone(*fast.sip("udp"), user, pw)
        try:
            ok = phone.register(expires=600)
            assert ok.status == 200, ok
            assert _lane(fast)["answered"] == 2  # the challenge and the answer
            first = live_bindings(r, aor)
            assert len(first) == 1 and first[0]["node_id"] != "general"

            # the same phone refreshes through the general path of node B
            phone.host, phone.port = general.sip("udp")
            again = phone.register(expires=600)
            assert again.status == 200, again
            assert _lane(general) == {}  # no fast lane there
            second = live_bindings(r, aor)
            assert len(second) == 1, "the two paths bound the contact under different keys"
            varying = {"expires", "registered", "cseq", "node_id"}
            assert {k: v for k, v in first[0].items() if k not in varying} == \
                {k: v for k, v in second[0].items() if k not in varying}
            assert second[0]["node_id"] == "general"
            # and both 200s list the binding alike
            assert [c.split(";expires=")[0] for c in ok.headers.get_all("Contact")] == \
                [c.split(";expires=")[0] for c in again.headers.get_all("Contact")]
            assert {n for n, _ in ok.headers._items} == {n for n, _ in again.headers._items}
        finally:
            phone.close()

        # a retransmitted REGISTER gets the same final response, processed once
        phone = UdpPhone(*fast.sip("udp"), other, other_pw)
        try:
            challenge = phone._exchange(phone._request(600, None))
            assert challenge.status == 401
            answer = phone.answer(challenge, 600)
            phone.sock.sendto(answer, (phone.host, phone.port))
            one = _recv(phone.sock)
            phone.sock.sendto(answer, (phone.host, phone.port))
            two = _recv(phone.sock)
            assert one == two and b"SIP/2.0 200 OK" in one
            lane = _lane(fast)
            assert lane["retransmission"] == 1 and lane["answered"] == 4

            # off the plain shape: two contacts in one REGISTER, the general path
            two_contacts = f"<sip:{other}@127.0.0.1:{phone.lport}>, " \
                           f"<sip:{other}@127.0.0.2:{phone.lport}>"
            resp = phone.register(expires=600, contact=two_contacts)
            assert resp.status == 200, resp
            assert len(resp.headers.get_all("Contact")) >= 2
            assert _lane(fast)["answered"] == 4  # not the plain shape: never taken
        finally:
            phone.close()

        # a wrong password is refused as before (counted by the general path)
        intruder = UdpPhone(*fast.sip("udp"), other, "wrong-password")
        try:
            refused = intruder.register(expires=600)
            assert refused.status == 403, refused
            assert "authentication failed" in (refused.headers.get("Warning") or "")
            # its challenge came from the lane; the failing answer was handed over
            assert _lane(fast)["handed_over"] == 1
        finally:
            intruder.close()


def test_overload_sheds_new_registrations_with_503(tmp_path: Path, redis_url: str) -> None:
    """A burst far beyond what the node reads at once: new REGISTERs get 503 + Retry-After
    (none is lost or left unanswered), and once the backlog is drained phones register."""
    (user, pw), = provision(redis_url, 1, prefix=0x6B0000)
    cfg = overrides(redis={"url": redis_url}, sip={"shed_backlog_kib": 16})
    with GatewayProcess(tmp_path, cfg) as gw:
        host, port = gw.sip("udp")
        burst = 1500
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        lport = sock.getsockname()[1]
        sock.settimeout(10)
        try:
            for i in range(burst):
                sock.sendto((
                    f"REGISTER sip:{REALM} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKburst{i};rport\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:{user}@{REALM}>;tag=b{i}\r\n"
                    f"To: <sip:{user}@{REALM}>\r\nCall-ID: burst-{i}\r\nCSeq: 1 REGISTER\r\n"
                    f"Contact: <sip:{user}@127.0.0.1:{lport}>\r\nExpires: 600\r\n"
                    f"Content-Length: 0\r\n\r\n").encode(), (host, port))
            statuses: dict[int, int] = {}
            retry_after = set()
            for _ in range(burst):
                msg = parse_message(sock.recvfrom(65535)[0])
                assert isinstance(msg, SipResponse)
                statuses[msg.status] = statuses.get(msg.status, 0) + 1
                if msg.status == 503:
                    retry_after.add(msg.headers.get("Retry-After"))
                    assert "registrar overloaded" in (msg.headers.get("Warning") or "")
        finally:
            sock.close()
        assert set(statuses) <= {401, 503} and sum(statuses.values()) == burst, statuses
        assert statuses.get(503, 0) > 0, statuses
        assert all(v is not None and v.isdigit() and int(v) > 0 for v in retry_after)
        assert _lane(gw)["shed"] == statuses[503]

        # the backlog drained: shedding stopped, a phone registers
        phone = UdpPhone(host, port, user, pw)
        try:
            assert phone.register(expires=600).status == 200
        finally:
            phone.close()
