"""Configuration: one TOML file, environment overrides, sane defaults.

Every setting lives in a section dataclass below; the defaults start a
self-contained gateway on loopback (private Valkey, reference backend,
development identity provider). Any key can be overridden from the
environment as ``SIPGW_<SECTION>_<KEY>`` (e.g. ``SIPGW_SIP_UDP_PORT=5070``,
``SIPGW_REDIS_URL=redis://10.0.0.5:6379/0``); lists are comma-separated.
The TOML file is ``--config PATH`` or ``$SIPGW_CONFIG``.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any


@dataclass
class ServerConfig:
    """Process-wide settings."""

    data_dir: str = ".data"  # dev certificates, embedded Valkey files, keys
    node_id: str = ""  # unique per gateway node; default: hostname + port
    log_level: str = "info"


@dataclass
class SipConfig:
    """SIP listeners and protocol timers (RFC 3261 §17.1.1.1)."""

    hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])  # add "::1" for IPv6
    udp_port: int = 5060  # 0 = ephemeral; -1 = disabled
    tcp_port: int = 5060
    tls_port: int = 5061
    tls_cert: str = ""  # empty: a development certificate generated into data_dir
    tls_key: str = ""
    tls_ca: str = ""
    domain: str = "sipgw.localhost"  # the realm and the host part of device AORs
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    max_connections: int = 10000
    max_connections_per_ip: int = 200
    idle_timeout: float = 60.0
    server_header: str = "sipgw/0.1"
    # Overload: with this many KiB of UDP datagrams waiting unread the node is behind, and
    # new out-of-dialog requests (REGISTER without credentials, INVITE but emergency
    # calls, OPTIONS, SUBSCRIBE ...) get 503 with Retry-After while work under way is
    # finished; 0 = never refuse
    shed_backlog_kib: int = 2048


@dataclass
class RedisConfig:
    """Shared state. Empty URL: start a private Valkey in data_dir (unix socket, AOF)."""

    url: str = ""
    embedded_tcp_port: int = -1  # >=0: also expose the embedded Valkey on loopback TCP
    # the embedded Valkey's append-only file (bindings and devices survive a restart);
    # false: memory only, as a registrar with in-memory location tables
    embedded_persist: bool = True


@dataclass
class MetricsConfig:
    """Prometheus /metrics and the ops HTTP port."""

    host: str = "127.0.0.1"
    port: int = 9060  # 0 = ephemeral; -1 = disabled


@dataclass
class BackendConfig:
    """Call-control backend. Empty URL: run the embedded reference backend."""

    url: str = ""
    token: str = ""  # bearer token; generated into data_dir when empty and embedded
    host: str = "127.0.0.1"  # embedded reference backend listener
    port: int = 8280
    directory: str = ""  # TOML directory for the reference backend; empty: bundled sample
    ring_timeout: float = 30.0  # reference backend: unanswered calls end as no_answer


@dataclass
class IdentityConfig:
    """Entra ID. Empty authority: run the development identity provider on loopback."""

    authority: str = ""  # e.g. https://login.microsoftonline.com
    tenant_id: str = ""
    client_id: str = "sipgw-dev-client"
    allowed_tenants: list[str] = field(default_factory=list)
    ca_file: str = ""  # extra CA bundle (the dev provider's CA is used automatically)
    devidp_host: str = "127.0.0.1"
    devidp_port: int = 8443
    key_file: str = ""  # AES-GCM key for token caches; generated into data_dir when empty
    devidp_interval: int = 5  # dev provider: device-code polling interval (RFC 8628 §3.2), s
    devidp_code_ttl: int = 900  # dev provider: device/user code lifetime, s
    phone_ui_host: str = "127.0.0.1"  # phones' sign-in screens (/phone/<mac>/signin)
    phone_ui_port: int = 8088  # 0 = ephemeral; -1 = disabled


@dataclass
class RegistrarSettings:
    """Registrar limits (RFC 3261 §10.3)."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    expires_jitter: float = 0.1
    max_bindings_per_aor: int = 10
    nonce_ttl: int = 300
    stale_paired_days: int = 30
    stale_unpaired_days: int = 14
    nonce_secret_file: str = ""  # shared by all nodes; default: data_dir/secrets/nonce.key
    sweep_interval: float = 30.0  # seconds between expired-binding sweeps
    offboard_interval: float = 3600.0  # seconds between stale-device sweeps
    # NAT keep-alive OPTIONS from the node owning a binding behind NAT (UDP) or a stream
    # flow (0 = off); the binding is removed after this many unanswered rounds in a row
    keepalive_interval: float = 30.0
    keepalive_failures: int = 3
    # User-Agent prefixes admitted outside the device table, flagged as lab clients
    # (e.g. ["baresip "] for an interop lab); empty: only the table admits
    lab_user_agents: list[str] = field(default_factory=list)
    # Everyday UDP REGISTERs answered straight from the datagram (same decisions, a
    # fraction of the CPU); false sends every REGISTER through the general SIP path
    fast_lane: bool = True
    # digest algorithms challenged with, in preference order (RFC 8760): "MD5" and/or
    # "SHA-256" (a 401 then carries one WWW-Authenticate per algorithm)
    digest_algorithms: list[str] = field(default_factory=lambda: ["MD5"])
    # abuse guard, held in Redis across nodes: requests per rate_window seconds per source
    # address / per account; failed digests per failure_window before a block
    rate_window: int = 10
    source_rate: int = 5000
    account_rate: int = 30
    failure_window: int = 300
    source_failures: int = 10
    account_failures: int = 10
    block_seconds: int = 900


