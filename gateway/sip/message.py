"""SIP messages: parsing, serialisation and framing (RFC 3261 §7, §18.3, §20, §25).

``parse_message(data)`` turns one datagram (or one framed stream message) into a
``SipRequest`` or ``SipResponse``; ``bytes(msg)`` serialises it. Nothing but
``SipParseError`` (``ParseFailure``) ever leaves the parser. When a request is
malformed, the failure carries whatever could be recovered (method, headers) so
the caller can still build a 400 that names the problem (§8.2.6 needs Via,
From, To, Call-ID and CSeq): see ``build_error_response``.

The parser validates eagerly what every layer relies on (start line, Via,
From, To, Call-ID, CSeq, Contact, Max-Forwards, Content-Length, Content-Type,
Date, single-valued headers not repeated) so a malformed message is rejected
at the transport, with a reason, rather than half-way through a transaction.
For speed the common well-formed shapes are checked with one precompiled
regular expression each, and typed objects (``Via``, ``NameAddr``, ``CSeq``)
are built lazily on first access (the top Via from the parser's own match).
What repeats from message to message is done once: header lines are split
and named through a bounded line cache, and From/To/Contact/Call-ID values
already proven valid are remembered (validation is a pure function of the
text). Heads with folding or bare CR/LF take the general, slower path.

``StreamParser`` frames messages on stream transports by Content-Length
(§18.3): it copes with partial and pipelined messages and with the CRLF
keep-alives of RFC 5626 §3.5.1.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.sip.errors import SipParseError
from gateway.sip.headers import (
    _NAME_CACHE,
    _NAME_CACHE_MAX,
    CSEQ_RE,
    NAME_ADDR_FAST_RE,
    VIA_FAST_RE,
    VIA_HEAD_RE,
    VIA_PARTS_RE,
    CSeq,
    Headers,
    NameAddr,
    Via,
    canonical_name,
    parse_header_params,
    split_comma,
)
from gateway.sip.memo import remember as _remember
from gateway.sip.uri import Uri, split_hostport

MAX_MESSAGE_SIZE = 65535
MAX_HEADERS = 256
_FOLD_RE = re.compile(r"\r?\n[ \t]+")
_TOKEN_CLASS = r"[A-Za-z0-9\-.!%*_+`'~]"
_REQUEST_RE = re.compile(rf"({_TOKEN_CLASS}+) ([^ ]+) ([Ss][Ii][Pp])/(\d+)\.(\d+)")
_STATUS_RE = re.compile(r"[Ss][Ii][Pp]/(\d+)\.(\d+) (\d+)(?: (.*))?")
# Call-ID = word [ "@" word ] (§25.1)
_CALL_ID_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
                         r"(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?")
_CONTENT_TYPE_RE = re.compile(rf"({_TOKEN_CLASS}+)[ \t]*/[ \t]*({_TOKEN_CLASS}+)[ \t]*")
# rfc1123-date, always GMT (§20.17)
_DATE_RE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
                      r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                      r"\d{2}:\d{2}:\d{2} GMT")
_UNESCAPED_NUL_RE = re.compile(r"(?<!\\)\x00")
# Headers of which a message may carry only one (§7.3.1, §20; RFC 4475 §3.3.8/§3.3.9).
_SINGLE = frozenset({"From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length",
                     "Content-Type"})
_MANDATORY_ORDER = ("Via", "From", "To", "Call-ID", "CSeq")
_MANDATORY = frozenset(_MANDATORY_ORDER)
REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    410: "Gone", 412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    422: "Session Interval Too Small", 423: "Interval Too Brief", 428: "Use Identity Header",
    429: "Provide Referrer Identity", 439: "First Hop Lacks Outbound Support",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    494: "Security Agreement Required", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def _decode(raw: bytes) -> str:
    # Header text is UTF-8 (§7.3.1); undecodable bytes survive a round trip.
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# Content-Length and Max-Forwards values seen on nearly every message, pre-converted.
_SMALL_INTS = {str(i): i for i in range(256)}


def _ascii_int(text: str, max_digits: int) -> int | None:
    text = text.strip(" \t")
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _option_tags(headers: Headers, name: str) -> list[str]:
    return [t.strip(" \t") for t in headers.get_all(name)]


class _Common:
    """Typed, cached views of the headers every layer needs (§8.1.1).

    The caches are plain attributes (None until first use); call
    ``invalidate()`` after editing ``headers`` in place.
    """

    headers: Headers
    body: bytes
    _vias: list[Via] | None = None
    _top: Via | None = None
    _via_match: re.Match[str] | None = None
    _from: NameAddr | None = None
    _to: NameAddr | None = None
    _cseq: CSeq | None = None
    _contacts: list[NameAddr] | None = None

    @property
    def vias(self) -> list[Via]:
        v = self._vias
        if v is None:
            v = self._vias = [Via.parse(x) for x in self.headers.get_all("Via")]
        return v

    @property
    def top_via(self) -> Via:
        via = self.first_via()
        if via is None:
            raise SipParseError("missing Via header")
        return via

    def first_via(self) -> Via | None:
        """The topmost Via, or None without one; only it is parsed (the stack's hot path).

        The parser keeps its match of a plain top Via, so the object is built
        without parsing the text again.
        """
        v = self._top
        if v is not None:
            return v
        if self._vias is not None:
            return self._vias[0] if self._vias else None
        m = self._via_match
        if m is not None:
            v = Via.from_fast_match(m)
        if v is None:
            raw = self.headers.get("Via")
            if raw is None:
                return None
            if "," in raw:
                parts = split_comma(raw)
                if not parts:
                    return None
                raw = parts[0]
            v = Via.parse(raw)
        self._top = v
        return v

    @property
    def from_(self) -> NameAddr:
        v = self._from
        if v is None:
            raw = self.headers.get("From")
            if raw is None:
                raise SipParseError("missing From header")
            v = self._from = NameAddr.parse(raw)
        return v

    @property
    def to(self) -> NameAddr:
        v = self._to
        if v is None:
            raw = self.headers.get("To")
            if raw is None:
                raise SipParseError("missing To header")
            v = self._to = NameAddr.parse(raw)
        return v

    @property
    def call_id(self) -> str:
        v = self.headers.get("Call-ID")
        if not v:
            raise SipParseError("missing Call-ID header")
        return v

    @property
    def cseq(self) -> CSeq:
        v = self._cseq
        if v is None:
            raw = self.headers.get("CSeq")
            if raw is None:
                raise SipParseError("missing CSeq header")
            v = self._cseq = CSeq.parse(raw)
        return v

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; a lone ``*`` is returned as an empty list (see ``contact_star``)."""
        v = self._contacts
        if v is None:
            vals = self.headers.get_all("Contact")
            v = [] if vals == ["*"] else [NameAddr.parse(x) for x in vals]
            self._contacts = v
        return v

    @property
    def contact_star(self) -> bool:
        return self.headers.get_all("Contact") == ["*"]

    def header_int(self, name: str) -> int | None:
        """Integer value of a header (Expires, Max-Forwards …); None when absent."""
        v = self.headers.get(name)
        if v is None:
            return None
        n = _SMALL_INTS.get(v)
        if n is None:
            n = _ascii_int(v, 10)
        if n is None:
            raise SipParseError(f"bad {name} value {v.strip()[:20]!r}")
        return n

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255, validated by the parser); None when absent (RFC 2543 peers)."""
        return self.header_int("Max-Forwards")

    @property
    def content_type(self) -> str | None:
        """The media type of the body, lower-cased, without parameters (§20.15)."""
        v = self.headers.get("Content-Type")
        if v is None:
            return None
        m = _CONTENT_TYPE_RE.match(v)
        if m is None:
            raise SipParseError(f"bad Content-Type {v[:40]!r}")
        return f"{m.group(1)}/{m.group(2)}".lower()

    @property
    def require(self) -> list[str]:
        """Option tags of Require (§20.32); a UAS answers 420 for unknown ones (§8.2.2.3)."""
        return _option_tags(self.headers, "Require")

    @property
    def proxy_require(self) -> list[str]:
        """Option tags of Proxy-Require (§20.29)."""
        return _option_tags(self.headers, "Proxy-Require")

    @property
    def supported(self) -> list[str]:
        """Option tags of Supported (§20.37)."""
        return _option_tags(self.headers, "Supported")

    def invalidate(self) -> None:
        """Forget cached parsed headers after ``headers`` was edited in place."""
        self._vias = None
        self._top = None
        self._via_match = None
        self._from = None
        self._to = None
        self._cseq = None
        self._contacts = None


@dataclass(eq=False)
class SipRequest(_Common):
    """A SIP request (RFC 3261 §7.1)."""

    method: str
    uri: Uri
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SipRequest) and self.method == other.method
                and self.uri == other.uri and self.headers == other.headers
                and self.body == other.body and self.version == other.version)

    def __bytes__(self) -> bytes:
        return _serialise(f"{self.method} {self.uri} {self.version}\r\n", self.headers,
                          self.body)

    @property
    def is_request(self) -> bool:
        return True

    @property
    def uri_scheme_supported(self) -> bool:
        """False for a Request-URI scheme other than sip/sips/tel: answer 416 (§8.2.2.1)."""
        return self.uri.opaque is None


@dataclass(eq=False)
class SipResponse(_Common):
    """A SIP response (RFC 3261 §7.2)."""

    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SipResponse) and self.status == other.status
                and self.reason == other.reason and self.headers == other.headers
                and self.body == other.body and self.version == other.version)

    def __bytes__(self) -> bytes:
        return _serialise(f"{self.version} {self.status} {self.reason}\r\n", self.headers,
                          self.body)

    @property
    def is_request(self) -> bool:
        return False


SipMessage = SipRequest | SipResponse


def _serialise(start: str, headers: Headers, body: bytes) -> bytes:
    # Content-Length always states the real body length, exactly once, at the first
    # one's place (RFC 4475 §3.3.9: never emit two).
    cl = f"Content-Length: {len(body)}\r\n"
    lines = [cl if n == "Content-Length" else f"{n}: {v}\r\n" for n, v in headers._items]
    count = lines.count(cl)
    if count == 0:
        lines.append(cl)
    elif count > 1:
        first = lines.index(cl) + 1
        lines[first:] = [line for line in lines[first:] if line != cl]
    return _encode(start + "".join(lines) + "\r\n") + body


class ParseFailure(SipParseError):
    """A parse error with whatever could be recovered to answer it (RFC 3261 §8.2.6, §21.4.1).

    ``reason`` names the problem precisely, ``status`` is the response code
    (400, 505, 513 …), ``method``/``headers`` are what was recovered of a
    request, ``is_request`` tells requests (answer) from responses (drop).
    """

    def __init__(self, reason: str, status: int = 400, *, method: str | None = None,
                 headers: Headers | None = None, is_request: bool | None = None) -> None:
        super().__init__(reason, status)
        self.method = method
        self.headers = headers
        self.is_request = is_request


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4 :]
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end], data[end + 2 :]
    # a message with no body and no blank line (common from UDP fuzzers): all head
    return data.rstrip(b"\r\n"), b""


def parse_message(data: bytes, *, stream: bool = False) -> SipMessage:
    """Parse one complete SIP message. Raises only ``SipParseError`` (``ParseFailure``).

    With ``stream=False`` (datagrams) the body is whatever follows the blank
    line, trimmed to Content-Length, and octets past it are ignored (RFC 4475
    §3.1.1.8); a body shorter than Content-Length is an error (§18.3). With
    ``stream=True`` Content-Length is mandatory. Framing a byte stream is
    ``StreamParser``'s job.
    """
    try:
        return _parse(data, stream)
    except ParseFailure:
        raise
    except SipParseError as e:
        raise ParseFailure(e.reason, e.status) from None
    except (ValueError, IndexError, UnicodeError, OverflowError, RecursionError) as e:
        raise ParseFailure(f"malformed message ({type(e).__name__})") from None


def _slow_name(name: str, colon: str, bad: list[str]) -> str:
    """Canonical name of a header line's name outside the cache; '' (and a reason) if bad."""
    if not colon:
        bad.append(f"malformed header line {name[:40]!r}")
        return ""
    try:
        cname = canonical_name(name.rstrip(" \t"))
    except SipParseError as e:
        bad.append(e.reason)
        return ""
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = cname
    return cname


