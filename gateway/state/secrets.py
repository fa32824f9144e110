"""Node secrets kept as files (mode 0600) in the data directory, never in Redis.

Nodes that must agree on a secret (the digest nonce HMAC key) are given the
same file through configuration.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically, the file created with its final ``mode``.

    Written beside the target and renamed, so a crash never leaves a half-written key,
    and never world-readable, not even for a moment.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_key(path: Path, nbytes: int = 32) -> bytes:
    """The key in ``path``; created with ``nbytes`` random bytes (0600) when absent."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(nbytes)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    try:
        os.link(tmp, path)  # never overwrite a key another process just created
    except FileExistsError:
        key = path.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    return key
