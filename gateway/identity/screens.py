"""Sign-in screens for desk phones' XML/XHTML browsers, and the web resource serving them.

While a phone is pairing (RFC 8628 §3.3: the user is told where to go and
which code to enter) its display can show the verification URL, the code,
the time left and then the outcome. Each vendor has its own browser:

* Cisco IP Phone Services ``CiscoIPPhoneText`` (refresh by the HTTP
  ``Refresh`` header, which the Cisco browser honours);
* Poly (VVX/Trio) microbrowser: an XHTML page with ``<meta http-equiv="refresh">``;
* Yealink XML browser ``YealinkIPPhoneTextScreen`` (its ``refresh`` attribute);
* AudioCodes: the same XHTML page as Poly; Spectralink: plain text + ``Refresh``.

Rendering is pure (``render_signin``); every value is XML-escaped and stripped
of characters XML 1.0 forbids, because names, reasons and URLs come from
outside. ``PhoneScreens`` is the ``twisted.web`` resource for
``/phone/<mac>/signin``; it asks a ``ScreenProvider`` for the data.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from dataclasses import dataclass
from typing import Protocol
from xml.sax.saxutils import escape

from twisted.internet import defer
from twisted.web import resource, server

from gateway.identity.pairing import PairingRecord, PairingState

log = logging.getLogger(__name__)

_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
MAX_TEXT = 256  # phone displays are small; long hostile values are cut
PENDING_REFRESH = 5
IDLE_REFRESH = 30


class ScreenState(enum.Enum):
    """What the sign-in screen says."""

    NONE = "none"  # never signed in / signed out: how to start
    PENDING = "pending"
    PAIRED = "paired"
    DECLINED = "declined"
    EXPIRED = "expired"
    FAILED = "failed"
    SIGNING_OUT = "signing_out"


@dataclass(frozen=True, slots=True)
class SignInScreen:
    """The data of one sign-in screen (see ``screen_from_record``)."""

    state: ScreenState
    verification_uri: str = ""
    user_code: str = ""
    seconds_left: int = 0
    user_name: str = ""
    number: str = ""
    reason: str = ""
    sign_in_code: str = "*77*"


def screen_from_record(record: PairingRecord, now: float | None = None,
                       sign_in_code: str = "*77*") -> SignInScreen:
    """Map a pairing record to what the phone shows."""
    now = time.time() if now is None else now
    st = record.state
    if st is PairingState.PAIRING:
        left = int(record.expires_at - now)
        if left <= 0:
            return SignInScreen(ScreenState.EXPIRED, reason="The code expired.",
                                sign_in_code=sign_in_code)
        return SignInScreen(ScreenState.PENDING, record.verification_uri, record.user_code,
                            left, sign_in_code=sign_in_code)
    if st is PairingState.PAIRED:
        return SignInScreen(ScreenState.PAIRED, user_name=record.user_name or record.upn,
                            number=record.number, sign_in_code=sign_in_code)
    if st is PairingState.SIGNING_OUT:
        return SignInScreen(ScreenState.SIGNING_OUT, reason=record.reason,
                            sign_in_code=sign_in_code)
    code, _, text = record.reason.partition(": ")
    if not record.history:
        return SignInScreen(ScreenState.NONE, sign_in_code=sign_in_code)
    if code == "authorization_declined":
        return SignInScreen(ScreenState.DECLINED, reason=text or record.reason,
                            sign_in_code=sign_in_code)
    if code == "expired_token":
        return SignInScreen(ScreenState.EXPIRED, reason=text or record.reason,
                            sign_in_code=sign_in_code)
    last = record.history[0] if record.history else None
    if last is not None and last.from_state is PairingState.PAIRING:
        return SignInScreen(ScreenState.FAILED, reason=text or record.reason,
                            sign_in_code=sign_in_code)
    return SignInScreen(ScreenState.NONE, reason=record.reason, sign_in_code=sign_in_code)


def clean(value: str) -> str:
    """Text safe inside XML: forbidden characters removed, length capped, then escaped."""
    text = _XML_FORBIDDEN.sub("", value)[:MAX_TEXT]
    return escape(text, {'"': "&quot;", "'": "&apos;"})


def _countdown(seconds: int) -> str:
    m, s = divmod(max(0, seconds), 60)
    return f"{m}:{s:02d}"


def screen_lines(screen: SignInScreen) -> tuple[str, list[str]]:
    """Title and plain-text lines (unescaped) for ``screen``."""
    st = screen.state
    if st is ScreenState.PENDING:
        return "Sign in", [f"Go to {screen.verification_uri}",
                           f"Enter code {screen.user_code}",
                           f"Expires in {_countdown(screen.seconds_left)}",
                           "Waiting for sign-in..."]
    if st is ScreenState.PAIRED:
        lines = [f"Signed in as {screen.user_name}"]
        if screen.number:
            lines.append(screen.number)
        return "Signed in", lines
    if st is ScreenState.DECLINED:
        return "Sign-in declined", [screen.reason or "The sign-in was declined.",
                                    f"Dial {screen.sign_in_code} to try again."]
    if st is ScreenState.EXPIRED:
        return "Code expired", [screen.reason or "The code expired.",
                                f"Dial {screen.sign_in_code} for a new code."]
    if st is ScreenState.FAILED:
        return "Sign-in failed", [screen.reason or "The sign-in failed.",
                                  f"Dial {screen.sign_in_code} to try again."]
    if st is ScreenState.SIGNING_OUT:
        return "Signing out", [screen.reason or "Signing out..."]
    lines = [f"Dial {screen.sign_in_code} to sign in."]
    if screen.reason:
        lines.insert(0, screen.reason)
    return "Not signed in", lines


def refresh_seconds(screen: SignInScreen) -> int:
    if screen.state in (ScreenState.PENDING, ScreenState.SIGNING_OUT):
        return max(1, min(PENDING_REFRESH, screen.seconds_left or PENDING_REFRESH))
    return IDLE_REFRESH


@dataclass(frozen=True, slots=True)
class RenderedScreen:
    """An HTTP answer: body, content type, extra headers."""

    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


def vendor_family(vendor: str) -> str:
    """The browser family of a device vendor (``cisco``/``poly``/``yealink``/...)."""
    v = vendor.strip().lower()
    if v.startswith("cisco"):
        return "cisco"
    if v.startswith(("poly", "polycom")):
        return "poly"
    if v.startswith("yealink"):
        return "yealink"
    if v.startswith(("audiocodes", "audc")):
        return "audiocodes"
    if v.startswith("spectralink"):
        return "spectralink"
    return "xhtml"


def _xhtml(title: str, lines: list[str], refresh: int) -> bytes:
    body = "".join(f"<p>{clean(line)}</p>" for line in lines)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
            '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
            '<html xmlns="http://www.w3.org/1999/xhtml"><head>'
            f'<meta http-equiv="refresh" content="{refresh}"/>'
            f"<title>{clean(title)}</title></head><body><h1>{clean(title)}</h1>{body}"
            "</body></html>").encode()


def render_signin(vendor: str, screen: SignInScreen) -> RenderedScreen:
    """The sign-in screen in the browser dialect of ``vendor``."""
    title, lines = screen_lines(screen)
    refresh = refresh_seconds(screen)
    family = vendor_family(vendor)
    if family == "cisco":
        # CiscoIPPhoneText: Title, Prompt, Text (newlines shown as line breaks).
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<CiscoIPPhoneText>'
                f"<Title>{clean(title)}</Title>"
                f"<Prompt>{clean(lines[-1])}</Prompt>"
                f"<Text>{chr(10).join(clean(line) for line in lines)}</Text>"
                "</CiscoIPPhoneText>").encode()
        return RenderedScreen(body, "text/xml; charset=utf-8",
                              (("Refresh", str(refresh)),))
    if family == "yealink":
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<YealinkIPPhoneTextScreen destroyOnExit="yes" Beep="no" '
                f'refresh="{refresh}" LockIn="no">'
                f"<Title>{clean(title)}</Title>"
                f"<Text>{chr(10).join(clean(line) for line in lines)}</Text>"
                "</YealinkIPPhoneTextScreen>").encode()
        return RenderedScreen(body, "text/xml; charset=utf-8")
    if family == "spectralink":
        text = "\n".join(_XML_FORBIDDEN.sub("", x)[:MAX_TEXT] for x in [title, *lines])
        return RenderedScreen((text + "\n").encode("utf-8"), "text/plain; charset=utf-8",
                              (("Refresh", str(refresh)),))
    # Poly microbrowser, AudioCodes and anything else: XHTML 1.0.
    return RenderedScreen(_xhtml(title, lines, refresh), "text/html; charset=utf-8")


class ScreenDenied(Exception):
    """The screen cannot be shown to this client (unknown device, not its phone)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ScreenProvider(Protocol):
    """Where ``PhoneScreens`` gets a device's vendor and sign-in screen."""

    async def phone_screen(self, mac: str, client_host: str) -> tuple[str, SignInScreen]: ...