# line -> (canonical name, value) for header lines already split once; bounded, and
# only short lines are kept, so a flood of distinct lines costs at most a refill.
_LINE_CACHE: dict[str, tuple[str, str]] = {}
_LINE_CACHE_MAX = 8192
_LINE_CACHE_MAX_LEN = 256
# Values already proven valid, per check: validation is a pure function of the string,
# and From/To/Contact/Call-ID of one device repeat on every REGISTER and refresh.
_VALID_ADDR: set[str] = set()
_VALID_CONTACT: set[str] = set()  # whole Contact lines (may hold several addresses)
_VALID_CALL_ID: set[str] = set()


_ODD_LINE = "folded line, bare CR or bare LF"


def _slow_line(line: str, bad: list[str], fast: bool = False) -> tuple[str, str]:
    """Split one header line outside the line cache; ('', '') (and a reason) if bad.

    With ``fast`` (lines split at CRLF only, nothing unfolded yet) a
    continuation line or one holding a bare CR/LF is reported as ``_ODD_LINE``
    so that ``_fields`` redoes the head the general way. Such lines are never
    cached, so a cache hit proves a line is a plain ``name: value``.
    """
    if fast and (line[:1] == " " or line[:1] == "\t" or "\r" in line or "\n" in line):
        bad.append(_ODD_LINE)
        return ("", "")
    n, c, v = line.partition(":")
    cname = (_NAME_CACHE.get(n) if c else None) or _slow_name(n, c, bad)
    item = (cname, v.strip(" \t"))
    # A Via line carries a fresh branch per transaction: caching it would only evict.
    if cname and cname != "Via" and len(line) <= _LINE_CACHE_MAX_LEN and "\r" not in line:
        if len(_LINE_CACHE) >= _LINE_CACHE_MAX:
            _LINE_CACHE.clear()
        _LINE_CACHE[line] = item
    return item


