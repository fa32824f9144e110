"""Provisioning requests: HTTP User-Agent plus requested file name."""

from __future__ import annotations

import pytest
from fc_helpers import expect

from firmware_catalog import Catalog, Compliance, parse_request_path


@pytest.mark.parametrize(
    ("path", "mac", "vendor", "model"),
    [
        ("/0004f2abcdef.cfg", "0004f2abcdef", None, None),
        ("/0004f2abcdef-phone.cfg", "0004f2abcdef", None, None),
        ("/00908F9D8992.cfg", "00908f9d8992", None, None),
        ("/Cisco/CP-8851-3PCC/001234ab45de.cfg", "001234ab45de", "Cisco", "8851"),
        ("/8851-3PCC.xml", None, "Cisco", "8851"),
        ("/tenantid/abc/lang_de/8865-3PCC.xml", None, "Cisco", "8865"),
        ("/y000000000066.cfg", None, "Yealink", None),
        ("/000000000000.cfg", None, None, None),
        ("/provision?mac=80:5E:C0:12:34:56", "805ec0123456", None, None),
        ("http://noam.example/805ec0123456.cfg", "805ec0123456", None, None),
        ("/3111-44500-001.sip.ld", None, "Poly", None),
        ("/../../etc/passwd", None, None, None),
    ],
)
def test_path_hints(path: str, mac: str | None, vendor: str | None, model: str | None) -> None:
    hints = parse_request_path(path)
    assert (hints.mac, hints.vendor, hints.model) == (mac, vendor, model)


def test_yealink_common_file_names_its_family_not_a_mac() -> None:
    hints = parse_request_path("/y000000000028.cfg")
    assert hints.mac is None and hints.yealink_family == 28


def test_path_supplies_the_mac(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate_http("Yealink SIP-T46S 66.85.0.5", "/805ec0123456.cfg"),
        Compliance.SUPPORTED,
    )
    assert v.device is not None and v.device.mac == "805ec0123456"


def test_agent_and_path_agree(catalog: Catalog) -> None:
    v = catalog.evaluate_http(
        "Cisco-CP-8841-3PCC/11.3.3 (00562b043615)", "/Cisco/CP-8841-3PCC/00562b043615.cfg"
    )
    expect(v, Compliance.SUPPORTED)


def test_conflicting_macs_are_refused(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate_http("Yealink SIP-T46S 66.86.0.15 805ec0123456", "/805ec0123457.cfg"),
        Compliance.UNPARSEABLE,
    )
    assert v.reason == (
        "MAC 805ec0123456 in the User-Agent differs from 805ec0123457 in the requested file"
    )


def test_cisco_path_without_agent_names_device_but_no_firmware(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate_http(None, "/Cisco/CP-8851-3PCC/001234ab45de.cfg"), Compliance.UNPARSEABLE
    )
    assert v.device is not None and v.device.firmware is None
    assert (v.device.model, v.device.mac) == ("8851", "001234ab45de")
    assert v.entry is not None and v.entry.model == "8851"


def test_unknown_cisco_model_from_path(catalog: Catalog) -> None:
    expect(catalog.evaluate_http("", "/7960-3PCC.xml"), Compliance.UNKNOWN_MODEL)


def test_nothing_to_go_on(catalog: Catalog) -> None:
    expect(catalog.evaluate_http(None, "/index.html"), Compliance.UNPARSEABLE)
    expect(catalog.evaluate_http("curl/8.5.0", "/index.html"), Compliance.UNKNOWN_VENDOR)
