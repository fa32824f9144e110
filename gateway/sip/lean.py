"""A lean reading of the everyday UDP REGISTER, and its responses as bytes (RFC 3261 §10.2).

Nearly every REGISTER a fleet sends is the same shape: one Via, one Contact, an
optional Authorization, no body. ``read_register`` reads exactly that
shape off the datagram as strings, with the general parser's own validators
but none of its header objects, and returns None for anything else: that goes
the general way (``parse_message``, the transaction layer), which also answers
every malformed message. For every datagram it accepts the general parser reads
the same values (tests/unit/sip/test_lean.py holds it to that).

``stamp_via`` is ``routing.stamp_via`` on text (§18.2.1, RFC 3581 §4) and
``render_response`` is ``build_response`` + serialisation for such a request
(§8.2.6.2): Via, From, To (with our tag), Call-ID and CSeq copied.
"""

from __future__ import annotations

import collections
import enum
import re
from dataclasses import dataclass

from gateway.sip.errors import SipParseError
from gateway.sip.headers import (
    _NAME_CACHE,
    _NAME_CACHE_MAX,
    NAME_ADDR_FAST_RE,
    VIA_PARTS_RE,
    NameAddr,
    canonical_name,
)
from gateway.sip.memo import remember, remember_as
from gateway.sip.message import (
    _CALL_ID_RE,
    _DATE_RE,
    _REQUEST_RE,
    _VALID_ADDR,
    _VALID_CALL_ID,
    _VALID_CONTACT,
    MAX_HEADERS,
    _check_contacts,
)
from gateway.sip.uri import Uri

# Header names (the parser's canonical ones) whose value is read, by slot: the
# registrar's, then three the parser checks (the head ends the datagram, so
# Content-Length can only be 0).
_SLOTS = {"Via": 0, "From": 1, "To": 2, "Call-ID": 3, "CSeq": 4, "Contact": 5,
          "Expires": 6, "Authorization": 7, "User-Agent": 8, "Max-Forwards": 9,
          "Date": 10, "Content-Length": 11}
# Headers that change what the request means (routing, extensions, outbound proxies,
# bodies): their presence sends the request the general way (slot -1).
_SLOTS.update((canonical_name(n), -1) for n in (
    "route", "require", "proxy-require", "path", "content-type", "content-encoding",
    "timestamp", "proxy-authorization", "security-client", "security-verify"))
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+").fullmatch
# Characters a To user part may hold for the lean path: no escapes ('%' needs decoding),
# no ';' user parameters, no ':' password.
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,]+").fullmatch


@dataclass(slots=True)
class LeanRegister:
    """The parts of a plain UDP REGISTER the registrar reads; values as received (stripped)."""

    via: str  # the one Via value
    branch: str  # its branch (always RFC 3261 "z9hG4bK..." here)
    sent_by_host: str  # unbracketed
    rport: bool  # RFC 3581 "rport" present without a value
    from_: str
    to: str
    to_user: str
    call_id: str
    cseq: str  # "<n> REGISTER"
    cseq_number: int
    contact: str | None  # the one Contact value, or None
    expires: int | None  # the Expires header
    authorization: str | None
    user_agent: str
    via_shape: str | None = None  # the Via with its branch cut out, once it is known


