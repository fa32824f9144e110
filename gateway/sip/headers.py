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

_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")


def canonical_name(name: str) -> str:
    """Canonical spelling of a header name (compact forms expanded)."""
    low = name.lower()
    c = _CANONICAL.get(low)
    if c is not None:
        return c
    if not _TOKEN_RE.match(name):
        raise SipParseError(f"bad header name {name!r}")
    return "-".join(p[:1].upper() + p[1:].lower() for p in low.split("-"))


def is_token(text: str) -> bool:
    return bool(_TOKEN_RE.match(text))


def split_comma(value: str) -> list[str]:
    """Split a header value at commas outside quoted strings and <...> (RFC 3261 §7.3.1)."""
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    out: list[str] = []
    depth_angle = False
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
            depth_angle = True
        elif c == ">":
            depth_angle = False
        elif c == "," and not depth_angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    if in_quote:
        raise SipParseError("unterminated quoted string")
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


def parse_quoted(text: str, start: int) -> tuple[str, int]:
    """Parse a quoted-string beginning at ``text[start] == '"'``; return (unescaped, end)."""
    i = start + 1
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise SipParseError("unterminated quoted string")


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_header_params(text: str) -> Params:
    """Parse generic header parameters ``;a=b;c="quoted";flag`` (leading ';' optional).

    Quoted values keep their quotes so re-serialisation is faithful; use
    ``unquote_param`` to read them.
    """
    out: list[tuple[str, str | None]] = []
    i = 0
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t;":
            i += 1
        if i >= n:
            break
        j = i
        while j < n and text[j] not in "=; \t":
            j += 1
        name = text[i:j]
        if not name or not _TOKEN_RE.match(name):
            raise SipParseError(f"bad parameter name {name!r}")
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "=":
            j += 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == '"':
                _, end = parse_quoted(text, j)
                value = text[j:end]
                j = end
            else:
                k = j
                while k < n and text[k] not in "; \t":
                    k += 1
                value = text[j:k]
                if not value or not re.match(r"^[A-Za-z0-9\-.!%*_+`'~\[\]:]+$", value):
                    raise SipParseError(f"bad value for parameter {name!r}")
                j = k
            out.append((name.lower(), value))
        else:
            out.append((name.lower(), None))
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] != ";":
            raise SipParseError(f"junk after parameter {name!r}")
        i = j
    return tuple(out)


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
        text = text.strip()
        if not text:
            raise SipParseError("empty address")
        display: str | None = None
        if text[0] == '"':
            display, end = parse_quoted(text, 0)
            rest = text[end:].lstrip()
            if not rest.startswith("<"):
                raise SipParseError("quoted display name without <URI>")
        else:
            lt = text.find("<")
            if lt >= 0:
                d = text[:lt].strip()
                if d:
                    for word in d.split():
                        if not _TOKEN_RE.match(word):
                            raise SipParseError(f"bad display name {d!r}")
                    display = d
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
            after = rest[gt + 1 :].strip()
            if after and not after.startswith(";"):
                raise SipParseError(f"junk after <URI>: {after[:30]!r}")
            return cls(uri=Uri.parse(uri_text), display=display,
                       params=parse_header_params(after), bracketed=True)
        # addr-spec: parameters after ';' belong to the header, not the URI (§20.10)
        if " " in rest or "\t" in rest:
            raise SipParseError(f"whitespace in address {rest[:40]!r}")
        uri_text, semi, ptext = rest.partition(";")
        if "?" in uri_text or "," in uri_text:
            raise SipParseError("addr-spec with headers or comma must use <URI>")
        return cls(uri=Uri.parse(uri_text), params=parse_header_params(ptext) if semi else (),
                   bracketed=False)

    def __str__(self) -> str:
        if self.bracketed or self.display is not None:
            d = ""
            if self.display is not None:
                d = (self.display if all(_TOKEN_RE.match(w) for w in self.display.split())
                     and self.display else quote(self.display)) + " "
            return f"{d}<{self.uri}>{_fmt_params(self.params)}"
        return f"{self.uri}{_fmt_params(self.params)}"

    def param(self, name: str) -> str | None:
        return unquote_param(_param(self.params, name))

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    def with_param(self, name: str, value: str | None) -> NameAddr:
        kept = tuple((k, v) for k, v in self.params if k != name)
        return replace(self, params=kept + ((name, value),))

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_param("tag", tag)


@dataclass(frozen=True, slots=True)
class Via:
    """One Via header value (RFC 3261 §20.42, §18.2.1; RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    version: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        proto, _, rest = text.strip().partition(" ")
        parts = [p.strip() for p in proto.split("/")]
        rest = rest.strip()
        # tolerate LWS around the slashes (RFC 4475 §3.1.1.1)
        if len(parts) != 3:
            m = re.match(r"^\s*([^/\s]+)\s*/\s*([^/\s]+)\s*/\s*(\S+)\s+(.*)$", text.strip(), re.S)
            if m is None:
                raise SipParseError(f"bad Via {text[:40]!r}")
            parts = [m.group(1), m.group(2), m.group(3)]
            rest = m.group(4).strip()
        name, version, transport = parts
        if name.upper() != "SIP" or not version or not transport or not _TOKEN_RE.match(transport):
            raise SipParseError(f"bad Via protocol {proto!r}")
        if not rest:
            raise SipParseError("Via without sent-by")
        hostport, semi, ptext = rest.partition(";")
        hostport = re.sub(r"\s*:\s*", ":", hostport.strip())
        host, port = split_hostport(hostport)
        params = parse_header_params(ptext) if semi else ()
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
    def received(self) -> str | None:
        return _param(self.params, "received")

    @property
    def rport(self) -> int | None:
        v = _param(self.params, "rport")
        return int(v) if v and v.isdigit() else None

    @property
    def has_rport(self) -> bool:
        return any(k == "rport" for k, _ in self.params)

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def with_param(self, name: str, value: str | None) -> Via:
        kept = tuple((k, v) for k, v in self.params if k != name)
        # keep branch first-ish ordering stable: replace in place when present
        if len(kept) != len(self.params):
            return replace(self, params=tuple(
                (k, value if k == name else v) for k, v in self.params))
        return replace(self, params=kept + ((name, value),))


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq header (RFC 3261 §20.16)."""

    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
            raise SipParseError(f"bad CSeq {text[:40]!r}")
        n = int(parts[0])
        if n >= 2**31:
            raise SipParseError("CSeq number out of range")
        if not _TOKEN_RE.match(parts[1]):
            raise SipParseError(f"bad CSeq method {parts[1]!r}")
        return cls(n, parts[1])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


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
        name = _CANONICAL.get(name.lower(), name)
        for n, v in self._items:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, split at top-level commas unless the header forbids it."""
        name = _CANONICAL.get(name.lower(), name)
        raw = [v for n, v in self._items if n == name]
        if name in UNSPLITTABLE:
            return raw
        out: list[str] = []
        for v in raw:
            out.extend(split_comma(v))
        return out

    def get_raw(self, name: str) -> list[str]:
        """Every field line of ``name`` as received (no comma splitting)."""
        name = _CANONICAL.get(name.lower(), name)
        return [v for n, v in self._items if n == name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        cname = _CANONICAL.get(name.lower(), name)
        return any(n == cname for n, _ in self._items)

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
