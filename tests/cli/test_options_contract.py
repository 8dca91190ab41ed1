"""Options do what their help says: none offered and then ignored, unknown services named,
each command's defaults in its help, and output into a closed pipe ends quietly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.athena.factory import logs_frame, utc, write_frame
from tests.cli.conftest import END, START, Warehouse

RANGE = ["--since", START.isoformat(), "--until", END.isoformat()]
LOGQ = Path(sys.executable).with_name("logq")


@pytest.mark.parametrize(
    "args",
    [
        ["sql", "SELECT count(*) AS n FROM envoy_access"],
        ["trace", "req-00000001"],
        ["tail"],
        ["services"],
    ],
)
@pytest.mark.parametrize("option", [["--path", "/zzz"], ["--method", "POST"]])
def test_request_filters_are_refused_where_they_would_be_ignored(
    logq, warehouse: Warehouse, args: list[str], option: list[str]
) -> None:
    """Before: `logq sql "SELECT count(*) ..." --path /zzz` counted every row."""
    run = logq(*args, *option, "--warehouse", warehouse.uri)
    assert run.exit_code == 2, (args, option, run.stdout)
    assert f"No such option: {option[0]}" in run.stderr
    assert run.stdout == ""


def test_request_filters_still_apply_where_offered(logq, warehouse: Warehouse) -> None:
    every = logq("top", *RANGE, "-f", "json", "--limit", "1000", "--warehouse", warehouse.uri)
    some = logq("top", *RANGE, "-f", "json", "--limit", "1000", "--path", "/api/recipes",
                "--warehouse", warehouse.uri)  # fmt: skip
    assert every.exit_code == 0 and some.exit_code == 0, some.stderr
    assert {r["path"] for r in some.json()} == {"/api/recipes", "/api/recipes/{id}"}
    assert len(every.json()) > len(some.json())


def test_tail_follow_refuses_until(logq, warehouse: Warehouse) -> None:
    """Before: `tail -F --until T` ignored T and printed every line since --since, then
    followed (the initial query stopped at T, the polls did not)."""
    run = logq("tail", "-F", *RANGE, "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and run.stdout == ""
    assert "--until does not go with --follow" in run.stderr


def test_services_dry_run_runs_nothing_locally(logq, warehouse: Warehouse) -> None:
    """Before: --dry-run was accepted by `services` locally and ignored (it ran)."""
    run = logq("services", "--dry-run", "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr
    assert run.stdout.startswith("-- engine: local")
    assert "envoy_access/service=recipe: 4 hours" in run.stdout
    assert all(line.startswith("--") for line in run.stdout.splitlines())


def _recipe_errors(logq, warehouse: Warehouse, service: list[str]) -> object:
    return logq("errors", *service, *RANGE, "-f", "json", "--limit", "1000",
                "--warehouse", warehouse.uri)  # fmt: skip


def test_some_unknown_services_are_named_with_the_known_ones(logq, warehouse: Warehouse) -> None:
    """Before: `--service recipe,recipee` answered for recipe and said nothing of recipee."""
    only = _recipe_errors(logq, warehouse, ["-s", "recipe"])
    for service in (["-s", "recipe,recipee"], ["-s", "recipe", "-s", "recipee"]):
        run = _recipe_errors(logq, warehouse, service)
        assert run.exit_code == 0, run.stderr
        assert run.json() == only.json()
        assert (
            "logq: note: unknown service 'recipee' in envoy_access; known: billing, recipe, "
            "users; showing recipe only"
        ) in run.stderr
    assert "unknown" not in only.stderr


def test_all_unknown_services_stay_a_no_results_reason(logq, warehouse: Warehouse) -> None:
    """Consistent with the single-name case: a reason (exit 3: nothing to ask), not a second
    note."""
    run = _recipe_errors(logq, warehouse, ["-s", "recipee,nope"])
    assert run.exit_code == 3 and run.json() == []
    assert "unknown service 'recipee', 'nope' in envoy_access; known:" in run.stderr
    assert run.stderr.count("unknown service") == 1


def test_sql_names_unknown_services(logq, warehouse: Warehouse) -> None:
    """Before: `logq sql ... --service recipee` printed an empty answer with no hint."""
    query = "SELECT count(*) AS n FROM envoy_access"
    run = logq("sql", query, "-s", "recipee", "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 0 and run.json() == [{"n": 0}]
    assert "unknown service 'recipee' in envoy_access; known: billing, recipe, users" in (
        run.stderr
    )
    run = logq("sql", query, "-s", "recipe,recipee", "-f", "json", "--warehouse", warehouse.uri)
    n = int((warehouse.access["service"] == "recipe").sum())
    assert run.json() == [{"n": n}]
    assert "'recipee' in envoy_access" in run.stderr and "showing recipe only" in run.stderr
    clean = logq("sql", query, "-s", "recipe", "-f", "json", "--warehouse", warehouse.uri)
    assert "unknown" not in clean.stderr


def test_services_names_some_unknown_services(logq, warehouse: Warehouse) -> None:
    run = logq("services", "-s", "recipe,nope", "-f", "json", "--warehouse", warehouse.uri)
    assert [r["service"] for r in run.json()] == ["recipe"]
    assert "unknown service 'nope' in the warehouse; known: billing, recipe, users" in run.stderr


@pytest.mark.parametrize(
    ("cmd", "since", "limit"),
    [
        ("errors", "1h", "50 rows"),
        ("latency", "1h", "50 rows"),
        ("flags", "1h", "50 rows"),
        ("upstreams", "1h", "50 rows"),
        ("top", "1h", "20 rows"),
        ("timeline", "1h", "every interval of the range"),
        ("trace", "1d", "500 rows"),
        ("tail", "15m", "100 rows"),
        ("sql", "every row (no time restriction)", "every row"),
        ("services", "every hour locally (a folder listing), 1d on Athena", "every service"),
    ],
)
def test_help_shows_each_commands_defaults(
    logq, monkeypatch: pytest.MonkeyPatch, cmd: str, since: str, limit: str
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one line per option, so the text can be matched
    lines = logq(cmd, "--help").stdout.splitlines()
    [since_line] = [ln for ln in lines if ln.startswith("│ --since ")]
    [limit_line] = [ln for ln in lines if ln.startswith("│ --limit ")]
    assert f"Default: {since}" in since_line, since_line
    assert f"Default: {limit}." in limit_line, limit_line


def test_help_defaults_are_the_defaults_used(logq, warehouse: Warehouse) -> None:
    """The help's defaults come from where the command uses them: trace reads 1d and 500 rows,
    tail 15m and 100 rows, top 20 rows (seen in the SQL --dry-run prints; tail's real run
    asks for one row more than --limit, to tell a cut from an exact fit, its dry run shows
    the limit asked for)."""
    for cmd, hours, limit in (("trace", 25, 500), ("tail", 2, 100), ("top", 2, 20)):
        args = ["x"] if cmd == "trace" else []
        run = logq(cmd, *args, "--dry-run", "--engine", "athena")
        assert run.exit_code == 0, run.stderr
        assert f"LIMIT {limit}" in run.stdout, (cmd, run.stdout)
        spans = rf"-- partitions \((?:[\d,]+ = )?({hours}|{hours - 1}) hours x"
        assert re.search(spans, run.stdout), (cmd, run.stdout)


def test_tail_help_explains_the_stderr_marker(logq, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    text = logq("tail", "--help").stdout
    assert "has !| instead of |" in text and "stderr" in text


def test_errors_and_follow_help_say_what_they_take_and_print(
    logq, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--status 4xx-5xx` works (and its error offers it), but the help named no range;
    `tail -F -f json` prints JSON Lines where `tail -f json` prints an array, unsaid."""
    monkeypatch.setenv("COLUMNS", "300")
    [status] = [ln for ln in logq("errors", "--help").stdout.splitlines() if "│ --status" in ln]
    assert "4xx-5xx" in status, status
    [follow] = [ln for ln in logq("tail", "--help").stdout.splitlines() if "│ --follow" in ln]
    assert "JSON Lines" in follow, follow


