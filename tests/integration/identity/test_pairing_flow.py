"""The whole device-code sign-in over real HTTPS with real msal, real Valkey and the dev IdP."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import reactor

from gateway.identity.cache import TokenCacheStore, load_or_create_key
from gateway.identity.devicecode import EntraSettings
from gateway.identity.devidp import DevIdp, DevIdpSettings, start_devidp
from gateway.identity.pairing import (
    DirectoryBackedLookup,
    PairingManager,
    PairingRefused,
    PairingState,
    PairingStore,
)
from gateway.identity.tokens import TokenValidator
from gateway.state.redis import connect
from integration.identity.helpers import (
    ALICE,
    CLIENT_ID,
    CONTOSO,
    FABRIKAM,
    NORTHWIND,
    RecordingBinder,
    aio,
    make_directory,
    sign_in_on_page,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, str]]:
    return make_directory(tmp_path_factory.mktemp("dir"))


@dataclass
class Env:
    idp: DevIdp
    manager: PairingManager
    binder: RecordingBinder
    redis: Any
    passwords: dict[str, str]
    registry: CollectorRegistry


@contextlib.asynccontextmanager
async def environment(tmp: Path, redis_url: str, directory: tuple[Any, dict[str, str]],
                      **idp_settings: Any) -> AsyncIterator[Env]:
    dir_, passwords = directory
    idp = start_devidp(tmp, "127.0.0.1", 0, dir_, reactor,
                       settings=DevIdpSettings(**{"interval": 1, **idp_settings}))
    redis = connect(redis_url)
    registry = CollectorRegistry()
    settings = EntraSettings(tenant_id=CONTOSO, client_id=CLIENT_ID,
                             allowed_tenants=frozenset({CONTOSO, NORTHWIND}),
                             authority_base=idp.base_url, ca_file=idp.ca_file)
    validator = TokenValidator(settings.tenants, CLIENT_ID, idp.base_url, idp.ca_file)
    binder = RecordingBinder()
    caches = TokenCacheStore(redis, load_or_create_key(tmp / "keys" / "tokencache.key"))
    manager = PairingManager(redis, PairingStore(redis), settings, validator,
                             DirectoryBackedLookup(dir_), binder, caches, registry,
                             max_attempts=3)
    try:
        yield Env(idp, manager, binder, redis, passwords, registry)
    finally:
        await manager.stop()
        await redis.aclose()
        await idp.stop()


async def _state(env: Env, device: str) -> PairingState:
    return (await env.manager.status(device)).state


async def _until_unpaired(env: Env, device: str) -> None:
    async def done() -> bool:
        return await _state(env, device) is PairingState.UNPAIRED
    await wait_for(done)


@aio
async def test_sign_in_pairs_device_and_keeps_tokens_encrypted(
        tmp_path: Path, redis_url: str, directory: tuple[Any, dict[str, str]]) -> None:
    async with environment(tmp_path, redis_url, directory) as env:
        prompt = await env.manager.start_pairing("mac-0004f2000001", CONTOSO)
        assert len(prompt.user_code) == 8
        assert prompt.verification_uri == f"{env.idp.base_url}/devicelogin"
        rec = await env.manager.status("mac-0004f2000001")
        assert rec.state is PairingState.PAIRING and rec.user_code == prompt.user_code

        resp = await sign_in_on_page(env.idp.base_url, env.idp.ca_file, prompt.user_code,
                                     "alice@contoso.example",
                                     env.passwords["alice@contoso.example"])
        assert resp.status_code == 200, resp.text

        async def paired() -> bool:
            return await _state(env, "mac-0004f2000001") is PairingState.PAIRED
        await wait_for(paired)
        rec = await env.manager.status("mac-0004f2000001")
        assert rec.user_oid == ALICE and rec.upn == "alice@contoso.example"
        assert env.binder.bound["mac-0004f2000001"].number == "+14255550101"
        assert [t.to_state for t in rec.history] == [PairingState.PAIRED, PairingState.PAIRING]
        assert rec.history[0].reason == "signed in as alice@contoso.example"
        # the gauge is recounted just after the transition is stored: wait for it
        async def gauge_is(n: float) -> bool:
            return env.registry.get_sample_value("sipgw_paired_devices") == n
        await wait_for(lambda: gauge_is(1), timeout=5)
        assert env.registry.get_sample_value(
            "sipgw_pairing_results_total", {"result": "paired"}) == 1

        # No token appears in clear anywhere in Redis.
        cache = await env.manager._caches.load("mac-0004f2000001")
        secrets_ = [rt["secret"] for kind in ("RefreshToken", "AccessToken", "IdToken")
                    for rt in cache.search(kind)]
        assert len(secrets_) == 3 and all(len(s) > 20 for s in secrets_)
        found_cache = False
        async for key in env.redis.scan_iter(match="*"):
            kind = await env.redis.type(key)
            if kind == b"string":
                values = [await env.redis.get(key)]
            elif kind == b"hash":
                values = list((await env.redis.hgetall(key)).values())
            elif kind == b"list":
                values = await env.redis.lrange(key, 0, -1)
            elif kind == b"zset":
                values = await env.redis.zrange(key, 0, -1)
            else:
                values = list(await env.redis.smembers(key))
            for v in [key, *values]:
                for s in secrets_:
                    assert s.encode() not in v, f"token in clear under {key!r}"
                assert b"eyJ" not in v and b"refresh_token" not in v.lower()
            found_cache = found_cache or key.startswith(b"sipgw:tokencache:")
        assert found_cache

        # The refresher renews the access token with the stored refresh token.
        old_at = [a["secret"] for a in cache.search("AccessToken")]
        assert await env.manager.refresher.refresh("mac-0004f2000001")
        cache2 = await env.manager._caches.load("mac-0004f2000001")
        assert [a["secret"] for a in cache2.search("AccessToken")] != old_at

        # Revoked refresh token: the next refresh signs the device out with the reason.
        assert env.idp.revoke_user_tokens(ALICE) >= 1
        assert not await env.manager.refresher.refresh("mac-0004f2000001")
        rec = await env.manager.status("mac-0004f2000001")
        assert rec.state is PairingState.UNPAIRED
        assert "invalid_grant" in rec.reason and "AADSTS50173" in rec.reason
        assert [t.to_state for t in rec.history[:2]] == [PairingState.UNPAIRED,
                                                          PairingState.SIGNING_OUT]
        assert "mac-0004f2000001" not in env.binder.bound
        assert await env.redis.get("sipgw:tokencache:mac-0004f2000001") is None
        await wait_for(lambda: gauge_is(0), timeout=5)
        assert env.registry.get_sample_value(
            "sipgw_token_refresh_failures_total", {"reason": "invalid_grant"}) == 1


@aio
async def test_declined_sign_in_leaves_device_unpaired(
        tmp_path: Path, redis_url: str, directory: tuple[Any, dict[str, str]]) -> None:
    async with environment(tmp_path, redis_url, directory) as env:
        prompt = await env.manager.start_pairing("dev-decline", CONTOSO)
        resp = await sign_in_on_page(env.idp.base_url, env.idp.ca_file, prompt.user_code,
                                     "alice@contoso.example",
                                     env.passwords["alice@contoso.example"], action="decline")
        assert resp.status_code == 200 and "cancelled" in resp.text
        await _until_unpaired(env, "dev-decline")
        rec = await env.manager.status("dev-decline")
        assert rec.reason.startswith("authorization_declined")
        assert env.binder.bound == {}


@aio
async def test_expired_code_leaves_device_unpaired_and_back_restarts(
        tmp_path: Path, redis_url: str, directory: tuple[Any, dict[str, str]]) -> None:
    async with environment(tmp_path, redis_url, directory, code_ttl=2) as env:
        prompt = await env.manager.start_pairing("dev-expire", CONTOSO)
        await _until_unpaired(env, "dev-expire")
        rec = await env.manager.status("dev-expire")
        assert rec.reason.startswith("expired_token"), rec.reason
        assert "Press Back" in rec.reason
        # The expired code is refused on the page too.
        resp = await sign_in_on_page(env.idp.base_url, env.idp.ca_file, prompt.user_code,
                                     "alice@contoso.example",
                                     env.passwords["alice@contoso.example"])
        assert resp.status_code == 400 and "expired" in resp.text
        # Back/retry: a new code.
        again = await env.manager.start_pairing("dev-expire", CONTOSO)
        assert again.user_code != prompt.user_code
        assert await _state(env, "dev-expire") is PairingState.PAIRING


@pytest.mark.parametrize(("upn", "tenant", "reason"), [
    ("nonumber@contoso.example", CONTOSO, "no_phone_number"),
    ("nolicence@contoso.example", CONTOSO, "missing_license"),
    ("nosip@contoso.example", CONTOSO, "sip_devices_not_allowed"),
    ("gov@northwind.example", NORTHWIND, "government_cloud"),
])
@aio
async def test_ineligible_user_is_not_bound(
        tmp_path: Path, redis_url: str, directory: tuple[Any, dict[str, str]], upn: str,
        tenant: str, reason: str) -> None:
    async with environment(tmp_path, redis_url, directory) as env:
        prompt = await env.manager.start_pairing("dev-x", tenant)
        resp = await sign_in_on_page(env.idp.base_url, env.idp.ca_file, prompt.user_code,
                                     upn, env.passwords[upn])
        assert resp.status_code == 200
        await _until_unpaired(env, "dev-x")
        rec = await env.manager.status("dev-x")
        assert rec.reason.startswith(reason + ":"), rec.reason
        assert env.binder.bound == {}
        assert env.registry.get_sample_value(
            "sipgw_pairing_results_total", {"result": reason}) == 1


@aio
async def test_page_refuses_disabled_user_wrong_tenant_and_throttles_guessing(
        tmp_path: Path, redis_url: str, directory: tuple[Any, dict[str, str]]) -> None:
    async with environment(tmp_path, redis_url, directory, failure_limit=4) as env:
        prompt = await env.manager.start_pairing("dev-y", CONTOSO)
        base, ca = env.idp.base_url, env.idp.ca_file
        pw = env.passwords
        r = await sign_in_on_page(base, ca, prompt.user_code, "disabled@contoso.example",
                                  pw["disabled@contoso.example"])
        assert r.status_code == 400 and "AADSTS50057" in r.text
        r = await sign_in_on_page(base, ca, prompt.user_code, "frank@fabrikam.example",
                                  pw["frank@fabrikam.example"])
        assert r.status_code == 400 and "AADSTS50020" in r.text
        r = await sign_in_on_page(base, ca, prompt.user_code, "alice@contoso.example",
                                  "wrong-password")
        assert r.status_code == 400 and "incorrect" in r.text
        assert await _state(env, "dev-y") is PairingState.PAIRING
        # Guessing codes: the wrong password above and three wrong codes reach the limit
        # of four failures a minute; then 429, even for the right code.
        codes = []
        for i in range(4):
            r = await sign_in_on_page(base, ca, f"BCDFGH{i}{i}", "alice@contoso.example",
                                      pw["alice@contoso.example"])
            codes.append(r.status_code)
        assert codes == [400, 400, 400, 429]
        assert "Retry-After" in r.headers or "retry-after" in r.headers
        r = await sign_in_on_page(base, ca, prompt.user_code, "alice@contoso.example",
                                  pw["alice@contoso.example"])
        assert r.status_code == 429 and "Too many" in r.text
        assert await _state(env, "dev-y") is PairingState.PAIRING


@aio
async def test_repeated_pairing_starts_are_throttled_and_foreign_tenants_refused(
        tmp_path: Path, redis_url: str, directory: tuple[Any, dict[str, str]]) -> None:
    async with environment(tmp_path, redis_url, directory) as env:
        with pytest.raises(PairingRefused) as exc:
            await env.manager.start_pairing("dev-z", FABRIKAM)
        assert exc.value.reason == "tenant_not_allowed"
        for _ in range(3):
            await env.manager.start_pairing("dev-z", CONTOSO)
        with pytest.raises(PairingRefused) as exc:
            await env.manager.start_pairing("dev-z", CONTOSO)
        assert exc.value.reason == "throttled" and exc.value.retry_after > 0
        rec = await env.manager.status("dev-z")
        assert rec.history[0].reason == "sign-in restarted with a new code"


@aio
async def test_token_endpoint_errors_are_shaped_like_entra(
        tmp_path: Path, redis_url: str, directory: tuple[Any, dict[str, str]]) -> None:
    async with environment(tmp_path, redis_url, directory, interval=3) as env:
        base = f"{env.idp.base_url}/{CONTOSO}/oauth2/v2.0"
        tls = ssl.create_default_context(cafile=str(env.idp.ca_file))
        async with httpx.AsyncClient(verify=tls) as c:
            dc = (await c.post(f"{base}/devicecode", data={"client_id": CLIENT_ID})).json()
            assert set(dc) >= {"device_code", "user_code", "verification_uri", "expires_in",
                               "interval", "message"}
            grant = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                     "client_id": CLIENT_ID, "device_code": dc["device_code"]}
            first = await c.post(f"{base}/token", data=grant)
            assert first.status_code == 400
            body = first.json()
            assert body["error"] == "authorization_pending" and body["error_codes"] == [70016]
            assert body["error_description"].startswith("AADSTS70016")
            fast = (await c.post(f"{base}/token", data=grant)).json()
            assert fast["error"] == "slow_down"
            bad = (await c.post(f"{base}/token", data={**grant, "device_code": "nope"})).json()
            assert bad["error"] == "bad_verification_code"
            rt = (await c.post(f"{base}/token", data={
                "grant_type": "refresh_token", "client_id": CLIENT_ID,
                "refresh_token": "x" * 40})).json()
            assert rt["error"] == "invalid_grant"
            junk = await c.post(f"{base}/token", content=b"\xff\x00garbage",
                                headers={"content-type": "application/json"})
            assert junk.status_code == 400 and junk.json()["error"] == "invalid_request"
            unknown = await c.get(f"{env.idp.base_url}/no-such-tenant/v2.0/.well-known/"
                                  "openid-configuration")
            assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_tenant"
            huge = await c.post(f"{base}/token", content=b"a=" + b"b" * 70000,
                                headers={"content-type": "application/x-www-form-urlencoded"})
            assert huge.status_code == 413
        assert asyncio.get_running_loop().is_running()