def _fields(data: bytes) -> tuple[str, list[tuple[str, str]], str | None, bytes]:
    """Split a message into start line, (canonical name, value) fields, first problem, body."""
    # RFC 3261 §7.5: ignore CRLFs before the start-line
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    if not data:
        raise ParseFailure("empty message")
    head_raw, body = _split_head(data)
    head = _decode(head_raw)
    lines = head.split("\r\n")
    start = lines[0]
    if len(lines) <= MAX_HEADERS and "\n" not in start and "\r" not in start:
        # The common case, CRLF lines without folding, in one pass: most lines repeat
        # verbatim from message to message (a phone's From, To, Contact, User-Agent,
        # Allow …), and one dict lookup replaces split, strip and name lookup for them.
        bad: list[str] = []
        line_get = _LINE_CACHE.get
        items = [line_get(line) or _slow_line(line, bad, True) for line in lines[1:]]
        if not bad:
            if "\x00" in head:
                _check_nul(start, items, bad)
            return start, items, (bad[0] if bad else None), body
    return _fields_general(head, body)


def _fields_general(head: str, body: bytes) -> tuple[str, list[tuple[str, str]], str | None,
                                                      bytes]:
    """``_fields`` for any head: folding, bare LF line ends, bare CR, malformed lines."""
    bad: list[str] = []
    if "\n " in head or "\n\t" in head:
        head = _FOLD_RE.sub(" ", head)  # §7.3.1 line folding
    lines = head.split("\r\n")
    nlines = len(lines) - 1
    if head.count("\n") != nlines or head.count("\r") != nlines:
        # bare LF line ends (tolerated) or a bare CR (not)
        head = head.replace("\r\n", "\n")
        if "\r" in head:
            bad.append("bare CR in message head")
        lines = head.split("\n")
    if len(lines) > MAX_HEADERS:
        raise ParseFailure(f"too many header fields ({len(lines) - 1})",
                           is_request=not lines[0][:4].upper().startswith("SIP/"))
    line_get = _LINE_CACHE.get
    items = [line_get(line) or _slow_line(line, bad) for line in lines[1:]]
    if bad:
        items = [it for it in items if it[0]]
    if "\x00" in head:
        _check_nul(lines[0], items, bad)
    return lines[0], items, (bad[0] if bad else None), body


