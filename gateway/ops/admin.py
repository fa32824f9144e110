"""Admin REST API (``/admin/v1``), ``/healthz`` and the ops page ``/ops`` on one twisted.web site.

Documented in ``gateway/ops/openapi-admin.json`` (OpenAPI 3.1). Every admin
call needs ``Authorization: Bearer <token>`` (RFC 6750 §2.1) with the token
from ``[ops] admin_token`` or, when that is empty, the one generated into
``<data_dir>/secrets/admin.token``; ``/ops`` also accepts HTTP Basic
(RFC 7617) with the token as password so a browser can open it; ``/healthz``
is open. Every error is a JSON ``{"error", "message"}`` with a 4xx status (5xx
only for a dependency that is down), never a traceback. Request bodies are
capped (``MAX_BODY``); larger uploads are discarded as they arrive and get 413.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.identity.bulk import BulkInputError, BulkSignIn, PairingStoreLedger
from gateway.identity.enrollment import Enrollment
from gateway.ops.health import HealthResource
from gateway.ops.page import CSP, render_ops_page
from gateway.registrar.admin import show_device
from gateway.registrar.devices import DeviceError, DeviceStore, normalise_mac

log = logging.getLogger("sipgw.admin")

MAX_JSON = 64 * 1024
MAX_BODY = 1024 * 1024 + 4096  # the largest bulk sign-in CSV plus slack
DEFAULT_PORT = 9061


class PairingControl(Protocol):
    """What the admin API asks of the pairing state machine (``PairingManager`` fits)."""

    async def start_pairing(self, device_id: str, tenant: str, *,
                            common_area: bool = False) -> Any: ...

    async def sign_out(self, device_id: str, reason: str) -> object: ...

    async def status(self, device_id: str) -> Any: ...


class ApiError(Exception):
    """An answer other than success: status, stable code and a message for the admin."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class LimitedRequest(Request):
    """A request whose body is capped: bytes beyond ``max_body`` are dropped, then 413."""

    max_body = MAX_BODY

    def gotLength(self, length: int | None) -> None:
        self.body_too_large = length is not None and length > self.max_body
        self._received = 0
        super().gotLength(None if self.body_too_large else length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received = getattr(self, "_received", 0) + len(data)
        if self._received > self.max_body:
            self.body_too_large = True
        if not getattr(self, "body_too_large", False):
            super().handleContentChunk(data)

    def process(self) -> None:
        if getattr(self, "body_too_large", False):
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"connection", b"close")
            self.write(json.dumps({"error": "too_large", "message":
                                   f"request body over {self.max_body} bytes"}).encode())
            self.finish()
            return
        super().process()


def admin_token(config: Any) -> str:
    """``[ops] admin_token``, else the token kept in ``<data_dir>/secrets/admin.token``."""
    from gateway.state.secrets import load_or_create_key

    ops = getattr(config, "ops", None)
    token = str(getattr(ops, "admin_token", "") or "")
    if token:
        return token
    return load_or_create_key(config.data_path / "secrets" / "admin.token").hex()


def _bearer_ok(header: bytes | None, token: str) -> bool:
    if not header or not header[:7].lower() == b"bearer ":
        return False
    return hmac.compare_digest(header[7:].strip(), token.encode())


def _basic_ok(header: bytes | None, token: str) -> bool:
    if not header or not header[:6].lower() == b"basic ":
        return False
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True)
    except ValueError:
        return False
    _, _, password = raw.partition(b":")
    return hmac.compare_digest(password, token.encode())


