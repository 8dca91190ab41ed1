"""Settings of logq-shipper: command-line flags, an optional TOML file, and their defaults.

Every flag is also a key of the ``--config`` TOML file (dashes or underscores both accepted, e.g.
``max-line-bytes = 262144`` or ``aggregator = ["agg-1:24224", "agg-2:24224"]``; two spellings of
one setting are an error, see :func:`file_keys`), optionally under a ``[shipper]`` table. Flags
given on the command line win over the file, the file wins over the
defaults; this is what operators of Fluent Bit expect when they override one setting for a
debugging run. One file can serve both daemons (:func:`file_keys`): each reads the top-level
keys and its own table, and skips the other's.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import socket
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shipper import wire
from shipper.errors import ConfigError, flag_of, preview, shown_value
from shipper.exclude import split_patterns
from shipper.multiline import parse_mapping
from shipper.version import VersionAction

DEFAULT_PORT = 24224

#: Levels ``--log-level`` (and the ``log_level`` key) accepts.
LOG_LEVELS = ("debug", "info", "warning", "error")

#: A ``--shared-key`` shorter than this is warned about at start (:func:`weak_key_warning`).
STRONG_KEY_CHARS = 16
#: Environment variable holding the passphrase of an encrypted ``--tls-key`` when no
#: ``--tls-key-password`` (flag or config key) gives one: kept out of ``ps``.
TLS_KEY_PASSWORD_ENV = "LOGQ_SHIPPER_TLS_KEY_PASSWORD"
#: Environment variable holding the password of ``--username`` when ``--password`` is not given.
PASSWORD_ENV = "LOGQ_SHIPPER_PASSWORD"


def weak_key_warning(key: str | None) -> str | None:
    """The start-up WARNING for a ``--shared-key`` too short to resist guessing (None: no key,
    or a long enough one), for both programs. Only a warning: Fluentd setups that share the
    key with logq keep working. It gives the key's length, never the key."""
    if key is None or len(key) >= STRONG_KEY_CHARS:
        return None
    return (
        f"--shared-key is only {len(key)} characters long (under {STRONG_KEY_CHARS}): short "
        "keys can be guessed; use a long random one, e.g. the output of `openssl rand -hex 32`, "
        "set alike on every shipper, aggregator and other Forward client"
    )


def join_host_port(host: str, port: int) -> str:
    """``host:port`` as written in a flag or a URL: an IPv6 address in brackets. Both daemons
    print addresses with it (the shipper's aggregators, the aggregator's listeners)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One aggregator address."""

    host: str
    port: int
    server_name: str | None = None
    """The DNS name this address was resolved from (see shipper.resolve): TLS verifies it."""

    def __str__(self) -> str:
        """``host:port`` for logs, errors and metric labels; an IPv6 host in brackets
        (``[::1]:24224``), which :func:`parse_endpoint` reads back."""
        return join_host_port(self.host, self.port)

    @property
    def hash_key(self) -> str:
        """What rendezvous hashing ranks this endpoint by: ``host:port`` without brackets, as
        ``str()`` printed it before IPv6 hosts got them. Never change it: every source would
        rank the aggregators anew, and during a rolling upgrade a source would move to an
        aggregator whose offset dedup has not seen its resent batches."""
        return f"{self.host}:{self.port}"


