"""Development identity provider: Entra ID v2.0 device-code endpoints on loopback (RFC 8628)."""

from gateway.identity.devidp.keys import SigningKeys, key_id
from gateway.identity.devidp.server import (
    DEVICE_CODE_GRANT,
    DevIdp,
    DevIdpSettings,
    normalize_user_code,
    start_devidp,
)

__all__ = ["DEVICE_CODE_GRANT", "DevIdp", "DevIdpSettings", "SigningKeys", "key_id",
           "normalize_user_code", "start_devidp"]
