"""SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966; RFC 5118 / RFC 5954 for IPv6).

``Uri.parse`` accepts ``sip:``/``sips:`` URIs with user, password, host
(hostname, IPv4 or a bracketed IPv6 reference), port, parameters and headers;
``tel:`` URIs; and any other absolute URI as opaque text (so a request with an
unknown scheme parses and can be answered 416 rather than 400, RFC 4475 §3.3.2).
Escaped characters are kept as they arrived so that serialisation is
byte-faithful; ``Uri.user_unescaped`` gives the decoded user part.

URIs are immutable, so parsed ones are memoised: the Request-URI of every
REGISTER and the From/To URIs of a busy registrar repeat constantly.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from gateway.sip.errors import SipParseError

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
# RFC 3261 §25.1 user = 1*( unreserved / escaped / user-unreserved )
_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_PASSWORD_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*")
# hostname = *( domainlabel "." ) toplabel [ "." ]; underscores are tolerated because
# container and lab host names carry them in the field.
_HOSTNAME_RE = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?\.)*"
                          r"[A-Za-z0-9_](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?\.?")
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
# paramchar = param-unreserved / unreserved / escaped
_PARAM_CHARS_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+")
# hname / hvalue = 1*( hnv-unreserved / unreserved / escaped )
_HEADER_CHARS_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})*")
_TEL_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()pwPW]+")
_OPAQUE_BAD = frozenset(" \t\r\n<>\"\x00")
# RFC 5118 §4.10: the RFC 3261 ABNF (from RFC 2373) derives "hexseq:::IPv4"; accept that
# one shape leniently, never generate it.
_THREE_COLON_RE = re.compile(r"([0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*):::(\d+\.\d+\.\d+\.\d+)")

Params = tuple[tuple[str, str | None], ...]

_CACHE: dict[str, Uri] = {}
_CACHE_MAX = 4096


def valid_ipv6(text: str) -> bool:
    """True for an IPv6 address (without brackets), incl. the RFC 5118 §4.10 3-colon form."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        m = _THREE_COLON_RE.fullmatch(text)
        if m is None:
            return False
        try:
            ipaddress.IPv6Address(f"{m.group(1)}::{m.group(2)}")
        except ValueError:
            return False
    return True


