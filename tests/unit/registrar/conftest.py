"""Registrar test harness: a real Valkey, a settable clock, and a digest-speaking client."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import defer

from gateway.registrar import (
    AbuseGuard,
    BindingStore,
    DeviceStore,
    DigestAuthenticator,
    GuardConfig,
    Registrar,
    RegistrarConfig,
    RegistrarMetrics,
)
from gateway.sip.digest import DigestChallenge, compute_ha1, compute_response
from gateway.sip.message import SipRequest, SipResponse, parse_message
from gateway.sip.peer import Peer
from gateway.state.redis import connect

T = TypeVar("T")
REALM = "gw.test"
SECRET = b"0123456789abcdef0123456789abcdef"


def arun(coro: Coroutine[Any, Any, T]) -> defer.Deferred[T]:
    """Run a coroutine on the asyncio loop under Twisted's asyncio reactor.

    Tests return the Deferred; pytest-twisted waits for it.
    """
    from twisted.internet import reactor

    loop = reactor._asyncioEventloop  # type: ignore[attr-defined]
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro, loop=loop))


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Verdict:
    admitted: bool = True
    flagged: bool = False
    compliance: str = "SUPPORTED"
    reason: str = ""
    upgrade_to: str | None = None
    device: Any = None


@dataclass
class Policy:
    """In-memory stand-in for the firmware catalog: User-Agent substring -> verdict."""

    rules: dict[str, Verdict] = field(default_factory=dict)

    def evaluate(self, user_agent: str) -> Verdict:
        for needle, v in self.rules.items():
            if needle in user_agent:
                return v
        return Verdict()


_seq = itertools.count(1)


def register_text(user: str, contacts: list[str] | None = None, *, call_id: str = "cid-1",
                  cseq: int = 1, expires: int | None = None, extra: list[str] | None = None,
                  ua: str = "Yealink SIP-T46S 66.86.0.15", transport: str = "UDP") -> str:
    contacts = [f"<sip:{user}@192.168.1.10:5060>"] if contacts is None else contacts
    lines = [
        f"REGISTER sip:{REALM} SIP/2.0",
        f"Via: SIP/2.0/{transport} 192.168.1.10:5060;branch=z9hG4bK{next(_seq)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{REALM}>;tag=ft{next(_seq)}",
        f"To: <sip:{user}@{REALM}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"User-Agent: {ua}",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += extra or []
    return "\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n"


def parse(text: str) -> SipRequest:
    msg = parse_message(text.encode())
    assert isinstance(msg, SipRequest)
    return msg


def authorize(text: str, challenge_resp: SipResponse, user: str, password: str, *,
              algorithm: str = "SHA-256", nc: int = 1, cnonce: str = "c0ffee") -> str:
    """Add an Authorization header answering the 401's challenge for ``algorithm``."""
    ch = next(c for c in (DigestChallenge.parse(v)
                          for v in challenge_resp.headers.get_raw("WWW-Authenticate"))
              if c.algorithm == algorithm)
    uri = f"sip:{REALM}"
    ha1 = compute_ha1(user, ch.realm, password, algorithm)
    resp = compute_response(ha1, "REGISTER", uri, ch.nonce, algorithm=algorithm, qop="auth",
                            nc=nc, cnonce=cnonce)
    hdr = (f'Authorization: Digest username="{user}", realm="{ch.realm}", nonce="{ch.nonce}", '
           f'uri="{uri}", response="{resp}", algorithm={algorithm}, qop=auth, '
           f'nc={nc:08x}, cnonce="{cnonce}"')
    head, _, tail = text.partition("Content-Length")
    return head + hdr + "\r\nContent-Length" + tail


@dataclass
class Env:
    redis_url: str
    clock: Clock
    policy: Policy
    registry: CollectorRegistry
    config: RegistrarConfig
    _metrics: RegistrarMetrics | None = None

    @property
    def metrics(self) -> RegistrarMetrics:
        if self._metrics is None:
            self._metrics = RegistrarMetrics(self.registry)
        return self._metrics

    def make(self, node: str = "node-a") -> tuple[Registrar, Any]:
        """A registrar with its own Redis client (as a separate node would have)."""
        r = connect(self.redis_url)
        devices = DeviceStore(r, REALM, clock=self.clock)
        reg = Registrar(BindingStore(r), devices,
                        DigestAuthenticator(REALM, [SECRET], self.config.nonce_ttl,
                                            algorithms=("SHA-256", "MD5")),
                        AbuseGuard(r, self.config.guard), self.policy, self.config,
                        self.metrics if node == "node-a" else None,
                        clock=self.clock)
        return reg, r

    async def register(self, reg: Registrar, text: str, user: str | None = None,
                       password: str | None = None, *, peer: Peer | None = None,
                       node: str = "node-a", **kw: Any) -> SipResponse:
        """REGISTER; when credentials are given, answer the 401 like a phone would."""
        peer = peer or Peer("UDP", "203.0.113.5", 40000)
        resp = await reg.handle_register(parse(text), peer, node)
        if resp.status == 401 and user is not None and password is not None:
            resp = await reg.handle_register(parse(authorize(text, resp, user, password, **kw)),
                                             peer, node)
        return resp


@pytest.fixture
def env(redis_url: str) -> Iterator[Env]:
    cfg = RegistrarConfig(realm=REALM, expires_jitter=0.0,
                          guard=GuardConfig(source_failures=5, account_failures=5,
                                            account_rate=50, source_rate=400))
    yield Env(redis_url, Clock(), Policy(), CollectorRegistry(), cfg)
