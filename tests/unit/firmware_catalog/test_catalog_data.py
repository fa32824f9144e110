"""The data file: every row of the seed table, and a loader that refuses bad files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from firmware_catalog import Catalog, CatalogError, load_catalog

REPO = Path(__file__).resolve().parents[3]
SEED = REPO.parent / "shared" / "seeds" / "002_99f858a729861208.txt"
SUP = "<sup>1</sup>"


def seed_text() -> str:
    """The compatible-device table; skip when absent, but fail under CI=true."""
    if SEED.is_file():
        return SEED.read_text(encoding="utf-8")
    msg = f"{SEED} absent: the shared seeds live beside the checkout"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def seed_rows(text: str) -> list[tuple[str, str, str, str, bool, str]]:
    """(vendor, model, minimum, approved, e911, remark) for each model row of the table."""
    rows: list[tuple[str, str, str, str, bool, str]] = []
    vendor = ""
    in_table = False
    for line in text.splitlines():
        if line.startswith("|Vendor"):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set(cells[0]) <= {"-"} and cells[0]:
            continue
        if cells[0]:
            vendor = cells[0].strip("*")
            continue
        model = cells[1]
        rows.append(
            (vendor, model.replace(SUP, "").strip(), cells[2], cells[3], SUP in model, cells[4])
        )
    return rows


def test_every_seed_row_is_in_the_catalog(catalog: Catalog) -> None:
    rows = seed_rows(seed_text())
    # 12 Cisco + 23 Poly + 30 Yealink (T41S three times) + 9 AudioCodes + 14 Spectralink.
    assert len(rows) == 88, "the seed table parser lost rows"
    for vendor, model, minimum, approved, e911, remark in rows:
        entry = catalog.lookup(vendor, model)
        assert entry is not None, f"{vendor} {model} missing"
        assert entry.model == model
        assert (entry.minimum, entry.approved) == (minimum, approved), f"{vendor} {model}"
        assert entry.e911 is e911, f"{vendor} {model} e911"
        assert entry.source == "seed-2021"
        if remark:
            assert remark in entry.remarks, f"{vendor} {model} remark {remark!r}"


def test_seed_duplicates_are_merged(catalog: Catalog) -> None:
    seeded = [(v, m) for v, m, *_ in seed_rows(seed_text())]
    assert seeded.count(("Yealink", "T41S")) == 3
    assert [(e.vendor, e.model) for e in catalog.entries].count(("Yealink", "T41S")) == 1
    seed_only = [e for e in catalog.entries if e.source == "seed-2021"]
    assert len(seed_only) == len(set(seeded))


def test_vendor_remarks_reach_the_rows(catalog: Catalog) -> None:
    cisco = catalog.lookup("Cisco", "8851")
    poly = catalog.lookup("Poly", "VVX410")
    codes = catalog.lookup("AudioCodes", "440HD")
    assert cisco is not None and poly is not None and codes is not None
    assert any("converted to multiplatform" in r for r in cisco.remarks)
    assert any("auto-reboot and install the selected firmware" in r for r in poly.remarks)
    assert any("3.x is the Skype for Business line" in r for r in codes.remarks)


def test_added_rows_are_marked(catalog: Catalog) -> None:
    for vendor, model in [("Cisco", "6871"), ("Poly", "Rove B1"), ("Yealink", "W56H")]:
        entry = catalog.lookup(vendor, model)
        assert entry is not None and entry.source == "plan-2024"


def test_default_catalog_is_cached() -> None:
    assert load_catalog() is load_catalog()


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
format = 1
[vendors.Poly]
scheme = "poly"
[[devices]]
vendor = "Poly"
model = "VVX410"
minimum = "5.9.5"
approved = "6.0.0"
e911 = true
"""


def test_custom_toml_file(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, GOOD))
    v = catalog.evaluate("PolycomVVX-VVX_410-UA/5.9.6.2327")
    assert v.flagged and v.upgrade_to == "6.0.0" and v.e911
    assert catalog.evaluate("Yealink SIP-T46S 66.85.0.5").compliance.name == "UNKNOWN_VENDOR"


def test_custom_json_file(tmp_path: Path) -> None:
    data = {
        "format": 1,
        "vendors": {"Yealink": {"scheme": "yealink"}},
        "devices": [
            {"vendor": "Yealink", "model": "T46S", "minimum": "83", "approved": "66.86.0.15"}
        ],
    }
    catalog = load_catalog(write(tmp_path, json.dumps(data), "c.json"))
    assert catalog.evaluate("Yealink SIP-T46S 66.85.0.5").flagged


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("format = 2", "format must be 1"),
        ("format = 1\n[[devices]]\nvendor='x'", "[vendors] table missing"),
        (GOOD.replace('scheme = "poly"', 'scheme = "nokia"'), "unknown scheme"),
        (GOOD.replace('minimum = "5.9.5"', 'minimum = "five"'), "not a Poly firmware version"),
        (GOOD.replace('approved = "6.0.0"', 'approved = "5.9.4"'), "approved below minimum"),
        (GOOD.replace("e911 = true", 'e911 = "yes"'), "e911 must be true or false"),
        (GOOD.replace('vendor = "Poly"', 'vendor = "Snom"'), "no [vendors] section"),
        (GOOD + GOOD.split("[[devices]]")[1].join(["[[devices]]", ""]), "duplicate"),
        ("format = 1\n[vendors", "c.toml"),
    ],
)
def test_bad_files_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)):
        load_catalog(write(tmp_path, text))
