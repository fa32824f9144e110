"""The directory of tenants and users of the Teams-like backend, loaded from TOML.

The model follows Microsoft Teams SIP Gateway's prerequisites (FIELD-NOTES §1):
a user of a SIP device needs a phone number with PSTN calling enabled, the
Teams + Phone System (+ SfB Plan 2) licences, and a calling policy with
``AllowSIPDevicesCalling``; local forwarding needs ``AllowCallRedirect``;
the service is not offered in the government clouds (GCC, GCC High, DoD).

File format::

    [[tenants]]
    id = "7f3e1c9a-0d52-4b8e-9a41-3c2f6b1d8e01"   # GUID
    name = "Contoso"
    domain = "contoso.example"
    cloud = "commercial"          # commercial | gcc | gcchigh | dod
    bulk_sign_in = true

    [[users]]
    oid = "..."                   # GUID, the Entra object id
    tenant = "<tenant id>"
    upn = "alice@contoso.example"
    name = "Alice Example"
    number = "+14255550101"       # E.164 or "" when none
    pstn_enabled = true
    licenses = ["teams", "phone_system", "sfb_plan2"]
    account_type = "user"         # user | common_area
    enabled = true
    mfa = false
    password_hash = "scrypt$..."  # see hash_password()
    [users.calling_policy]
    allow_sip_devices_calling = true
    allow_call_redirect = true

Passwords are stored only as salted scrypt hashes
(``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``); ``set_password`` rewrites one
user's hash in a directory file (``sipgw directory passwd``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOUDS = frozenset({"commercial", "gcc", "gcchigh", "dod"})
# The one definition of the clouds SIP Gateway refuses (also used by gateway.identity):
# "SIP Gateway is not available for government environments (GCC, GCC High and DoD)."
# (product seed 002; an older [PLAN] revision said only GCC High and DoD).
UNSUPPORTED_CLOUDS = frozenset({"gcc", "gcchigh", "dod"})
ACCOUNT_TYPES = frozenset({"user", "common_area"})
KNOWN_LICENSES = frozenset({
    "teams", "phone_system", "sfb_plan2", "pstn_calling", "common_area", "voicemail",
    "audio_conferencing",
})
# The licences a personal user needs to use a SIP device [PLAN].
REQUIRED_USER_LICENSES = frozenset({"teams", "phone_system"})

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_UPN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}$")

# scrypt cost: 2**14 * 8 * 128 = 16 MiB per hash, the RFC 7914 interactive example.
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CallingPolicy:
    """The SIP-device-relevant part of a Teams calling policy (``Set-CsTeamsCallingPolicy``)."""

    allow_sip_devices_calling: bool = False  # Teams default is False [CONF]
    allow_call_redirect: bool = True


@dataclass(frozen=True, slots=True)
class Tenant:
    """An Entra ID tenant (organisation) of the backend."""

    id: str
    name: str
    domain: str
    cloud: str = "commercial"
    bulk_sign_in: bool = False

    @property
    def sip_gateway_available(self) -> bool:
        """SIP Gateway is offered in the commercial cloud only, not in GCC, GCC High or DoD."""
        return self.cloud not in UNSUPPORTED_CLOUDS


@dataclass(frozen=True, slots=True)
class User:
    """A directory user (Entra object) with the Teams voice attributes SIP Gateway checks."""

    oid: str
    tenant: str
    upn: str
    name: str
    number: str = ""
    pstn_enabled: bool = False
    licenses: tuple[str, ...] = ()
    account_type: str = "user"
    enabled: bool = True
    mfa: bool = False
    password_hash: str = ""
    calling_policy: CallingPolicy = field(default_factory=CallingPolicy)

    @property
    def has_number(self) -> bool:
        return bool(self.number)

    def sip_device_refusal(self, tenant: Tenant | None) -> str | None:
        """Why this user may not use a SIP device (None when allowed); FIELD-NOTES §1 catalogue."""
        if tenant is None:
            return "user_not_found_in_tenant"
        if not tenant.sip_gateway_available:
            return "cloud_not_supported"
        if not self.enabled:
            return "user_disabled"
        if not self.number:
            return "user_missing_phone_number"
        if not self.pstn_enabled:
            return "user_missing_pstn"
        if not self.calling_policy.allow_sip_devices_calling:
            return "user_missing_allow_sip_devices_calling"
        if self.account_type == "common_area":
            if "common_area" not in self.licenses:
                return "user_missing_license"
        elif not REQUIRED_USER_LICENSES <= set(self.licenses):
            return "user_missing_license"
        return None


@dataclass(frozen=True, slots=True)
class Directory:
    """Tenants and users, indexed by id, UPN and number."""

    tenants: dict[str, Tenant]
    users: dict[str, User]
    _by_upn: dict[str, User] = field(repr=False, default_factory=dict)
    _by_number: dict[str, User] = field(repr=False, default_factory=dict)

    @classmethod
    def build(cls, tenants: Mapping[str, Tenant], users: Mapping[str, User]) -> Directory:
        return cls(
            tenants=dict(tenants), users=dict(users),
            _by_upn={u.upn.lower(): u for u in users.values()},
            _by_number={u.number: u for u in users.values() if u.number},
        )

    def user_by_upn(self, upn: str) -> User | None:
        return self._by_upn.get(upn.strip().lower())

    def user_by_number(self, e164: str) -> User | None:
        return self._by_number.get(e164.strip())

    def users_of_tenant(self, tid: str) -> list[User]:
        return [u for u in self.users.values() if u.tenant == tid]

    def tenant_of(self, user: User) -> Tenant | None:
        return self.tenants.get(user.tenant)


# --- passwords -------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Salted scrypt (RFC 7914) hash of ``password`` as ``scrypt$n$r$p$salt$hash``."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R,
                            p=_SCRYPT_P, maxmem=_SCRYPT_MAXMEM, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against ``hash_password`` output; False if malformed."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    # Bound the cost a tampered file could impose.
    if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16
            and 8 <= len(expected) <= 64):
        return False
    try:
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                                maxmem=_SCRYPT_MAXMEM * 4, dklen=len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(digest, expected)


# --- loading ---------------------------------------------------------------------------

class _Ctx:
    """Names the file and the entry in every error message."""

    def __init__(self, path: str, where: str) -> None:
        self.path = path
        self.where = where

    def error(self, key: str, msg: str) -> ValueError:
        return ValueError(f"{self.path}: {self.where}.{key}: {msg}")

    def str_(self, d: Mapping[str, Any], key: str, *, required: bool = True,
             default: str = "") -> str:
        if key not in d:
            if required:
                raise self.error(key, "missing")
            return default
        v = d[key]
        if not isinstance(v, str):
            raise self.error(key, f"expected a string, got {type(v).__name__}")
        return v

    def bool_(self, d: Mapping[str, Any], key: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, f"expected true or false, got {v!r}")
        return v


def _guid(ctx: _Ctx, key: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ctx.error(key, f"not a GUID: {value!r}") from None


def _check_keys(ctx: _Ctx, d: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ctx.error(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")


_TENANT_KEYS = frozenset({"id", "name", "domain", "cloud", "bulk_sign_in"})
_USER_KEYS = frozenset({
    "oid", "tenant", "upn", "name", "number", "pstn_enabled", "licenses", "account_type",
    "enabled", "mfa", "password_hash", "calling_policy",
})
_POLICY_KEYS = frozenset({"allow_sip_devices_calling", "allow_call_redirect"})


def _parse_tenant(ctx: _Ctx, d: Any) -> Tenant:
    if not isinstance(d, dict):
        raise ctx.error("", "expected a table")
    _check_keys(ctx, d, _TENANT_KEYS)
    tid = _guid(ctx, "id", ctx.str_(d, "id"))
    domain = ctx.str_(d, "domain").lower()
    if not _DOMAIN.match(domain):
        raise ctx.error("domain", f"not a DNS domain: {domain!r}")
    cloud = ctx.str_(d, "cloud", required=False, default="commercial")
    if cloud not in CLOUDS:
        raise ctx.error("cloud", f"{cloud!r} not one of {', '.join(sorted(CLOUDS))}")
    name = ctx.str_(d, "name")
    if not name.strip():
        raise ctx.error("name", "empty")
    return Tenant(id=tid, name=name, domain=domain, cloud=cloud,
                  bulk_sign_in=ctx.bool_(d, "bulk_sign_in", False))


def _parse_user(ctx: _Ctx, d: Any, tenants: Mapping[str, Tenant]) -> User:
    if not isinstance(d, dict):
        raise ctx.error("", "expected a table")
    _check_keys(ctx, d, _USER_KEYS)
    oid = _guid(ctx, "oid", ctx.str_(d, "oid"))
    tenant = _guid(ctx, "tenant", ctx.str_(d, "tenant"))
    if tenant not in tenants:
        raise ctx.error("tenant", f"no tenant with id {tenant}")
    upn = ctx.str_(d, "upn").strip()
    if not _UPN.match(upn):
        raise ctx.error("upn", f"not a user principal name: {upn!r}")
    number = ctx.str_(d, "number", required=False)
    if number and not _E164.match(number):
        raise ctx.error("number", f"not an E.164 number (+ and 2-15 digits): {number!r}")
    licenses_raw = d.get("licenses", [])
    if not isinstance(licenses_raw, list) or not all(isinstance(x, str) for x in licenses_raw):
        raise ctx.error("licenses", "expected a list of strings")
    for lic in licenses_raw:
        if lic not in KNOWN_LICENSES:
            raise ctx.error("licenses", f"unknown licence {lic!r} "
                                        f"(known: {', '.join(sorted(KNOWN_LICENSES))})")
    account_type = ctx.str_(d, "account_type", required=False, default="user")
    if account_type not in ACCOUNT_TYPES:
        raise ctx.error("account_type", f"{account_type!r} not one of user, common_area")
    pw = ctx.str_(d, "password_hash", required=False)
    if pw and not pw.startswith("scrypt$"):
        raise ctx.error("password_hash", "must be a scrypt$... hash (never a clear password)")
    pol_raw = d.get("calling_policy", {})
    if not isinstance(pol_raw, dict):
        raise ctx.error("calling_policy", "expected a table")
    pctx = _Ctx(ctx.path, f"{ctx.where}.calling_policy")
    _check_keys(pctx, pol_raw, _POLICY_KEYS)
    policy = CallingPolicy(
        allow_sip_devices_calling=pctx.bool_(pol_raw, "allow_sip_devices_calling", False),
        allow_call_redirect=pctx.bool_(pol_raw, "allow_call_redirect", True),
    )
    return User(
        oid=oid, tenant=tenant, upn=upn, name=ctx.str_(d, "name"), number=number,
        pstn_enabled=ctx.bool_(d, "pstn_enabled", False), licenses=tuple(licenses_raw),
        account_type=account_type, enabled=ctx.bool_(d, "enabled", True),
        mfa=ctx.bool_(d, "mfa", False), password_hash=pw, calling_policy=policy,
    )


def parse_directory(text: str, path: str = "<directory>") -> Directory:
    """Parse directory TOML ``text``; ValueError names ``path`` and the entry/field at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None
    unknown = sorted(set(data) - {"tenants", "users"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key {unknown[0]!r} "
                         f"(expected [[tenants]] and [[users]])")
    raw_tenants = data.get("tenants", [])
    raw_users = data.get("users", [])
    if not isinstance(raw_tenants, list) or not isinstance(raw_users, list):
        raise ValueError(f"{path}: tenants and users must be arrays of tables ([[tenants]])")
    tenants: dict[str, Tenant] = {}
    for i, t in enumerate(raw_tenants):
        ctx = _Ctx(path, f"tenants[{i}]")
        tenant = _parse_tenant(ctx, t)
        if tenant.id in tenants:
            raise ctx.error("id", f"duplicate tenant id {tenant.id}")
        tenants[tenant.id] = tenant
    users: dict[str, User] = {}
    upns: set[str] = set()
    numbers: set[str] = set()
    for i, u in enumerate(raw_users):
        ctx = _Ctx(path, f"users[{i}]")
        user = _parse_user(ctx, u, tenants)
        if user.oid in users:
            raise ctx.error("oid", f"duplicate user oid {user.oid}")
        if user.upn.lower() in upns:
            raise ctx.error("upn", f"duplicate upn {user.upn}")
        if user.number and user.number in numbers:
            raise ctx.error("number", f"number {user.number} already assigned")
        users[user.oid] = user
        upns.add(user.upn.lower())
        if user.number:
            numbers.add(user.number)
    return Directory.build(tenants, users)


def load_directory(path: str | os.PathLike[str]) -> Directory:
    """Load a directory TOML file (see the module docstring for the format)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot read directory: {exc}") from None
    return parse_directory(text, str(p))


def default_directory_path() -> Path:
    """The bundled sample directory (package data)."""
    return Path(__file__).resolve().parent / "reference" / "directory.toml"


def set_password(path: str | os.PathLike[str], upn: str, password: str) -> None:
    """Set ``upn``'s password hash in the directory file at ``path``, keeping the rest as is.

    The file is validated before and after; the line ``password_hash = ...`` of
    that user's ``[[users]]`` table is replaced (or added after its ``upn`` line).
    """
    p = Path(path)
    directory = load_directory(p)
    user = directory.user_by_upn(upn)
    if user is None:
        raise ValueError(f"{p}: no user with upn {upn!r}")
    if not password:
        raise ValueError("empty password")
    new_line = f'password_hash = "{hash_password(password)}"'
    lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
    # Find the [[users]] block whose upn matches, then edit inside that block only.
    block_start: int | None = None
    upn_line: int | None = None
    blocks: list[tuple[int, int]] = []
    header = re.compile(r"^\s*\[")
    for i, line in enumerate(lines):
        if header.match(line):
            if block_start is not None and not line.strip().startswith("[users."):
                blocks[-1] = (blocks[-1][0], i)
                block_start = None
            if line.strip() == "[[users]]":
                block_start = i
                blocks.append((i, len(lines)))
    upn_re = re.compile(r'^\s*upn\s*=\s*"([^"]*)"')
    target: tuple[int, int] | None = None
    for start, end in blocks:
        for i in range(start, end):
            m = upn_re.match(lines[i])
            if m and m.group(1).strip().lower() == upn.strip().lower():
                target, upn_line = (start, end), i
                break
        if target:
            break
    if target is None or upn_line is None:
        raise ValueError(f"{p}: cannot locate the [[users]] table of {upn!r} to edit")
    pw_re = re.compile(r"^\s*password_hash\s*=")
    replaced = False
    for i in range(target[0], target[1]):
        if lines[i].lstrip().startswith("[users."):
            break  # the sub-table's keys are not the user's
        if pw_re.match(lines[i]):
            lines[i] = new_line + "\n"
            replaced = True
            break
    if not replaced:
        lines.insert(upn_line + 1, new_line + "\n")
    text = "".join(lines)
    parse_directory(text, str(p))
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
