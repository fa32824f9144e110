"""Digest authentication: RFC 2617 / RFC 7616 vectors, header syntax, stateless nonces."""

from __future__ import annotations

import base64

import pytest

from gateway.sip.digest import (
    DigestChallenge,
    DigestCredentials,
    DigestError,
    NonceFactory,
    NonceStatus,
    compute_ha1,
    compute_response,
    parse_auth_params,
    verify_response,
)

# RFC 7616 §3.9.1
RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE_MD5 = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_example(algorithm: str, expected: str) -> None:
    ha1 = compute_ha1("Mufasa", RFC7616_REALM, "Circle of Life", algorithm)
    got = compute_response(ha1, "GET", "/dir/index.html", RFC7616_NONCE, algorithm=algorithm,
                           qop="auth", nc=1, cnonce=RFC7616_CNONCE_MD5)
    assert got == expected
    header = (f'Digest username="Mufasa", realm="{RFC7616_REALM}", uri="/dir/index.html", '
              f'algorithm={algorithm}, nonce="{RFC7616_NONCE}", nc=00000001, '
              f'cnonce="{RFC7616_CNONCE_MD5}", qop=auth, response="{expected}", '
              f'opaque="{RFC7616_OPAQUE}"')
    creds = DigestCredentials.parse(header)
    assert creds.algorithm == algorithm and creds.nc == 1 and creds.opaque == RFC7616_OPAQUE
    assert verify_response(creds, ha1, "GET")
    assert not verify_response(creds, ha1, "POST")
    wrong = compute_ha1("Mufasa", RFC7616_REALM, "Circle of life", algorithm)
    assert not verify_response(creds, wrong, "GET")


def test_rfc2617_example() -> None:
    # RFC 2617 §3.5
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert compute_response(ha1, "GET", "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                            qop="auth", nc=1, cnonce="0a4f113b") == \
        "6629fae49393a05397450978507c4ef1"


def test_rfc2069_no_qop() -> None:
    ha1 = compute_ha1("alice", "r", "pw")
    resp = compute_response(ha1, "REGISTER", "sip:r", "abc")
    creds = DigestCredentials.parse(
        f'Digest username="alice",realm="r",nonce="abc",uri="sip:r",response="{resp}"')
    assert creds.qop is None and creds.nc is None and creds.algorithm == "MD5"
    assert verify_response(creds, ha1, "REGISTER")


def test_quoted_commas_and_escapes() -> None:
    scheme, p = parse_auth_params(
        'Digest  username="a\\"b, c",realm="x,y" ,  nonce=abc,, uri="sip:x;transport=tcp",'
        'response="00", algorithm=sha-256')
    assert scheme == "Digest"
    assert p["username"] == 'a"b, c' and p["realm"] == "x,y" and p["nonce"] == "abc"
    assert p["algorithm"] == "sha-256"
    creds = DigestCredentials.parse(
        'Digest username="a\\"b, c",realm="x,y",nonce=abc,uri="sip:x",response="00",'
        "algorithm=sha-256")
    assert creds.algorithm == "SHA-256"
    again = DigestCredentials.parse(str(creds))
    assert again == creds


@pytest.mark.parametrize("bad", [
    "",
    "Digest",  # no params is fine syntactically but lacks required fields
    'Digest username="a',
    'Digest username="a" realm="b"',
    'Digest username=, realm="b"',
    'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="r"',
    'Basic dXNlcjpwYXNz',
    'Digest username="a", realm="r", nonce="n", uri="u", response="r", algorithm=MD5-sess',
    'Digest username="a", realm="r", nonce="n", uri="u", response="r", qop=auth-int, '
    'nc=00000001, cnonce="c"',
    'Digest username="a", realm="r", nonce="n", uri="u", response="r", qop=auth, nc=1, cnonce="c"',
    'Digest username="a", realm="r", nonce="n", uri="u", response="r", qop=auth, nc=00000000, '
    'cnonce="c"',
    'Digest username="a", realm="r", nonce="n", uri="u", response="r", qop=auth, nc=00000001',
    "Digest " + ", ".join(f"p{i}=x" for i in range(40)),
    'Digest username="\r\n"',
])
def test_bad_credentials_raise_digest_error(bad: str) -> None:
    with pytest.raises(DigestError):
        DigestCredentials.parse(bad)


def test_challenge_roundtrip() -> None:
    ch = DigestChallenge(realm="gw.example", nonce="n0", algorithm="SHA-256", stale=True)
    text = str(ch)
    assert text.startswith('Digest realm="gw.example", nonce="n0", stale=true, algorithm=SHA-256')
    assert DigestChallenge.parse(text) == ch


def test_nonce_valid_stale_invalid() -> None:
    f = NonceFactory([b"k" * 32], "gw.example", ttl=300)
    n = f.issue(1000.0)
    assert f.check(n, 1000.0).status is NonceStatus.VALID
    assert f.check(n, 1299.0).status is NonceStatus.VALID
    c = f.check(n, 1301.0)
    assert c.status is NonceStatus.STALE and c.issued == pytest.approx(1000.0)
    # another node with the same secret verifies it; another realm or secret does not
    assert NonceFactory([b"k" * 32], "gw.example", 300).check(n, 1001).status is NonceStatus.VALID
    assert NonceFactory([b"k" * 32], "other", 300).check(n, 1001).status is NonceStatus.INVALID
    assert NonceFactory([b"z" * 32], "gw.example", 300).check(n, 1001).status \
        is NonceStatus.INVALID
    # rotation: the old secret still verifies while listed second
    rotated = NonceFactory([b"z" * 32, b"k" * 32], "gw.example", 300)
    assert rotated.check(n, 1001).status is NonceStatus.VALID
    # from the future (beyond skew) is invalid
    assert f.check(n, 990.0).status is NonceStatus.INVALID


def test_nonce_tampering_detected() -> None:
    f = NonceFactory([b"k" * 32], "gw.example", ttl=300)
    n = f.issue(1000.0, random_bytes=b"\x00" * 12)
    raw = bytearray(base64.urlsafe_b64decode(n))
    raw[0] ^= 0x01  # move the timestamp
    forged = base64.urlsafe_b64encode(bytes(raw)).decode()
    assert f.check(forged, 1000.0).status is NonceStatus.INVALID
    for junk in ("", "x" * 48, "!" * 48, n[:-1], n + "A", "\u00e9" * 48):
        assert f.check(junk, 1000.0).status is NonceStatus.INVALID
    assert f.issue(1000.0) != f.issue(1000.0)


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError):
        NonceFactory([b"short"], "r", 10)
