"""Shared fixtures: a real private Valkey per test session, flushed between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import REPO, SHARED_TESTDATA, require_tool, testdata_dir  # noqa: F401 - re-export

from gateway.state.valkey import EmbeddedValkey


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
