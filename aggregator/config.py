"""Settings of ``logq-aggregator``: command-line flags, a TOML ``--config`` file, and defaults.

The flags themselves (names, help, choices) are :mod:`aggregator.arguments`; this module merges
their values with the file's and checks them.

Every flag is also a key of the TOML file (dashes or underscores, e.g. ``flush-interval = 5`` or
``flush_interval = 5``, but not both: two spellings of one setting are an error), optionally
under an ``[aggregator]`` table; a ``[shipper]`` table is the shipper's and skipped, so one file
can serve both daemons (:func:`shipper.config.file_keys`).
Precedence: flag > config file > environment (``LOGQ_WAREHOUSE``) > default, as Fluent Bit and
Vector users expect.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any

from aggregator.allowed import parse_networks
from aggregator.envoy import FormatError, compile_format
from aggregator.flag_values import (
    BUFFER_COMPRESSIONS,
    DEFAULT_BUFFER_COMPRESSION,
    DEFAULT_LISTEN,
    MAX_INFLIGHT_BYTES,
    NODE_ID,
    TLS_KEY_PASSWORD_ENV,
)
from athena.warehouse import WarehouseError, is_s3_location, resolve_uri
from shipper.config import (
    at_least,
    blame_file,
    close_key,
    file_keys,
    file_prefix,
    join_host_port,
    parse_endpoint,
    read_config_file,
)
from shipper.config import file_setting_names as shipper_file_keys
from shipper.errors import ConfigError as ShipperConfigError
from shipper.errors import flag_of, preview, shown_value
from shipper.wire import MAX_MESSAGE_BYTES
from shipper.wire_limits import MAX_MESSAGE_ENTRIES

MiB = 1024 * 1024
#: The smallest ``--max-frame-bytes``: the largest message a logq-shipper builds
#: (:data:`shipper.wire.MAX_MESSAGE_BYTES`, 4 MiB; its batches close before they pass it). A
#: client resends a refused message as it was, forever (Fluent Bit and Fluentd never split a
#: chunk either), so a limit under a normal client's largest message stops that client for good,
#: not one message; Fluent Bit's chunks are about 2 MB. ``--max-frame-bytes 1`` was taken, and
#: refused every message.
MIN_FRAME_BYTES = MAX_MESSAGE_BYTES


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the setting and what to pass."""


