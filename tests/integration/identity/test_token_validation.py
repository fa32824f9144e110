"""ID-token validation against the dev IdP JWKS over real HTTPS: bad tokens, key rotation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor

from gateway.identity.devidp import DevIdpSettings, start_devidp
from gateway.identity.tokens import TokenRejected, TokenValidator
from integration.identity.helpers import ALICE, CLIENT_ID, CONTOSO, FABRIKAM, aio, make_directory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_directory(tmp_path_factory.mktemp("dir"))[0]


def _claims(issuer: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": issuer, "aud": CLIENT_ID, "tid": CONTOSO, "oid": ALICE,
              "preferred_username": "alice@contoso.example", "name": "Alice", "iat": now,
              "nbf": now, "exp": now + 600, "ver": "2.0", "sub": "x"}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _foreign_key_token(claims: dict[str, Any], kid: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@aio
async def test_bad_tokens_are_rejected_with_the_reason(tmp_path: Path, directory: Any) -> None:
    idp = start_devidp(tmp_path, "127.0.0.1", 0, directory, reactor, settings=DevIdpSettings())
    try:
        v = TokenValidator([CONTOSO], CLIENT_ID, idp.base_url, idp.ca_file, leeway=60,
                           refetch_interval=3600)
        iss = idp.issuer(CONTOSO)
        good = idp.sign(_claims(iss))
        claims = await v.validate(good)
        assert (claims.oid, claims.tid, claims.preferred_username) == (
            ALICE, CONTOSO, "alice@contoso.example")
        now = int(time.time())
        table = {
            "bad_signature": _foreign_key_token(_claims(iss), idp.active_kid),
            "unknown_kid": _foreign_key_token(_claims(iss), "no-such-kid"),
            "wrong_issuer": idp.sign(_claims(f"{idp.base_url}/{FABRIKAM}/v2.0")),
            "wrong_audience": idp.sign(_claims(iss, aud="another-app")),
            "expired": idp.sign(_claims(iss, iat=now - 7200, nbf=now - 7200, exp=now - 120)),
            "not_yet_valid": idp.sign(_claims(iss, nbf=now + 600, exp=now + 1200)),
            "foreign_tenant": idp.sign(_claims(f"{idp.base_url}/{FABRIKAM}/v2.0",
                                               tid=FABRIKAM)),
            "malformed": "not.a.jwt",
        }
        for claim in ("oid", "preferred_username", "name", "exp", "tid"):
            table[f"missing_claim:{claim}"] = idp.sign(_claims(iss, **{claim: None}))
        table["missing_claim:name "] = idp.sign(_claims(iss, name="  "))
        for expected, token in table.items():
            with pytest.raises(TokenRejected) as exc:
                await v.validate(token)
            reason = expected.split(":")[0]
            assert exc.value.reason == reason, (expected, exc.value)
            if ":" in expected:
                assert exc.value.detail == expected.split(":")[1].strip(), exc.value
        # Within the leeway, a just-expired token still passes.
        await v.validate(idp.sign(_claims(iss, exp=now - 30)))
        # Unknown kids did not make the validator hammer the IdP: one fetch in all.
        assert v.fetch_count == 1
    finally:
        await idp.stop()


@aio
async def test_key_rotation_is_accepted_after_one_refetch(tmp_path: Path,
                                                          directory: Any) -> None:
    idp = start_devidp(tmp_path, "127.0.0.1", 0, directory, reactor, settings=DevIdpSettings())
    offset = [0.0]
    try:
        v = TokenValidator([CONTOSO], CLIENT_ID, idp.base_url, idp.ca_file,
                           refetch_interval=30, clock=lambda: time.time() + offset[0])
        iss = idp.issuer(CONTOSO)
        before = idp.sign(_claims(iss))
        await v.validate(before)
        old_kid = idp.active_kid
        new_kid = idp.rotate_keys()
        assert new_kid != old_kid
        after = idp.sign(_claims(iss))
        assert jwt.get_unverified_header(after)["kid"] == new_kid
        # Too soon after the last fetch: the unknown kid is refused without a refetch.
        with pytest.raises(TokenRejected) as exc:
            await v.validate(after)
        assert exc.value.reason == "unknown_kid" and v.fetch_count == 1
        offset[0] = 31.0
        claims = await v.validate(after)
        assert claims.oid == ALICE and v.fetch_count == 2
        # The previous key stays published, so tokens signed before the rotation still pass.
        await v.validate(before)
        assert v.fetch_count == 2
    finally:
        await idp.stop()