def test_timeline_help_names_every_format_that_prints_rows(
    logq, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-f markdown` prints timeline's rows as json and csv do; the help left it out."""
    monkeypatch.setenv("COLUMNS", "300")
    assert "rows in json/csv/markdown" in logq("timeline", "--help").stdout


@pytest.mark.parametrize("cmd", ["errors", "top"])
def test_request_filter_help_says_an_empty_value_is_refused(
    logq, monkeypatch: pytest.MonkeyPatch, cmd: str
) -> None:
    """`--path ""` and `--method ""` exit 2 (an unset shell variable); the help said so of
    --service only."""
    monkeypatch.setenv("COLUMNS", "300")
    lines = logq(cmd, "--help").stdout.splitlines()
    for option in ("--path", "--method"):
        [line] = [ln for ln in lines if ln.startswith(f"│ {option} ")]
        assert "an empty value is an error" in line, line


def test_sql_help_names_the_limit_note_and_refused_extensions(
    logq, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `logq sql` says when --limit cuts its rows, and that functions of the DuckDB
    extensions it does not load (read_xlsx) are refused: the help named neither. Those of the
    extensions it loads work, and the help must not say they are refused."""
    monkeypatch.setenv("COLUMNS", "300")
    text = " ".join(logq("sql", "--help").stdout.replace("│", " ").split())
    assert "logq: showing the first N rows; the result has more (raise --limit)" in text
    assert (
        "functions of the DuckDB extensions it does not load (read_xlsx, st_point, ...) are "
        "refused too (its JSON and time zone functions work)"
    ) in text


def test_every_service_option_shows_the_same_metavar(logq, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ddl --help` showed `<list[str]>` for --service where the query commands show NAME:
    every command that takes --service shows it alike (the commands are the app's own, so a
    new one is checked too)."""
    import typer

    from cli.app import app

    monkeypatch.setenv("COLUMNS", "300")
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    taking = [n for n, c in commands.items() if any(p.name == "service" for p in c.params)]
    assert "ddl" in taking and "errors" in taking, taking
    for name in taking:
        [line] = [ln for ln in logq(name, "--help").stdout.splitlines() if "│ --service" in ln]
        assert line.split()[1:4] == ["--service", "-s", "NAME"], (name, line)


@pytest.mark.integration
def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`logq tail ... | head -2`: before, "logq: error: [Errno 32] Broken pipe" and exit 1.

    The output (~1 MB, written line by line) is far larger than a pipe holds, so logq is
    still writing when the reader closes its end: the write fails with EPIPE for certain.
    """
    uri = str(tmp_path / "wh")
    start = utc(2026, 11, 28, 0, 0)
    frame = logs_frame(12000, start, start + pd.Timedelta(hours=1), ["svc"], seed=3)
    write_frame(uri, "container_logs", frame)
    proc = subprocess.Popen(
        [str(LOGQ), "tail", "--since", "2026-11-27T23:00:00Z", "--until", "2026-11-28T02:00:00Z",
         "--limit", "12000", "--warehouse", uri],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = [proc.stdout.readline(), proc.stdout.readline()]
    proc.stdout.close()  # what `head -2` does after two lines
    code = proc.wait(timeout=120)
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert all(b"svc" in line for line in first), first
    assert stderr == "", stderr
    assert code == 0  # the reader quit early: no failure (cli/errors.py READER_GONE_EXIT)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["tail", "--bogus"], "No such option: --bogus (see logq tail -h)"),
        (["errors", "--fomat", "json"], "No such option: --fomat (Possible options: --format, "),
        (["top", "--by", "nope"], "Invalid value for '--by': "),
        (["tail", "--limit"], "Option '--limit' requires an argument (see logq tail -h)"),
        (["sql"], "Missing argument 'statement' (see logq sql -h)"),
        (["demo", "--x"], "No such option: --x (see logq demo -h)"),
    ],
)
def test_a_usage_error_is_one_line_as_every_error(args: list[str], line: str) -> None:
    """click's usage errors (an unknown option, a bad value, a missing argument) were a box of
    five lines or more under a usage line; every other error is one ``logq: error:`` line. Now
    they are too, naming the help to read, with click's exit status 2. The real program: the
    prog name ``logq`` comes from the command line."""
    run = subprocess.run(
        [str(LOGQ), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 2 and run.stdout == "", run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"logq: error: {line}"), run.stderr
    assert lines[0].endswith(" -h)"), run.stderr


def test_logq_itself_says_its_usage_errors_in_one_line_and_its_help_whole() -> None:
    """An unknown command or option of ``logq`` itself is one line too; ``logq`` alone, which
    click answers with a usage "error" that is the help, still shows the whole help."""
    for args, line in (
        (["nosuch"], "logq: error: No such command 'nosuch' (see logq -h)"),
        (["--bogus"], "logq: error: No such option: --bogus (see logq -h)"),
    ):
        run = subprocess.run(
            [str(LOGQ), *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert run.returncode == 2 and run.stderr.splitlines() == [line], run.stderr
    alone = subprocess.run([str(LOGQ)], capture_output=True, text=True, timeout=60, check=False)
    assert "Usage: logq [OPTIONS] COMMAND" in alone.stdout + alone.stderr
    assert "logq: error" not in alone.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["errors", "-f", "xml"], "Invalid value for '--format' / '-f': 'xml' is not one of "
         "'table', 'json', 'csv', 'markdown' (see logq errors -h)"),
        (["top", "--by", "nope"], "Invalid value for '--by': 'nope' is not one of 'path', "
         "'user_agent', 'client' (see logq top -h)"),
        (["tail", "--stream", "both"], "Invalid value for '--stream': 'both' is not one of "
         "'stdout', 'stderr' (see logq tail -h)"),
        (["errors", "--limit", "abc"], "Invalid value for '--limit': 'abc' is not a whole "
         "number (see logq errors -h)"),
        (["errors", "--limit", "1.5"], "Invalid value for '--limit': '1.5' is not a whole "
         "number (see logq errors -h)"),
        (["top", "--limit", "0"], "Invalid value for '--limit': '0' is less than the minimum, "
         "1 (see logq top -h)"),
        (["top", "--limit", "9" * 20], f"Invalid value for '--limit': '{'9' * 20}' is more "
         "than the maximum, 10000000 (see logq top -h)"),
        (["tail", "-F", "--interval", "nan"], "Invalid value for '--interval': 'nan' is not "
         "a number (see logq tail -h)"),
        (["tail", "-F", "--interval", "0.1"], "Invalid value for '--interval': '0.1' is less "
         "than the minimum, 0.2 (see logq tail -h)"),
        (["tail", "-F", "--interval", "4000"], "Invalid value for '--interval': '4000' is more "
         "than the maximum, 3600 (see logq tail -h)"),
    ],
)  # fmt: skip
def test_a_bad_option_value_is_said_in_plain_words(logq, args: list[str], line: str) -> None:
    """Typer checks choices and numbers with pydantic, whose words were passed on as they
    came: "Value error, 'xml' is not one of ...", "Input should be a valid integer, unable to
    parse string as an integer" (without the value), and NaN "should be less than or equal to
    3600" (cli/errors.py plain_reason)."""
    run = logq(*args)
    assert run.exit_code == 2 and run.stdout == "", run.stderr
    assert run.stderr.splitlines() == [f"logq: error: {line}"]
