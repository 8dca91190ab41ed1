"""The ``logq-aggregator`` command line as argparse reads it: serve's flags, the serve and
``drain`` parsers, and which command a command line runs (:func:`parse_command_line`).

:mod:`aggregator.launch` parses the command line with this module first, before it imports
anything heavy: ``--help``, ``--version`` and a bad flag are answered in a few tens of
milliseconds, not after the half second of importing pyarrow, the server and the AWS SDK. It
imports the standard library and light modules only (:mod:`aggregator.flag_values`,
:mod:`aggregator.compaction.arguments`, :mod:`shipper.version`, :mod:`shipper.wire_limits`):
tests/aggregator/test_arguments.py checks that none of the heavy ones comes along. What the
values mean together (``--config``, ranges) is :mod:`aggregator.config`'s.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NamedTuple

from aggregator.compaction.arguments import parse_compact_args
from aggregator.flag_values import BUFFER_COMPRESSIONS, DEFAULT_LISTEN, TLS_KEY_PASSWORD_ENV
from shipper.version import VersionAction
from shipper.wire_limits import MAX_MESSAGE_ENTRIES

_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--listen", {"help": f"HOST:PORT of the Forward server (default {DEFAULT_LISTEN})"}),
    (
        "--warehouse",
        {"help": "local dir or s3://bucket/prefix ($LOGQ_WAREHOUSE, ./logq-warehouse)"},
    ),
    ("--buffer-dir", {"help": "directory of the durable buffer (default ./logq-buffer)"}),
    ("--flush-interval", {"type": float, "help": "seconds between flushes (default 10)"}),
    ("--shared-key", {"help": "require the Forward shared-key handshake with this key"}),
    (
        "--user",
        {
            "action": "append",
            "dest": "users",
            "metavar": "NAME:PASSWORD",
            "help": "also require this user in the handshake (repeatable; better in --config)",
        },
    ),
    ("--metrics-listen", {"help": "HOST:PORT for Prometheus /metrics and /healthz"}),
    (
        "--unhealthy-after",
        {"type": float, "help": "/healthz says 503 after flushes failed this long (300 s)"},
    ),
    (
        "--retry-max-interval",
        {"type": float, "help": "longest wait between retries of a failing flush (60 s)"},
    ),
    (
        "--max-frame-bytes",
        {"type": int, "help": "largest Forward message (default 32 MiB, at least 4 MiB)"},
    ),
    ("--buffer-limit-bytes", {"type": int, "help": "buffer size that withholds acks (1 GiB)"}),
    (
        "--segment-bytes",
        {
            "type": int,
            "help": "seal a buffer segment at this size (64 MiB); a flush writes one object per "
            "partition and segment",
        },
    ),
    (
        "--buffer-compression",
        {"choices": BUFFER_COMPRESSIONS, "help": "buffer frames: none, lz4 (default) or zstd"},
    ),
    ("--target-file-bytes", {"type": int, "help": "compacted file size (default 128 MiB)"}),
    (
        "--compact-interval",
        {
            "type": float,
            "help": "compact every N s (default 0: off); safe on every aggregator: the live one "
            "with the smallest node id compacts",
        },
    ),
    (
        "--max-message-entries",
        {"type": int, "help": f"entries in one Forward message (default {MAX_MESSAGE_ENTRIES:,})"},
    ),
    ("--max-connections", {"type": int, "help": "concurrent connections (default 1024)"}),
    (
        "--max-inflight-bytes",
        {
            "type": int,
            "help": "bytes of messages read and not yet durable, all connections together; "
            "past it reading waits (default 256 MiB)",
        },
    ),
    ("--idle-timeout", {"type": float, "help": "close silent connections after (600 s)"}),
    (
        "--stop-timeout",
        {
            "type": float,
            "help": "a stop (SIGTERM) ends within this many seconds, exit 1 if the warehouse "
            "did not take the buffer by then (default 90; keep it below the SIGKILL deadline)",
        },
    ),
    ("--tls-cert", {"help": "PEM certificate: serve Forward over TLS"}),
    ("--tls-key", {"help": "PEM private key of --tls-cert"}),
    (
        "--tls-key-password",
        {
            "metavar": "SECRET",
            "help": f"passphrase of an encrypted --tls-key (or ${TLS_KEY_PASSWORD_ENV}, kept "
            "out of `ps`)",
        },
    ),
    (
        "--allow-network",
        {
            "action": "append",
            "metavar": "CIDR",
            "help": "take Forward connections only from this address or network, e.g. "
            "10.0.0.0/8 (repeatable; default: from every address)",
        },
    ),
    (
        "--tls-client-ca",
        {
            "metavar": "FILE",
            "help": "PEM CA bundle: require every client to present a certificate it signed "
            "(mutual TLS; needs --tls-cert)",
        },
    ),
    ("--athena-database", {"help": "apply the DDL to this Athena database"}),
    ("--athena-workgroup", {"help": "Athena workgroup for the DDL queries"}),
    ("--athena-output", {"help": "s3:// location for Athena query results"}),
    (
        "--envoy-format",
        {
            "action": "append",
            "dest": "envoy_formats",
            "metavar": "FORMAT",
            "help": "Envoy access-log format string, tried before the built-in ones (repeatable)",
        },
    ),
    ("--node-id", {"help": "object key prefix of this instance (default: persisted random id)"}),
    ("--log-level", {"help": "debug, info, warning or error (default info)"}),
]


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """Add every serve flag with a default of None (so config-file values can fill the gaps)."""
    parser.add_argument(
        "--config", help="TOML file whose keys are these flags (optionally under [aggregator])"
    )
    for flag, kwargs in _FLAGS:
        parser.add_argument(flag, default=None, **kwargs)
    parser.add_argument("--version", action=VersionAction)


#: The exit statuses, as serve's and ``drain``'s ``--help`` end
#: (:data:`aggregator.commands.EXIT_USAGE`, :data:`~aggregator.commands.EXIT_FAILED`).
EPILOG = (
    "exit status: 0 stopped (SIGTERM/SIGINT) with every acknowledged record in the warehouse "
    "(drain: the buffer written out); 1 a failure at run time, named in one line with what to "
    "do (a port in use, a DNS failure to retry, a --buffer-dir or --warehouse folder that "
    "cannot be written, a full disk, a stop that ran out of --stop-timeout with data left in "
    "the buffer); 2 a usage error: a bad flag or --config value, a --listen or "
    "--metrics-listen host name that does not exist, or a --buffer-dir copied from a running "
    "aggregator's"
)


def serve_parser() -> argparse.ArgumentParser:
    """The parser of ``logq-aggregator [flags]`` (serve)."""
    parser = argparse.ArgumentParser(
        prog="logq-aggregator",
        description="Forward protocol server: buffers durably, writes partitioned Parquet. "
        "Subcommands: 'logq-aggregator compact --help', 'logq-aggregator drain --help'.",
        epilog=EPILOG,
    )
    add_serve_flags(parser)
    return parser


def drain_parser() -> argparse.ArgumentParser:
    """The parser of ``logq-aggregator drain [flags]``: serve's flags, its own words."""
    parser = argparse.ArgumentParser(
        prog="logq-aggregator drain",
        description="Write out the buffer of an aggregator that is gone for good (its "
        "--buffer-dir re-attached here), skipping lines other aggregators already stored, "
        "then exit. Takes the aggregator's flags and --config; no port is opened.",
        epilog=EPILOG,
    )
    add_serve_flags(parser)
    return parser


class Command(NamedTuple):
    """A parsed command line: the command to run and its arguments."""

    name: str
    """``serve``, ``drain`` or ``compact``."""
    args: argparse.Namespace
    """What its parser made of the arguments (serve's and ``drain``'s: :func:`add_serve_flags`;
    ``compact``'s: :func:`aggregator.compaction.arguments.parse_compact_args`)."""


def parse_command_line(argv: list[str] | None = None) -> Command:
    """The command ``argv`` (default: ``sys.argv[1:]``) runs: ``compact ...``, ``drain ...``,
    else serve. ``--help`` and ``--version`` print and exit 0, a usage error exits 2 (argparse's
    message), as the parsers always did."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compact":
        return Command("compact", parse_compact_args(argv[1:]))
    if argv and argv[0] == "drain":
        return Command("drain", drain_parser().parse_args(argv[1:]))
    return Command("serve", serve_parser().parse_args(argv))
