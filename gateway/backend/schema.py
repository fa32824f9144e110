"""Version 1 of the call-control backend API: REST bodies and WebSocket events.

Every body crossing the gateway/backend boundary is one of the frozen
dataclasses below, with ``to_json() -> dict`` and a strict
``from_json(obj) -> Self`` that raises ``SchemaError`` (a ValueError) with a
message naming the field at fault: unknown fields, wrong types, bad
enumerations, oversized strings are all refused. The REST paths are listed in
``gateway/backend/openapi.json`` (OpenAPI 3.1, package data).

Events (``GET /v1/events``, WebSocket, one JSON object per text message)::

    {"v": 1, "id": "<stream id>", "type": "call.incoming", "call_id": "...",
     "user": "<oid>", "endpoint_id": "...", "sdp": "...", "reason": "...", ...}

Event types in use: ``EVENT_TYPES``. Reserved for later versions (a client
must ignore event types it does not know): ``RESERVED_EVENT_TYPES`` —
voicemail (``voicemail.*``, message-waiting), meetings (``meeting.*``) and
transfer (``call.transfer*``, ``call.replaced``).

Call states (``CALL_STATES``): ``offered`` (created, offered to the callee),
``ringing`` (a callee endpoint rings), ``connected``, ``ended``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Self

SCHEMA_VERSION = 1
MAX_BODY = 256 * 1024  # bytes of one REST body
MAX_SDP = 64 * 1024
MAX_LOCATION = 16 * 1024
MAX_ID = 128

ENDPOINT_KINDS = frozenset({"sip-device", "teams-desktop"})
TARGET_KINDS = frozenset({"user", "pstn", "meeting", "emergency"})
REJECT_REASONS = frozenset({"busy", "declined", "dnd"})
CALL_STATES = frozenset({"offered", "ringing", "connected", "ended"})
# Why a call ended or was cancelled/rejected.
END_REASONS = frozenset({
    "hangup", "caller_cancelled", "answered_elsewhere", "no_answer", "busy", "declined",
    "dnd", "unavailable", "endpoint_offline",
})
EVENT_TYPES = frozenset({
    "call.incoming", "call.ringing", "call.answered", "call.ended", "call.cancelled",
    "call.rejected", "call.dtmf", "call.reoffer", "endpoint.dnd", "endpoint.online",
    "endpoint.offline",
})
RESERVED_EVENT_TYPES = frozenset({
    "voicemail.deposited", "voicemail.mwi", "meeting.joined", "meeting.left",
    "call.transfer.requested", "call.transfer.completed", "call.replaced", "call.held",
    "call.resumed",
})
CAPABILITIES = frozenset({
    "audio", "video", "dtmf-rfc4733", "dtmf-info", "hold", "transfer", "e911-dynamic", "mwi",
})

_ID = re.compile(r"^[A-Za-z0-9._:@+\-]{1,128}$")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_DIALSTRING = re.compile(r"^\+?[0-9*#]{1,32}$")
_DTMF = re.compile(r"^[0-9*#A-Da-d]{1,32}$")


class SchemaError(ValueError):
    """A body that does not match the v1 schema; the message names the field (HTTP 400)."""


# --- field readers ---------------------------------------------------------------------

def _obj(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SchemaError(f"{what}: expected a JSON object, got {_tname(obj)}")
    return obj


def _tname(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def _only(obj: dict[str, Any], allowed: set[str] | frozenset[str], what: str) -> None:
    if allowed.issuperset(obj):  # the common case builds no set
        return
    extra = sorted(set(obj) - allowed)
    if extra:
        raise SchemaError(f"{what}: unknown field {extra[0]!r}")


def _str(obj: dict[str, Any], key: str, *, required: bool = True, default: str = "",
         max_len: int = 1024, pattern: re.Pattern[str] | None = None,
         choices: frozenset[str] | None = None) -> str:
    if key not in obj:
        if required:
            raise SchemaError(f"{key}: missing")
        return default
    v = obj[key]
    if not isinstance(v, str):
        raise SchemaError(f"{key}: expected a string, got {_tname(v)}")
    if len(v) > max_len:
        raise SchemaError(f"{key}: longer than {max_len} characters")
    if choices is not None and v not in choices:
        raise SchemaError(f"{key}: {v[:40]!r} is not one of {', '.join(sorted(choices))}")
    if pattern is not None and not pattern.match(v):
        raise SchemaError(f"{key}: malformed value {v[:40]!r}")
    return v


def _bool(obj: dict[str, Any], key: str, *, required: bool = True,
          default: bool = False) -> bool:
    if key not in obj:
        if required:
            raise SchemaError(f"{key}: missing")
        return default
    v = obj[key]
    if not isinstance(v, bool):
        raise SchemaError(f"{key}: expected true or false, got {_tname(v)}")
    return v


def _int(obj: dict[str, Any], key: str, *, default: int, lo: int, hi: int) -> int:
    if key not in obj:
        return default
    v = obj[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise SchemaError(f"{key}: expected an integer, got {_tname(v)}")
    if not lo <= v <= hi:
        raise SchemaError(f"{key}: {v} outside {lo}..{hi}")
    return v


def _str_list(obj: dict[str, Any], key: str, *, choices: frozenset[str],
              max_items: int = 32) -> tuple[str, ...]:
    v = obj.get(key, [])
    if not isinstance(v, list):
        raise SchemaError(f"{key}: expected an array of strings, got {_tname(v)}")
    if len(v) > max_items:
        raise SchemaError(f"{key}: more than {max_items} items")
    for item in v:
        if not isinstance(item, str):
            raise SchemaError(f"{key}: expected an array of strings")
        if item not in choices:
            raise SchemaError(f"{key}: unknown value {item[:40]!r} "
                              f"(known: {', '.join(sorted(choices))})")
    return tuple(v)


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode one REST body as a JSON object (SchemaError on anything else)."""
    if len(raw) > MAX_BODY:
        raise SchemaError(f"body larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SchemaError("body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(f"malformed JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}") from None
    except RecursionError:
        raise SchemaError("malformed JSON: nested too deeply") from None
    return _obj(value, "body")


def validate_id(value: str, what: str) -> str:
    """An opaque identifier from a URL path (endpoint id, call id)."""
    if not _ID.match(value):
        raise SchemaError(f"{what}: malformed identifier")
    return value


def validate_guid(value: str, what: str) -> str:
    if not _GUID.match(value.lower()):
        raise SchemaError(f"{what}: not a GUID")
    return value.lower()


# --- bodies ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EndpointCreate:
    """``POST /v1/users/{oid}/endpoints``: one device of the user comes online."""

    endpoint_id: str
    device_id: str
    kind: str = "sip-device"
    capabilities: tuple[str, ...] = ()
    expires: int = 3600  # seconds; POST again to refresh

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "kind": self.kind,
                "device_id": self.device_id, "capabilities": list(self.capabilities),
                "expires": self.expires}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "endpoint")
        _only(o, {"endpoint_id", "kind", "device_id", "capabilities", "expires"}, "endpoint")
        return cls(
            endpoint_id=_str(o, "endpoint_id", max_len=MAX_ID, pattern=_ID),
            device_id=_str(o, "device_id", max_len=MAX_ID, pattern=_ID),
            kind=_str(o, "kind", required=False, default="sip-device",
                      choices=frozenset({"sip-device"})),
            capabilities=_str_list(o, "capabilities", choices=CAPABILITIES),
            expires=_int(o, "expires", default=3600, lo=30, hi=86400),
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An online endpoint of a user (response body and list item)."""

    endpoint_id: str
    user: str
    kind: str
    device_id: str
    capabilities: tuple[str, ...] = ()
    dnd: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "user": self.user, "kind": self.kind,
                "device_id": self.device_id, "capabilities": list(self.capabilities),
                "dnd": self.dnd}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "endpoint")
        _only(o, {"endpoint_id", "user", "kind", "device_id", "capabilities", "dnd"},
              "endpoint")
        return cls(
            endpoint_id=_str(o, "endpoint_id", max_len=MAX_ID, pattern=_ID),
            user=_str(o, "user", max_len=MAX_ID),
            kind=_str(o, "kind", choices=ENDPOINT_KINDS),
            device_id=_str(o, "device_id", max_len=MAX_ID),
            capabilities=_str_list(o, "capabilities", choices=CAPABILITIES),
            dnd=_bool(o, "dnd", required=False),
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Whom a call is for: a user (oid, UPN or number), a PSTN number, a meeting, 911."""

    kind: str
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "target")
        _only(o, {"kind", "value"}, "target")
        kind = _str(o, "kind", choices=TARGET_KINDS)
        value = _str(o, "value", max_len=256)
        if not value:
            raise SchemaError("target.value: empty")
        if kind == "pstn" and not _E164.match(value):
            raise SchemaError("target.value: a PSTN target must be an E.164 number")
        if kind in ("emergency", "meeting") and not _DIALSTRING.match(value):
            raise SchemaError(f"target.value: a {kind} target must be a dial string")
        return cls(kind=kind, value=value)


