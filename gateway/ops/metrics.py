"""Prometheus metrics of the SIP edge: messages in and out, parse errors, stream connections.

Metrics live in a ``CollectorRegistry`` created per application (no global
registry, so tests and several apps in one process never collide). Every
label value comes from a small fixed set: a fuzzer sending random methods,
status codes or parse errors cannot grow the number of time series.
Labelled children are cached, so counting a message is one dict lookup and
one increment.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

# RFC 3261 §27.4 plus the extension methods phones actually send; anything else is "other".
KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
    "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})
TRANSPORTS = frozenset({"UDP", "TCP", "TLS", "WS", "WSS"})
# Status codes worth their own series; the rest are reported by class ("4xx").
KNOWN_STATUSES = frozenset({
    100, 180, 181, 182, 183, 200, 202, 204, 301, 302, 400, 401, 403, 404, 405, 407, 408,
    415, 420, 423, 480, 481, 482, 483, 486, 487, 488, 489, 491, 500, 501, 502, 503, 504,
    505, 513, 600, 603,
})
_RAW_CACHE_MAX = 512
PARSE_ERROR_CATEGORIES = (
    "content_length", "request_line", "status_line", "version", "via", "header", "uri",
    "size", "framing", "other",
)

# Ordered: the first keyword found in a ParseFailure reason picks the category.
_REASON_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("content-length", "content_length"),
    ("too large", "size"),
    ("too many header", "size"),
    ("request line", "request_line"),
    ("bad method", "request_line"),
    ("status line", "status_line"),
    ("status code", "status_line"),
    ("version", "version"),
    ("request-uri", "uri"),
    ("uri", "uri"),
    ("via", "via"),
    ("framing", "framing"),
    ("stream", "framing"),
    ("header", "header"),
    ("from", "header"),
    ("to ", "header"),
    ("call-id", "header"),
    ("cseq", "header"),
    ("max-forwards", "header"),
    ("illegal character", "header"),
)


def parse_error_category(reason: str) -> str:
    """Map a free-text parse failure reason to one of ``PARSE_ERROR_CATEGORIES``."""
    low = reason.lower()
    for keyword, category in _REASON_KEYWORDS:
        if keyword in low:
            return category
    return "other"


def _method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def _status_label(status: int) -> str:
    if status in KNOWN_STATUSES:
        return str(status)
    if 100 <= status <= 699:
        return f"{status // 100}xx"
    return "other"


def _transport_label(transport: str) -> str:
    return transport if transport in TRANSPORTS else "other"


def sniff_start_line(data: bytes) -> tuple[str, str, str] | None:
    """(kind, method, status) labels from the first line of a raw message, without parsing it.

    Returns None for keep-alives (CRLFs only). Garbage counts as a request of
    method "other": a cheap classification is all the metrics need.
    """
    start = data.lstrip(b"\r\n")[:64]
    if not start:
        return None
    if start.startswith(b"SIP/2.0 "):
        code = start[8:11]
        status = int(code) if code.isdigit() else 0
        return "response", "", _status_label(status)
    method = start.split(b" ", 1)[0]
    try:
        text = method.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return "request", _method_label(text), ""


class Tally:
    """Increments of Prometheus counter children gathered as plain ints, added to their
    children whenever the registry is collected (a scrape, ``get_sample_value``).

    A child's ``inc`` takes a lock and two calls; per datagram on the hot path that
    is measurable. Register a Tally before the counters it feeds: a registry collects
    in registration order, so every collection sees the counts up to that moment.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._pending: dict[Any, int] = {}
        registry.register(self)

    def inc(self, child: Any) -> None:
        pending = self._pending
        pending[child] = pending.get(child, 0) + 1

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for child, n in pending.items():
            child.inc(n)

    def collect(self) -> Iterable[Any]:
        self.flush()
        return []

    def describe(self) -> Iterable[Any]:
        return []


