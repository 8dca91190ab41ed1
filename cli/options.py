"""The options every query command shares, declared once.

:func:`query_command` appends them to a command's own parameters (Typer reads the resulting
signature), and hands the command one :class:`Common` value instead of fifteen arguments. This
module must stay light: ``logq --help`` imports it, and the help must start in well under 0.3 s.
"""

from __future__ import annotations

import copy
import inspect
import typing
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


def _complete_service(incomplete: str, ctx: typer.Context = None) -> list[str]:
    """Shell completion of ``--service`` from the partition folders of the warehouse that
    ``--warehouse`` names on the same command line (else LOGQ_WAREHOUSE, else the default).

    Typer passes ``ctx`` by its annotation (a ``Context | None`` union would not be seen)."""
    try:
        from athena.partitions import list_services
        from athena.stray_folders import unnoted
        from athena.warehouse import open_warehouse

        given = (ctx.params or {}).get("warehouse") if ctx is not None else None
        wh = open_warehouse(given if isinstance(given, str) and given else None)
        with unnoted():  # a note would land amid the command line being typed
            names = {s for t in ("envoy_access", "container_logs") for s in list_services(wh, t)}
    except Exception:  # completion must never print a traceback into the shell
        return []
    return sorted(n for n in names if n.startswith(incomplete))


def service_option(help: str, **more: Any) -> Any:
    """``--service``/``-s`` as every command that takes it declares it: the metavar ``NAME``
    (a ``list[str]`` option otherwise shows ``<list[str]>`` in its help) and completion from
    the warehouse's services. ``more``: other ``typer.Option`` settings (a help panel)."""
    return typer.Option(
        "--service", "-s", metavar="NAME", help=help, autocompletion=_complete_service, **more
    )


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
    default_since: str = "1h"
    """``--since`` when not given (the command's own default, also shown in its help)."""
    default_limit: int = 50
    """``--limit`` when not given, for queries that LIMIT in SQL."""


_COMMON: list[tuple[str, Any, Any]] = [
    (
        "service",
        Annotated[
            list[str] | None,
            service_option(
                "Service to query (repeatable or comma-separated); all services when "
                "absent (an empty value is an error).",
                rich_help_panel=QUERY_PANEL,
            ),
        ],
        None,
    ),
    (
        "since",
        Annotated[
            str | None,
            typer.Option(
                help="Start: 30s, 15m, 1h, 2d, 1w, 1h30m before now (1M is refused: 30d or 1m), or "
                "ISO-8601 (UTC when no zone); "
                "when absent, the default span ends at --until.",
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
                help="End (exclusive), same forms; default now.",
                rich_help_panel=QUERY_PANEL,
            ),
        ],
        None,
    ),
    (
        "path",
        Annotated[
            str | None,
            typer.Option(
                help="Only request paths starting with this prefix; a route as printed, with "
                "{id} for its ids (/api/v1/items/{id}), takes that route and those under it "
                "(/api/v1/items/{id}/lines); an empty value is an error.",
                rich_help_panel=QUERY_PANEL,
            ),
        ],
        None,
    ),
    (
        "method",
        Annotated[
            str | None,
            typer.Option(
                help="Only this HTTP method (GET, POST, ...); an empty value is an error.",
                rich_help_panel=QUERY_PANEL,
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
                help="At most this many rows.",
                rich_help_panel=QUERY_PANEL,
            ),
        ],
        None,
    ),
    (
        "fmt",
        Annotated[
            OutputFormat,
            typer.Option(
                "--format",
                "-f",
                help="Output format.",
                case_sensitive=False,
                rich_help_panel=QUERY_PANEL,
            ),
        ],
        OutputFormat.table,
    ),
    (
        "engine",
        Annotated[
            EngineName,
            typer.Option(
                envvar="LOGQ_ENGINE",
                case_sensitive=False,
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

#: Appended to every query command's help (a paragraph of its own).
EXIT_STATUS = (
    "\n\n    Exit status: 0 with an answer, also an empty one; 3 (local engine) when there is "
    "nothing to ask (no --service has data in the table, being unknown or having only the "
    "other table's logs, or the warehouse has no data of the table: the "
    "answer is empty and the reason is printed), and on Athena when the answer is empty and "
    "no --service is in the table's service list (a note says how to add them); "
    "2 for bad input (a query over --max-scan-bytes too: retried, it scans as much); 1 for "
    "engine or storage failures. A reader that stops early (| head) is "
    "no failure: 0."
)

COMMON_NAMES = [name for name, _, _ in _COMMON]

#: Shared options that filter requests (envoy_access rows) and so mean nothing to commands that
#: do not filter requests by path and method: ``trace``, ``tail``, ``sql``, ``services``.
REQUEST_FILTERS = ("path", "method")


def _with_default(annotation: Any, text: str) -> Any:
    """``annotation`` (``Annotated[T, typer.Option(...)]``) with "Default: <text>." after its
    help, so each command's --help shows its own default of a shared option."""
    base, info = typing.get_args(annotation)
    info = copy.copy(info)
    info.help = f"{info.help} Default: {text}."
    return Annotated[base, info]


def query_command(
    fn: Callable[..., Any] | None = None,
    *,
    without: tuple[str, ...] = (),
    since: str = "1h",
    limit: int = 50,
    since_text: str | None = None,
    limit_text: str | None = None,
) -> Any:
    """Give ``fn(common: Common, ...)`` the shared options as real CLI parameters.

    ``without`` names shared options the command has no use for (``path``, ``method`` on
    commands that do not read request paths): they are left out of its parameters and help, so
    click refuses them as unknown instead of the command silently ignoring them, and
    :class:`Common` carries their defaults. ``since`` and ``limit`` are the command's defaults
    (``Common.default_since``/``default_limit``), written once here so ``--help`` shows what the
    command does; ``since_text``/``limit_text`` say it in words where the default is not a
    value (``sql`` reads every row). Use as ``@query_command`` or ``@query_command(...)``.
    """
    unknown = set(without) - set(COMMON_NAMES)
    if unknown:
        raise ValueError(f"not shared options: {sorted(unknown)}")
    if fn is None:
        return lambda f: query_command(
            f,
            without=without,
            since=since,
            limit=limit,
            since_text=since_text,
            limit_text=limit_text,
        )
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "common"]
    shown = {"since": since_text or since, "limit": limit_text or f"{limit:,} rows"}
    shared = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=_with_default(ann, shown[name]) if name in shown else ann,
        )
        for name, ann, default in _COMMON
        if name not in without
    ]
    fixed = {name: default for name, _, default in _COMMON if name in without}
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

    def command(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in COMMON_NAMES if name not in fixed}
        common = Common(**values, **fixed, default_since=since, default_limit=limit)
        return fn(common=common, **kwargs)

    command.__name__ = fn.__name__
    command.__qualname__ = fn.__qualname__
    command.__doc__ = (fn.__doc__ or "").rstrip() + EXIT_STATUS
    command.__module__ = fn.__module__
    command.__signature__ = sig.replace(parameters=own + shared)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in own + shared}
    return command
