"""Poly (formerly Polycom): VVX, Trio, Edge E and Rove DECT.

User-Agent forms (FIELD-NOTES 4.2); the brand is matched as ``Polycom`` or
``Poly`` because current firmware carries the rebranded name:

* SIP: ``PolycomVVX-VVX_410-UA/5.9.4.1234``,
  ``Polycom/5.5.2.8571 PolycomVVX-VVX_310-UA/5.5.2.8571``,
  ``Poly/7.1.1.0997 PolyRealPresenceTrio-Trio_8800-UA/7.1.1.0997``.
* HTTP provisioning: ``FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application``,
  Trio ``... (SN:0004f2abcdef) Type/Application``, Edge ``PolyEdge-Edge_E350-UA/8.0.0.1234``.
  Poly serial numbers are the MAC address, so a 12-hex-digit ``SN:`` is taken as MAC.
* Rove DECT: no public trace was available. Accepted, as an assumption: the
  family-model-UA form above (``PolyRove-Rove_B4-UA/8.0.3.0009``) and the short
  forms ``PolyRove-B4/8.0.3.0009`` and ``Poly Rove B4 8.0.5.0002``. Capture a
  real one from a lab base before relying on this.

Versions are dotted numbers (``5.9.5`` < ``5.9.6.2327``; missing fields are 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from firmware_catalog.model import CatalogEntry, DeviceInfo, Judgement
from firmware_catalog.vendors.base import (
    AgentError,
    VendorScheme,
    VersionError,
    judge_ordered,
    normalise_mac,
    safe_token,
    strip_zeros,
)

__all__ = ["SCHEME", "PolyVersion", "parse_user_agent"]

_NUMBERS = re.compile(r"\d{1,6}(?:\.\d{1,6}){0,5}")


@dataclass(frozen=True, order=True, slots=True)
class PolyVersion:
    """A dotted numeric Poly firmware version."""

    numbers: tuple[int, ...]
    text: str = field(compare=False)

    @classmethod
    def parse(cls, text: str, *, strict: bool = True) -> PolyVersion:
        stripped = text.strip()
        match = _NUMBERS.match(stripped)
        if match is None or (strict and match.end() != len(stripped)):
            raise VersionError(f"not a Poly firmware version: {safe_token(text)}")
        numbers = tuple(int(x) for x in match.group(0).split("."))
        return cls(strip_zeros(numbers), match.group(0))

    def __str__(self) -> str:
        return self.text


_DETECT = re.compile(r"(?<![A-Za-z])Poly(?:com)?(?![a-z])")
_FAMILY_AGENT = re.compile(
    r"(?<![A-Za-z])Poly(?:com)?(?P<family>[A-Za-z]{2,24})-(?P<model>[A-Za-z0-9_]{1,24})-UA/"
    r"(?P<fw>\d[\d.]{0,40})"
)
_ROVE_AGENT = re.compile(
    r"(?<![A-Za-z])Poly(?:com)?[- ]?Rove[-_ ]?(?P<model>B\d|\d{2})[/ ](?P<fw>\d[\d.]{0,40})"
)
_SERIAL = re.compile(r"\(SN:\s*(?P<sn>[0-9A-Fa-f:-]{12,17})\s*\)")


def _clean_model(family: str, model: str) -> str:
    name = model.replace("_", " ").strip()
    if family.lower() == "vvx":
        return name.replace(" ", "")
    if family.lower() == "rove" and not name.lower().startswith("rove"):
        return f"Rove {name}"
    return name


def parse_user_agent(agent: str) -> DeviceInfo:
    """Poly SIP or HTTP User-Agent to a device (``VVX_410`` becomes ``VVX410``)."""
    match = _FAMILY_AGENT.search(agent)
    if match is not None:
        family, raw = match["family"], match["model"]
    else:
        match = _ROVE_AGENT.search(agent)
        if match is None:
            raise AgentError("Poly User-Agent without a model/firmware token")
        family, raw = "Rove", match["model"]
    fw_token = match["fw"].rstrip(".")
    serial = _SERIAL.search(agent)
    mac = normalise_mac(serial["sn"]) if serial else None
    return DeviceInfo("Poly", _clean_model(family, raw), fw_token, mac, raw_model=raw)


def _validate(entry: CatalogEntry) -> None:
    if PolyVersion.parse(entry.approved) < PolyVersion.parse(entry.minimum):
        raise VersionError(f"Poly {entry.model}: approved below minimum")


def _judge(entry: CatalogEntry, device: DeviceInfo, approved: str) -> Judgement:
    return judge_ordered(entry, device, approved, PolyVersion.parse, PolyVersion.parse)


SCHEME = VendorScheme("Poly", _DETECT, parse_user_agent, _validate, _judge)
