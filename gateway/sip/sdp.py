"""SDP session descriptions (RFC 4566) and the offer/answer rules the B2BUA needs (RFC 3264).

``SessionDescription.parse(text)`` keeps every line in order, so ``str(sdp)``
gives back the same text (CRLF line ends); only the lines we interpret are
typed: origin (``o=``), connection (``c=``), media (``m=``) and the direction
attributes (``a=sendrecv|sendonly|recvonly|inactive``, RFC 3264 §5.1). A
malformed description raises ``SdpError`` naming the line.

Hold (RFC 3264 §8.4; RFC 2543 style ``c=IN IP4 0.0.0.0`` too, RFC 3264 §8.4 last
paragraph) is ``is_hold(offer)``; ``answer_direction`` mirrors an offered
direction, and ``mirror_answer(previous, offer)`` turns our last answer into
the answer to a re-offer (new origin version, directions mirrored).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

MAX_SDP = 64 * 1024
_LINE_RE = re.compile(r"^([a-z])=(.*)$")
_MEDIA_RE = re.compile(r"^([A-Za-z0-9\-_.]+) (\d{1,5})(?:/(\d{1,5}))? ([A-Za-z0-9/_\-.]+)"
                       r"((?: [A-Za-z0-9\-_.]+)*)$")
_ORIGIN_RE = re.compile(r"^(\S+) (\d{1,20}) (\d{1,20}) (IN) (IP4|IP6) (\S+)$")
_CONN_RE = re.compile(r"^IN (IP4|IP6) ([^\s/]+)(?:/\d+(?:/\d+)?)?$")


class SdpError(ValueError):
    """A session description that does not follow RFC 4566 (the message names the line)."""


class Direction(enum.Enum):
    """RFC 3264 §5.1 media direction attributes."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


_DIRECTIONS = frozenset(d.value for d in Direction)
# RFC 3264 §6.1: the answer's direction for each offered direction
_MIRROR = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}


def answer_direction(offered: Direction) -> Direction:
    """The direction an answerer that is willing to do anything uses (RFC 3264 §6.1)."""
    return _MIRROR[offered]


def _null_address(address: str) -> bool:
    return address in ("0.0.0.0", "::", "0:0:0:0:0:0:0:0")


