"""Connecting to the shared store: ``redis.asyncio`` from a URL.

Supported: ``redis://``, ``rediss://`` (TLS), ``unix://`` and
``redis+sentinel://host:port[,host:port]/service_name[/db]`` for Redis Sentinel.
"""

from __future__ import annotations

from urllib.parse import urlparse

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel


def connect(url: str, *, decode_responses: bool = False, max_connections: int = 64,
            pool_timeout: float = 5.0, **kwargs: object) -> aioredis.Redis:
    """Return a ``redis.asyncio.Redis`` client for ``url`` (no I/O happens until first use)."""
    if url.startswith("redis+sentinel://"):
        parsed = urlparse(url)
        hosts = []
        for hp in (parsed.netloc.rsplit("@", 1)[-1]).split(","):
            host, _, port = hp.partition(":")
            hosts.append((host, int(port or 26379)))
        parts = [p for p in parsed.path.split("/") if p]
        if not parts:
            raise ValueError("sentinel URL needs a service name: redis+sentinel://h:p/mymaster")
        service = parts[0]
        db = int(parts[1]) if len(parts) > 1 else 0
        sentinel = Sentinel(hosts, password=parsed.password, decode_responses=decode_responses)
        return sentinel.master_for(service, db=db, password=parsed.password,
                                   decode_responses=decode_responses, **kwargs)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"unsupported Redis URL scheme in {url!r}")
    # A blocking pool: a burst beyond max_connections waits for a free connection
    # instead of failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout,
        decode_responses=decode_responses, **kwargs)
    return aioredis.Redis(connection_pool=pool)
