"""Sign-in end to end against `sipgw serve`: a phone dials *77*, the user signs in at the
development identity provider over HTTPS, the phone is paired and reachable as the
user's number; *78* signs it out; declined codes; per-vendor sign-in screens.

The phone's REGISTER is a Python UDP client (digest MD5): at the time of writing the
committed registrar challenges SHA-256 first and SIPp 3.6 answers only the first
challenge and only with MD5. The sign-in INVITE to *77* is SIPp, sent from the
registered port so the gateway trusts it by source; the same port then listens again
with the Python client for the NOTIFY check-sync and the incoming call.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import require_tool

from gateway.backend.client import BackendClient
from gateway.backend.directory import default_directory_path, set_password
from gateway.identity.pairing import PairingState, PairingStore
from gateway.registrar.admin import add_device
from gateway.registrar.devices import DeviceStore
from gateway.sip.headers import NameAddr
from gateway.sip.message import SipRequest, SipResponse
from gateway.state.redis import connect
from gateway.state.secrets import load_or_create_key
from integration.b2bua.phone import UA, Phone
from integration.gateway_process import GatewayProcess
from integration.identity.helpers import aio, sign_in_on_page, wait_for

pytestmark = pytest.mark.integration

REALM = "sipgw.localhost"
CONTOSO = "7f3e1c9a-0d52-4b8e-9a41-3c2f6b1d8e01"
NORTHWIND = "9c4a7b1e-6f28-4d93-a5c0-8e1b4d7f2a03"
ALICE_OID = "a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e01"
BOB_OID = "a1c0e7d2-3b4f-4c5d-8e6f-0a1b2c3d4e02"
ALICE_NUMBER = "+14255550101"
HOSTILE_NAME = "Alice <b>&amp; \"Q\" 'x'"
SIPP_SCENARIO = Path(__file__).parent / "sipp" / "signin_uac.xml"
UAS = {
    "Cisco": ("CP-8851", "Cisco-CP-8851-3PCC/12.0.3_MPP_0001"),
    "Poly": ("VVX450", "Polycom/6.4.3.5814 PolycomVVX-VVX_450-UA/6.4.3.5814"),
    "Yealink": ("T54W", UA),
}
_macs = iter(range(1, 4096))


@dataclass
class Served:
    gw: GatewayProcess
    passwords: dict[str, str]
    workdir: Path

    @property
    def ca_file(self) -> Path:
        return self.gw.data_dir / "tls" / "dev-ca.crt"  # the gateway's one dev CA

    @property
    def idp_url(self) -> str:
        host, port = self.gw.addr("idp", "https")
        return f"https://{host}:{port}"

    @property
    def phone_ui(self) -> str:
        host, port = self.gw.addr("phone-ui", "http")
        return f"http://{host}:{port}"

    def redis(self) -> Any:
        host, port = self.gw.addr("valkey", "tcp")
        return connect(f"redis://{host}:{port}/0")

    def backend(self) -> BackendClient:
        host, port = self.gw.addr("backend", "http")
        token = load_or_create_key(self.gw.data_dir / "secrets" / "backend.token").hex()
        return BackendClient(f"http://{host}:{port}", token)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("signin")
    directory = work / "directory.toml"
    text = default_directory_path().read_text()
    # A hostile display name: every screen must escape it.
    text = text.replace('name = "Alice Example"', 'name = "Alice <b>&amp; \\"Q\\" \'x\'"')
    directory.write_text(text)
    passwords = {upn: secrets.token_urlsafe(12)
                 for upn in ("alice@contoso.example", "bob@contoso.example")}
    for upn, pw in passwords.items():
        set_password(directory, upn, pw)
    gw = GatewayProcess(work, {
        "redis": {"embedded_tcp_port": 0},
        "backend": {"directory": str(directory)},
        "identity": {"devidp_interval": 1, "devidp_code_ttl": 120, "phone_ui_port": 0},
    })
    gw.start()
    try:
        yield Served(gw, passwords, work)
    finally:
        gw.stop()


class TestPhone(Phone):
    """The b2bua test phone with a chosen User-Agent and a fixed local port."""

    __test__ = False

    def __init__(self, *args: Any, ua: str = UA, port: int = 0) -> None:
        super().__init__(*args)
        self.ua = ua
        self.fixed_port = port

    async def open(self) -> TestPhone:
        loop = asyncio.get_running_loop()
        from integration.b2bua.phone import _Proto

        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self), local_addr=("127.0.0.1", self.fixed_port))
        self.transport = transport  # type: ignore[assignment]
        self.port = self.fixed_port = transport.get_extra_info("sockname")[1]
        return self

    def request(self, *args: Any, **kwargs: Any) -> bytes:
        raw = super().request(*args, **kwargs)
        return raw.replace(f"User-Agent: {UA}\r\n".encode(), f"User-Agent: {self.ua}\r\n".encode())


@dataclass
class Device:
    device_id: str
    phone: TestPhone
    password: str


async def provision(s: Served, redis: Any, vendor: str = "Yealink",
                    tenant: str = CONTOSO) -> Device:
    model, ua = UAS[vendor]
    mac = f"0015651a{next(_macs):04x}"
    dev, password = await add_device(redis, mac, vendor, model, tenant, REALM)
    phone = await TestPhone(dev.sip_username, password, REALM, s.gw.sip("udp"), ua=ua).open()
    resp = await phone.register()
    assert resp.status == 200, resp
    return Device(dev.device_id, phone, password)


def sipp_sign_in(s: Served, d: Device, code: str = "*77*") -> tuple[str, str]:
    """Dial ``code`` with SIPp from the phone's registered port; (PAI, To) of the 200."""
    sipp = require_tool("sipp")
    log_file = s.workdir / f"sipp-{d.device_id}-{time.monotonic_ns()}.log"
    host, port = s.gw.sip("udp")
    proc = subprocess.run(
        [sipp, "-sf", str(SIPP_SCENARIO), "-i", "127.0.0.1", "-p", str(d.phone.port),
         "-t", "u1", "-m", "1", "-nostdin", "-s", code, "-key", "domain", REALM,
         "-key", "user", d.phone.username, "-key", "ua", d.phone.ua,
         "-trace_logs", "-log_file", str(log_file), "-timeout", "20s", "-timeout_error",
         f"{host}:{port}"],
        capture_output=True, timeout=40, cwd=s.workdir)
    logged = log_file.read_text(errors="replace") if log_file.exists() else ""
    assert proc.returncode == 0, (proc.stdout.decode(errors="replace")[-3000:], logged)
    pai = re.search(r"^PAI=(.*)$", logged, re.M)
    to = re.search(r"^TO=(.*)$", logged, re.M)
    assert pai and to, logged
    return pai.group(1).strip(), to.group(1).strip()