def _json_body(request: Request) -> dict[str, Any]:
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        return {}
    if len(raw) > MAX_JSON:
        raise ApiError(413, "too_large", f"JSON bodies are limited to {MAX_JSON} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "bad_json", f"the body is not JSON: {str(e)[:100]}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return body


def _str_field(body: dict[str, Any], name: str, *, required: bool = True,
               max_len: int = 128) -> str:
    v = body.get(name, "")
    if v is None:
        v = ""
    if not isinstance(v, str):
        raise ApiError(400, "bad_request", f"{name}: expected a string")
    if required and not v:
        raise ApiError(400, "bad_request", f"{name}: required")
    if len(v) > max_len or any(ord(c) < 32 for c in v):
        raise ApiError(400, "bad_request", f"{name}: at most {max_len} printable characters")
    return v


def _query(request: Request, name: str) -> str:
    vals = (request.args or {}).get(name.encode(), [])
    return vals[0].decode("utf-8", "replace")[:128] if vals else ""


Handler = Callable[[Request, list[str]], Awaitable[tuple[int, Any]]]


class AdminApi(Resource):
    """``/admin/v1/...``: devices, enrollment codes, remote sign-in/out, bulk sign-in."""

    isLeaf = True

    def __init__(self, gateway: Any, token: str, pairing: PairingControl | None,
                 enrollment: Enrollment, bulk: BulkSignIn) -> None:
        super().__init__()
        self.gateway = gateway
        self.token = token
        self.pairing = pairing
        self.enrollment = enrollment
        self.bulk = bulk
        self.devices: DeviceStore = gateway.devices or DeviceStore(
            gateway.redis, gateway.config.sip.domain)
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"^devices$"), self._list),
            ("POST", re.compile(r"^devices$"), self._add),
            ("GET", re.compile(r"^devices/([^/]+)$"), self._show),
            ("DELETE", re.compile(r"^devices/([^/]+)$"), self._remove),
            ("POST", re.compile(r"^devices/([^/]+)/verification-code$"), self._code),
            ("POST", re.compile(r"^devices/([^/]+)/sign-in$"), self._sign_in),
            ("POST", re.compile(r"^devices/([^/]+)/sign-out$"), self._sign_out),
            ("POST", re.compile(r"^bulk-sign-in$"), self._bulk_submit),
            ("GET", re.compile(r"^bulk-sign-in/([^/]+)$"), self._bulk_status),
        ]

    def render(self, request: Request) -> Any:
        # redis.asyncio needs an asyncio task, not a Deferred-driven coroutine
        d: Deferred[None] = Deferred.fromFuture(asyncio.ensure_future(self._handle(request)))
        d.addErrback(lambda f: log.error("admin request crashed: %s", f.getErrorMessage()))
        return NOT_DONE_YET

    async def _handle(self, request: Request) -> None:
        gone = [False]
        request.notifyFinish().addBoth(lambda _: gone.__setitem__(0, True))
        headers: dict[str, str] = {}
        try:
            status, body = await self._dispatch(request)
        except ApiError as e:
            status, body, headers = e.status, {"error": e.code, "message": e.message}, e.headers
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("admin %r failed", request.path[:100])
            status, body = 500, {"error": "internal", "message": "internal error (see the log)"}
        if gone[0]:
            return
        request.setResponseCode(status)
        for k, v in headers.items():
            request.setHeader(k.encode(), v.encode())
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(json.dumps(body).encode("utf-8"))
        request.finish()

    async def _dispatch(self, request: Request) -> tuple[int, Any]:
        if not _bearer_ok(request.getHeader(b"authorization"), self.token):
            raise ApiError(401, "unauthorized", "bearer token missing or wrong",
                           {"www-authenticate": 'Bearer realm="sipgw-admin"'})
        path = request.path.decode("ascii", "replace")
        if not path.startswith("/admin/v1/"):
            raise ApiError(404, "not_found", "the admin API lives under /admin/v1/")
        rest = path[len("/admin/v1/"):].strip("/")
        method = request.method.decode("ascii", "replace")
        allowed = []
        for m, pattern, handler in self.routes:
            match = pattern.match(rest)
            if match is None:
                continue
            if m != method:
                allowed.append(m)
                continue
            return await handler(request, [unquote(g) for g in match.groups()])
        if allowed:
            raise ApiError(405, "method_not_allowed", f"use {', '.join(sorted(allowed))}",
                           {"allow": ", ".join(sorted(allowed))})
        raise ApiError(404, "not_found", f"no such resource: /admin/v1/{rest[:80]}")

    # -- devices ---------------------------------------------------------------------------
    async def _device(self, mac: str) -> Any:
        try:
            device_id = normalise_mac(mac)
        except DeviceError as e:
            raise ApiError(400, "bad_mac", str(e)) from None
        dev = await self.devices.get(device_id)
        if dev is None:
            raise ApiError(404, "device_not_found", f"no device {device_id}: add it first")
        return dev

    async def _list(self, request: Request, _: list[str]) -> tuple[int, Any]:
        tenant = _query(request, "tenant") or None
        devs = await self.devices.list(tenant=tenant)
        enrolled = await self.enrollment.get_many([d.device_id for d in devs])
        out = []
        for d in devs:
            item = d.public()
            e = enrolled.get(d.device_id)
            item["enrollment"] = e.to_json() if e is not None else None
            out.append(item)
        return 200, {"devices": out}

    async def _add(self, request: Request, _: list[str]) -> tuple[int, Any]:
        body = _json_body(request)
        mac = _str_field(body, "mac", max_len=40)
        fields = {k: _str_field(body, k) for k in ("vendor", "model", "tenant")}
        username = _str_field(body, "sip_username", required=False, max_len=64) or None
        try:
            dev, creds = await self.devices.add(mac, fields["vendor"], fields["model"],
                                                fields["tenant"], sip_username=username)
        except DeviceError as e:
            status = 409 if "already" in str(e) or "in use" in str(e) else 400
            raise ApiError(status, "device_conflict" if status == 409 else "bad_device",
                           str(e)) from None
        log.info("admin added device %s (%s %s, tenant %s)", dev.device_id, dev.vendor,
                 dev.model, dev.tenant)
        return 201, {"device": dev.public(), "sip_password": creds.password,
                     "note": "the SIP password is shown only now; the gateway keeps only "
                             "digest hashes of it"}

    async def _show(self, request: Request, groups: list[str]) -> tuple[int, Any]:
        dev = await self._device(groups[0])
        out = await show_device(self.gateway.redis, dev.device_id, dev.realm or
                                self.devices.realm)
        if out is None:
            raise ApiError(404, "device_not_found", f"no device {dev.device_id}")
        e = await self.enrollment.get(dev.device_id)
        out["enrollment"] = e.to_json() if e is not None else None
        out["pairing"] = await self._pairing_json(dev.device_id)
        return 200, out

    async def _pairing_json(self, device_id: str) -> Any:
        try:
            if self.pairing is not None:
                record = await self.pairing.status(device_id)
            else:
                from gateway.identity.pairing import PairingStore
                record = await PairingStore(self.gateway.redis).get(device_id)
        except (ValueError, KeyError):
            return None
        return {"state": record.state.value, "reason": record.reason, "upn": record.upn,
                "history": [{"at": t.at, "from": t.from_state.value, "to": t.to_state.value,
                             "reason": t.reason} for t in record.history]}

    async def _remove(self, request: Request, groups: list[str]) -> tuple[int, Any]:
        dev = await self._device(groups[0])
        if self.pairing is not None and dev.paired:
            await self.pairing.sign_out(dev.device_id, "device removed by admin")
        removed = await self.devices.remove(dev.device_id)
        await self.enrollment.clear(dev.device_id)
        log.info("admin removed device %s", dev.device_id)
        return 200, {"removed": removed, "device_id": dev.device_id}

    # -- enrollment and sign-in ------------------------------------------------------------
    async def _code(self, request: Request, groups: list[str]) -> tuple[int, Any]:
        dev = await self._device(groups[0])
        if dev.paired:
            raise ApiError(409, "already_signed_in",
                           f"device {dev.device_id} is signed in: sign it out first")
        issued = await self.enrollment.issue_code(dev.device_id)
        return 201, {"device_id": dev.device_id, "code": issued.code,
                     "expires_at": issued.expires_at, "state": "waiting_on_activation",
                     "dial": f"*55*{issued.code}"}

    async def _sign_in(self, request: Request, groups: list[str]) -> tuple[int, Any]:
        dev = await self._device(groups[0])
        body = _json_body(request)
        if self.pairing is None:
            raise ApiError(503, "pairing_unavailable",
                           "sign-in is not available on this node (no identity provider)")
        common_area = body.get("common_area")
        if common_area is None:
            common_area = await self.enrollment.get(dev.device_id) is not None
        if not isinstance(common_area, bool):
            raise ApiError(400, "bad_request", "common_area: expected true or false")
        from gateway.identity.pairing import PairingRefused

        try:
            prompt = await self.pairing.start_pairing(dev.device_id, dev.tenant,
                                                      common_area=common_area)
        except PairingRefused as e:
            status = {"already_paired": 409, "throttled": 429,
                      "tenant_not_allowed": 403}.get(e.reason, 503)
            headers = {"retry-after": str(int(e.retry_after))} if e.retry_after else {}
            raise ApiError(status, e.reason, e.message, headers) from None
        return 200, {"device_id": dev.device_id, "user_code": prompt.user_code,
                     "verification_uri": prompt.verification_uri,
                     "expires_at": prompt.expires_at,
                     "message": f"Open {prompt.verification_uri} and enter {prompt.user_code} "
                                "signed in as the phone's user (or its common-area account)."}

    async def _sign_out(self, request: Request, groups: list[str]) -> tuple[int, Any]:
        dev = await self._device(groups[0])
        body = _json_body(request)
        why = _str_field(body, "reason", required=False, max_len=200)
        reason = f"signed out by admin: {why}" if why else "signed out by admin"
        if self.pairing is not None:
            await self.pairing.sign_out(dev.device_id, reason)
        else:
            await self._sign_out_without_manager(dev.device_id, reason)
        await self.enrollment.clear(dev.device_id)
        after = await self.devices.get(dev.device_id)
        return 200, {"device_id": dev.device_id,
                     "state": after.state if after is not None else "removed"}

    async def _sign_out_without_manager(self, device_id: str, reason: str) -> None:
        """The pairing store's paired -> signing_out -> unpaired walk, done here."""
        from gateway.identity.pairing import PairingState, PairingStore

        store = PairingStore(self.gateway.redis)
        record = await store.get(device_id)
        if record.state is PairingState.PAIRED:
            await store.transition(device_id, PairingState.SIGNING_OUT, reason)
        elif record.state is PairingState.PAIRING:
            await store.transition(device_id, PairingState.UNPAIRED, reason)
        await self.devices.set_unpaired(device_id)
        if (await store.get(device_id)).state is PairingState.SIGNING_OUT:
            await store.transition(device_id, PairingState.UNPAIRED, reason)

    # -- bulk sign-in ----------------------------------------------------------------------
    async def _bulk_submit(self, request: Request, _: list[str]) -> tuple[int, Any]:
        data = request.content.read() if request.content is not None else b""
        region = _query(request, "region")
        if not region:
            raise ApiError(400, "bad_request", "?region=NOAM|EMEA|APAC is required")
        try:
            ids = await self.bulk.submit(data, region, _query(request, "tenant"))
        except BulkInputError as e:
            raise ApiError(400, "bad_csv", str(e)) from None
        return 202, {"batch_ids": ids}

    async def _bulk_status(self, request: Request, groups: list[str]) -> tuple[int, Any]:
        st = await self.bulk.status(groups[0])
        if st is None:
            raise ApiError(404, "batch_not_found", f"no batch {groups[0][:40]}")
        return 200, st.to_json()