def parse_endpoint(
    text: str,
    default_port: int | None = DEFAULT_PORT,
    what: str = "aggregator address",
    listen: bool = False,
) -> Endpoint:
    """``host:port``, ``host`` or ``[v6]:port`` into an :class:`Endpoint`; errors name ``what``
    (the flag the address came from).

    An IPv6 address needs its brackets: without them ``::1:24224`` cannot be split (is 24224
    the port or the last group?), and a guess would fail much later as "name or service not
    known". A trailing ``:`` with no port is refused too rather than read as the default port:
    it is usually a variable that expanded to nothing. With ``listen`` (an address to listen
    on), ``:PORT`` gives the host ``""``: every address, IPv4 and IPv6; and port 0 asks the
    kernel for a free port, as the aggregator's ``--listen`` and ``--metrics-listen`` take it
    (the port is told in the ``metrics on`` line). ``default_port`` None: the port is required
    (the aggregator's flags have no default one to fall back on)."""
    text = text.strip()
    if not text:
        raise ConfigError(f"empty {what}; expected HOST:PORT")
    shown_port = DEFAULT_PORT if default_port is None else default_port
    example = f"HOST:PORT, or [::1]:{shown_port} for IPv6"
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad {what} {text!r}; expected {example}")
        sep, port_text = rest[:1], rest[1:]
    elif text.count(":") > 1:
        raise ConfigError(f"bad {what} {text!r}: IPv6 addresses need brackets: [::1]:{shown_port}")
    else:
        host, sep, port_text = text.partition(":")
    if default_port is None and not port_text:
        raise ConfigError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:{shown_port}), got {text!r}")
    if sep and not port_text:
        raise ConfigError(
            f"bad {what} {text!r}: no port after ':'; write {text[:-1] or 'HOST'}:PORT, or "
            f"leave out the ':' for port {default_port}"
        )
    if port_text and not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"bad port in {what} {text!r}; expected {example}")
    port = int(port_text) if port_text else shown_port  # default_port None: port_text given
    least = 0 if listen else 1
    if not least <= port < 65536:
        raise ConfigError(f"bad {what} {text!r}: port {port} is not in {least}-65535")
    if not host and not (listen and sep and not text.startswith("[")):
        raise ConfigError(f"bad {what} {text!r}: no host; expected HOST:PORT")
    return Endpoint(host, port)


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to know, validated."""

    aggregators: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", DEFAULT_PORT),)
    docker_root: Path = Path("/var/lib/docker/containers")
    cri_root: Path = Path("/var/log/pods")
    paths: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    """``--exclude`` globs: sources whose service, container name or path match are not read
    (see :mod:`shipper.exclude`)."""
    multiline: tuple[tuple[str, str], ...] = ()
    """``--multiline GLOB=PARSER``: (service glob, parser) pairs, first match wins; sources
    they select ship each stack trace as one record (see :mod:`shipper.multiline`)."""
    state_dir: Path = Path("/var/lib/logq-shipper")
    shared_key: str | None = None
    username: str | None = None
    password: str | None = None
    once: bool = False
    compress: bool = False
    max_line_bytes: int = 256 * 1024
    metrics_listen: Endpoint | None = None
    tls: bool = False
    tls_ca: Path | None = None
    tls_verify: bool = True
    tls_cert: Path | None = None
    """Client certificate (PEM) for aggregators that require one (``--tls-client-ca``)."""
    tls_key: Path | None = None
    tls_key_password: str | None = None
    """Passphrase of an encrypted ``tls_key`` (or ``$LOGQ_SHIPPER_TLS_KEY_PASSWORD``)."""
    tls_server_name: str | None = None
    """Name the aggregators' certificates are verified against, and sent as SNI, instead of
    each ``--aggregator`` host (Fluent Bit's ``tls.vhost``, Vector's ``tls.server_name``)."""
    hostname: str = field(default_factory=socket.gethostname)
    batch_lines: int = 2048
    batch_bytes: int = 512 * 1024
    max_inflight_bytes: int = 8 * 1024 * 1024
    ack_timeout: float = 30.0
    retry_timeout: float = 30.0
    """In ``--once`` mode: give up after this many seconds without any successful delivery, or
    of a source that cannot be read."""
    poll_interval: float = 0.25
    """How often an idle file is checked for new data and rotation (seconds)."""
    discover_interval: float = 1.0
    """How often the roots are rescanned for new containers and files (seconds); with inotify
    covering every folder, events trigger scans and the full rescan is a safety net run every
    max(this, daemon.FULL_SCAN_SECONDS)."""
    log_level: str = "info"
    config_file: str | None = None
    """The ``--config`` file read, if any: its mode is checked at start
    (:func:`shipper.file_modes.exposed_config`)."""
    given: frozenset[str] = frozenset()
    """Names of the settings given by a flag or the ``--config`` file rather than defaulted
    (``docker_root``...): an explicit root that does not exist is an error, a default one
    is not (see :func:`shipper.discover.check_roots`)."""


_HELP = {
    "aggregator": "aggregator HOST:PORT ([::1]:24224 for IPv6); repeat for failover and load "
    "spreading; a name with several addresses is one aggregator per address "
    "(default: 127.0.0.1:24224)",
    "docker_root": "Docker containers dir holding <id>/<id>-json.log and config.v2.json; "
    "given and missing: an error with --once, else read once it appears (default: "
    "/var/lib/docker/containers, may be missing)",
    "cri_root": "kubelet pod log dir (<namespace>_<pod>_<uid>/<container>/<n>.log), not "
    "/var/log/containers; given and missing: an error with --once, else read once it "
    "appears (default: /var/log/pods, may be missing)",
    "path": "plain-text log files by glob; repeatable (kubelet's /var/log/containers symlinks "
    "are read as the CRI pod logs they point to)",
    "exclude": "do not read sources that match this shell glob (case-sensitive; * also "
    "matches /): matched against the service name, the container name (Docker's name, the ECS "
    "container name, <namespace>/<pod>/<container> on Kubernetes, a --path file's name) and "
    "the log file's path (<docker-root>/<id>/<id>-json.log, /var/log/pods/..., the --path file "
    "or kubelet's /var/log/containers symlink to it); any match excludes; repeatable, and "
    "several patterns may be given separated by commas, as in Fluent Bit's Exclude_Path "
    "('*.gz,*.zip'). Prefer names ('kube-system/*') to symlink paths. Docker containers "
    "labelled logq.exclude=true are excluded too",
    "multiline": "SERVICE_GLOB=PARSER: join the stack traces of the services matching the "
    "glob into one record each, with Fluent Bit's built-in rules; PARSER is java (also C#), "
    "python or go. Repeatable, the first match wins; off by default. A Docker/ECS container "
    "labelled logq.multiline=PARSER (or =none) overrides it",
    "state_dir": "directory for the checkpoint registry (default: /var/lib/logq-shipper)",
    "shared_key": "Forward shared key (HELO/PING/PONG handshake)",
    "username": "user name, for aggregators that also require user authentication",
    "password": "password of --username (or $LOGQ_SHIPPER_PASSWORD, kept out of `ps`)",
    "once": "ship what the files hold now, wait for every ack, exit",
    "config": "TOML file; every flag is a key (optionally under [shipper])",
    "compress": "compress batches (CompressedPackedForward)",
    "max_line_bytes": "lines longer than this are truncated with a marker (default: 262144, "
    "at most 393216)",
    "metrics_listen": "serve Prometheus metrics on HOST:PORT (a HOST alone: port 9110; port "
    "0: a free port, named in the 'metrics on' line on stderr)",
    "tls": "connect to aggregators over TLS",
    "tls_ca": "CA bundle to verify the aggregator's certificate (default: system CAs)",
    "tls_no_verify": "do not verify the aggregator's certificate (testing only)",
    "tls_cert": "client certificate (PEM) for aggregators that require one (mutual TLS)",
    "tls_key": "private key (PEM) of --tls-cert",
    "tls_key_password": "passphrase of an encrypted --tls-key (or "
    "$LOGQ_SHIPPER_TLS_KEY_PASSWORD, kept out of `ps`)",
    "tls_server_name": "name to verify the aggregators' certificates against (and send as "
    "SNI) instead of each --aggregator host: for aggregators addressed by IP or another name "
    "than their certificate's",
    "hostname": "host name put into records (default: this machine's)",
    "batch_lines": "max lines per Forward message (default: 2048; a message closes earlier "
    "at 4 MiB)",
    "batch_bytes": "max characters of log text per Forward message (default: 524288; a message "
    "closes earlier at 4 MiB)",
    "max_inflight_bytes": "stop reading files when this much is waiting for acks "
    "(default: 8388608)",
    "ack_timeout": "seconds to wait for an ack before resending (default: 30, at least 0.1)",
    "retry_timeout": "--once: give up after this many seconds of failed deliveries (or of "
    "a file that cannot be read); on "
    "SIGTERM: the longest wait for in-flight acks (default: 30, at least 0.1)",
    "poll_interval": "seconds between checks of an idle file (default: 0.25, at least 0.01); "
    "a file inotify watches is looked at when it changes (at most this often) and at least "
    "every 2 s",
    "discover_interval": "seconds between scans for new containers and files (default: 1, "
    "at least 0.1); where inotify watches every log folder, changes trigger scans at once and "
    "the full rescan runs every max(this, 10) seconds",
    "log_level": "debug, info, warning or error",
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; every default is None so that the TOML file can fill gaps."""
    p = argparse.ArgumentParser(
        prog="logq-shipper",
        description="Tail container log files and forward them to logq-aggregator "
        "(Fluentd Forward protocol).",
        epilog="exit status: 0 done (--once) or stopped by SIGTERM/SIGINT; 1 a failure at run "
        "time: delivery failed, or logs were skipped (--once: a log folder that could not be "
        "listed, a log file that could not be read, each named in a WARNING), wrong shared key, "
        "checkpoints could not be saved at exit, or the host refused the start (--state-dir "
        "not writable or used by another shipper, --metrics-listen port in use); 2 bad "
        "configuration (also, with --once, a --docker-root or --cri-root given that does not "
        "exist): the command must change",
    )
    a = p.add_argument
    a("--aggregator", action="append", metavar="HOST:PORT", help=_HELP["aggregator"])
    a("--docker-root", metavar="DIR", help=_HELP["docker_root"])
    a("--cri-root", metavar="DIR", help=_HELP["cri_root"])
    a("--path", action="append", metavar="GLOB", help=_HELP["path"])
    a("--exclude", action="append", metavar="PATTERN", help=_HELP["exclude"])
    a("--multiline", action="append", metavar="GLOB=PARSER", help=_HELP["multiline"])
    a("--state-dir", metavar="DIR", help=_HELP["state_dir"])
    a("--shared-key", metavar="KEY", help=_HELP["shared_key"])
    a("--username", metavar="NAME", help=_HELP["username"])
    a("--password", metavar="SECRET", help=_HELP["password"])
    a("--once", action="store_true", default=None, help=_HELP["once"])
    a("--config", metavar="FILE", help=_HELP["config"])
    a("--compress", choices=["none", "gzip"], help=_HELP["compress"])
    a("--max-line-bytes", type=int, metavar="N", help=_HELP["max_line_bytes"])
    a("--metrics-listen", metavar="HOST:PORT", help=_HELP["metrics_listen"])
    a("--tls", action="store_true", default=None, help=_HELP["tls"])
    a("--tls-ca", metavar="FILE", help=_HELP["tls_ca"])
    a("--tls-no-verify", action="store_true", default=None, help=_HELP["tls_no_verify"])
    a("--tls-cert", metavar="FILE", help=_HELP["tls_cert"])
    a("--tls-key", metavar="FILE", help=_HELP["tls_key"])
    a("--tls-key-password", metavar="SECRET", help=_HELP["tls_key_password"])
    a("--tls-server-name", metavar="NAME", help=_HELP["tls_server_name"])
    a("--hostname", help=_HELP["hostname"])
    a("--batch-lines", type=int, metavar="N", help=_HELP["batch_lines"])
    a("--batch-bytes", type=int, metavar="N", help=_HELP["batch_bytes"])
    a("--max-inflight-bytes", type=int, metavar="N", help=_HELP["max_inflight_bytes"])
    a("--ack-timeout", type=float, metavar="SECONDS", help=_HELP["ack_timeout"])
    a("--retry-timeout", type=float, metavar="SECONDS", help=_HELP["retry_timeout"])
    a("--poll-interval", type=float, metavar="SECONDS", help=_HELP["poll_interval"])
    a("--discover-interval", type=float, metavar="SECONDS", help=_HELP["discover_interval"])
    a("--log-level", choices=LOG_LEVELS, help=_HELP["log_level"])
    a("--version", action=VersionAction)
    return p


