"""SIP over real loopback sockets: UDP, TCP, TLS on IPv4 and IPv6 (RFC 3261 §18, RFC 5626 §3.5.1).

The driver and the real SIP stack run in the test's (asyncio) reactor; the
clients are blocking raw sockets run in a thread so the reactor keeps serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from gateway.sip.message import SipResponse
from gateway.transport import StreamLimits

from .sip_clients import InProcessSip, StreamClient, options_request, udp_options_answered

pytestmark = pytest.mark.integration

HOSTS = ("127.0.0.1", "::1")


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest_twisted.async_yield_fixture
async def sip(tmp_path: Path) -> AsyncIterator[InProcessSip]:
    if not _ipv6_loopback():
        pytest.fail("IPv6 loopback (::1) unavailable on this machine")
    server = InProcessSip(tmp_path, HOSTS, limits=StreamLimits(idle_timeout=2.0))
    try:
        yield server
    finally:
        await server.driver.stop()


async def in_thread(fn: Any, *args: Any) -> Any:
    return await deferToThread(fn, *args)


@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.ensureDeferred
async def test_options_over_udp(sip: InProcessSip, host: str) -> None:
    resp = await in_thread(udp_options_answered, host, sip.port("udp", host))
    assert resp.status == 200


@pytest.mark.parametrize("proto", ["tcp", "tls"])
@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.ensureDeferred
async def test_pipelined_stream_messages_all_answered_on_the_same_connection(
        sip: InProcessSip, host: str, proto: str) -> None:
    port = sip.port(proto, host)

    def client() -> list[Any]:
        with StreamClient(host, port, tls_ca=sip.tls.ca if proto == "tls" else None) as c:
            c.send(b"".join(options_request(proto.upper(), host, port, call_id=f"pipe-{i}")
                            for i in range(5)))
            first = c.read_messages(5)
            # responses come back over this connection, and it stays usable (§18.2.2)
            c.send(options_request(proto.upper(), host, port, call_id="pipe-again"))
            return first + c.read_messages(1)

    got = await in_thread(client)
    assert all(isinstance(m, SipResponse) and m.status == 200 for m in got), got
    assert [m.call_id for m in got] == [f"pipe-{i}" for i in range(5)] + ["pipe-again"]
    assert sip.metrics.sample("sip_messages_received_total", {
        "transport": proto.upper(), "kind": "request", "method": "OPTIONS", "status": ""}) == 6


@pytest.mark.parametrize("proto", ["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_message_split_across_segments_answered(sip: InProcessSip, proto: str) -> None:
    host = "127.0.0.1"
    port = sip.port(proto, host)
    raw = options_request(proto.upper(), host, port, call_id="split")

    def client() -> list[Any]:
        import time

        with StreamClient(host, port, tls_ca=sip.tls.ca if proto == "tls" else None) as c:
            step = len(raw) // 6 + 1
            for i in range(0, len(raw), step):
                c.send(raw[i:i + step])
                time.sleep(0.02)  # spacing, so each piece is its own TCP segment
            return c.read_messages(1)

    [resp] = await in_thread(client)
    assert isinstance(resp, SipResponse) and resp.status == 200 and resp.call_id == "split"


@pytest.mark.parametrize("proto", ["tcp", "tls"])
@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.ensureDeferred
async def test_crlf_ping_gets_crlf_pong(sip: InProcessSip, host: str, proto: str) -> None:
    port = sip.port(proto, host)

    def client() -> tuple[bytes, list[Any]]:
        with StreamClient(host, port, tls_ca=sip.tls.ca if proto == "tls" else None) as c:
            c.send(b"\r\n\r\n")
            pong = c.read_exact(2)
            c.send(options_request(proto.upper(), host, port, call_id="after-ping"))
            return pong, c.read_messages(1)

    pong, [resp] = await in_thread(client)
    assert pong == b"\r\n"
    assert isinstance(resp, SipResponse) and resp.call_id == "after-ping"


@pytest_twisted.ensureDeferred
async def test_silent_connection_closed_after_idle_timeout(sip: InProcessSip) -> None:
    port = sip.port("tcp", "127.0.0.1")

    def client() -> bytes:
        with StreamClient("127.0.0.1", port, timeout=10) as c:
            return c.read_until_closed()

    assert await in_thread(client) == b""


@pytest_twisted.ensureDeferred
async def test_tcp_connection_gauge_follows_connections(sip: InProcessSip) -> None:
    port = sip.port("tcp", "127.0.0.1")
    c = await in_thread(StreamClient, "127.0.0.1", port)
    try:
        await in_thread(c.send, options_request("TCP", "127.0.0.1", port))
        await in_thread(c.read_messages, 1)
        assert sip.metrics.sample("sip_tcp_connections", {"transport": "TCP"}) == 1
    finally:
        c.close()


# -- SIPp against the real `sipgw serve` process ---------------------------------------

SIPP_SCENARIO = Path(__file__).parent / "sipp" / "options_uac.xml"


def _free_port(kind: int) -> int:
    import socket

    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


def _shared_conftest(config: pytest.Config) -> Any:
    """tests/conftest.py as loaded by pytest (several conftest modules exist, so no import)."""
    shared = Path(__file__).resolve().parent.parent / "conftest.py"
    for plugin in config.pluginmanager.get_plugins():
        if Path(getattr(plugin, "__file__", "") or "/").resolve() == shared:
            return plugin
    raise LookupError(f"{shared} not loaded")


@pytest.mark.parametrize("proto,flag", [("udp", "u1"), ("tcp", "t1"), ("tls", "l1")])
def test_sipp_options_against_gateway_process(tmp_path: Path, proto: str, flag: str,
                                              pytestconfig: pytest.Config) -> None:
    import socket
    import subprocess

    import httpx

    from .gateway_process import GatewayProcess

    shared = _shared_conftest(pytestconfig)
    sipp = shared.require_tool("sipp")
    # Debian's SIPp is built without OpenSSL. Then SIPp speaks TCP to a local socat
    # that carries each connection over real TLS (verified against the dev CA) to the
    # gateway's TLS listener: the gateway side is exactly what a TLS phone sees.
    native_tls = "TLS" in subprocess.run([sipp, "-v"], capture_output=True, text=True).stdout
    socat = shared.require_tool("socat") if proto == "tls" and not native_tls else None
    calls = 200
    tunnel: subprocess.Popen[bytes] | None = None
    with GatewayProcess(tmp_path) as gw:
        host, port = gw.sip(proto)
        target = f"{host}:{port}"
        if socat is not None:
            [ca] = list(gw.data_dir.rglob("dev-ca.crt"))
            local = _free_port(socket.SOCK_STREAM)
            tunnel = subprocess.Popen(
                [socat, f"TCP-LISTEN:{local},bind=127.0.0.1,reuseaddr,fork",
                 f"OPENSSL:{host}:{port},cafile={ca},commonname=localhost"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_listening("127.0.0.1", local)
            target, flag = f"127.0.0.1:{local}", "t1"
        cmd = [sipp, "-sf", str(SIPP_SCENARIO), "-t", flag, "-m", str(calls), "-r", "100",
               "-rp", "1000", "-l", "50", "-i", "127.0.0.1",
               "-p", str(_free_port(socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)),
               "-timeout", "60s", "-timeout_error", "-nostdin",
               "-trace_err", "-error_file", str(tmp_path / "sipp_errors.log"),
               target]
        if proto == "tls" and native_tls:
            [cert] = list(gw.data_dir.rglob("dev-server.crt"))
            cmd[1:1] = ["-tls_cert", str(cert), "-tls_key", str(cert.with_suffix(".key"))]
        try:
            run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            errors = tmp_path / "sipp_errors.log"
            detail = "".join((run.stdout[-2000:], run.stderr[-2000:],
                              errors.read_text()[-2000:] if errors.exists() else "",
                              gw.output()[-2000:]))
            assert run.returncode == 0, detail
            text = httpx.get(gw.metrics_url, timeout=10).text
            wanted = ('sip_messages_received_total{kind="request",method="OPTIONS",status="",'
                      f'transport="{proto.upper()}"}}')
            line = next((x for x in text.splitlines() if x.startswith(wanted)), None)
            assert line is not None and float(line.split()[-1]) >= calls, text[-3000:]
        finally:
            if tunnel is not None:
                tunnel.terminate()
                tunnel.wait(10)