@dataclass
class OpsConfig:
    """Admin REST API, /ops page and /healthz."""

    host: str = "127.0.0.1"
    port: int = 9061  # 0 = ephemeral; -1 = disabled
    admin_token: str = ""  # empty: generated into data_dir/secrets/admin.token


@dataclass
class Config:
    """The whole configuration, built once in the composition root and passed down."""

    server: ServerConfig = field(default_factory=ServerConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    registrar: RegistrarSettings = field(default_factory=RegistrarSettings)
    ops: OpsConfig = field(default_factory=OpsConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir).expanduser().resolve()


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return [_coerce(v, inner, where) for v in value]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return _coerce(value, args[0], where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return value
    return value


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(section))
    known = {f.name for f in fields(section)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        setattr(section, key, _coerce(value, hints[key], f"{where}.{key}"))


def load_config(path: str | os.PathLike[str] | None = None,
                env: typing.Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file, then ``SIPGW_<SECTION>_<KEY>`` environment overrides."""
    env = os.environ if env is None else env
    cfg = Config()
    path = path or env.get("SIPGW_CONFIG") or None
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        for name, values in data.items():
            section = getattr(cfg, name, None)
            if section is None or not is_dataclass(section) or not isinstance(values, dict):
                raise ConfigError(f"{path}: unknown section [{name}]")
            _apply(section, values, f"{path} [{name}]")
    sections = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    for key, value in env.items():
        if not key.startswith("SIPGW_") or key == "SIPGW_CONFIG":
            continue
        rest = key[len("SIPGW_"):].lower()
        sname, _, fname = rest.partition("_")
        if sname not in sections or not fname:
            raise ConfigError(f"environment {key}: no such setting")
        _apply(sections[sname], {fname: value}, f"environment {key}")
    return cfg


def _toml(value: Any) -> str:
    """A default as TOML: Python's repr is TOML for strings, numbers and lists of
    them, but not for booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def describe() -> str:
    """Every setting with its default, for ``sipgw config``."""
    out: list[str] = []
    cfg = Config()
    for f in fields(cfg):
        section = getattr(cfg, f.name)
        out.append(f"[{f.name}]  # {type(section).__doc__}")
        for sf in fields(section):
            out.append(f"{sf.name} = {_toml(getattr(section, sf.name))}    "
                       f"# env SIPGW_{f.name.upper()}_{sf.name.upper()}")
        out.append("")
    return "\n".join(out)
