"""AudioCodes: two firmware lines (2.x SIP, 3.x Skype for Business), judged per line."""

from __future__ import annotations

import pytest
from fc_helpers import expect

from firmware_catalog import Catalog, Compliance
from firmware_catalog.vendors.audiocodes import AudioCodesVersion


def test_sip_agent_440hdg_maps_to_440hd(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate("AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F602AAC)"),
        Compliance.BELOW_APPROVED,
    )
    assert v.device is not None
    assert (v.device.model, v.device.raw_model, v.device.mac) == ("440HD", "440HDG", "00908f602aac")
    assert v.upgrade_to == "2.2.16.570"
    assert v.e911


def test_uc_agent_c450hd(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate("AUDC/3.4.6.604 AUDC-IPPhone-C450HD_UC_3.4.6.604/1"),
        Compliance.BELOW_APPROVED,
    )
    assert v.device is not None and v.device.firmware == "3.4.6.604"
    assert v.upgrade_to == "3.4.6.687"


def test_uc_agent_445hd_above_approved(catalog: Catalog) -> None:
    expect(catalog.evaluate("AUDC-IPPhone-445HD_UC_3.4.8/1.0"), Compliance.SUPPORTED)


def test_build_suffix_version(catalog: Catalog) -> None:
    v = catalog.evaluate("AUDC-IPPhone/2.0.0_build_15 (420HD; 00908F3BBCBA)")
    assert v.device is not None and v.device.mac == "00908f3bbcba"
    expect(v, Compliance.BELOW_APPROVED)


# The line rule (module docstring of firmware_catalog.vendors.audiocodes).
@pytest.mark.parametrize(
    ("agent", "compliance"),
    [
        # 405: minimum 2.2.8 and approved 2.2.16.570 both on the SIP 2.x line.
        ("AUDC-IPPhone/2.2.7 (405; 00908F000001)", Compliance.BELOW_MINIMUM),
        ("AUDC-IPPhone/2.2.8 (405; 00908F000001)", Compliance.BELOW_APPROVED),
        ("AUDC-IPPhone/2.2.16.570 (405; 00908F000001)", Compliance.SUPPORTED),
        ("AUDC-IPPhone-405_UC_3.4.0/1", Compliance.BELOW_MINIMUM),  # SfB line: no 3.x row
        # 440HD: minimum 3.2.1 (SfB line) above approved 2.2.16.570 (SIP line).
        ("AUDC-IPPhone/2.2.16.570 (440HD; 00908F000001)", Compliance.SUPPORTED),
        ("AUDC-IPPhone/2.2.18.100 (440HD; 00908F000001)", Compliance.SUPPORTED),
        ("AUDC-IPPhone/2.0.0 (440HD; 00908F000001)", Compliance.BELOW_APPROVED),
        ("AUDC-IPPhone-440HD_UC_3.2.0/1", Compliance.BELOW_MINIMUM),
        ("AUDC-IPPhone-440HD_UC_3.2.1/1", Compliance.BELOW_APPROVED),  # update to SIP 2.x
        ("AUDC-IPPhone-440HD_UC_3.4.8/1", Compliance.BELOW_APPROVED),
        # 450HD: both thresholds on 3.x; 2.x is not a line it runs.
        ("AUDC-IPPhone-450HD_UC_3.2.0/1", Compliance.BELOW_MINIMUM),
        ("AUDC-IPPhone-450HD_UC_3.3.0/1", Compliance.BELOW_APPROVED),
        ("AUDC-IPPhone-450HD_UC_3.4.6.687/1", Compliance.SUPPORTED),
        ("AUDC-IPPhone/2.2.16.570 (450HD; 00908F000001)", Compliance.BELOW_MINIMUM),
    ],
)
def test_line_rule(catalog: Catalog, agent: str, compliance: Compliance) -> None:
    expect(catalog.evaluate(agent), compliance)


def test_sfb_line_reason_offers_the_sip_build(catalog: Catalog) -> None:
    v = catalog.evaluate("AUDC-IPPhone-430HD_UC_3.3.1/1")
    assert v.reason == (
        "firmware 3.3.1 is on the Skype for Business 3.x line;"
        " approved build 2.2.16.570 for AudioCodes 430HD offered"
    )
    assert v.upgrade_to == "2.2.16.570"


def test_unsupported_line_reason(catalog: Catalog) -> None:
    v = catalog.evaluate("AUDC-IPPhone-405_UC_3.4.0/1")
    assert v.reason == (
        "firmware 3.4.0 is on line 3.x, not supported for AudioCodes 405"
        " (lines 2.x; approved 2.2.16.570)"
    )


def test_unknown_audiocodes_model(catalog: Catalog) -> None:
    expect(catalog.evaluate("AUDC-IPPhone/2.2.8 (310HD; 00908F000001)"), Compliance.UNKNOWN_MODEL)


def test_version_fields_and_line() -> None:
    v = AudioCodesVersion.parse("2.0.0_build_15")
    assert v.numbers == (2, 0, 0, 15) and v.line == 2
    assert AudioCodesVersion.parse("2.2.8") < AudioCodesVersion.parse("2.2.16.570")
