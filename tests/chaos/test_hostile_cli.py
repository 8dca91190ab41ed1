"""Hostile values on every ``logq`` command, through the real CLI as a subprocess.

Two promises are checked for each value:

* a value that cannot be right (an injection attempt where only a service name, an HTTP method,
  a status class or a time fits; absurd ``--since``/``--until``/``--limit``/``--every``; an
  unknown table; a statement that would write; a warehouse that does not exist) ends with a
  non-zero exit code and a clear error -- one ``logq: error: ...`` line of reasonable length,
  for typed options too (click's usage error, exit 2, naming the help to read) -- and never a
  Python traceback;
* a value that is odd but legitimate as *data* (quotes, ``%``, ``_``, backslashes, newlines,
  non-ASCII, 100 KB) is matched literally: the query runs and returns exactly the rows that
  hold that text -- a ``' OR '1'='1`` never returns every row, ``%`` and ``_`` are not
  wildcards.

NUL bytes cannot be passed at all: ``execve`` ends an argument at the first NUL, so no shell
user can send one; ``\\x00`` inside a SQL literal is covered instead.

The warehouse is built once for the module, as ``tests/cli`` builds theirs (the writer's layout,
via ``tests.athena.factory``), with rows whose values contain the characters under test. The
~60 invocations are independent processes and run a few at a time (each costs ~0.4 s).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.athena.factory import access_frame, logs_frame, utc, write_frame
from tests.support.procs import console_script

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

START, END = utc(2026, 11, 27, 22, 30), utc(2026, 11, 28, 1, 30)
SINCE, UNTIL = "2026-11-27T00:00:00Z", "2026-11-29T00:00:00Z"
RANGE = ("--since", SINCE, "--until", UNTIL)
BIG = "x" * 100_000
PARALLEL = 3

#: Values planted in the data: each must be found literally, and only literally.
PATHS = {
    "/api/a_b": 10,
    "/api/axb": 10,
    "/api/100%off": 10,
    "/api/100Xoff": 10,
    "/it's/quoted": 5,
    "/back\\slash": 5,
    "/é漢字🙂": 5,
    "/line\nbreak": 3,
}
REQUEST_IDS = ["req-it's", "req-a%", "req-\\x", "req-é漢字", "' OR '1'='1"]
MESSAGES = ['O\'Reilly said "hi" -- ok', "100% done", "a_b c", "tab\there", "nul \x00 inside"]


@dataclass
class Warehouse:
    uri: str
    access: pd.DataFrame
    logs: pd.DataFrame


@dataclass
class Done:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def rows(self, code: int = 0) -> list[dict[str, Any]]:
        assert self.code == code, f"logq {self.shown()} exited {self.code}:\n{self.stderr[:2000]}"
        assert "Traceback" not in self.stderr, self.stderr[:4000]
        rows = json.loads(self.stdout)
        assert isinstance(rows, list)
        return rows

    def shown(self) -> str:
        return " ".join(a if len(a) < 60 else a[:40] + f"...({len(a)} chars)" for a in self.args)


def build(root: Path) -> Warehouse:
    access = access_frame(600, START, END, ["recipe", "users"], seed=31)
    i = 0
    for path, count in PATHS.items():
        access.loc[i : i + count - 1, "path"] = path
        i += count
    for n, rid in enumerate(REQUEST_IDS):
        access.loc[i + n, "request_id"] = rid
    logs = logs_frame(200, START, END, ["recipe", "users"], seed=32)
    for n, message in enumerate(MESSAGES):
        logs.loc[n * 3, "message"] = message
    uri = str(root / "warehouse")
    write_frame(uri, "envoy_access", access)
    write_frame(uri, "container_logs", logs)
    return Warehouse(uri, access, logs)


# --- the cases ---------------------------------------------------------------------------------


@dataclass
class Refused:
    """A non-zero exit with a clear error matching ``pattern``."""

    pattern: str
    usage: bool = False
    """click's own usage error (a typed option): exit 2, the line names the command's help."""


@dataclass
class Prints:
    """Exit 0 and ``text`` in the output (``ddl``: the hostile value quoted as SQL data)."""

    text: str


@dataclass
class Rows:
    """Exit ``code`` (0, or 3: nothing to ask) and JSON rows passing ``check(rows, warehouse)``."""

    check: Callable[[list[dict[str, Any]], Warehouse], None]
    code: int = 0


def nothing(rows: list[dict[str, Any]], wh: Warehouse) -> None:
    assert rows == [], rows[:3]


def by_path_prefix(prefix: str) -> Callable[[list[dict[str, Any]], Warehouse], None]:
    """``top --by path``: exactly the paths that start with ``prefix`` literally, with counts."""

    def check(rows: list[dict[str, Any]], wh: Warehouse) -> None:
        want = wh.access[wh.access["path"].str.startswith(prefix, na=False)]
        got: dict[str, int] = {}
        for r in rows:  # one row per service and path: summed per path
            got[r["path"]] = got.get(r["path"], 0) + r["requests"]
        assert got == dict(want["path"].value_counts())

    return check


def requests_with_prefix(prefix: str) -> Callable[[list[dict[str, Any]], Warehouse], None]:
    """``latency``: the request count over the rows is that of the literal prefix."""

    def check(rows: list[dict[str, Any]], wh: Warehouse) -> None:
        want = int(wh.access["path"].str.startswith(prefix, na=False).sum())
        assert want > 0 and sum(r["requests"] for r in rows) == want, (prefix, rows)

    return check


def trace_of(rid: str) -> Callable[[list[dict[str, Any]], Warehouse], None]:
    def check(rows: list[dict[str, Any]], wh: Warehouse) -> None:
        want = wh.access[wh.access["request_id"] == rid]
        assert len(want) == 1 and len(rows) == 1, (rid, rows)
        assert rows[0]["path"] == want.iloc[0]["path"]

    return check


def messages_containing(text: str) -> Callable[[list[dict[str, Any]], Warehouse], None]:
    def check(rows: list[dict[str, Any]], wh: Warehouse) -> None:
        want = sorted(m for m in wh.logs["message"] if re.search(re.escape(text), m))
        assert want and sorted(r["message"] for r in rows) == want, (text, rows)

    return check


def one_value(key: str, value: Any) -> Callable[[list[dict[str, Any]], Warehouse], None]:
    def check(rows: list[dict[str, Any]], wh: Warehouse) -> None:
        assert rows == [{key: value}], rows

    return check


def count_of(column: str, value: str) -> Callable[[list[dict[str, Any]], Warehouse], None]:
    def check(rows: list[dict[str, Any]], wh: Warehouse) -> None:
        assert rows == [{"n": int((wh.access[column] == value).sum())}], rows

    return check


NOT_A_SERVICE = r"is not a service name"
NOT_A_TIME = r"is not a time"
INJECT = "' OR 1=1 --"

#: (id, argv after ``logq``, expectation). ``{wh}`` is replaced by the warehouse URI.
CASES: list[tuple[str, list[str], Refused | Rows | Prints]] = [
    # --service: only a stored service name fits; quotes, wildcards, paths are refused.
    ("errors-service-or", ["errors", "-s", INJECT], Refused(NOT_A_SERVICE)),
    ("latency-service-drop", ["latency", "-s", '"; DROP TABLE envoy_access; --'],
     Refused(NOT_A_SERVICE)),
    ("flags-service-backslash", ["flags", "-s", "recipe\\"], Refused(NOT_A_SERVICE)),
    ("upstreams-service-percent", ["upstreams", "-s", "recipe%"], Refused(NOT_A_SERVICE)),
    ("top-service-newline", ["top", "-s", "recipe\nusers"], Refused(NOT_A_SERVICE)),
    # 漢 has no ASCII form: the name is its own hashed folder (recipe-<hash>), none here.
    ("errors-service-unicode", ["errors", "-s", "récipe漢", "-f", "json", *RANGE],
     Rows(nothing, code=3)),
    ("timeline-service-unicode-quote", ["timeline", "-s", "récipe漢'"], Refused(NOT_A_SERVICE)),
    ("trace-service-100kb", ["trace", "req-1", "-s", BIG + "'"], Refused(NOT_A_SERVICE)),
    ("tail-service-dotdot", ["tail", "-s", "../recipe"], Refused(NOT_A_SERVICE)),
    ("services-service-or", ["services", "-s", INJECT], Refused(NOT_A_SERVICE)),
    ("sql-service-or", ["sql", "SELECT 1", "-s", INJECT], Refused(NOT_A_SERVICE)),
    # ... but "_" is a legal character: it must not act as a LIKE wildcard ("re_ipe").
    ("errors-service-underscore", ["errors", "-s", "re_ipe", "-f", "json", *RANGE],
     Rows(nothing, code=3)),
    # --method / --status / --by / --stream / --format / --engine: closed sets.
    ("errors-method-or", ["errors", "--method", "GET" + INJECT], Refused("is not an HTTP method")),
    ("latency-method-unicode", ["latency", "--method", "GËT"], Refused("is not an HTTP method")),
    ("errors-status-or", ["errors", "--status", "5xx" + INJECT], Refused("use 5xx, 4xx")),
    ("errors-status-negative", ["errors", "--status", "-1"], Refused("use 5xx, 4xx")),
    ("top-by-drop", ["top", "--by", "path; DROP TABLE x"], Refused("Invalid value", usage=True)),
    ("latency-by-or", ["latency", "--by", INJECT], Refused("Invalid value", usage=True)),
    ("tail-stream-or", ["tail", "--stream", "stdout" + INJECT],
     Refused("Invalid value", usage=True)),
    ("flags-format-xml", ["flags", "-f", "xml"], Refused("Invalid value", usage=True)),
    ("services-engine-oracle", ["services", "--engine", "oracle"],
     Refused("Invalid value", usage=True)),
    # Absurd times, limits and intervals.
    ("errors-since-negative", ["errors", "--since", "-5h"], Refused(NOT_A_TIME)),
    ("latency-since-nan", ["latency", "--since", "NaN"], Refused(NOT_A_TIME)),
    ("flags-since-exponent", ["flags", "--since", "1e400h"], Refused(NOT_A_TIME)),
    ("upstreams-since-units", ["upstreams", "--since", "5parsecs"], Refused(NOT_A_TIME)),
    ("top-since-huge", ["top", "--since", "99999999999w"], Refused("out of range")),
    ("sql-since-huge", ["sql", "SELECT 1", "--since", "9" * 30 + "h"], Refused("out of range")),
    ("services-since-garbage", ["services", "--since", "yesterday'--"], Refused(NOT_A_TIME)),
    ("trace-until-year-10000", ["trace", "r", "--until", "10000-01-01T00:00:00Z"],
     Refused(NOT_A_TIME)),
    ("tail-since-100kb", ["tail", "--since", BIG], Refused(NOT_A_TIME)),
    ("errors-reversed", ["errors", "--since", UNTIL, "--until", SINCE], Refused("must be before")),
    ("timeline-empty-range", ["timeline", "--since", "1h", "--until", "1h"],
     Refused("must be before")),
    ("errors-limit-negative", ["errors", "--limit", "-1"], Refused("Invalid value", usage=True)),
    ("tail-limit-zero", ["tail", "--limit", "0"], Refused("Invalid value", usage=True)),
    ("top-limit-huge", ["top", "--limit", "9" * 20], Refused("Invalid value", usage=True)),
    ("sql-limit-nan", ["sql", "SELECT 1", "--limit", "NaN"], Refused("Invalid value", usage=True)),
    ("tail-interval-nan", ["tail", "-F", "--interval", "nan"],
     Refused("Invalid value", usage=True)),
    ("errors-max-scan-negative", ["errors", "--max-scan-bytes", "-5"],
     Refused("Invalid value", usage=True)),
    ("timeline-every-zero", ["timeline", "--every", "0s"], Refused("is not an interval")),
    ("timeline-every-nan", ["timeline", "--every", "NaNm"], Refused("is not an interval")),
    ("timeline-every-huge", ["timeline", "--every", "99999999999d"], Refused("out of range")),
    ("tail-grep-bad-regex", ["tail", "--grep", "(unclosed" + INJECT],
     Refused("is not a regular expression")),
    # Unknown tables, statements that would write, several statements.
    ("sql-unknown-table", ["sql", "SELECT * FROM nope"], Refused("unknown table 'nope'")),
    ("sql-drop", ["sql", "DROP VIEW envoy_access"], Refused("runs queries only")),
    ("sql-copy", ["sql", "COPY (SELECT 1) TO '{wh}/pwned.csv'"], Refused("runs queries only")),
    ("sql-two-statements", ["sql", "SELECT 1; DROP VIEW envoy_access"],
     Refused("one SQL statement")),
    # Warehouses that are not there.
    ("errors-no-warehouse", ["errors", "--warehouse", "{wh}/does-not-exist"],
     Refused("does not exist")),
    ("sql-warehouse-is-file", ["sql", "SELECT 1", "--warehouse", "{wh}/../marker"],
     Refused("is a file, not a directory")),
    ("services-no-warehouse", ["services", "--warehouse", "/nonexistent/" + INJECT],
     Refused("does not exist")),
    ("tail-bad-scheme", ["tail", "--warehouse", "ftp://x/" + INJECT],
     Refused("unsupported warehouse scheme")),
    # ddl writes SQL for Athena: hostile locations and names come out quoted, not executed.
    ("ddl-warehouse-quote", ["ddl", "--warehouse", "s3://b/p'; DROP TABLE x; --", "-s", "svc"],
     Prints("LOCATION 's3://b/p\\'; DROP TABLE x; --/envoy_access/'")),  # Hive escape
    ("ddl-database-backtick", ["ddl", "--warehouse", "s3://b/p", "-s", "svc",
     "--athena-database", "x`; DROP TABLE y; --"],
     Prints("`x``; DROP TABLE y; --`.`envoy_access`")),
    ("ddl-service-or", ["ddl", "--warehouse", "s3://b/p", "-s", INJECT],
     Refused("is not a service name")),
    # Odd but legitimate data values: matched literally, nothing injected.
    ("top-path-underscore", ["top", "--path", "/api/a_", "-f", "json", *RANGE],
     Rows(by_path_prefix("/api/a_"))),
    ("top-path-percent", ["top", "--path", "/api/100%", "-f", "json", *RANGE],
     Rows(by_path_prefix("/api/100%"))),
    ("latency-path-quote", ["latency", "--path", "/it's", "-f", "json", *RANGE],
     Rows(requests_with_prefix("/it's"))),
    ("latency-path-backslash", ["latency", "--path", "/back\\", "-f", "json", *RANGE],
     Rows(requests_with_prefix("/back\\"))),
    ("top-path-unicode", ["top", "--path", "/é漢", "-f", "json", *RANGE],
     Rows(by_path_prefix("/é漢"))),
    ("top-path-newline", ["top", "--path", "/line\nb", "-f", "json", *RANGE],
     Rows(by_path_prefix("/line\nb"))),
    ("errors-path-or", ["errors", "--path", INJECT, "-f", "json", *RANGE], Rows(nothing)),
    ("flags-path-drop", ["flags", "--path", "x'); DROP TABLE envoy_access; --", "-f", "json",
     *RANGE], Rows(nothing)),
    ("upstreams-path-100kb", ["upstreams", "--path", BIG, "-f", "json", *RANGE], Rows(nothing)),
    ("timeline-path-or", ["timeline", "--path", INJECT, "-f", "json", *RANGE], Rows(nothing)),
    ("trace-quote", ["trace", "req-it's", "-f", "json", *RANGE], Rows(trace_of("req-it's"))),
    ("trace-or-literal", ["trace", "' OR '1'='1", "-f", "json", *RANGE],
     Rows(trace_of("' OR '1'='1"))),
    ("trace-percent-not-wildcard", ["trace", "req-%", "-f", "json", *RANGE], Rows(nothing)),
    ("trace-backslash", ["trace", "req-\\x", "-f", "json", *RANGE], Rows(trace_of("req-\\x"))),
    ("trace-100kb", ["trace", BIG, "-f", "json", *RANGE], Refused("must be 1-256 characters")),
    ("tail-grep-quote", ["tail", "--grep", "O'Reilly said \"hi\" --", "-f", "json", *RANGE],
     Rows(messages_containing("O'Reilly said \"hi\" --"))),
    ("tail-grep-or", ["tail", "--grep", "' OR '1'='1", "-f", "json", *RANGE], Rows(nothing)),
    ("sql-nul-literal", ["sql", "SELECT count(*) AS n FROM container_logs WHERE message = "
     "'nul ' || chr(0) || ' inside'", "-f", "json", *RANGE], Rows(one_value("n", 1))),
    ("sql-quoted-literal", ["sql", "SELECT count(*) AS n FROM envoy_access WHERE "
     "request_id = 'req-it''s'", "-f", "json", *RANGE], Rows(count_of("request_id", "req-it's"))),
]  # fmt: skip


# --- running them ------------------------------------------------------------------------------


def run_logq(args: list[str], env: dict[str, str]) -> Done:
    done = subprocess.run(
        [str(console_script("logq")), *args],
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    return Done(tuple(args), done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Warehouse, dict[str, Done]]:
    """Build the warehouse, then run every case once, a few processes at a time."""
    root = tmp_path_factory.mktemp("hostile-cli")
    wh = build(root)
    (root / "marker").write_text("a file, not a warehouse")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGQ_", "AWS_"))}
    env |= {"LOGQ_WAREHOUSE": wh.uri, "LOGQ_CACHE_DIR": str(root / "cache"), "COLUMNS": "100"}

    def argv(case: list[str]) -> list[str]:
        return [a.replace("{wh}", wh.uri) for a in case]

    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {cid: pool.submit(run_logq, argv(args), env) for cid, args, _ in CASES}
        return wh, {cid: f.result() for cid, f in futures.items()}


@pytest.mark.parametrize(
    ("cid", "expect"), [(c, e) for c, _, e in CASES], ids=[c for c, *_ in CASES]
)
def test_hostile_value(
    cid: str, expect: Refused | Rows | Prints, hostile_runs: tuple[Warehouse, dict[str, Done]]
) -> None:
    wh, runs = hostile_runs
    done = runs[cid]
    assert "Traceback" not in done.stderr, f"logq {done.shown()}:\n{done.stderr[:4000]}"
    if isinstance(expect, Rows):
        expect.check(done.rows(expect.code), wh)
        return
    if isinstance(expect, Prints):
        assert done.code == 0 and expect.text in done.stdout, (done.code, done.stderr[:2000])
        return
    assert done.code != 0, f"logq {done.shown()} exited 0:\n{done.stdout[:1000]}"
    assert re.search(expect.pattern, done.stderr), f"logq {done.shown()}:\n{done.stderr[:2000]}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("logq: error: "), done.stderr[:2000]
    assert len(lines[0]) <= 500, f"an error line of {len(lines[0])} characters"
    if expect.usage:
        assert done.code == 2 and lines[0].endswith(f"(see logq {done.args[0]} -h)"), lines[0]


def test_refused_statements_changed_nothing(
    hostile_runs: tuple[Warehouse, dict[str, Done]],
) -> None:
    """After DROP / COPY attempts: no file was written and the tables still answer in full."""
    wh, _ = hostile_runs
    assert not (Path(wh.uri) / "pwned.csv").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGQ_", "AWS_"))}
    env["LOGQ_CACHE_DIR"] = str(Path(wh.uri).parent / "cache")
    sql = (
        "SELECT (SELECT count(*) FROM envoy_access) AS a, "
        "(SELECT count(*) FROM container_logs) AS l"
    )
    rows = run_logq(["sql", sql, "-f", "json", "--warehouse", wh.uri, *RANGE], env).rows()
    assert rows == [{"a": len(wh.access), "l": len(wh.logs)}]


def test_every_command_is_covered() -> None:
    """Each ``logq`` command (from ``logq --help``) meets at least three hostile values."""
    from cli.app import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    names.discard("demo")  # takes no values
    used = Counter(args[0] for _, args, _ in CASES)
    assert {n for n in names if used[n] < 3} == set(), used
