"""HTTP Digest authentication for SIP (RFC 3261 §22.4, RFC 2617, RFC 7616, RFC 8760).

Sans-I/O and stdlib only. It covers:

* parsing and formatting of ``WWW-Authenticate`` / ``Authorization`` Digest
  parameters (quoted strings with escapes and commas inside quotes);
* ``MD5`` and ``SHA-256`` (RFC 8760 §2.3), ``qop=auth`` (RFC 7616 §3.4.1) and the
  RFC 2069 form without qop (the caller must make such nonces single-use,
  since without ``nc`` nothing else stops a replay);
* HA1 computed once at provisioning time (``compute_ha1``), so a password is
  never stored;
* stateless nonces (``NonceFactory``): ``base64url(timestamp | random |
  HMAC-SHA256(secret, timestamp | random | realm))``; any node holding the
  secret verifies them without shared state, and a nonce older than its
  lifetime is reported stale (RFC 7616 §3.3 ``stale=true``) rather than invalid;
* constant-time comparison of responses and MACs.

``-sess`` algorithms and ``qop=auth-int`` are not offered; a client that
insists on them fails authentication with a clear reason.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.sip.memo import remember_as
from gateway.sip.randomness import POOL

__all__ = [
    "ALGORITHMS", "DigestChallenge", "DigestCredentials", "DigestError", "NonceCheck",
    "NonceFactory", "NonceStatus", "compute_ha1", "compute_response", "format_auth_params",
    "parse_auth_params", "verify_response",
]

# RFC 8760 §2.3 / RFC 7616 §3.2: algorithm token -> hash function name
ALGORITHMS: dict[str, str] = {"MD5": "md5", "SHA-256": "sha256"}
# The order of challenges in a 401: strongest first (RFC 7616 §3.7, RFC 8760 §2.4).
CHALLENGE_ORDER: tuple[str, ...] = ("SHA-256", "MD5")

_MAX_PARAMS = 32
_MAX_VALUE = 1024
_TOKEN_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
)


class DigestError(ValueError):
    """A Digest header could not be parsed or names something we do not support.

    The message is short ASCII text suitable for a Warning header.
    """


# the constructors themselves: hashlib.new(name) goes through a Python-level lookup
_HASHES: dict[str, Callable[[bytes], Any]] = {
    alg: getattr(hashlib, name) for alg, name in ALGORITHMS.items()}


def _hash(algorithm: str, text: str) -> str:
    new = _HASHES.get(algorithm)
    if new is None:
        raise DigestError(f"unsupported digest algorithm {algorithm[:20]!r}")
    return new(text.encode("utf-8", "surrogateescape")).hexdigest()  # type: ignore[no-any-return]


# H(method:uri) is the same for every REGISTER a fleet sends to one realm
_HA2: dict[tuple[str, str, str], str] = {}


def _ha2(algorithm: str, method: str, uri: str) -> str:
    key = (algorithm, method, uri)
    ha2 = _HA2.get(key)
    if ha2 is None:
        ha2 = remember_as(_HA2, key, _hash(algorithm, f"{method}:{uri}"), 1024)
    return ha2


def canonical_algorithm(value: str | None) -> str:
    """The algorithm token in canonical case; absent means MD5 (RFC 2617 §3.2.1)."""
    if value is None or value == "":
        return "MD5"
    if value in ALGORITHMS:
        return value
    for name in ALGORITHMS:
        if name.lower() == value.lower():
            return name
    raise DigestError(f"unsupported digest algorithm {value[:20]!r}")


# -- header parameter syntax (RFC 7616 §3.3, §3.4; RFC 3261 §25.1 digest-cln) -------

# The shape nearly every client sends: ``Digest`` and name=value pairs, quoted values
# without escapes. One match proves the whole header well formed; anything else (other
# schemes' case, escapes, empty list elements, duplicates …) takes the general parser.
_NAME = r"[A-Za-z0-9\-.!%*_+`'~]+"
# a value, quoted (group 1, without the quotes) or a token (group 2)
_VALUE = r"(?:\"([^\"\\\r\n\x00]*)\"|([A-Za-z0-9\-.!%*_+`'~/:=@?\[\]]+))"
# the same, one group: a quoted value with its quotes
_SHAPE_VALUE = r"(\"[^\"\\\r\n\x00]*\"|[A-Za-z0-9\-.!%*_+`'~/:=@?\[\]]+)"
_SEP = r"[ \t]*,[ \t]*"
_PAIR = rf"{_NAME}[ \t]*=[ \t]*{_VALUE}"
_FAST_AUTH_RE = re.compile(rf"Digest[ \t]+{_PAIR}(?:{_SEP}{_PAIR})*")
_FAST_PAIR_RE = re.compile(rf"({_NAME})[ \t]*=[ \t]*{_VALUE}")


class _Shape:
    """The fast shape with its parameter names fixed, in the order and spelling one
    client sends them: one match both proves the header well formed and captures every
    value (a fleet sends one or two shapes; the generic reading finds them)."""

    __slots__ = ("raw", "names", "match")

    def __init__(self, names: list[str]) -> None:
        self.raw = tuple(names)
        self.names = tuple(n.lower() for n in names)
        self.match = re.compile(
            r"Digest[ \t]+" + _SEP.join(re.escape(n) + r"[ \t]*=[ \t]*" + _SHAPE_VALUE
                                          for n in names)).fullmatch


_shapes: list[_Shape] = []  # the latest first
_SHAPES_MAX = 4


def parse_auth_params(text: str) -> tuple[str, dict[str, str]]:
    """Split ``Digest a=b, c="x, y"`` into the scheme and a dict of parameters.

    Names are lower-cased; quoted values are unescaped. Raises ``DigestError``
    on any syntax error, duplicate parameter, or oversized input.
    """
    text = text.strip()
    if len(text) > 8192:
        raise DigestError("authentication header too long")
    for shape in _shapes:
        m = shape.match(text)
        if m is not None:
            # a quoted value holds no '"' (_SHAPE_VALUE), so stripping them unquotes it
            fast = dict(zip(shape.names, [v.strip('"') for v in m.groups()], strict=True))
            if len(text) <= _MAX_VALUE or all(len(v) <= _MAX_VALUE for v in fast.values()):
                return "Digest", fast
            break
    if _FAST_AUTH_RE.fullmatch(text) is not None:
        pairs = _FAST_PAIR_RE.findall(text, 7)
        fast = {name.lower(): quoted or token for name, quoted, token in pairs}
        if len(fast) == len(pairs) <= _MAX_PARAMS and (
                len(text) <= _MAX_VALUE or all(len(v) <= _MAX_VALUE for v in fast.values())):
            names = [name for name, _, _ in pairs]
            if all(s.raw != tuple(names) for s in _shapes):  # (known: a value was too long)
                if len(_shapes) >= _SHAPES_MAX:
                    _shapes.pop()
                _shapes.insert(0, _Shape(names))
            return "Digest", fast
    return _parse_auth_params(text)


def _parse_auth_params(text: str) -> tuple[str, dict[str, str]]:
    i = 0
    n = len(text)
    while i < n and text[i] in _TOKEN_CHARS:
        i += 1
    scheme = text[:i]
    if not scheme:
        raise DigestError("missing authentication scheme")
    if i < n and text[i] not in " \t":
        raise DigestError("malformed authentication scheme")
    params: dict[str, str] = {}
    expect_comma = False
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        if expect_comma:
            if text[i] != ",":
                raise DigestError("expected ',' between digest parameters")
            i += 1
            expect_comma = False
            continue
        if text[i] == ",":  # tolerate empty list elements (RFC 7230 §7 #rule)
            i += 1
            continue
        j = i
        while j < n and text[j] in _TOKEN_CHARS:
            j += 1
        name = text[i:j].lower()
        if not name:
            raise DigestError(f"bad digest parameter at {text[i:i + 20]!r}")
        while j < n and text[j] in " \t":
            j += 1
        if j >= n or text[j] != "=":
            raise DigestError(f"digest parameter {name[:20]!r} without value")
        j += 1
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == '"':
            value, j = _parse_quoted(text, j)
        else:
            k = j
            while k < n and text[k] in _TOKEN_CHARS | {"/", ":", "=", "@", "?", "[", "]"}:
                k += 1
            value = text[j:k]
            if not value:
                raise DigestError(f"digest parameter {name[:20]!r} without value")
            j = k
        if name in params:
            raise DigestError(f"duplicate digest parameter {name[:20]!r}")
        if len(value) > _MAX_VALUE:
            raise DigestError(f"digest parameter {name[:20]!r} too long")
        params[name] = value
        if len(params) > _MAX_PARAMS:
            raise DigestError("too many digest parameters")
        i = j
        expect_comma = True
    return scheme, params


def _parse_quoted(text: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        if c in "\r\n\x00":
            raise DigestError("control character in quoted digest parameter")
        out.append(c)
        i += 1
    raise DigestError("unterminated quoted string in digest parameters")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Parameters whose value is a token and is sent unquoted (RFC 7616 §3.3/§3.4).
_UNQUOTED = frozenset({"algorithm", "stale", "nc"})


def format_auth_params(scheme: str, params: list[tuple[str, str]]) -> str:
    """Format ``Digest k="v", ...``; ``algorithm``, ``stale``, ``nc`` and a response ``qop``
    are tokens, everything else is quoted."""
    parts = []
    for name, value in params:
        if name in _UNQUOTED:
            parts.append(f"{name}={value}")
        else:
            parts.append(f"{name}={_quote(value)}")
    return f"{scheme} " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """One ``WWW-Authenticate: Digest`` challenge (RFC 7616 §3.3, RFC 3261 §22.4)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: str | None = "auth"
    opaque: str | None = None
    stale: bool = False

    def __str__(self) -> str:
        params: list[tuple[str, str]] = [("realm", self.realm), ("nonce", self.nonce)]
        if self.opaque is not None:
            params.append(("opaque", self.opaque))
        if self.stale:
            params.append(("stale", "true"))
        params.append(("algorithm", self.algorithm))
        if self.qop is not None:
            params.append(("qop", self.qop))
        return format_auth_params("Digest", params)

    @classmethod
    def parse(cls, text: str) -> DigestChallenge:
        scheme, p = parse_auth_params(text)
        if scheme.lower() != "digest":
            raise DigestError(f"not a Digest challenge ({scheme[:20]})")
        if "realm" not in p or "nonce" not in p:
            raise DigestError("Digest challenge without realm or nonce")
        return cls(realm=p["realm"], nonce=p["nonce"],
                   algorithm=canonical_algorithm(p.get("algorithm")), qop=p.get("qop"),
                   opaque=p.get("opaque"), stale=p.get("stale", "").lower() == "true")


