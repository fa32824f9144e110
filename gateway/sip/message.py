"""SIP messages: parsing, serialisation and framing (RFC 3261 §7, §18.3, §20, §25).

``parse_message(data)`` turns one datagram (or one framed stream message) into a
``SipRequest`` or ``SipResponse``; ``bytes(msg)`` serialises it. Nothing but
``SipParseError`` ever leaves the parser. When a request is malformed, the
error carries whatever could be recovered (``SipParseError.partial``) so the
caller can still build a 400 that names the problem (§8.2.6 needs Via, From,
To, Call-ID and CSeq).

``StreamParser`` frames messages on stream transports by Content-Length
(§18.3): it copes with partial and pipelined messages and with the CRLF
keep-alives of RFC 5626 §3.5.1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Union

from gateway.sip.errors import SipParseError
from gateway.sip.headers import (
    CSeq,
    Headers,
    NameAddr,
    Via,
    canonical_name,
    is_token,
    split_comma,
)
from gateway.sip.uri import Uri

MAX_MESSAGE_SIZE = 65535
MAX_HEADERS = 256
_FOLD_RE = re.compile(r"\r?\n[ \t]+")
_STATUS_RE = re.compile(r"^SIP/(\d+\.\d+) (\d{3}) ?(.*)$")
_REQUEST_RE = re.compile(r"^(\S+) (\S+) SIP/(\d+\.\d+)$")

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


class _Common:
    """Typed, cached views of the headers every layer needs (§8.1.1)."""

    headers: Headers
    body: bytes

    @cached_property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise SipParseError("missing Via")
        return vias[0]

    @cached_property
    def from_(self) -> NameAddr:
        v = self.headers.get("From")
        if v is None:
            raise SipParseError("missing From")
        return NameAddr.parse(v)

    @cached_property
    def to(self) -> NameAddr:
        v = self.headers.get("To")
        if v is None:
            raise SipParseError("missing To")
        return NameAddr.parse(v)

    @property
    def call_id(self) -> str:
        v = self.headers.get("Call-ID")
        if not v:
            raise SipParseError("missing Call-ID")
        return v

    @cached_property
    def cseq(self) -> CSeq:
        v = self.headers.get("CSeq")
        if v is None:
            raise SipParseError("missing CSeq")
        return CSeq.parse(v)

    @cached_property
    def contacts(self) -> list[NameAddr]:
        """Contact values; a lone ``*`` is returned as an empty list (see ``contact_star``)."""
        vals = self.headers.get_all("Contact")
        if vals == ["*"]:
            return []
        return [NameAddr.parse(v) for v in vals]

    @property
    def contact_star(self) -> bool:
        return self.headers.get_all("Contact") == ["*"]

    def header_int(self, name: str) -> int | None:
        v = self.headers.get(name)
        if v is None:
            return None
        v = v.strip()
        if not v.isdigit() or len(v) > 10:
            raise SipParseError(f"bad {name} value {v[:20]!r}")
        return int(v)

    def invalidate(self) -> None:
        """Forget cached parsed headers after ``headers`` was edited in place."""
        for name in ("vias", "from_", "to", "cseq", "contacts"):
            self.__dict__.pop(name, None)


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
        out = [f"{self.method} {self.uri} {self.version}\r\n"]
        return _serialise(out, self.headers, self.body)

    @property
    def is_request(self) -> bool:
        return True


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
        out = [f"{self.version} {self.status} {self.reason}\r\n"]
        return _serialise(out, self.headers, self.body)

    @property
    def is_request(self) -> bool:
        return False


SipMessage = Union[SipRequest, SipResponse]


def _serialise(out: list[str], headers: Headers, body: bytes) -> bytes:
    has_cl = False
    for n, v in headers:
        if n == "Content-Length":
            has_cl = True
            out.append(f"Content-Length: {len(body)}\r\n")
        else:
            out.append(f"{n}: {v}\r\n")
    if not has_cl:
        out.append(f"Content-Length: {len(body)}\r\n")
    out.append("\r\n")
    return _encode("".join(out)) + body


class ParseFailure(SipParseError):
    """A parse error with whatever request parts could be recovered for a 400."""

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
    line, trimmed to Content-Length; a body shorter than Content-Length is an
    error (§18.3). Stream framing is done by ``StreamParser`` before this.
    """
    try:
        return _parse(data, stream)
    except ParseFailure:
        raise
    except SipParseError as e:
        raise ParseFailure(e.reason, e.status) from None
    except (ValueError, IndexError, UnicodeError, OverflowError) as e:  # defensive net
        raise ParseFailure(f"malformed message ({type(e).__name__})") from None


