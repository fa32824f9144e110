"""Checks every user agent server applies before acting on a request (RFC 3261 §8.2).

``precheck(request, ...)`` returns the error response to send (416, 420, 483,
415 …) or None when the request may proceed to its method handler. The order
follows §8.2: method inspection is the dispatcher's job (405/501), then header
inspection (§8.2.2: URI scheme, Require), then content processing (§8.2.3).
"""

from __future__ import annotations

from collections.abc import Collection

from gateway.sip.errors import SipParseError
from gateway.sip.message import SipRequest, SipResponse, build_response

SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})
# Option tags we implement (RFC 3261 §19.2, RFC 5626 outbound, RFC 3327 path,
# RFC 3891 replaces, RFC 4028 timer, RFC 3262 100rel).
SUPPORTED_EXTENSIONS = ("path", "outbound", "replaces", "timer", "100rel", "gruu")
ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK",
                   "UPDATE", "INFO", "REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE")
ACCEPTED_BODIES = ("application/sdp", "application/pidf+xml", "multipart/mixed",
                   "application/dtmf-relay", "message/sipfrag",
                   "application/simple-message-summary")


def precheck(request: SipRequest, *, tag: str,
             supported: Collection[str] = SUPPORTED_EXTENSIONS) -> SipResponse | None:
    """The response to reject ``request`` with, or None (RFC 3261 §8.2.2, §8.2.3, §16.3)."""
    method = request.method
    if method == "ACK":
        return None  # never answered (§17.1.1.3)
    try:
        if request.uri.scheme not in SUPPORTED_SCHEMES:
            # §8.2.2.1: 416 for a scheme we do not understand
            return build_response(request, 416, to_tag=tag)
        mf = request.header_int("Max-Forwards")
        if mf == 0 and method not in ("OPTIONS", "REGISTER"):
            # §16.3 step 2 (we also act as the proxy for routed requests)
            return build_response(request, 483, to_tag=tag)
        if method != "CANCEL":
            unknown = [t for v in request.headers.get_all("Require")
                       for t in [v.strip()] if t and t.lower() not in supported]
            if unknown:
                # §8.2.2.3: 420 listing what we do not support
                return build_response(request, 420, to_tag=tag,
                                      headers=[("Unsupported", ", ".join(unknown))])
        if request.body:
            ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not ctype:
                return build_response(request, 400, "Bad Request - body without Content-Type",
                                      to_tag=tag)
            if ctype not in ACCEPTED_BODIES:
                # §8.2.3: 415 with what we accept
                return build_response(request, 415, to_tag=tag,
                                      headers=[("Accept", ", ".join(ACCEPTED_BODIES))])
            encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
            if encoding and encoding != "identity":
                return build_response(request, 415, to_tag=tag,
                                      headers=[("Accept-Encoding", "identity")])
    except SipParseError as e:
        return build_response(request, 400, f"Bad Request - {e.reason}", to_tag=tag,
                              headers=[("Warning", f'399 sipgw "{_ascii(e.reason)}"')])
    return None


def options_response(request: SipRequest, *, tag: str) -> SipResponse:
    """200 to OPTIONS with our capabilities (RFC 3261 §11.2) — also the health-check answer."""
    return build_response(request, 200, to_tag=tag, headers=_OPTIONS_HEADERS)


# Built once: every OPTIONS answer (health checks, SIPp, keep-alives) carries the same.
_OPTIONS_HEADERS = (
    ("Allow", ", ".join(ALLOWED_METHODS)),
    ("Accept", "application/sdp"),
    ("Accept-Encoding", "identity"),
    ("Accept-Language", "en"),
    ("Supported", ", ".join(SUPPORTED_EXTENSIONS)),
)


def not_allowed(request: SipRequest, *, tag: str) -> SipResponse:
    """501 for a method we do not implement at all (§8.2.1)."""
    return build_response(request, 501, to_tag=tag,
                          headers=[("Allow", ", ".join(ALLOWED_METHODS))])


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace('"', "'")[:120]
