"""Registrar integration helpers: provisioning through the gateway's Valkey, a digest-speaking
UDP client, and waiting on Redis conditions with a deadline (never a bare sleep)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis as redis_sync

from gateway.sip.digest import DigestChallenge, compute_ha1, compute_response
from gateway.sip.message import SipResponse, parse_message

REALM = "sipgw.localhost"
UA = "Yealink SIP-T46S 66.86.0.15"
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(__import__("sys").executable).parent
T = TypeVar("T")

# Every listener ephemeral, so parallel test runs never collide.
BASE: dict[str, dict[str, Any]] = {"identity": {"phone_ui_port": 0}}


def require_tool(name: str) -> str:
    """Path of a system tool; skip when absent, fail under CI=true (as tests/conftest.py)."""
    import os
    import shutil

    import pytest

    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if path:
        return path
    msg = f"system tool {name!r} not installed (make test installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def overrides(**sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


def provision(redis_url: str, count: int, *, prefix: int = 0x650000,
              vendor: str = "Yealink", model: str = "T46S") -> list[tuple[str, str]]:
    """Create ``count`` devices; returns (sip username, password) pairs."""
    from gateway.registrar.admin import add_device
    from gateway.state.redis import connect

    async def run() -> list[tuple[str, str]]:
        r = connect(redis_url)
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> tuple[str, str]:
            async with sem:
                dev, pw = await add_device(r, f"0015{prefix + i:08x}"[-12:], vendor, model,
                                           "tenant-a", REALM)
            return dev.sip_username, pw
        try:
            return list(await asyncio.gather(*(one(i) for i in range(count))))
        finally:
            await r.aclose()
    return run_async(run)


def run_async(fn: Callable[[], Any]) -> Any:
    """Run a coroutine function to completion on a private loop in a worker thread (the
    test's own thread hosts the reactor's loop)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        return ex.submit(lambda: asyncio.run(fn())).result(timeout=120)


def write_csv(path: Path, devices: list[tuple[str, str]], ua: str = UA) -> Path:
    lines = ["SEQUENTIAL"] + [f"{u};[authentication username={u} password={p}];{REALM};{ua}"
                              for u, p in devices]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(cond: Callable[[], T], timeout: float, what: str, step: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last {v!r})")
        time.sleep(step)


def live_bindings(r: redis_sync.Redis, aor: str) -> list[dict[str, Any]]:
    import json

    now = time.time()
    out = []
    for raw in r.hvals(f"sipgw:reg:{{{aor}}}:b"):
        b = json.loads(raw)
        if b["expires"] > now:
            out.append(b)
    return out


class UdpPhone:
    """A minimal UDP phone: REGISTER, answer the 401 with a digest, return the final response."""

    def __init__(self, host: str, port: int, user: str, password: str, *, ua: str = UA,
                 algorithm: str = "MD5") -> None:
        self.host, self.port, self.user, self.password = host, port, user, password
        self.ua, self.algorithm = ua, algorithm
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5.0)
        self.lport = self.sock.getsockname()[1]
        self.call_id = uuid.uuid4().hex
        self.cseq = 0

    def _request(self, expires: int, auth: str | None, contact: str | None = None) -> bytes:
        self.cseq += 1
        contact = contact or f"<sip:{self.user}@127.0.0.1:{self.lport}>"
        lines = [
            f"REGISTER sip:{REALM} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.lport};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{REALM}>;tag={self.call_id[:8]}",
            f"To: <sip:{self.user}@{REALM}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: {contact}",
            f"Expires: {expires}",
            f"User-Agent: {self.ua}",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def _exchange(self, data: bytes, to: tuple[str, int] | None = None) -> SipResponse:
        self.sock.sendto(data, to or (self.host, self.port))
        while True:
            reply, _ = self.sock.recvfrom(65535)
            msg = parse_message(reply)
            if isinstance(msg, SipResponse) and msg.status >= 200:
                return msg

    def register(self, expires: int = 3600, contact: str | None = None, *,
                 answer_to: tuple[str, int] | None = None) -> SipResponse:
        """REGISTER and answer the challenge; ``answer_to`` sends the answer to another node."""
        resp = self._exchange(self._request(expires, None, contact))
        if resp.status != 401:
            return resp
        return self._exchange(self.answer(resp, expires, contact), answer_to)

    def answer(self, challenge: SipResponse, expires: int = 3600,
               contact: str | None = None) -> bytes:
        """The REGISTER answering ``challenge`` (a 401), as bytes to send."""
        resp = challenge
        ch = next(c for c in (DigestChallenge.parse(v)
                              for v in resp.headers.get_raw("WWW-Authenticate"))
                  if c.algorithm == self.algorithm)
        uri = f"sip:{REALM}"
        ha1 = compute_ha1(self.user, ch.realm, self.password, self.algorithm)
        cnonce = uuid.uuid4().hex[:8]
        digest = compute_response(ha1, "REGISTER", uri, ch.nonce, algorithm=self.algorithm,
                                  qop="auth", nc=1, cnonce=cnonce)
        auth = (f'Digest username="{self.user}", realm="{ch.realm}", nonce="{ch.nonce}", '
                f'uri="{uri}", response="{digest}", algorithm={self.algorithm}, qop=auth, '
                f'nc=00000001, cnonce="{cnonce}"')
        return self._request(expires, auth, contact)

    def close(self) -> None:
        self.sock.close()
