"""``sipgw`` — the command line: run the gateway and administer it.

Every command reads the same configuration (``--config FILE`` or
``$SIPGW_CONFIG``, then ``SIPGW_<SECTION>_<KEY>`` environment overrides).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.config import ConfigError, describe, load_config

DESCRIPTION = """\
sipgw: a cloud SIP registrar and B2BUA that signs third-party desk phones
(Cisco MPP, Poly, Yealink, AudioCodes, Spectralink) into a Teams-like
call-control backend with Entra ID device-code pairing.

With no configuration, `sipgw serve` starts everything on loopback: a private
Valkey in the data directory, the reference backend and the development
identity provider, and prints where each service listens.
"""


def _install_reactor() -> Any:
    """Twisted on the asyncio reactor, so aiortc and redis.asyncio share the loop."""
    from twisted.internet import asyncioreactor

    if "twisted.internet.reactor" not in sys.modules:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
    from twisted.internet import reactor

    return reactor


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    reactor = _install_reactor()
    from twisted.internet.defer import Deferred

    from gateway.app import Gateway

    gateway = Gateway(cfg, reactor)
    status = {"code": 0}

    async def main() -> None:
        try:
            listening = await gateway.start()
        except Exception as e:  # noqa: BLE001 - report start-up failures plainly
            print(f"sipgw: cannot start: {e}", file=sys.stderr, flush=True)
            status["code"] = 1
            await gateway.stop()
            reactor.stop()
            return
        for item in listening:
            print(item, flush=True)
        print(f"ready node={gateway.node_id}", flush=True)

    def on_shutdown() -> Deferred[None]:
        return Deferred.fromFuture(asyncio.ensure_future(gateway.stop()))

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    reactor.callWhenRunning(lambda: Deferred.fromFuture(asyncio.ensure_future(main())))
    reactor.run()
    return status["code"]


def cmd_config(args: argparse.Namespace) -> int:
    if args.defaults:
        print(describe())
        return 0
    cfg = load_config(args.config)
    from dataclasses import asdict

    for section, values in asdict(cfg).items():
        print(f"[{section}]")
        for k, v in values.items():
            print(f"{k} = {v!r}")
        print()
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from firmware_catalog.cli import main as catalog_main

    return catalog_main(args.rest, prog="sipgw catalog")


def run_async(fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    return asyncio.run(fn())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sipgw", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE",
                   help="TOML configuration file (default: $SIPGW_CONFIG, else built-in defaults)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway (SIP listeners, registrar, B2BUA, "
                                     "metrics; embedded Valkey/backend/IdP unless configured)")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("config", help="print the effective configuration "
                                      "(--defaults: every setting with its env override)")
    c.add_argument("--defaults", action="store_true", help="list all settings and defaults")
    c.set_defaults(func=cmd_config)

    cat = sub.add_parser("catalog", add_help=False,
                         help="firmware catalog: `catalog check \"<User-Agent>\"` prints the "
                              "compliance verdict; `catalog list [--vendor V]` the table")
    cat.add_argument("rest", nargs=argparse.REMAINDER, help="check \"<User-Agent>\" | list")
    cat.set_defaults(func=cmd_catalog)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"sipgw: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