def _check_nul(start: str, items: list[tuple[str, str]], bad: list[str]) -> None:
    for n, v in items:
        if _UNESCAPED_NUL_RE.search(v):
            bad.append(f"NUL character in {n} header")
            break
    if "\x00" in start:
        bad.append("NUL character in start line")


def _request_line_problem(start: str) -> str:
    if start != start.rstrip(" \t"):
        return "trailing whitespace in Request-Line"
    if "  " in start:
        return "multiple spaces in Request-Line"
    if start.count(" ") > 2:
        return "whitespace inside the Request-URI"
    return f"malformed Request-Line {start[:60]!r}"


def _parse(data: bytes, stream: bool) -> SipMessage:
    if len(data) > MAX_MESSAGE_SIZE:
        headers: Headers | None = None
        method: str | None = None
        is_request: bool | None = None
        try:  # recover what we can so a 513 can reach the sender
            start, items, _, _ = _fields(data[:MAX_MESSAGE_SIZE])
            headers = Headers._trusted(items)
            is_request = not start[:4].upper().startswith("SIP/")
            method = start.split(" ", 1)[0] if is_request else None
        except SipParseError:
            pass
        raise ParseFailure(f"message too large ({len(data)} bytes, limit {MAX_MESSAGE_SIZE})",
                           513, method=method, headers=headers, is_request=is_request)
    start, items, bad, body = _fields(data)
    is_request = not start[:4].upper().startswith("SIP/")
    headers = Headers._trusted(items)
    method = start.split(" ", 1)[0] if is_request else None

    def fail(reason: str, status: int = 400) -> ParseFailure:
        return ParseFailure(reason, status, method=method, headers=headers,
                            is_request=is_request)

    msg: SipMessage
    if is_request:
        m = _REQUEST_RE.fullmatch(start)
        if m is None:
            raise fail(_request_line_problem(start))
        method, uri_text, _, major, minor = m.groups()
        if (major, minor) != ("2", "0"):
            raise fail(f"SIP version {major}.{minor} not supported", 505)
        try:
            uri = Uri.parse(uri_text)
        except SipParseError as e:
            raise fail(f"bad Request-URI: {e.reason}") from None
        if uri.headers:
            # §19.1.1 table: headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11)
            raise fail("bad Request-URI: escaped headers are not allowed in a Request-URI")
        msg = SipRequest(method=method, uri=uri, headers=headers, body=body)
    else:
        m = _STATUS_RE.fullmatch(start)
        if m is None:
            raise fail(f"malformed Status-Line {start[:60]!r}")
        major, minor, code, reason = m.groups()
        if (major, minor) != ("2", "0"):
            raise fail(f"SIP version {major}.{minor} not supported", 505)
        if len(code) != 3 or not "100" <= code <= "699":
            raise fail(f"bad status code {code[:20]!r}")
        msg = SipResponse(status=int(code), reason=reason or "", headers=headers, body=body)
    if bad:
        raise fail(bad)

    # Single-valued headers must not repeat (§7.3.1; RFC 4475 §3.3.8, §3.3.9). dict()
    # runs in C; only a message with some repeated name needs the slower look.
    single = dict(items)
    if len(single) == len(items):
        v = single.get("Via")
        vias = [v] if v is not None else []
        v = single.get("Contact")
        contacts = [v] if v is not None else []
    else:
        vias = []
        contacts = []
        seen: set[str] = set()
        for n, v in items:
            if n == "Via":
                vias.append(v)
            elif n == "Contact":
                contacts.append(v)
            elif n in _SINGLE:
                if n in seen:
                    raise fail(f"multiple {n} headers")
                seen.add(n)
            seen.add(n)
    date = single.get("Date")
    if not _MANDATORY.issubset(single.keys()):
        missing = [n for n in _MANDATORY_ORDER if n not in single]
        if len(missing) == 1:
            raise fail(f"missing {missing[0]} header")
        raise fail(f"missing {', '.join(missing[:-1])} and {missing[-1]} headers")

    # Content-Length framing (§18.3, §20.14)
    clt = single.get("Content-Length")
    if clt is not None:
        cl = _SMALL_INTS.get(clt)
        if cl is None:
            cl = _ascii_int(clt, 9)
        if cl is None:
            raise fail(f"bad Content-Length {clt[:20]!r}")
        if cl > len(body):
            raise fail(f"Content-Length {cl} exceeds the {len(body)} bytes of body received")
        if cl < len(body):
            msg.body = body[:cl]
    elif stream:
        raise fail("missing Content-Length on a stream transport")

    try:
        cseq_text = single["CSeq"]
        cm = CSEQ_RE.fullmatch(cseq_text)
        if cm is None or len(cm.group(1)) > 10:
            msg._cseq = CSeq.parse(cseq_text)
        elif int(cm.group(1)) >= 2**31:
            raise SipParseError(f"CSeq number {cm.group(1)} out of range")
        cseq_method = cm.group(2) if cm is not None else msg.cseq.method
        if isinstance(msg, SipRequest) and cseq_method != msg.method:
            raise SipParseError(f"CSeq method {cseq_method} does not match "
                                f"the Request-Line method {msg.method}")
        call_id = single["Call-ID"]
        if call_id not in _VALID_CALL_ID:
            if not _CALL_ID_RE.fullmatch(call_id):
                raise SipParseError(f"bad Call-ID {call_id[:40]!r}")
            _remember(_VALID_CALL_ID, call_id)
        for name in ("From", "To"):
            value = single[name]
            if value in _VALID_ADDR:
                continue
            if NAME_ADDR_FAST_RE.fullmatch(value) is None:
                try:
                    NameAddr.parse(value)
                except SipParseError as e:
                    raise SipParseError(f"bad {name} header: {e.reason}") from None
            _remember(_VALID_ADDR, value)
        if vias:
            vm = VIA_PARTS_RE.fullmatch(vias[0])
            if vm is not None:
                msg._via_match = vm
                vias = vias[1:]
        for value in vias:
            if VIA_FAST_RE.fullmatch(value) is None:
                try:
                    for part in split_comma(value, strict=True):
                        Via.parse(part)
                except SipParseError as e:
                    raise SipParseError(f"bad Via header: {e.reason}") from None
        if contacts:
            if contacts == ["*"]:
                if isinstance(msg, SipRequest) and msg.method != "REGISTER":
                    raise SipParseError("Contact '*' outside a REGISTER")
            else:
                _check_contacts(contacts)
        mf = single.get("Max-Forwards")
        if mf is not None:
            hops = _SMALL_INTS.get(mf)
            if hops is None:
                hops = _ascii_int(mf, 10)
            if hops is None or hops > 255:
                raise SipParseError(f"bad Max-Forwards {mf[:20]!r}")
        ct = single.get("Content-Type")
        if ct is not None:
            cm2 = _CONTENT_TYPE_RE.match(ct)
            if cm2 is None:
                raise SipParseError(f"bad Content-Type {ct[:40]!r}")
            if cm2.end() < len(ct):
                parse_header_params(ct[cm2.end() :])
        if date is not None and _DATE_RE.fullmatch(date) is None:
            raise SipParseError(f"bad Date {date[:40]!r} (must be an RFC 1123 date in GMT)")
    except SipParseError as e:
        raise fail(e.reason, e.status) from None
    return msg


