"""``logq``: canned Envoy access-log queries for engineers in an incident.

The same command runs on Amazon Athena (``--engine athena``) and locally with DuckDB over the
warehouse files (``--engine local``, the default). Heavy libraries (pyarrow, duckdb, sqlglot,
pandas, boto3) are imported inside the commands, so ``logq --help`` stays fast.

This module is the table of contents: every command, with the example its ``--help`` shows.
"""

from shipper.startup import deferred_interrupts, interrupted, is_interrupt

# The console script imports this module before main() runs: a Ctrl-C during these imports
# (~0.1 s, typer and click) waits until they are done, then exits 130 with one line.
with deferred_interrupts("logq"):
    import re
    import sys
    from collections.abc import Iterator
    from contextlib import contextmanager, suppress
    from typing import Annotated, Any

    import typer
    from typer.core import TyperGroup

    from cli.commands import access, logs, tables
    from cli.plain_params import install as install_plain_params

# Typer would import pydantic to coerce every option of the command run (~0.15 s).
install_plain_params()


#: An argument that is SQL starting with a ``--`` comment, not an option: an option is
#: ``--name`` or ``--name=value``, and never holds white space before its ``=``.
_SQL_COMMENT_FIRST = re.compile(r"--(?:[^\s=]*\s)", re.ASCII)


def statement_last(args: list[str]) -> list[str]:
    """``args`` with a ``logq sql`` statement that begins with a ``--`` comment moved behind
    ``--``, where click takes it as the statement: otherwise click reads it as an unknown option
    ("No such option: -- pick the slow ones ..."). Options given after it keep working."""
    if not args or args[0] != "sql" or "--" in args:
        return args
    for i in range(1, len(args)):
        if _SQL_COMMENT_FIRST.match(args[i]):
            return [*args[:i], *args[i + 1 :], "--", args[i]]
    return args


class _Commands(TyperGroup):
    """logq's command group: reads a ``logq sql`` statement that starts with a comment, and says
    a usage error in one line (:func:`one_line_usage`)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        with one_line_usage():
            return super().parse_args(ctx, statement_last(list(args)))

    def invoke(self, ctx: typer.Context) -> Any:
        with one_line_usage(ctx):  # a command's own options are parsed here
            return super().invoke(ctx)


#: click's UsageError: typer 0.29 and later raise that of the click copy they ship, others that
#: of click itself; either way it is the base of ``typer.BadParameter``.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@contextmanager
def one_line_usage(group: typer.Context | None = None) -> Iterator[None]:
    """Say a usage error (unknown option, bad value, missing argument) as every other error is
    said, ``logq: error: ...`` in one line, with the help to read, and exit 2 as click does.
    Typer drew a box of five lines or more on stderr, a shape scripts and their logs cannot
    tell from the others. ``logq`` alone (help, no error) is left to click. ``group``: the
    context of ``logq`` itself, which names the command when the error does not (``logq tail
    --limit`` with no value)."""
    try:
        yield
    except _USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # not importable on every click version
            raise
        from cli.errors import plain_reason, shorten

        reason = plain_reason(exc)
        if reason is not None:  # pydantic's words, about the value typer checked with it
            exc.message = reason
        message = shorten(" ".join(exc.format_message().split()).rstrip("."))
        if exc.ctx is not None:
            where = exc.ctx.command_path
        elif group is not None and group.invoked_subcommand:
            where = f"{group.command_path} {group.invoked_subcommand}"
        else:
            where = "logq"
        with suppress(AttributeError, OSError, ValueError):  # stderr closed: still exit 2
            sys.stderr.write(f"logq: error: {message} (see {where} -h)\n")
            sys.stderr.flush()
        raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_Commands,
    name="logq",
    help=(
        "Query container and Envoy access logs in the warehouse (Athena or local DuckDB).\n\n"
        "Example: logq errors --service recipe --since 1h"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from shipper.version import version_text

        typer.echo(version_text("logq"))
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Query container and Envoy access logs in the warehouse (Athena or local DuckDB).

    Example: logq errors --service recipe --since 1h
    """
    from cli.notes import forget_notes

    forget_notes()  # a new invocation notes afresh (tests run many in one process)


