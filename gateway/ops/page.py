"""``GET /ops``: one server-rendered HTML page of what the gateway sees (no JavaScript).

Sections: devices (vendor, model, firmware and its compliance verdict, with
the approved version beside a non-compliant one), pairing and enrollment state
with the last transition reasons, live registrations (source address,
transport, owning node, User-Agent, time left) and failed-authentication
blocks. Device data comes from the network (User-Agents, models, usernames):
every value goes through ``html.escape`` and the page sends a
Content-Security-Policy that forbids scripts, as a second fence.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.registrar.bindings import Binding, BindingStore
from gateway.registrar.devices import Device
from gateway.state import keys

MAX_DEVICES = 500
MAX_BLOCKS = 200
CSP = b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}.bad{color:#a00;font-weight:bold}.warn{color:#a60}.ok{color:#070}
small{color:#666}
"""


def esc(value: Any) -> str:
    """Text for HTML (element content and quoted attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _ago(now: float, t: float) -> str:
    if not t:
        return "never"
    s = int(now - t)
    if s < 0:
        return "just now"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else ""


def firmware_cell(dev: Device) -> str:
    fw = dev.firmware
    version = esc(fw.firmware or "?")
    if not fw.checked:
        return f"{version} <small>(not registered yet)</small>"
    if not fw.admitted:
        return (f'<span class="bad">{version}: rejected</span> '
                f"<small>{esc(fw.reason)}</small>")
    if fw.flagged:
        approved = f"; approved {esc(fw.upgrade_to)}" if fw.upgrade_to else ""
        return (f'<span class="warn">{version}: non-compliant{approved}</span> '
                f"<small>{esc(fw.reason)}</small>")
    return f'<span class="ok">{version}: {esc(fw.compliance or "compliant")}</span>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}"><small>{esc(empty)}</small></td></tr>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


async def _pairing_records(redis: Any, device_ids: Sequence[str]) -> dict[str, Any]:
    try:
        from gateway.identity.pairing import PairingStore
    except ImportError:
        return {}
    store = PairingStore(redis)
    out: dict[str, Any] = {}
    for d in device_ids:
        try:
            out[d] = await store.get(d)
        except (ValueError, KeyError):
            continue  # an unreadable record is shown as the device state alone
    return out


def _pairing_cell(dev: Device, record: Any, enrollment: Any) -> str:
    state = record.state.value if record is not None else dev.state
    parts = [f"<b>{esc(state)}</b>"]
    if dev.user:
        parts.append(f"user {esc(dev.user)}")
    if record is not None and getattr(record, "upn", ""):
        parts.append(esc(record.upn))
    if enrollment is not None and state != "paired":
        parts.append(f'<span class="warn">{esc(enrollment.state.label)}</span>')
    history = list(getattr(record, "history", ()) or ())[:3]
    if history:
        items = "".join(
            f"<li>{esc(_when(t.at))}: {esc(t.from_state.value)} &rarr; "
            f"{esc(t.to_state.value)}: {esc(t.reason)}</li>" for t in history)
        parts.append(f"<ul>{items}</ul>")
    return "<br>".join(parts)


def _binding_row(dev: Device | None, b: Binding, now: float) -> list[str]:
    name = esc(dev.device_id) if dev is not None else esc(b.device_id or "?")
    source = f"{esc(b.transport)} {esc(b.host)}:{esc(b.port)}"
    return [name, esc(b.aor), source, esc(b.node_id), esc(b.user_agent),
            esc(f"{b.remaining(now)} s"), esc(b.contact)]


async def _blocks(redis: Any) -> tuple[list[list[str]], int]:
    rows: list[list[str]] = []
    async for key in redis.scan_iter(match=keys.block_pattern("src"), count=500):
        if len(rows) >= MAX_BLOCKS:
            break
        pipe = redis.pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        ip, ttl = await pipe.execute()
        if ip is None:
            continue
        rows.append([esc(ip.decode("utf-8", "replace")), esc(f"{int(ttl)} s")])
    accounts = 0
    async for _ in redis.scan_iter(match=keys.block_pattern("acct"), count=500):
        accounts += 1
    return rows, accounts


async def render_ops_page(gateway: Any, *, enrollment: Any = None,
                          now: float | None = None) -> bytes:
    """The ops page for ``gateway`` (needs .redis, .devices, .node_id, .listening)."""
    now = time.time() if now is None else now
    redis = gateway.redis
    devices: list[Device] = (await gateway.devices.list())[:MAX_DEVICES]
    ids = [d.device_id for d in devices]
    records = await _pairing_records(redis, ids)
    enrolled = await enrollment.get_many(ids) if enrollment is not None else {}
    by_aor = await BindingStore(redis).get_many([d.aor for d in devices], now)
    device_rows = []
    reg_rows = []
    for d in devices:
        live = by_aor.get(d.aor, [])
        device_rows.append([
            esc(d.device_id), esc(d.vendor), esc(d.model), esc(d.tenant), firmware_cell(d),
            _pairing_cell(d, records.get(d.device_id), enrolled.get(d.device_id)),
            f'<span class="{"ok" if live else "warn"}">{len(live)}</span>',
            esc(_ago(now, d.last_seen))])
        reg_rows.extend(_binding_row(d, b, now) for b in live)
    block_rows, account_blocks = await _blocks(redis)
    listening = "".join(f"<li>{esc(x)}</li>" for x in getattr(gateway, "listening", []))
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>sipgw ops: {esc(gateway.node_id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>sipgw node {esc(gateway.node_id)}</h1>",
        f"<p><small>rendered {esc(_when(now))}</small></p><ul>{listening}</ul>",
        f"<h2>Devices ({len(devices)})</h2>",
        _table(["device", "vendor", "model", "tenant", "firmware", "pairing",
                "registrations", "last seen"], device_rows, "no devices"),
        f"<h2>Live registrations ({len(reg_rows)})</h2>",
        _table(["device", "AOR", "source", "node", "User-Agent", "expires in", "contact"],
               reg_rows, "no live registrations"),
        f"<h2>Failed-authentication blocks ({len(block_rows)} sources, "
        f"{account_blocks} accounts)</h2>",
        _table(["source address", "lifted in"], block_rows, "no blocked sources"),
        "</body></html>",
    ]
    return "".join(parts).encode("utf-8")