def read_register(data: bytes) -> LeanRegister | None:
    """``data`` as a LeanRegister, or None when it is not the plain shape.

    Every value taken passes the very checks ``parse_message`` applies to it (its
    validators and their memories of valid values), so what the general parser
    refuses is refused here too; every header line is split as the parser splits it.
    """
    if not data.startswith(b"REGISTER sip:"):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(data):
        return None  # a body, trailing bytes or bare-LF line ends: the general parser
    try:
        text = data[:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    n = len(lines) - 1
    if n >= MAX_HEADERS or text.count("\n") != n or text.count("\r") != n or "\x00" in text:
        return None  # bare CR/LF, NULs, too many lines
    if not _request_line_ok(lines[0]):
        return None
    vals: list[str | None] = [None] * 12
    slot_of = _RAW_SLOTS
    for line in lines[1:]:
        colon = line.find(":")
        slot = slot_of.get(line[:colon]) if colon > 0 else None
        if slot is None:
            slot = _slot_of(line)
            if slot is None:
                return None
        if slot >= 0:
            if vals[slot] is not None:
                return None  # repeated: several Vias, Contacts, credentials …
            vals[slot] = line[colon + 1:].strip(" \t")
        elif slot == _MEANINGFUL:
            return None  # a header that changes what the request means
        # else: repeats of other headers are the parser's business, not ours
    maxf, date, length = vals[9], vals[10], vals[11]
    if length is not None and length != "0":
        return None
    if maxf is not None and (not maxf.isdigit() or len(maxf) > 3 or not 0 < int(maxf) <= 255):
        return None  # 0 (483) or garbage: the general checks answer it
    if date is not None and _DATE_RE.fullmatch(date) is None:
        return None
    via, from_, to, call_id, cseq, contact, expires, auth, ua = vals[:9]
    if via is None or from_ is None or to is None or call_id is None or cseq is None:
        return None
    number, _, method = cseq.partition(" ")
    if method != "REGISTER" or not number.isdigit() or len(number) > 9:
        return None
    expires_n: int | None = None
    if expires is not None:
        if not expires.isdigit() or len(expires) > 9:
            return None
        expires_n = int(expires)
    if contact is not None and (contact == "*" or "," in contact or not _contact_ok(contact)):
        return None
    if not (_address_ok(from_) and _address_ok(to) and _call_id_ok(call_id)):
        return None
    via_parts = _read_via(via)
    if via_parts is None:
        return None
    user = _to_user(to)
    if user is None:
        return None
    # (positional: keywords cost a measurable share of this function's time)
    return LeanRegister(via, *via_parts[:3], from_, to, user, call_id, cseq, int(number),
                        contact, expires_n, auth, ua or "", via_parts[3])


_MEANINGFUL = -1  # a header whose presence sends the request the general way
_OTHER = -2  # a header the lean reading skips
# Header names as sent (the text before the colon) -> slot, _MEANINGFUL or _OTHER
_RAW_SLOTS: dict[str, int] = {}


def _slot_of(line: str) -> int | None:
    """The slot of a header line's name, split as the parser splits it (at the first
    colon, the name right-stripped, which must be a token); None: not a header line."""
    name, sep, _ = line.partition(":")
    if not sep or line[0] in " \t":
        return None  # not a header, or a folded continuation line
    cname = _NAME_CACHE.get(name)
    if cname is None:
        bare = name.rstrip(" \t")
        if not _TOKEN(bare):
            return None
        cname = canonical_name(bare)
        if len(_NAME_CACHE) < _NAME_CACHE_MAX:
            _NAME_CACHE[name] = cname
    slot = _SLOTS.get(cname, _OTHER)
    if len(_RAW_SLOTS) < _NAME_CACHE_MAX:
        _RAW_SLOTS[name] = slot
    return slot


_REQUEST_LINES: set[str] = set()  # request lines proven good (a fleet sends a handful)


def _request_line_ok(start: str) -> bool:
    if start in _REQUEST_LINES:
        return True
    m = _REQUEST_RE.fullmatch(start)
    if m is None or m.group(1) != "REGISTER" or (m.group(4), m.group(5)) != ("2", "0"):
        return False
    try:
        if Uri.parse(m.group(2)).headers:
            return False
    except SipParseError:
        return False
    remember(_REQUEST_LINES, start)
    return True


def _address_ok(value: str) -> bool:
    """From/To as ``parse_message`` checks them (and remembers the good ones)."""
    if value in _VALID_ADDR:
        return True
    if NAME_ADDR_FAST_RE.fullmatch(value) is None:
        try:
            NameAddr.parse(value)
        except SipParseError:
            return False
    remember(_VALID_ADDR, value)
    return True


def _call_id_ok(value: str) -> bool:
    if value in _VALID_CALL_ID:
        return True
    if _CALL_ID_RE.fullmatch(value) is None:
        return False
    remember(_VALID_CALL_ID, value)
    return True


def _contact_ok(value: str) -> bool:
    if value in _VALID_CONTACT:
        return True
    try:
        _check_contacts([value])
    except SipParseError:
        return False
    return True


# A phone's Vias differ only in their branch: the rest ("shape", with the branch cut
# out) maps to the sent-by host and rport that reading the whole Via gave.
_VIA_SHAPES: dict[str, tuple[str, bool]] = {}
# A branch that any Via of a known shape may carry: RFC 3261's magic cookie, a token
# (the fast shape's parameter value), at most 200 characters as _parse_via allows.
_BRANCH = re.compile(r"z9hG4bK[A-Za-z0-9\-.!%*_+`'~:]{0,193}").fullmatch


def _read_via(via: str) -> tuple[str, str, bool, str | None] | None:
    """(branch, sent-by host, bare rport, shape) of a Via in the parser's fast UDP shape;
    the shape (the Via with the branch value cut out) only once it is known good."""
    head, sep, tail = via.partition(";branch=")
    if not sep:
        parts = _parse_via(via)
        return None if parts is None else (*parts, None)
    semi = tail.find(";")
    branch, rest = (tail, "") if semi < 0 else (tail[:semi], tail[semi:])
    shape = head + "\x00" + rest  # (NUL never appears in a header: a safe separator)
    known = _VIA_SHAPES.get(shape)
    if known is not None and _BRANCH(branch):
        return branch, known[0], known[1], shape
    parts = _parse_via(via)
    if parts is None:
        return None
    # remembered only when this branch parameter is the one the Via's reading took
    # (not an earlier or a differently spelled one) and is of the kind _BRANCH admits
    if parts[0] == branch and _BRANCH(branch):
        remember_as(_VIA_SHAPES, shape, (parts[1], parts[2]), _VIA_SHAPES_MAX)
        return (*parts, shape)
    return (*parts, None)


_VIA_SHAPES_MAX = 4096


def _parse_via(via: str) -> tuple[str, str, bool] | None:
    m = VIA_PARTS_RE.fullmatch(via)
    if m is None or m.group(1).upper() != "UDP":
        return None  # what the fast shape refuses the general parser judges
    params = m.group(4)
    if '"' in params:
        return None
    branch = ""
    rport = False
    for p in params[1:].split(";"):
        k, eq, v = p.partition("=")
        k = k.lower()
        if k == "branch":
            branch = v
        elif k == "rport":
            if eq:
                return None  # a value from the client: the general way
            rport = True
    if not branch.startswith("z9hG4bK") or len(branch) > 200:
        return None
    return branch, m.group(2).lower(), rport


_TO_USERS: dict[str, str | None] = {}  # a phone's two REGISTERs of a cycle share its To


def _to_user(to: str) -> str | None:
    try:
        return _TO_USERS[to]
    except KeyError:
        pass
    return remember_as(_TO_USERS, to, _read_to_user(to))


def _read_to_user(to: str) -> str | None:
    if '"' in to:
        return None  # a quoted display name: the general parser
    lt = to.find("<")
    if lt >= 0:
        gt = to.find(">", lt)
        if gt < 0:
            return None
        uri, rest = to[lt + 1:gt], to[gt + 1:]
    else:
        uri, _, rest = to.partition(";")
        rest = ";" + rest if rest else ""
    if "tag=" in rest.lower():
        return None  # a To tag on a REGISTER: rare, and §8.2.6.2 keeps it
    if uri[:4].lower() != "sip:":
        return None
    user, at, _ = uri[4:].partition("@")
    if not at or not _USER(user):
        return None
    return user


def stamp_via(req: LeanRegister, host: str, port: int) -> str:
    """The Via with ``received``/``rport`` as ``routing.stamp_via`` adds them."""
    if not req.rport and req.sent_by_host == host.lower():
        return req.via
    shape = req.via_shape
    if shape is None:
        return _stamp(req.via, host, port)
    # A phone's answer to its challenge has the 401's Via but for the branch: the
    # stamped text around the branch is kept, per Via shape and source
    key = (shape, host, port)
    around = _STAMPS.get(key)
    if around is None:
        head, _, rest = shape.partition("\x00")
        pre, _, post = _stamp(head + ";branch=\x00" + rest, host, port).partition("\x00")
        around = remember_as(_STAMPS, key, (pre, post), _VIA_SHAPES_MAX)
    return around[0] + req.branch + around[1]


_STAMPS: dict[tuple[str, str, int], tuple[str, str]] = {}


def _stamp(via: str, host: str, port: int) -> str:
    out = []
    for p in via.split(";"):
        k = p.partition("=")[0].strip(" \t").lower()
        if k == "rport":
            out.append(f"rport={port}")
        elif k != "received":
            out.append(p)
    out.append(f"received={host}")
    return ";".join(out)


def render_response(req: LeanRegister, via: str, status: int, reason: str, to_tag: str,
                    headers: str) -> bytes:
    """A response to ``req``: copied headers, ``headers`` (complete lines), no body."""
    to = req.to.rstrip(" \t")
    return (f"SIP/2.0 {status} {reason}\r\nVia: {via}\r\nFrom: {req.from_}\r\n"
            f"To: {to};tag={to_tag}\r\nCall-ID: {req.call_id}\r\nCSeq: {req.cseq}\r\n"
            f"{headers}Content-Length: 0\r\n\r\n").encode()




class Replay(enum.Enum):
    """What ``ReplayCache`` knows of a request it has seen and holds no response for."""

    IN_PROGRESS = "in progress"  # being answered: a retransmission is absorbed
    GENERAL = "general"  # handed to the general path, whose transaction answers copies


class ReplayCache:
    """The server-transaction memory of the lean path (RFC 3261 §17.2.2).

    A retransmitted request must get the same final response, not a second
    processing (a REGISTER's Call-ID/CSeq check would refuse it). Keyed by
    (branch, source host, source port); each entry lives ``hold`` seconds (Timer
    J, 64*T1, plus the time to answer) and at most ``limit`` entries are kept.
    """

    def __init__(self, hold: float = 64 * 0.5 + 4.0, limit: int = 200_000) -> None:
        self.hold = hold
        self.limit = limit
        self._items: dict[tuple[str, str, int], bytes | Replay] = {}
        self._order: collections.deque[tuple[float, tuple[str, str, int]]] = \
            collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[str, str, int]) -> bytes | Replay | None:
        return self._items.get(key)

    def put(self, key: tuple[str, str, int], value: bytes | Replay, now: float) -> None:
        items = self._items
        if key not in items:
            order = self._order
            order.append((now + self.hold, key))
            if len(order) > self.limit:
                items.pop(order.popleft()[1], None)
        items[key] = value

    def expire(self, now: float) -> None:
        order, items = self._order, self._items
        while order and order[0][0] <= now:
            items.pop(order.popleft()[1], None)


__all__ = ["LeanRegister", "Replay", "ReplayCache", "read_register", "render_response",
           "stamp_via"]