class SipMetrics:
    """Counters and gauges of the SIP transport layer (RFC 3261 §18 messages), per registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = ("transport", "kind", "method", "status")
        self._tally = Tally(self.registry)  # before the counters it feeds
        self._received = Counter(
            "sip_messages_received_total", "SIP messages received", labels,
            registry=self.registry)
        self._sent = Counter(
            "sip_messages_sent_total", "SIP messages sent", labels, registry=self.registry)
        self._parse_errors = Counter(
            "sip_parse_errors_total", "SIP messages that failed to parse, by category",
            ("reason",), registry=self.registry)
        self._connections = Gauge(
            "sip_tcp_connections", "Open SIP stream connections (TCP and TLS)",
            ("transport",), registry=self.registry)
        self._rejected = Counter(
            "sip_tcp_connections_rejected_total",
            "Stream connections refused by the per-source or total connection cap",
            ("transport",), registry=self.registry)
        self._children: dict[tuple[bool, str, str, str, str], Counter] = {}
        self._raw_children: dict[tuple[bool, str, bytes], Counter] = {}
        self._error_children = {c: self._parse_errors.labels(reason=c)
                                for c in PARSE_ERROR_CATEGORIES}

    def _child(self, sent: bool, transport: str, kind: str, method: str,
               status: str) -> Counter:
        key = (sent, transport, kind, method, status)
        child = self._children.get(key)
        if child is None:
            metric = self._sent if sent else self._received
            child = metric.labels(transport=_transport_label(transport), kind=kind,
                                  method=method, status=status)
            self._children[key] = child
        return child

    def request_received(self, transport: str, method: str) -> None:
        self._child(False, transport, "request", _method_label(method), "").inc()

    def response_received(self, transport: str, status: int) -> None:
        self._child(False, transport, "response", "", _status_label(status)).inc()

    def raw_received(self, transport: str, data: bytes) -> None:
        """Count an unparsed datagram by its start line (keep-alives are not counted)."""
        child = self._raw_child(False, transport, data)
        if child is not None:
            self._tally.inc(child)

    def raw_sent(self, transport: str, data: bytes) -> None:
        child = self._raw_child(True, transport, data)
        if child is not None:
            self._tally.inc(child)

    def request_taken(self, transport: str, method: str) -> None:
        """Count a request a fast path took before anyone parsed it (its method known):
        the same count as ``raw_received`` gives it, without reading the bytes."""
        self._tally.inc(self._child(False, transport, "request", _method_label(method), ""))

    def _raw_child(self, sent: bool, transport: str, data: bytes) -> Counter | None:
        """The counter for a raw message, found by its first word (or status) in one lookup.

        The key is what ``sniff_start_line`` decides on: a request's method token
        or a response's status code. Keys of unusual lines (leading CRLFs, no space
        early on) are not cached, and the cache is bounded.
        """
        if data[:8] == b"SIP/2.0 ":
            prefix = data[:12]
        else:
            sp = data.find(b" ", 0, 24)
            prefix = data[:sp] if sp > 0 else b""
        if not prefix or prefix[:1] in (b"\r", b"\n"):
            labels = sniff_start_line(data)
            return None if labels is None else self._child(sent, transport, *labels)
        key = (sent, transport, prefix)
        child = self._raw_children.get(key)
        if child is None:
            labels = sniff_start_line(data)
            if labels is None:
                return None
            child = self._child(sent, transport, *labels)
            if len(self._raw_children) >= _RAW_CACHE_MAX:
                self._raw_children.clear()
            self._raw_children[key] = child
        return child

    def parse_error(self, reason: str) -> None:
        self._error_children[parse_error_category(reason)].inc()

    def connection_opened(self, transport: str) -> None:
        self._connections.labels(transport=_transport_label(transport)).inc()

    def connection_closed(self, transport: str) -> None:
        self._connections.labels(transport=_transport_label(transport)).dec()

    def connection_rejected(self, transport: str) -> None:
        self._rejected.labels(transport=_transport_label(transport)).inc()

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of one sample (0.0 when absent); handy for tests and the ops page."""
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


class MetricsResource(Resource):
    """``GET /metrics`` in the Prometheus text exposition format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped Twisted API
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        if request.path not in (b"/metrics", b"/metrics/"):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
            return b"not found: try /metrics\n"
        request.setHeader(  # type: ignore[no-untyped-call]  # untyped Twisted API
            b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


def listen_metrics(registry: CollectorRegistry, host: str, port: int, reactor: Any) -> Any:
    """Serve ``GET /metrics`` on its own port; returns the IListeningPort (stop it to close).

    ``reactor`` provides IReactorTCP (typed Any: zope interfaces are not mypy types).
    """
    site = Site(MetricsResource(registry))  # type: ignore[no-untyped-call]  # untyped API
    site.displayTracebacks = False
    return reactor.listenTCP(port, site, interface=host)


def serve_metrics(registry: CollectorRegistry, host: str, port: int, reactor: Any) -> int:
    """Serve ``GET /metrics`` with twisted.web; returns the bound port (``port=0``: ephemeral)."""
    bound: int = listen_metrics(registry, host, port, reactor).getHost().port
    return bound


def metric_names(registry: CollectorRegistry) -> Iterable[str]:
    """Names of the metric families in ``registry`` (for the ops page and tests)."""
    return [m.name for m in registry.collect()]
