"""NAT keep-alives from `sipgw serve`: the node owning a UDP binding pings it with OPTIONS;
a phone that answers keeps its binding, a phone that went silent loses it without sending
anything, so calls stop being offered to a phone nobody can reach."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import redis as redis_sync

from gateway.sip.message import SipRequest, build_response, parse_message

from ..gateway_process import GatewayProcess
from .helpers import REALM, UdpPhone, live_bindings, overrides, provision, wait_for


def _answer_options(phone: UdpPhone, stop: threading.Event, seen: list[str]) -> None:
    """Answer every OPTIONS that reaches the phone's socket with 200 OK."""
    phone.sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, addr = phone.sock.recvfrom(65535)
        except TimeoutError:
            continue
        except OSError:
            return
        msg = parse_message(data)
        if isinstance(msg, SipRequest) and msg.method == "OPTIONS":
            seen.append(msg.uri.user or "")
            phone.sock.sendto(bytes(build_response(msg, 200, to_tag="ka")), addr)


def test_keepalive_keeps_answering_phone_and_drops_silent_one(tmp_path: Path,
                                                             redis_url: str) -> None:
    (a_user, a_pw), (b_user, b_pw), (c_user, c_pw) = provision(redis_url, 3, prefix=0x670000)
    cfg = overrides(redis={"url": redis_url},
                    registrar={"keepalive_interval": 0.5, "keepalive_failures": 2})
    r = redis_sync.Redis.from_url(redis_url)
    stop = threading.Event()
    seen: list[str] = []
    with GatewayProcess(tmp_path, cfg) as gw:
        alive = UdpPhone(*gw.sip("udp"), a_user, a_pw)
        silent = UdpPhone(*gw.sip("udp"), b_user, b_pw)
        direct = UdpPhone(*gw.sip("udp"), c_user, c_pw)
        answerer = threading.Thread(target=_answer_options, args=(alive, stop, seen),
                                    daemon=True)
        try:
            # both behind a NAT: their Contacts name addresses their packets do not come from
            assert alive.register(expires=3600, contact=f"<sip:{a_user}@192.168.1.20:5060>"
                                  ).status == 200
            assert silent.register(expires=3600, contact=f"<sip:{b_user}@192.168.1.21:5060>"
                                   ).status == 200
            # reachable at its own Contact: no pinhole to hold open, never pinged
            assert direct.register(expires=3600).status == 200
            answerer.start()
            a_aor, b_aor = f"sip:{a_user}@{REALM}", f"sip:{b_user}@{REALM}"
            assert live_bindings(r, b_aor)
            # the silent phone sends nothing more; its binding goes after 2 missed rounds
            wait_for(lambda: not live_bindings(r, b_aor), 30, "silent phone's binding removed")
            # OPTIONS went to the contact of the answering phone, and it is still reachable
            wait_for(lambda: len(seen) >= 2, 15, "two keep-alives at the answering phone")
            assert set(seen) == {a_user}
            assert live_bindings(r, a_aor), "a phone answering keep-alives lost its binding"
            assert live_bindings(r, f"sip:{c_user}@{REALM}"), "a phone not behind NAT was dropped"
            direct.sock.settimeout(0.1)
            try:
                stray = direct.sock.recv(65535)
            except TimeoutError:
                stray = b""
            assert not stray, f"a phone not behind NAT was pinged: {stray[:80]!r}"
            metrics = httpx.get(gw.metrics_url, timeout=10).text
            assert "sipgw_keepalive_removed_total 1.0" in metrics, metrics[-2000:]
        finally:
            stop.set()
            answerer.join(5) if answerer.is_alive() else None
            alive.close()
            silent.close()
            direct.close()
            r.close()
