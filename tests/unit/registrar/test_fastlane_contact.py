"""The fast lane's own reading of everyday Contacts equals the header model's.

The binding key, the stored Contact text, the expiry, q and +sip.instance the fast lane
derives without NameAddr must be exactly what the general path derives with it, or a
phone refreshed by the other path would get a second binding.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.registrar.fastlane import _LEAN_CONTACT, _Contact
from gateway.registrar.registrar import _Reject


def _fields(c: _Contact) -> tuple[object, ...]:
    return (c.key, c.contact, c.uri, c.expires, c.q, c.instance, c.general)


def _read(how: object, raw: str) -> object:
    try:
        c = how(raw)  # type: ignore[operator]
    except _Reject as e:  # a bad q or expires: refused alike, 400 either way
        return ("refused", e.status)
    return None if c is None else _fields(c)


def _same(raw: str, *, must_read: bool = True) -> None:
    lean = _read(_Contact.lean, raw)
    if lean is None:  # left to the header model: always allowed, never for everyday forms
        assert not must_read, f"lean refused {raw!r}"
        return
    assert lean == _read(_Contact.parse, raw)


@pytest.mark.parametrize("raw", [
    "<sip:dev1@127.0.0.1:5070;transport=UDP>",
    "<sip:dev1@192.0.2.1>;expires=60",
    '<sip:dev1@192.0.2.1:5060>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-0004f2a1b2c3>"',
    "<sip:dev1@192.0.2.1:5060;transport=tcp>;Q=0.5;Expires=120",
    "<sip:dev1@h>;q=1.0;expires",
    "<sip:dev1@h>;+sip.instance",
    "<sip:dev1@h>;expires=60;expires=3600",
    "<sip:dev1@h>;reg-id=1",
])
def test_everyday_contacts_read_alike(raw: str) -> None:
    _same(raw)


def test_bad_values_are_refused_alike() -> None:
    for raw in ["<sip:dev1@h>;q=2", "<sip:dev1@h>;q"]:
        assert _read(_Contact.lean, raw) == _read(_Contact.parse, raw) == ("refused", 400)


def test_other_forms_are_left_to_the_header_model() -> None:
    for raw in ['"Desk" <sip:dev1@h>', "sip:dev1@h", "<sips:dev1@h>", "<sip:dev%31@h>",
                "<sip:dev1@[2001:db8::1]>", "<sip:dev1@h:70000>"]:
        assert _Contact.lean(raw) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_regex(_LEAN_CONTACT, fullmatch=True))
def test_generated_contacts_read_alike(raw: str) -> None:
    _same(raw, must_read=False)
