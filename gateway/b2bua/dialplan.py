"""What a dialled string means: feature code, emergency number, user, PSTN number.

Feature codes are the Teams SIP Gateway ones (star-wrapped, dialled as a normal
INVITE): ``*30*`` set DND, ``*31*`` clear DND, ``*32*`` reset forwarding,
``*33*<number>`` forward always, ``*34*<number>`` forward on timeout, ``*35*``
simultaneous ring, ``*55*<code>`` enrollment, ``*99*`` voicemail; plus the
sign-in and sign-out codes, which are configurable.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection
from dataclasses import dataclass

_VISUAL_SEPARATORS = re.compile(r"[\s\-.()]")
_DIGITS = re.compile(r"^\+?[0-9]{2,20}$")
_FEATURE = re.compile(r"^\*(\d{2})\*([0-9#*+]*)$")


class TargetKind(enum.Enum):
    FEATURE = "feature"
    EMERGENCY = "emergency"
    NUMBER = "number"  # E.164 or dialled digits: a user's number or PSTN (backend decides)
    INVALID = "invalid"


class Feature(enum.Enum):
    DND_ON = "30"
    DND_OFF = "31"
    FORWARD_RESET = "32"
    FORWARD_ALWAYS = "33"
    FORWARD_TIMEOUT = "34"
    SIMUL_RING = "35"
    ENROLL = "55"
    VOICEMAIL = "99"
    SIGN_IN = "sign-in"
    SIGN_OUT = "sign-out"


@dataclass(frozen=True)
class DialTarget:
    kind: TargetKind
    value: str  # normalised number, or the feature argument
    feature: Feature | None = None


@dataclass(frozen=True)
class DialPlan:
    """Normalisation rules for what phones dial (national to E.164 with a default country)."""

    emergency_numbers: Collection[str] = ("911", "112", "999", "933")
    country_code: str = "1"  # for national numbers without '+'
    national_length: int = 10
    international_prefix: str = "011"
    sign_in_code: str = "*77*"
    sign_out_code: str = "*78*"

    def classify(self, dialled: str | None) -> DialTarget:
        if not dialled:
            return DialTarget(TargetKind.INVALID, "")
        text = _VISUAL_SEPARATORS.sub("", dialled)
        if text in self.emergency_numbers:
            return DialTarget(TargetKind.EMERGENCY, text)
        if text == self.sign_in_code:
            return DialTarget(TargetKind.FEATURE, "", Feature.SIGN_IN)
        if text == self.sign_out_code:
            return DialTarget(TargetKind.FEATURE, "", Feature.SIGN_OUT)
        m = _FEATURE.match(text)
        if m:
            try:
                feature = Feature(m.group(1))
            except ValueError:
                return DialTarget(TargetKind.INVALID, text)
            return DialTarget(TargetKind.FEATURE, m.group(2), feature)
        if not _DIGITS.match(text):
            return DialTarget(TargetKind.INVALID, text)
        return DialTarget(TargetKind.NUMBER, self.to_e164(text))

    def to_e164(self, digits: str) -> str:
        if digits.startswith("+"):
            return digits
        if digits.startswith("00"):
            return "+" + digits[2:]
        if self.international_prefix and digits.startswith(self.international_prefix):
            return "+" + digits[len(self.international_prefix):]
        if len(digits) == self.national_length:
            return f"+{self.country_code}{digits}"
        if len(digits) == self.national_length + 1 and digits.startswith(self.country_code):
            return "+" + digits
        return digits  # short codes / extensions are passed through as dialled
