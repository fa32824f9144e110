"""SIP header fields (RFC 3261 §7.3, §20, §25).

``Headers`` is an ordered multi-map of header fields. Names are matched case-
insensitively and compact forms (``v``, ``f``, ``i`` …) are expanded to their
canonical names on the way in. Values are stored as received (after unfolding)
and parsed on demand by the typed helpers here: ``Via``, ``NameAddr`` (From,
To, Contact, Route, Record-Route …), ``CSeq``. Lazy parsing keeps the hot path
(a proxy or registrar that reads five headers of fifteen) cheap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from gateway.sip.errors import SipParseError
from gateway.sip.uri import Params, Uri, split_hostport

# RFC 3261 §7.3.3 compact forms, plus RFC 3515 (r), 3891, 4028 (x), 3841 (j) …
COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To",
    "v": "Via", "o": "Event", "r": "Refer-To", "b": "Referred-By", "u": "Allow-Events",
    "x": "Session-Expires", "y": "Identity", "a": "Accept-Contact", "j": "Reject-Contact",
    "d": "Request-Disposition",
}

_CANONICAL = {
    n.lower(): n
    for n in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
        "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
        "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From",
        "Geolocation", "Geolocation-Routing", "In-Reply-To", "Max-Forwards", "Min-Expires",
        "Min-SE", "MIME-Version", "Organization", "Path", "P-Asserted-Identity", "Priority",
        "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
        "Record-Route", "Refer-To", "Referred-By", "Replaces", "Reply-To", "Require",
        "Retry-After", "Route", "RSeq", "Server", "Session-Expires", "Subject",
        "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent",
        "Via", "Warning", "WWW-Authenticate", "Flow-Timer", "Identity",
    )
}
_CANONICAL.update({k: v for k, v in COMPACT.items()})

# RFC 3261 §7.3.1: these carry commas inside a single value and must never be split.
UNSPLITTABLE = frozenset({
    "WWW-Authenticate", "Authorization", "Proxy-Authenticate", "Proxy-Authorization",
    "Authentication-Info", "Date", "Retry-After", "User-Agent", "Server", "Subject",
    "Call-ID", "CSeq", "From", "To", "Content-Type", "Content-Length", "Max-Forwards",
    "Expires", "Min-Expires", "Timestamp", "Organization", "Replaces", "Refer-To",
    "Referred-By", "Event", "Subscription-State", "Session-Expires", "Min-SE", "RAck",
    "RSeq", "Priority", "MIME-Version", "Identity",
})

_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN = rf"[{_TOKEN_CHARS}]+"
_TOKEN_RE = re.compile(_TOKEN)
_PARAM_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~\[\]:]+")
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 1024


def canonical_name(name: str) -> str:
    """Canonical spelling of a header name (compact forms expanded); SipParseError if bad."""
    c = _NAME_CACHE.get(name)
    if c is not None:
        return c
    low = name.lower()
    c = _CANONICAL.get(low)
    if c is None:
        if not _TOKEN_RE.fullmatch(name):
            raise SipParseError(f"bad header name {name[:40]!r}")
        c = "-".join(p[:1].upper() + p[1:] for p in low.split("-"))
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = c
    return c


def is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def split_comma(value: str, *, strict: bool = False) -> list[str]:
    """Split a header value at commas outside quoted strings and <...> (RFC 3261 §7.3.1).

    Empty elements are dropped, or with ``strict`` reported as an error (a
    ``Via: a,,b`` is malformed, RFC 4475 §3.1.2.1).
    """
    if "," not in value:
        v = value.strip()
        if not v and strict:
            raise SipParseError("empty header value")
        return [v] if v else []
    out: list[str] = []
    in_angle = False
    in_quote = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            elif strict:
                raise SipParseError("empty element in comma-separated header")
            start = i + 1
        i += 1
    if in_quote:
        raise SipParseError("unterminated quoted string")
    part = value[start:].strip()
    if part:
        out.append(part)
    elif strict:
        raise SipParseError("empty element in comma-separated header")
    return out


def parse_quoted(text: str, start: int) -> tuple[str, int]:
    """Parse a quoted-string beginning at ``text[start] == '"'``; return (unescaped, end).

    quoted-pair may escape any octet but CR and LF (§25.1), NUL included (RFC 4475 §3.1.1.2).
    """
    end = text.find('"', start + 1)
    if end >= 0 and text.find("\\", start + 1, end) < 0:
        return text[start + 1 : end], end + 1
    i = start + 1
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                break
            nxt = text[i + 1]
            if nxt in "\r\n":
                raise SipParseError("CR or LF escaped in quoted string")
            out.append(nxt)
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise SipParseError("unterminated quoted string")


_QUOTE_ESCAPES = {c: "\\" + chr(c) for c in (*range(0x09), *range(0x0B, 0x0D),
                                             *range(0x0E, 0x20), 0x22, 0x5C, 0x7F)}
_QUOTE_ESCAPES.update({0x0A: " ", 0x0D: " "})  # CR/LF cannot be quoted: never inject a line


def quote(text: str) -> str:
    """quoted-string for ``text`` (§25.1): '"', '\\' and controls as quoted-pairs."""
    return '"' + text.translate(_QUOTE_ESCAPES) + '"'


_HPARAM_RE = re.compile(
    r"[ \t]*;[ \t]*(" + _TOKEN + r")(?:[ \t]*=[ \t]*(\"(?:[^\"\\\r\n]|\\[^\r\n])*\""
    r"|[A-Za-z0-9\-.!%*_+`'~\[\]:]+))?[ \t]*")


def parse_header_params(text: str) -> Params:
    """Parse generic header parameters ``;a=b;c="quoted";flag`` (RFC 3261 §25.1 generic-param).

    LWS is allowed around ';' and '=' (SEMI, EQUAL); an empty parameter
    (``;;``) is an error (RFC 4475 §3.1.2.1). Quoted values keep their quotes so
    re-serialisation is faithful; use ``unquote_param`` to read them.
    """
    out: list[tuple[str, str | None]] = []
    pos = 0
    n = len(text)
    match = _HPARAM_RE.match
    while pos < n:
        m = match(text, pos)
        if m is None:
            break
        out.append((m.group(1).lower(), m.group(2)))
        pos = m.end()
    else:
        return tuple(out)
    rest = text[pos:].lstrip(" \t")
    if not rest:
        return tuple(out)
    if rest[0] == "=" and out:
        value = rest[1:].lstrip(" \t")
        if value.startswith('"'):
            parse_quoted(value, 0)  # raises on an unterminated quote
        raise SipParseError(f"bad value for parameter {out[-1][0][:40]!r}")
    if rest[0] != ";":
        raise SipParseError(f"junk in parameters: {rest[:30]!r}")
    after = rest[1:].lstrip(" \t")
    if not after or after[0] == ";":
        raise SipParseError("empty parameter")
    name = re.split(r"[ \t=;]", after, maxsplit=1)[0]
    if not _TOKEN_RE.fullmatch(name):
        raise SipParseError(f"bad parameter name {name[:40]!r}")
    raise SipParseError(f"bad parameter {after[:40]!r}")


def unquote_param(value: str | None) -> str | None:
    if value is not None and value.startswith('"'):
        return parse_quoted(value, 0)[0]
    return value


def _fmt_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _param(params: Params, name: str) -> str | None:
    for k, v in params:
        if k == name:
            return v if v is not None else ""
    return None


# -- fast-path validators --------------------------------------------------------------
# Each matches only a subset of what the full parser below accepts (the common,
# well-formed shapes phones send), so a match proves validity without building
# objects; anything else falls back to the full parser. Tests check the subset
# property.
_HOST_FAST = (r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
              r"|(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9\-]*"
              r"[A-Za-z0-9])?)")
_PORT_FAST = r"(?::(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}))?"
_UPARAM_FAST = r"(?:;[A-Za-z0-9\-_.!~*'()/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()/:&+$]+)?)*"
_URI_FAST = (r"sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$,/]+(?::[A-Za-z0-9\-_.!~*'()&=+$,]*)?@)?"
             + _HOST_FAST + _PORT_FAST + _UPARAM_FAST)
_HPARAM_FAST = (r"(?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=(?:[A-Za-z0-9\-.!%*_+`'~:]+"
                r"|\"[^\"\\\x00-\x1f\x7f]*\"))?)*")
# A Via's fast shape also refuses a value-less branch (§20.42: branch = "branch" EQUAL token).
_VIA_HPARAM_FAST = _HPARAM_FAST.replace(
    r"(?:;", r"(?:;(?![Bb][Rr][Aa][Nn][Cc][Hh](?![A-Za-z0-9\-.!%*_+`'~=]))", 1)
VIA_FAST_RE = re.compile(r"SIP/2\.0/[A-Za-z]+ " + _HOST_FAST + _PORT_FAST + _VIA_HPARAM_FAST)
NAME_ADDR_FAST_RE = re.compile(
    r"(?:\"[^\"\\\x00-\x1f\x7f]*\" ?|(?:[A-Za-z0-9\-.!%*_+`'~]+ )*)?<" + _URI_FAST + ">"
    + _HPARAM_FAST
    + r"|" + _URI_FAST.replace(_UPARAM_FAST, "") + _HPARAM_FAST)
CSEQ_RE = re.compile(r"(\d+)[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")
# VIA_FAST_RE with the parts captured (transport, host, ":port", params), so a Via in
# the common shape is built from one match instead of three parsers.
VIA_PARTS_RE = re.compile(r"SIP/2\.0/([A-Za-z]+) (" + _HOST_FAST + ")(" + _PORT_FAST + ")("
                          + _VIA_HPARAM_FAST + ")")


_ADDR_CACHE: dict[str, NameAddr] = {}
_ADDR_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class NameAddr:
    """name-addr / addr-spec with header parameters (RFC 3261 §20.10, §20.20, §20.39).

    ``display`` is the unescaped display name (or None); ``bracketed`` records
    whether the URI was in angle brackets so we can serialise it back the same way.
    """

    uri: Uri
    display: str | None = None
    params: Params = ()
    bracketed: bool = True

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Parse one name-addr/addr-spec with parameters; memoised (the object is immutable)."""
        hit = _ADDR_CACHE.get(text)
        if hit is not None:
            return hit
        addr = cls._parse(text)
        if len(_ADDR_CACHE) >= _ADDR_CACHE_MAX:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[text] = addr
        return addr

    @classmethod
    def _parse(cls, text: str) -> NameAddr:
        text = text.strip(" \t")
        if not text:
            raise SipParseError("empty address")
        display: str | None = None
        if text[0] == '"':
            display, end = parse_quoted(text, 0)
            rest = text[end:].lstrip(" \t")
            if not rest.startswith("<"):
                raise SipParseError("quoted display name without <URI>")
        else:
            lt = text.find("<")
            if lt >= 0:
                d = text[:lt].strip(" \t")
                if d:
                    words = d.split()
                    for word in words:
                        if not _TOKEN_RE.fullmatch(word):
                            raise SipParseError(f"bad display name {d[:40]!r}")
                    display = " ".join(words)
                rest = text[lt:]
            else:
                rest = text
        if rest.startswith("<"):
            gt = rest.find(">")
            if gt < 0:
                raise SipParseError("unterminated <URI>")
            uri_text = rest[1:gt]
            if uri_text != uri_text.strip():
                raise SipParseError("whitespace inside <URI>")
            return cls(uri=Uri.parse(uri_text), display=display,
                       params=parse_header_params(rest[gt + 1 :]), bracketed=True)
        # addr-spec: parameters after ';' belong to the header, not the URI (§20.10);
        # LWS may precede the ';' (SEMI = SWS ";" SWS, RFC 4475 §3.1.1.1).
        end = 0
        n = len(rest)
        while end < n and rest[end] not in "; \t":
            end += 1
        uri_text = rest[:end]
        after = rest[end:]
        if after.strip(" \t") and not after.lstrip(" \t").startswith(";"):
            raise SipParseError(f"whitespace in address {rest[:40]!r}")
        if "?" in uri_text or "," in uri_text:
            raise SipParseError("URI with headers or comma must be enclosed in <>")
        return cls(uri=Uri.parse(uri_text), params=parse_header_params(after),
                   bracketed=False)

    def __str__(self) -> str:
        if self.bracketed or self.display is not None or self.uri.params \
                or self.uri.headers:
            d = ""
            if self.display is not None:
                plain = self.display and all(
                    _TOKEN_RE.fullmatch(w) for w in self.display.split(" "))
                d = (self.display if plain else quote(self.display)) + " "
            return f"{d}<{self.uri}>{_fmt_params(self.params)}"
        return f"{self.uri}{_fmt_params(self.params)}"

    def param(self, name: str) -> str | None:
        """Parameter value with quotes removed ('' for a flag, None when absent)."""
        return unquote_param(_param(self.params, name))

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    def with_param(self, name: str, value: str | None) -> NameAddr:
        kept = tuple((k, v) for k, v in self.params if k != name)
        return replace(self, params=kept + ((name, value),))

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_param("tag", tag)


