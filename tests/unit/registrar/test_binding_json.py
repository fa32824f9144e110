"""Binding's hand-written JSON form stays complete and round-trips (no Redis needed)."""

from __future__ import annotations

import dataclasses
import json

from gateway.registrar.bindings import Binding


def _full() -> Binding:
    return Binding(key="ob:<urn:uuid:1>:1", aor="sip:a@example.com", contact="<sip:a@192.0.2.1>",
                   uri="sip:a@192.0.2.1", expires=1700000000.25, q=0.5, call_id="c@h", cseq=7,
                   instance="<urn:uuid:1>", reg_id=1, outbound=True, path=("<sip:p;lr;ob>",),
                   transport="TCP", host="192.0.2.1", port=5060, flow="tcp-3", node_id="n1",
                   user_agent='UA "quoted" \\ back', device_id="0015aa", registered=1.5)


def test_to_json_names_every_field() -> None:
    names = [f.name for f in dataclasses.fields(Binding)]
    assert list(json.loads(_full().to_json())) == names


def test_json_round_trip() -> None:
    for b in (_full(), Binding(key="uri:sip:b@h", aor="sip:b@h", contact="<sip:b@h>",
                               uri="sip:b@h", expires=2.0)):
        assert Binding.from_json(b.to_json()) == b


def test_to_json_is_what_the_json_encoder_writes() -> None:
    enc = json.JSONEncoder(separators=(",", ":")).encode
    for b in (_full(), Binding(key="uri:sip:b@h", aor="sip:b@h", contact="<sip:b@h>",
                               uri="sip:b@h", expires=2.0),
              dataclasses.replace(_full(), user_agent="caf\u00e9 \u2603 \x01", q=1.0,
                                  path=("<sip:p1;lr>", "<sip:p2;lr>"))):
        assert b.to_json() == enc({f.name: (list(getattr(b, f.name)) if f.name == "path"
                                            else getattr(b, f.name))
                                   for f in dataclasses.fields(Binding)})