#: What each setting holds. The ``--config`` file is checked against it: a wrong TOML type would
#: otherwise surface later as a traceback, or be read as something else (``batch_lines = 1.9``
#: as 1, ``compress = 1`` as gzip).
_KINDS: dict[str, str] = {
    "aggregator": "strings",
    "path": "strings",
    "exclude": "strings",
    "multiline": "strings",
    "docker_root": "string",
    "cri_root": "string",
    "state_dir": "string",
    "shared_key": "string",
    "username": "string",
    "password": "string",
    "metrics_listen": "string",
    "tls_ca": "string",
    "tls_cert": "string",
    "tls_key": "string",
    "tls_key_password": "string",
    "tls_server_name": "string",
    "hostname": "string",
    "log_level": "string",
    "compress": "compress",
    "once": "bool",
    "tls": "bool",
    "tls_no_verify": "bool",
    "max_line_bytes": "int",
    "batch_lines": "int",
    "batch_bytes": "int",
    "max_inflight_bytes": "int",
    "ack_timeout": "seconds",
    "retry_timeout": "seconds",
    "poll_interval": "seconds",
    "discover_interval": "seconds",
}

#: The smallest value of each whole-number setting (with 0 lines or bytes nothing is shipped).
MIN_COUNTS = {
    "max_line_bytes": 1024,
    "batch_lines": 1,
    "batch_bytes": 1,
    "max_inflight_bytes": 1,
}

