"""Development TLS material (RFC 5922 identities) and the /metrics endpoint resource."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from prometheus_client import CollectorRegistry
from twisted.web.test.requesthelper import DummyRequest

from gateway.ops.metrics import MetricsResource, SipMetrics
from gateway.transport import ensure_dev_certificate, server_tls_options


def test_dev_certificate_created_private_and_reused(tmp_path: Path) -> None:
    files = ensure_dev_certificate(tmp_path)
    assert files.ca is not None
    for key in (files.key, tmp_path / "tls" / "dev-ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca.read_bytes()))
    before = files.cert.read_bytes(), files.key.read_bytes()
    assert ensure_dev_certificate(tmp_path) == files
    assert (files.cert.read_bytes(), files.key.read_bytes()) == before, "reused, not reissued"
    server_tls_options(files).getContext()


def test_mismatched_key_is_reissued(tmp_path: Path) -> None:
    files = ensure_dev_certificate(tmp_path)
    old = files.cert.read_bytes()
    files.key.write_bytes((tmp_path / "tls" / "dev-ca.key").read_bytes())
    ensure_dev_certificate(tmp_path)
    assert files.cert.read_bytes() != old
    server_tls_options(files).getContext()


def test_metrics_resource_serves_only_metrics() -> None:
    registry = CollectorRegistry()
    SipMetrics(registry).request_received("UDP", "OPTIONS")
    res = MetricsResource(registry)
    req = DummyRequest([b"metrics"])
    req.path = b"/metrics"
    body = res.render_GET(req)
    assert b'sip_messages_received_total{kind="request",method="OPTIONS"' in body
    other = DummyRequest([b"x"])
    other.path = b"/x"
    res.render_GET(other)
    assert other.responseCode == 404
