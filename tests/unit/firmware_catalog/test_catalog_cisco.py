"""Cisco: MPP (3PCC) versus enterprise firmware, dotted/dashed MPP versions."""

from __future__ import annotations

import pytest
from fc_helpers import expect

from firmware_catalog import Catalog, Compliance
from firmware_catalog.vendors.cisco import CiscoVersion, parse_user_agent


def test_mpp_8851_above_approved_is_supported(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Cisco-CP-8851-3PCC/11.3.7_MPP_0001"), Compliance.SUPPORTED)
    assert v.device is not None and v.entry is not None
    device = (v.device.vendor, v.device.model, v.device.raw_model)
    assert device == ("Cisco", "8851", "CP-8851-3PCC")
    assert v.device.firmware == "11.3.7_MPP_0001"
    assert v.entry.approved == "11-3-3MPP"
    assert v.upgrade_to is None


def test_sip_agent_with_mac_and_uuid(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate("Cisco-CP-8865-3PCC/12.0.3_dcf719f39350_d4e6994b-7f1c-4c2e"),
        Compliance.SUPPORTED,
    )
    assert v.device is not None
    assert (v.device.model, v.device.firmware, v.device.mac) == ("8865", "12.0.3", "dcf719f39350")


def test_between_minimum_and_approved_is_flagged_with_upgrade(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Cisco-CP-7841-3PCC/11.2.3MPP0001-609"), Compliance.BELOW_APPROVED)
    assert v.upgrade_to == "11-3-3MPP"
    assert v.reason == (
        "firmware 11.2.3MPP0001-609 below approved 11-3-3MPP for Cisco 7841; upgrade offered"
    )


def test_below_minimum_is_rejected(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Cisco-CP-6821-3PCC/11.0.1_MPP"), Compliance.BELOW_MINIMUM)
    assert v.reason == "firmware 11.0.1_MPP below minimum 11.1.1MPP for Cisco 6821"


def test_8832_has_its_own_minimum(catalog: Catalog) -> None:
    expect(catalog.evaluate("Cisco-CP-8832-3PCC/11.3.4"), Compliance.BELOW_MINIMUM)
    expect(catalog.evaluate("Cisco-CP-8832-3PCC/11.3.5"), Compliance.SUPPORTED)


def test_http_agent_with_mac_in_parentheses(catalog: Catalog) -> None:
    v = catalog.evaluate_http("Cisco-CP-8841-3PCC/11.0 (00562b043615)")
    assert v.device is not None
    assert (v.device.model, v.device.firmware, v.device.mac) == ("8841", "11.0", "00562b043615")
    # 11.0 is read as 11.0.0: below the 11.1.1 minimum, and the fix is offered.
    expect(v, Compliance.BELOW_MINIMUM)
    assert v.upgrade_to == "11-3-3MPP"


def test_enterprise_88xx_needs_conversion(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Cisco-CP8845/12.0.1"), Compliance.ENTERPRISE_FIRMWARE)
    assert v.device is not None and v.device.enterprise
    assert v.reason == (
        "Cisco 8845 runs enterprise firmware 12.0.1; convert it to multiplatform (MPP) firmware"
    )
    assert v.upgrade_to is None


def test_enterprise_model_without_mpp_firmware_is_unknown(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Cisco-CP-7942G/8.5.3"), Compliance.UNKNOWN_MODEL)
    assert v.reason == "Cisco model 7942G on enterprise firmware is not in the catalog"


def test_legacy_spa_is_an_unknown_model(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Cisco/SPA504G-7.6.2"), Compliance.UNKNOWN_MODEL)
    assert v.device is not None and v.device.model == "SPA504G"


def test_ata_from_2024_table(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Cisco-ATA191-MPP/11.2.2MPP0101-013"), Compliance.SUPPORTED)
    assert v.entry is not None and v.entry.role == "ata" and v.entry.source == "plan-2024"
    expect(catalog.evaluate("Cisco-ATA192-MPP/11.2.2MPP"), Compliance.BELOW_APPROVED)


def test_vendor_family_matched_by_regex_not_exact_string() -> None:
    device = parse_user_agent("  SIP/2.0 Cisco-CP-7821-3PCC/11.3.3MPP extra")
    assert (device.model, device.firmware) == ("7821", "11.3.3MPP")


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("11.1.1MPP", "11-3-3MPP"),
        ("11-3-3MPP", "11.3.5MPP"),
        ("11.3.5MPP", "12.0.3"),
        ("11.0", "11.0.1"),
        ("11-2-2MPP", "11-2-2MPP0101-013"),
        ("11-2-2MPP0101-013", "11-2-2MPP0101-014"),
    ],
)
def test_version_order(low: str, high: str) -> None:
    assert CiscoVersion.parse(low) < CiscoVersion.parse(high)


def test_dots_dashes_and_trailing_zeros_are_equal() -> None:
    assert CiscoVersion.parse("11-3-3MPP") == CiscoVersion.parse("11.3.3MPP")
    assert CiscoVersion.parse("12.0") == CiscoVersion.parse("12.0.0")


def test_strict_parse_refuses_trailing_text() -> None:
    with pytest.raises(ValueError):
        CiscoVersion.parse("11.3.3_dcf719f39350")
    assert CiscoVersion.parse("11.3.3_dcf719f39350", strict=False).text == "11.3.3"
