"""``sipgw devices``: add/list/show/remove against a real Valkey, and the embedded store
started for one command when no gateway runs (its AOF keeps the change)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from gateway.config import Config
from gateway.registrar.cli import devices_main


def _run(argv: list[str], cfg: Config) -> tuple[int, str]:
    # The command runs its own event loop, as from a shell; the test thread hosts the
    # reactor's loop, so run it in a worker thread.
    from concurrent.futures import ThreadPoolExecutor

    out = io.StringIO()
    with ThreadPoolExecutor(1) as ex:
        rc = ex.submit(devices_main, argv, cfg, out=out).result(timeout=60)
    return rc, out.getvalue()


def _cfg(tmp_path: Path, url: str = "") -> Config:
    cfg = Config()
    cfg.server.data_dir = str(tmp_path / "data")
    cfg.redis.url = url
    return cfg


def test_add_list_show_remove(tmp_path: Path, redis_url: str) -> None:
    cfg = _cfg(tmp_path, redis_url)
    rc, text = _run(["add", "--mac", "00:04:F2:AB:CD:01", "--vendor", "Poly", "--model",
                     "VVX410", "--tenant", "acme"], cfg)
    assert rc == 0
    fields = dict(line.split(None, 1) for line in text.splitlines()[:5])
    assert fields["username"] == "0004f2abcd01" and fields["realm"] == "sipgw.localhost"
    assert fields["aor"] == "sip:0004f2abcd01@sipgw.localhost" and len(fields["password"]) >= 16
    rc, _ = _run(["add", "--mac", "0004f2abcd02", "--vendor", "Yealink", "--model", "T46S",
                  "--tenant", "other", "--username", "desk-2"], cfg)
    assert rc == 0
    rc, text = _run(["list", "--tenant", "acme", "--json"], cfg)
    assert rc == 0 and [d["device_id"] for d in json.loads(text)] == ["0004f2abcd01"]
    rc, text = _run(["list"], cfg)
    assert "2 device(s)" in text and "desk-2" not in text  # no secrets, no HA1s either
    rc, text = _run(["show", "0004f2abcd02", "--json"], cfg)
    d = json.loads(text)
    assert rc == 0 and d["sip_username"] == "desk-2" and d["bindings"] == []
    assert "ha1" not in text and "password" not in text
    rc, text = _run(["show", "0004f2abcd02"], cfg)
    assert "pairing    unpaired" in text and "not registered" in text
    assert _run(["remove", "0004f2abcd02"], cfg)[0] == 0
    assert _run(["show", "0004f2abcd02"], cfg)[0] == 1
    assert _run(["add", "--mac", "nonsense", "--vendor", "x", "--model", "y", "--tenant", "t"],
                cfg)[0] == 1


def test_embedded_store_persists_between_commands(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    rc, _ = _run(["add", "--mac", "0004f2abcd09", "--vendor", "Poly", "--model", "VVX410",
                  "--tenant", "acme"], cfg)
    assert rc == 0
    assert not list((tmp_path / "data" / "valkey").glob("valkey.sock"))  # stopped again
    rc, text = _run(["list", "--json"], cfg)
    assert rc == 0 and [d["device_id"] for d in json.loads(text)] == ["0004f2abcd09"]
