"""A lean reading of the everyday UDP REGISTER, and its responses as bytes (RFC 3261 §10.2).

Nearly every REGISTER a fleet sends is the same shape: one Via, one Contact, an
optional Authorization, no body. ``read_register`` picks that shape's values
out of the parser's header fields as strings, without building the header
objects (Via, name-addr, URI) the general path uses, and returns None for
anything else: that goes the general way (the transaction layer and the full
header model), which also answers every malformed message. For every datagram
it accepts the general path reads the same values (tests/unit/sip/test_lean.py
holds it to that).

``stamp_via`` is ``routing.stamp_via`` on text (§18.2.1, RFC 3581 §4) and
``render_response`` is ``build_response`` + serialisation for such a request
(§8.2.6.2): Via, From, To (with our tag), Call-ID and CSeq copied.
"""

from __future__ import annotations

import collections
import enum
import re
from dataclasses import dataclass

from gateway.sip.headers import canonical_name
from gateway.sip.message import ParseFailure, SipRequest, parse_message

# Header names whose value the registrar reads, by the parser's canonical names.
_VIA, _FROM, _TO, _CALL_ID, _CSEQ, _CONTACT, _EXPIRES, _AUTH, _UA = range(9)
_SLOTS = {"Via": _VIA, "From": _FROM, "To": _TO, "Call-ID": _CALL_ID, "CSeq": _CSEQ,
          "Contact": _CONTACT, "Expires": _EXPIRES, "Authorization": _AUTH,
          "User-Agent": _UA}
# Headers that change what the request means (routing, extensions, outbound proxies,
# bodies): their presence sends the request the general way.
_GENERAL = frozenset(canonical_name(n) for n in (
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


def read_register(data: bytes) -> LeanRegister | None:
    """``data`` as a LeanRegister, or None when it is not the plain shape.

    The general parser reads the datagram first (its line cache makes that cheap for
    a phone's repeated lines), so everything it refuses is refused here too; this
    reader then only picks values out and decides whether the shape is plain.
    """
    if not data.startswith(b"REGISTER sip:"):
        return None
    try:
        msg = parse_message(data)
    except ParseFailure:
        return None
    if msg.body or not isinstance(msg, SipRequest):
        return None
    vals: list[str | None] = [None] * 9
    slots = _SLOTS
    for name, value in msg.headers._items:
        slot = slots.get(name)
        if slot is None:
            if name in _GENERAL:
                return None
            continue
        if vals[slot] is not None:
            return None  # repeated: several Vias, Contacts or credentials
        vals[slot] = value
    via, from_, to, call_id, cseq, contact, expires, auth, ua = vals
    if via is None or from_ is None or to is None or call_id is None or cseq is None:
        return None
    maxf = msg.headers.get("Max-Forwards")
    if maxf is not None and maxf.strip("0") == "":
        return None  # 0: the general checks answer 483
    number, _, method = cseq.partition(" ")
    if method != "REGISTER" or not number.isdigit():
        return None
    expires_n: int | None = None
    if expires is not None:
        if not expires.isdigit() or len(expires) > 9:
            return None
        expires_n = int(expires)
    if contact is not None and ("," in contact or contact == "*"):
        return None
    via_parts = _read_via(via)
    if via_parts is None:
        return None
    user = _to_user(to)
    if user is None:
        return None
    return LeanRegister(via=via, branch=via_parts[0], sent_by_host=via_parts[1],
                        rport=via_parts[2], from_=from_, to=to, to_user=user,
                        call_id=call_id, cseq=cseq, cseq_number=int(number), contact=contact,
                        expires=expires_n, authorization=auth, user_agent=ua or "")


def _read_via(via: str) -> tuple[str, str, bool] | None:
    """(branch, unbracketed sent-by host, bare rport) of a plain UDP Via, else None."""
    if "," in via or '"' in via:
        return None
    parts = via.split(";")
    proto, _, sent_by = parts[0].partition(" ")
    if proto.upper().replace(" ", "") != "SIP/2.0/UDP":
        return None
    sent_by = sent_by.strip(" \t")
    if not sent_by or " " in sent_by:
        return None
    if sent_by.startswith("["):
        close = sent_by.find("]")
        if close < 0:
            return None
        host = sent_by[1:close]
    else:
        host = sent_by.partition(":")[0]
    branch = ""
    rport = False
    for p in parts[1:]:
        k, eq, v = p.partition("=")
        k = k.strip(" \t").lower()
        if k == "branch":
            branch = v.strip(" \t")
        elif k == "rport":
            if eq:
                return None  # a value from the client: the general way
            rport = True
        elif not k or not _TOKEN(k):
            return None
    if not branch.startswith("z9hG4bK") or len(branch) > 200 or not _TOKEN(branch):
        return None
    return branch, host.lower(), rport


def _to_user(to: str) -> str | None:
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
    out = []
    for p in req.via.split(";"):
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
