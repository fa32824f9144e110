"""Counts gathered by a Tally reach /metrics at every scrape, once each."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from gateway.ops.metrics import SipMetrics


def _line(text: bytes, prefix: str) -> str:
    return next(line for line in text.decode().splitlines() if line.startswith(prefix))


def test_scrapes_see_every_datagram_once() -> None:
    registry = CollectorRegistry()
    m = SipMetrics(registry)
    for _ in range(3):
        m.raw_received("UDP", b"REGISTER sip:example.com SIP/2.0\r\n\r\n")
    m.raw_sent("UDP", b"SIP/2.0 401 Unauthorized\r\n\r\n")
    key = 'sip_messages_received_total{kind="request",method="REGISTER",status="",transport="UDP"}'
    assert _line(generate_latest(registry), key).endswith(" 3.0")
    assert _line(generate_latest(registry), key).endswith(" 3.0")  # not added twice
    m.raw_received("UDP", b"REGISTER sip:example.com SIP/2.0\r\n\r\n")
    assert m.sample("sip_messages_received_total", {
        "kind": "request", "method": "REGISTER", "status": "", "transport": "UDP"}) == 4
    assert m.sample("sip_messages_sent_total", {
        "kind": "response", "method": "", "status": "401", "transport": "UDP"}) == 1