async def dial(d: Device, code: str) -> tuple[SipResponse, float]:
    """Dial a feature code with the Python phone; the final response and when it came."""
    call = d.phone.invite(code)
    resp = await call.final(timeout=10)
    return resp, time.monotonic()


async def expect_bye(d: Device, timeout: float = 10.0) -> SipRequest:
    bye = await d.phone.expect_request("BYE", timeout)
    d.phone.respond(bye, 200)
    return bye


async def expect_notify(d: Device, timeout: float = 15.0) -> SipRequest:
    notify = await d.phone.expect_request("NOTIFY", timeout)
    d.phone.respond(notify, 200)
    return notify


def code_of(display: str) -> tuple[str, str]:
    m = re.fullmatch(r"Sign in: ([A-Z0-9]{8}) at (https://\S+)", display)
    assert m, display
    return m.group(1), m.group(2)


async def paired_state(redis: Any, device_id: str) -> tuple[PairingState, str]:
    rec = await PairingStore(redis).get(device_id)
    dev = await DeviceStore(redis, REALM).get(device_id)
    assert dev is not None
    return rec.state, dev.user if dev.paired else ""


@aio
async def test_dial_sign_in_pair_receive_call_sign_out(served: Served) -> None:
    s = served
    redis = s.redis()
    backend = s.backend()
    d = await provision(s, redis, "Yealink")
    try:
        # The phone dials *77* (SIPp from its registered port); the code is in the 200.
        d.phone.close()
        pai, to = await asyncio.to_thread(sipp_sign_in, s, d)
        addr = NameAddr.parse(pai)
        assert addr.uri.user == "signin" and addr.uri.host == REALM
        code, url = code_of(addr.display or "")
        assert url == f"{s.idp_url}/devicelogin"
        assert NameAddr.parse(to).display == addr.display
        rec = await PairingStore(redis).get(d.device_id)
        assert rec.state is PairingState.PAIRING and rec.user_code == code

        # The same port listens again (NOTIFY and calls come there).
        d.phone = await TestPhone(d.phone.username, d.password, REALM, s.gw.sip("udp"),
                                  ua=d.phone.ua, port=d.phone.port).open()
        # The user completes the verification page over HTTPS.
        page = await sign_in_on_page(s.idp_url, s.ca_file, code, "alice@contoso.example",
                                     s.passwords["alice@contoso.example"])
        assert page.status_code == 200, page.text

        notify = await expect_notify(d)
        assert notify.headers.get("Event") == "check-sync;reboot=false"  # Yealink
        assert str(notify.uri).startswith(f"sip:{d.phone.username}@127.0.0.1:{d.phone.port}")
        assert await paired_state(redis, d.device_id) == (PairingState.PAIRED, ALICE_OID)
        rec = await PairingStore(redis).get(d.device_id)
        assert rec.number == ALICE_NUMBER and rec.user_name == HOSTILE_NAME
        eps = [e.endpoint_id for e in await backend.list_endpoints(ALICE_OID)]
        assert f"sipdev-{d.device_id}" in eps  # added at pairing, not at the next REGISTER

        # A Teams client (sim) calls Alice's number: the INVITE reaches the phone.
        call = await backend.sim_call(BOB_OID, ALICE_NUMBER)
        invite = await d.phone.expect_request("INVITE", 10)
        assert invite.uri.user == d.phone.username
        d.phone.respond(invite, 486, tag="busy1")
        await d.phone.expect_request("ACK", 5)
        assert call.call_id

        # *78*: signed out, told to re-sync, endpoint gone.
        resp, _ = await dial(d, "*78*")
        assert resp.status == 200
        await expect_bye(d)
        await expect_notify(d)
        assert await paired_state(redis, d.device_id) == (PairingState.UNPAIRED, "")
        assert await redis.get(f"sipgw:tokencache:{d.device_id}") is None
        eps = [e.endpoint_id for e in await backend.list_endpoints(ALICE_OID)]
        assert f"sipdev-{d.device_id}" not in eps
        # ... and an unpaired phone cannot sign out again.
        resp, _ = await dial(d, "*78*")
        assert resp.status == 403 and "not signed in" in (resp.headers.get("Warning") or "")
    finally:
        d.phone.close()
        await backend.close()
        await redis.aclose()