def _check_contacts(values: list[str]) -> None:
    for value in values:
        if value in _VALID_CONTACT:
            continue
        if NAME_ADDR_FAST_RE.fullmatch(value) is None:
            try:
                parts = split_comma(value, strict=True)
                for part in parts:
                    if part == "*":
                        raise SipParseError("'*' mixed with addresses")
                    NameAddr.parse(part)
            except SipParseError as e:
                raise SipParseError(f"bad Contact header: {e.reason}") from None
        _remember(_VALID_CONTACT, value)


class StreamParser:
    """Frames SIP messages on a byte stream (§18.3) and answers RFC 5626 keep-alives.

    ``feed(data)`` returns a list of items: parsed messages, ``ParseFailure``
    instances (the stream stays usable when framing could be recovered), and
    the marker ``PING`` for a double-CRLF keep-alive that needs a single-CRLF pong.
    After a framing error the connection can no longer be trusted:
    ``broken`` becomes True and the adapter should close it.
    """

    PING = "ping"

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size
        self.broken = False

    def feed(self, data: bytes) -> list[SipMessage | ParseFailure | str]:
        out: list[SipMessage | ParseFailure | str] = []
        if self.broken:
            return out
        self._buf += data
        buf = self._buf
        while buf:
            # RFC 5626 §3.5.1: CRLFCRLF ping -> CRLF pong; lone CRLFs are ignored
            if buf[0] in (13, 10):
                if buf.startswith(b"\r\n\r\n"):
                    out.append(self.PING)
                    del buf[:4]
                    continue
                if buf == b"\r\n" or buf == b"\r" or buf == b"\r\n\r":
                    break
                del buf[:1]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    self.broken = True
                    out.append(ParseFailure("message head too large", 513))
                    buf.clear()
                break
            head = bytes(buf[:end])
            cl = _find_content_length(head)
            if cl is None:
                # Without Content-Length we cannot frame the rest of the stream.
                try:
                    parse_message(head + b"\r\n\r\n", stream=True)
                except ParseFailure as e:
                    out.append(e)
                self.broken = True
                buf.clear()
                break
            total = end + 4 + cl
            if total > self.max_size:
                self.broken = True
                out.append(ParseFailure("message too large", 513))
                buf.clear()
                break
            if len(buf) < total:
                break
            raw = bytes(buf[:total])
            del buf[:total]
            try:
                out.append(parse_message(raw, stream=True))
            except ParseFailure as e:
                out.append(e)
        return out


