"""``catalog`` command: check a User-Agent against the firmware catalog, list the table.

    catalog check "Yealink SIP-T46S 66.85.0.5"
    catalog check --http "Cisco-CP-8841-3PCC/11.0 (00562b043615)" \
        --path /Cisco/CP-8841-3PCC/00562b043615.cfg
    catalog list [--vendor Poly]

``check`` exits 0 when the device would be admitted, 1 when rejected; 2 on usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from firmware_catalog.catalog import CatalogError, load_catalog
from firmware_catalog.model import Verdict

__all__ = ["main"]


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Check devices against the firmware catalog."
    )
    parser.add_argument("--catalog", help="catalog data file (TOML or JSON); default: packaged")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="judge a User-Agent (SIP by default)")
    check.add_argument("user_agent", nargs="?", default="", help="the User-Agent text")
    check.add_argument("--http", action="store_true", help="judge as a provisioning request")
    check.add_argument("--path", help="requested provisioning file (implies --http)")
    check.add_argument("--region", help="NOAM, EMEA or APAC, for region-specific builds")
    listing = sub.add_parser("list", help="print the compatible-device table")
    listing.add_argument("--vendor", help="only this vendor")
    return parser


def _print_verdict(verdict: Verdict, out: TextIO) -> None:
    device, entry = verdict.device, verdict.entry
    admitted = "admitted" if verdict.admitted else "rejected"
    rows = [
        ("vendor", device.vendor if device else "-"),
        ("model", device.model if device else "-"),
        ("firmware", (device.firmware or "-") if device else "-"),
        ("mac", (device.mac or "-") if device else "-"),
        ("verdict", f"{verdict.compliance.name} ({admitted})"),
        ("reason", verdict.reason),
        ("minimum", entry.minimum if entry else "-"),
        ("approved", entry.approved if entry else "-"),
        ("upgrade to", verdict.upgrade_to or "-"),
        ("e911", "yes" if verdict.e911 else "no"),
    ]
    for name, value in rows:
        out.write(f"{name + ':':12}{value}\n")


def _print_table(vendor: str | None, catalog_path: str | None, out: TextIO) -> int:
    catalog = load_catalog(catalog_path)
    entries = [e for e in catalog.entries if vendor is None or e.vendor.lower() == vendor.lower()]
    if not entries:
        sys.stderr.write(f"no catalog rows for vendor {vendor!r}\n")
        return 1
    header = ("Vendor", "Model", "Minimum", "Approved", "E911", "Role", "Source", "Remarks")
    table = [header] + [
        (
            e.vendor,
            e.model,
            e.minimum,
            e.approved,
            "yes" if e.e911 else "",
            e.role,
            e.source,
            "; ".join(e.remarks),
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str = "catalog") -> int:
    """Run the ``catalog`` command; returns the exit status."""
    args = _parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    out = sys.stdout
    try:
        if args.command == "list":
            return _print_table(args.vendor, args.catalog, out)
        catalog = load_catalog(args.catalog)
        if args.http or args.path:
            verdict = catalog.evaluate_http(args.user_agent, args.path, region=args.region)
        else:
            verdict = catalog.evaluate(args.user_agent, region=args.region)
    except (CatalogError, OSError) as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    _print_verdict(verdict, out)
    return 0 if verdict.admitted else 1


if __name__ == "__main__":
    raise SystemExit(main())
