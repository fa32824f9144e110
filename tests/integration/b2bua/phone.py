"""A scriptable SIP phone on a real loopback UDP socket, for B2BUA integration tests.

It runs on the test's asyncio loop (the gateway's loop too: the Twisted asyncio
reactor), registers with digest, and lets a test send and expect messages with
deadlines. It does only what a test tells it, so protocol behaviour on the
gateway side is what gets checked.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from gateway.sip.digest import DigestChallenge, compute_ha1, compute_response
from gateway.sip.message import SipRequest, SipResponse, build_response, parse_message

UA = "Yealink SIP-T54W 96.86.0.100"
SDP = ("v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 5004 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
       "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, phone: Phone) -> None:
        self.phone = phone

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            msg = parse_message(data)
        except Exception:  # noqa: BLE001 - a test phone records garbage as such
            return
        self.phone.inbox.put_nowait(msg)


class Phone:
    """One registered SIP device (UDP)."""

    def __init__(self, username: str, password: str, realm: str, gw: tuple[str, int]) -> None:
        self.username = username
        self.password = password
        self.realm = realm
        self.gw = gw
        self.inbox: asyncio.Queue[SipRequest | SipResponse] = asyncio.Queue()
        self.backlog: list[SipRequest | SipResponse] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.cseq = 0
        self.call_id = secrets.token_hex(8)
        self.tag = secrets.token_hex(4)

    async def open(self) -> Phone:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self),
                                                           local_addr=("127.0.0.1", 0))
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def aor(self) -> str:
        return f"sip:{self.username}@{self.realm}"

    @property
    def contact(self) -> str:
        return f"<sip:{self.username}@127.0.0.1:{self.port}>"

    def send(self, msg: SipRequest | SipResponse | bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(msg if isinstance(msg, bytes) else bytes(msg), self.gw)

    async def expect(self, pred: Callable[[SipRequest | SipResponse], bool],
                     timeout: float = 5.0) -> Any:
        for i, m in enumerate(self.backlog):
            if pred(m):
                return self.backlog.pop(i)

        async def wait() -> SipRequest | SipResponse:
            while True:
                m = await self.inbox.get()
                if pred(m):
                    return m
                self.backlog.append(m)
        return await asyncio.wait_for(wait(), timeout)

    async def expect_request(self, method: str, timeout: float = 5.0) -> SipRequest:
        r: SipRequest = await self.expect(
            lambda m: isinstance(m, SipRequest) and m.method == method, timeout)
        return r

    async def expect_response(self, call_id: str, method: str, *, final: bool = True,
                              status: int | None = None, timeout: float = 5.0) -> SipResponse:
        def ok(m: SipRequest | SipResponse) -> bool:
            return (isinstance(m, SipResponse) and m.call_id == call_id
                    and m.cseq.method == method
                    and (status is None or m.status == status)
                    and (not final or m.status >= 200))
        r: SipResponse = await self.expect(ok, timeout)
        return r

    # -- requests -----------------------------------------------------------------------
    def request(self, method: str, uri: str, *, call_id: str, to: str, from_tag: str,
                cseq: int, headers: list[tuple[str, str]] | None = None, body: str = "",
                branch: str | None = None, ctype: str = "application/sdp") -> bytes:
        branch = branch or "z9hG4bK" + secrets.token_hex(8)
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: <{self.aor}>;tag={from_tag}",
                 f"To: {to}",
                 f"Call-ID: {call_id}",
                 f"CSeq: {cseq} {method}",
                 f"Contact: {self.contact}",
                 f"User-Agent: {UA}"]
        lines += [f"{n}: {v}" for n, v in headers or []]
        raw = body.encode()
        if raw:
            lines.append(f"Content-Type: {ctype}")
        lines.append(f"Content-Length: {len(raw)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw

    async def register(self, expires: int = 300) -> SipResponse:
        call_id = secrets.token_hex(8)
        uri = f"sip:{self.realm}"
        auth: list[tuple[str, str]] = [("Expires", str(expires))]
        for attempt in range(2):
            self.cseq += 1
            self.send(self.request("REGISTER", uri, call_id=call_id, to=f"<{self.aor}>",
                                   from_tag=self.tag, cseq=self.cseq, headers=auth))
            resp = await self.expect_response(call_id, "REGISTER")
            if resp.status != 401 or attempt:
                return resp
            auth = [("Expires", str(expires)),
                    ("Authorization", self.authorization(resp, "REGISTER", uri,
                                                         "WWW-Authenticate"))]
        raise AssertionError("unreachable")

    def authorization(self, challenge_resp: SipResponse, method: str, uri: str,
                      header: str) -> str:
        challenges = [DigestChallenge.parse(v) for v in challenge_resp.headers.get_raw(header)]
        ch = next(c for c in challenges if c.algorithm == "MD5")
        ha1 = compute_ha1(self.username, self.realm, self.password, "MD5")
        cnonce = secrets.token_hex(4)
        resp = compute_response(ha1, method, uri, ch.nonce, algorithm="MD5", qop="auth", nc=1,
                                cnonce=cnonce)
        return (f'Digest username="{self.username}", realm="{self.realm}", '
                f'nonce="{ch.nonce}", uri="{uri}", response="{resp}", algorithm=MD5, '
                f'qop=auth, nc=00000001, cnonce="{cnonce}"')

    # -- calls --------------------------------------------------------------------------
    def invite(self, dialled: str, *, body: str = SDP, headers: list[tuple[str, str]] | None
               = None, ctype: str = "application/sdp") -> Call:
        call = Call(self, f"sip:{dialled}@{self.realm}")
        call.send_invite(body=body, headers=headers, ctype=ctype)
        return call

    def respond(self, request: SipRequest, status: int, *, tag: str | None = None,
                body: str = "", headers: list[tuple[str, str]] | None = None) -> None:
        hdrs = list(headers or [])
        if status >= 200 and request.method == "INVITE" or status in (180, 183):
            hdrs.append(("Contact", self.contact))
        self.send(build_response(request, status, to_tag=tag, headers=hdrs,
                                 body=body.encode(), content_type="application/sdp"))


class Call:
    """A call this phone places (UAC side)."""

    def __init__(self, phone: Phone, uri: str) -> None:
        self.phone = phone
        self.uri = uri
        self.call_id = secrets.token_hex(10)
        self.from_tag = secrets.token_hex(4)
        self.to = f"<{uri}>"
        self.cseq = 1
        self.branch = ""
        self.invite_raw = b""
        self.remote_target = ""

    def send_invite(self, *, body: str = SDP, headers: list[tuple[str, str]] | None = None,
                    ctype: str = "application/sdp") -> None:
        self.branch = "z9hG4bK" + secrets.token_hex(8)
        self.invite_raw = self.phone.request(
            "INVITE", self.uri, call_id=self.call_id, to=self.to, from_tag=self.from_tag,
            cseq=self.cseq, headers=headers, body=body, branch=self.branch, ctype=ctype)
        self.phone.send(self.invite_raw)

    async def final(self, timeout: float = 5.0) -> SipResponse:
        resp = await self.phone.expect_response(self.call_id, "INVITE", timeout=timeout)
        if resp.status >= 300:
            self.ack_failure(resp)
        elif resp.status >= 200:
            self.to = resp.headers.get("To") or self.to
            self.remote_target = str(resp.contacts[0].uri) if resp.contacts else self.uri
            self.ack()
        return resp

    def ack_failure(self, resp: SipResponse) -> None:
        p = self.phone
        to = resp.headers.get("To") or self.to
        lines = [f"ACK {self.uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{p.port};branch={self.branch};rport",
                 "Max-Forwards: 70", f"From: <{p.aor}>;tag={self.from_tag}", f"To: {to}",
                 f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} ACK", "Content-Length: 0"]
        p.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def ack(self) -> None:
        self.phone.send(self.phone.request("ACK", self.remote_target, call_id=self.call_id,
                                           to=self.to, from_tag=self.from_tag, cseq=self.cseq))

    def in_dialog(self, method: str, *, body: str = "", headers: list[tuple[str, str]] |
                  None = None, ctype: str = "application/sdp") -> None:
        self.cseq += 1
        self.phone.send(self.phone.request(
            method, self.remote_target or self.uri, call_id=self.call_id, to=self.to,
            from_tag=self.from_tag, cseq=self.cseq, headers=headers, body=body, ctype=ctype))

    def cancel(self) -> None:
        p = self.phone
        lines = [f"CANCEL {self.uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{p.port};branch={self.branch};rport",
                 "Max-Forwards: 70", f"From: <{p.aor}>;tag={self.from_tag}",
                 f"To: <{self.uri}>", f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} CANCEL",
                 "Content-Length: 0"]
        p.send(("\r\n".join(lines) + "\r\n\r\n").encode())
