"""Helpers shared by tests (importable as ``support``: pyproject puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SHARED_TESTDATA = SHARED / "testdata"


def require_tool(name: str) -> str:
    """Path of a system tool; skip when absent, but fail under CI=true (never skip in CI)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)
    if path:
        return path
    msg = f"system tool {name!r} not installed (make test installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def shared_dir(sub: str) -> Path:
    """A folder of ../shared (test data, seeds), read in place; never copied into the repo."""
    d = SHARED / sub
    if d.is_dir():
        return d
    msg = f"{d} absent: the shared folder lives beside the checkout"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def testdata_dir(sub: str) -> Path:
    return shared_dir(f"testdata/{sub}")