@dataclass
class Settings:
    """Everything the aggregator needs to run; built by :func:`load_settings`."""

    listen: str = DEFAULT_LISTEN
    """``HOST:PORT`` of the Forward server."""
    warehouse: str | None = None
    """Warehouse URI; None means ``$LOGQ_WAREHOUSE`` else ``./logq-warehouse``."""
    buffer_dir: str = "./logq-buffer"
    """Where the write-ahead buffer segments, node id and dedup offsets live."""
    flush_interval: float = 10.0
    """Seconds between flushes of the buffer into Parquet (data freshness)."""
    shared_key: str | None = None
    """Enables the Forward shared-key handshake (HELO/PING/PONG)."""
    users: list[str] = field(default_factory=list)
    """``NAME:PASSWORD`` pairs: the handshake also checks a user (Fluentd's ``user_auth``)."""
    metrics_listen: str | None = None
    """``HOST:PORT`` of the Prometheus ``/metrics`` and ``/healthz`` endpoint."""
    unhealthy_after: float = 300.0
    """``/healthz`` answers 503 once flushes have failed for this many seconds."""
    retry_max_interval: float = 60.0
    """Longest wait between two tries of a failing flush (the wait starts at 0.5 s, or this if
    less, and doubles; Fluentd's ``retry_max_interval``). Shorter: a warehouse that is back is
    written to sooner, at the price of more failing requests while it is down."""
    max_frame_bytes: int = 32 * MiB
    """Largest Forward message accepted; a larger one closes that connection. At least
    :data:`MIN_FRAME_BYTES`."""
    buffer_limit_bytes: int = 1024 * MiB
    """Buffer size on disk beyond which acks are withheld and reading stops (backpressure)."""
    segment_bytes: int = 64 * MiB
    """A buffer segment this large is sealed and flushed before the flush interval is up."""
    buffer_compression: str = DEFAULT_BUFFER_COMPRESSION
    """Compression of buffer frames: none, lz4 or zstd (CPU vs. disk: aggregator/flag_values)."""
    target_file_bytes: int = 128 * MiB
    """Compaction merges a closed hour's small files into files of about this size."""
    compact_interval: float = 0.0
    """Seconds between compaction passes of the service; 0 (default) disables the periodic
    task. Enable it on one instance per warehouse (see aggregator/compaction/)."""
    max_message_entries: int = MAX_MESSAGE_ENTRIES
    """Entries one Forward message may hold (its memory grows with them, not with its bytes)."""
    max_connections: int = 1024
    """Connections beyond this are closed as soon as they are accepted."""
    max_inflight_bytes: int = MAX_INFLIGHT_BYTES
    """Bytes of Forward messages read and not yet durable, all connections together: past it
    connections stop reading, in turn (aggregator/inflight.py); it bounds memory whatever the
    number of clients sending at once."""
    idle_timeout: float = 600.0
    """A connection that sends nothing for this many seconds is closed."""
    stop_timeout: float = 90.0
    """Longest a stop (SIGTERM) may take, whatever holds it (a warehouse that takes requests and
    never answers): then the aggregator exits 1, what it could not write left in the buffer for
    the next start (aggregator/stop_budget.py). Below the service manager's SIGKILL deadline
    (``terminationGracePeriodSeconds``, ``stopTimeout``: 120 s in deploy/)."""
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_key_password: str | None = None
    """Passphrase of an encrypted ``tls_key``; None: ``$LOGQ_AGGREGATOR_TLS_KEY_PASSWORD``."""
    tls_client_ca: str | None = None
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS)."""
    allow_network: list[str] = field(default_factory=list)
    """Addresses or networks (CIDR) whose clients the Forward port takes; empty: every one."""
    athena_database: str | None = None
    athena_workgroup: str | None = None
    athena_output: str | None = None
    envoy_formats: list[str] = field(default_factory=list)
    """Extra Envoy access-log format strings (``%START_TIME%`` …), tried before the built-ins."""
    node_id: str | None = None
    """Prefix of object keys; default: a random id persisted in the buffer dir."""
    log_level: str = "info"

    @property
    def warehouse_uri(self) -> str:
        return resolve_uri(self.warehouse)


def split_host_port(value: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a pair, or a :class:`ConfigError` naming the flag.

    ``:PORT`` (no host) gives the host ``""``: every address of this host, IPv4 and IPv6, as
    asyncio binds it. It was ``0.0.0.0``, IPv4 only, and asyncio makes ``[::]`` IPv6 only
    (``IPV6_V6ONLY``): no value listened on both, and an IPv6-only pod could not be reached.

    The rest is read as ``logq-shipper --listen`` reads it (:func:`shipper.config.parse_endpoint`):
    an IPv6 address needs its brackets, the port is ASCII digits from 0 to 65535. Unlike the
    shipper's, the port is required (no flag here has a default one to fall back on)."""
    try:
        endpoint = parse_endpoint(value, None, what, listen=True)
    except ShipperConfigError as exc:
        raise ConfigError(str(exc)) from None
    return endpoint.host, endpoint.port


def listening_text(addresses: list[tuple[str, int]]) -> str:
    """``0.0.0.0:24224 and [::]:24224``: every address listened on, as a flag writes it."""
    return " and ".join(join_host_port(host, port) for host, port in addresses)


#: ``--config`` keys (the canonical ones, as the flags spell them) whose :class:`Settings` field
#: has another name; the field's name (``envoy_formats``, ``users``) is accepted as a key too.
#: docs/operations.md ("Config files") lists both spellings.
FILE_ALIASES = {"envoy_format": "envoy_formats", "user": "users"}
_FILE_KEYS = {name: key for key, name in FILE_ALIASES.items()}


