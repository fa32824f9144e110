"""The SIP core is sans-I/O: it imports with Twisted, asyncio and Redis unavailable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gateway.sip

SCRIPT = r"""
import importlib, pkgutil, sys

BLOCKED = ("twisted", "asyncio", "redis", "valkey", "aiortc")

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the SIP core must stay sans-I/O")
        return None

for mod in list(sys.modules):
    if mod.split(".")[0] in BLOCKED:
        del sys.modules[mod]
sys.meta_path.insert(0, Block())
import gateway.sip
names = [m.name for m in pkgutil.iter_modules(gateway.sip.__path__, "gateway.sip.")]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print(" ".join(sorted(names)))
"""


def test_every_core_module_imports_without_io_frameworks() -> None:
    root = Path(gateway.sip.__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    imported = out.stdout.split()
    for core in ("gateway.sip.message", "gateway.sip.headers", "gateway.sip.uri",
                 "gateway.sip.errors"):
        assert core in imported


def test_the_blocker_really_blocks() -> None:
    probe = SCRIPT.replace("import gateway.sip\n", "import gateway.sip\nimport asyncio\n", 1)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "blocked" in out.stderr