@dataclass(frozen=True, slots=True)
class CallCreate:
    """``POST /v1/calls``: an endpoint places a call (SDP offer, RFC 3264)."""

    from_user: str
    from_endpoint: str
    target: Target
    sdp_offer: str
    location: str = ""  # PIDF-LO (RFC 4119) for emergency calls

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from_user": self.from_user, "from_endpoint": self.from_endpoint,
                               "target": self.target.to_json(), "sdp_offer": self.sdp_offer}
        if self.location:
            out["location"] = self.location
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "call")
        _only(o, {"from_user", "from_endpoint", "target", "sdp_offer", "location"}, "call")
        if "target" not in o:
            raise SchemaError("target: missing")
        try:
            target = Target.from_json(o["target"])
        except SchemaError as exc:
            msg = str(exc)
            raise SchemaError(msg if msg.startswith("target") else f"target.{msg}") from None
        # An unpaired device has no user; it may only call emergency numbers.
        from_user = _str(o, "from_user", required=target.kind != "emergency", max_len=MAX_ID)
        if from_user:
            validate_guid(from_user, "from_user")
        return cls(
            from_user=from_user.lower(),
            from_endpoint=_str(o, "from_endpoint", max_len=MAX_ID, pattern=_ID),
            target=target,
            sdp_offer=_sdp(o, "sdp_offer"),
            location=_str(o, "location", required=False, max_len=MAX_LOCATION),
        )


