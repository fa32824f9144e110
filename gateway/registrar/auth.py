"""The registrar's digest authenticator (RFC 3261 §22.4, RFC 7616, RFC 8760).

Wraps the sans-I/O digest module with the gateway's realm, nonce secret and
policy: both algorithms challenged, the same challenge for everyone (the
nonce does not depend on the user), and a dummy HA1 so that an unknown user
costs the same hashing as a known one.

Which algorithms are challenged is the operator's choice (RFC 8760 §2.4: in
order of preference, one ``WWW-Authenticate`` each); the default is MD5 alone.
Deployed clients break on anything else: libre/baresip 1.0 fails the whole
registration ("Function not implemented") when any challenge names an
algorithm it lacks, and SIPp 3.6 reads only the first challenge and knows
only MD5. Both HA1s are always provisioned, so a fleet that speaks SHA-256
turns it on with ``algorithms=("SHA-256", "MD5")`` without re-provisioning;
an answer using SHA-256 is accepted even when only MD5 was offered.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.sip.digest import (
    ALGORITHMS,
    DigestChallenge,
    DigestCredentials,
    DigestError,
    NonceCheck,
    NonceFactory,
    NonceStatus,
    compute_ha1,
    verify_response,
)
from gateway.sip.message import SipRequest

# Challenged by default; see the module docstring for why SHA-256 is opt-in.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("MD5",)


class AuthStatus(enum.Enum):
    NONE = "none"  # no usable credentials for our realm: challenge
    BAD_NONCE = "bad_nonce"  # not a nonce of ours: challenge afresh (not counted)
    OK = "ok"
    STALE = "stale"  # right password, old nonce: challenge with stale=true
    FAILED = "failed"  # wrong password or unknown user (indistinguishable)


@dataclass(frozen=True, slots=True)
class AuthResult:
    status: AuthStatus
    credentials: DigestCredentials | None = None


class DigestAuthenticator:
    """Challenges and verifies REGISTER digests for one realm."""

    def __init__(self, realm: str, secrets: list[bytes], nonce_ttl: float,
                 *, allow_no_qop: bool = True,
                 algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS) -> None:
        if not algorithms or any(a not in ALGORITHMS for a in algorithms):
            raise ValueError(f"digest algorithms must be among {sorted(ALGORITHMS)}")
        self.realm = realm
        self.nonces = NonceFactory(secrets, realm, nonce_ttl)
        self.nonce_ttl = nonce_ttl
        self.allow_no_qop = allow_no_qop
        self.algorithms = tuple(algorithms)
        self._dummy = {alg: compute_ha1("\x00nobody", realm, "\x00", alg)
                       for alg in ALGORITHMS}
        # The challenge text around the nonce never changes: format it once.
        self._templates = {
            stale: [str(DigestChallenge(realm=realm, nonce="\x00", algorithm=alg, stale=stale))
                    .split("\x00") for alg in self.algorithms]
            for stale in (False, True)}

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` values in preference order (RFC 8760 §2.4), one shared nonce."""
        nonce = self.nonces.issue(now)
        return [head + nonce + tail for head, tail in self._templates[stale]]

    def credentials(self, request: SipRequest) -> DigestCredentials | None:
        """The Authorization for our realm, or None. Raises DigestError when it is garbled."""
        found: DigestCredentials | None = None
        for value in request.headers.get_raw("Authorization"):
            creds = DigestCredentials.parse(value)
            if creds.realm == self.realm:
                if found is not None and found.algorithm == "SHA-256":
                    continue  # two answers: keep the stronger
                found = creds
        if found is not None and found.qop is None and not self.allow_no_qop:
            raise DigestError("qop=auth is required")
        return found

    def verify(self, creds: DigestCredentials, method: str, ha1: dict[str, str] | None,
               now: float) -> AuthStatus:
        check = self.nonces.check(creds.nonce, now)
        if check.status is NonceStatus.INVALID:
            return AuthStatus.BAD_NONCE
        return self.verify_with(creds, method, ha1, check)

    def verify_with(self, creds: DigestCredentials, method: str, ha1: dict[str, str] | None,
                    check: NonceCheck) -> AuthStatus:
        """Check the response for a nonce already checked (``NonceFactory.check``)."""
        if check.status is NonceStatus.INVALID:
            return AuthStatus.BAD_NONCE
        known = ha1 is not None and bool(ha1.get(creds.algorithm))
        # Always hash, so an unknown user takes as long as a wrong password.
        stored = ha1[creds.algorithm] if ha1 is not None and known else \
            self._dummy[creds.algorithm]
        ok = verify_response(creds, stored, method) and known
        if not ok:
            return AuthStatus.FAILED
        return AuthStatus.STALE if check.status is NonceStatus.STALE else AuthStatus.OK
