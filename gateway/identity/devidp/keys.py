"""Signing keys of the development identity provider: RS256 JWTs (RFC 7515) and a JWKS (RFC 7517).

Two RSA keys are published at all times (the active one and the one before it),
as Entra ID does, so a relying party holding a token signed just before a
rotation can still verify it while a new ``kid`` forces it to refetch the set.
Keys persist as PKCS#8 PEM files (mode 0600) under the data directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.state.secrets import write_private

_CURRENT = "signing-current.pem"
_PREVIOUS = "signing-previous.pem"



def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load(path: Path) -> rsa.RSAPrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, rsa.RSAPrivateKey) else None


def key_id(key: rsa.RSAPublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an RSA public key."""
    numbers = key.public_numbers()

    def b64(n: int) -> str:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    canonical = json.dumps({"e": b64(numbers.e), "kty": "RSA", "n": b64(numbers.n)},
                           separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(
        hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode("ascii")


class SigningKeys:
    """The active and the previous RS256 signing key, persisted in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        current = _load(directory / _CURRENT)
        previous = _load(directory / _PREVIOUS)
        if current is None:
            current = _new_key()
            write_private(directory / _CURRENT, _pem(current))
        if previous is None:
            previous = _new_key()
            write_private(directory / _PREVIOUS, _pem(previous))
        self._current = current
        self._previous = previous

    @property
    def active_kid(self) -> str:
        return key_id(self._current.public_key())

    def rotate(self) -> str:
        """Make a fresh key active, keep the old active one published; return the new ``kid``."""
        with self._lock:
            new = _new_key()
            write_private(self._dir / _PREVIOUS, _pem(self._current))
            write_private(self._dir / _CURRENT, _pem(new))
            self._previous, self._current = self._current, new
            return key_id(new.public_key())

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS (RS256) of ``claims`` with the active key's ``kid`` in the header."""
        with self._lock:
            key = self._current
        return jwt.encode(claims, key, algorithm="RS256",
                          headers={"kid": key_id(key.public_key()), "typ": "JWT"})

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set, active key first (RFC 7517 §5)."""
        with self._lock:
            keys = [self._current, self._previous]
        out = []
        for k in keys:
            jwk = RSAAlgorithm.to_jwk(k.public_key(), as_dict=True)
            jwk.update({"kid": key_id(k.public_key()), "use": "sig", "alg": "RS256"})
            out.append(jwk)
        return {"keys": out}
