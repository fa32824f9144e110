"""baresip (libre's SIP stack) registers with digest auth as a real phone would.

baresip 1.0.0 always sends ``User-Agent: baresip v1.0.0 (x86_64/linux)`` (its
software string is compiled in; there is no setting to override it), which names
no supported vendor: the firmware policy rejects it with 403 and a Warning that
says so. The firmware verdict is evaluated only after the digest check passed, so
the 403 with that reason, and the verdict stored on the device, prove that a real
client answered our challenge correctly. The admitted path with catalog
User-Agents is covered by the SIPp and raw-socket tests.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import redis as redis_sync

from ..gateway_process import GatewayProcess
from .helpers import REALM, overrides, provision, require_tool, wait_for


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _baresip_dir(root: Path, user: str, password: str, gw: tuple[str, int]) -> Path:
    d = root / "baresip"
    d.mkdir()
    (d / "config").write_text(
        f"sip_listen\t\t127.0.0.1:{_free_udp_port()}\n"
        "module_path\t\t/usr/lib/baresip/modules\n"
        "module_app\t\taccount.so\n"
        "audio_player\t\tnone\naudio_source\t\tnone\naudio_alert\t\tnone\n")
    (d / "accounts").write_text(
        f"<sip:{user}@{REALM}>;auth_pass={password};outbound=\"sip:{gw[0]}:{gw[1]};"
        "transport=udp\";regint=60\n")
    (d / "contacts").write_text("")
    return d


def test_baresip_authenticates_and_is_rejected_as_unknown_vendor(tmp_path: Path,
                                                                 redis_url: str) -> None:
    baresip = require_tool("baresip")
    [(user, pw)] = provision(redis_url, 1)
    r = redis_sync.Redis.from_url(redis_url)
    with GatewayProcess(tmp_path, overrides(redis={"url": redis_url})) as gw:
        conf = _baresip_dir(tmp_path, user, pw, gw.sip("udp"))
        log = (tmp_path / "baresip.log").open("w+")
        proc = subprocess.Popen([baresip, "-f", str(conf), "-s", "-t", "30"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
        try:
            dev_key = "sipgw:dev:" + f"0015{0x650000:08x}"[-12:]
            try:
                ua = wait_for(lambda: r.hget(dev_key, "fw_user_agent"), 20,
                              "baresip's REGISTER to be authenticated and judged")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{(tmp_path / 'baresip.log').read_text()[-3000:]}"
                                     f"\n{gw.output()[-2000:]}") from None
            assert ua.startswith(b"baresip")
            assert r.hget(dev_key, "fw_admitted") == b"0"
            assert r.hget(dev_key, "fw_compliance") == b"UNKNOWN_VENDOR"
            assert b"no supported device vendor" in (r.hget(dev_key, "fw_reason") or b"")
            assert r.exists(f"sipgw:reg:{{sip:{user}@{REALM}}}:b") == 0
        finally:
            proc.kill()
            proc.wait(10)
            log.close()
            r.close()
        out = (tmp_path / "baresip.log").read_text()
        # baresip reports the 403 and the gateway's reason
        assert "403" in out, out[-2000:]
