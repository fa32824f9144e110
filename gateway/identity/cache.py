"""Per-device msal token caches, encrypted at rest in Redis, and their background refresher.

Each device's ``msal.SerializableTokenCache`` (refresh, access and ID tokens)
is serialised and sealed with AES-256-GCM (NIST SP 800-38D): a random 96-bit
nonce per write, the device id as associated data so a value copied to
another device's key does not decrypt. The key is 32 bytes from a key file
(generated with mode 0600 when absent). Nothing token-shaped is ever
written to Redis in clear.

``TokenRefresher`` keeps a sorted set of devices by the time their access
token should be renewed (ahead of expiry) and refreshes with msal's
``acquire_token_silent_with_error(force_refresh=True)`` (RFC 6749 §6). An
``invalid_grant`` (revoked token, password reset, disabled account) signs
the device out through a callback with the reason; other failures retry
with back-off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msal  # type: ignore[import-untyped]  # msal ships no type information
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import CollectorRegistry, Counter

from gateway.identity.devicecode import EntraSettings, build_app_async

log = logging.getLogger(__name__)

KEY_BYTES = 32
_VERSION = b"\x01"
_AAD_PREFIX = b"sipgw token cache v1\x00"


def load_or_create_key(path: Path | str) -> bytes:
    """The 32-byte cache key in ``path``; created (mode 0600) when the file does not exist."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another node created it first: use theirs
            return load_or_create_key(p)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
    if len(data) != KEY_BYTES:
        raise ValueError(f"{p}: token cache key must be exactly {KEY_BYTES} bytes, "
                         f"found {len(data)}")
    if os.stat(p).st_mode & 0o077:
        raise ValueError(f"{p}: token cache key is readable by others; chmod 600 it")
    return data


class TokenCacheStore:
    """Encrypted msal token caches in Redis, one key per device."""

    def __init__(self, redis: Any, key: bytes, prefix: str = "sipgw:tokencache:") -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._redis = redis
        self._aead = AESGCM(key)
        self._prefix = prefix

    def _key(self, device_id: str) -> str:
        return self._prefix + device_id

    def seal(self, device_id: str, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return _VERSION + nonce + self._aead.encrypt(
            nonce, plaintext, _AAD_PREFIX + device_id.encode("utf-8"))

    def open(self, device_id: str, sealed: bytes) -> bytes:
        if len(sealed) < 1 + 12 + 16 or sealed[:1] != _VERSION:
            raise ValueError("not a sealed token cache")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:],
                                      _AAD_PREFIX + device_id.encode("utf-8"))
        except InvalidTag:
            raise ValueError("token cache does not decrypt (wrong key or device)") from None

    async def load(self, device_id: str) -> msal.SerializableTokenCache:
        """The device's cache; empty when none is stored or it cannot be decrypted."""
        cache = msal.SerializableTokenCache()
        sealed = await self._redis.get(self._key(device_id))
        if sealed:
            try:
                cache.deserialize(self.open(device_id, bytes(sealed)).decode("utf-8"))
            except ValueError as exc:
                log.warning("token cache of %s unusable: %s", device_id, exc)
        return cache

    async def save(self, device_id: str, cache: msal.SerializableTokenCache) -> None:
        await self._redis.set(self._key(device_id),
                              self.seal(device_id, cache.serialize().encode("utf-8")))

    async def delete(self, device_id: str) -> None:
        await self._redis.delete(self._key(device_id))


SignOut = Callable[[str, str], Awaitable[None]]