_NC_RE = re.compile(r"[0-9a-fA-F]{8}")
_KNOWN_CRED_PARAMS = frozenset({"username", "realm", "nonce", "uri", "response", "algorithm",
                                "qop", "nc", "cnonce", "opaque"})


# Values built for every REGISTER are plain (not frozen) slotted dataclasses, hashable
# as frozen ones are: a frozen dataclass's __init__ sets each field through
# object.__setattr__, about 0.35 us a field here. Nothing mutates them.
@dataclass(slots=True, unsafe_hash=True)
class DigestCredentials:
    """An ``Authorization: Digest`` value (RFC 7616 §3.4, RFC 3261 §22.4).

    ``nc`` is the nonce count as an int (it travels as 8 hex digits).
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: int | None = None
    cnonce: str | None = None
    opaque: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, text: str) -> DigestCredentials:
        scheme, p = parse_auth_params(text)
        if scheme.lower() != "digest":
            raise DigestError(f"unsupported authentication scheme {scheme[:20]!r}")
        for required in ("username", "realm", "nonce", "uri", "response"):
            if required not in p:
                raise DigestError(f"Digest credentials without {required}")
        if "username*" in p:
            raise DigestError("username* (RFC 7616 §3.4.4) is not supported")
        qop = p.get("qop")
        nc: int | None = None
        cnonce = p.get("cnonce")
        if qop is not None:
            if qop.lower() != "auth":
                raise DigestError(f"unsupported qop {qop[:20]!r}")
            qop = "auth"
            nc_text = p.get("nc", "")
            if _NC_RE.fullmatch(nc_text) is None:
                raise DigestError("qop=auth needs an 8-hex-digit nc")
            nc = int(nc_text, 16)
            if nc == 0:
                raise DigestError("nonce count must start at 1")
            if not cnonce:
                raise DigestError("qop=auth needs a cnonce")
        return cls(username=p["username"], realm=p["realm"], nonce=p["nonce"], uri=p["uri"],
                   response=p["response"].lower(),
                   algorithm=canonical_algorithm(p.get("algorithm")), qop=qop, nc=nc,
                   cnonce=cnonce, opaque=p.get("opaque"),
                   extra={} if p.keys() <= _KNOWN_CRED_PARAMS else
                   {k: v for k, v in p.items() if k not in _KNOWN_CRED_PARAMS})

    def __str__(self) -> str:
        params: list[tuple[str, str]] = [
            ("username", self.username), ("realm", self.realm), ("nonce", self.nonce),
            ("uri", self.uri), ("response", self.response), ("algorithm", self.algorithm),
        ]
        if self.opaque is not None:
            params.append(("opaque", self.opaque))
        out = format_auth_params("Digest", params)
        if self.qop is not None and self.nc is not None and self.cnonce is not None:
            out += f", qop={self.qop}, nc={self.nc:08x}, cnonce={_quote(self.cnonce)}"
        return out


# -- the computation (RFC 7616 §3.4.1-§3.4.3) ----------------------------------------

def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password): computed once when credentials are provisioned."""
    return _hash(canonical_algorithm(algorithm), f"{username}:{realm}:{password}")