@dataclass
class Media:
    """One ``m=`` section (RFC 4566 §5.14) with its lines."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    lines: list[tuple[str, str]] = field(default_factory=list)  # (type, value) after m=

    @property
    def connection(self) -> str | None:
        for t, v in self.lines:
            if t == "c":
                return v
        return None

    @property
    def direction(self) -> Direction | None:
        """The media-level direction attribute, if any."""
        for t, v in self.lines:
            if t == "a" and v in _DIRECTIONS:
                return Direction(v)
        return None

    def set_direction(self, direction: Direction) -> None:
        self.lines = [(t, v) for t, v in self.lines if not (t == "a" and v in _DIRECTIONS)]
        self.lines.append(("a", direction.value))

    def attributes(self, name: str) -> list[str]:
        """Values of ``a=name:value`` lines (empty string for a flag ``a=name``)."""
        out: list[str] = []
        for t, v in self.lines:
            if t != "a":
                continue
            key, sep, rest = v.partition(":")
            if key == name:
                out.append(rest if sep else "")
        return out

    def rtpmap(self, fmt: str) -> str | None:
        for value in self.attributes("rtpmap"):
            pt, _, enc = value.partition(" ")
            if pt == fmt:
                return enc
        return None

    def m_line(self) -> str:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        fmts = "".join(f" {f}" for f in self.formats)
        return f"{self.kind} {port} {self.proto}{fmts}"


@dataclass
class SessionDescription:
    """A parsed SDP body (RFC 4566 §5): session-level lines, then media sections."""

    session: list[tuple[str, str]]
    media: list[Media]

    @classmethod
    def parse(cls, text: str | bytes) -> SessionDescription:
        if isinstance(text, bytes):
            if len(text) > MAX_SDP:
                raise SdpError(f"SDP larger than {MAX_SDP} bytes")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise SdpError("SDP is not UTF-8") from None
        if len(text) > MAX_SDP:
            raise SdpError(f"SDP larger than {MAX_SDP} characters")
        lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln != ""]
        if not lines or lines[0] != "v=0":
            raise SdpError("SDP must start with v=0")
        session: list[tuple[str, str]] = []
        media: list[Media] = []
        for n, line in enumerate(lines, 1):
            m = _LINE_RE.match(line)
            if m is None:
                raise SdpError(f"line {n}: not <type>=<value>: {line[:40]!r}")
            t, v = m.group(1), m.group(2)
            if t == "m":
                mm = _MEDIA_RE.match(v)
                if mm is None:
                    raise SdpError(f"line {n}: malformed m= line {v[:40]!r}")
                port = int(mm.group(2))
                if port > 65535:
                    raise SdpError(f"line {n}: port {port} out of range")
                count = int(mm.group(3)) if mm.group(3) else None
                media.append(Media(kind=mm.group(1), port=port, proto=mm.group(4),
                                   formats=mm.group(5).split(), port_count=count))
            elif media:
                if t == "c" and _CONN_RE.match(v) is None:
                    raise SdpError(f"line {n}: malformed c= line {v[:40]!r}")
                media[-1].lines.append((t, v))
            else:
                if t == "o" and _ORIGIN_RE.match(v) is None:
                    raise SdpError(f"line {n}: malformed o= line {v[:40]!r}")
                if t == "c" and _CONN_RE.match(v) is None:
                    raise SdpError(f"line {n}: malformed c= line {v[:40]!r}")
                session.append((t, v))
        if not any(t == "o" for t, _ in session):
            raise SdpError("missing o= line")
        return cls(session=session, media=media)

    def __str__(self) -> str:
        out = [f"{t}={v}" for t, v in self.session]
        for m in self.media:
            out.append(f"m={m.m_line()}")
            out += [f"{t}={v}" for t, v in m.lines]
        return "\r\n".join(out) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8")

    # -- session-level views -------------------------------------------------------
    def _session_value(self, t: str) -> str | None:
        for k, v in self.session:
            if k == t:
                return v
        return None

    @property
    def connection(self) -> str | None:
        return self._session_value("c")

    @property
    def direction(self) -> Direction | None:
        """The session-level direction attribute, if any (RFC 4566 §6)."""
        for t, v in self.session:
            if t == "a" and v in _DIRECTIONS:
                return Direction(v)
        return None

    def media_direction(self, media: Media) -> Direction:
        """Effective direction of one stream: media level, else session level, else
        sendrecv (RFC 3264 §5.1); a null connection address counts as inactive-ish
        hold and is reported by ``is_hold`` instead."""
        return media.direction or self.direction or Direction.SENDRECV

    def connection_address(self, media: Media) -> str | None:
        conn = media.connection or self.connection
        if conn is None:
            return None
        m = _CONN_RE.match(conn)
        return m.group(2) if m else None

    @property
    def origin_version(self) -> int:
        o = self._session_value("o")
        m = _ORIGIN_RE.match(o or "")
        return int(m.group(3)) if m else 0

    def bump_version(self) -> None:
        """Increment the o= session version (RFC 3264 §8: every changed offer/answer)."""
        for i, (t, v) in enumerate(self.session):
            if t == "o":
                m = _ORIGIN_RE.match(v)
                if m:
                    parts = list(m.groups())
                    parts[2] = str(int(parts[2]) + 1)
                    self.session[i] = ("o", " ".join(parts))
                return

    def set_direction(self, direction: Direction) -> None:
        """Put ``direction`` on every active stream and drop the session-level one."""
        self.session = [(t, v) for t, v in self.session
                        if not (t == "a" and v in _DIRECTIONS)]
        for m in self.media:
            if m.port != 0:
                m.set_direction(direction)


def is_hold(sdp: SessionDescription) -> bool:
    """Whether an offer puts the call on hold (RFC 3264 §8.4): every active audio/video
    stream is sendonly or inactive, or its connection address is 0.0.0.0 (RFC 2543)."""
    active = [m for m in sdp.media if m.port != 0]
    if not active:
        return False
    for m in active:
        addr = sdp.connection_address(m)
        if addr is not None and _null_address(addr):
            continue
        if sdp.media_direction(m) not in (Direction.SENDONLY, Direction.INACTIVE):
            return False
    return True


def offered_direction(sdp: SessionDescription) -> Direction:
    """One direction summarising an offer: hold by c=0.0.0.0 counts as sendonly."""
    active = [m for m in sdp.media if m.port != 0]
    if not active:
        return Direction.INACTIVE
    first = active[0]
    addr = sdp.connection_address(first)
    direction = sdp.media_direction(first)
    if addr is not None and _null_address(addr) and direction is Direction.SENDRECV:
        return Direction.SENDONLY
    return direction


def mirror_answer(previous: SessionDescription, offer: SessionDescription
                  ) -> SessionDescription:
    """Our answer to a re-offer when nothing but the direction may change: the previous
    answer with a new version and each stream's direction mirrored (RFC 3264 §6.1, §8.4).

    Streams the offer disabled (port 0) are disabled in the answer too (§6)."""
    answer = SessionDescription.parse(str(previous))
    answer.bump_version()
    answer.session = [(t, v) for t, v in answer.session
                      if not (t == "a" and v in _DIRECTIONS)]
    for i, m in enumerate(answer.media):
        if i >= len(offer.media):
            break
        om = offer.media[i]
        if om.port == 0:
            m.port = 0
            continue
        addr = offer.connection_address(om)
        offered = offer.media_direction(om)
        if addr is not None and _null_address(addr) and offered is Direction.SENDRECV:
            offered = Direction.SENDONLY
        m.set_direction(answer_direction(offered))
    return answer


def simple_answer(offer: SessionDescription, address: str, port: int,
                  session_id: int, direction: Direction | None = None) -> SessionDescription:
    """An answer accepting the first format of the first audio stream (RFC 3264 §6.1),
    for calls we terminate ourselves (feature codes). Other streams are refused (port 0)."""
    family = "IP6" if ":" in address else "IP4"
    lines: list[tuple[str, str]] = [
        ("v", "0"), ("o", f"sipgw {session_id} {session_id} IN {family} {address}"),
        ("s", "-"), ("c", f"IN {family} {address}"), ("t", "0 0")]
    media: list[Media] = []
    audio_done = False
    for om in offer.media:
        if om.kind == "audio" and om.port != 0 and not audio_done and om.formats:
            fmt = om.formats[0]
            m = Media(kind="audio", port=port, proto=om.proto, formats=[fmt])
            enc = om.rtpmap(fmt)
            if enc is not None:
                m.lines.append(("a", f"rtpmap:{fmt} {enc}"))
            offered = offer.media_direction(om)
            m.lines.append(("a", (direction or answer_direction(offered)).value))
            media.append(m)
            audio_done = True
        else:
            media.append(Media(kind=om.kind, port=0, proto=om.proto,
                               formats=list(om.formats) or ["0"]))
    return SessionDescription(session=lines, media=media)
