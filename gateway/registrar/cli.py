"""``sipgw devices``: add, list, show and remove device accounts.

The store is the one the gateway uses: ``[redis] url`` when configured;
otherwise the running gateway's private Valkey (its unix socket in the data
directory); otherwise, with no gateway running, the embedded Valkey is
started for the duration of the command (its append-only file keeps the
change for the next ``sipgw serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

from redis.exceptions import RedisError

from gateway.config import Config
from gateway.registrar.admin import add_device, list_devices, remove_device, show_device
from gateway.registrar.devices import DeviceError


def _socket_answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(path))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Any]:
    """A Redis client for the gateway's store (see the module docstring)."""
    from gateway.state.redis import connect

    embedded = None
    if config.redis.url:
        url = config.redis.url
    else:
        sock = config.data_path / "valkey" / "valkey.sock"
        if _socket_answers(sock):
            url = f"unix://{sock}"
        else:
            from gateway.state.valkey import EmbeddedValkey

            embedded = EmbeddedValkey(config.data_path / "valkey")
            await asyncio.to_thread(embedded.start)
            url = embedded.url
    redis = connect(url)
    try:
        await redis.ping()
        yield redis
    finally:
        await redis.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def build_parser(prog: str = "sipgw devices") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Manage device accounts (SIP phones).")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    a = sub.add_parser("add", help="create a device and print its SIP password (shown once)")
    a.add_argument("--mac", required=True, help="MAC address, any common notation")
    a.add_argument("--vendor", required=True)
    a.add_argument("--model", required=True)
    a.add_argument("--tenant", required=True)
    a.add_argument("--username", help="SIP username (default: the MAC, 12 lower-hex digits)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    ls = sub.add_parser("list", help="list devices")
    ls.add_argument("--tenant")
    ls.add_argument("--json", action="store_true")
    sh = sub.add_parser("show", help="a device, its pairing, firmware verdict and bindings")
    sh.add_argument("mac")
    sh.add_argument("--json", action="store_true")
    rm = sub.add_parser("remove", help="delete a device, its credentials and bindings")
    rm.add_argument("mac")
    return p


def _ago(ts: float, now: float) -> str:
    if not ts:
        return "never"
    d = int(now - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= n:
            return f"{d // n}{unit} ago"
    return f"{max(d, 0)}s ago"


def _print_show(d: dict[str, Any], out: TextIO) -> None:
    now = time.time()
    fw = d["firmware"]
    pairing = f"paired to {d['user']}" if d["state"] == "paired" else d["state"]
    verdict = fw["compliance"] or "not checked yet (no REGISTER)"
    if fw["compliance"]:
        verdict += " (admitted)" if fw["admitted"] else " (REJECTED)"
        if fw["flagged"]:
            verdict += ", flagged"
    lines = [
        f"device     {d['device_id']}  {d['vendor']} {d['model']}  tenant {d['tenant']}",
        f"sip        {d['aor']}  (username {d['sip_username']}, realm {d['realm']})",
        f"pairing    {pairing}",
        f"firmware   {verdict}",
    ]
    if fw.get("reason"):
        lines.append(f"           reason: {fw['reason']}")
    if fw.get("upgrade_to"):
        lines.append(f"           upgrade to: {fw['upgrade_to']}")
    if fw.get("user_agent"):
        lines.append(f"           User-Agent: {fw['user_agent']}")
    lines.append(f"last seen  {_ago(d['last_seen'], now)}")
    if not d["bindings"]:
        lines.append("bindings   none (not registered)")
    for b in d["bindings"]:
        lines.append(f"binding    {b['contact']}")
        lines.append(f"           from {b['source']} via node {b['node_id']}, expires in "
                     f"{max(0, int(b['expires'] - now))}s"
                     + (", outbound flow" if b["outbound"] else ""))
    out.write("\n".join(lines) + "\n")


async def _run(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    realm = config.sip.domain
    async with open_store(config) as redis:
        if args.action == "add":
            dev, password = await add_device(redis, args.mac, args.vendor, args.model,
                                             args.tenant, realm, sip_username=args.username)
            if args.json:
                out.write(json.dumps({**dev.public(), "password": password}) + "\n")
            else:
                out.write(f"device    {dev.device_id} ({dev.vendor} {dev.model}, tenant "
                          f"{dev.tenant})\nusername  {dev.sip_username}\nrealm     {realm}\n"
                          f"aor       {dev.aor}\npassword  {password}\n"
                          "(the password is shown only now; it is stored as digest HA1s)\n")
            return 0
        if args.action == "list":
            devices = await list_devices(redis, realm, tenant=args.tenant)
            if args.json:
                out.write(json.dumps(devices) + "\n")
                return 0
            now = time.time()
            out.write(f"{'MAC':<13} {'VENDOR':<12} {'MODEL':<14} {'TENANT':<12} "
                      f"{'STATE':<9} {'FIRMWARE':<14} LAST SEEN\n")
            for d in devices:
                out.write(f"{d['device_id']:<13} {d['vendor'][:12]:<12} {d['model'][:14]:<14} "
                          f"{d['tenant'][:12]:<12} {d['state']:<9} "
                          f"{(d['firmware']['compliance'] or '-')[:14]:<14} "
                          f"{_ago(d['last_seen'], now)}\n")
            out.write(f"{len(devices)} device(s)\n")
            return 0
        if args.action == "show":
            shown = await show_device(redis, args.mac, realm)
            if shown is None:
                print(f"sipgw devices: no device {args.mac}", file=sys.stderr)
                return 1
            if args.json:
                out.write(json.dumps(shown) + "\n")
            else:
                _print_show(shown, out)
            return 0
        if args.action == "remove":
            if not await remove_device(redis, args.mac, realm):
                print(f"sipgw devices: no device {args.mac}", file=sys.stderr)
                return 1
            out.write(f"removed {args.mac}\n")
            return 0
    return 2


def devices_main(argv: list[str], config: Config, *, out: TextIO | None = None) -> int:
    """``sipgw devices ACTION ...``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.action:
        parser.print_help()
        return 2
    try:
        return asyncio.run(_run(args, config, out or sys.stdout))
    except DeviceError as e:
        print(f"sipgw devices: {e}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, RedisError) as e:
        print(f"sipgw devices: cannot reach the store: {e}", file=sys.stderr)
        return 1