COMMANDS = [
    (access.errors, "logq errors --service recipe --since 1h --status 5xx"),
    (
        tables.sql,
        'logq sql "SELECT service, count(*) AS n FROM envoy_access WHERE dt >= '
        "'2024-05-01-00' GROUP BY 1\" --format json",
    ),
    (access.latency, "logq latency --service recipe --since 30m --by upstream"),
    (access.flags, "logq flags --service recipe --since 1h"),
    (access.upstreams, "logq upstreams --service recipe --since 15m"),
    (access.top, "logq top --by client --service recipe --since 1h --limit 20"),
    (access.timeline, "logq timeline --service recipe --since 3h --every 5m"),
    (access.trace, "logq trace 9f1c6a2e-77b1-4c1e-9a7f-1d2b3c4d5e6f --since 1d"),
    (logs.tail, "logq tail --service recipe --stream stderr --grep 'ERROR|panic' -F"),
    (tables.ddl, "logq ddl --warehouse s3://logs-bucket/warehouse > tables.sql"),
    (tables.services, "logq services --format json"),
]


def help_text(doc: str | None) -> str:
    """A docstring as help: paragraphs kept, the line breaks inside them dropped (rich help keeps
    every newline, so a docstring wrapped at 100 columns would break mid-sentence on screen)."""
    import inspect

    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


for command, example in COMMANDS:
    app.command(help=help_text(command.__doc__), epilog=f"Example: {example}")(command)


@app.command(epilog="Example: logq demo")
def demo() -> None:
    """Make a realistic host of containers, ship its logs through a real aggregator, query them."""
    from cli.demo import run_demo

    raise typer.Exit(run_demo())


def main() -> None:
    """Console-script entry point (``logq``): see :func:`_main`. A local query that DuckDB did
    not stop after a Ctrl-C ends the process at once, without Python's finalization
    (:func:`athena.engines.local.exit_now_if_stuck`)."""
    try:
        _main()
    except SystemExit as exc:
        _exit_now_if_engine_stuck(exc.code)
        raise
    _exit_now_if_engine_stuck(0)


def _exit_now_if_engine_stuck(code: object) -> None:
    local = sys.modules.get("athena.engines.local")  # not imported: no local query ran
    if local is not None:  # logq's exits carry a status (typer.Exit), never a message
        local.exit_now_if_stuck(code if isinstance(code, int) else int(code is not None))


def _main() -> None:
    """A Ctrl-C ends with status 130 and one line (``logq: interrupted``), not a traceback:
    inside a command body :func:`cli.errors.friendly` says it; one that typer caught itself
    (before a body's handling, in typer's own code) or one anywhere else (typer building the
    click command, rich imported for the help, the streams' set-up) is said here."""
    try:
        from cli.textio import utf8_streams_and_args

        utf8_streams_and_args()
        app()
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not is_interrupt(exc):
            raise
        raise SystemExit(interrupted("logq")) from None
    except SystemExit as exc:
        # Output into a closed pipe outside a command body (the help, typer's own messages)
        # ends like inside one: quietly, with the same status (see cli.errors).
        from cli.errors import READER_GONE_EXIT, ended_by_closed_pipe, quiet_stdout

        if exc.code == 1 and ended_by_closed_pipe(exc):
            quiet_stdout()
            raise SystemExit(READER_GONE_EXIT) from None
        if exc.code == 130 and _stopped_by_typer(exc):
            raise SystemExit(interrupted("logq")) from None
        raise


def _stopped_by_typer(exc: SystemExit) -> bool:
    """Whether typer ended the program on a Ctrl-C itself (``Exit(130)`` raised from the
    ``KeyboardInterrupt``), silently: one that landed in a command before its body took over
    errors (:func:`cli.errors.friendly`), e.g. while it imported the runner, or in typer's own
    code. It then says ``logq: interrupted`` as everywhere else (friendly raises its exit
    ``from None``, having said it)."""
    stop = exc.__context__
    return isinstance(stop, typer.Exit) and isinstance(stop.__cause__, KeyboardInterrupt)


if __name__ == "__main__":  # pragma: no cover
    main()