def _sdp(o: dict[str, Any], key: str, *, required: bool = True) -> str:
    v = _str(o, key, required=required, max_len=MAX_SDP)
    if v and not v.startswith("v=0"):
        raise SchemaError(f"{key}: not an SDP body (must start with v=0)")
    return v


_CALL_KEYS = frozenset({"call_id", "state", "from_user", "from_endpoint", "target",
                        "callee_user", "answered_endpoint", "sdp_answer", "end_reason",
                        "location", "created"})


@dataclass(frozen=True, slots=True)
class Call:
    """A call record (``GET /v1/calls/{id}``, response of ``POST /v1/calls``)."""

    call_id: str
    state: str
    from_user: str = ""
    from_endpoint: str = ""
    target: Target | None = None
    callee_user: str = ""
    answered_endpoint: str = ""
    sdp_answer: str = ""
    end_reason: str = ""
    location: str = ""
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "state": self.state, "from_user": self.from_user,
                "from_endpoint": self.from_endpoint,
                "target": self.target.to_json() if self.target else None,
                "callee_user": self.callee_user, "answered_endpoint": self.answered_endpoint,
                "sdp_answer": self.sdp_answer, "end_reason": self.end_reason,
                "location": self.location, "created": self.created}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "call")
        _only(o, _CALL_KEYS, "call")
        created = o.get("created", 0.0)
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise SchemaError("created: expected a number")
        t = o.get("target")
        return cls(
            call_id=_str(o, "call_id", max_len=MAX_ID, pattern=_ID),
            state=_str(o, "state", choices=CALL_STATES),
            from_user=_str(o, "from_user", required=False, max_len=MAX_ID),
            from_endpoint=_str(o, "from_endpoint", required=False, max_len=MAX_ID),
            target=None if t is None else Target.from_json(t),
            callee_user=_str(o, "callee_user", required=False, max_len=MAX_ID),
            answered_endpoint=_str(o, "answered_endpoint", required=False, max_len=MAX_ID),
            sdp_answer=_str(o, "sdp_answer", required=False, max_len=MAX_SDP),
            end_reason=_str(o, "end_reason", required=False, max_len=64),
            location=_str(o, "location", required=False, max_len=MAX_LOCATION),
            created=float(created),
        )


