"""The firmware catalog: the compatible-device table and the compliance check.

Every REGISTER's ``User-Agent`` (RFC 3261 §20.41) and every provisioning request
is judged against the table of compatible devices (the Teams SIP Gateway
"Compatible devices" table, kept as data in ``catalog.toml``). Pure functions of
their input: no I/O after loading, safe on hostile text, memoised because phones
re-register with the same User-Agent all day.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from firmware_catalog.model import CatalogEntry, Compliance, DeviceInfo, Verdict, model_key
from firmware_catalog.paths import RequestPath, parse_request_path
from firmware_catalog.vendors import SCHEMES, AgentError, VendorScheme, VersionError, detect_vendor
from firmware_catalog.vendors.base import safe_token

__all__ = ["AGENT_MAX", "Catalog", "CatalogError", "VendorInfo", "load_catalog"]

# Real User-Agents are well under 200 characters; anything longer is refused
# before a regex sees it, which bounds the work a hostile header can cause.
AGENT_MAX = 512
ROLES = frozenset({"phone", "handset", "dect-base", "dect-server", "ata"})
_CACHE_SIZE = 4096


class CatalogError(ValueError):
    """The catalog data file is malformed (names the file and the offending row)."""


@dataclass(frozen=True, slots=True)
class VendorInfo:
    """A vendor section of the data file: its version scheme, remarks and support link."""

    name: str
    scheme: str
    remarks: tuple[str, ...] = ()
    link: str = ""


class Catalog:
    """The compatible-device table with per-vendor User-Agent parsing and judgement.

    ``evaluate`` judges a SIP REGISTER's User-Agent (RFC 3261 §20.41);
    ``evaluate_http`` a provisioning request (HTTP User-Agent and/or file name).
    Neither raises on any input text.
    """

    def __init__(self, entries: Iterable[CatalogEntry], vendors: Iterable[VendorInfo]) -> None:
        self.vendors: dict[str, VendorInfo] = {v.name: v for v in vendors}
        self.entries: tuple[CatalogEntry, ...] = tuple(entries)
        self._schemes: dict[str, VendorScheme] = {}
        self._index: dict[tuple[str, str], CatalogEntry] = {}
        for vendor in self.vendors.values():
            if vendor.scheme not in SCHEMES:
                raise CatalogError(f"vendor {vendor.name}: unknown scheme {vendor.scheme!r}")
            self._schemes[vendor.name] = SCHEMES[vendor.scheme]
        self._vendor_of_scheme = {s.name: v for v, s in self._schemes.items()}
        for entry in self.entries:
            scheme = self._schemes.get(entry.vendor)
            if scheme is None:
                raise CatalogError(f"{entry.vendor} {entry.model}: vendor has no [vendors] section")
            try:
                scheme.validate(entry)
            except VersionError as exc:
                raise CatalogError(f"{entry.vendor} {entry.model}: {exc}") from None
            for key in entry.keys:
                other = self._index.setdefault((scheme.name, key), entry)
                if other is not entry:
                    raise CatalogError(
                        f"{entry.vendor} {entry.model}: duplicate of {other.model} (key {key})"
                    )
        self._cached = functools.lru_cache(maxsize=_CACHE_SIZE)(self._evaluate)

    def lookup(self, vendor: str, model: str) -> CatalogEntry | None:
        """The row for a vendor's model, by any spelling (``VVX_410``, ``440HDG``)."""
        scheme = self._schemes.get(vendor)
        if scheme is None:
            return None
        return self._index.get((scheme.name, model_key(model)))

    def evaluate(self, user_agent: str, *, region: str | None = None) -> Verdict:
        """Judge a SIP User-Agent; ``region`` picks region-specific approved builds."""
        return self._cached(user_agent, region)

    def evaluate_http(
        self, user_agent: str | None, path: str | None = None, *, region: str | None = None
    ) -> Verdict:
        """Judge a provisioning request from its HTTP User-Agent and/or requested path.

        The path adds the MAC (``<mac>.cfg``, ``/Cisco/<PN>/<mac>.cfg``) and, for Cisco,
        the model. A MAC in the User-Agent that differs from the requested file's is
        refused as UNPARSEABLE: one of them is forged.
        """
        hints = parse_request_path(path) if path else RequestPath()
        agent = (user_agent or "").strip()
        verdict = self.evaluate(agent, region=region) if agent else None
        if verdict is not None and verdict.device is not None:
            device = verdict.device
            if hints.mac and device.mac and hints.mac != device.mac:
                return Verdict(
                    Compliance.UNPARSEABLE,
                    f"MAC {device.mac} in the User-Agent differs from {hints.mac}"
                    " in the requested file",
                    device,
                    verdict.entry,
                )
            if hints.mac and not device.mac:
                return dataclasses.replace(
                    verdict, device=dataclasses.replace(device, mac=hints.mac)
                )
            return verdict
        if hints.vendor is not None and hints.model is not None:
            return self._path_only(hints)
        if verdict is not None:
            return verdict
        return Verdict(
            Compliance.UNPARSEABLE, "provisioning request names no device: no User-Agent"
        )

    def _path_only(self, hints: RequestPath) -> Verdict:
        vendor = self._vendor_of_scheme.get(hints.vendor or "")
        model = hints.model or ""
        if vendor is None:
            return Verdict(
                Compliance.UNKNOWN_VENDOR, f"vendor {hints.vendor} is not in the catalog"
            )
        entry = self.lookup(vendor, model)
        device = DeviceInfo(
            vendor, entry.model if entry else model, None, hints.mac, raw_model=model
        )
        if entry is None:
            return Verdict(
                Compliance.UNKNOWN_MODEL,
                f"{vendor} model {safe_token(model)} is not in the catalog",
                device,
            )
        return Verdict(
            Compliance.UNPARSEABLE,
            f"{vendor} {entry.model} requested its configuration without reporting firmware",
            device,
            entry,
        )

    def _evaluate(self, user_agent: str, region: str | None) -> Verdict:
        agent = user_agent.strip()
        if not agent:
            return Verdict(Compliance.UNPARSEABLE, "no User-Agent header")
        if len(agent) > AGENT_MAX:
            return Verdict(Compliance.UNPARSEABLE, f"User-Agent longer than {AGENT_MAX} characters")
        scheme = detect_vendor(agent)
        vendor = self._vendor_of_scheme.get(scheme.name) if scheme is not None else None
        if scheme is None or vendor is None:
            names = ", ".join(self.vendors)
            return Verdict(
                Compliance.UNKNOWN_VENDOR,
                f"User-Agent names no supported device vendor (supported: {names})",
            )
        try:
            device = scheme.parse_agent(agent)
        except AgentError as exc:
            return Verdict(Compliance.UNPARSEABLE, str(exc))
        device = dataclasses.replace(device, vendor=vendor)
        entry = self.lookup(vendor, device.model) or self.lookup(vendor, device.raw_model)
        if entry is None:
            kind = " on enterprise firmware" if device.enterprise else ""
            return Verdict(
                Compliance.UNKNOWN_MODEL,
                f"{vendor} model {safe_token(device.model)}{kind} is not in the catalog",
                device,
            )
        device = dataclasses.replace(device, model=entry.model)
        judgement = scheme.judge(entry, device, entry.approved_for(region))
        return Verdict(judgement.compliance, judgement.reason, device, entry, judgement.upgrade_to)


