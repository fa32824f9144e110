"""Assertion helper shared by the firmware catalog tests."""

from __future__ import annotations

from firmware_catalog import Compliance, Verdict


def expect(verdict: Verdict, compliance: Compliance) -> Verdict:
    """Assert the compliance (showing the reason on failure) and the derived flags."""
    assert verdict.compliance is compliance, verdict.reason
    assert verdict.admitted is compliance.admitted
    assert verdict.flagged is (compliance is Compliance.BELOW_APPROVED)
    return verdict
