"""Validation of Entra ID v2.0 ID tokens (OpenID Connect Core 1.0 §3.1.3.7) with pyjwt.

Checks, in order: the token parses and names an RS256 key (RFC 7515 §4.1.4
``kid``); ``tid`` is one of the allowed tenants (before any network traffic,
so a foreign token cannot make the gateway fetch keys); the signature against
the tenant's JWK Set (RFC 7517), fetched over HTTPS, cached, and refetched when
an unknown ``kid`` appears (key rotation) but at most once per
``refetch_interval``; the issuer (``{authority}/{tid}/v2.0``); the audience
(the client id); ``exp``/``nbf`` with a small leeway (RFC 7519 §4.1.4/§4.1.5);
the required claims ``oid``, ``preferred_username`` and ``name``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.request
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
from jwt.algorithms import RSAAlgorithm

MAX_JWKS_BYTES = 256 * 1024
REQUIRED_CLAIMS = ("iss", "aud", "exp", "nbf", "iat", "tid", "oid", "preferred_username",
                   "name")


class TokenRejected(Exception):
    """An ID token failed validation; ``reason`` is a stable code for logs, metrics and users."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class IdentityClaims:
    """The validated identity of a signed-in user (Entra ID v2.0 ID token claims)."""

    tid: str
    oid: str
    preferred_username: str
    name: str
    issuer: str
    audience: str
    issued_at: int
    expires_at: int


class TokenVerifier(Protocol):
    """The seam the pairing flow depends on (STYLE 9)."""

    async def validate(self, id_token: str) -> IdentityClaims: ...


JwksFetcher = Callable[[str], Awaitable[dict[str, Any]]]


def https_jwks_fetcher(ca_file: Path | str | None, timeout: float = 10.0) -> JwksFetcher:
    """Fetch a JWK Set over HTTPS, trusting ``ca_file`` (or the system roots), in a thread."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    def fetch_blocking(url: str) -> dict[str, Any]:
        if not url.startswith("https://"):
            raise TokenRejected("jwks_unavailable", "JWKS URL must be https")
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            body = resp.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise TokenRejected("jwks_unavailable", "JWKS too large")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise TokenRejected("jwks_unavailable", "JWKS is not a JSON object")
        return data

    async def fetch(url: str) -> dict[str, Any]:
        return await asyncio.to_thread(fetch_blocking, url)

    return fetch


@dataclass(slots=True)
class _TenantKeys:
    keys: dict[str, Any] = field(default_factory=dict)
    fetched_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TokenValidator:
    """Validates ID tokens of the allowed tenants for one client (OIDC Core §3.1.3.7)."""

    def __init__(self, tenant_allowlist: Collection[str], client_id: str, authority_base: str,
                 ca_file: Path | str | None = None, leeway: float = 60.0,
                 clock: Callable[[], float] = time.time, refetch_interval: float = 60.0,
                 fetcher: JwksFetcher | None = None) -> None:
        if not tenant_allowlist:
            raise ValueError("tenant_allowlist is empty: no tenant could sign in")
        self.tenants = frozenset(t.lower() for t in tenant_allowlist)
        self.client_id = client_id
        self.authority_base = authority_base.rstrip("/")
        self.leeway = leeway
        self.clock = clock
        self.refetch_interval = refetch_interval
        self._fetch = fetcher or https_jwks_fetcher(ca_file)
        self._cache: dict[str, _TenantKeys] = {}
        self.fetch_count = 0

    def issuer(self, tid: str) -> str:
        return f"{self.authority_base}/{tid}/v2.0"

    def jwks_uri(self, tid: str) -> str:
        return f"{self.authority_base}/{tid}/discovery/v2.0/keys"

    async def _key(self, tid: str, kid: str) -> Any:
        entry = self._cache.setdefault(tid, _TenantKeys())
        if kid in entry.keys:
            return entry.keys[kid]
        async with entry.lock:
            if kid in entry.keys:
                return entry.keys[kid]
            now = self.clock()
            if entry.fetched_at is not None and now - entry.fetched_at < self.refetch_interval:
                # Unknown kid again so soon: someone is probing, do not hammer the IdP.
                raise TokenRejected("unknown_kid", f"kid {kid[:64]!r} not in the tenant's keys")
            entry.fetched_at = now
            self.fetch_count += 1
            try:
                jwks = await self._fetch(self.jwks_uri(tid))
            except TokenRejected:
                raise
            except Exception as exc:  # noqa: BLE001 - network, TLS, JSON: one reason
                raise TokenRejected("jwks_unavailable", f"{type(exc).__name__}: {exc}") from None
            keys: dict[str, Any] = {}
            for jwk in jwks.get("keys", []) if isinstance(jwks.get("keys"), list) else []:
                if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not jwk.get("kid"):
                    continue
                try:
                    keys[str(jwk["kid"])] = RSAAlgorithm.from_jwk(jwk)
                except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
                    continue
            entry.keys = keys
        if kid not in entry.keys:
            raise TokenRejected("unknown_kid", f"kid {kid[:64]!r} not in the tenant's keys")
        return entry.keys[kid]

    async def validate(self, id_token: str) -> IdentityClaims:
        """Return the token's claims or raise ``TokenRejected`` naming the failed check."""
        if not isinstance(id_token, str) or not id_token or len(id_token) > 16384:
            raise TokenRejected("malformed", "empty or oversized token")
        try:
            header = jwt.get_unverified_header(id_token)
            unverified = jwt.decode(id_token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenRejected("malformed", str(exc)) from None
        if header.get("alg") != "RS256":
            raise TokenRejected("bad_algorithm", f"alg {str(header.get('alg'))[:16]!r}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("unknown_kid", "no kid in the token header")
        tid = unverified.get("tid")
        if not isinstance(tid, str) or not tid:
            raise TokenRejected("missing_claim", "tid")
        if tid.lower() not in self.tenants:
            raise TokenRejected("foreign_tenant", f"tenant {tid[:64]!r} is not allowed")
        key = await self._key(tid, kid)
        try:
            claims = jwt.decode(
                id_token, key, algorithms=["RS256"], audience=self.client_id,
                issuer=self.issuer(tid),
                # exp/nbf are checked below against the injected clock.
                options={"require": list(REQUIRED_CLAIMS), "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False})
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad_signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected("missing_claim", exc.claim) from None
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected("wrong_audience", str(exc)) from None
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected("wrong_issuer", str(exc)) from None
        except jwt.PyJWTError as exc:
            raise TokenRejected("invalid_token", str(exc)) from None
        now = self.clock()
        exp, nbf, iat = claims["exp"], claims["nbf"], claims["iat"]
        for name, value in (("exp", exp), ("nbf", nbf), ("iat", iat)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TokenRejected("invalid_token", f"{name} is not a number")
        if now > exp + self.leeway:
            raise TokenRejected("expired", f"expired {int(now - exp)}s ago")
        if now + self.leeway < nbf:
            raise TokenRejected("not_yet_valid", f"valid in {int(nbf - now)}s")
        for name in ("oid", "preferred_username", "name"):
            value = claims[name]
            if not isinstance(value, str) or not value.strip():
                raise TokenRejected("missing_claim", name)
        aud = claims["aud"]
        return IdentityClaims(
            tid=tid, oid=claims["oid"], preferred_username=claims["preferred_username"],
            name=claims["name"], issuer=claims["iss"],
            audience=aud if isinstance(aud, str) else self.client_id,
            issued_at=int(iat), expires_at=int(exp))
