"""Lab clients: the operator's User-Agent prefixes are admitted and flagged; the table
still judges everything else, including a UA that merely contains a prefix."""

from __future__ import annotations

from firmware_catalog import Compliance, load_catalog
from firmware_catalog.lab import LabClients


def test_configured_prefix_is_admitted_flagged_and_not_e911() -> None:
    cat = LabClients(load_catalog(), ["baresip "])
    v = cat.evaluate("baresip v1.0.0 (x86_64/linux)")
    assert v.compliance is Compliance.LAB_CLIENT
    assert v.admitted and v.flagged and not v.e911 and v.upgrade_to is None
    assert "lab client" in v.reason and v.device is not None and v.device.vendor == "lab"


def test_table_still_judges_everything_else() -> None:
    cat = LabClients(load_catalog(), ["baresip "])
    assert cat.evaluate("Linphone/5.0").compliance is Compliance.UNKNOWN_VENDOR
    # a prefix, not a substring: a header that mentions baresip later is not a lab client
    assert cat.evaluate("Evil baresip v1").compliance is Compliance.UNKNOWN_VENDOR
    ok = cat.evaluate("Yealink SIP-T54W 96.86.0.100")
    assert ok.compliance is Compliance.SUPPORTED and not ok.flagged
    assert cat.lookup("Yealink", "T54W") is not None  # the table's other answers pass through


def test_without_prefixes_baresip_is_rejected() -> None:
    v = LabClients(load_catalog(), [" ", ""]).evaluate("baresip v1.0.0 (x86_64/linux)")
    assert not v.admitted and v.compliance is Compliance.UNKNOWN_VENDOR
