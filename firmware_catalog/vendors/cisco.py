"""Cisco IP phones: multiplatform (MPP, "3PCC") versus enterprise firmware.

User-Agent forms (FIELD-NOTES 4.1):

* SIP, MPP: ``Cisco-CP-8851-3PCC/11.3.7_MPP_0001``,
  ``Cisco-CP-8865-3PCC/12.0.3_dcf719f39350_<uuid>`` (firmware, MAC, uuid).
* HTTP provisioning, MPP: ``Cisco-CP-8841-3PCC/11.0 (00562b043615)`` (MAC in parens).
* Enterprise (CUCM) firmware: ``Cisco-CP-7942G/8.5.3``, ``Cisco-CP8845/12.0.1``: no
  ``-3PCC`` product suffix and no ``MPP`` in the version. A catalog model on
  enterprise firmware is rejected as ENTERPRISE_FIRMWARE (it must be converted to
  MPP); a model outside the catalog (7942G has no MPP firmware at all) is
  UNKNOWN_MODEL.
* ATA (assumed, no public trace consulted): ``Cisco-ATA191-MPP/11.2.2MPP0101-013``.
* Legacy SPA: ``Cisco/SPA504G-7.6.2`` parses, and is an unknown model.

Versions: ``11.3.5MPP``, ``11-3-3MPP``, ``12.0.3``, ``11-2-2MPP0101-013``: dotted or
dashed release numbers, an optional ``MPP`` marker and an optional build
(``0101-013``). Ordered by release (missing fields are 0), then build; the MPP
marker does not take part in ordering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from firmware_catalog.model import CatalogEntry, Compliance, DeviceInfo, Judgement
from firmware_catalog.vendors.base import (
    AgentError,
    VendorScheme,
    VersionError,
    judge_ordered,
    normalise_mac,
    safe_token,
    strip_zeros,
)

__all__ = ["SCHEME", "CiscoVersion", "parse_user_agent"]

_VERSION = re.compile(
    r"(?P<release>\d{1,5}(?:[.-]\d{1,6}){0,4})"
    r"(?P<mpp>[_.-]?MPP(?:[_.-]?(?P<build>\d{1,6}(?:-\d{1,6}){0,3}))?)?",
    re.IGNORECASE,
)


@dataclass(frozen=True, order=True, slots=True)
class CiscoVersion:
    """A Cisco firmware version; ``text`` is the part that was read."""

    release: tuple[int, ...]
    build: tuple[int, ...]
    mpp: bool = field(compare=False)
    text: str = field(compare=False)

    @classmethod
    def parse(cls, text: str, *, strict: bool = True) -> CiscoVersion:
        """Read a version; ``strict=False`` ignores a trailing ``_<mac>_<uuid>``."""
        match = _VERSION.match(text.strip())
        if match is None or (strict and match.end() != len(text.strip())):
            raise VersionError(f"not a Cisco firmware version: {safe_token(text)}")
        release = tuple(int(x) for x in re.split(r"[.-]", match["release"]))
        build = tuple(int(x) for x in match["build"].split("-")) if match["build"] else ()
        return cls(strip_zeros(release), build, match["mpp"] is not None, match.group(0))

    def __str__(self) -> str:
        return self.text


_DETECT = re.compile(r"(?<![A-Za-z])Cisco(?=[-/ ])", re.IGNORECASE)
_AGENT = re.compile(
    r"(?<![A-Za-z])Cisco[-/ ]"
    r"(?P<pn>(?:CP-?)?[A-Z]{0,4}\d{3,4}[A-Z]{0,2}(?P<suffix>-3PCC|-MPP)?)"
    r"[/-](?P<fw>\d[^\s()]{0,120})"
    r"(?:\s*\((?P<mac>[0-9A-Fa-f:.-]{12,17})\))?",
    re.IGNORECASE,
)
_PHONE_PN = re.compile(r"CP-?(?P<model>\d{4}[A-Z]{0,2})", re.IGNORECASE)
_MAC_IN_FW = re.compile(r"_([0-9A-Fa-f]{12})(?:_|$)")


def parse_user_agent(agent: str) -> DeviceInfo:
    """Cisco SIP or HTTP User-Agent to a device (model ``8851`` for ``CP-8851-3PCC``)."""
    match = _AGENT.search(agent)
    if match is None:
        raise AgentError("Cisco User-Agent without a product/firmware token")
    pn = match["pn"].upper()
    fw_token = match["fw"]
    try:
        firmware = CiscoVersion.parse(fw_token, strict=False)
        fw_text = firmware.text
        mpp_version = firmware.mpp
    except VersionError:
        fw_text = fw_token
        mpp_version = False
    phone = _PHONE_PN.fullmatch(pn.removesuffix("-3PCC"))
    if phone is not None:
        model = phone["model"]
        enterprise = match["suffix"] is None and not mpp_version
    else:
        model = pn.removesuffix("-MPP").removesuffix("-3PCC")
        enterprise = False
    mac = normalise_mac(match["mac"])
    if mac is None:
        in_fw = _MAC_IN_FW.search(fw_token)
        mac = normalise_mac(in_fw.group(1)) if in_fw else None
    return DeviceInfo("Cisco", model, fw_text, mac, raw_model=pn, enterprise=enterprise)


def _validate(entry: CatalogEntry) -> None:
    minimum = CiscoVersion.parse(entry.minimum)
    for approved in (entry.approved, *(v for _, v in entry.approved_by_region)):
        if CiscoVersion.parse(approved) < minimum:
            raise VersionError(f"Cisco {entry.model}: approved {approved} below minimum")


def _judge(entry: CatalogEntry, device: DeviceInfo, approved: str) -> Judgement:
    if device.enterprise:
        return Judgement(
            Compliance.ENTERPRISE_FIRMWARE,
            f"Cisco {entry.model} runs enterprise firmware {safe_token(device.firmware or '')};"
            " convert it to multiplatform (MPP) firmware",
        )
    return judge_ordered(
        entry,
        device,
        approved,
        lambda text: CiscoVersion.parse(text, strict=False),
        CiscoVersion.parse,
    )


SCHEME = VendorScheme("Cisco", _DETECT, parse_user_agent, _validate, _judge)
