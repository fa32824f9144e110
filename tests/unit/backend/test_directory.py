"""Directory loading: the bundled sample, error messages, password hashing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.backend.directory import (
    Directory,
    default_directory_path,
    hash_password,
    load_directory,
    parse_directory,
    set_password,
    verify_password,
)

TENANT = """
[[tenants]]
id = "7f3e1c9a-0d52-4b8e-9a41-3c2f6b1d8e01"
name = "Contoso"
domain = "contoso.example"
"""

USER = """
[[users]]
oid = "a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e01"
tenant = "7f3e1c9a-0d52-4b8e-9a41-3c2f6b1d8e01"
upn = "alice@contoso.example"
name = "Alice"
number = "+14255550101"
"""


def test_bundled_directory_has_the_documented_cases() -> None:
    d = load_directory(default_directory_path())
    assert isinstance(d, Directory)
    assert {t.cloud for t in d.tenants.values()} == {"commercial", "gcchigh"}
    refusals = {u.upn: u.sip_device_refusal(d.tenant_of(u)) for u in d.users.values()}
    assert refusals["alice@contoso.example"] is None
    assert refusals["dave@contoso.example"] == "user_missing_phone_number"
    assert refusals["erin@contoso.example"] == "user_missing_pstn"
    assert refusals["frank@contoso.example"] == "user_missing_allow_sip_devices_calling"
    assert refusals["grace@contoso.example"] == "user_disabled"
    assert refusals["hank@northwind.example"] == "cloud_not_supported"
    lobby = d.user_by_upn("LOBBY@contoso.example")
    assert lobby is not None and lobby.account_type == "common_area"
    assert refusals["lobby@contoso.example"] is None
    alice = d.user_by_number("+14255550101")
    assert alice is not None and alice.upn == "alice@contoso.example"
    assert len(d.users_of_tenant("7f3e1c9a-0d52-4b8e-9a41-3c2f6b1d8e01")) == 8
    # No clear passwords: every hash is scrypt.
    assert all(u.password_hash.startswith("scrypt$") for u in d.users.values())
    assert "password =" not in default_directory_path().read_text()


@pytest.mark.parametrize(("text", "needle"), [
    ("[[tenants", "invalid TOML"),
    (TENANT.replace('"7f3e1c9a-0d52-4b8e-9a41-3c2f6b1d8e01"', '"nope"'), "tenants[0].id"),
    (TENANT + 'cloud = "azure"\n', "tenants[0].cloud"),
    (TENANT + 'colour = "blue"\n', "tenants[0].colour: unknown field"),
    (TENANT + USER.replace("+14255550101", "4255550101"), "users[0].number"),
    (TENANT + USER.replace('tenant = "7f3e1c9a', 'tenant = "7f3e1c9b'), "users[0].tenant"),
    (TENANT + USER + 'licenses = ["gold"]\n', "users[0].licenses"),
    (TENANT + USER + 'enabled = "yes"\n', "users[0].enabled"),
    (TENANT + USER + 'password_hash = "hunter2"\n', "users[0].password_hash"),
    (TENANT + USER + "[users.calling_policy]\nallow_sip_devices_calling = 1\n",
     "users[0].calling_policy.allow_sip_devices_calling"),
    (TENANT + USER + USER, "users[1].oid: duplicate"),
    (TENANT + USER + USER.replace("4e01", "4e02"), "users[1].upn: duplicate"),
    ("[[users]]\nupn = 3\n", "users[0].oid: missing"),
    ('tenants = "x"\n', "arrays of tables"),
])
def test_bad_directory_names_file_and_field(text: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_directory(text, "dir.toml")
    assert str(info.value).startswith("dir.toml: ")
    assert needle in str(info.value)


def test_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read directory"):
        load_directory(tmp_path / "absent.toml")


def test_password_hash_roundtrip() -> None:
    h = hash_password("correct horse")
    assert h.startswith("scrypt$") and "correct" not in h
    assert verify_password("correct horse", h)
    assert not verify_password("wrong", h)
    assert hash_password("x") != hash_password("x")  # salted
    for bad in ("", "scrypt$", "md5$x", "scrypt$3$8$1$AAAA$AAAA", "scrypt$16384$8$1$!!$!!"):
        assert not verify_password("x", bad)


def test_set_password_edits_one_user_in_place(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    shutil.copy(default_directory_path(), path)
    before = load_directory(path)
    set_password(path, "Bob@contoso.example", "s3cret-pass")
    after = load_directory(path)
    bob = after.user_by_upn("bob@contoso.example")
    assert bob is not None and verify_password("s3cret-pass", bob.password_hash)
    for oid, user in before.users.items():
        if user.upn != "bob@contoso.example":
            assert after.users[oid] == user
    assert "s3cret-pass" not in path.read_text()
    with pytest.raises(ValueError, match="no user"):
        set_password(path, "nobody@contoso.example", "x")


def test_set_password_adds_missing_line(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(TENANT + USER + "[users.calling_policy]\nallow_call_redirect = true\n")
    set_password(path, "alice@contoso.example", "pw")
    alice = load_directory(path).user_by_upn("alice@contoso.example")
    assert alice is not None and verify_password("pw", alice.password_hash)