@aio
async def test_declined_code_leaves_device_unpaired_with_reason(served: Served) -> None:
    s = served
    redis = s.redis()
    d = await provision(s, redis, "Poly")
    try:
        resp, answered = await dial(d, "*77*")
        assert resp.status == 200
        display = NameAddr.parse(resp.headers.get("P-Asserted-Identity") or "").display
        code, url = code_of(display or "")
        bye = await expect_bye(d)
        assert bye.call_id == resp.call_id
        assert time.monotonic() - answered >= 1.5  # the display stays up ~2 s
        page = await sign_in_on_page(s.idp_url, s.ca_file, code, "bob@contoso.example",
                                     s.passwords["bob@contoso.example"], action="decline")
        assert page.status_code == 200, page.text

        async def unpaired() -> bool:
            return (await PairingStore(redis).get(d.device_id)).state is PairingState.UNPAIRED
        await wait_for(unpaired, 20)
        rec = await PairingStore(redis).get(d.device_id)
        assert "declined" in rec.reason
        assert [t.to_state for t in rec.history][:2] == [PairingState.UNPAIRED,
                                                          PairingState.PAIRING]
        assert "declined" in rec.history[0].reason
        dev = await DeviceStore(redis, REALM).get(d.device_id)
        assert dev is not None and not dev.paired
        # The phone's screen tells why.
        async with httpx.AsyncClient(timeout=10) as http:
            page = await http.get(f"{s.phone_ui}/phone/{d.device_id}/signin")
        assert page.status_code == 200 and "declined" in page.text
    finally:
        d.phone.close()
        await redis.aclose()


