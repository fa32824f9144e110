"""Sans-I/O SIP core (RFC 3261 and friends): bytes and time in, events and bytes out.

Imports only the standard library: no Twisted, asyncio or Redis here.
"""

from gateway.sip.errors import LocalProtocolError, SipError, SipParseError
from gateway.sip.headers import CSeq, Headers, NameAddr, Via
from gateway.sip.message import (
    ParseFailure,
    SipMessage,
    SipRequest,
    SipResponse,
    StreamParser,
    build_error_response,
    build_response,
    parse_message,
)
from gateway.sip.peer import Peer
from gateway.sip.stack import SipStack, StackConfig
from gateway.sip.timers import TimerConfig
from gateway.sip.uri import Uri

__all__ = [
    "CSeq", "Headers", "LocalProtocolError", "NameAddr", "ParseFailure", "Peer",
    "SipError", "SipMessage", "SipParseError", "SipRequest", "SipResponse", "SipStack",
    "StackConfig", "TimerConfig",
    "StreamParser", "Uri", "Via", "build_error_response", "build_response", "parse_message",
]
