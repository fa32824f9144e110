"""Spectralink: IP-DECT servers versus handsets, PCS release codes."""

from __future__ import annotations

import pytest
from fc_helpers import expect

from firmware_catalog import Catalog, Compliance
from firmware_catalog.vendors.spectralink import SpectralinkVersion


def test_server_row(catalog: Catalog) -> None:
    v = expect(
        catalog.evaluate("Spectralink IP-DECT Server 400 PCS22Ab_22125"), Compliance.SUPPORTED
    )
    assert v.entry is not None
    assert v.entry.model == "IP-DECT Server 400"
    assert v.entry.role == "dect-server" and "IP-DECT Server" in v.entry.remarks


def test_handset_row(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Spectralink 7742 PCS22B"), Compliance.SUPPORTED)
    assert v.entry is not None and v.entry.role == "handset" and "Handset" in v.entry.remarks


def test_server_and_handset_have_different_releases(catalog: Catalog) -> None:
    # The server release PCS22Ab is below the handset release PCS22B, and vice versa is fine:
    # each row is judged against its own code.
    expect(catalog.evaluate("Spectralink 7742 PCS22Ab"), Compliance.BELOW_MINIMUM)
    expect(catalog.evaluate("Spectralink IP-DECT Server 6500 PCS22B"), Compliance.SUPPORTED)


@pytest.mark.parametrize(
    "agent",
    [
        "Spectralink Virtual IP-DECT Server One PCS22Ab",
        "Spectralink IP-DECT Base Station PCS22Ab",
        "Spectralink-IP_DECT-Server-200/PCS22Ab",
        "KIRK IP-DECT Server 6500 PCS22Ab",
    ],
)
def test_server_forms(catalog: Catalog, agent: str) -> None:
    v = expect(catalog.evaluate(agent), Compliance.SUPPORTED)
    assert v.entry is not None and v.entry.role == "dect-server"


def test_old_handset_release_rejected(catalog: Catalog) -> None:
    v = expect(catalog.evaluate("Spectralink 7742 PCS21F"), Compliance.BELOW_MINIMUM)
    assert v.reason == "firmware PCS21F below minimum PCS22B for Spectralink 7742"


def test_unknown_handset(catalog: Catalog) -> None:
    expect(catalog.evaluate("Spectralink 8440 PCS22B"), Compliance.UNKNOWN_MODEL)


def test_garbled_release_is_unparseable(catalog: Catalog) -> None:
    expect(catalog.evaluate("Spectralink 7742 PCSxyz"), Compliance.UNPARSEABLE)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("PCS22A", "PCS22Ab"),
        ("PCS22Ab", "PCS22B"),
        ("PCS22B", "PCS22Ba"),
        ("PCS22Ba", "PCS23Ca"),
        ("PCS22Ab", "PCS22Ab_1"),
        ("PCS9Z", "PCS10A"),
    ],
)
def test_release_code_order(low: str, high: str) -> None:
    assert SpectralinkVersion.parse(low) < SpectralinkVersion.parse(high)
