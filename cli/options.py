"""The options every query command shares, declared once.

:func:`query_command` appends them to a command's own parameters (Typer reads the resulting
signature), and hands the command one :class:`Common` value instead of fifteen arguments. This
module must stay light: ``logq --help`` imports it, and the help must start in well under 0.3 s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import typer

from cli.output import OutputFormat

QUERY_PANEL = "Query options"
ENGINE_PANEL = "Engine options"


class EngineName(StrEnum):
    """Values of ``--engine``."""

    local = "local"
    athena = "athena"


def _complete_service(incomplete: str) -> list[str]:
    """Shell completion of ``--service`` from the warehouse's partition folders."""
    try:
        from athena.partitions import list_services
        from athena.warehouse import open_warehouse

        wh = open_warehouse(None)
        names = set(list_services(wh, "envoy_access")) | set(list_services(wh, "container_logs"))
    except Exception:  # completion must never print a traceback into the shell
        return []
    return sorted(n for n in names if n.startswith(incomplete))


@dataclass
class Common:
    """Values of the shared options of one invocation."""

    service: list[str] | None
    since: str | None
    until: str | None
    path: str | None
    method: str | None
    limit: int | None
    fmt: OutputFormat
    engine: EngineName
    warehouse: str | None
    dry_run: bool
    athena_database: str
    athena_workgroup: str | None
    athena_output: str | None
    athena_region: str | None
    max_scan_bytes: int | None


_COMMON: list[tuple[str, Any, Any]] = [
    (
        "service",
        Annotated[
            list[str] | None,
            typer.Option(
                "--service",
                "-s",
                metavar="NAME",
                help="Service to query (repeatable or comma-separated); all services when absent.",
                rich_help_panel=QUERY_PANEL,
                autocompletion=_complete_service,
            ),
        ],
        None,
    ),
    (
        "since",
        Annotated[
            str | None,
            typer.Option(
                help="Start: 15m, 1h, 2d, 1w before now, or ISO-8601 (UTC when no zone).",
                rich_help_panel=QUERY_PANEL,
            ),
        ],
        None,
    ),
    (
        "until",
        Annotated[
            str | None,
            typer.Option(
                help="End (exclusive), same forms; default now.", rich_help_panel=QUERY_PANEL
            ),
        ],
        None,
    ),
    (
        "path",
        Annotated[
            str | None,
            typer.Option(
                help="Only request paths starting with this prefix.", rich_help_panel=QUERY_PANEL
            ),
        ],
        None,
    ),
    (
        "method",
        Annotated[
            str | None,
            typer.Option(
                help="Only this HTTP method (GET, POST, ...).", rich_help_panel=QUERY_PANEL
            ),
        ],
        None,
    ),
    (
        "limit",
        Annotated[
            int | None,
            typer.Option(
                min=1,
                max=10_000_000,
                help="At most this many rows (default depends on the command).",
                rich_help_panel=QUERY_PANEL,
            ),
        ],
        None,
    ),
    (
        "fmt",
        Annotated[
            OutputFormat,
            typer.Option("--format", "-f", help="Output format.", rich_help_panel=QUERY_PANEL),
        ],
        OutputFormat.table,
    ),
    (
        "engine",
        Annotated[
            EngineName,
            typer.Option(
                envvar="LOGQ_ENGINE",
                help="local: DuckDB over the warehouse files; athena: Amazon Athena.",
                rich_help_panel=ENGINE_PANEL,
            ),
        ],
        EngineName.local,
    ),
    (
        "warehouse",
        Annotated[
            str | None,
            typer.Option(
                envvar="LOGQ_WAREHOUSE",
                help="Local directory or s3://bucket/prefix (default ./logq-warehouse).",
                rich_help_panel=ENGINE_PANEL,
            ),
        ],
        None,
    ),
    (
        "dry_run",
        Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Print the final SQL for the engine and the partitions it reads; run nothing.",
                rich_help_panel=ENGINE_PANEL,
            ),
        ],
        False,
    ),
    (
        "athena_database",
        Annotated[
            str,
            typer.Option(
                envvar="LOGQ_ATHENA_DATABASE", help="Athena database.", rich_help_panel=ENGINE_PANEL
            ),
        ],
        "logq",
    ),
    (
        "athena_workgroup",
        Annotated[
            str | None,
            typer.Option(
                envvar="LOGQ_ATHENA_WORKGROUP",
                help="Athena workgroup.",
                rich_help_panel=ENGINE_PANEL,
            ),
        ],
        None,
    ),
    (
        "athena_output",
        Annotated[
            str | None,
            typer.Option(
                envvar="LOGQ_ATHENA_OUTPUT",
                help="s3:// location for Athena results (unless the workgroup sets one).",
                rich_help_panel=ENGINE_PANEL,
            ),
        ],
        None,
    ),
    (
        "athena_region",
        Annotated[
            str | None,
            typer.Option(
                envvar="LOGQ_ATHENA_REGION",
                help="AWS region for Athena (default $AWS_REGION).",
                rich_help_panel=ENGINE_PANEL,
            ),
        ],
        None,
    ),
    (
        "max_scan_bytes",
        Annotated[
            int | None,
            typer.Option(
                envvar="LOGQ_MAX_SCAN_BYTES",
                min=0,
                help="Refuse queries that would scan more than this many bytes.",
                rich_help_panel=ENGINE_PANEL,
            ),
        ],
        None,
    ),
]

COMMON_NAMES = [name for name, _, _ in _COMMON]


def query_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``fn(common: Common, ...)`` the shared options as real CLI parameters."""
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "common"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
        for name, ann, default in _COMMON
    ]
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

    def command(**kwargs: Any) -> Any:
        common = Common(**{name: kwargs.pop(name) for name in COMMON_NAMES})
        return fn(common=common, **kwargs)

    command.__name__ = fn.__name__
    command.__qualname__ = fn.__qualname__
    command.__doc__ = fn.__doc__
    command.__module__ = fn.__module__
    command.__signature__ = sig.replace(parameters=own + shared)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in own + shared}
    return command