class OpsPage(Resource):
    """``GET /ops``: the HTML ops page (bearer or Basic auth with the admin token)."""

    isLeaf = True

    def __init__(self, gateway: Any, token: str, enrollment: Enrollment | None) -> None:
        super().__init__()
        self.gateway = gateway
        self.token = token
        self.enrollment = enrollment

    def render_GET(self, request: Request) -> Any:
        auth = request.getHeader(b"authorization")
        if not (_bearer_ok(auth, self.token) or _basic_ok(auth, self.token)):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="sipgw-ops", charset="UTF-8"')
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": "unauthorized",
                               "message": "admin token required"}).encode()
        d: Deferred[None] = Deferred.fromFuture(asyncio.ensure_future(self._page(request)))
        d.addErrback(lambda f: log.error("ops page crashed: %s", f.getErrorMessage()))
        return NOT_DONE_YET

    async def _page(self, request: Request) -> None:
        gone = [False]
        request.notifyFinish().addBoth(lambda _: gone.__setitem__(0, True))
        try:
            body = await render_ops_page(self.gateway, enrollment=self.enrollment)
            status, ctype = 200, b"text/html; charset=utf-8"
        except Exception:  # noqa: BLE001
            log.exception("ops page failed")
            body = json.dumps({"error": "internal", "message": "ops page failed"}).encode()
            status, ctype = 500, b"application/json"
        if gone[0]:
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", ctype)
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": "not_found",
                           "message": "try /admin/v1/, /ops or /healthz"}).encode()


