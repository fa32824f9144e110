"""Shared fixtures: a real private Valkey per test session, flushed between tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.state.valkey import EmbeddedValkey

REPO = Path(__file__).resolve().parent.parent
SHARED_TESTDATA = REPO.parent / "shared" / "testdata"


def require_tool(name: str) -> str:
    """Path of a system tool; skip when absent, but fail under CI=true (never skip in CI)."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"system tool {name!r} not installed (make test installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def testdata_dir(sub: str) -> Path:
    d = SHARED_TESTDATA / sub
    if d.is_dir():
        return d
    msg = f"{d} absent: the shared test data lives beside the checkout"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), tcp_port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(valkey_server: EmbeddedValkey) -> str:
    """URL of a flushed database on the session's Valkey (TCP, so subprocesses can share it)."""
    import redis

    r = redis.Redis.from_url(valkey_server.tcp_url or valkey_server.url)
    r.flushall()
    r.close()
    return valkey_server.tcp_url or valkey_server.url
