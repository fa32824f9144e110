"""Registrar: REGISTER with digest auth, bindings, device accounts (RFC 3261 §10, §22)."""

from gateway.registrar.auth import AuthStatus, DigestAuthenticator
from gateway.registrar.bindings import Binding, BindingStore
from gateway.registrar.devices import (
    Credentials,
    Device,
    DeviceError,
    DeviceStore,
    generate_credentials,
    normalise_mac,
    user_aor,
)
from gateway.registrar.guard import AbuseGuard, GuardConfig
from gateway.registrar.keepalive import KeepAlive, KeepAliveReport
from gateway.registrar.lifecycle import offboard_stale
from gateway.registrar.registrar import (
    FirmwarePolicy,
    FirmwareVerdict,
    Registrar,
    RegistrarConfig,
    RegistrarMetrics,
    Registration,
)

__all__ = [
    "AbuseGuard", "AuthStatus", "Binding", "BindingStore", "Credentials", "Device",
    "DeviceError", "DeviceStore", "DigestAuthenticator", "FirmwarePolicy", "FirmwareVerdict",
    "GuardConfig", "KeepAlive", "KeepAliveReport", "Registrar", "RegistrarConfig",
    "RegistrarMetrics", "Registration", "generate_credentials", "normalise_mac",
    "offboard_stale", "user_aor",
]