@aio
async def test_government_tenant_sign_in_is_refused(served: Served) -> None:
    s = served
    redis = s.redis()
    d = await provision(s, redis, "Yealink", tenant=NORTHWIND)
    try:
        resp, _ = await dial(d, "*77*")
        assert resp.status == 403
        assert "gcchigh" in (resp.headers.get("Warning") or "")
        assert (await PairingStore(redis).get(d.device_id)).state is PairingState.UNPAIRED
    finally:
        d.phone.close()
        await redis.aclose()


@aio
async def test_phone_screens_per_vendor_show_the_code(served: Served) -> None:
    s = served
    redis = s.redis()
    devices = {v: await provision(s, redis, v) for v in ("Cisco", "Poly", "Yealink")}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            for vendor, d in devices.items():
                resp, _ = await dial(d, "*77*")
                assert resp.status == 200, (vendor, resp)
                code, url = code_of(NameAddr.parse(
                    resp.headers.get("P-Asserted-Identity") or "").display or "")
                await expect_bye(d)
                page = await http.get(f"{s.phone_ui}/phone/{d.device_id}/signin")
                assert page.status_code == 200, page.text
                assert code in page.text and url in page.text and "Expires in" in page.text
                if vendor == "Cisco":
                    assert page.text.count("<CiscoIPPhoneText>") == 1
                    assert page.headers["refresh"].isdigit()
                elif vendor == "Poly":
                    assert '<meta http-equiv="refresh"' in page.text
                else:
                    assert "<YealinkIPPhoneTextScreen" in page.text
                    assert re.search(r'refresh="\d+"', page.text)
            # The paired screen escapes the (hostile) user name.
            d = devices["Yealink"]
            code, url = code_of(NameAddr.parse(
                resp.headers.get("P-Asserted-Identity") or "").display or "")
            ok = await sign_in_on_page(s.idp_url, s.ca_file, code, "alice@contoso.example",
                                       s.passwords["alice@contoso.example"])
            assert ok.status_code == 200
            await expect_notify(d)
            page = await http.get(f"{s.phone_ui}/phone/{d.device_id}/signin")
            assert "Alice &lt;b&gt;&amp;amp; &quot;Q&quot; &apos;x&apos;" in page.text
            assert "<b>" not in page.text and ALICE_NUMBER in page.text
            # Unknown devices get nothing.
            assert (await http.get(f"{s.phone_ui}/phone/0015651affff/signin")).status_code \
                == 404
            assert (await http.get(f"{s.phone_ui}/phone/not-a-mac/signin")).status_code == 404
    finally:
        for d in devices.values():
            d.phone.close()
        await redis.aclose()


@aio
async def test_admin_remote_sign_in_pairs_the_phone(served: Served) -> None:
    """An admin starts the sign-in of a phone through the admin API of `sipgw serve`
    (the identity service behind it); the user signs in at the provider; paired."""
    s = served
    redis = s.redis()
    d = await provision(s, redis, "Poly")
    try:
        host, port = s.gw.addr("admin", "http")
        token = load_or_create_key(s.gw.data_dir / "secrets" / "admin.token").hex()
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as http:
            r = await http.post(f"/admin/v1/devices/{d.device_id}/sign-in",
                                headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        code = r.json()["user_code"]
        page = await sign_in_on_page(s.idp_url, s.ca_file, code, "bob@contoso.example",
                                     s.passwords["bob@contoso.example"])
        assert page.status_code == 200, page.text

        async def paired() -> bool:
            return (await paired_state(redis, d.device_id))[0] is PairingState.PAIRED

        await wait_for(paired, timeout=30)
        assert (await paired_state(redis, d.device_id))[1] == BOB_OID
    finally:
        d.phone.close()
        await redis.aclose()