@dataclass(frozen=True, slots=True)
class EndpointAction:
    """Body of ``/ringing``, ``/hangup`` and ``/cancel``: which endpoint acts."""

    endpoint_id: str

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "body")
        _only(o, {"endpoint_id"}, "body")
        return cls(endpoint_id=_str(o, "endpoint_id", max_len=MAX_ID, pattern=_ID))


@dataclass(frozen=True, slots=True)
class Answer:
    """``POST /v1/calls/{id}/answer``: an offered endpoint accepts (RFC 3264 answer)."""

    endpoint_id: str
    sdp_answer: str

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "sdp_answer": self.sdp_answer}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "answer")
        _only(o, {"endpoint_id", "sdp_answer"}, "answer")
        return cls(endpoint_id=_str(o, "endpoint_id", max_len=MAX_ID, pattern=_ID),
                   sdp_answer=_sdp(o, "sdp_answer"))


@dataclass(frozen=True, slots=True)
class Reoffer:
    """``POST /v1/calls/{id}/reoffer``: a party of a connected call offers a new session
    description (RFC 3264 §8: hold, resume, session refresh); the answer comes back in
    ``ReofferAnswer`` and the other party gets a ``call.reoffer`` event."""

    endpoint_id: str
    sdp_offer: str

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "sdp_offer": self.sdp_offer}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "reoffer")
        _only(o, {"endpoint_id", "sdp_offer"}, "reoffer")
        return cls(endpoint_id=_str(o, "endpoint_id", max_len=MAX_ID, pattern=_ID),
                   sdp_offer=_sdp(o, "sdp_offer"))


@dataclass(frozen=True, slots=True)
class ReofferAnswer:
    """Response of ``POST /v1/calls/{id}/reoffer``: the RFC 3264 answer to the re-offer."""

    sdp_answer: str

    def to_json(self) -> dict[str, Any]:
        return {"sdp_answer": self.sdp_answer}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "reoffer answer")
        _only(o, {"sdp_answer"}, "reoffer answer")
        return cls(sdp_answer=_sdp(o, "sdp_answer"))


@dataclass(frozen=True, slots=True)
class Reject:
    """``POST /v1/calls/{id}/reject``: an offered endpoint declines (486/603-like)."""

    endpoint_id: str
    reason: str = "declined"

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "reason": self.reason}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "reject")
        _only(o, {"endpoint_id", "reason"}, "reject")
        return cls(endpoint_id=_str(o, "endpoint_id", max_len=MAX_ID, pattern=_ID),
                   reason=_str(o, "reason", required=False, default="declined",
                               choices=REJECT_REASONS))


@dataclass(frozen=True, slots=True)
class Dtmf:
    """``POST /v1/calls/{id}/dtmf``: digits pressed on one side (RFC 4733 events)."""

    endpoint_id: str
    digits: str
    duration_ms: int = 100

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "digits": self.digits,
                "duration_ms": self.duration_ms}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "dtmf")
        _only(o, {"endpoint_id", "digits", "duration_ms"}, "dtmf")
        return cls(endpoint_id=_str(o, "endpoint_id", max_len=MAX_ID, pattern=_ID),
                   digits=_str(o, "digits", max_len=32, pattern=_DTMF).upper(),
                   duration_ms=_int(o, "duration_ms", default=100, lo=40, hi=5000))


