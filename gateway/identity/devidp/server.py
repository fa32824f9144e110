"""The development identity provider: the Entra ID v2.0 endpoints msal's device-code flow uses.

Implements, over HTTPS on loopback, what ``msal.PublicClientApplication``
needs of Microsoft Entra ID for the OAuth 2.0 Device Authorization Grant
(RFC 8628) and refresh tokens (RFC 6749 §6), with OpenID Connect ID tokens:

* ``GET  /{tenant}/v2.0/.well-known/openid-configuration`` (OIDC Discovery 1.0 §4)
* ``POST /{tenant}/oauth2/v2.0/devicecode``  (RFC 8628 §3.1/§3.2)
* ``POST /{tenant}/oauth2/v2.0/token``       (RFC 8628 §3.4/§3.5, RFC 6749 §6)
* ``GET  /{tenant}/discovery/v2.0/keys``     (RFC 7517 JWK Set, two RS256 keys)
* ``GET|POST /devicelogin``                  (RFC 8628 §3.3, the user's verification page)

The user store is the backend directory (``gateway.backend.directory``):
users sign in with their UPN and password; disabled users, users of another
tenant than the code was issued for, expired and already-used codes are
refused. Refresh tokens are random strings kept only as SHA-256 hashes and
are revocable per user. Wrong codes and passwords on the verification page
are throttled per client address. Error bodies follow Entra's shape
(``error``, ``error_description`` with an ``AADSTS`` code, ``error_codes``,
``timestamp``, ``trace_id``, ``correlation_id``).

msal must be created with ``instance_discovery=False`` (this host is not a
Microsoft cloud) and ``verify=<ca_file>`` (the provider's development CA).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.internet.interfaces import IListeningPort
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from gateway.backend.directory import Directory, Tenant, User, verify_password
from gateway.identity.devidp.keys import SigningKeys
from gateway.transport.certs import TlsFiles, ensure_dev_certificate, server_tls_options

log = logging.getLogger(__name__)

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 §6.1: no vowels (no words), no 0/O/1/I/L look-alikes.
USER_CODE_ALPHABET = "BCDFGHJKMNPQRSTVWXZ23456789"
USER_CODE_LENGTH = 8
MAX_BODY = 16 * 1024
MAX_FIELD = 512
_PENDING, _APPROVED, _DECLINED, _REDEEMED = "pending", "approved", "declined", "redeemed"


def normalize_user_code(raw: str) -> str:
    """Upper-case, drop spaces and dashes the user may type (RFC 8628 §6.1)."""
    return "".join(ch for ch in raw.upper() if ch not in " -\t")


@dataclass(slots=True)
class _DeviceCode:
    device_code: str
    user_code: str
    tenant_id: str
    client_id: str
    scope: str
    issued_at: float
    expires_at: float
    interval: int
    last_poll: float | None = None
    status: str = _PENDING
    user_oid: str | None = None


@dataclass(slots=True)
class _RefreshGrant:
    oid: str
    tenant_id: str
    client_id: str
    scope: str
    expires_at: float


@dataclass(slots=True)
class _Throttle:
    """Failures per client address in a sliding window (RFC 8628 §5.1 brute forcing)."""

    limit: int
    window: float
    max_clients: int = 10000
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, client: str, now: float) -> deque[float]:
        q = self._failures.get(client)
        if q is None:
            if len(self._failures) >= self.max_clients:
                # Memory is bounded: forget the client whose last failure is oldest.
                oldest = min(self._failures, key=lambda c: self._failures[c][-1]
                             if self._failures[c] else 0.0)
                del self._failures[oldest]
            q = self._failures[client] = deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def retry_after(self, client: str, now: float) -> float:
        q = self._recent(client, now)
        if len(q) < self.limit:
            return 0.0
        return max(1.0, q[0] + self.window - now)

    def fail(self, client: str, now: float) -> None:
        self._recent(client, now).append(now)


@dataclass(frozen=True, slots=True)
class DevIdpSettings:
    """Lifetimes and limits of the development identity provider."""

    interval: int = 5  # RFC 8628 §3.2 polling interval, seconds
    code_ttl: int = 900  # device code lifetime (Entra: 15 minutes)
    token_ttl: int = 3600  # access and ID token lifetime
    refresh_ttl: int = 90 * 86400
    failure_limit: int = 5  # wrong codes/passwords per client per window
    failure_window: float = 60.0
    client_ids: frozenset[str] | None = None  # None: any client id is registered
    poll_tolerance: float = 0.5  # seconds a poll may come early before slow_down


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _State:
    """All mutable state of one provider; only touched from the reactor thread."""

    def __init__(self, directory: Directory, keys: SigningKeys, settings: DevIdpSettings,
                 clock: Callable[[], float]) -> None:
        self.directory = directory
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.base_url = ""
        self.codes: dict[str, _DeviceCode] = {}
        self.by_user_code: dict[str, _DeviceCode] = {}
        self.refresh: dict[str, _RefreshGrant] = {}
        self.throttle = _Throttle(settings.failure_limit, settings.failure_window)

    # -- lookups ---------------------------------------------------------------------
    def tenant(self, segment: str) -> Tenant | None:
        seg = segment.lower()
        t = self.directory.tenants.get(seg)
        if t is not None:
            return t
        for t in self.directory.tenants.values():
            if t.domain == seg:
                return t
        return None

    def issuer(self, tid: str) -> str:
        return f"{self.base_url}/{tid}/v2.0"

    def prune(self, now: float) -> None:
        for dc in [c for c in self.codes.values() if c.expires_at + 600 < now]:
            self.codes.pop(dc.device_code, None)
            self.by_user_code.pop(dc.user_code, None)
        for h in [h for h, g in self.refresh.items() if g.expires_at < now]:
            del self.refresh[h]

    # -- issuing ---------------------------------------------------------------------
    def new_device_code(self, tenant: Tenant, client_id: str, scope: str) -> _DeviceCode:
        now = self.clock()
        self.prune(now)
        while True:
            user_code = "".join(secrets.choice(USER_CODE_ALPHABET)
                                for _ in range(USER_CODE_LENGTH))
            if user_code not in self.by_user_code:
                break
        dc = _DeviceCode(
            device_code=secrets.token_urlsafe(48), user_code=user_code, tenant_id=tenant.id,
            client_id=client_id, scope=scope, issued_at=now,
            expires_at=now + self.settings.code_ttl, interval=self.settings.interval)
        self.codes[dc.device_code] = dc
        self.by_user_code[user_code] = dc
        return dc

    def tokens(self, user: User, client_id: str, scope: str) -> dict[str, Any]:
        now = int(self.clock())
        ttl = self.settings.token_ttl
        common = {
            "iss": self.issuer(user.tenant), "iat": now, "nbf": now, "exp": now + ttl,
            "tid": user.tenant, "oid": user.oid, "preferred_username": user.upn,
            "name": user.name, "ver": "2.0",
            # Pairwise subject per application, as Entra issues it.
            "sub": _b64url(hashlib.sha256(f"{user.oid}:{client_id}".encode()).digest()),
        }
        id_token = self.keys.sign({**common, "aud": client_id,
                                   "uti": secrets.token_urlsafe(16)})
        scopes = [s for s in scope.split() if s not in ("openid", "profile", "offline_access")]
        resources = {s.rsplit("/", 1)[0] for s in scopes if "/" in s}
        access_token = self.keys.sign({
            **common, "aud": sorted(resources)[0] if resources else client_id,
            "azp": client_id, "scp": " ".join(s.rsplit("/", 1)[-1] for s in scopes) or "openid",
            "uti": secrets.token_urlsafe(16)})
        refresh_token = secrets.token_urlsafe(64)
        self.refresh[hashlib.sha256(refresh_token.encode()).hexdigest()] = _RefreshGrant(
            oid=user.oid, tenant_id=user.tenant, client_id=client_id, scope=scope,
            expires_at=now + self.settings.refresh_ttl)
        client_info = _b64url(json.dumps({"uid": user.oid, "utid": user.tenant}).encode())
        return {
            "token_type": "Bearer", "scope": scope, "expires_in": ttl, "ext_expires_in": ttl,
            "access_token": access_token, "refresh_token": refresh_token,
            "id_token": id_token, "client_info": client_info,
        }

    def revoke_user(self, oid: str) -> int:
        hashes = [h for h, g in self.refresh.items() if g.oid == oid]
        for h in hashes:
            del self.refresh[h]
        return len(hashes)


def _error(request: IRequest, status: int, error: str, code: int, description: str) -> bytes:
    """An Entra-shaped OAuth error body (RFC 6749 §5.2 plus Entra's extra members)."""
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
                             f"Correlation ID: {corr} Timestamp: {now}",
        "error_codes": [code], "timestamp": now, "trace_id": trace, "correlation_id": corr,
        "error_uri": "https://login.microsoftonline.com/error?code=" + str(code),
    }
    return _json(request, body, status)