def _file_values(path: str) -> dict[str, tuple[str, Any]]:
    """The ``--config`` file's settings by field name, each with the key as written."""
    raw = read_config_file(path, ConfigError)
    return file_keys(raw, path, "aggregator", FILE_ALIASES, ConfigError)


def _unknown_key(path: str, key: str, others: list[str]) -> ConfigError:
    """The error for an unknown ``key``: a logq-shipper key (``state_dir``, ``aggregator``) in
    a file both daemons read is said to belong under ``[shipper]``; else the keys there are."""
    also = f" (also unknown: {', '.join(map(repr, others))})" if others else ""
    if key.replace("-", "_") in shipper_file_keys():
        return ConfigError(
            f"{file_prefix(path, key)}a logq-shipper setting, not the aggregator's{also}; put it "
            "under [shipper] in a file both read, or remove it"
        )
    keys = sorted({_FILE_KEYS.get(name, name) for name in (f.name for f in fields(Settings))})
    close = close_key(key, {*keys, *FILE_ALIASES.values()})
    listed = ", ".join(keys)  # (Python's list spelling, ['a', 'b'], is not the user's)
    return ConfigError(f"{file_prefix(path, key)}unknown key{close}{also}; the keys are {listed}")


def _checked_file(path: str) -> dict[str, tuple[str, Any]]:
    """The settings of the ``--config`` file ``path``, by :class:`Settings` field name, each
    with the key as the file spells it (for :func:`blame_file`), checked: an unknown key, two
    spellings of one setting or a value of the wrong type is a :class:`ConfigError` naming the
    key and the file. serve, ``compact`` and ``drain`` read the file through
    :func:`load_settings` (a ``warehous = ...`` typo must not make ``compact`` work on
    ``$LOGQ_WAREHOUSE``)."""
    known = {f.name: f for f in fields(Settings)}
    values = _file_values(path)
    unknown = sorted(key for name, (key, _) in values.items() if name not in known)
    if unknown:
        raise _unknown_key(path, unknown[0], unknown[1:])
    return {
        name: (key, _typed(path, key, known[name].type, value))
        for name, (key, value) in values.items()
    }


def load_settings(args: argparse.Namespace, partial: bool = False) -> Settings:
    """Merge flags over the ``--config`` file over defaults, and check the result.

    ``partial``: the caller takes few of serve's flags (``compact``: two). Each value is checked
    as serve checks it, but not the settings that only hold together (``tls_cert`` with
    ``tls_key``, ``user`` with ``shared_key``): serve may complete the file with its own flags
    (``--tls-key``, ``--shared-key``), which such a caller cannot be given, and does not use."""
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}
    written: dict[str, str] = {}
    if getattr(args, "config", None) is not None:
        for name, (key, value) in _checked_file(args.config).items():
            values[name], written[name] = value, key
    # The settings the file gives and no flag overrides, as their flags spell them (--user),
    # each with the key as the file spells it.
    from_file = {
        _FILE_KEYS.get(k, k): key for k, key in written.items() if getattr(args, k, None) is None
    }
    for name in known:
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = flag_value
    settings = Settings(**values)
    if settings.tls_key_password is None and settings.tls_key:
        settings.tls_key_password = os.environ.get(TLS_KEY_PASSWORD_ENV) or None
    try:
        _check(settings, partial)
    except ConfigError as exc:  # a file's value out of range: say where it was written
        raise ConfigError(blame_file(str(exc), args.config or "", from_file)) from None
    return settings


def blame_warehouse(exc: Exception, args: argparse.Namespace, settings: Settings | None) -> str:
    """The message of ``exc``; for a warehouse ``open_warehouse`` refused (``ftp://x``,
    ``s3://``) that the ``--config`` file named (no ``--warehouse`` flag), led by ``--config
    PATH: key 'warehouse':``. serve and ``compact`` open the warehouse once the settings are
    checked, out of :func:`blame_file`'s sight, and must say alike where to fix it."""
    config = getattr(args, "config", None)
    from_file = (
        isinstance(exc, WarehouseError)
        and settings is not None
        and settings.warehouse is not None
        and getattr(args, "warehouse", None) is None
    )
    return file_prefix(config, "warehouse") + str(exc) if config and from_file else str(exc)


