"""The composition root: builds every part from the configuration and wires them.

``Gateway.start()`` brings up, in order: the data directory, the state store
(a private Valkey unless a Redis URL is configured), metrics, the SIP stack with
its UDP/TCP/TLS listeners, and the transaction users (OPTIONS responder,
registrar, B2BUA). Nothing below this module reads configuration files or
environment variables; everything is passed down from here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.config import Config
from gateway.sip.events import (
    AckReceived,
    MalformedMessage,
    RequestReceived,
    ResponseReceived,
    StackEvent,
    StrayResponse,
    TransactionKey,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailed,
)
from gateway.sip.message import SipRequest, SipResponse, build_response
from gateway.sip.peer import Peer
from gateway.sip.stack import SipStack, StackConfig, new_tag
from gateway.sip.timers import TimerConfig
from gateway.sip.uas import not_allowed, options_response, precheck
from gateway.state.redis import connect
from gateway.state.valkey import EmbeddedValkey
from gateway.tasks import TaskSet

log = logging.getLogger("sipgw")

_LOCAL_WARNING = '399 sipgw-local "'
# new out-of-dialog requests refused while the node is behind (gateway.ops.overload)
_SHEDDABLE = frozenset({"INVITE", "REGISTER", "OPTIONS", "SUBSCRIBE", "MESSAGE", "PUBLISH",
                        "REFER", "NOTIFY"})


def is_local_failure(response: SipResponse) -> bool:
    """True for the 408/503 ``Gateway.request`` makes up when no response arrived."""
    return (response.status in (408, 503)
            and (response.headers.get("Warning") or "").startswith(_LOCAL_WARNING))


@dataclass(frozen=True)
class Listening:
    """One service endpoint, printed at start-up as ``listening <service> <proto> <addr>``."""

    service: str
    proto: str
    host: str
    port: int

    def __str__(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"listening {self.service} {self.proto} {h}:{self.port}"


RequestHandler = Callable[[RequestReceived], Awaitable[SipResponse | None]]
ImmediateHandler = Callable[[RequestReceived], SipResponse | Awaitable[SipResponse | None]]
ProvisionalHandler = Callable[[SipResponse], None]


@dataclass
class _Pending:
    """A client transaction the TU awaits: provisional callback and the final-response future."""

    request: SipRequest
    future: asyncio.Future[SipResponse]
    on_provisional: ProvisionalHandler | None
    on_extra_2xx: ProvisionalHandler | None


class Gateway:
    """One gateway node (start/stop are idempotent)."""

    def __init__(self, config: Config, reactor: Any | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.registry = CollectorRegistry()
        self.valkey: EmbeddedValkey | None = None
        self.redis: Any = None
        self.driver: Any = None
        self.stack: SipStack | None = None
        self.listening: list[Listening] = []
        self.node_id = config.server.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self._handlers: dict[str, RequestHandler] = {}
        self._immediate: dict[str, ImmediateHandler] = {}
        self._pending: dict[TransactionKey, _Pending] = {}
        self.on_stray: Callable[[StrayResponse], None] | None = None
        self.backend: Any = None
        self.registrar: Any = None
        self.fast_lane: Any = None
        self.overload: Any = None  # gateway.ops.overload.Overload when shedding is on
        self.b2bua: Any = None
        self.devices: Any = None
        self._tasks = TaskSet(log, "gateway")
        self._stoppers: list[Callable[[], Awaitable[None]]] = []
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> list[Listening]:
        if self._started:
            return self.listening
        self._started = True
        cfg = self.config
        data = cfg.data_path
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)

        await self._start_state()
        await self._start_metrics()
        await self._start_sip()
        await self._start_backend()
        await self._start_services()
        return self.listening

    async def _start_state(self) -> None:
        cfg = self.config
        if cfg.redis.url:
            url = cfg.redis.url
        else:
            port = cfg.redis.embedded_tcp_port
            self.valkey = EmbeddedValkey(cfg.data_path / "valkey",
                                         tcp_port=None if port < 0 else port,
                                         appendonly=cfg.redis.embedded_persist)
            await asyncio.to_thread(self.valkey.start)
            url = self.valkey.url
            self.listening.append(Listening("valkey", "unix", str(self.valkey.socket_path), 0))
            if self.valkey.tcp_port:
                self.listening.append(Listening("valkey", "tcp", "127.0.0.1",
                                                self.valkey.tcp_port))
        self.redis = connect(url)
        await self.redis.ping()

    async def _start_metrics(self) -> None:
        from gateway.ops.metrics import SipMetrics, serve_metrics

        self.sip_metrics = SipMetrics(self.registry)
        m = self.config.metrics
        if m.port >= 0:
            port = serve_metrics(self.registry, m.host, m.port, self.reactor)
            self.listening.append(Listening("metrics", "http", m.host, port))

    async def _start_sip(self) -> None:
        from gateway.transport import SipDriver, TlsFiles, ensure_dev_certificate

        s = self.config.sip
        host0 = s.hosts[0]
        stack_cfg = StackConfig(
            timers=TimerConfig(t1=s.t1, t2=s.t2, t4=s.t4),
            via_hosts={},
            server_header=s.server_header,
        )
        self.stack = SipStack(stack_cfg)
        self.driver = SipDriver(self.stack, self._on_event, self.reactor, self.sip_metrics)
        if s.shed_backlog_kib > 0:
            from gateway.ops.overload import Overload

            self.overload = Overload(self.driver.udp_backlog, s.shed_backlog_kib * 1024,
                                     registry=self.registry)
        for host in s.hosts:
            if s.udp_port >= 0:
                port = self.driver.listen_udp(host, s.udp_port)
                self.listening.append(Listening("sip", "udp", host, port))
                stack_cfg.via_hosts.setdefault("UDP", (host0, port))
            if s.tcp_port >= 0:
                port = self.driver.listen_tcp(host, s.tcp_port)
                self.listening.append(Listening("sip", "tcp", host, port))
                stack_cfg.via_hosts.setdefault("TCP", (host0, port))
            if s.tls_port >= 0:
                if s.tls_cert and s.tls_key:
                    tls = TlsFiles(cert=Path(s.tls_cert), key=Path(s.tls_key),
                                   ca=Path(s.tls_ca) if s.tls_ca else None)
                else:
                    tls = ensure_dev_certificate(self.config.data_path)
                port = self.driver.listen_tls(host, s.tls_port, tls)
                self.listening.append(Listening("sip", "tls", host, port))
                stack_cfg.via_hosts.setdefault("TLS", (host0, port))

    async def _start_backend(self) -> None:
        """The call-control backend client; the embedded reference backend when no URL is set."""
        from gateway.backend.client import BackendClient
        from gateway.state.secrets import load_or_create_key

        b = self.config.backend
        url, token = b.url, b.token
        if not url:
            from gateway.backend.directory import default_directory_path, load_directory
            from gateway.backend.reference.server import start_reference_backend

            if not token:
                token = load_or_create_key(self.config.data_path / "secrets" /
                                           "backend.token").hex()
            directory = load_directory(b.directory or default_directory_path())
            from gateway.backend.reference.engine import EngineConfig

            port, stop = await start_reference_backend(
                self.redis, directory, b.host, b.port, token, self.reactor,
                EngineConfig(ring_timeout=b.ring_timeout))
            self._stoppers.append(stop)
            host = f"[{b.host}]" if ":" in b.host else b.host
            url = f"http://{host}:{port}"
            self.listening.append(Listening("backend", "http", b.host, port))
        elif not token:
            raise ValueError("backend.url is set but backend.token is empty")
        self.backend = BackendClient(url, token, registry=self.registry, reactor=self.reactor)
        self._stoppers.append(self.backend.close)

    async def _start_services(self) -> None:
        """Transaction users: the registrar, the B2BUA."""
        self._start_registrar()
        from gateway.b2bua.service import attach_b2bua
        self.b2bua = await attach_b2bua(self)
        self._stoppers.append(self.b2bua.stop)
        self._start_keepalive()
        from gateway.identity.service import attach_identity
        self.identity = await attach_identity(self)
        self._stoppers.append(self.identity.stop)
        await self._start_admin()

    async def _start_admin(self) -> None:
        """Admin API + /ops + /healthz, and the `*55*<code>` enrollment feature code."""
        from gateway.b2bua.dialplan import DialTarget, Feature
        from gateway.ops.admin import attach_admin, make_enrollment

        self.enrollment = make_enrollment(self)
        enrollment = self.enrollment
        b2bua = self.b2bua

        async def on_enroll(event: RequestReceived, device: Any,
                            target: DialTarget) -> SipResponse | None:
            result = await enrollment.handle_enroll(device, target.value)
            if not result.ok:
                headers = [("Warning", f'399 sipgw "{result.message}"')]
                if result.retry_after:
                    headers.append(("Retry-After", str(result.retry_after)))
                return build_response(event.request, result.sip_status, to_tag=new_tag(),
                                      headers=headers)
            b2bua.answer_locally(event)
            return None

        b2bua.feature_handlers[Feature.ENROLL] = on_enroll
        if self.config.ops.port >= 0:
            _, stop = await attach_admin(self, self.identity, enrollment=enrollment)
            self._stoppers.append(stop)

    def _start_registrar(self) -> None:
        from firmware_catalog import load_catalog
        from gateway.registrar import (
            AbuseGuard,
            BindingStore,
            DeviceStore,
            DigestAuthenticator,
            GuardConfig,
            Registrar,
            RegistrarConfig,
            RegistrarMetrics,
        )
        from gateway.state.secrets import load_or_create_key

        cfg = self.config
        r = cfg.registrar
        realm = cfg.sip.domain
        secret_path = (Path(r.nonce_secret_file) if r.nonce_secret_file
                       else cfg.data_path / "secrets" / "nonce.key")
        secret = load_or_create_key(secret_path)
        catalog: Any = load_catalog()
        if r.lab_user_agents:
            from firmware_catalog.lab import LabClients
            catalog = LabClients(catalog, r.lab_user_agents)
        guard = GuardConfig(rate_window=r.rate_window, source_rate=r.source_rate,
                            account_rate=r.account_rate, failure_window=r.failure_window,
                            source_failures=r.source_failures,
                            account_failures=r.account_failures,
                            block_seconds=r.block_seconds)
        self.devices = DeviceStore(self.redis, realm)
        self.registrar = Registrar(
            BindingStore(self.redis), self.devices,
            DigestAuthenticator(realm, [secret], r.nonce_ttl,
                                algorithms=tuple(r.digest_algorithms)),
            AbuseGuard(self.redis, guard), catalog,
            RegistrarConfig(realm=realm, min_expires=r.min_expires, max_expires=r.max_expires,
                            default_expires=r.default_expires,
                            expires_jitter=r.expires_jitter,
                            max_bindings_per_aor=r.max_bindings_per_aor, nonce_ttl=r.nonce_ttl,
                            stale_paired_days=r.stale_paired_days,
                            stale_unpaired_days=r.stale_unpaired_days, guard=guard),
            RegistrarMetrics(self.registry))
        registrar = self.registrar
        # after everything that borrows them (stoppers run in reverse)
        self._stoppers.append(registrar.store.close)
        self._stoppers.append(self.devices.close)

        node_id = self.node_id

        def on_register(event: RequestReceived) -> SipResponse | Awaitable[SipResponse]:
            return registrar.answer(event.request, event.peer, node_id)

        self.on_request_now("REGISTER", on_register)
        if r.fast_lane:
            from gateway.registrar.fastlane import FastLane

            assert self.stack is not None
            self.fast_lane = FastLane(registrar, node_id, self.driver.send_datagram,
                                      self.driver.receive_general,
                                      server=self.stack.config.server_header,
                                      registry=self.registry, overload=self.overload)
            self.driver.udp_fast = self.fast_lane.take
        self._every(r.sweep_interval, registrar.sweep_expired, "binding sweep")
        self._every(r.offboard_interval, registrar.offboard_stale, "stale-device sweep")

    def _start_keepalive(self) -> None:
        """NAT keep-alives (RFC 5626 §3.5): OPTIONS from the node that owns each flow."""
        r = self.config.registrar
        if r.keepalive_interval <= 0:
            return
        from gateway.registrar import KeepAlive

        keepalive = KeepAlive(self.registrar.store, self.node_id, self._keepalive_ping,
                              interval=r.keepalive_interval,
                              max_failures=r.keepalive_failures, registry=self.registry)
        self.registrar.listeners.append(keepalive.track)
        self._every(r.keepalive_interval, keepalive.run_once, "NAT keep-alive round")

    async def _keepalive_ping(self, peer: Peer, binding: Any) -> int | None:
        """One OPTIONS to the phone behind ``binding``; None when nothing came back."""
        response = await self.request_binding("OPTIONS", binding)
        return None if is_local_failure(response) else response.status

    async def request_binding(self, method: str, binding: Any,
                              headers: Sequence[tuple[str, str]] = ()) -> SipResponse:
        """An out-of-dialog request (RFC 3261 §8.1.1) to the phone behind ``binding``: to
        its registered Contact, via its NAT-mapped source and its Path (RFC 3327).

        Raises SipParseError when the stored Contact is not a URI we can address.
        """
        from gateway.sip.headers import Headers
        from gateway.sip.uri import Uri

        uri = Uri.parse(binding.uri)
        source = binding.source
        items = [("Max-Forwards", "70"),
                 ("From", f"<sip:sipgw@{self.config.sip.domain}>;tag={new_tag()}"),
                 ("To", f"<{binding.aor}>"),
                 ("Call-ID", os.urandom(16).hex()),
                 ("CSeq", f"1 {method}")]
        items += [("Route", route) for route in binding.path]
        items.append(("Contact", self.b2bua.our_contact(source.transport)))
        items += headers
        return await self.request(SipRequest(method=method, uri=uri, headers=Headers(items),
                                             body=b""), source)

    def _every(self, interval: float, job: Callable[[], Awaitable[Any]], what: str) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await job()
                except Exception:  # noqa: BLE001 - a failed sweep must not stop the next
                    log.exception("%s failed", what)

        self._spawn(loop())

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._tasks.cancel()
        for stopper in reversed(self._stoppers):
            try:
                await stopper()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("error while stopping")
        if self.driver is not None:
            await self.driver.stop().asFuture(asyncio.get_running_loop())
        if self.redis is not None:
            await self.redis.aclose()
        if self.valkey is not None:
            await asyncio.to_thread(self.valkey.stop)

    # -- dispatch ----------------------------------------------------------------------
    def on_request(self, method: str, handler: RequestHandler) -> None:
        self._handlers[method] = handler
        self._immediate.pop(method, None)

    def on_request_now(self, method: str, handler: ImmediateHandler) -> None:
        """Like ``on_request`` for a handler called synchronously: it returns the response
        when it has it at once (no task is created), else an awaitable of it."""
        self._immediate[method] = handler
        self._handlers.pop(method, None)

    async def request(self, request: SipRequest, peer: Peer, *,
                      on_provisional: ProvisionalHandler | None = None,
                      on_extra_2xx: ProvisionalHandler | None = None) -> SipResponse:
        """Send ``request`` in a client transaction and await its final response.

        A timeout or transport failure comes back as a synthetic 408 or 503
        (RFC 3261 §8.1.3.1), so callers have one path for every outcome.
        Further 2xx to an INVITE (forked, RFC 6026 Accepted) go to ``on_extra_2xx``.
        """
        loop = asyncio.get_running_loop()
        key = self.driver.send_request(request, peer)
        pending = _Pending(request, loop.create_future(), on_provisional, on_extra_2xx)
        self._pending[key] = pending
        return await pending.future

    def _synthetic(self, pending: _Pending, status: int, why: str) -> None:
        if not pending.future.done():
            resp = build_response(pending.request, status,
                                  headers=[("Warning", f'{_LOCAL_WARNING}{why}"')])
            pending.future.set_result(resp)

    def _on_client_event(self, event: StackEvent) -> bool:
        if isinstance(event, ResponseReceived):
            pending = self._pending.get(event.key)
            if pending is None:
                return True
            response = event.response
            if response.status < 200:
                if pending.on_provisional is not None and not pending.future.done():
                    pending.on_provisional(response)
            elif not pending.future.done():
                pending.future.set_result(response)
            elif response.status < 300 and pending.on_extra_2xx is not None:
                pending.on_extra_2xx(response)
            return True
        if isinstance(event, TransactionTimeout):
            pending = self._pending.get(event.key)
            if pending is not None:
                self._synthetic(pending, 408, "no response")
            return True
        if isinstance(event, TransportFailed):
            pending = self._pending.get(event.key)
            if pending is not None:
                self._synthetic(pending, 503, "transport failure")
            return True
        if isinstance(event, TransactionTerminated):
            pending = self._pending.pop(event.key, None)
            if pending is not None:
                self._synthetic(pending, 408, "transaction ended without a final response")
            return True
        if isinstance(event, StrayResponse):
            if self.on_stray is not None:
                self.on_stray(event)
            return True
        return False

    def _on_event(self, event: StackEvent) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event)
        elif self._on_client_event(event):
            return
        elif isinstance(event, AckReceived):
            immediate = self._immediate.get("ACK")
            if immediate is not None:
                # an ACK is answered by nothing: a plain call, no task per call
                try:
                    immediate(RequestReceived(key=None, request=event.request,  # type: ignore[arg-type]
                                        peer=event.peer))
                except Exception:  # noqa: BLE001
                    log.exception("ACK handler failed")
                return
            handler = self._handlers.get("ACK")
            if handler is not None:
                self._spawn(self._run_ack(handler, event))
        elif isinstance(event, MalformedMessage):
            log.debug("malformed message from %s: %s", event.peer, event.reason)

    def _on_request(self, event: RequestReceived) -> None:
        assert self.stack is not None
        request = event.request
        tag = new_tag()
        rejection = precheck(request, tag=tag)
        if rejection is not None:
            self.driver.respond(event.key, rejection)
            return
        method = request.method
        if self.overload is not None and method in _SHEDDABLE and self._shed(request):
            self.driver.respond(event.key, self._overloaded(request, tag))
            return
        immediate = self._immediate.get(method)
        if immediate is not None:
            self._run_immediate(immediate, event)
            return
        if method == "OPTIONS" and request.uri.user is None:
            self.driver.respond(event.key, options_response(request, tag=tag))
            return
        handler = self._handlers.get(method)
        if handler is None:
            if method == "CANCEL":
                # No dialog usage could match: §9.2 / §16.10
                self.driver.respond(event.key, build_response(request, 481, to_tag=tag))
            elif method == "OPTIONS":
                self.driver.respond(event.key, options_response(request, tag=tag))
            else:
                self.driver.respond(event.key, not_allowed(request, tag=tag))
            return
        self._spawn(self._await_response(handler(event), event, tag))

    def _shed(self, request: SipRequest) -> bool:
        """Refuse this new request because the node is behind? Never an in-dialog request,
        a REGISTER answering a challenge, or an emergency call."""
        assert self.overload is not None
        if not self.overload.behind() or request.to.tag is not None:
            return False
        if request.method == "REGISTER":
            return "Authorization" not in request.headers
        if request.method == "INVITE" and self.b2bua is not None:
            from gateway.b2bua.dialplan import TargetKind

            if self.b2bua.dialplan.classify(request.uri.user).kind is TargetKind.EMERGENCY:
                return False
        return True

    def _overloaded(self, request: SipRequest, tag: str) -> SipResponse:
        assert self.overload is not None
        return build_response(request, 503, to_tag=tag,
                              headers=self.overload.refusal(request.method))

    def _run_immediate(self, handler: ImmediateHandler, event: RequestReceived) -> None:
        try:
            result = handler(event)
        except Exception as e:  # noqa: BLE001 - one function maps failures to SIP (STYLE 8)
            self._handler_failed(event, e)
            return
        if isinstance(result, SipResponse):
            self.driver.respond(event.key, result)
        elif isinstance(result, asyncio.Future):
            # a future: answer from its callback, no task
            result.add_done_callback(lambda f: self._future_response(f, event))
        else:
            self._spawn(self._await_response(result, event))

    def _future_response(self, fut: asyncio.Future[SipResponse | None],
                         event: RequestReceived) -> None:
        if fut.cancelled():
            return  # shutting down
        e = fut.exception()
        if e is not None:
            self._handler_failed(event, e)  # type: ignore[arg-type]
            return
        response = fut.result()
        if response is not None:
            self.driver.respond(event.key, response)

    async def _await_response(self, result: Awaitable[SipResponse | None],
                              event: RequestReceived, tag: str = "") -> None:
        try:
            response = await result
        except Exception as e:  # noqa: BLE001 - one function maps failures to SIP (STYLE 8)
            self._handler_failed(event, e, tag)
            return
        if response is not None:
            self.driver.respond(event.key, response)

    def _handler_failed(self, event: RequestReceived, e: Exception, tag: str = "") -> None:
        log.error("handler for %s failed", event.request.method, exc_info=e)
        self.driver.respond(event.key, build_response(
            event.request, 500, to_tag=tag or new_tag(),
            headers=[("Warning", f'399 sipgw "internal error: {type(e).__name__}"')]))

    async def _run_ack(self, handler: RequestHandler, event: AckReceived) -> None:
        try:
            await handler(RequestReceived(key=None, request=event.request,  # type: ignore[arg-type]
                                          peer=event.peer))
        except Exception:  # noqa: BLE001
            log.exception("ACK handler failed")

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._tasks.spawn(coro)