#: The largest ``--max-line-bytes``: one record must fit in a message of
#: :data:`shipper.wire.MAX_MESSAGE_BYTES` (4 MiB), the first of a batch goes whatever its size,
#: and a batch's room is counted as 4 bytes per character of a record's texts (what UTF-8 may
#: take, see :class:`shipper.batch.WireRoom`). A record's log text holds at most this many
#: characters plus a marker, its time and stream texts at most a read block of this plus 4 KiB
#: (one physical line): 8 x 384 KiB + 17 KiB leaves about 1 MB for its source's keys (service,
#: container, host, image...).
MAX_LINE_BYTES = 384 * 1024

#: The smallest value of each seconds setting: below it the shipper spins (a 1 ns poll burns a
#: core) or gives up before any aggregator could answer.
MIN_SECONDS = {
    "ack_timeout": 0.1,
    "retry_timeout": 0.1,
    "poll_interval": 0.01,
    "discover_interval": 0.1,
}

#: What a text setting expects, for the error of an empty one: an empty value is refused (an
#: unset variable in a deployment template; ``--state-dir ""`` silently meant the default).
_EXPECTED = {
    "aggregator": "HOST:PORT",
    "path": "a glob such as /var/log/app/*.log",
    "exclude": "a glob such as 'debug-*' or 'kube-system/*' (or several: 'debug-*,*.gz')",
    "multiline": "SERVICE_GLOB=PARSER such as 'recipe*=java'",
    "docker_root": "a directory",
    "cri_root": "a directory",
    "state_dir": "a directory",
    "shared_key": "the key",
    "username": "a user name",
    "password": "a password (or set $LOGQ_SHIPPER_PASSWORD)",
    "metrics_listen": "HOST:PORT",
    "tls_ca": "a PEM file",
    "tls_cert": "a PEM file",
    "tls_key": "a PEM file",
    "tls_key_password": "the key's passphrase (or set $LOGQ_SHIPPER_TLS_KEY_PASSWORD)",
    "tls_server_name": "a DNS name or IP address the aggregators' certificates list",
    "hostname": "a host name",
    "log_level": f"one of {', '.join(LOG_LEVELS)}",
}


