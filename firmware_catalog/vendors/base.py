"""What every vendor module provides, and the helpers they share.

A vendor is four things: a regex that recognises its User-Agent family (RFC 3261
§20.41 ``User-Agent``; never an exact string, firmware and rebrands change them),
a parser turning that User-Agent into a :class:`DeviceInfo`, a version scheme, and
a judgement of a device against its catalog row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from firmware_catalog.model import CatalogEntry, Compliance, DeviceInfo, Judgement

__all__ = [
    "AgentError",
    "VendorScheme",
    "VersionError",
    "judge_ordered",
    "normalise_mac",
    "safe_token",
    "strip_zeros",
]


class VersionError(ValueError):
    """A firmware string that the vendor's version scheme cannot read."""


class AgentError(ValueError):
    """A User-Agent of a known vendor family whose model or firmware cannot be read."""


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


V = TypeVar("V", bound=_Ordered)

_SAFE = re.compile(r"[^A-Za-z0-9._:/+ -]")
_HEX12 = re.compile(r"[0-9a-f]{12}")


def safe_token(text: str, limit: int = 48) -> str:
    """A device-supplied token made fit for a reason string (bounded, plain characters)."""
    cleaned = _SAFE.sub("?", text.strip())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def normalise_mac(text: str | None) -> str | None:
    """12 lower-case hex digits from ``00:04:f2:..``, ``00-04-F2-..`` or ``0004f2..``.

    Returns ``None`` for anything else, including redacted MACs (``80:5e:XX:..``)
    and the all-zero default-file name, which is not a device.
    """
    if not text:
        return None
    mac = re.sub(r"[:.-]", "", text.strip()).lower()
    if not _HEX12.fullmatch(mac) or mac == "000000000000":
        return None
    return mac


def strip_zeros(numbers: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing zero fields so that missing fields compare as 0 (5.9.5 == 5.9.5.0)."""
    end = len(numbers)
    while end > 1 and numbers[end - 1] == 0:
        end -= 1
    return numbers[:end]


def judge_ordered(
    entry: CatalogEntry,
    device: DeviceInfo,
    approved_text: str,
    parse_reported: Callable[[str], V],
    parse_table: Callable[[str], V],
) -> Judgement:
    """Judge a scheme whose versions are totally ordered: minimum <= approved."""
    label = f"{entry.vendor} {entry.model}"
    reported = device.firmware or ""
    try:
        firmware = parse_reported(reported)
    except VersionError:
        return Judgement(
            Compliance.UNPARSEABLE,
            f"firmware version {safe_token(reported) or 'missing'} of {label} cannot be read",
        )
    minimum = parse_table(entry.minimum)
    approved = parse_table(approved_text)
    shown = safe_token(reported)
    if firmware < minimum:
        return Judgement(
            Compliance.BELOW_MINIMUM,
            f"firmware {shown} below minimum {entry.minimum} for {label}",
            approved_text,
        )
    if firmware < approved:
        return Judgement(
            Compliance.BELOW_APPROVED,
            f"firmware {shown} below approved {approved_text} for {label}; upgrade offered",
            approved_text,
        )
    return Judgement(
        Compliance.SUPPORTED, f"firmware {shown} meets approved {approved_text} for {label}"
    )


@dataclass(frozen=True, slots=True)
class VendorScheme:
    """One vendor: User-Agent family regex, parser, version validation, judgement.

    ``detect`` finds the vendor family anywhere in a User-Agent; ``parse_agent``
    raises :class:`AgentError` when the family matched but the rest is unreadable;
    ``validate`` raises :class:`VersionError` for catalog rows the scheme cannot
    judge; ``judge`` compares a parsed device with its row (and an approved build,
    which differs from ``entry.approved`` for region-specific builds).
    """

    name: str
    detect: re.Pattern[str]
    parse_agent: Callable[[str], DeviceInfo]
    validate: Callable[[CatalogEntry], None]
    judge: Callable[[CatalogEntry, DeviceInfo, str], Judgement]
