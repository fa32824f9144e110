"""Hostile input never breaks the catalog; version orders are orders."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_catalog import AGENT_MAX, Catalog, Compliance, load_catalog
from firmware_catalog.vendors.audiocodes import AudioCodesVersion
from firmware_catalog.vendors.cisco import CiscoVersion
from firmware_catalog.vendors.poly import PolyVersion
from firmware_catalog.vendors.spectralink import SpectralinkVersion
from firmware_catalog.vendors.yealink import YealinkVersion

CATALOG = load_catalog()
REAL = [
    "Cisco-CP-8851-3PCC/11.3.7_MPP_0001",
    "PolycomVVX-VVX_410-UA/5.9.4.1234",
    "Yealink SIP-T57W 96.86.5.1 80:5e:XX:XX:dc:69",
    "AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F602AAC)",
    "Spectralink IP-DECT Server 400 PCS22Ab",
]
VENDOR_WORDS = [
    "Cisco-CP-",
    "Polycom",
    "Poly",
    "Yealink SIP-",
    "AUDC-IPPhone",
    "Spectralink ",
    "KIRK",
]
agent_text = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.one_of(
            st.sampled_from(VENDOR_WORDS + REAL),
            st.text(max_size=12),
            st.from_regex(r"[\d.]{1,20}"),
        ),
        max_size=12,
    ).map("".join),
    st.sampled_from(REAL).flatmap(
        lambda ua: st.integers(0, len(ua)).map(lambda i: ua[:i] + '\x00"\\\u00e9' + ua[i:])
    ),
)


def check_verdict(v: object) -> None:
    from firmware_catalog import Verdict

    assert isinstance(v, Verdict)
    assert v.reason and v.reason.isascii() and '"' not in v.reason and "\\" not in v.reason
    assert all(32 <= ord(c) < 127 for c in v.reason)
    assert v.admitted == (v.compliance in (Compliance.SUPPORTED, Compliance.BELOW_APPROVED))
    if v.flagged:
        assert v.upgrade_to


@settings(max_examples=600, deadline=None)
@given(agent_text)
def test_evaluate_never_raises(agent: str) -> None:
    check_verdict(CATALOG.evaluate(agent))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), agent_text), st.one_of(st.none(), st.text(max_size=200)))
def test_evaluate_http_never_raises(agent: str | None, path: str | None) -> None:
    check_verdict(CATALOG.evaluate_http(agent, path))


def test_overlong_agent_refused_before_parsing() -> None:
    v = CATALOG.evaluate("Yealink SIP-T46S 66.85.0.5 " + "9." * AGENT_MAX)
    assert v.compliance is Compliance.UNPARSEABLE


def test_evaluate_is_fast_on_hostile_text() -> None:
    fresh = Catalog(CATALOG.entries, CATALOG.vendors.values())  # no memo carried over
    hostile = [
        "Cisco-" + "CP-" * 150,
        "Yealink " + "SIP-" * 120,
        "AUDC-IPPhone/" + "1." * 240 + "(",
        "Spectralink " + "IP-DECT " * 60,
        "PolycomVVX-" + "VVX_" * 120,
        "Poly" + " Rove" * 100,
    ]
    agents = hostile + [f"{ua} {n}" for ua in REAL for n in range(200)]
    start = time.perf_counter()
    for agent in agents:
        fresh.evaluate(agent[:AGENT_MAX])
    per_call = (time.perf_counter() - start) / len(agents)
    assert per_call < 0.001, f"{per_call * 1e6:.0f} us per uncached evaluate"


numbers = st.lists(st.integers(0, 9999), min_size=1, max_size=5)
cisco = st.tuples(numbers, st.sampled_from(["", "MPP"]), st.sampled_from(["", "0101-013"])).map(
    lambda t: ".".join(map(str, t[0])) + (t[1] + (t[2] if t[1] else ""))
)
poly = numbers.map(lambda n: ".".join(map(str, n)))
yealink = st.lists(st.integers(0, 999), min_size=2, max_size=5).map(lambda n: ".".join(map(str, n)))
audiocodes = st.tuples(numbers, st.sampled_from(["", "_build_7"])).map(
    lambda t: ".".join(map(str, t[0])) + t[1]
)
spectralink = st.from_regex(r"PCS[0-9]{1,3}[A-Z][a-z]{0,2}(_[0-9]{1,4})?", fullmatch=True)
SCHEMES = [
    (cisco, CiscoVersion.parse),
    (poly, PolyVersion.parse),
    (yealink, YealinkVersion.parse),
    (audiocodes, AudioCodesVersion.parse),
    (spectralink, SpectralinkVersion.parse),
]


@settings(max_examples=300)
@given(st.data())
def test_version_orders_are_total_orders(data: st.DataObject) -> None:
    strategy, parse = data.draw(st.sampled_from(SCHEMES))
    a, b, c = (parse(data.draw(strategy)) for _ in range(3))
    assert a <= a and a == a  # reflexive
    if a <= b and b <= a:  # antisymmetric
        assert a == b
    assert (a < b) + (a == b) + (b < a) == 1  # total, exactly one holds
    if a <= b and b <= c:  # transitive
        assert a <= c
    assert parse(str(a)) == a


@given(st.lists(st.integers(0, 9999), min_size=1, max_size=4).map(lambda n: ".".join(map(str, n))))
def test_trailing_zero_fields_do_not_change_a_version(text: str) -> None:
    assert PolyVersion.parse(text) == PolyVersion.parse(text + ".0.0")
