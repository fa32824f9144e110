"""Poly: Polycom/Poly brands, VVX/Trio/Edge/Rove models, dotted versions."""

from __future__ import annotations

import pytest
from fc_helpers import expect

from firmware_catalog import Catalog, Compliance
from firmware_catalog.vendors.poly import PolyVersion


def test_vvx410_below_minimum(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("PolycomVVX-VVX_410-UA/5.9.4.1234"), Compliance.BELOW_MINIMUM)
    assert v.reason == "firmware 5.9.4.1234 below minimum 5.9.5 for Poly VVX410"
    assert v.device is not None and v.device.model == "VVX410"
    assert v.upgrade_to == "5.9.6.2327"


def test_old_vvx_between_minimum_and_approved_is_flagged(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate("Polycom/5.9.5.0614 PolycomVVX-VVX_310-UA/5.9.5.0614"),
        Compliance.BELOW_APPROVED,
    )
    assert v.upgrade_to == "5.9.6.2327"
    assert not v.e911  # VVX310 carries no E911 mark in the table


def test_two_token_agent_is_judged_on_the_product_token(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate("Polycom/5.5.2.8571 PolycomVVX-VVX_310-UA/5.5.2.8571"),
        Compliance.BELOW_MINIMUM,
    )
    assert v.device is not None and v.device.model == "VVX310"


def test_new_vvx_at_approved_is_supported_and_e911(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("PolycomVVX-VVX_450-UA/6.3.1.8427"), Compliance.SUPPORTED)
    assert v.e911


def test_rebranded_poly_trio(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate("Poly/7.1.1.0997 PolyRealPresenceTrio-Trio_8800-UA/7.1.1.0997"),
        Compliance.SUPPORTED,
    )
    assert v.device is not None and v.device.model == "Trio 8800"


def test_trio_5_9_5_is_admitted_but_flagged(catalog: Catalog) -> None:
    expect(
        catalog.evaluate("Polycom/5.9.5.3182 PolycomRealPresenceTrio-Trio_8500-UA/5.9.5.3182"),
        Compliance.BELOW_APPROVED,
    )


def test_http_filetransport_agent(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate_http("FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application"),
        Compliance.SUPPORTED,
    )
    assert v.device is not None and v.device.firmware == "5.9.7.4477"


def test_serial_number_is_the_mac(catalog: Catalog) -> None:
    v = catalog.evaluate_http(
        "FileTransport PolycomRealPresenceTrio-Trio_8800-UA/7.2.2.1094 (SN:0004F2ABCDEF)"
        " Type/Application"
    )
    assert v.device is not None and v.device.mac == "0004f2abcdef"


def test_unknown_poly_model(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate("FileTransport PolycomSoundStationIP-SSIP_6000-UA/4.0.4.2906"),
        Compliance.UNKNOWN_MODEL,
    )
    assert v.reason == "Poly model SSIP 6000 is not in the catalog"


def test_edge_e_from_2024_table(catalog: Catalog) -> None:
    expect(catalog.evaluate("PolyEdge-Edge_E350-UA/8.1.0.12774"), Compliance.SUPPORTED)
    expect(catalog.evaluate("PolyEdge-Edge_E350-UA/8.0.0.1234"), Compliance.BELOW_MINIMUM)


@pytest.mark.parametrize(
    "agent",
    ["PolyRove-B4/8.0.3.0009", "Poly Rove B4 8.0.3.0009", "PolyRove-Rove_B4-UA/8.0.3.0009"],
)
def test_rove_base_forms(catalog: Catalog, agent: str) -> None:
    v = expect(catalog.evaluate(agent), Compliance.SUPPORTED)
    assert v.entry is not None and v.entry.model == "Rove B4" and v.entry.role == "dect-base"


def test_rove_handset_below_minimum(catalog: Catalog) -> None:
    expect(catalog.evaluate("Poly Rove 30 8.0.3.0008"), Compliance.BELOW_MINIMUM)


def test_poly_brand_needs_a_product_token(catalog: Catalog) -> None:
    expect(catalog.evaluate("Polycom/5.9.5"), Compliance.UNPARSEABLE)


def test_polygon_is_not_poly(catalog: Catalog) -> None:
    expect(catalog.evaluate("Polygon-VVX_410-UA/6.0.0"), Compliance.UNKNOWN_VENDOR)


@pytest.mark.parametrize(
    ("low", "high"),
    [("5.9.5", "5.9.6.2327"), ("5.9.4.1234", "5.9.5"), ("5.9.6.2327", "6.3.1.8427")],
)
def test_version_order(low: str, high: str) -> None:
    assert PolyVersion.parse(low) < PolyVersion.parse(high)


def test_missing_fields_compare_as_zero() -> None:
    assert PolyVersion.parse("5.9.5") == PolyVersion.parse("5.9.5.0")
    assert PolyVersion.parse("5.9.5") < PolyVersion.parse("5.9.5.1")
