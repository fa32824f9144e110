"""Outcome mapping between backend reasons/errors and SIP (RFC 3326 Reason)."""

from __future__ import annotations

import pytest

from gateway.b2bua.mapping import (
    COMPLETED_ELSEWHERE,
    backend_error_to_sip,
    from_sip,
    reason_header,
    to_sip,
)


@pytest.mark.parametrize(("reason", "status"), [
    ("busy", 486), ("declined", 603), ("dnd", 486), ("no_answer", 480),
    ("unavailable", 480), ("caller_cancelled", 487), ("answered_elsewhere", 487),
    ("not_found", 404), ("something-new", 480), ("", 480),
])
def test_to_sip(reason: str, status: int) -> None:
    assert to_sip(reason).status == status


@pytest.mark.parametrize(("status", "reason"), [
    (486, "busy"), (600, "busy"), (603, "declined"), (403, "declined"),
])
def test_from_sip(status: int, reason: str) -> None:
    assert from_sip(status) == reason


def test_reason_header() -> None:
    assert reason_header(486, 'say "hi"') == "SIP;cause=486;text=\"say 'hi'\""
    assert COMPLETED_ELSEWHERE == 'SIP;cause=200;text="Call completed elsewhere"'


@pytest.mark.parametrize(("http", "code", "status"), [
    (404, "number_unallocated", 404), (404, "user_not_found", 404),
    (403, "not_signed_in", 403), (403, "callee_has_no_number", 403),
    (409, "whatever", 480), (500, "oops", 503), (403, "some_refusal", 403),
    (400, "odd", 400),
])
def test_backend_error_to_sip(http: int, code: str, status: int) -> None:
    st, phrase, warning = backend_error_to_sip(http, code, "human text")
    assert st == status and phrase and warning == "human text"