def compute_response(ha1: str, method: str, uri: str, nonce: str, *, algorithm: str = "MD5",
                     qop: str | None = None, nc: int | None = None,
                     cnonce: str | None = None) -> str:
    """The request-digest for ``qop=auth`` or, without qop, the RFC 2069 form."""
    algorithm = canonical_algorithm(algorithm)
    ha2 = _ha2(algorithm, method, uri)
    if qop is None:
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    if qop != "auth" or nc is None or cnonce is None:
        raise DigestError("qop=auth needs nc and cnonce")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


def verify_response(creds: DigestCredentials, ha1: str, method: str) -> bool:
    """Constant-time check of ``creds.response`` against the expected digest."""
    expected = compute_response(ha1, method, creds.uri, creds.nonce, algorithm=creds.algorithm,
                                qop=creds.qop, nc=creds.nc, cnonce=creds.cnonce)
    return hmac.compare_digest(expected.encode("ascii"),
                               creds.response.encode("ascii", "replace"))


# -- stateless nonces ----------------------------------------------------------------

class NonceStatus(enum.Enum):
    VALID = "valid"
    STALE = "stale"  # genuine, but older than the lifetime: answer 401 with stale=true
    INVALID = "invalid"  # forged, garbled, from another realm, or from the future


@dataclass(slots=True, unsafe_hash=True)
class NonceCheck:
    status: NonceStatus
    issued: float = 0.0


