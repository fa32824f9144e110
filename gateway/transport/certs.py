"""TLS material for SIP over TLS (RFC 3261 §26.2.1, RFC 5922 server identity).

``TlsFiles`` names PEM files; ``ensure_dev_certificate`` creates, on first use,
a private development CA and a server certificate for localhost, 127.0.0.1 and
::1 in the data directory (private keys mode 0600) and reuses them afterwards,
so a fresh checkout can serve ``sips:`` on loopback with no setup. Production
deployments point ``TlsFiles`` at real certificates instead.
"""

from __future__ import annotations

import datetime
import ipaddress
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from gateway.state.secrets import write_private

DEV_NAMES = ("localhost",)
DEV_ADDRESSES = ("127.0.0.1", "::1")
# Reissue the development certificate this long before it expires.
_RENEW_MARGIN = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a TLS endpoint: ``cert`` (leaf first, then any chain), ``key``, optional ``ca``.

    ``ca`` is the trust root for connections the gateway opens (RFC 5922 §7);
    without it the platform's trust store is used.
    """

    cert: Path
    key: Path
    ca: Path | None = None



def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _usable(cert_path: Path, key_path: Path, now: datetime.datetime) -> bool:
    if not cert_path.is_file() or not key_path.is_file():
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        return False
    if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return False
    return cert.not_valid_after_utc - _RENEW_MARGIN > now


def ensure_dev_certificate(data_dir: Path | str) -> TlsFiles:
    """Development CA + server certificate for localhost/127.0.0.1/::1 under ``data_dir/tls``.

    Created on first use with ``cryptography`` (ECDSA P-256); later calls reuse
    the files while they are valid and match their keys. Not for production:
    the CA key sits next to the certificates.
    """
    tls_dir = Path(data_dir) / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert_path, ca_key_path = tls_dir / "dev-ca.crt", tls_dir / "dev-ca.key"
    cert_path, key_path = tls_dir / "dev-server.crt", tls_dir / "dev-server.key"
    files = TlsFiles(cert=cert_path, key=key_path, ca=ca_cert_path)
    now = datetime.datetime.now(datetime.UTC)

    if _usable(ca_cert_path, ca_key_path, now):
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not an EC key; delete it to regenerate")
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sipgw development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "sipgw development CA"),
        ])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write_private(ca_key_path, _key_pem(ca_key), 0o600)
        write_private(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        cert_path.unlink(missing_ok=True)  # a new CA invalidates the old server certificate

    if _usable(cert_path, key_path, now) and _issued_by(cert_path, ca_cert):
        return files

    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in DEV_NAMES]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in DEV_ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sipgw development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        # clientAuth too: the same pair serves as the client certificate of test peers (SIPp).
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key), 0o600)
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _issued_by(cert_path: Path, ca_cert: x509.Certificate) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # InvalidSignature, ValueError, OSError: any of them means reissue
        return False
    return True


def _load_chain(path: Path) -> list[crypto.X509]:
    pems = x509.load_pem_x509_certificates(path.read_bytes())
    if not pems:
        raise ValueError(f"{path}: no PEM certificate found")
    return [crypto.X509.from_cryptography(c) for c in pems]


def server_tls_options(tls: TlsFiles) -> ssl.CertificateOptions:
    """Server-side TLS context (TLS 1.2+) presenting ``tls.cert`` with its chain.

    Client certificates are not requested: desk phones authenticate with SIP
    digest over the TLS channel (RFC 3261 §26.3.2.2).
    """
    chain = _load_chain(tls.cert)
    key = crypto.PKey.from_cryptography_key(
        serialization.load_pem_private_key(tls.key.read_bytes(), password=None))  # type: ignore[arg-type]  # only EC/RSA/DSA keys are valid TLS keys; pyOpenSSL checks at runtime
    with warnings.catch_warnings():
        # Twisted hands pyOpenSSL X509/PKey objects to the Context, which pyOpenSSL 24.3+
        # deprecates in favour of cryptography's; nothing to act on here.
        warnings.filterwarnings("ignore", "Passing pyOpenSSL (X509|PKey) objects is deprecated",
                                DeprecationWarning)
        options = ssl.CertificateOptions(
            privateKey=key, certificate=chain[0], extraCertChain=chain[1:] or None,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        options.getContext()  # built now, inside the filter (it is built once, lazily)
    return options


def client_tls_options(tls: TlsFiles | None, hostname: str) -> IOpenSSLClientConnectionCreator:
    """Client-side TLS for connections the gateway opens: verify the server as ``hostname``
    (a DNS name or an IP address, RFC 5922 §7.2) against ``tls.ca`` or the platform trust."""
    trust: Any
    if tls is not None and tls.ca is not None:
        trust = ssl.trustRootFromCertificates(  # type: ignore[no-untyped-call]  # untyped API
            [ssl.Certificate(c) for c in _load_chain(tls.ca)])  # type: ignore[no-untyped-call]
    else:
        trust = ssl.platformTrust()  # type: ignore[no-untyped-call]  # untyped Twisted API
    creator: IOpenSSLClientConnectionCreator = ssl.optionsForClientTLS(hostname, trustRoot=trust)
    return creator