class _Root(Resource):
    def __init__(self, children: dict[bytes, Resource]) -> None:
        super().__init__()
        self.children_ = children

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self.children_.get(path, _NotFound())


def build_site(gateway: Any, token: str, pairing: PairingControl | None,
               enrollment: Enrollment, bulk: BulkSignIn) -> Site:
    api = AdminApi(gateway, token, pairing, enrollment, bulk)
    root = _Root({b"admin": api, b"ops": OpsPage(gateway, token, enrollment),
                  b"healthz": HealthResource(gateway)})
    site = Site(root, requestFactory=LimitedRequest)
    site.displayTracebacks = False
    return site


def make_enrollment(gateway: Any) -> Enrollment:
    """The enrollment service (its HMAC key in ``<data_dir>/secrets/enroll.key``, 0600)."""
    from gateway.state.secrets import load_or_create_key

    secret = load_or_create_key(gateway.config.data_path / "secrets" / "enroll.key")
    return Enrollment(gateway.redis, secret)


def make_bulk(gateway: Any) -> BulkSignIn:
    from gateway.identity.pairing import PairingStore

    devices = gateway.devices or DeviceStore(gateway.redis, gateway.config.sip.domain)
    return BulkSignIn(gateway.redis, devices, gateway.backend,
                      ledger=PairingStoreLedger(PairingStore(gateway.redis)))