_NONCE_RANDOM = 12
_NONCE_MAC = 16
_NONCE_LEN = 8 + _NONCE_RANDOM + _NONCE_MAC
NONCE_TEXT_LEN = 4 * _NONCE_LEN // 3  # its URL-safe base64 (36 bytes: no padding)


class NonceFactory:
    """Issues and verifies MAC-protected nonces (RFC 7616 §3.3 suggests this shape).

    ``secrets``: the first signs new nonces; all are accepted when verifying,
    so a secret can be rotated without failing registrations in flight. The
    timestamp is wall-clock milliseconds because nodes compare each other's
    nonces; ``max_skew`` tolerates clocks slightly apart.
    """

    def __init__(self, secrets: list[bytes], realm: str, ttl: float, *,
                 max_skew: float = 5.0) -> None:
        if not secrets or any(len(s) < 16 for s in secrets):
            raise ValueError("nonce secrets must be at least 16 bytes")
        # keyed BLAKE2b is a MAC in one call (a third of HMAC-SHA256's cost, twice per
        # registration); its key is at most 64 bytes, so each secret is hashed to 32
        self._secrets = [hashlib.sha256(s).digest() for s in secrets]
        self._realm = realm.encode("utf-8")
        self.ttl = ttl
        self.max_skew = max_skew

    def _mac(self, secret: bytes, head: bytes) -> bytes:
        return hashlib.blake2b(head + b"|" + self._realm, key=secret,
                               digest_size=_NONCE_MAC).digest()

    def issue(self, now: float, *, random_bytes: bytes | None = None) -> str:
        rnd = random_bytes if random_bytes is not None else POOL.take(_NONCE_RANDOM)
        if len(rnd) != _NONCE_RANDOM:
            raise ValueError(f"nonce randomness must be {_NONCE_RANDOM} bytes")
        head = struct.pack(">Q", int(now * 1000)) + rnd
        return base64.urlsafe_b64encode(head + self._mac(self._secrets[0], head)).decode("ascii")

    def check(self, nonce: str, now: float) -> NonceCheck:
        if len(nonce) != NONCE_TEXT_LEN:
            return NonceCheck(NonceStatus.INVALID)
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return NonceCheck(NonceStatus.INVALID)
        if len(raw) != _NONCE_LEN:
            return NonceCheck(NonceStatus.INVALID)
        head, mac = raw[: 8 + _NONCE_RANDOM], raw[8 + _NONCE_RANDOM :]
        for secret in self._secrets:
            if hmac.compare_digest(mac, self._mac(secret, head)):
                break
        else:
            return NonceCheck(NonceStatus.INVALID)
        issued = struct.unpack(">Q", head[:8])[0] / 1000.0
        if issued > now + self.max_skew:
            return NonceCheck(NonceStatus.INVALID, issued)
        if now - issued > self.ttl:
            return NonceCheck(NonceStatus.STALE, issued)
        return NonceCheck(NonceStatus.VALID, issued)