class TokenRefresher:
    """Renews each paired device's access token ahead of expiry (RFC 6749 §6).

    The schedule is a Redis sorted set (device -> due time), so any node can
    run the loop; a per-device lock key stops two nodes refreshing at once.
    """

    def __init__(self, redis: Any, caches: TokenCacheStore, settings: EntraSettings,
                 sign_out: SignOut, registry: CollectorRegistry | None = None, *,
                 margin: float = 300.0, retry_delay: float = 30.0, tick: float = 1.0,
                 clock: Callable[[], float] = time.time,
                 schedule_key: str = "sipgw:tokenrefresh") -> None:
        self._redis = redis
        self._caches = caches
        self._settings = settings
        self._sign_out = sign_out
        self._margin = margin
        self._retry_delay = retry_delay
        self._tick = tick
        self._clock = clock
        self._key = schedule_key
        self._task: asyncio.Task[None] | None = None
        registry = registry if registry is not None else CollectorRegistry()
        self.refreshes = Counter("sipgw_token_refreshes", "Access tokens refreshed",
                                 registry=registry)
        self.failures = Counter("sipgw_token_refresh_failures",
                                "Failed access token refreshes", ["reason"], registry=registry)

    def due_time(self, expires_in: float) -> float:
        # Renew at the margin before expiry, but never later than 80 % of a short lifetime.
        return self._clock() + max(1.0, min(expires_in - self._margin, expires_in * 0.8))

    async def schedule(self, device_id: str, expires_in: float) -> None:
        await self._redis.zadd(self._key, {device_id: self.due_time(expires_in)})

    async def unschedule(self, device_id: str) -> None:
        await self._redis.zrem(self._key, device_id)

    async def due(self) -> list[str]:
        raw = await self._redis.zrangebyscore(self._key, "-inf", self._clock())
        return [r.decode() if isinstance(r, bytes) else str(r) for r in raw]

    async def refresh(self, device_id: str) -> bool:
        """Refresh one device now; True on success. Signs the device out on invalid_grant."""
        lock = f"{self._key}:lock:{device_id}"
        if not await self._redis.set(lock, "1", nx=True, ex=60):
            return False
        try:
            return await self._refresh_locked(device_id)
        finally:
            await self._redis.delete(lock)

    async def _refresh_locked(self, device_id: str) -> bool:
        cache = await self._caches.load(device_id)
        accounts = list(cache.search(msal.TokenCache.CredentialType.ACCOUNT))
        if not accounts:
            await self._fail(device_id, "no_account",
                             "signed out: no stored sign-in for this device", sign_out=True)
            return False
        tenant = str(accounts[0].get("realm") or self._settings.tenant_id)
        try:
            app = await build_app_async(self._settings, cache, tenant)
            account = (app.get_accounts() or [None])[0]
            result = await asyncio.to_thread(
                app.acquire_token_silent_with_error, list(self._settings.scopes), account,
                force_refresh=True)
        except Exception as exc:  # noqa: BLE001 - network or IdP trouble: retry later
            await self._fail(device_id, "unavailable", f"{type(exc).__name__}: {exc}")
            return False
        if result and "access_token" in result:
            await self._caches.save(device_id, cache)
            await self.schedule(device_id, float(result.get("expires_in", 3600)))
            self.refreshes.inc()
            return True
        error = str((result or {}).get("error", "no_refresh_token"))
        description = str((result or {}).get("error_description", "")).split(" Trace ID:")[0]
        if error in ("invalid_grant", "no_refresh_token", "interaction_required"):
            await self._fail(device_id, error,
                             f"signed out: {error}: {description}".rstrip(": "), sign_out=True)
        else:
            await self._fail(device_id, error, description)
        return False

    async def _fail(self, device_id: str, reason: str, detail: str,
                    sign_out: bool = False) -> None:
        self.failures.labels(reason=reason).inc()
        if sign_out:
            await self.unschedule(device_id)
            await self._caches.delete(device_id)
            await self._sign_out(device_id, detail)
        else:
            log.warning("token refresh of %s failed (%s): %s", device_id, reason, detail)
            await self._redis.zadd(self._key, {device_id: self._clock() + self._retry_delay})

    async def run_once(self) -> int:
        """Refresh every device that is due; returns how many were attempted."""
        devices = await self.due()
        for device_id in devices:
            try:
                await self.refresh(device_id)
            except Exception:  # noqa: BLE001 - one device's trouble must not stop the rest
                log.exception("token refresh of %s crashed", device_id)
        return len(devices)

    async def _run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self._tick)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
