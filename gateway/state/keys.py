"""Redis key names: every key the gateway writes is built here (see SCHEMA.md).

Names that embed peer-controlled text (SIP usernames from Authorization
headers) hash it, so an attacker cannot create huge or odd key names.
"""

from __future__ import annotations

import functools
import hashlib
import re

from gateway.sip.digest import NONCE_TEXT_LEN

PREFIX = "sipgw:"


# One REGISTER names the same username and source address in several keys, and a
# device's next REGISTER names them again: remember the hashes (bounded).
@functools.lru_cache(maxsize=65536)
def _h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def device(device_id: str) -> str:
    return f"{PREFIX}dev:{device_id}"


def device_auth(sip_username: str) -> str:
    return f"{PREFIX}auth:{_h(sip_username)}"


def devices_seen() -> str:
    return f"{PREFIX}devices:seen"


def user_devices(user_aor: str) -> str:
    return f"{PREFIX}user:{user_aor}:devices"


def bindings(aor: str) -> str:
    return f"{PREFIX}reg:{{{aor}}}:b"


def binding_expiry(aor: str) -> str:
    return f"{PREFIX}reg:{{{aor}}}:x"


def registrations_index() -> str:
    return f"{PREFIX}reg:index"


# Devices with live bindings, counted in the store by the REGISTER script: one sorted
# set per "vendor\tmodel\tverdict" label (device id -> its latest binding expiry) and a
# set of the labels, so the gauge costs a command per label, not a read per device.
ACTIVE_PREFIX = f"{PREFIX}reg:active:"


def active(label: str) -> str:
    return f"{ACTIVE_PREFIX}{label}"


def active_labels() -> str:
    return f"{PREFIX}reg:active-labels"


# The registrar's own nonces (URL-safe base64 of a fixed length, checked before any nc is
# counted) name their key as they are: hashing a value never seen again only churned
# the hash memory above. Anything else is hashed like other peer-controlled text.
_OWN_NONCE = re.compile(rf"[A-Za-z0-9_-]{{{NONCE_TEXT_LEN}}}").fullmatch


def nonce_count(nonce: str) -> str:
    return f"{PREFIX}nc:{nonce if _OWN_NONCE(nonce) else _h(nonce)}"


def rate(scope: str, ident: str, window: int) -> str:
    return f"{PREFIX}rl:{scope}:{_h(ident)}:{window}"


def failures(scope: str, ident: str) -> str:
    return f"{PREFIX}fail:{scope}:{_h(ident)}"


def block(scope: str, ident: str) -> str:
    return f"{PREFIX}block:{scope}:{_h(ident)}"


def block_pattern(scope: str) -> str:
    return f"{PREFIX}block:{scope}:*"
