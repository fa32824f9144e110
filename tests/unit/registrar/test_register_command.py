"""The register script's EVALSHA, packed in pieces with the unchanging runs kept, must be
byte for byte the whole argument list packed at once (gateway/registrar/bindings.py)."""

from __future__ import annotations

import dataclasses

import hypothesis.strategies as st
import redis.asyncio as aioredis
from hypothesis import given, settings

from gateway.registrar.bindings import Binding, BindingOp, BindingStore, RegisterUpdate
from gateway.registrar.guard import GuardConfig
from gateway.state.pipe import _pack

NOW = 1_800_000_000.25
GUARD = GuardConfig()


def _whole(store: BindingStore, u: RegisterUpdate, now: float, g: GuardConfig,
           max_bindings: int = 10) -> bytes:
    ks, args = store._apply_args(u, now, max_bindings, g)
    return _pack(("EVALSHA", store._register_sha, len(ks), *ks, *args))


def _binding(key: str, ua: str, expires: float) -> Binding:
    return Binding(key=key, aor="sip:alice@example.com", contact=f"<{key[4:]}>",
                   uri=key[4:], expires=expires, q=0.5, call_id="c@h", cseq=7,
                   host="192.0.2.1", port=5060, node_id="n1", user_agent=ua, device_id="d1")


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(user=text, ip=text, call_id=text, ua=text, nonce=text, cseq=st.integers(0, 2**31),
       nc=st.integers(0, 2**32), ops=st.integers(0, 3), remove=st.booleans(),
       wildcard=st.booleans(), apply=st.booleans(), fields=st.integers(0, 4),
       later=st.floats(0, 100_000), rate_window=st.integers(1, 600))
def test_pieces_equal_the_whole(user: str, ip: str, call_id: str, ua: str, nonce: str,
                                cseq: int, nc: int, ops: int, remove: bool, wildcard: bool,
                                apply: bool, fields: int, later: float,
                                rate_window: int) -> None:
    store = BindingStore(aioredis.Redis())  # never connects: only packs
    g = dataclasses.replace(GUARD, rate_window=rate_window)
    u = RegisterUpdate(
        aor=f"sip:{user}@example.com", device_id=f"dev-{user}", username=user,
        call_id=call_id, cseq=cseq, nonce=nonce, nc=nc, source_ip=ip, wildcard=wildcard,
        apply=apply, ha1_field="ha1_md5", ha1="0" * 32,
        device_fields={f"fw_{i}": f"{ua}{i}" for i in range(fields)},
        ops=tuple(BindingOp(f"uri:sip:{user}@h{i}", None if remove and i == 0 else
                            _binding(f"uri:sip:{user}@h{i}", ua, NOW + 60 * i))
                  for i in range(ops)))
    for now in (NOW, NOW + 1, NOW + later):  # kept pieces reused, and a new rate window
        assert store._packed_apply(u, now, 10, g) == _whole(store, u, now, g)
    # anything a kept piece holds changes: another piece, never the kept one
    for other in (dataclasses.replace(u, source_ip=ip + "x"),
                  dataclasses.replace(u, username=user + "x"),
                  dataclasses.replace(u, aor=u.aor + "x", device_id=u.device_id + "x"),
                  dataclasses.replace(u, apply=not apply),
                  dataclasses.replace(u, ha1="1" * 32),
                  dataclasses.replace(u, ha1_field="ha1_sha256"),
                  dataclasses.replace(u, device_fields={"fw_x": "y", **u.device_fields})):
        assert store._packed_apply(other, NOW, 10, g) == _whole(store, other, NOW, g)
    assert store._packed_apply(u, NOW, 3, g) == _whole(store, u, NOW, g, 3)
    assert store._packed_apply(u, NOW, 10, GUARD) == _whole(store, u, NOW, GUARD)