def _parse(data: bytes, stream: bool) -> SipMessage:
    if len(data) > MAX_MESSAGE_SIZE:
        raise ParseFailure("message too large", 513)
    # RFC 3261 §7.5: ignore CRLFs before the start-line
    data = data.lstrip(b"\r\n")
    if not data:
        raise ParseFailure("empty message")
    head_raw, body = _split_head(data)
    head = _decode(head_raw)
    if "\n " in head or "\n\t" in head:
        head = _FOLD_RE.sub(" ", head)
    lines = head.split("\r\n") if "\r\n" in head else head.split("\n")
    start = lines[0]
    is_request = not start.startswith("SIP/")
    items: list[tuple[str, str]] = []
    if len(lines) > MAX_HEADERS:
        raise ParseFailure("too many header fields", 400, is_request=is_request)
    bad_header: str | None = None
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not name:
            bad_header = bad_header or f"malformed header line {line[:40]!r}"
            continue
        try:
            cname = canonical_name(name)
        except SipParseError as e:
            bad_header = bad_header or e.reason
            continue
        if "\x00" in value or "\r" in value or "\n" in value:
            bad_header = bad_header or f"illegal character in {cname}"
        items.append((cname, value.strip(" \t")))
    headers = Headers._trusted(items)

    def fail(reason: str, status: int = 400) -> ParseFailure:
        method = start.split(" ", 1)[0] if is_request else None
        return ParseFailure(reason, status, method=method, headers=headers,
                            is_request=is_request)

    if bad_header:
        raise fail(bad_header)

    # Content-Length framing (§18.3, §20.14)
    cl_vals = headers.get_raw("Content-Length")
    if len(cl_vals) > 1 and len(set(v.strip() for v in cl_vals)) > 1:
        raise fail("conflicting Content-Length headers")
    if cl_vals:
        clt = cl_vals[0].strip()
        if not clt.isdigit() or len(clt) > 9:
            raise fail(f"bad Content-Length {clt[:20]!r}")
        cl = int(clt)
        if cl > len(body):
            raise fail(f"Content-Length {cl} exceeds body of {len(body)} bytes")
        body = body[:cl]
    elif stream:
        raise fail("missing Content-Length on a stream transport")

    msg: SipMessage
    if is_request:
        m = _REQUEST_RE.match(start)
        if m is None:
            raise fail(f"malformed request line {start[:60]!r}")
        method, uri_text, version = m.groups()
        if not is_token(method):
            raise fail(f"bad method {method[:20]!r}")
        if version != "2.0":
            raise fail(f"SIP version {version} not supported", 505)
        try:
            uri = Uri.parse(uri_text)
        except SipParseError as e:
            raise fail(f"bad Request-URI: {e.reason}") from None
        msg = SipRequest(method=method, uri=uri, headers=headers, body=body)
    else:
        m = _STATUS_RE.match(start)
        if m is None:
            raise fail(f"malformed status line {start[:60]!r}")
        version, code, reason = m.groups()
        if version != "2.0":
            raise fail(f"SIP version {version} not supported", 505)
        status = int(code)
        if not 100 <= status <= 699:
            raise fail(f"status code {status} out of range")
        msg = SipResponse(status=status, reason=reason, headers=headers, body=body)

    # The mandatory headers of §8.1.1 must be present and well-formed.
    try:
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            if name not in headers:
                raise SipParseError(f"missing {name} header")
        msg.vias  # noqa: B018 - parse to validate
        msg.from_  # noqa: B018
        msg.to  # noqa: B018
        cseq = msg.cseq
        if isinstance(msg, SipRequest) and cseq.method != msg.method:
            raise SipParseError(f"CSeq method {cseq.method} does not match {msg.method}")
        if msg.headers.get("Max-Forwards") is not None:
            msg.header_int("Max-Forwards")
    except SipParseError as e:
        raise fail(e.reason, e.status) from None
    return msg


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
            if buf[:1] in (b"\r", b"\n"):
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
    m = _CL_RE.search(head)
    return int(m.group(1)) if m else None


# -- building messages ---------------------------------------------------------------

def build_response(request: SipRequest, status: int, reason: str | None = None,
                   *, to_tag: str | None = None, headers: list[tuple[str, str]] | None = None,
                   body: bytes = b"", content_type: str | None = None) -> SipResponse:
    """Build a response to ``request`` per RFC 3261 §8.2.6.2.

    Via (all values, in order), From, Call-ID and CSeq are copied; To is copied
    and gets ``to_tag`` if it has none (never for 100 Trying, §8.2.6.2).
    """
    items: list[tuple[str, str]] = []
    for n, v in request.headers:
        if n in ("Via", "From", "Call-ID", "CSeq"):
            items.append((n, v))
        elif n == "To":
            if to_tag and status != 100:
                try:
                    to = request.to
                    if to.tag is None:
                        v = str(to.with_tag(to_tag))
                except SipParseError:
                    pass
            items.append((n, v))
    if status == 100 and request.headers.get("Timestamp") is not None:
        items.append(("Timestamp", request.headers.get("Timestamp") or ""))
    for n, v in headers or ():
        items.append((canonical_name(n), v))
    if content_type and body:
        items.append(("Content-Type", content_type))
    return SipResponse(status=status, reason=reason or REASONS.get(status, "Unknown"),
                       headers=Headers._trusted(items), body=body)


def build_error_response(failure: ParseFailure) -> bytes | None:
    """Bytes of a 400 (or the failure's status) for a malformed request, when §8.2.6 allows.

    Returns None for responses (dropped, §18.1.2 / §16.7) and when the headers
    needed to route a response back (a Via at least) are unusable.
    """
    if not failure.is_request or failure.headers is None or failure.method == "ACK":
        return None
    h = failure.headers
    items: list[tuple[str, str]] = []
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for v in h.get_raw(name):
            items.append((name, v))
    vias = h.get_all("Via")
    if not vias:
        return None
    try:
        Via.parse(vias[0])
    except SipParseError:
        return None
    reason = failure.reason.replace("\r", " ").replace("\n", " ")
    safe = reason.encode("ascii", "replace").decode("ascii")[:120]
    items.append(("Warning", f'399 sipgw "{safe.replace(chr(34), chr(39))}"'))
    phrase = REASONS.get(failure.status, "Bad Request")
    if failure.status == 400:
        phrase = f"Bad Request - {safe}"
    resp = SipResponse(status=failure.status, reason=phrase, headers=Headers._trusted(items))
    return bytes(resp)


def split_values(value: str) -> list[str]:
    """Public re-export of the comma splitter used for multi-value headers."""
    return split_comma(value)
