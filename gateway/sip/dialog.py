"""SIP dialogs (RFC 3261 §12, §13.2.2.4, §14; RFC 3311 UPDATE as target refresh).

A ``Dialog`` holds what both ends agreed on: Call-ID, tags, CSeq spaces, the
remote target and the route set. It builds in-dialog requests (loose and strict
routing, §12.2.1.1), validates incoming ones (CSeq ordering, §12.2.2), applies
target refreshes, and serialises to a plain dict so dialog state can live in
Redis and survive a node restart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from gateway.sip.errors import SipParseError
from gateway.sip.headers import Headers, NameAddr
from gateway.sip.message import SipRequest, SipResponse
from gateway.sip.uri import Uri

TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogError(SipParseError):
    """An in-dialog request that must be rejected (``status`` says how, §12.2.2)."""


@dataclass
class Dialog:
    """One dialog as seen from our side (RFC 3261 §12.1)."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # our From (UAC) / To (UAS) name-addr, without tag
    remote_uri: str
    remote_target: str  # remote Contact URI
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    local_contact: str = ""
    secure: bool = False
    state: DialogState = DialogState.EARLY

    # -- creation ------------------------------------------------------------------
    @classmethod
    def from_uas(cls, request: SipRequest, response: SipResponse, local_tag: str,
                 local_contact: str) -> Dialog:
        """UAS side: dialog from a request and our 1xx/2xx answer (§12.1.1)."""
        contacts = request.contacts
        if not contacts:
            raise DialogError("dialog-creating request without Contact", 400)
        route_set = [v for v in request.headers.get_all("Record-Route")]
        from_ = request.from_
        to = request.to
        state = DialogState.CONFIRMED if 200 <= response.status < 300 else DialogState.EARLY
        return cls(
            call_id=request.call_id, local_tag=local_tag, remote_tag=from_.tag or "",
            local_uri=str(_without_tag(to)), remote_uri=str(_without_tag(from_)),
            remote_target=str(contacts[0].uri), route_set=route_set,
            local_seq=0, remote_seq=request.cseq.number, local_contact=local_contact,
            secure=request.uri.scheme == "sips", state=state)

    @classmethod
    def from_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """UAC side: dialog from our request and a 1xx-with-tag/2xx response (§12.1.2)."""
        to = response.to
        if not to.tag:
            raise DialogError("response without To tag cannot create a dialog", 400)
        contacts = response.contacts
        target = str(contacts[0].uri) if contacts else str(request.uri)
        route_set = list(reversed(response.headers.get_all("Record-Route")))
        state = DialogState.CONFIRMED if 200 <= response.status < 300 else DialogState.EARLY
        local_contact = request.headers.get("Contact") or ""
        return cls(
            call_id=request.call_id, local_tag=request.from_.tag or "", remote_tag=to.tag,
            local_uri=str(_without_tag(request.from_)), remote_uri=str(_without_tag(to)),
            remote_target=target, route_set=route_set, local_seq=request.cseq.number,
            remote_seq=None, local_contact=local_contact,
            secure=request.uri.scheme == "sips", state=state)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    # -- outgoing ------------------------------------------------------------------
    def create_request(self, method: str, *, headers: list[tuple[str, str]] | None = None,
                       body: bytes = b"", content_type: str | None = None,
                       cseq: int | None = None) -> SipRequest:
        """An in-dialog request (§12.2.1.1). ACK and CANCEL reuse the INVITE's CSeq: pass it."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        target = Uri.parse(self.remote_target)
        routes = list(self.route_set)
        if routes:
            first = NameAddr.parse(routes[0])
            if not first.uri.has_param("lr"):
                # strict routing: the first route becomes the Request-URI (§12.2.1.1)
                routes = routes[1:] + [f"<{self.remote_target}>"]
                target = first.uri
        items: list[tuple[str, str]] = [
            ("Max-Forwards", "70"),
            ("From", f"{self.local_uri};tag={self.local_tag}"),
            ("To", f"{self.remote_uri};tag={self.remote_tag}"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        items += [("Route", r) for r in routes]
        if self.local_contact and method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY",
                                             "REFER"):
            items.append(("Contact", self.local_contact))
        items += headers or []
        if content_type and body:
            items.append(("Content-Type", content_type))
        return SipRequest(method=method, uri=target, headers=Headers(items), body=body)

    # -- incoming ------------------------------------------------------------------
    def receive_request(self, request: SipRequest) -> None:
        """Validate and absorb an in-dialog request (§12.2.2); raises DialogError(500) when
        its CSeq is lower than the last one (out of order)."""
        number = request.cseq.number
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and number < self.remote_seq:
                raise DialogError("CSeq lower than the dialog's remote sequence", 500)
            self.remote_seq = number
        if request.method in TARGET_REFRESH and request.contacts:
            self.remote_target = str(request.contacts[0].uri)

    def receive_response(self, request_method: str, response: SipResponse) -> None:
        """Target refresh from a 2xx to re-INVITE/UPDATE, and early->confirmed (§12.2.1.2)."""
        if 200 <= response.status < 300:
            if request_method == "INVITE":
                self.state = DialogState.CONFIRMED
            if request_method in TARGET_REFRESH and response.contacts:
                self.remote_target = str(response.contacts[0].uri)

    def matches(self, msg: SipRequest | SipResponse, *, incoming: bool = True) -> bool:
        try:
            if msg.call_id != self.call_id:
                return False
            if incoming and isinstance(msg, SipRequest):
                return msg.to.tag == self.local_tag and msg.from_.tag == self.remote_tag
            return msg.from_.tag == self.local_tag and msg.to.tag == self.remote_tag
        except SipParseError:
            return False

    # -- persistence ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id, "local_tag": self.local_tag,
            "remote_tag": self.remote_tag, "local_uri": self.local_uri,
            "remote_uri": self.remote_uri, "remote_target": self.remote_target,
            "route_set": list(self.route_set), "local_seq": self.local_seq,
            "remote_seq": self.remote_seq, "local_contact": self.local_contact,
            "secure": self.secure, "state": self.state.value,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Dialog:
        return cls(
            call_id=str(d["call_id"]), local_tag=str(d["local_tag"]),
            remote_tag=str(d["remote_tag"]), local_uri=str(d["local_uri"]),
            remote_uri=str(d["remote_uri"]), remote_target=str(d["remote_target"]),
            route_set=[str(r) for r in d.get("route_set", [])],
            local_seq=int(d.get("local_seq", 0)),
            remote_seq=None if d.get("remote_seq") is None else int(d["remote_seq"]),
            local_contact=str(d.get("local_contact", "")), secure=bool(d.get("secure")),
            state=DialogState(d.get("state", "early")))


def build_ack_for_2xx(invite: SipRequest, response: SipResponse, dialog: Dialog) -> SipRequest:
    """The ACK a UAC sends for a 2xx to INVITE: a new transaction, same CSeq number (§13.2.2.4)."""
    ack = dialog.create_request("ACK", cseq=invite.cseq.number)
    # Credentials used for the INVITE go on the ACK too (§13.2.2.4)
    for name in ("Authorization", "Proxy-Authorization"):
        for v in invite.headers.get_raw(name):
            ack.headers.add(name, v)
    return ack


def _without_tag(addr: NameAddr) -> NameAddr:
    from dataclasses import replace

    return replace(addr, params=tuple((k, v) for k, v in addr.params if k != "tag"),
                   bracketed=True)