def _json(request: IRequest, body: dict[str, Any], status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"pragma", b"no-cache")
    return json.dumps(body).encode("utf-8")


def _form(request: IRequest) -> dict[str, str] | None:
    """The urlencoded body as single-valued fields; None when malformed or oversized."""
    raw = request.getHeader(b"content-type") or b""
    ctype = raw.decode("latin-1").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return None
    out: dict[str, str] = {}
    for k, v in (request.args or {}).items():
        try:
            key, val = k.decode("utf-8"), v[-1].decode("utf-8")
        except (UnicodeDecodeError, IndexError):
            return None
        if len(val) > 8192:
            return None
        out[key] = val
    return out


def _client_address(request: IRequest) -> str:
    addr = request.getClientAddress()
    return str(getattr(addr, "host", "unknown"))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>{title}</h1>{body}</main></body></html>"""

_FORM = """<p>Enter the code shown on your phone, then sign in with your work account.</p>
<form method="post" action="/devicelogin">
<p><label>Code <input name="code" value="{code}" autocomplete="off" maxlength="20"
 autofocus required></label></p>
<p><label>Username <input name="username" type="email" autocomplete="username"
 maxlength="256" required></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password"
 maxlength="256" required></label></p>
<p><button name="action" value="approve">Sign in</button>
<button name="action" value="decline">Cancel sign-in</button></p>
</form>"""


def _page(request: IRequest, status: int, title: str, body_html: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"content-security-policy",
                      b"default-src 'none'; form-action 'self'; frame-ancestors 'none'")
    return _PAGE.format(title=html.escape(title), body=body_html).encode("utf-8")


def _message(request: IRequest, status: int, title: str, text: str) -> bytes:
    return _page(request, status, title, f"<p>{html.escape(text)}</p>")


class _Root(resource.Resource):
    """Routes every path; one leaf so that unknown paths get a plain 404."""

    isLeaf = True

    def __init__(self, state: _State) -> None:
        super().__init__()
        self.state = state

    def render(self, request: IRequest) -> bytes | int:
        try:
            length = int(request.getHeader(b"content-length") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY:
            return _message(request, 413, "Request too large", "The request body is too large.")
        path = request.path.decode("utf-8", "replace")
        parts = [p for p in path.split("/") if p]
        method = request.method.decode("ascii", "replace")
        if parts == ["devicelogin"]:
            if method == "GET":
                return self._login_form(request)
            if method == "POST":
                return self._login_submit(request)
            return _message(request, 405, "Method not allowed", "Use GET or POST.")
        if len(parts) >= 2:
            tenant_seg, rest = parts[0], parts[1:]
            route = {
                ("v2.0", ".well-known", "openid-configuration"): ("GET", self._openid),
                ("oauth2", "v2.0", "devicecode"): ("POST", self._devicecode),
                ("oauth2", "v2.0", "token"): ("POST", self._token),
                ("discovery", "v2.0", "keys"): ("GET", self._keys),
            }.get(tuple(rest))
            if route is not None:
                if method != route[0]:
                    return _error(request, 405, "invalid_request", 900561,
                                  f"The endpoint only accepts {route[0]} requests.")
                tenant = self.state.tenant(tenant_seg)
                if tenant is None:
                    return _error(request, 400, "invalid_tenant", 90002,
                                  f"Tenant '{tenant_seg[:64]}' not found.")
                return route[1](request, tenant)
        return _error(request, 404, "not_found", 90027, "The requested resource was not found.")

    # -- discovery -------------------------------------------------------------------
    def _openid(self, request: IRequest, tenant: Tenant) -> bytes:
        base = self.state.base_url
        t = tenant.id
        return _json(request, {
            "issuer": self.state.issuer(t),
            "authorization_endpoint": f"{base}/{t}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/{t}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{base}/{t}/oauth2/v2.0/devicecode",
            "jwks_uri": f"{base}/{t}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token",
                                         "id_token token"],
            "grant_types_supported": [DEVICE_CODE_GRANT, "refresh_token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "name",
                                 "preferred_username", "oid", "tid", "ver"],
            "tenant_region_scope": "NA", "cloud_instance_name": "localhost",
        })

    def _keys(self, request: IRequest, tenant: Tenant) -> bytes:
        return _json(request, self.state.keys.jwks())

    # -- RFC 8628 §3.1 -----------------------------------------------------------------
    def _client_ok(self, client_id: str) -> bool:
        allowed = self.state.settings.client_ids
        return bool(client_id) and len(client_id) <= 256 and (
            allowed is None or client_id in allowed)

    def _devicecode(self, request: IRequest, tenant: Tenant) -> bytes:
        form = _form(request)
        if form is None:
            return _error(request, 400, "invalid_request", 900144,
                          "The request body must be application/x-www-form-urlencoded.")
        client_id = form.get("client_id", "")
        if not self._client_ok(client_id):
            return _error(request, 400, "unauthorized_client", 700016,
                          f"Application with identifier '{client_id[:64]}' was not found "
                          f"in the directory '{tenant.name}'.")
        scope = form.get("scope", "openid profile offline_access")[:MAX_FIELD]
        dc = self.state.new_device_code(tenant, client_id, scope)
        uri = f"{self.state.base_url}/devicelogin"
        return _json(request, {
            "user_code": dc.user_code, "device_code": dc.device_code,
            "verification_uri": uri, "expires_in": self.state.settings.code_ttl,
            "interval": dc.interval,
            "message": f"To sign in, use a web browser to open the page {uri} and enter "
                       f"the code {dc.user_code} to authenticate.",
        })

    # -- RFC 8628 §3.4/§3.5, RFC 6749 §6 ---------------------------------------------------
    def _token(self, request: IRequest, tenant: Tenant) -> bytes:
        form = _form(request)
        if form is None:
            return _error(request, 400, "invalid_request", 900144,
                          "The request body must be application/x-www-form-urlencoded.")
        grant = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        if not self._client_ok(client_id):
            return _error(request, 400, "unauthorized_client", 700016,
                          f"Application with identifier '{client_id[:64]}' was not found.")
        if grant == DEVICE_CODE_GRANT:
            return self._token_device_code(request, tenant, form, client_id)
        if grant == "refresh_token":
            return self._token_refresh(request, tenant, form, client_id)
        return _error(request, 400, "unsupported_grant_type", 70003,
                      f"The app requested an unsupported grant type '{grant[:64]}'.")

    def _token_device_code(self, request: IRequest, tenant: Tenant, form: dict[str, str],
                           client_id: str) -> bytes:
        st = self.state
        now = st.clock()
        dc = st.codes.get(form.get("device_code", ""))
        if dc is None or dc.client_id != client_id or dc.tenant_id != tenant.id:
            return _error(request, 400, "bad_verification_code", 70000,
                          "The provided value for the input parameter 'device_code' "
                          "is not valid.")
        if dc.status == _REDEEMED:
            return _error(request, 400, "invalid_grant", 54005,
                          "OAuth2 device code was already redeemed.")
        if dc.status == _DECLINED:
            return _error(request, 400, "authorization_declined", 70000,
                          "The user declined the sign-in request.")
        if now >= dc.expires_at:
            return _error(request, 400, "expired_token", 70020,
                          "The device code has expired. Restart the sign-in.")
        early = (dc.last_poll is not None
                 and now - dc.last_poll < dc.interval - st.settings.poll_tolerance)
        dc.last_poll = now
        if early:
            dc.interval += 5  # RFC 8628 §3.5: the client adds 5 seconds too
            return _error(request, 400, "slow_down", 70016,
                          f"Polling too fast; wait at least {dc.interval} seconds.")
        if dc.status == _PENDING:
            return _error(request, 400, "authorization_pending", 70016,
                          "OAuth 2.0 device flow error. Authorization is pending. "
                          "Continue polling.")
        user = st.directory.users.get(dc.user_oid or "")
        if user is None or user.tenant != tenant.id:
            return _error(request, 400, "invalid_grant", 50034,
                          "The user account does not exist in the directory.")
        if not user.enabled:
            return _error(request, 400, "invalid_grant", 50057,
                          "The user account is disabled.")
        dc.status = _REDEEMED
        return _json(request, st.tokens(user, client_id, dc.scope))

    def _token_refresh(self, request: IRequest, tenant: Tenant, form: dict[str, str],
                       client_id: str) -> bytes:
        st = self.state
        digest = hashlib.sha256(form.get("refresh_token", "").encode()).hexdigest()
        g = st.refresh.get(digest)
        if g is None or g.client_id != client_id or g.tenant_id != tenant.id:
            return _error(request, 400, "invalid_grant", 50173,
                          "The provided grant has expired due to it being revoked, a fresh "
                          "auth token is needed. The user might have changed or reset their "
                          "password.")
        if g.expires_at <= st.clock():
            del st.refresh[digest]
            return _error(request, 400, "invalid_grant", 700082,
                          "The refresh token has expired due to inactivity.")
        user = st.directory.users.get(g.oid)
        if user is None:
            return _error(request, 400, "invalid_grant", 50034,
                          "The user account does not exist in the directory.")
        if not user.enabled:
            return _error(request, 400, "invalid_grant", 50057,
                          "The user account is disabled.")
        scope = form.get("scope", g.scope)[:MAX_FIELD] or g.scope
        return _json(request, st.tokens(user, client_id, scope))

    # -- RFC 8628 §3.3: the verification page ------------------------------------------------
    def _login_form(self, request: IRequest) -> bytes:
        raw = (request.args or {}).get(b"code", [b""])[-1][:20]
        code = html.escape(normalize_user_code(raw.decode("utf-8", "replace")))
        return _page(request, 200, "Sign in to your device", _FORM.format(code=code))

    def _login_submit(self, request: IRequest) -> bytes | int:
        st = self.state
        client = _client_address(request)
        now = st.clock()
        wait = st.throttle.retry_after(client, now)
        if wait > 0:
            request.setHeader(b"retry-after", str(int(wait + 0.999)).encode())
            return _message(request, 429, "Too many attempts",
                            f"Too many failed attempts. Try again in {int(wait + 0.999)} "
                            f"seconds.")
        form = _form(request)
        if form is None:
            return _message(request, 400, "Bad request", "The form could not be read.")
        code = normalize_user_code(form.get("code", ""))[:MAX_FIELD]
        username = form.get("username", "").strip()[:MAX_FIELD]
        password = form.get("password", "")[:MAX_FIELD]
        action = form.get("action", "approve")
        if action not in ("approve", "decline"):
            return _message(request, 400, "Bad request", "Unknown action.")
        dc = st.by_user_code.get(code)
        if dc is None:
            st.throttle.fail(client, now)
            return _message(request, 400, "Code not recognised",
                            "That code wasn't recognised. Check the code on your phone and "
                            "try again.")
        if now >= dc.expires_at:
            return _message(request, 400, "Code expired",
                            "That code has expired. On your phone, press Back and sign in "
                            "again to get a new code.")
        if dc.status != _PENDING:
            return _message(request, 400, "Code already used",
                            "That code has already been used.")
        user = st.directory.user_by_upn(username) if username else None
        stored = user.password_hash if user is not None else ""
        d = threads.deferToThread(self._check_password, password, stored)
        d.addCallback(self._finish_login, request, client, dc, user, action)
        d.addErrback(self._login_failed, request)
        return server.NOT_DONE_YET

    @staticmethod
    def _check_password(password: str, stored: str) -> bool:
        # Hash even for unknown users, so timing does not reveal which UPNs exist.
        if not stored:
            verify_password(password, _DUMMY_HASH)
            return False
        return verify_password(password, stored)

    def _finish_login(self, ok: bool, request: IRequest, client: str, dc: _DeviceCode,
                      user: User | None, action: str) -> None:
        st = self.state
        now = st.clock()
        if not ok or user is None:
            st.throttle.fail(client, now)
            body = _message(request, 400, "Sign-in failed",
                            "Your account or password is incorrect.")
        elif not user.enabled:
            body = _message(request, 400, "Account disabled",
                            "AADSTS50057: Your account has been disabled. Contact your "
                            "administrator.")
        elif user.tenant != dc.tenant_id:
            tenant = st.directory.tenants.get(dc.tenant_id)
            body = _message(request, 400, "Wrong organisation",
                            f"AADSTS50020: The account {user.upn} does not exist in "
                            f"tenant '{tenant.name if tenant else dc.tenant_id}'. Sign in "
                            f"with an account of that organisation.")
        elif now >= dc.expires_at:
            body = _message(request, 400, "Code expired",
                            "That code has expired. On your phone, press Back and sign in "
                            "again to get a new code.")
        elif dc.status != _PENDING:
            body = _message(request, 400, "Code already used", "That code has already been used.")
        elif action == "decline":
            dc.status = _DECLINED
            body = _message(request, 200, "Sign-in cancelled",
                            "You cancelled the sign-in. Your phone will not be signed in.")
        else:
            dc.status, dc.user_oid = _APPROVED, user.oid
            body = _message(request, 200, "Signed in",
                            f"You have signed in to the phone as {user.upn}. You may now close "
                            f"this window.")
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(body)
            request.finish()

    def _login_failed(self, failure: Any, request: IRequest) -> None:
        log.error("verification page failed: %s", failure.getErrorMessage())
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(_message(request, 500, "Error", "Something went wrong; try again."))
            request.finish()


# A hash of a random password nobody knows, to spend the same time on unknown users.
_DUMMY_HASH = ("scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$"
               "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")


class DevIdp:
    """A running development identity provider (see the module docstring)."""

    def __init__(self, state: _State, port: IListeningPort, ca_file: Path, base_url: str) -> None:
        self._state = state
        self._port = port
        self.ca_file = ca_file
        self.base_url = base_url
        self._stopped = False

    @property
    def directory(self) -> Directory:
        return self._state.directory

    @directory.setter
    def directory(self, directory: Directory) -> None:
        """Swap the user store (an admin disabled a user, changed a licence, ...)."""
        self._state.directory = directory

    @property
    def port(self) -> int:
        return int(self._port.getHost().port)

    def authority(self, tenant: str) -> str:
        return f"{self.base_url}/{tenant}"

    def issuer(self, tenant_id: str) -> str:
        return self._state.issuer(tenant_id)

    def rotate_keys(self) -> str:
        """Activate a fresh signing key (the old one stays published); returns the new kid."""
        return self._state.keys.rotate()

    @property
    def active_kid(self) -> str:
        return self._state.keys.active_kid

    def revoke_user_tokens(self, oid: str) -> int:
        """Revoke every refresh token of user ``oid``; returns how many were revoked."""
        return self._state.revoke_user(oid)

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign arbitrary claims with the active key (tests of relying parties)."""
        return self._state.keys.sign(claims)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        import asyncio

        await self._port.stopListening().asFuture(asyncio.get_running_loop())  # type: ignore[union-attr]