@dataclass(frozen=True, slots=True)
class Dnd:
    """``PUT /v1/users/{oid}/endpoints/{eid}/dnd``: presence Do Not Disturb (``*30*``)."""

    dnd: bool

    def to_json(self) -> dict[str, Any]:
        return {"dnd": self.dnd}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "dnd")
        _only(o, {"dnd"}, "dnd")
        return cls(dnd=_bool(o, "dnd"))


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """The calling-policy part of a user record."""

    allow_sip_devices_calling: bool
    allow_call_redirect: bool

    def to_json(self) -> dict[str, Any]:
        return {"allow_sip_devices_calling": self.allow_sip_devices_calling,
                "allow_call_redirect": self.allow_call_redirect}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "calling_policy")
        _only(o, {"allow_sip_devices_calling", "allow_call_redirect"}, "calling_policy")
        return cls(allow_sip_devices_calling=_bool(o, "allow_sip_devices_calling"),
                   allow_call_redirect=_bool(o, "allow_call_redirect"))


@dataclass(frozen=True, slots=True)
class UserInfo:
    """``GET /v1/users/{oid}``: directory and policy facts the gateway checks at sign-in."""

    oid: str
    tenant: str
    upn: str
    name: str
    number: str
    pstn_enabled: bool
    licenses: tuple[str, ...]
    account_type: str
    enabled: bool
    mfa: bool
    calling_policy: PolicyInfo
    sip_device_refusal: str = ""  # empty: the user may use a SIP device

    def to_json(self) -> dict[str, Any]:
        return {"oid": self.oid, "tenant": self.tenant, "upn": self.upn, "name": self.name,
                "number": self.number, "pstn_enabled": self.pstn_enabled,
                "licenses": list(self.licenses), "account_type": self.account_type,
                "enabled": self.enabled, "mfa": self.mfa,
                "calling_policy": self.calling_policy.to_json(),
                "sip_device_refusal": self.sip_device_refusal}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "user")
        keys = {"oid", "tenant", "upn", "name", "number", "pstn_enabled", "licenses",
                "account_type", "enabled", "mfa", "calling_policy", "sip_device_refusal"}
        _only(o, keys, "user")
        lic = o.get("licenses", [])
        if not isinstance(lic, list) or not all(isinstance(x, str) for x in lic):
            raise SchemaError("licenses: expected an array of strings")
        if "calling_policy" not in o:
            raise SchemaError("calling_policy: missing")
        return cls(
            oid=_str(o, "oid", max_len=MAX_ID), tenant=_str(o, "tenant", max_len=MAX_ID),
            upn=_str(o, "upn", max_len=320), name=_str(o, "name", max_len=256),
            number=_str(o, "number", max_len=16), pstn_enabled=_bool(o, "pstn_enabled"),
            licenses=tuple(lic), account_type=_str(o, "account_type", max_len=32),
            enabled=_bool(o, "enabled"), mfa=_bool(o, "mfa"),
            calling_policy=PolicyInfo.from_json(o["calling_policy"]),
            sip_device_refusal=_str(o, "sip_device_refusal", required=False, max_len=64),
        )


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """``GET /v1/tenants/{id}``."""

    id: str
    name: str
    domain: str
    cloud: str
    bulk_sign_in: bool
    sip_gateway_available: bool

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "domain": self.domain, "cloud": self.cloud,
                "bulk_sign_in": self.bulk_sign_in,
                "sip_gateway_available": self.sip_gateway_available}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "tenant")
        _only(o, {"id", "name", "domain", "cloud", "bulk_sign_in", "sip_gateway_available"},
              "tenant")
        return cls(id=_str(o, "id", max_len=MAX_ID), name=_str(o, "name", max_len=256),
                   domain=_str(o, "domain", max_len=253), cloud=_str(o, "cloud", max_len=16),
                   bulk_sign_in=_bool(o, "bulk_sign_in"),
                   sip_gateway_available=_bool(o, "sip_gateway_available"))


@dataclass(frozen=True, slots=True)
class ApiError:
    """The body of every 4xx/5xx answer: a stable code and a human message."""

    error: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "error")
        return cls(error=_str(o, "error", max_len=64), message=_str(o, "message",
                                                                     max_len=1024))


@dataclass(frozen=True, slots=True)
class SimClientCreate:
    """``POST /v1/sim/clients``: start a simulated Teams desktop client of a user."""

    user: str

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user}

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "sim client")
        _only(o, {"user"}, "sim client")
        return cls(user=_str(o, "user", max_len=320))