def _typed(path: str, key: str, kind: Any, value: Any) -> Any:
    """A ``--config`` value checked against its setting's type (a TOML string where a number
    belongs would otherwise fail much later, as a traceback)."""
    kind = str(kind)
    if kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        want = "a number"
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "a whole number"
    elif kind == "list[str]":
        ok = isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
        want = "a string or a list of strings"
    else:
        ok = isinstance(value, str)
        want = "a string"
    texts = value if isinstance(value, list) else [value]
    if ok and kind not in ("float", "int") and any("\x00" in v for v in texts):
        # A TOML "\u0000" reached os.mkdir & co. as a ValueError traceback (the shipper's rule).
        ok, want = False, "text without NUL characters (no path or name holds one)"
    if not ok:
        raise ConfigError(f"{file_prefix(path, key)}must be {want}, got {shown_value(key, value)}")
    return value


#: Levels ``--log-level`` accepts.
LOG_LEVELS = ("debug", "info", "warning", "error")


#: The seconds settings, each with whether 0 is allowed (``--compact-interval``: 0 turns the
#: periodic compaction off); every other must be more than 0.
_SECONDS = {
    "flush_interval": False,
    "unhealthy_after": False,
    "retry_max_interval": False,
    "idle_timeout": False,
    "stop_timeout": False,
    "compact_interval": True,
}

#: The whole-number settings and the smallest value of each.
_COUNTS = {
    "max_message_entries": 1,
    "max_connections": 1,
    "buffer_limit_bytes": 1,
    "segment_bytes": 1,
    "target_file_bytes": 1,
    "max_inflight_bytes": 1,
}


def _check_numbers(s: Settings) -> None:
    """Every numeric setting in its range (:func:`shipper.config.at_least`, the shipper's
    check), its error naming the flag."""
    for name, zero_ok in _SECONDS.items():
        flag = flag_of(name)
        setattr(
            s,
            name,
            at_least(flag, getattr(s, name), 0.0, ConfigError, seconds=True, above=not zero_ok),
        )
    for name, least in _COUNTS.items():
        at_least(flag_of(name), getattr(s, name), least, ConfigError)
    if s.max_frame_bytes < MIN_FRAME_BYTES:
        raise ConfigError(
            f"--max-frame-bytes must be at least {MIN_FRAME_BYTES} (4 MiB): a client resends a "
            "message over it forever, and a logq-shipper's messages reach 4 MiB, a Fluent Bit "
            f"chunk about 2 MB; got {s.max_frame_bytes}"
        )
    at_least("--max-frame-bytes", s.max_frame_bytes, MIN_FRAME_BYTES, ConfigError)  # its most


