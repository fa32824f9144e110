"""Dialled strings to targets: feature codes, emergency numbers, E.164."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.b2bua.dialplan import DialPlan, Feature, TargetKind

PLAN = DialPlan()


@pytest.mark.parametrize("dialled,kind,value,feature", [
    ("911", TargetKind.EMERGENCY, "911", None),
    ("112", TargetKind.EMERGENCY, "112", None),
    ("*30*", TargetKind.FEATURE, "", Feature.DND_ON),
    ("*31*", TargetKind.FEATURE, "", Feature.DND_OFF),
    ("*33*+14255550100", TargetKind.FEATURE, "+14255550100", Feature.FORWARD_ALWAYS),
    ("*55*123456", TargetKind.FEATURE, "123456", Feature.ENROLL),
    ("*99*", TargetKind.FEATURE, "", Feature.VOICEMAIL),
    ("*77*", TargetKind.FEATURE, "", Feature.SIGN_IN),
    ("*78*", TargetKind.FEATURE, "", Feature.SIGN_OUT),
    ("+14255550101", TargetKind.NUMBER, "+14255550101", None),
    ("4255550101", TargetKind.NUMBER, "+14255550101", None),
    ("14255550101", TargetKind.NUMBER, "+14255550101", None),
    ("0044201234567", TargetKind.NUMBER, "+44201234567", None),
    ("011442071234567", TargetKind.NUMBER, "+442071234567", None),
    ("(425) 555-0101", TargetKind.NUMBER, "+14255550101", None),
    ("*42*", TargetKind.INVALID, "*42*", None),
    ("bob", TargetKind.INVALID, "bob", None),
    ("", TargetKind.INVALID, "", None),
])
def test_classify(dialled: str, kind: TargetKind, value: str, feature: Feature | None) -> None:
    t = PLAN.classify(dialled)
    assert (t.kind, t.value, t.feature) == (kind, value, feature)


@given(st.text(max_size=40))
def test_classify_never_raises(text: str) -> None:
    assert PLAN.classify(text).kind in TargetKind
