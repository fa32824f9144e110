"""AudioCodes 400HD series, C4xxHD and RX50.

User-Agent forms (FIELD-NOTES 4.4):

* ``AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F602AAC)``,
  ``AUDC-IPPhone/2.0.0_build_15 (420HD; 00908F3BBCBA)``: firmware after the slash,
  model and MAC in the parentheses (``-Rev0`` hardware revision dropped).
* UC firmware: ``AUDC/3.4.6.604 AUDC-IPPhone-C450HD_UC_3.4.6.604/1``,
  ``AUDC-IPPhone-445HD_UC_3.4.8/1.0``: model and firmware in one token.

Firmware lines. AudioCodes ships two lines whose numbers are not comparable: 2.x
is the SIP line and 3.x the Skype for Business line. The table therefore has rows
whose minimum (3.2.1) is above the approved version (2.2.16.570): "the 3.X version
is the Skype for Business version. We update the SIP version which is 2.X". Rule:

1. The line of a version is its first field.
2. Minimum: a firmware is held to the catalog minimum only when the minimum is in
   the firmware's own line (405: a 2.x firmware must be >= 2.2.8; 405HD..440HD: a
   3.x firmware must be >= 3.2.1; 450HD etc.: a 3.x firmware must be >= 3.2.1).
3. Approved: when the approved version is in the firmware's line, the usual
   comparison (below approved = admitted and flagged, with the upgrade offered).
   A firmware on another line than the approved one that passed rule 2 (a 3.x SfB
   firmware >= 3.2.1 on a 440HD whose approved build is 2.2.16.570) is admitted,
   flagged, and offered the approved SIP build: that is the update the note means.
4. A firmware whose line has neither a minimum nor an approved version in the row
   (3.x on the 405, 2.x on the 450HD, any 1.x or 4.x) is rejected as BELOW_MINIMUM,
   with the supported line(s) in the reason and the approved build offered.

Consequence: a 2.x firmware on 405HD..440HD has no floor of its own; it is
judged against the approved 2.x build only.
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

__all__ = ["SCHEME", "AudioCodesVersion", "parse_user_agent"]

_VERSION = re.compile(
    r"(?P<numbers>\d{1,5}(?:\.\d{1,6}){0,5})(?:[._]?build[._]?(?P<build>\d{1,6}))?",
    re.IGNORECASE,
)


@dataclass(frozen=True, order=True, slots=True)
class AudioCodesVersion:
    """Dotted numbers, an optional ``_build_N`` taken as one more field."""

    numbers: tuple[int, ...]
    text: str = field(compare=False)

    @classmethod
    def parse(cls, text: str) -> AudioCodesVersion:
        stripped = text.strip()
        match = _VERSION.fullmatch(stripped)
        if match is None:
            raise VersionError(f"not an AudioCodes firmware version: {safe_token(text)}")
        numbers = [int(x) for x in match["numbers"].split(".")]
        if match["build"] is not None:
            numbers.append(int(match["build"]))
        return cls(strip_zeros(tuple(numbers)), stripped)

    @property
    def line(self) -> int:
        return self.numbers[0]

    def __str__(self) -> str:
        return self.text


_DETECT = re.compile(r"(?<![A-Za-z])(?:AUDC|AudioCodes)(?![a-z])", re.IGNORECASE)
_UC_AGENT = re.compile(
    r"AUDC-IPPhone-(?P<model>[A-Za-z0-9]{2,16})_(?:[A-Za-z]{2,8}_)?(?P<fw>\d[\d.]{0,30})",
    re.IGNORECASE,
)
_SIP_AGENT = re.compile(
    r"AUDC-IPPhone/(?P<fw>\d[\w.]{0,40}?)\s*\(\s*(?P<model>[A-Za-z0-9]{2,16})(?:-Rev\w{0,8})?"
    r"\s*(?:;\s*(?P<mac>[0-9A-Fa-f:-]{12,17})\s*)?\)",
    re.IGNORECASE,
)


def parse_user_agent(agent: str) -> DeviceInfo:
    """AudioCodes SIP or HTTP User-Agent to a device (``440HDG-Rev0`` gives ``440HDG``)."""
    match = _UC_AGENT.search(agent)
    mac: str | None = None
    if match is None:
        match = _SIP_AGENT.search(agent)
        if match is None:
            raise AgentError("AudioCodes User-Agent without a model/firmware token")
        mac = normalise_mac(match["mac"])
    model = match["model"].upper()
    return DeviceInfo("AudioCodes", model, match["fw"].rstrip("."), mac, raw_model=model)


def _validate(entry: CatalogEntry) -> None:
    AudioCodesVersion.parse(entry.minimum)
    AudioCodesVersion.parse(entry.approved)


def _judge(entry: CatalogEntry, device: DeviceInfo, approved_text: str) -> Judgement:
    label = f"AudioCodes {entry.model}"
    reported = device.firmware or ""
    shown = safe_token(reported)
    try:
        firmware = AudioCodesVersion.parse(reported)
    except VersionError:
        return Judgement(
            Compliance.UNPARSEABLE,
            f"firmware version {shown or 'missing'} of {label} cannot be read",
        )
    minimum = AudioCodesVersion.parse(entry.minimum)
    approved = AudioCodesVersion.parse(approved_text)
    line = firmware.line
    if line not in (minimum.line, approved.line):
        lines = " and ".join(sorted({f"{minimum.line}.x", f"{approved.line}.x"}))
        return Judgement(
            Compliance.BELOW_MINIMUM,
            f"firmware {shown} is on line {line}.x, not supported for {label}"
            f" (lines {lines}; approved {approved_text})",
            approved_text,
        )
    if line == minimum.line and firmware < minimum:
        return Judgement(
            Compliance.BELOW_MINIMUM,
            f"firmware {shown} below minimum {entry.minimum} for {label}",
            approved_text,
        )
    if line != approved.line:
        kind = "Skype for Business " if line == 3 else ""
        return Judgement(
            Compliance.BELOW_APPROVED,
            f"firmware {shown} is on the {kind}{line}.x line; approved build"
            f" {approved_text} for {label} offered",
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


SCHEME = VendorScheme("AudioCodes", _DETECT, parse_user_agent, _validate, _judge)