def _check(s: Settings, partial: bool = False) -> None:
    # An empty value is an unset variable in a template: a --buffer-dir "" meant the current
    # directory.
    texts = (
        "buffer_dir",
        "tls_cert",
        "tls_key",
        "tls_key_password",
        "tls_client_ca",
        "shared_key",
        "metrics_listen",
    )
    for name in texts:
        value = getattr(s, name)
        if value is not None and not str(value).strip():
            flag = flag_of(name)
            raise ConfigError(f"{flag} is empty (an unset variable?); give a value or leave it out")
    host, port = split_host_port(s.listen, "--listen")
    if s.metrics_listen:
        metrics_host, metrics_port = split_host_port(s.metrics_listen, "--metrics-listen")
        if port and port == metrics_port and _one_address(host, metrics_host):
            raise ConfigError(
                f"--metrics-listen {s.metrics_listen} and --listen {s.listen} name one port "
                f"({port}) on one address: give the metrics another port (9880 in deploy/)"
            )
    _check_numbers(s)
    if s.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}"
        )
    if s.node_id is not None and not NODE_ID.fullmatch(s.node_id):
        raise ConfigError(
            f"--node-id must be 1-64 letters, digits, '_' or '-' (it starts every object key), "
            f"got {s.node_id[:80]!r}"
        )
    if s.warehouse is not None and not s.warehouse.strip():
        raise ConfigError("--warehouse is empty; pass a directory or s3://bucket/prefix")
    if s.buffer_compression not in BUFFER_COMPRESSIONS:
        raise ConfigError(
            f"buffer-compression must be one of {', '.join(BUFFER_COMPRESSIONS)}, "
            f"got {s.buffer_compression!r}"
        )
    _check_athena(s)
    if not partial and bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    if not partial and s.tls_key_password and not s.tls_key:
        raise ConfigError("--tls-key-password needs --tls-cert and --tls-key: it opens the key")
    if not partial and s.tls_client_ca and not s.tls_cert:
        raise ConfigError(
            "--tls-client-ca needs --tls-cert and --tls-key: client certificates are asked for "
            "in the TLS handshake"
        )
    if isinstance(s.envoy_formats, str):
        s.envoy_formats = [s.envoy_formats]
    for text in s.envoy_formats:
        try:
            compile_format(text)
        except FormatError as exc:  # as a flag's error: blame_file then names the file's key
            raise ConfigError(f"--envoy-format: {exc}") from None
    if isinstance(s.allow_network, str):
        s.allow_network = [s.allow_network]
    try:
        parse_networks(s.allow_network)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(s.users, str):
        s.users = [s.users]
    if not partial and s.users and not s.shared_key:
        raise ConfigError("--user needs --shared-key: user authentication is part of its handshake")
    user_map(s)


#: The wildcard addresses, by IP version: every address of that version.
_EVERY_ADDRESS = {"0.0.0.0": 4, "::": 6}


def _one_address(a: str, b: str) -> bool:
    """Whether listening hosts ``a`` and ``b`` share an address: the same, ``""`` (every
    address) and anything, or a wildcard and an address of its IP version. Else the second bind
    of a port failed with "another process listens there", that process being this one. Two
    names (``localhost``) are compared as written, never resolved here."""
    if a == b or "" in (a, b):
        return True
    return any(_EVERY_ADDRESS.get(x) == _version(y) for x, y in ((a, b), (b, a)))


def _version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None  # a host name


def _check_athena(s: Settings) -> None:
    """``--athena-workgroup`` and ``--athena-output`` only serve ``--athena-database`` (the DDL
    is applied in Athena only with it): alone, they did nothing, without a word. Athena writes
    the DDL's results to S3 only."""
    if not s.athena_database:
        for name in ("athena_workgroup", "athena_output"):
            if getattr(s, name):
                raise ConfigError(
                    f"{flag_of(name)} needs --athena-database: the DDL is applied in Athena "
                    "only to a named database (or leave both out: the DDL is written to the "
                    "warehouse's _ddl/ folder either way)"
                )
    if s.athena_output and not is_s3_location(s.athena_output):
        raise ConfigError(
            f"--athena-output {preview(s.athena_output)} is not an S3 location; Athena writes "
            "the results of the DDL it runs to S3: use s3://bucket/prefix/ (or leave it out when "
            "the workgroup sets one)"
        )


def user_map(s: Settings) -> dict[str, str]:
    """``--user`` values as ``{name: password}``; ConfigError for a value without a colon."""
    users: dict[str, str] = {}
    for number, value in enumerate(s.users, 1):
        name, sep, password = str(value).partition(":")
        if not sep or not name or not password:
            # Never the value: without its colon it may well be the password alone. Its place
            # instead, so that the operator knows which of several to fix.
            which = f"value {number} of {len(s.users)}" if len(s.users) > 1 else "the value given"
            raise ConfigError(
                f"--user must be NAME:PASSWORD (a name, a colon, a password); {which} is not "
                "(it is not shown: it holds a password)"
            )
        users[name] = password
    return users