#: The table of each daemon's own keys in a ``--config`` file (``[shipper]``, ``[aggregator]``).
PROGRAM_TABLES = ("shipper", "aggregator")


def file_prefix(path: str, key: str | None = None) -> str:
    """``--config PATH: key 'x': ``, how every error about a ``--config`` file begins (both
    daemons): the operator sees which file, and which key in it, to fix."""
    return f"--config {path}: " + (f"key {key!r}: " if key is not None else "")


#: A UTF-8 byte order mark: Windows editors (Notepad) save one; tomllib refuses it as
#: "Invalid statement (at line 1, column 1)", which says nothing of the invisible cause.
_BOM = b"\xef\xbb\xbf"


def read_config_file(path: str, error: type[Exception]) -> dict[str, Any]:
    """The parsed TOML file ``path`` of ``--config`` (both daemons read it here), else
    ``error`` (the program's ConfigError) led by ``--config PATH:``, whatever the cause: an
    empty path, no such file, a directory, no permission, not UTF-8, bad TOML (a NUL byte
    included). A leading UTF-8 byte order mark is skipped; CRLF line ends are TOML's own."""
    if not path.strip():
        raise error("--config is empty; pass the path of a TOML file or leave --config out")
    where = file_prefix(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{where}no such file; check the path") from None
    except IsADirectoryError:
        raise error(f"{where}is a directory; pass the TOML file in it") from None
    except (OSError, ValueError) as exc:  # no permission; ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise error(f"{where}cannot read it: {reason}") from None
    try:
        text = data.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        # TOML is UTF-8 by definition; a Latin-1 or UTF-16 file fails here.
        raise error(
            f"{where}not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}not valid TOML: {exc}") from None
    except RecursionError:  # tomllib reads nested arrays and tables recursively
        raise error(f"{where}values nested too deeply to read; no setting nests") from None


def close_key(key: str, known: Iterable[str]) -> str:
    """What to say after "unknown key" when ``key`` is near one of ``known`` (the settings'
    names, underscores): keys are case-sensitive (TOML's), so ``Listen`` is not ``listen``, and a
    typo (``flush_intervall``) is worth a suggestion. Both daemons use it; empty when nothing
    is close."""
    names = sorted(known)
    norm = key.replace("-", "_")
    if norm.lower() in names:
        return f" (keys are lower case: write {norm.lower()!r})"
    close = difflib.get_close_matches(norm.lower(), names, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def setting_name(key: str, aliases: dict[str, str]) -> str:
    """The setting a ``--config`` key names: dashes read as underscores, then an alias (a
    program's :data:`FILE_ALIASES`) read as the name it stands for."""
    norm = key.replace("-", "_")
    return aliases.get(norm, norm)


def file_keys(
    raw: dict[str, Any],
    path: str,
    program: str,
    aliases: dict[str, str],
    error: type[Exception],
) -> dict[str, tuple[str, Any]]:
    """The keys of a parsed ``--config`` file that ``program`` (``shipper`` or ``aggregator``)
    reads, by setting name (:func:`setting_name` of a key as written, with the program's
    ``aliases``), each with the key as written and its value: the top-level keys,
    overridden by those of its own ``[program]`` table, without the other daemon's table. So
    one file configures both daemons, with the keys both take (such as ``shared_key``) at the
    top. Only a table is a program's: in the shipper, ``aggregator = ["a:24224"]`` is its own
    setting, ``[aggregator]`` the aggregator's table.

    Two spellings of one setting in one table (``flush_interval`` and ``flush-interval``,
    ``path`` and ``paths``) are an ``error``: the last one silently won, and the operator who
    edited the first saw no effect. A key of the program's table over a top-level one is the
    documented override, not a clash."""
    for key, value in raw.items():
        if isinstance(value, dict) and key not in PROGRAM_TABLES:
            raise error(_foreign_table(path, key))
    top = {k: v for k, v in raw.items() if not (k in PROGRAM_TABLES and isinstance(v, dict))}
    named = _by_setting(top, path, aliases, error)
    own = raw.get(program)
    if isinstance(own, dict):
        named.update(_by_setting(own, path, aliases, error))
    return named


def _foreign_table(path: str, key: str) -> str:
    """The error for a table no program reads: no setting is a table, so ``[aggregater]`` or
    ``[Shipper]`` is a misspelt program table, whose settings would all go unread. It was said
    as an unknown key, with the list of keys (the shipper added "a logq-aggregator key goes
    under [aggregator]"), which left the table's name as the thing to look for."""
    close = difflib.get_close_matches(key.lower(), PROGRAM_TABLES, n=1, cutoff=0.6)
    hint = f" (did you mean [{close[0]}]?)" if close else ""
    return (
        f"{file_prefix(path, key)}a table [{key}] that neither program reads{hint}; the "
        "tables are [aggregator] and [shipper] (lower case), every other setting goes at the "
        "top of the file"
    )


def _by_setting(
    table: dict[str, Any], path: str, aliases: dict[str, str], error: type[Exception]
) -> dict[str, tuple[str, Any]]:
    """One table's keys by setting name; an ``error`` for two spellings of one setting."""
    out: dict[str, tuple[str, Any]] = {}
    for key, value in table.items():
        name = setting_name(key, aliases)
        if name in out:
            first = out[name][0]
            raise error(
                f"{file_prefix(path, key)}the same setting as key {first!r} ({name}); "
                "keep one of them"
            )
        out[name] = (key, value)
    return out


def blame_file(message: str, path: str, keys: dict[str, str]) -> str:
    """``message``, a value refused once flags and file are merged (it names the setting as its
    flag, ``--flush-interval``), led by ``--config PATH: key 'x':`` when one of ``keys`` (the
    settings whose value came from that file, not from a flag, each with the key as the file
    spells it) is the one it names: else the operator looks for a flag never given. Both
    daemons use it."""
    if message.startswith("--config "):
        return message
    for name, written in keys.items():
        pattern = re.escape(name.replace("_", "-"))
        if re.search(rf"(?<![\w-])(?:--)?{pattern}(?![\w-])", message):
            return file_prefix(path, written) + message
    return message


#: Other spellings a shipper ``--config`` file accepts for a setting (besides dashes for
#: underscores); docs/operations.md lists them.
FILE_ALIASES = {"aggregators": "aggregator", "paths": "path"}


def file_setting_names() -> frozenset[str]:
    """The settings a shipper ``--config`` file takes, as field names (``state_dir``) and
    aliases: the aggregator names them when one is given to it."""
    return frozenset(set(_HELP) - {"config"} | set(FILE_ALIASES))


_AGGREGATOR_KEY_HINT = " (a logq-aggregator key goes under [aggregator])"


def _load_toml(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The checked settings of the ``--config`` file ``path``, and each one's key as the file
    spells it (for :func:`blame_file`)."""
    raw = read_config_file(path, ConfigError)
    known = set(_HELP) - {"config"}
    out: dict[str, Any] = {}
    written: dict[str, str] = {}
    for norm, (key, value) in file_keys(raw, path, "shipper", FILE_ALIASES, ConfigError).items():
        if norm not in known:
            raise ConfigError(
                f"{file_prefix(path, key)}unknown key"
                f"{close_key(key, known | set(FILE_ALIASES)) or _AGGREGATOR_KEY_HINT}; "
                f"the shipper's keys: {', '.join(sorted(known))}"
            )
        _check_type(path, key, _KINDS[norm], value)
        if norm in ("aggregator", "path", "exclude", "multiline") and isinstance(value, str):
            value = [value]
        if norm == "multiline":
            for text in value:  # checked here, where the message can name the file and key
                parse_mapping(text, f"{file_prefix(path, key)}{key} =")
        out[norm], written[norm] = value, key
    return out, written


def _check_type(path: str, key: str, kind: str, value: Any) -> None:
    """Refuse a TOML value of the wrong type, naming the key, the value and what to write."""
    if kind == "strings":
        ok = isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
        want = f'a string or a list of strings in quotes, e.g. {key} = ["a", "b"]'
    elif kind == "string":
        ok = isinstance(value, str)
        want = f'a string in quotes, e.g. {key} = "..."'
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = f"a whole number without quotes or decimal point, e.g. {key} = 1024"
    elif kind == "seconds":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        want = f"a number of seconds without quotes, e.g. {key} = 0.5"
    elif kind == "bool":
        # Checked here, where the error names the file: a flag given on the command line as
        # well would otherwise let the file's wrong value pass unseen.
        ok = isinstance(value, bool)
        want = f"true or false (a TOML boolean, no quotes), e.g. {key} = true"
    else:  # compress: a TOML boolean or one of the flag's choices (1 == True in Python)
        ok = isinstance(value, bool) or (isinstance(value, str) and value in ("none", "gzip"))
        want = f"'none' or 'gzip' in quotes (or true / false), e.g. {key} = \"gzip\""
    texts = value if isinstance(value, list) else [value]
    if ok and kind in ("strings", "string") and any("\x00" in v for v in texts):
        # A TOML "\u0000" would reach os.mkdir & co. as a ValueError traceback.
        ok, want = False, "text without NUL characters (no path or name holds one)"
    if not ok:
        raise ConfigError(f"{file_prefix(path, key)}must be {want}; got {shown_value(key, value)}")


#: The largest whole-number setting (bytes, lines, entries, connections) of either daemon: 1 TiB
#: is past any sane size, and a value past 2**63 (``--batch-lines 9223372036854775808``) failed
#: later, in C code, as "Python int too large to convert to C ssize_t": a shipper's source
#: retried for ever, an aggregator closed every connection.
MAX_COUNT = 2**40


def at_least(
    flag: str,
    value: Any,
    least: float,
    error: type[Exception],
    *,
    seconds: bool = False,
    above: bool = False,
) -> Any:
    """``value``, checked to be at least ``least`` (more than it with ``above``), else
    ``error`` (the program's ConfigError) naming ``flag`` as the command line spells it
    (``--batch-lines must be at least 1; got 0``): the one range check of both daemons'
    numeric settings. A value from the ``--config`` file is blamed on its key afterwards, by
    :func:`blame_file`. ``seconds``: a finite number, returned as a float (``nan`` compares
    false with everything, so a plain ``> 0`` check let it through: an ack timeout of nan gave
    up at once; a TOML integer past any float is refused, not an OverflowError). A whole
    number is at most :data:`MAX_COUNT`."""
    number = value
    if seconds:
        try:
            number = float(value)
        except OverflowError:  # a TOML integer past any float
            number = math.inf
    finite = not seconds or math.isfinite(number)
    if not seconds and number > MAX_COUNT:
        raise error(f"{flag} must be at most {MAX_COUNT:,}; got {preview(value)}")
    if finite and (number > least if above else number >= least):
        return number
    shown = f"{least:g}" if isinstance(least, float) else str(least)
    bound = f"more than {shown}" if above else f"at least {shown}"
    kind = "a finite number of seconds, " if seconds else ""
    raise error(f"{flag} must be {kind}{bound}; got {preview(value)}")


def load_config(argv: list[str] | None = None) -> Config:
    """Parse flags (and the ``--config`` file they name) into a validated :class:`Config`."""
    args = vars(build_parser().parse_args(argv))
    merged: dict[str, Any] = {}
    written: dict[str, str] = {}
    if args.get("config") is not None:
        merged, written = _load_toml(args["config"])
    from_file = {k: key for k, key in written.items() if args.get(k) is None}
    merged.update({k: v for k, v in args.items() if v is not None and k != "config"})
    try:
        return replace(_to_config(merged), config_file=args.get("config"))
    except ConfigError as exc:  # a file's value out of range: say where it was written
        raise ConfigError(blame_file(str(exc), args["config"], from_file)) from None


def _refuse_empty(m: dict[str, Any]) -> None:
    for key, expected in _EXPECTED.items():
        values = m.get(key)
        if values is None:
            continue
        if key == "aggregator" and not values:
            raise ConfigError("aggregator = [] lists no aggregator; list one or leave it out")
        for value in values if isinstance(values, list) else [values]:
            if not value.strip():
                raise ConfigError(
                    f"{flag_of(key)} is empty (an unset variable?); pass {expected} or leave it out"
                )


#: What ``--tls-server-name`` may hold: a DNS name or an IP address (IPv6 without brackets).
_SERVER_NAME = re.compile(r"[A-Za-z0-9._:-]{1,253}")


def _server_name(value: str) -> str:
    name = value.strip()
    if not _SERVER_NAME.fullmatch(name):
        raise ConfigError(
            f"--tls-server-name must be a DNS name or an IP address (no port, no scheme), "
            f"got {preview(value)}"
        )
    return name


def _exclude_patterns(values: list[str]) -> tuple[str, ...]:
    """Every ``--exclude`` value split on commas, as Fluent Bit's ``Exclude_Path`` is
    (:func:`~shipper.exclude.split_patterns`); an empty item is refused as an empty value is:
    ``"$A,$B"`` with ``B`` unset must not leave the operator believing it is kept out."""
    out: list[str] = []
    for value in values:
        items = split_patterns(value)
        if not all(items):
            raise ConfigError(
                f"--exclude {value!r} holds an empty pattern (a comma too many, or an unset "
                "variable?); list globs separated by commas, such as '*.gz,*.zip'"
            )
        out += items
    return tuple(out)


def _to_config(m: dict[str, Any]) -> Config:
    _refuse_empty(m)
    kw: dict[str, Any] = {"given": frozenset(k for k, v in m.items() if v is not None)}
    if m.get("aggregator"):
        kw["aggregators"] = tuple(parse_endpoint(a) for a in m["aggregator"])
    for key in ("docker_root", "cri_root", "state_dir"):
        if m.get(key):
            kw[key] = Path(m[key])
    if m.get("path"):
        kw["paths"] = tuple(m["path"])
    if m.get("exclude"):
        kw["excludes"] = _exclude_patterns(m["exclude"])
    if m.get("multiline"):
        kw["multiline"] = tuple(parse_mapping(v) for v in m["multiline"])
    if m.get("shared_key"):
        kw["shared_key"] = m["shared_key"]
    password = m.get("password") or os.environ.get(PASSWORD_ENV)
    if m.get("username"):
        if not m.get("shared_key"):
            raise ConfigError("--username needs --shared-key: user auth is part of the handshake")
        if not password:
            raise ConfigError(f"--username needs --password or ${PASSWORD_ENV}")
        kw["username"] = _utf8("--username", m["username"])
        kw["password"] = _utf8("--password" if m.get("password") else f"${PASSWORD_ENV}", password)
    elif m.get("password"):
        raise ConfigError("--password needs --username")
    # Booleans and compress hold what the flag's choices or _check_type let through (TOML
    # ``once = "false"``, ``compress = 1`` refused there, naming the key).
    kw["once"] = m.get("once", False)
    compress = m.get("compress", "none")
    kw["compress"] = compress if isinstance(compress, bool) else compress == "gzip"
    if m.get("metrics_listen"):
        kw["metrics_listen"] = parse_endpoint(
            m["metrics_listen"], default_port=9110, what="--metrics-listen address", listen=True
        )
    kw["tls"] = m.get("tls", False)
    no_verify = m.get("tls_no_verify", False)
    tls_only = [
        key for key in ("tls_ca", "tls_cert", "tls_key", "tls_server_name") if m.get(key)
    ] + (["tls_no_verify"] if no_verify else [])
    if not kw["tls"] and tls_only:
        # Without --tls these would be ignored and the logs would go out as plain text.
        flag = flag_of(tls_only[0])
        raise ConfigError(f"{flag} needs --tls; without it logs would be sent unencrypted")
    if bool(m.get("tls_cert")) != bool(m.get("tls_key")):
        raise ConfigError("a client certificate needs both --tls-cert and --tls-key")
    for key in ("tls_ca", "tls_cert", "tls_key"):
        if m.get(key):
            path = Path(m[key])
            if not path.is_file():
                raise ConfigError(f"{flag_of(key)} {path} is not a readable file")
            kw[key] = path
    key_password = m.get("tls_key_password") or os.environ.get(TLS_KEY_PASSWORD_ENV)
    if m.get("tls_key_password") and not m.get("tls_key"):
        raise ConfigError("--tls-key-password needs --tls-cert and --tls-key: it opens the key")
    if key_password and m.get("tls_key"):
        kw["tls_key_password"] = key_password
    if m.get("tls_server_name"):
        kw["tls_server_name"] = _server_name(m["tls_server_name"])
    kw["tls_verify"] = not no_verify
    if m.get("hostname"):
        kw["hostname"] = _hostname(m["hostname"])
    for key, least in MIN_COUNTS.items():
        if key in m:
            kw[key] = at_least(flag_of(key), m[key], least, ConfigError)
    if kw.get("max_line_bytes", 0) > MAX_LINE_BYTES:
        raise ConfigError(
            f"--max-line-bytes must be at most {MAX_LINE_BYTES} (384 KiB): one line must fit in "
            "a Forward message of 4 MiB, the most every logq-aggregator takes, counting 4 bytes "
            f"per character; got {kw['max_line_bytes']}"
        )
    for key, least_seconds in MIN_SECONDS.items():
        if key in m:
            kw[key] = at_least(flag_of(key), m[key], least_seconds, ConfigError, seconds=True)
    if m.get("log_level"):
        level = m["log_level"].strip().lower()
        if level not in LOG_LEVELS:
            raise ConfigError(
                f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {preview(m['log_level'])}"
            )
        kw["log_level"] = level
    return Config(**kw)


def _utf8(what: str, value: str) -> str:
    """``value`` of ``what`` (a flag or variable), refused when it holds bytes that are no
    UTF-8 (argv and the environment arrive with them as lone surrogates): it goes on the wire
    as msgpack text, where encoding it failed with an internal error (``UnicodeEncodeError``),
    at every attempt."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"{what} holds bytes that are not UTF-8 (character {exc.start + 1}); give it as "
            "UTF-8 text"
        ) from None
    return value


def _hostname(name: str) -> str:
    """``--hostname``, refused past :data:`~shipper.wire.MAX_KEY_BYTES`: every record carries
    it, and one that passes a message is refused by every aggregator and resent forever."""
    size = len(_utf8("--hostname", name).encode("utf-8"))
    if size > wire.MAX_KEY_BYTES:
        raise ConfigError(
            f"--hostname must be at most {wire.MAX_KEY_BYTES} bytes: every record carries it "
            f"(a host name has at most 253 characters); got {size} bytes"
        )
    return name


def config_keys() -> list[str]:
    """Names of the Config fields (documentation and tests)."""
    return [f.name for f in fields(Config)]
