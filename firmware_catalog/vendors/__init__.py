"""One module per vendor: User-Agent family, parser, version scheme, judgement."""

from __future__ import annotations

from firmware_catalog.vendors import audiocodes, cisco, poly, spectralink, yealink
from firmware_catalog.vendors.base import AgentError, VendorScheme, VersionError

__all__ = ["SCHEMES", "AgentError", "VendorScheme", "VersionError", "detect_vendor"]

# Scheme names as used by the data file's [vendors.<name>].scheme.
SCHEMES: dict[str, VendorScheme] = {
    "cisco": cisco.SCHEME,
    "poly": poly.SCHEME,
    "yealink": yealink.SCHEME,
    "audiocodes": audiocodes.SCHEME,
    "spectralink": spectralink.SCHEME,
}

# Detection order: the more specific brand tokens first, so that a User-Agent
# naming two brands (a Spectralink server once sold as Polycom/KIRK) resolves
# to the product family, not the reseller.
_DETECTION_ORDER = ("audiocodes", "cisco", "yealink", "spectralink", "poly")


def detect_vendor(agent: str) -> VendorScheme | None:
    """The vendor whose User-Agent family appears in ``agent``, if any."""
    for name in _DETECTION_ORDER:
        scheme = SCHEMES[name]
        if scheme.detect.search(agent):
            return scheme
    return None
