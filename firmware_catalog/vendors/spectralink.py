"""Spectralink DECT: IP-DECT servers and base stations, and the handsets behind them.

The server registers one SIP account per handset line; handsets take firmware over
the air from the server, so the server row is what decides what can be upgraded.

User-Agent format: ASSUMPTION. No public capture of a Spectralink IP-DECT
User-Agent was available (FIELD-NOTES 4.5). Accepted, until a lab capture says
otherwise: the word ``Spectralink`` (or the pre-2012 brand ``KIRK``), a model, and a
release code, separated by spaces, slashes, dashes or underscores, e.g.

* ``Spectralink IP-DECT Server 400 PCS22Ab_22125`` (server; ``_build`` optional),
* ``Spectralink Virtual IP-DECT Server One PCS22Ab``, ``Spectralink IP-DECT Base Station PCS22Ab``,
* ``Spectralink 7742 PCS22B`` or ``Spectralink-S35/PCS23Ca`` (handset line).

Release codes ``PCS<nn><Letter><letters>`` (``PCS22B``, ``PCS22Ab``, ``PCS23Ca``)
order by number, then the capital letter, then the lower-case patch letters (none
before ``a`` before ``b``), then an optional numeric build.
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
    safe_token,
)

__all__ = ["SCHEME", "SpectralinkVersion", "parse_user_agent"]

_VERSION = re.compile(
    r"PCS(?P<number>\d{1,3})(?P<major>[A-Z])(?P<patch>[a-z]{0,3})(?:[_.-](?P<build>\d{1,8}))?"
)


@dataclass(frozen=True, order=True, slots=True)
class SpectralinkVersion:
    """A Spectralink release code such as ``PCS22Ab``."""

    number: int
    major: str
    patch: str
    build: int
    text: str = field(compare=False)

    @classmethod
    def parse(cls, text: str) -> SpectralinkVersion:
        stripped = text.strip()
        match = _VERSION.fullmatch(stripped)
        if match is None:
            raise VersionError(f"not a Spectralink release code: {safe_token(text)}")
        build = int(match["build"]) if match["build"] else 0
        return cls(int(match["number"]), match["major"], match["patch"], build, stripped)

    def __str__(self) -> str:
        return self.text


_SEP = r"[ /_-]+"
_DETECT = re.compile(r"(?<![A-Za-z])(?:Spectralink|KIRK)(?![a-z])", re.IGNORECASE)
_AGENT = re.compile(
    r"(?<![A-Za-z])(?:Spectralink|KIRK)" + _SEP + r"(?P<model>"
    r"(?:Virtual"
    + _SEP
    + r")?IP"
    + r"[ _-]?DECT"
    + _SEP
    + r"(?:Server"
    + _SEP
    + r"(?:\d{3,4}|One)|Base"
    + _SEP
    + r"Station)"
    r"|\d{4}|S\d{2})" + _SEP + r"(?P<fw>PCS\w{2,20})",
    re.IGNORECASE,
)


def _clean_model(raw: str) -> str:
    words = [w for w in re.split(r"[ /_-]+", raw) if w]
    if len(words) == 1:
        return words[0].upper()
    text = " ".join(w.capitalize() if w.isalpha() else w for w in words)
    return re.sub(r"(?i)\bIp ?Dect\b", "IP-DECT", text)


def parse_user_agent(agent: str) -> DeviceInfo:
    """Spectralink User-Agent (assumed format, see the module docstring) to a device."""
    match = _AGENT.search(agent)
    if match is None:
        raise AgentError("Spectralink User-Agent without a model/release token")
    raw = match["model"]
    return DeviceInfo("Spectralink", _clean_model(raw), match["fw"], None, raw_model=raw)


def _validate(entry: CatalogEntry) -> None:
    if SpectralinkVersion.parse(entry.approved) < SpectralinkVersion.parse(entry.minimum):
        raise VersionError(f"Spectralink {entry.model}: approved below minimum")


def _judge(entry: CatalogEntry, device: DeviceInfo, approved: str) -> Judgement:
    return judge_ordered(
        entry, device, approved, SpectralinkVersion.parse, SpectralinkVersion.parse
    )


SCHEME = VendorScheme("Spectralink", _DETECT, parse_user_agent, _validate, _judge)
