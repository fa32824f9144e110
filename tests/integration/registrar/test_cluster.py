"""Two `sipgw serve` nodes share one Valkey: a registration made through one is visible and
refreshable through the other (a nonce from node A answered at node B: stateless HMAC nonces
with a shared secret); a node killed with SIGKILL and restarted on its data directory
(embedded Valkey, AOF) has lost no binding."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import redis as redis_sync

from gateway.registrar.admin import show_device

from ..gateway_process import GatewayProcess
from .helpers import REALM, UdpPhone, overrides, provision, run_async, wait_for


def test_two_nodes_share_registrations_and_nonces(tmp_path: Path, redis_url: str) -> None:
    [(user, pw)] = provision(redis_url, 1)
    mac = f"0015{0x650000:08x}"[-12:]
    secret = tmp_path / "nonce.key"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)

    def node(name: str) -> GatewayProcess:
        d = tmp_path / name
        d.mkdir()
        return GatewayProcess(d, overrides(redis={"url": redis_url}, server={"node_id": name},
                                           registrar={"nonce_secret_file": str(secret)}))

    async def shown() -> dict[str, object] | None:
        from gateway.state.redis import connect
        r = connect(redis_url)
        try:
            return await show_device(r, mac, REALM)
        finally:
            await r.aclose()

    with node("node-a") as a, node("node-b") as b:
        phone = UdpPhone(*a.sip("udp"), user, pw)
        try:
            assert phone.register(expires=600).status == 200
            # node B's view of the shared store: the binding, owned by node A
            d = run_async(shown)
            assert d is not None
            [bnd] = d["bindings"]  # type: ignore[index]
            assert bnd["node_id"] == "node-a" and bnd["source"] == f"udp:127.0.0.1:{phone.lport}"
            # challenged by A, answered at B: B accepts A's nonce and now owns the flow
            resp = phone.register(expires=900, answer_to=b.sip("udp"))
            assert resp.status == 200, resp.headers.get("Warning")
            d = run_async(shown)
            [bnd] = d["bindings"]  # type: ignore[index]
            assert bnd["node_id"] == "node-b" and bnd["expires"] - time.time() > 800
        finally:
            phone.close()


def _valkey_pids(data_dir: Path) -> list[int]:
    """The embedded valkey-server our gateway child started in ``data_dir`` (by its --dir)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"valkey-server") and str(data_dir).encode() in argv:
            out.append(int(p.name))
    return out


def test_kill_and_restart_loses_no_binding(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = overrides(redis={"embedded_tcp_port": 0})
    gw = GatewayProcess(tmp_path, cfg, data_dir=data).start()
    try:
        host, port = gw.addr("valkey", "tcp")
        devices = provision(f"redis://{host}:{port}", 20)
        for user, pw in devices:
            phone = UdpPhone(*gw.sip("udp"), user, pw)
            try:
                assert phone.register(expires=600).status == 200
            finally:
                phone.close()
        r = redis_sync.Redis(host=host, port=port)
        before = {k: r.hgetall(k) for k in r.scan_iter("sipgw:reg:*:b")}
        r.close()
        assert len(before) == 20
        # the node dies at once, and with it its store (as a crashed machine would)
        stores = _valkey_pids(data / "valkey")
        gw.kill()
        for pid in stores:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _valkey_pids(data / "valkey"), 10, "the store to be gone")
    finally:
        gw.stop()
    again = GatewayProcess(tmp_path, cfg, data_dir=data).start()
    try:
        host, port = again.addr("valkey", "tcp")
        r = redis_sync.Redis(host=host, port=port)
        after = {k: r.hgetall(k) for k in r.scan_iter("sipgw:reg:*:b")}
        assert after == before
        for raw in (v for h in after.values() for v in h.values()):
            assert json.loads(raw)["expires"] > time.time()
        r.close()
        # and the restarted node still authenticates the same devices
        user, pw = devices[0]
        phone = UdpPhone(*again.sip("udp"), user, pw)
        try:
            assert phone.register(expires=600).status == 200
        finally:
            phone.close()
    finally:
        again.stop()
