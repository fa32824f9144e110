"""Value types of the firmware catalog: devices, catalog rows, verdicts.

The verdict's ``reason`` travels in a SIP ``Warning`` header (RFC 3261 §20.43:
``warn-text`` is a quoted-string), so it is kept to printable ASCII without
double quotes or backslashes by construction (:func:`warning_text`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "CatalogEntry",
    "Compliance",
    "DeviceInfo",
    "Judgement",
    "Verdict",
    "model_key",
    "warning_text",
]

_NOT_KEY = re.compile(r"[^A-Z0-9]")
_NOT_WARNING_SAFE = re.compile(r"[^\x20-\x7e]|[\"\\]")
REASON_MAX = 240


def model_key(model: str) -> str:
    """Lookup key of a model name: upper case, letters and digits only.

    ``VVX_410``, ``VVX 410`` and ``vvx410`` all become ``VVX410``; ``Trio 8800`` and
    ``Trio_8800`` become ``TRIO8800``.
    """
    return _NOT_KEY.sub("", model.upper())


def warning_text(text: str) -> str:
    """Printable ASCII without ``"`` or ``\\``: safe inside a Warning quoted-string."""
    cleaned = _NOT_WARNING_SAFE.sub("?", text)
    if len(cleaned) > REASON_MAX:
        cleaned = cleaned[: REASON_MAX - 3] + "..."
    return cleaned


class Compliance(Enum):
    """Outcome of checking a device against the catalog.

    Admitted: SUPPORTED, BELOW_APPROVED (admitted but flagged; provisioning offers the
    approved firmware), LAB_CLIENT (an operator's explicit exception, flagged).
    Everything else is rejected at REGISTER.
    """

    SUPPORTED = "supported"
    BELOW_APPROVED = "below-approved"
    BELOW_MINIMUM = "below-minimum"
    UNKNOWN_MODEL = "unknown-model"
    UNKNOWN_VENDOR = "unknown-vendor"
    ENTERPRISE_FIRMWARE = "enterprise-firmware"
    UNPARSEABLE = "unparseable"
    # Not in the table: a client the operator admits by User-Agent (firmware_catalog.lab)
    LAB_CLIENT = "lab-client"

    @property
    def admitted(self) -> bool:
        return self in (Compliance.SUPPORTED, Compliance.BELOW_APPROVED, Compliance.LAB_CLIENT)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a User-Agent (RFC 3261 §20.41) or provisioning request says about a device.

    ``model`` is the catalog spelling once the device matched a catalog row
    (``440HD`` for a phone reporting ``440HDG``), else a cleaned form of what it sent;
    ``raw_model`` is the product token as sent (``CP-8851-3PCC``). ``firmware`` is
    ``None`` only for provisioning requests whose path named the device but no
    User-Agent carried a version. ``mac`` is 12 lower-case hex digits or ``None``.
    ``enterprise`` marks Cisco phones on enterprise (CUCM) rather than MPP firmware.
    """

    vendor: str
    model: str
    firmware: str | None
    mac: str | None = None
    raw_model: str = ""
    enterprise: bool = False


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One row of the compatible-device table.

    ``minimum``/``approved`` are the vendor's firmware strings as the table prints
    them; ``role`` is ``phone``, ``handset``, ``dect-base``, ``dect-server`` or
    ``ata``; ``source`` says which edition of the table the row comes from.
    """

    vendor: str
    model: str
    minimum: str
    approved: str
    e911: bool
    remarks: tuple[str, ...] = ()
    role: str = "phone"
    source: str = ""
    aliases: tuple[str, ...] = ()
    approved_by_region: tuple[tuple[str, str], ...] = ()

    def approved_for(self, region: str | None) -> str:
        """The approved build for a region (Yealink DECT bases differ per region)."""
        if region is not None:
            wanted = region.upper()
            for name, version in self.approved_by_region:
                if name.upper() == wanted:
                    return version
        return self.approved

    @property
    def keys(self) -> tuple[str, ...]:
        return (model_key(self.model), *(model_key(a) for a in self.aliases))


@dataclass(frozen=True, slots=True)
class Judgement:
    """A vendor scheme's finding for a device already matched to a catalog row."""

    compliance: Compliance
    reason: str
    upgrade_to: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The catalog's answer for one REGISTER or provisioning request.

    ``reason`` is human text for ``Warning: 399 <host> "<reason>"`` (RFC 3261
    §20.43) and for the ops page. ``upgrade_to`` is the approved firmware when the
    device runs below it and can take it in place: always set for BELOW_APPROVED,
    also set for BELOW_MINIMUM so provisioning can offer the fix to a rejected phone.
    """

    compliance: Compliance
    reason: str
    device: DeviceInfo | None = None
    entry: CatalogEntry | None = None
    upgrade_to: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", warning_text(self.reason))

    @property
    def admitted(self) -> bool:
        return self.compliance.admitted

    @property
    def flagged(self) -> bool:
        """Admitted but not compliant: shown as such on the ops page and in metrics."""
        return self.compliance in (Compliance.BELOW_APPROVED, Compliance.LAB_CLIENT)

    @property
    def e911(self) -> bool:
        """Dynamic emergency calling (E911) capable, per the catalog row."""
        return self.entry.e911 if self.entry is not None else False
