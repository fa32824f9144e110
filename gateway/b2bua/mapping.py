"""One place where call outcomes cross between SIP and the backend (STYLE §8).

Backend end/reject reasons become SIP status codes with a human reason phrase
and a ``Reason`` header (RFC 3326); SIP final responses from phones become
backend reject reasons.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SipOutcome:
    status: int
    phrase: str
    cause_text: str  # for the Reason header


# backend reason -> what the calling phone is told
_TO_SIP: dict[str, SipOutcome] = {
    "busy": SipOutcome(486, "Busy Here", "Callee is busy"),
    "declined": SipOutcome(603, "Decline", "Callee declined the call"),
    "dnd": SipOutcome(486, "Busy Here", "Callee is in do not disturb"),
    "no_answer": SipOutcome(480, "Temporarily Unavailable", "No answer"),
    "unavailable": SipOutcome(480, "Temporarily Unavailable", "Callee unavailable"),
    "endpoint_offline": SipOutcome(480, "Temporarily Unavailable", "Callee offline"),
    "caller_cancelled": SipOutcome(487, "Request Terminated", "Caller cancelled"),
    "answered_elsewhere": SipOutcome(487, "Request Terminated", "Call completed elsewhere"),
    "hangup": SipOutcome(487, "Request Terminated", "Call ended before answer"),
    "not_found": SipOutcome(404, "Not Found", "No user or number with that address"),
    "forbidden": SipOutcome(403, "Forbidden", "Calling not permitted"),
    "invalid_target": SipOutcome(484, "Address Incomplete", "Number not recognised"),
}


def to_sip(reason: str) -> SipOutcome:
    return _TO_SIP.get(reason, SipOutcome(480, "Temporarily Unavailable", reason or "unknown"))


def from_sip(status: int) -> str:
    """A phone's final non-2xx answer to an offered call -> backend reject reason."""
    if status in (486, 600):
        return "busy"
    if status in (603, 403):
        return "declined"
    return "declined" if status >= 600 else "busy" if status == 486 else "declined"


def reason_header(status_or_cause: int, text: str, protocol: str = "SIP") -> str:
    """RFC 3326 Reason header value."""
    safe = text.replace('"', "'")
    return f'{protocol};cause={status_or_cause};text="{safe}"'


COMPLETED_ELSEWHERE = reason_header(200, "Call completed elsewhere")


# backend API error code -> (status, phrase for the Reason header)
_API_TO_SIP: dict[str, tuple[int, str]] = {
    "user_not_found": (404, "Not Found"),
    "number_unallocated": (404, "Not Found"),
    "not_signed_in": (403, "Forbidden"),
    "endpoint_not_found": (403, "Forbidden"),
    "callee_has_no_number": (403, "Forbidden"),
    "cloud_not_supported": (403, "Forbidden"),
    "bad_request": (400, "Bad Request"),
}


def backend_error_to_sip(http_status: int, code: str, message: str) -> tuple[int, str, str]:
    """A refused backend request (HTTP status, error code, message) -> SIP status, a
    phrase for the Reason header and the Warning text users and admins see."""
    status, phrase = _API_TO_SIP.get(code, (0, ""))
    if not status:
        if http_status == 404:
            status, phrase = 404, "Not Found"
        elif http_status in (401, 403):
            status, phrase = 403, "Forbidden"
        elif http_status == 409:
            status, phrase = 480, "Temporarily Unavailable"
        elif http_status < 500:
            status, phrase = 400, "Bad Request"
        else:
            status, phrase = 503, "Service Unavailable"
    return status, phrase, (message or code)[:200]
