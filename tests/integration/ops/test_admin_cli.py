"""``sipgw devices bulk-sign-in`` against the admin API on loopback (the CLI runs in a thread)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
import pytest_twisted

from gateway.ops.admin_cli import bulk_sign_in_main
from integration.ops.env import admin_env, aio

pytestmark = pytest.mark.integration


@pytest_twisted.ensureDeferred
async def test_cli_prints_per_row_results(redis_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        async with admin_env(redis_url, tmp_path / "data") as env:
            dev, _ = await env.add_device("00:04:f2:00:02:01")
            await env.put_binding(dev)
            csv = tmp_path / "rows.csv"
            csv.write_text("Username,HardwareId\nlobby@contoso.example,00-04-f2-00-02-01\n"
                           "lobby@contoso.example,00-04-f2-00-02-02\n")
            out = io.StringIO()
            rc = await asyncio.to_thread(
                bulk_sign_in_main, [str(csv), "--region", "emea", "--url", env.url],
                env.node.config, out)  # token read from <data_dir>/secrets/admin.token
            text = out.getvalue()
            assert rc == 1, text
            assert "1 batch(es) queued in EMEA" in text
            assert "ok  line     2 00-04-f2-00-02-01" in text and "signed_in" in text
            assert "ERR line     3" in text and "device_not_found" in text
            out = io.StringIO()
            rc = await asyncio.to_thread(
                bulk_sign_in_main, [str(csv), "--region", "NOAM", "--url", env.url,
                                    "--token", "wrong"], env.node.config, out)
            assert rc == 2 and "refused (401)" in out.getvalue()
            rc = await asyncio.to_thread(
                bulk_sign_in_main, [str(tmp_path / "missing.csv"), "--region", "NOAM"],
                env.node.config, io.StringIO())
            assert rc == 2
    await aio(go())
