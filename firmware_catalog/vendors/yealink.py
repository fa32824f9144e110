"""Yealink desk phones (T2x/T3x/T4x/T5x) and W-series DECT.

User-Agent forms (FIELD-NOTES 4.3): ``Yealink SIP-T46S 66.85.0.5`` (SIP),
``Yealink SIP-T57W 96.86.5.1 80:5e:XX:XX:dc:69`` (HTTP, colon MAC, may be redacted)
and ``Yealink SIP-T46S 66.86.0.15 805ec0123456`` (``account.N.custom_ua`` with MAC).
DECT bases are accepted with or without ``SIP-`` (``Yealink W70B 146.85.5.4``).

Versions ``F.R.x.y``: ``F`` is the hardware-family prefix (66 = T4xS, 108 = T4xU,
96 = T5x, ...) and ``R.x.y`` the release. The catalog minimum ``83`` is a release
number: a firmware meets it when ``R >= 83`` whatever its family. The approved build
is compared as a whole within the same family, which is the release ``R.x.y``
compared; when the device reports another family than the catalog's approved
build (the 2021 table gives T21P the T21P_E2 build 52.x) the release is still what
is compared and the reason says the families differ. A minimum written as a full
version (DECT rows) is compared the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from firmware_catalog.model import CatalogEntry, Compliance, DeviceInfo, Judgement
from firmware_catalog.vendors.base import (
    AgentError,
    VendorScheme,
    VersionError,
    normalise_mac,
    safe_token,
    strip_zeros,
)

__all__ = ["SCHEME", "YealinkVersion", "parse_user_agent"]

_VERSION = re.compile(r"\d{1,4}(?:\.\d{1,6}){0,4}")


@dataclass(frozen=True, order=True, slots=True)
class YealinkVersion:
    """A Yealink version; ``bare`` marks a release number alone (the minimum ``83``).

    Ordering is the whole tuple (family, then release), meaningful within a family.
    """

    family: int
    release: tuple[int, ...]
    bare: bool = field(compare=False)
    text: str = field(compare=False)

    @classmethod
    def parse(cls, text: str) -> YealinkVersion:
        stripped = text.strip()
        if not _VERSION.fullmatch(stripped):
            raise VersionError(f"not a Yealink firmware version: {safe_token(text)}")
        numbers = tuple(int(x) for x in stripped.split("."))
        if len(numbers) == 1:
            return cls(0, numbers, True, stripped)
        return cls(numbers[0], strip_zeros(numbers[1:]), False, stripped)

    def below(self, threshold: YealinkVersion) -> bool:
        """Below a catalog threshold: on the release number for a bare threshold,
        else on the release (within one family this equals comparing whole tuples)."""
        if threshold.bare:
            return self.release[:1] < threshold.release[:1]
        return self.release < threshold.release

    def __str__(self) -> str:
        return self.text


_DETECT = re.compile(r"(?<![A-Za-z])Yealink(?![a-z])", re.IGNORECASE)
_AGENT = re.compile(
    r"(?<![A-Za-z])Yealink[ -]+(?:SIP[- ])?(?P<model>[A-Za-z][A-Za-z0-9_-]{1,19})[ /]+"
    r"(?P<fw>\d[\d.]{0,30})"
    r"(?:\s+(?P<mac>[0-9A-Fa-fXx]{2}(?:[:-][0-9A-Fa-fXx]{2}){5}|[0-9A-Fa-f]{12}))?",
    re.IGNORECASE,
)


def parse_user_agent(agent: str) -> DeviceInfo:
    """Yealink SIP or HTTP User-Agent to a device; the MAC is kept only when unredacted."""
    match = _AGENT.search(agent)
    if match is None:
        raise AgentError("Yealink User-Agent without a model/firmware token")
    model = match["model"].upper()
    return DeviceInfo(
        "Yealink", model, match["fw"].rstrip("."), normalise_mac(match["mac"]), raw_model=model
    )


def _validate(entry: CatalogEntry) -> None:
    minimum = YealinkVersion.parse(entry.minimum)
    for approved in (entry.approved, *(v for _, v in entry.approved_by_region)):
        parsed = YealinkVersion.parse(approved)
        if parsed.bare:
            raise VersionError(f"Yealink {entry.model}: approved {approved} lacks a family")
        if parsed.below(minimum):
            raise VersionError(f"Yealink {entry.model}: approved {approved} below minimum")


def _judge(entry: CatalogEntry, device: DeviceInfo, approved_text: str) -> Judgement:
    label = f"Yealink {entry.model}"
    reported = device.firmware or ""
    shown = safe_token(reported)
    try:
        firmware: YealinkVersion | None = YealinkVersion.parse(reported)
    except VersionError:
        firmware = None
    if firmware is None or firmware.bare:
        return Judgement(
            Compliance.UNPARSEABLE,
            f"firmware version {shown or 'missing'} of {label} cannot be read",
        )
    minimum = YealinkVersion.parse(entry.minimum)
    approved = YealinkVersion.parse(approved_text)
    note = ""
    if firmware.family != approved.family:
        note = f" (family {firmware.family}, catalog family {approved.family}: release compared)"
    if firmware.below(minimum):
        if minimum.bare:
            text = (
                f"firmware {shown} (release {firmware.release[0]}) below minimum release"
                f" {entry.minimum} for {label}"
            )
        else:
            text = f"firmware {shown} below minimum {entry.minimum} for {label}{note}"
        return Judgement(Compliance.BELOW_MINIMUM, text, approved_text)
    if firmware.below(approved):
        return Judgement(
            Compliance.BELOW_APPROVED,
            f"firmware {shown} below approved {approved_text} for {label}; upgrade offered{note}",
            approved_text,
        )
    return Judgement(
        Compliance.SUPPORTED, f"firmware {shown} meets approved {approved_text} for {label}{note}"
    )


SCHEME = VendorScheme("Yealink", _DETECT, parse_user_agent, _validate, _judge)
