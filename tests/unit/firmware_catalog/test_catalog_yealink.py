"""Yealink: family-prefixed versions, release minimum 83, MAC in the HTTP agent."""

from __future__ import annotations

import pytest
from fc_helpers import expect

from firmware_catalog import Catalog, Compliance
from firmware_catalog.vendors.yealink import YealinkVersion


def test_t46s_at_approved(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Yealink SIP-T46S 66.85.0.5"), Compliance.SUPPORTED)
    assert v.device is not None and (v.device.model, v.device.mac) == ("T46S", None)


def test_http_agent_with_redacted_colon_mac(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate_http("Yealink SIP-T57W 96.86.5.1 80:5e:XX:XX:dc:69"), Compliance.SUPPORTED
    )
    assert v.device is not None and v.device.mac is None


def test_custom_ua_with_mac(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Yealink SIP-T46S 66.86.0.15 805ec0123456"), Compliance.SUPPORTED)
    assert v.device is not None and v.device.mac == "805ec0123456"


def test_release_84_is_flagged_within_family(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Yealink SIP-T46S 66.84.0.15"), Compliance.BELOW_APPROVED)
    assert v.upgrade_to == "66.85.0.5"


def test_release_below_83_is_rejected_whatever_the_family(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Yealink SIP-T46G 28.82.0.300"), Compliance.BELOW_MINIMUM)
    assert v.reason == (
        "firmware 28.82.0.300 (release 82) below minimum release 83 for Yealink T46G"
    )
    # The family prefix is large, the release is not: 124 must not pass 83 by itself.
    expect(catalog.evaluate("Yealink SIP-T31G 124.82.0.40"), Compliance.BELOW_MINIMUM)


def test_release_83_meets_minimum_and_approved_of_old_family(catalog: Catalog) -> None:
    expect(catalog.evaluate("Yealink SIP-T46G 28.83.0.130"), Compliance.SUPPORTED)
    expect(catalog.evaluate("Yealink SIP-T46G 28.83.0.120"), Compliance.BELOW_APPROVED)


def test_family_mismatch_compares_release_and_says_so(catalog: Catalog) -> None:
    # The 2021 table gives T21P the T21P_E2 build (family 52).
    v = expect(catalog.evaluate("Yealink SIP-T21P 34.84.0.150"), Compliance.SUPPORTED)
    assert "family 34, catalog family 52" in v.reason
    expect(catalog.evaluate("Yealink SIP-T21P 34.72.0.75"), Compliance.BELOW_MINIMUM)


def test_t21p_e2_model_name(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Yealink SIP-T21P_E2 52.84.0.125"), Compliance.BELOW_APPROVED)
    assert v.entry is not None and v.entry.model == "T21P_E2"


def test_u_series_is_e911(catalog: Catalog) -> None:
    assert catalog.evaluate("Yealink SIP-T46U 108.86.0.20").e911
    assert not catalog.evaluate("Yealink SIP-T46S 66.85.0.5").e911


def test_dect_base_region_specific_build(catalog: Catalog) -> None:
    agent = "Yealink W70B 146.85.5.2"
    expect(catalog.evaluate(agent, region="EMEA"), Compliance.SUPPORTED)
    v = expect(catalog.evaluate(agent, region="NOAM"), Compliance.BELOW_APPROVED)
    assert v.upgrade_to == "146.85.5.4"
    expect(catalog.evaluate("Yealink SIP-W70B 146.85.0.20"), Compliance.BELOW_MINIMUM)


def test_dect_base_alias(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Yealink W80B 130.85.5.5"), Compliance.SUPPORTED)
    assert v.entry is not None and v.entry.model == "W80"


def test_unknown_yealink_model(catalog: Catalog) -> None:
    expect(catalog.evaluate("Yealink SIP-T28P 2.73.0.50"), Compliance.UNKNOWN_MODEL)


def test_yealink_without_firmware_is_unparseable(catalog: Catalog) -> None:
    expect(catalog.evaluate("Yealink SIP-T46S"), Compliance.UNPARSEABLE)
    expect(catalog.evaluate("Yealink SIP-T46S 66"), Compliance.UNPARSEABLE)


@pytest.mark.parametrize(
    ("low", "high"),
    [("66.84.0.15", "66.85.0.5"), ("66.85.0.5", "66.86.0.15"), ("66.85.0", "66.85.0.1")],
)
def test_version_order_within_family(low: str, high: str) -> None:
    assert YealinkVersion.parse(low) < YealinkVersion.parse(high)


def test_bare_minimum_is_a_release_number() -> None:
    minimum = YealinkVersion.parse("83")
    assert minimum.bare
    assert YealinkVersion.parse("124.82.0.40").below(minimum)
    assert not YealinkVersion.parse("28.83.0.130").below(minimum)