VIA_HEAD_RE = re.compile(
    rf"({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    r"(\[[^\]]*\]|[^ \t:;\[]+)(?:[ \t]*:[ \t]*([^ \t;]*))?")


@dataclass(frozen=True, slots=True)
class Via:
    """One Via header value (RFC 3261 §20.42, §18.2.1; RFC 3581 rport; RFC 5118 §4.5)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    version: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        text = text.strip(" \t")
        m = VIA_PARTS_RE.fullmatch(text)
        if m is not None:
            via = cls.from_fast_match(m)
            if via is not None:
                return via
        return cls._parse_general(text)

    @classmethod
    def from_fast_match(cls, m: re.Match[str]) -> Via | None:
        """The Via of a ``VIA_PARTS_RE`` match; None when the general parser must decide.

        In that shape parameters are tokens (no quotes, so ';' and '=' only
        delimit) and host/port are already valid: splitting gives exactly what
        ``_parse_general`` would.
        """
        transport, host, port, ptext = m.groups()
        params: Params = ()
        if ptext:
            if '"' in ptext:
                return None
            out: list[tuple[str, str | None]] = []
            for part in ptext[1:].split(";"):
                k, eq, v = part.partition("=")
                k = k.lower()
                if eq:
                    out.append((k, v))
                elif k == "branch":
                    return None  # "empty Via branch": the general parser reports it
                else:
                    out.append((k, None))
            params = tuple(out)
        return cls(transport=transport.upper(), host=host.lower(),
                   port=int(port[1:]) if port else None, params=params)

    @classmethod
    def _parse_general(cls, text: str) -> Via:
        m = VIA_HEAD_RE.match(text)  # LWS around '/' is legal (RFC 4475 §3.1.1.1)
        if m is None:
            raise SipParseError(f"bad Via {text[:40]!r}")
        name, version, transport, host_text, port_text = m.groups()
        hostport = host_text if port_text is None else f"{host_text}:{port_text}"
        host, port = split_hostport(hostport)
        params = parse_header_params(text[m.end() :])
        for k, v in params:
            if k == "branch" and not v:
                raise SipParseError("empty Via branch")
        return cls(transport=transport.upper(), host=host, port=port, params=params,
                   version=f"{name.upper()}/{version}")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.version}/{self.transport} {self.host}{port}{_fmt_params(self.params)}"

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def branch(self) -> str | None:
        return _param(self.params, "branch")

    @property
    def has_rfc3261_branch(self) -> bool:
        """True when the branch carries the magic cookie *and* a unique part (§8.1.1.7).

        A bare ``z9hG4bK`` (RFC 4475 §3.2.1) identifies no transaction.
        """
        b = self.branch
        return b is not None and b.startswith("z9hG4bK") and len(b) > 7

    @property
    def received(self) -> str | None:
        """received parameter as sent (IPv6 with or without [], RFC 5118 §4.5)."""
        return _param(self.params, "received")

    @property
    def received_host(self) -> str | None:
        """received parameter with IPv6 brackets removed."""
        r = _param(self.params, "received")
        if r and r.startswith("[") and r.endswith("]"):
            return r[1:-1]
        return r

    @property
    def rport(self) -> int | None:
        v = _param(self.params, "rport")
        return int(v) if v and v.isdigit() and len(v) <= 5 else None

    @property
    def has_rport(self) -> bool:
        return any(k == "rport" for k, _ in self.params)

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def with_param(self, name: str, value: str | None) -> Via:
        kept = tuple((k, v) for k, v in self.params if k != name)
        # keep the parameter order stable: replace in place when present
        if len(kept) != len(self.params):
            return replace(self, params=tuple(
                (k, value if k == name else v) for k, v in self.params))
        return replace(self, params=kept + ((name, value),))


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq header (RFC 3261 §20.16): a sequence number below 2**31 and a method."""

    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        m = CSEQ_RE.fullmatch(text.strip(" \t"))
        if m is None:
            raise SipParseError(f"bad CSeq {text[:40]!r}")
        digits = m.group(1)
        if len(digits) > 10 or int(digits) >= 2**31:
            raise SipParseError(f"CSeq number {m.group(1)} out of range")
        return cls(int(digits), m.group(2))

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def _lookup(name: str) -> str:
    c = _NAME_CACHE.get(name)
    if c is not None:
        return c
    try:
        return canonical_name(name)
    except SipParseError:
        return name


class Headers:
    """Ordered, case-insensitive multi-map of header fields (RFC 3261 §7.3)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items]

    @classmethod
    def _trusted(cls, items: list[tuple[str, str]]) -> Headers:
        h = cls.__new__(cls)
        h._items = items
        return h

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        return Headers._trusted(list(self._items))

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of ``name`` (not split at commas)."""
        name = _lookup(name)
        for n, v in self._items:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, split at top-level commas unless the header forbids it."""
        name = _lookup(name)
        raw = [v for n, v in self._items if n == name]
        if name in UNSPLITTABLE:
            return raw
        out: list[str] = []
        for v in raw:
            out.extend(split_comma(v))
        return out

    def get_raw(self, name: str) -> list[str]:
        """Every field line of ``name`` as received (no comma splitting)."""
        name = _lookup(name)
        return [v for n, v in self._items if n == name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        cname = _lookup(name)
        for n, _ in self._items:
            if n == cname:
                return True
        return False

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        self._items.insert(0, (canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of ``name`` with one, at the first one's position."""
        cname = canonical_name(name)
        for i, (n, _) in enumerate(self._items):
            if n == cname:
                self._items[i] = (cname, value)
                self._items[i + 1 :] = [it for it in self._items[i + 1 :] if it[0] != cname]
                return
        self._items.append((cname, value))

    def remove(self, name: str) -> None:
        cname = canonical_name(name)
        self._items = [it for it in self._items if it[0] != cname]

    def remove_first_value(self, name: str) -> None:
        """Drop the first value of a multi-value header (e.g. the topmost Via, §16.7 / §8.1.3.3)."""
        cname = canonical_name(name)
        for i, (n, v) in enumerate(self._items):
            if n == cname:
                parts = split_comma(v)
                if len(parts) <= 1:
                    del self._items[i]
                else:
                    self._items[i] = (cname, ", ".join(parts[1:]))
                return

    def serialise_into(self, out: list[str]) -> None:
        for n, v in self._items:
            out.append(f"{n}: {v}\r\n")