_CL_RE = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d{1,9})[ \t]*\r?$")


def _find_content_length(head: bytes) -> int | None:
    """Content-Length for framing; None when absent, unreadable or ambiguous (§18.3)."""
    found = {int(m) for m in _CL_RE.findall(head)}
    return found.pop() if len(found) == 1 else None


# -- building messages ---------------------------------------------------------------

_RESPONSE_COPIED = frozenset({"Via", "From", "To", "Call-ID", "CSeq"})


def build_response(request: SipRequest, status: int, reason: str | None = None,
                   *, to_tag: str | None = None,
                   headers: Sequence[tuple[str, str]] | None = None,
                   body: bytes = b"", content_type: str | None = None) -> SipResponse:
    """Build a response to ``request`` per RFC 3261 §8.2.6.2.

    Via (all values, in order), From, Call-ID and CSeq are copied; To is copied
    and gets ``to_tag`` if it has none (never for 100 Trying, §8.2.6.2).
    """
    items = [it for it in request.headers._items if it[0] in _RESPONSE_COPIED]
    if to_tag and status != 100:
        for i, (n, v) in enumerate(items):
            if n == "To":
                items[i] = ("To", _to_with_tag(request, v, to_tag))
                break
    if status == 100:
        ts = request.headers.get("Timestamp")
        if ts is not None:
            items.append(("Timestamp", ts))
    if headers:
        get = _NAME_CACHE.get
        items.extend([(get(n) or canonical_name(n), v) for n, v in headers])
    if content_type and body:
        items.append(("Content-Type", content_type))
    return SipResponse(status=status, reason=reason or REASONS.get(status, "Unknown"),
                       headers=Headers._trusted(items), body=body)


