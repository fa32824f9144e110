"""Pure checks: transition table, eligibility, AES-GCM sealing, user codes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.identity.cache import TokenCacheStore, load_or_create_key
from gateway.identity.devidp import normalize_user_code
from gateway.identity.devidp.server import USER_CODE_ALPHABET
from gateway.identity.pairing import (
    TRANSITIONS,
    DirectoryUser,
    PairingState,
    eligibility_refusal,
)


def test_transition_table_is_the_issue_cycle() -> None:
    s = PairingState
    assert TRANSITIONS[s.UNPAIRED] == {s.PAIRING}
    assert TRANSITIONS[s.PAIRED] == {s.SIGNING_OUT}
    assert TRANSITIONS[s.SIGNING_OUT] == {s.UNPAIRED}
    assert s.PAIRED not in TRANSITIONS[s.UNPAIRED]
    assert set(TRANSITIONS) == set(s)


def _user(**over: object) -> DirectoryUser:
    base: dict[str, object] = dict(
        oid="o", tenant_id="t", upn="a@b.example", name="A", number="+14255550101",
        pstn_enabled=True, licenses=frozenset({"teams", "phone_system"}), account_type="user",
        enabled=True, allow_sip_devices_calling=True, tenant_cloud="commercial")
    base.update(over)
    return DirectoryUser(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("over", "common_area", "code"), [
    ({}, False, None),
    ({"number": ""}, False, "no_phone_number"),
    ({"pstn_enabled": False}, False, "pstn_not_enabled"),
    ({"licenses": frozenset({"teams"})}, False, "missing_license"),
    ({}, True, "missing_license"),
    ({"licenses": frozenset({"common_area"})}, True, None),
    ({"allow_sip_devices_calling": False}, False, "sip_devices_not_allowed"),
    ({"tenant_cloud": "gcchigh"}, False, "government_cloud"),
    ({"tenant_cloud": "dod"}, False, "government_cloud"),
    ({"enabled": False}, False, "user_disabled"),
])
def test_eligibility(over: dict[str, object], common_area: bool, code: str | None) -> None:
    refusal = eligibility_refusal(_user(**over), common_area=common_area)
    assert (refusal[0] if refusal else None) == code
    if refusal:
        assert refusal[1].endswith(".")


def test_sealed_cache_is_bound_to_device_and_key(tmp_path: Path) -> None:
    key_path = tmp_path / "k" / "cache.key"
    key = load_or_create_key(key_path)
    assert len(key) == 32 and stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert load_or_create_key(key_path) == key
    store = TokenCacheStore(None, key)
    sealed = store.seal("dev-a", b'{"RefreshToken": "secret"}')
    assert b"secret" not in sealed
    assert store.open("dev-a", sealed) == b'{"RefreshToken": "secret"}'
    with pytest.raises(ValueError):
        store.open("dev-b", sealed)  # copied to another device's key
    with pytest.raises(ValueError):
        TokenCacheStore(None, os.urandom(32)).open("dev-a", sealed)
    with pytest.raises(ValueError):
        store.open("dev-a", sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(ValueError):
        store.open("dev-a", b"\x01short")
    os.chmod(key_path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_or_create_key(key_path)


def test_user_codes_normalise_and_avoid_ambiguous_letters() -> None:
    assert normalize_user_code(" bcdf-ghjk ") == "BCDFGHJK"
    assert not set("0O1IL AEIOU") & set(USER_CODE_ALPHABET)
