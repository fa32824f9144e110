"""What a provisioning request's path says about the phone asking.

File names phones request (FIELD-NOTES 4.1-4.4, 4.6): ``<mac>.cfg`` and
``<mac>-phone.cfg`` style names (Poly, Yealink, AudioCodes), ``<MAC>.cfg``
upper-case (AudioCodes), ``mac.ini`` (AudioCodes ATA), Cisco's tail URLs
``/Cisco/CP-8851-3PCC/001234ab45de.cfg`` (``$PN``/``$MA``) and ``/8851-3PCC.xml``
(``$PSN.xml``), and a ``?mac=`` query. Shared files are not MACs: Yealink's
``y0000000000XX.cfg`` (the tail is the firmware family) and ``000000000000.cfg``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from firmware_catalog.vendors.base import normalise_mac

__all__ = ["PATH_MAX", "RequestPath", "parse_request_path"]

PATH_MAX = 2048

_CISCO_TAIL = re.compile(
    r"/Cisco/(?P<pn>(?:CP-\d{4}[A-Z]{0,2}-3PCC|ATA19\d(?:-MPP)?))/(?P<mac>[0-9A-Fa-f]{12})\.cfg$",
    re.IGNORECASE,
)
_CISCO_PSN = re.compile(r"(?:^|/)(?P<model>\d{4}[A-Z]{0,2})-3PCC\.xml$", re.IGNORECASE)
_YEALINK_COMMON = re.compile(r"(?:^|/)y0{10}(?P<family>\d{2,3})\.(?:cfg|boot)$", re.IGNORECASE)
_MAC_FILE = re.compile(
    r"(?:^|/)(?P<mac>[0-9A-Fa-f]{12})(?:-[A-Za-z]{1,16})?\.(?:cfg|xml|ini|boot|cfx|log)$"
)
_POLY_FIRMWARE = re.compile(r"\.sip\.ld$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RequestPath:
    """MAC and product hints from a requested path; every field may be ``None``."""

    mac: str | None = None
    vendor: str | None = None
    model: str | None = None
    yealink_family: int | None = None


def parse_request_path(path: str) -> RequestPath:
    """Hints from a request target (path, optionally with query, or a full URL)."""
    if not path or len(path) > PATH_MAX:
        return RequestPath()
    parts = urlsplit(path)
    file_path = unquote(parts.path)
    query_mac = None
    for value in parse_qs(parts.query).get("mac", [])[:1]:
        query_mac = normalise_mac(value)
    cisco = _CISCO_TAIL.search(file_path)
    if cisco is not None:
        pn = cisco["pn"].upper()
        model = pn.removeprefix("CP-").removesuffix("-3PCC").removesuffix("-MPP")
        return RequestPath(normalise_mac(cisco["mac"]) or query_mac, "Cisco", model)
    psn = _CISCO_PSN.search(file_path)
    if psn is not None:
        return RequestPath(query_mac, "Cisco", psn["model"].upper())
    yealink = _YEALINK_COMMON.search(file_path)
    if yealink is not None:
        return RequestPath(query_mac, "Yealink", None, int(yealink["family"]))
    if _POLY_FIRMWARE.search(file_path):
        return RequestPath(query_mac, "Poly")
    named = _MAC_FILE.search(file_path)
    mac = normalise_mac(named["mac"]) if named is not None else None
    return RequestPath(mac or query_mac)