def _to_with_tag(request: SipRequest, value: str, tag: str) -> str:
    """``value`` (the request's To) with ``;tag=`` appended unless it has a tag (§8.2.6.2).

    Appending is right for both forms (§20.10): after ``<uri>`` of a name-addr,
    and after an addr-spec, whose ';' parameters are the header's. Without any
    quote character, ';', '=' and '>' are pure delimiters, so the parameters can
    be read off the string; a value with quotes is parsed (memoised) instead.
    """
    value = value.rstrip(" \t")
    if '"' in value:
        try:
            to = request.to
        except SipParseError:
            return value
        if to.tag is not None:
            return value
        return f"{value};tag={tag}"
    if "<" in value:
        params = value[value.rfind(">") + 1 :]
    else:
        semi = value.find(";")
        params = value[semi:] if semi >= 0 else ""
    if params and _has_tag_param(params):
        return value
    return f"{value};tag={tag}"


def _has_tag_param(params: str) -> bool:
    for part in params.split(";"):
        if part.partition("=")[0].strip(" \t").lower() == "tag":
            return True
    return False


def build_error_response(failure: ParseFailure) -> bytes | None:
    """Bytes of a 400 (or the failure's status) for a malformed request, when §8.2.6 allows.

    The reason phrase and a ``Warning: 399`` header (§20.43) name the problem.
    Returns None for responses and ACKs (dropped: §18.1.2, §17.2.3) and when no
    usable Via tells where to send the answer (§18.2.2).
    """
    if not failure.is_request or failure.headers is None or failure.method == "ACK":
        return None
    h = failure.headers
    vias = h.get_raw("Via")
    if not vias:
        return None
    if not _usable_via(vias[0]):
        return None
    items: list[tuple[str, str]] = [("Via", v) for v in vias]
    for name in ("From", "To", "Call-ID", "CSeq"):
        values = h.get_raw(name)
        if not values:
            continue
        value = values[0]
        if name == "To":
            value = _with_to_tag(value, h)
        items.append((name, value))
    reason = failure.reason.replace("\r", " ").replace("\n", " ")
    safe = reason.encode("ascii", "replace").decode("ascii")[:120]
    safe = "".join(c if " " <= c <= "~" else "?" for c in safe)
    items.append(("Warning", f'399 sipgw "{safe.replace(chr(34), chr(39))}"'))
    phrase = REASONS.get(failure.status, "Bad Request")
    if failure.status == 400:
        phrase = f"Bad Request - {safe}"
    resp = SipResponse(status=failure.status, reason=phrase, headers=Headers._trusted(items))
    return bytes(resp)


def _usable_via(value: str) -> bool:
    """Whether the top Via names a sent-by we could answer to, even if its params are bad."""
    m = VIA_HEAD_RE.match(value.strip(" \t"))
    if m is None:
        return False
    host, port = m.group(4), m.group(5)
    try:
        split_hostport(host if port is None else f"{host}:{port}")
    except SipParseError:
        return False
    return True


def _with_to_tag(value: str, h: Headers) -> str:
    """Add a To tag (§8.2.6.2), stable across retransmissions of the same request."""
    try:
        to = NameAddr.parse(value)
    except SipParseError:
        return value
    if to.tag is not None:
        return value
    seed = "|".join(h.get_raw("Call-ID") + h.get_raw("Via")[:1]).encode("utf-8", "replace")
    return str(to.with_tag(hashlib.sha256(seed).hexdigest()[:12]))


def split_values(value: str) -> list[str]:
    """Public re-export of the comma splitter used for multi-value headers."""
    return split_comma(value)
