"""baresip <-> baresip through `sipgw serve` and its reference backend.

Two real baresip phones, paired with Alice and Bob, register with digest; Alice's dials
Bob's number; the B2BUA places the backend call, the backend offers it to Bob's
endpoint, the gateway rings Bob's baresip, which answers (answermode=auto). Alice's
baresip then quits, which hangs up: the BYE crosses the gateway and ends Bob's side.

baresip 1.0.0 sends ``User-Agent: baresip v1.0.0 (...)`` (compiled in), which the device
table does not admit; the gateway admits it through ``[registrar] lab_user_agents``,
the operator's exception for lab clients, and flags it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import redis as redis_sync
from support import require_tool

from gateway.backend.directory import default_directory_path, load_directory

from ..gateway_process import GatewayProcess
from ..registrar.helpers import REALM, run_async, wait_for
from ..registrar.test_baresip import _free_udp_port

DIRECTORY = load_directory(default_directory_path())
ALICE = DIRECTORY.user_by_upn("alice@contoso.example")
BOB = DIRECTORY.user_by_upn("bob@contoso.example")
assert ALICE and BOB and BOB.number


def _provision_paired(redis_url: str) -> list[tuple[str, str, str]]:
    """Two devices paired with Alice and Bob: (device id, sip username, password)."""
    from gateway.registrar.admin import add_device
    from gateway.registrar.devices import DeviceStore
    from gateway.state.redis import connect

    async def run() -> list[tuple[str, str, str]]:
        r = connect(redis_url)
        try:
            out = []
            for i, user in enumerate((ALICE, BOB)):
                dev, pw = await add_device(r, f"0015{0x680000 + i:08x}"[-12:], "Yealink",
                                           "T54W", user.tenant, REALM)
                await DeviceStore(r, REALM).set_paired(dev.device_id, user.oid)
                out.append((dev.device_id, dev.sip_username, pw))
            return out
        finally:
            await r.aclose()
    result: list[tuple[str, str, str]] = run_async(run)
    return result


def _baresip_dir(root: Path, name: str, user: str, password: str, gw: tuple[str, int],
                 *, auto_answer: bool) -> Path:
    d = root / name
    d.mkdir()
    (d / "config").write_text(
        f"sip_listen\t\t127.0.0.1:{_free_udp_port()}\n"
        "module_path\t\t/usr/lib/baresip/modules\n"
        "module\t\t\tstdio.so\nmodule\t\t\tg711.so\n"
        "module_app\t\taccount.so\nmodule_app\t\tmenu.so\n"
        "audio_player\t\tnone\naudio_source\t\tnone\naudio_alert\t\tnone\n"
        "rtp_ports\t\t20000-29999\n")
    answer = ";answermode=auto" if auto_answer else ""
    (d / "accounts").write_text(
        f"<sip:{user}@{REALM}>;auth_pass={password};outbound=\"sip:{gw[0]}:{gw[1]};"
        f"transport=udp\";regint=300;audio_codecs=PCMU{answer}\n")
    (d / "contacts").write_text("")
    return d


class Baresip:
    def __init__(self, exe: str, conf: Path, extra: list[str]) -> None:
        self.log_path = conf / "baresip.log"
        self._log = self.log_path.open("w+")
        self.proc = subprocess.Popen([exe, "-f", str(conf), "-s", *extra],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=conf)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


def _legs(r: redis_sync.Redis) -> list[Any]:
    return list(r.scan_iter(match="b2b:leg:*"))


def test_baresip_calls_baresip_and_hangs_up(tmp_path: Path, redis_url: str) -> None:
    exe = require_tool("baresip")
    (a_id, a_user, a_pw), (b_id, b_user, b_pw) = _provision_paired(redis_url)
    cfg = {"redis": {"url": redis_url}, "identity": {"phone_ui_port": 0},
           "backend": {"ring_timeout": 10},
           "registrar": {"lab_user_agents": ["baresip "]}}
    r = redis_sync.Redis.from_url(redis_url)
    phones: list[Baresip] = []
    with GatewayProcess(tmp_path, cfg) as gw:
        try:
            from gateway.backend.client import BackendClient

            host, port = gw.addr("backend", "http")
            token = (gw.data_dir / "secrets" / "backend.token").read_bytes().hex()

            async def bob_online() -> bool:
                api = BackendClient(f"http://{host}:{port}", token)
                try:
                    eps = await api.list_endpoints(BOB.oid)
                finally:
                    await api.close()
                return any(e.device_id == b_id for e in eps)

            bob = Baresip(exe, _baresip_dir(tmp_path, "bob", b_user, b_pw, gw.sip("udp"),
                                             auto_answer=True), [])
            phones.append(bob)
            wait_for(lambda: run_async(bob_online), 20, "Bob's baresip registered and online",
                     step=0.2)
            assert r.hget(f"sipgw:dev:{b_id}", "fw_compliance") == b"LAB_CLIENT"

            alice = Baresip(exe, _baresip_dir(tmp_path, "alice", a_user, a_pw, gw.sip("udp"),
                                               auto_answer=False),
                            ["-e", f"/dial sip:{BOB.number}@{REALM}", "-t", "12"])
            phones.append(alice)
            wait_for(lambda: "Call established" in bob.output()
                     and "Call established" in alice.output(), 20, "the call answered at both")
            assert len(_legs(r)) == 2, "one leg per side while the call is up"
            # Alice's baresip quits at -t: it hangs up, the BYE reaches Bob through us
            assert alice.proc.wait(30) is not None
            wait_for(lambda: "closed" in bob.output().split("Call established", 1)[1], 15,
                     "Bob's call ended by the relayed BYE")
            wait_for(lambda: not _legs(r), 10, "no leg left behind")
        except BaseException:
            for p in phones:
                print(f"--- {p.log_path}\n{p.output()[-4000:]}")
            print(gw.output()[-6000:])
            raise
        finally:
            for p in phones:
                p.stop()
            r.close()