async def attach_admin(gateway: Any, pairing: PairingControl | None, *,
                       enrollment: Enrollment | None = None, bulk: BulkSignIn | None = None,
                       host: str | None = None, port: int | None = None,
                       ) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Serve the admin API, /ops and /healthz; returns (bound port, stop).

    Listens on ``[ops] host``/``port`` (defaults 127.0.0.1:9061; 0 = ephemeral).
    Resumes bulk sign-in batches left running by a previous process. Pass the
    ``enrollment`` given to the B2BUA's ``*55*`` handler so both share it.
    """
    ops = getattr(gateway.config, "ops", None)
    host = host if host is not None else str(getattr(ops, "host", "127.0.0.1"))
    port = port if port is not None else int(getattr(ops, "port", DEFAULT_PORT))
    token = admin_token(gateway.config)
    enrollment = enrollment or make_enrollment(gateway)
    bulk = bulk or make_bulk(gateway)
    site = build_site(gateway, token, pairing, enrollment, bulk)
    listening = gateway.reactor.listenTCP(port, site, interface=host)
    await bulk.resume()
    stopped = [False]

    async def stop() -> None:
        if stopped[0]:
            return
        stopped[0] = True
        await bulk.stop()
        d = listening.stopListening()
        if d is not None:
            await d.asFuture(asyncio.get_running_loop())

    bound = int(listening.getHost().port)
    if hasattr(gateway, "listening"):
        from gateway.app import Listening
        gateway.listening.append(Listening("admin", "http", host, bound))
    return bound, stop
