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
from gateway.runtime import tune_gc

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
        tune_gc()
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


def cmd_backend(args: argparse.Namespace) -> int:
    """Run the reference backend alone, on the configured Redis (or a private Valkey)."""
    import os

    cfg = load_config(args.config)
    argv = ["--host", cfg.backend.host, "--port", str(cfg.backend.port)] + list(args.rest)
    if cfg.backend.directory:
        argv += ["--directory", cfg.backend.directory]
    valkey = None
    wants_help = any(a in ("-h", "--help") for a in args.rest)
    if not wants_help and not cfg.redis.url and "--redis-url" not in args.rest \
            and not os.environ.get("SIPGW_REDIS_URL"):
        from gateway.state.valkey import EmbeddedValkey

        valkey = EmbeddedValkey(cfg.data_path / "backend-valkey")
        valkey.start()
        argv += ["--redis-url", valkey.url]
        print(f"listening valkey unix {valkey.socket_path}:0", flush=True)
    elif cfg.redis.url:
        argv += ["--redis-url", cfg.redis.url]
    if not os.environ.get("SIPGW_BACKEND_TOKEN") and cfg.backend.token:
        os.environ["SIPGW_BACKEND_TOKEN"] = cfg.backend.token
    from gateway.backend.reference.server import main as backend_main

    try:
        return backend_main(argv)
    finally:
        if valkey is not None:
            valkey.stop()


def cmd_directory(args: argparse.Namespace) -> int:
    """``directory passwd FILE UPN``: set a directory user's password (stored as scrypt)."""
    import getpass

    from gateway.backend.directory import set_password

    password = getpass.getpass(f"new password for {args.upn}: ") if args.password_stdin is False \
        else sys.stdin.readline().rstrip("\n")
    try:
        set_password(args.file, args.upn, password)
    except ValueError as e:
        print(f"sipgw directory: {e}", file=sys.stderr)
        return 1
    print(f"password of {args.upn} updated in {args.file}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.rest[:1] == ["bulk-sign-in"]:
        from gateway.ops.admin_cli import bulk_sign_in_main

        return bulk_sign_in_main(args.rest[1:], cfg)
    from gateway.registrar.cli import devices_main

    return devices_main(list(args.rest), cfg)


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

    dv = sub.add_parser("devices", add_help=False,
                        help="device accounts: add|list|show|remove, and bulk-sign-in FILE.csv "
                             "--region NOAM|EMEA|APAC (see `sipgw devices --help`)")
    dv.add_argument("rest", nargs=argparse.REMAINDER)
    dv.set_defaults(func=cmd_devices)

    b = sub.add_parser("backend", add_help=False,
                       help="run the reference call-control backend alone "
                            "(token from $SIPGW_BACKEND_TOKEN; see `sipgw backend --help`)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_backend)

    d = sub.add_parser("directory", help="directory of the reference backend: "
                                         "`directory passwd FILE UPN` sets a user's password")
    dsub = d.add_subparsers(dest="action", required=True)
    pw = dsub.add_parser("passwd", help="set a user's password (prompted, or --stdin)")
    pw.add_argument("file", help="directory TOML file")
    pw.add_argument("upn", help="the user's sign-in name, e.g. alice@contoso.example")
    pw.add_argument("--stdin", dest="password_stdin", action="store_true",
                    help="read the password from standard input")
    pw.set_defaults(func=cmd_directory)
    return p


PASSTHROUGH = ("catalog", "backend", "devices")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # pass-through commands hand their own options (even --help) to their parser
        if getattr(args, "command", None) in PASSTHROUGH:
            args.rest = list(unknown) + list(getattr(args, "rest", []))
        else:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