def parse_params(text: str, *, what: str) -> Params:
    """Parse URI parameters ``name=value;flag`` (leading ';' removed). Names are lower-cased."""
    if not text:
        return ()
    out: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        if not part:
            raise SipParseError(f"empty {what} parameter")
        name, eq, value = part.partition("=")
        if not _PARAM_CHARS_RE.fullmatch(name):
            raise SipParseError(f"bad {what} parameter name {name[:40]!r}")
        if eq:
            if not _PARAM_CHARS_RE.fullmatch(value):
                raise SipParseError(f"bad {what} parameter value {value[:40]!r}")
            out.append((name.lower(), value))
        else:
            out.append((name.lower(), None))
    return tuple(out)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]``, validating both; IPv6 references keep their brackets.

    Host names are lower-cased (they compare case-insensitively, §19.1.4).
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {text[:60]!r}")
        host = text[: end + 1]
        if not valid_ipv6(host[1:-1]):
            raise SipParseError(f"bad IPv6 address {host[:60]!r}")
        host = host.lower()
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipParseError(f"junk after IPv6 reference in {text[:60]!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not host:
            raise SipParseError("missing host")
        if _IPV4_RE.fullmatch(host):
            if any(int(o) > 255 for o in host.split(".")):
                raise SipParseError(f"bad IPv4 address {host!r}")
        elif not _HOSTNAME_RE.fullmatch(host):
            if ":" in port_text:
                # RFC 5118 §4.2: an IPv6 address must be bracketed in a SIP URI
                raise SipParseError(f"IPv6 address without [] in {text[:60]!r}")
            raise SipParseError(f"bad host {host[:60]!r}")
        host = host.lower()
        if not colon:
            return host, None
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        if ":" in port_text:
            raise SipParseError(f"IPv6 address without [] in {text[:60]!r}")
        raise SipParseError(f"bad port {port_text[:20]!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class Uri:
    """A SIP/SIPS/tel URI, or an opaque absolute URI of another scheme (RFC 3261 §19.1).

    ``opaque`` is set (the text after ``scheme:``) only for schemes other than
    sip, sips and tel: a UAS seeing it in a Request-URI answers 416 (§8.2.2.1).
    """

    scheme: str
    host: str = ""
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None
    # the text this URI was parsed from, reused by __str__ for byte-faithful output
    _text: str | None = field(default=None, init=False, compare=False, hash=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Uri:
        """Parse a URI; raises ``SipParseError`` naming the offending part."""
        hit = _CACHE.get(text)
        if hit is not None:
            return hit
        uri = cls._parse(text)
        object.__setattr__(uri, "_text", text)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[text] = uri
        return uri

    @classmethod
    def _parse(cls, text: str) -> Uri:
        m = _SCHEME_RE.match(text)
        if m is None:
            raise SipParseError(f"URI without scheme: {text[:60]!r}")
        scheme = m.group(1).lower()
        rest = text[m.end() :]
        if not rest or not _OPAQUE_BAD.isdisjoint(rest):
            raise SipParseError(f"bad characters in URI {text[:60]!r}")
        if scheme == "sip" or scheme == "sips":
            return cls._parse_sip(scheme, rest)
        if scheme == "tel":
            number, _, ptext = rest.partition(";")
            if not _TEL_RE.fullmatch(number):
                raise SipParseError(f"bad tel number {number[:40]!r}")
            return cls(scheme="tel", user=number, params=parse_params(ptext, what="tel"))
        return cls(scheme=scheme, opaque=rest)

    @classmethod
    def _parse_sip(cls, scheme: str, rest: str) -> Uri:
        user = password = None
        # '@' cannot appear unescaped in any later part, while the user part may hold
        # ';', '?' and '/' (RFC 4475 §3.1.1.2, §3.1.1.9): split at the first '@'.
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, colon, pw = userinfo.partition(":")
            if not _USER_RE.fullmatch(user):
                raise SipParseError(f"bad user part {user[:40]!r}")
            if colon:
                if not _PASSWORD_RE.fullmatch(pw):
                    raise SipParseError("bad password in URI")
                password = pw
        rest, qmark, htext = rest.partition("?")
        headers: tuple[tuple[str, str], ...] = ()
        if qmark:
            hs = []
            for h in htext.split("&"):
                name, eq, value = h.partition("=")
                if not name or not eq or not _HEADER_CHARS_RE.fullmatch(name) \
                        or not _HEADER_CHARS_RE.fullmatch(value):
                    raise SipParseError(f"bad URI header {h[:40]!r}")
                hs.append((name, value))
            headers = tuple(hs)
        hostport, _, ptext = rest.partition(";")
        host, port = split_hostport(hostport)
        return cls(scheme=scheme, host=host, user=user, password=password, port=port,
                   params=parse_params(ptext, what="URI"), headers=headers)

    def __str__(self) -> str:
        if self._text is not None:
            return self._text
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)

    # -- accessors -------------------------------------------------------------
    def param(self, name: str) -> str | None:
        """Value of parameter ``name`` ('' for a flag), None when absent."""
        for k, v in self.params:
            if k == name:
                return v if v is not None else ""
        return None

    def has_param(self, name: str) -> bool:
        return any(k == name for k, _ in self.params)

    def with_param(self, name: str, value: str | None) -> Uri:
        kept = tuple((k, v) for k, v in self.params if k != name)
        return replace(self, params=kept + ((name, value),))

    def without_param(self, name: str) -> Uri:
        return replace(self, params=tuple((k, v) for k, v in self.params if k != name))

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unquote(self.user, errors="surrogateescape")

    @property
    def transport(self) -> str | None:
        t = self.param("transport")
        return t.lower() if t else None

    @property
    def host_unbracketed(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def aor(self) -> str:
        """The address-of-record key: scheme, unescaped user and host, no port/params (§10.3)."""
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}"
        user = self.user_unescaped
        scheme = "sip" if self.scheme == "sips" else self.scheme
        return f"{scheme}:{user}@{self.host}" if user is not None else f"{scheme}:{self.host}"

    def equivalent(self, other: Uri) -> bool:
        """URI comparison per RFC 3261 §19.1.4 (the parts that matter for routing)."""
        if self.scheme != other.scheme or self.opaque != other.opaque:
            return False
        if self.user_unescaped != other.user_unescaped or self.password != other.password:
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        mine = {unquote(k).lower(): unquote(v or "").lower() for k, v in self.params}
        theirs = {unquote(k).lower(): unquote(v or "").lower() for k, v in other.params}
        for special in ("user", "ttl", "method", "maddr", "transport"):
            if mine.get(special) != theirs.get(special):
                return False
        for k in mine.keys() & theirs.keys():
            if mine[k] != theirs[k]:
                return False
        mh = {unquote(k).lower(): unquote(v) for k, v in self.headers}
        th = {unquote(k).lower(): unquote(v) for k, v in other.headers}
        return mh == th