def _strings(value: Any, where: str, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: {name} must be a list of strings")
    return tuple(value)


def _string(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def catalog_from_data(data: Mapping[str, Any], source: str = "<data>") -> Catalog:
    """Build a catalog from the decoded data file (see ``catalog.toml`` for the format)."""
    if data.get("format") != 1:
        raise CatalogError(f"{source}: format must be 1")
    raw_vendors = data.get("vendors")
    if not isinstance(raw_vendors, dict) or not raw_vendors:
        raise CatalogError(f"{source}: [vendors] table missing")
    vendors: list[VendorInfo] = []
    for name, info in raw_vendors.items():
        where = f"{source}: vendors.{name}"
        if not isinstance(info, dict):
            raise CatalogError(f"{where}: must be a table")
        vendors.append(
            VendorInfo(
                name,
                _string(info, "scheme", where),
                _strings(info.get("remarks", []), where, "remarks"),
                str(info.get("link", "")),
            )
        )
    vendor_remarks = {v.name: v.remarks for v in vendors}
    rows = data.get("devices")
    if not isinstance(rows, list) or not rows:
        raise CatalogError(f"{source}: no [[devices]] rows")
    entries: list[CatalogEntry] = []
    for number, row in enumerate(rows, 1):
        where = f"{source}: devices row {number}"
        if not isinstance(row, dict):
            raise CatalogError(f"{where}: must be a table")
        vendor = _string(row, "vendor", where)
        if vendor not in vendor_remarks:
            raise CatalogError(f"{where}: vendor {vendor!r} has no [vendors] section")
        e911 = row.get("e911", False)
        role = row.get("role", "phone")
        regional = row.get("approved_by_region", {})
        if not isinstance(e911, bool):
            raise CatalogError(f"{where}: e911 must be true or false")
        if role not in ROLES:
            raise CatalogError(f"{where}: role must be one of {sorted(ROLES)}")
        if not isinstance(regional, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in regional.items()
        ):
            raise CatalogError(f"{where}: approved_by_region must map regions to versions")
        entries.append(
            CatalogEntry(
                vendor=vendor,
                model=_string(row, "model", where),
                minimum=_string(row, "minimum", where),
                approved=_string(row, "approved", where),
                e911=e911,
                remarks=_strings(row.get("remarks", []), where, "remarks") + vendor_remarks[vendor],
                role=role,
                source=str(row.get("source", "")),
                aliases=_strings(row.get("aliases", []), where, "aliases"),
                approved_by_region=tuple(regional.items()),
            )
        )
    return Catalog(entries, vendors)


def _decode(blob: bytes, source: str) -> dict[str, Any]:
    try:
        if source.endswith(".json"):
            data = json.loads(blob)
            if not isinstance(data, dict):
                raise CatalogError(f"{source}: top level must be an object")
            return data
        return tomllib.loads(blob.decode("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{source}: {exc}") from None


@functools.cache
def _default_catalog() -> Catalog:
    blob = resources.files("firmware_catalog").joinpath("catalog.toml").read_bytes()
    return catalog_from_data(_decode(blob, "catalog.toml"), "firmware_catalog/catalog.toml")


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """The packaged catalog (loaded once, then shared), or one from a TOML/JSON file."""
    if path is None:
        return _default_catalog()
    file = Path(path)
    return catalog_from_data(_decode(file.read_bytes(), file.name), str(file))