@dataclass(frozen=True, slots=True)
class SimCallCreate:
    """``POST /v1/sim/calls``: a simulated Teams client places a call.

    ``to`` is a user (oid or UPN) or a number; ``from_endpoint`` picks one of the
    caller's simulated clients (default: the first, started on demand).
    """

    from_user: str
    to: str
    from_endpoint: str = ""
    sdp_offer: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from_user": self.from_user, "to": self.to}
        if self.from_endpoint:
            out["from_endpoint"] = self.from_endpoint
        if self.sdp_offer:
            out["sdp_offer"] = self.sdp_offer
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "sim call")
        _only(o, {"from_user", "to", "from_endpoint", "sdp_offer"}, "sim call")
        return cls(from_user=_str(o, "from_user", max_len=320),
                   to=_str(o, "to", max_len=320),
                   from_endpoint=_str(o, "from_endpoint", required=False, max_len=MAX_ID),
                   sdp_offer=_sdp(o, "sdp_offer", required=False))


@dataclass(frozen=True, slots=True)
class SimAction:
    """Body of ``POST /v1/sim/clients/{eid}/answer|reject|hangup|dtmf``."""

    call_id: str
    reason: str = "declined"
    digits: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"call_id": self.call_id}
        if self.reason != "declined":
            out["reason"] = self.reason
        if self.digits:
            out["digits"] = self.digits
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "sim action")
        _only(o, {"call_id", "reason", "digits"}, "sim action")
        digits = _str(o, "digits", required=False, max_len=32)
        if digits and not _DTMF.match(digits):
            raise SchemaError("digits: only 0-9 * # A-D")
        return cls(call_id=_str(o, "call_id", max_len=MAX_ID, pattern=_ID),
                   reason=_str(o, "reason", required=False, default="declined",
                               choices=REJECT_REASONS),
                   digits=digits.upper())


# Event's string fields and their length limits, in the order they are checked
_EVENT_STRINGS = (("id", 64), ("call_id", MAX_ID), ("user", MAX_ID), ("endpoint_id", MAX_ID),
                  ("sdp", MAX_SDP), ("reason", 64), ("caller", 320), ("callee", 320),
                  ("digits", 32))
_EVENT_KNOWN = frozenset({"v", "type", "dnd", *(k for k, _ in _EVENT_STRINGS)})


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the ``/v1/events`` WebSocket stream.

    ``type`` is one of ``EVENT_TYPES``; a client skips types it does not know
    (``RESERVED_EVENT_TYPES`` and later additions) instead of failing.
    """

    type: str
    call_id: str = ""
    user: str = ""
    endpoint_id: str = ""
    sdp: str = ""
    reason: str = ""
    caller: str = ""  # number, UPN or oid of the other party, for display
    callee: str = ""
    digits: str = ""
    dnd: bool | None = None
    id: str = ""  # stream position, for resuming with ?since=
    v: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "type": self.type}
        for key in ("id", "call_id", "user", "endpoint_id", "sdp", "reason", "caller",
                    "callee", "digits"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.dnd is not None:
            out["dnd"] = self.dnd
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Self:
        o = _obj(obj, "event")
        v = o.get("v")
        if v != SCHEMA_VERSION:
            raise SchemaError(f"v: unsupported event version {v!r}")
        etype = _str(o, "type", max_len=64)
        dnd = o.get("dnd")
        if dnd is not None and not isinstance(dnd, bool):
            raise SchemaError("dnd: expected true or false")
        # one pass over the fields (events arrive several per call): the string fields'
        # checks are _str's, in the same order, so the first bad field is the one named
        fields: dict[str, Any] = {}
        for key, limit in _EVENT_STRINGS:
            val = o.get(key)
            if val is None and key not in o:
                continue
            if not isinstance(val, str):
                raise SchemaError(f"{key}: expected a string, got {_tname(val)}")
            if len(val) > limit:
                raise SchemaError(f"{key}: longer than {limit} characters")
            fields[key] = val
        extra = {k: val for k, val in o.items() if k not in _EVENT_KNOWN} \
            if len(o) > len(fields) + 2 + ("dnd" in o) else {}
        return cls(type=etype, dnd=dnd, extra=extra, **fields)
