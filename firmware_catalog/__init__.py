"""Firmware catalog: which SIP devices, on which firmware, may use the gateway.

The device/firmware table is data (``catalog.toml``); one module per vendor in
``firmware_catalog.vendors`` parses that vendor's User-Agent (RFC 3261 §20.41),
reads its firmware version scheme and judges a device against its row.

    from firmware_catalog import load_catalog
    verdict = load_catalog().evaluate("Yealink SIP-T46S 66.85.0.5")
    verdict.admitted, verdict.flagged, verdict.reason, verdict.upgrade_to
"""

from __future__ import annotations

from firmware_catalog.catalog import (
    AGENT_MAX,
    Catalog,
    CatalogError,
    VendorInfo,
    catalog_from_data,
    load_catalog,
)
from firmware_catalog.model import CatalogEntry, Compliance, DeviceInfo, Verdict, warning_text
from firmware_catalog.paths import RequestPath, parse_request_path

__all__ = [
    "AGENT_MAX",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "Compliance",
    "DeviceInfo",
    "RequestPath",
    "VendorInfo",
    "Verdict",
    "catalog_from_data",
    "load_catalog",
    "parse_request_path",
    "warning_text",
]
