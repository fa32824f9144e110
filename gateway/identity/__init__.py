"""Entra ID sign-in of SIP devices: device-code flow (RFC 8628), tokens, caches, pairing."""

from gateway.identity.cache import TokenCacheStore, TokenRefresher, load_or_create_key
from gateway.identity.devicecode import DeviceFlow, DeviceFlowFailed, EntraSettings
from gateway.identity.pairing import (
    DeviceBinder,
    DirectoryBackedLookup,
    DirectoryLookup,
    DirectoryUser,
    PairingManager,
    PairingPrompt,
    PairingRecord,
    PairingRefused,
    PairingState,
    PairingStore,
    eligibility_refusal,
)
from gateway.identity.tokens import IdentityClaims, TokenRejected, TokenValidator, TokenVerifier

__all__ = [
    "DeviceBinder", "DeviceFlow", "DeviceFlowFailed", "DirectoryBackedLookup", "DirectoryLookup",
    "DirectoryUser", "EntraSettings", "IdentityClaims", "PairingManager", "PairingPrompt",
    "PairingRecord", "PairingRefused", "PairingState", "PairingStore", "TokenCacheStore",
    "TokenRefresher", "TokenRejected", "TokenValidator", "TokenVerifier", "eligibility_refusal",
    "load_or_create_key",
]
