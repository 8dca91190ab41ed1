"""Local queries over files of two schema versions: older files lack columns added since.

The local engine reads files against the first file's columns (cheap) and falls back to DuckDB's
``union_by_name`` when the files differ. These tests mix an old-schema file (without
``upstream_host``, which ``logq upstreams`` reads, and ``x_forwarded_for``, which no canned query
reads) with current files, first in the engine's file order (the view cannot be bound) and
later (DuckDB fails mid-scan), and check every answer against the frame the files were written
from, the missing columns NULL.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

import athena.engines.local as local_mod
from athena.engines.local import LocalEngine
from tests.athena.factory import access_frame, utc, write_frame

START, END = utc(2026, 11, 28, 10, 0), utc(2026, 11, 28, 13, 0)
RANGE = ["--since", "2026-11-28T00:00:00Z", "--until", "2026-11-29T00:00:00Z"]
DROPPED = ("upstream_host", "x_forwarded_for")


def mixed_warehouse(root: Path, old: str) -> tuple[str, pd.DataFrame]:
    """A warehouse of two services over three hours, one file of it rewritten as an older schema
    version would have written it. ``old``: ``bound``, the file the engine puts first (newest
    hour, first service: binding the view fails), or ``scanned``, one of the oldest hour (the
    scan fails). Returns its URI and the truth: the rows, the dropped columns NULL in that file."""
    uri = str(root / "wh")
    frame = access_frame(600, START, END, ["a", "b"], seed=11)
    files = sorted(write_frame(uri, "envoy_access", frame, files_per_partition=2))
    hour = [f.split("dt=")[1].split("/")[0] for f in files]
    newest, oldest = max(hour), min(hour)
    if old == "bound":
        target = next(f for f, h in zip(files, hour, strict=True) if h == newest)
    else:
        target = [f for f, h in zip(files, hour, strict=True) if h == oldest][-1]
    current = pq.read_table(target)
    pq.write_table(current.drop_columns(list(DROPPED)), target, compression="zstd")
    truth = frame.copy()
    in_old = truth["request_id"].isin(current.column("request_id").to_pylist())
    assert 0 < in_old.sum() < len(truth)
    for column in DROPPED:
        truth[column] = truth[column].astype(object).where(~in_old, None)
    return uri, truth


def _none(value: Any) -> Any:
    return None if pd.isna(value) else value


@pytest.mark.parametrize("old", ["bound", "scanned"])
def test_logq_sql_reads_missing_columns_as_null(logq, tmp_path: Path, old: str) -> None:
    uri, truth = mixed_warehouse(tmp_path, old)
    sql = (
        "SELECT request_id, upstream_host, x_forwarded_for, response_code, service "
        "FROM envoy_access ORDER BY request_id"
    )
    run = logq("sql", sql, *RANGE, "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    got = [tuple(r.values()) for r in run.json()]
    want = truth.sort_values("request_id")
    assert got == [
        (r.request_id, _none(r.upstream_host), _none(r.x_forwarded_for), r.response_code, r.service)
        for r in want.itertuples()
    ]


@pytest.mark.parametrize("old", ["bound", "scanned"])
def test_select_star_keeps_every_column_of_the_table(logq, tmp_path: Path, old: str) -> None:
    """With the old file first, DuckDB would take its columns as the table's: the view names
    every column, so ``SELECT *`` still shows the ones the old file lacks."""
    uri, truth = mixed_warehouse(tmp_path, old)
    run = logq("sql", "SELECT * FROM envoy_access", *RANGE, "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    rows = run.json()
    assert list(rows[0]) == [*local_mod.full_schema("envoy_access").names]
    assert len(rows) == len(truth)
    assert sum(r["upstream_host"] is None for r in rows) == truth["upstream_host"].isna().sum()


@pytest.mark.parametrize("old", ["bound", "scanned"])
def test_canned_queries_over_mixed_files(logq, tmp_path: Path, old: str) -> None:
    """``upstreams`` reads the missing column (its rows count under '-'), ``errors`` does not."""
    uri, truth = mixed_warehouse(tmp_path, old)
    run = logq("upstreams", *RANGE, "--limit", "100", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    want = Counter(_none(v) or "-" for v in truth["upstream_host"])
    assert {r["upstream_host"]: r["requests"] for r in run.json()} == dict(want)

    run = logq("errors", *RANGE, "--limit", "1000", "-f", "json", "--raw-paths", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    errors = truth[truth["response_code"] >= 500]
    keys = zip(errors["service"], errors["path"], errors["response_code"],
               errors["response_flags"], strict=True)  # fmt: skip
    want = Counter(keys)
    got = {(r["service"], r["path"], r["response_code"], r["response_flags"]): r["count"]
           for r in run.json()}  # fmt: skip
    assert got == dict(want)


def test_limit_over_mixed_files_returns_the_first_rows(logq, tmp_path: Path) -> None:
    """``--limit`` streams; a mismatch found mid-stream runs again before anything is printed."""
    uri, truth = mixed_warehouse(tmp_path, "scanned")
    sql = "SELECT request_id, upstream_host FROM envoy_access ORDER BY request_id"
    run = logq("sql", sql, *RANGE, "--limit", "5", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    want = truth.sort_values("request_id").head(5)
    assert run.json() == [
        {"request_id": r.request_id, "upstream_host": _none(r.upstream_host)}
        for r in want.itertuples()
    ]


@pytest.mark.parametrize("old", ["bound", "scanned"])
def test_union_by_name_only_for_tables_that_mix_schemas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str
) -> None:
    """Uniform files are read without ``union_by_name`` (one run); mixed ones get it, once,
    unless the query reads no column the old file lacks and that file is not the first."""
    calls: list[tuple[str, bool]] = []
    original = LocalEngine._register

    def spy(self: LocalEngine, con: Any, table: str, parts: Any, rows: Any = None, **kw: Any):
        calls.append((table, kw.get("by_name", False)))
        return original(self, con, table, parts, rows, **kw)

    monkeypatch.setattr(LocalEngine, "_register", spy)
    uri, truth = mixed_warehouse(tmp_path, old)
    engine = LocalEngine(uri)
    scopes = {"envoy_access": engine.plan("envoy_access", None, None)}
    sql = "SELECT count(*) AS n, count(upstream_host) AS up FROM envoy_access"
    res = engine.run(sql, {}, scopes)
    assert res.rows == [(len(truth), truth["upstream_host"].notna().sum())]
    assert calls == [("envoy_access", False), ("envoy_access", True)]

    calls.clear()
    res = engine.run("SELECT count(*) AS n, count(user_agent) AS ua FROM envoy_access", {}, scopes)
    assert res.rows == [(len(truth), truth["user_agent"].notna().sum())]
    cheap = [("envoy_access", False)]
    assert calls == (cheap if old == "scanned" else [*cheap, ("envoy_access", True)])

    calls.clear()
    uniform = str(tmp_path / "uniform")
    write_frame(uniform, "envoy_access", truth, files_per_partition=2)
    engine = LocalEngine(uniform)
    res = engine.run(sql, {}, {"envoy_access": engine.plan("envoy_access", None, None)})
    assert res.rows[0][0] == len(truth)
    assert calls == [("envoy_access", False)]


def test_many_files_warn_but_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, truth = mixed_warehouse(tmp_path, "bound")
    engine = LocalEngine(uri)
    scopes = {"envoy_access": engine.plan("envoy_access", None, None)}
    files = sum(len(p.files) for p in scopes["envoy_access"])
    monkeypatch.setattr(local_mod, "MANY_FILES", files - 1)
    res = engine.run("SELECT count(*) AS n FROM envoy_access", {}, scopes)
    assert res.rows == [(len(truth),)]
    err = capsys.readouterr().err
    assert f"reads {files:,} Parquet files" in err and "--service" in err and "--since" in err
    monkeypatch.setattr(local_mod, "MANY_FILES", files)
    engine.run("SELECT count(*) AS n FROM envoy_access", {}, scopes)
    assert capsys.readouterr().err == ""
