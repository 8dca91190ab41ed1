"""The ``logq-aggregator`` command line: serve, ``compact`` and ``drain``.

``logq-aggregator [flags]`` serves; ``logq-aggregator compact [flags]`` compacts closed hours once
and exits; ``logq-aggregator drain --buffer-dir DIR`` writes out the buffer of an aggregator that
is gone for good (its disk re-attached elsewhere) and exits. Serving is
:class:`aggregator.service.Aggregator`; the console script enters through
:mod:`aggregator.launch` (the command line parsed first, then allocator settings). The parsers
are :mod:`aggregator.arguments`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aggregator import logs
from aggregator.arguments import Command, parse_command_line
from aggregator.buffer import BufferDirInUse
from aggregator.config import (
    ConfigError,
    Settings,
    blame_warehouse,
    load_settings,
)
from aggregator.decode import tune_gc
from aggregator.envoy import FormatError
from aggregator.listen import UnresolvableHost
from aggregator.memory import tune_memory
from aggregator.open_files import check_open_files_limit, quiet_accept_errors
from aggregator.service import Aggregator
from aggregator.state_files import NODE_ID_NAME
from aggregator.tls_files import CertificateError
from aggregator.twins import TwinRunning
from athena.warehouse import WarehouseError
from shipper.file_modes import exposed_config
from shipper.metric_bounds import MAX_METRICS_CONNECTIONS
from shipper.startup import run_held

#: Exit status of a usage error: the command must change (a bad flag, a ``--config`` value, an
#: ``--envoy-format`` or ``--warehouse`` that cannot be, TLS files that are no PEM pair, a
#: ``--listen`` or ``--metrics-listen`` host name that does not exist, a ``--buffer-dir`` copied
#: from a running aggregator's). A service manager need not retry it.
EXIT_USAGE = 2
#: Exit status of a failure at run time: the command may be right, the host or the network
#: refused (a port in use, a host name DNS could not resolve for now, a folder not writable, a
#: full disk, a buffer dir locked by another process); a retry may succeed once that is fixed.
EXIT_FAILED = 1
#: The errors that are usage errors (:data:`EXIT_USAGE`); any other is :data:`EXIT_FAILED`.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    WarehouseError,
    FormatError,
    CertificateError,
    TwinRunning,
    UnresolvableHost,
)


def serve(args: argparse.Namespace, drain: bool = False) -> int:
    """Serve (or ``drain``) with the parsed flags ``args``
    (:func:`aggregator.arguments.serve_parser`): the exit status."""
    if drain and not (args.buffer_dir or args.config):
        print(
            "logq-aggregator drain: pass --buffer-dir DIR (the buffer to write out)",
            file=sys.stderr,
        )
        return 2
    settings: Settings | None = None
    try:
        settings = load_settings(args)
        # exists(), not is_file(): a node-id that is a FIFO or a folder is said to be one
        # when the buffer opens (aggregator/state_files.py), not "no node-id file".
        if drain and not (Path(settings.buffer_dir) / NODE_ID_NAME).exists():
            raise ConfigError(
                f"drain: {settings.buffer_dir} is not a logq-aggregator buffer directory (no "
                "node-id file); pass the --buffer-dir of the aggregator to write out"
            )
        logs.setup(settings.log_level)
        if exposed := exposed_config(args.config):
            logging.getLogger("logq.aggregator").warning("%s", exposed)
        quiet_accept_errors()
        check_open_files_limit(0 if drain else settings.max_connections, MAX_METRICS_CONNECTIONS)
        aggregator = Aggregator(settings)
    except (*USAGE_ERRORS, OSError) as exc:
        print(f"logq-aggregator: {blame_warehouse(exc, args, settings)}", file=sys.stderr)
        return exit_status(exc)
    tune_gc()
    tune_memory()
    try:
        return run_held(aggregator.drain if drain else aggregator.run)
    except (OSError, ValueError) as exc:
        held = drain and isinstance(exc, BufferDirInUse)
        text = held_text(aggregator.settings.buffer_dir) if held else exc
        print(f"logq-aggregator: {text}", file=sys.stderr)
        return exit_status(exc)


def held_text(buffer_dir: str) -> str:
    """What ``drain`` says of a buffer dir another process holds: "give each instance its own
    buffer directory", serve's advice, is wrong there (the drain was pointed at that buffer on
    purpose). It is most likely the aggregator of that buffer, still running or stopping."""
    return (
        f"drain: --buffer-dir {buffer_dir} is held by a running logq-aggregator "
        "(or one still stopping); drain writes out the buffer of an aggregator that is gone: a "
        "running one writes its own (SIGTERM stops it once everything acknowledged is in the "
        "warehouse), so stop it, then drain this directory only if it still holds segments"
    )


def exit_status(exc: Exception) -> int:
    """:data:`EXIT_USAGE` for a usage error (:data:`USAGE_ERRORS`), else :data:`EXIT_FAILED`:
    serve exited 2 for every error, and a port in use or a full disk read as a bad command."""
    return EXIT_USAGE if isinstance(exc, USAGE_ERRORS) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``) names: the exit status."""
    return run(parse_command_line(argv))


def run(command: Command) -> int:
    """Run a parsed command line (:func:`aggregator.arguments.parse_command_line`, which
    :mod:`aggregator.launch` calls before it imports this module): the exit status."""
    if command.name == "compact":
        from aggregator.compaction.command import compact

        return compact(command.args)
    return serve(command.args, drain=command.name == "drain")


if __name__ == "__main__":
    sys.exit(main())