def start_devidp(data_dir: Path | str, host: str, port: int, directory: Directory,
                 reactor: Any, clock: Callable[[], float] = time.time,
                 settings: DevIdpSettings | None = None,
                 client_ids: Collection[str] | None = None,
                 tls: TlsFiles | None = None) -> DevIdp:
    """Start the provider on ``host:port`` (0 = ephemeral) with TLS material in ``data_dir``.

    ``tls`` reuses existing development certificates (the gateway passes its own, so
    one development CA covers SIP over TLS and the provider); by default a CA and
    certificate are made under ``data_dir/devidp``. The CA certificate msal and the
    gateway must trust is ``DevIdp.ca_file``.
    """
    settings = settings or DevIdpSettings()
    if client_ids is not None:
        settings = DevIdpSettings(**{**_settings_dict(settings),
                                     "client_ids": frozenset(client_ids)})
    base = Path(data_dir)
    tls = tls or ensure_dev_certificate(base / "devidp")
    keys = SigningKeys(base / "devidp" / "keys")
    state = _State(directory, keys, settings, clock)
    site = server.Site(_Root(state))
    site.displayTracebacks = False
    listening = reactor.listenSSL(port, site, server_tls_options(tls), interface=host)
    actual = listening.getHost().port
    url_host = f"[{host}]" if ":" in host else ("localhost" if host in ("", "0.0.0.0")
                                                else host)
    state.base_url = f"https://{url_host}:{actual}"
    assert tls.ca is not None
    return DevIdp(state, listening, tls.ca, state.base_url)


def _settings_dict(s: DevIdpSettings) -> dict[str, Any]:
    return {f: getattr(s, f) for f in DevIdpSettings.__dataclass_fields__}