class PhoneScreens(resource.Resource):
    """``GET /phone/<mac>/signin``: the device's sign-in screen (RFC 8628 §3.3 display)."""

    isLeaf = True

    def __init__(self, provider: ScreenProvider) -> None:
        super().__init__()
        self._provider = provider

    def render_GET(self, request: server.Request) -> bytes | int:
        parts = [p for p in (request.path or b"").split(b"/") if p]
        if len(parts) != 3 or parts[0] != b"phone" or parts[2] != b"signin" \
                or len(parts[1]) > 64:
            return self._plain(request, 404, "not found")
        mac = parts[1].decode("ascii", "replace")
        client = request.getClientAddress()
        host = str(getattr(client, "host", ""))
        d = defer.Deferred.fromFuture(asyncio.ensure_future(
            self._provider.phone_screen(mac, host)))
        d.addCallbacks(self._send, self._failed, callbackArgs=(request,),
                       errbackArgs=(request,))
        return server.NOT_DONE_YET

    def render_HEAD(self, request: server.Request) -> bytes | int:
        return self.render_GET(request)

    @staticmethod
    def _plain(request: server.Request, status: int, text: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (text + "\n").encode("utf-8")

    @staticmethod
    def _finish(request: server.Request, body: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.write(body)
        request.finish()

    def _send(self, result: tuple[str, SignInScreen], request: server.Request) -> None:
        vendor, screen = result
        out = render_signin(vendor, screen)
        request.setHeader(b"content-type", out.content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        for name, value in out.headers:
            request.setHeader(name.encode(), value.encode())
        self._finish(request, out.body)

    def _failed(self, failure: object, request: server.Request) -> None:
        exc = getattr(failure, "value", None)
        if isinstance(exc, ScreenDenied):
            self._finish(request, self._plain(request, exc.status, exc.message))
            return
        log.error("phone screen failed: %s", exc)
        self._finish(request, self._plain(request, 500, "internal error"))
