"""Large results stream: ``logq sql -f json|csv|markdown`` writes rows as the engine hands them
over, the table shows at most :data:`cli.output.TABLE_MAX_ROWS` rows and says so.

Memory is checked deterministically, by the rows the local engine has turned into Python values
when the output writes: with a small window and batch (patched in-process), the first byte must
go out after one window, not after the whole result (before, ``SELECT *`` held every row several
times over: 1.85 GiB for 500,000 rows, 20 GB for 6 million). The subprocess tests use the real
sizes: a closed pipe, Ctrl-C and a damaged file while rows are being written.

The table's cap is patched down the same way (:data:`CAP` rows, the real one is 1,000): Rich
takes ~2 ms a row of ``SELECT *``, so each table of 1,000 rows cost ~2 CPU-s; its boundaries
(below, at and past the cap) are the same with 50 rows. The real value is checked against the
README and ``logq sql --help``, which promise it.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

import athena.engines.local as local_mod
import cli.output as output_mod
from athena.engines.local import LocalEngine
from athena.engines.result import STREAM_BATCH_ROWS, STREAM_WINDOW_ROWS
from cli.output import TABLE_MAX_ROWS, OutputFormat, emit, to_csv, to_json, to_markdown
from tests.athena.factory import access_frame, utc, write_frame

LOGQ = Path(sys.executable).with_name("logq")
START, END = utc(2026, 11, 28, 10, 0), utc(2026, 11, 28, 13, 0)
ROWS = 6_000
#: The window and batch of the in-process tests (the real ones: 10,000 and 5,000 rows).
WINDOW, BATCH = 1_000, 500
#: The table's cap in the in-process tests: well below the window, as the real one (1,000) is
#: below the real window (10,000).
CAP = 50
EVERY_ROW = "SELECT * FROM envoy_access ORDER BY request_id"


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> str:
    """6,000 envoy_access rows over three hours and two services (12 files)."""
    uri = str(tmp_path_factory.mktemp("stream") / "wh")
    frame = access_frame(ROWS, START, END, ["a", "b"], seed=21)
    write_frame(uri, "envoy_access", frame, files_per_partition=2)
    return uri


@pytest.fixture
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "STREAM_WINDOW_ROWS", WINDOW)
    monkeypatch.setattr(local_mod, "STREAM_BATCH_ROWS", BATCH)


@pytest.fixture
def small_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table shows :data:`CAP` rows (``cli.runner.sql_fetch`` reads the cap at each call)."""
    monkeypatch.setattr(output_mod, "TABLE_MAX_ROWS", CAP)


def _squeezed(text: str) -> str:
    return " ".join(text.split())


def test_the_real_table_cap_is_the_one_the_docs_promise() -> None:
    """The tests below patch the cap; this is the value the README and the help give."""
    from cli.commands.tables import sql

    assert TABLE_MAX_ROWS == 1_000
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"so it shows at most {TABLE_MAX_ROWS:,} rows" in _squeezed(readme)
    assert f"the table shows at most the first {TABLE_MAX_ROWS:,}" in _squeezed(sql.__doc__ or "")


class Fetched:
    """Rows the local engine turned into Python values, and how many there were at each write
    to stdout: what the output held at most is what was converted by then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        self.at_writes: list[int] = []
        real_rows, real_write = local_mod._python_rows, output_mod.write_all

        def python_rows(table: Any) -> list[tuple[Any, ...]]:
            rows = real_rows(table)
            self.rows += len(rows)
            return rows

        def write_all(out: Any, text: str, *row_end: Any) -> None:
            if text:
                self.at_writes.append(self.rows)
            real_write(out, text, *row_end)

        monkeypatch.setattr(local_mod, "_python_rows", python_rows)
        monkeypatch.setattr(output_mod, "write_all", write_all)


def _whole(uri: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The answer as the engine gives it unstreamed: the truth for the bytes written."""
    result = LocalEngine(uri).run(sql, {})
    return result.columns, result.rows


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown"])
def test_rows_are_written_as_they_are_fetched(
    logq: Callable[..., Any], big: str, small_window: None, monkeypatch, fmt: str
) -> None:
    """The first byte goes out after one window of rows; each later batch is written before the
    next is fetched. The text is byte for byte what the whole result gives."""
    fetched = Fetched(monkeypatch)
    run = logq("sql", EVERY_ROW, "-f", fmt, "--warehouse", big)
    assert run.exit_code == 0, run.stderr
    assert fetched.rows == ROWS
    assert fetched.at_writes[0] <= WINDOW + BATCH  # before: every row (6,000)
    steps = sorted(set(fetched.at_writes))
    assert len(steps) >= (ROWS - WINDOW - BATCH) // BATCH  # a write after each batch
    assert all(b - a <= BATCH for a, b in itertools.pairwise(steps))
    columns, rows = _whole(big, EVERY_ROW)
    render = {"json": to_json, "csv": to_csv, "markdown": to_markdown}[fmt]
    assert run.stdout == render(columns, rows) + ("\n" if fmt == "json" else "")


def test_a_limit_stops_the_stream(logq, big: str, small_window: None, monkeypatch) -> None:
    """The stream stops one row past --limit: that row is not written, but says the limit cut
    the answer (before, `logq sql --limit` cut silently while the other commands said so)."""
    fetched = Fetched(monkeypatch)
    run = logq("sql", EVERY_ROW, "-f", "json", "--limit", "2345", "--warehouse", big)
    rows = run.json()
    assert run.exit_code == 0 and len(rows) == 2345
    assert [r["request_id"] for r in rows] == [f"req-{i:08d}" for i in range(2345)]
    assert fetched.rows == 2346
    assert run.stderr == "logq: showing the first 2,345 rows; the result has more (raise --limit)\n"


def test_a_whole_decimal_past_bigint_in_a_streamed_batch(
    logq, big: str, small_window: None
) -> None:
    """A batch after the first window whose whole-decimal column holds a value past bigint (the
    last row here) is converted as a whole result is: kept whole, where the window's values
    fit a bigint. The cast to a 64-bit integer failed the stream after its first rows."""
    sql = (
        "SELECT request_id, CASE WHEN request_id = (SELECT max(request_id) FROM envoy_access) "
        "THEN CAST('99999999999999999999' AS DECIMAL(38,0)) ELSE 1 END AS d "
        "FROM envoy_access ORDER BY request_id"
    )
    run = logq("sql", sql, "-f", "json", "--warehouse", big)
    assert run.exit_code == 0, run.stderr
    values = [row["d"] for row in run.json()]
    assert values == [1] * (ROWS - 1) + [10**20 - 1]


#: The streamed formats' limits: in the first window, in a streamed batch, at a batch's end, or
#: cutting nothing (every row or more); past the table's cap, which they do not have.
STREAM_LIMITS = [5, WINDOW, WINDOW + BATCH, ROWS - 1, ROWS, ROWS + 1]
#: The table's: below, at and one past its cap, and past it while cutting rows or not.
TABLE_LIMITS = [5, CAP - 1, CAP, CAP + 1, WINDOW + BATCH, ROWS - 1, ROWS, ROWS + 1]


@pytest.mark.parametrize(
    ("fmt", "limit"),
    [(fmt, limit) for fmt in ("json", "csv", "markdown") for limit in STREAM_LIMITS]
    + [("table", limit) for limit in TABLE_LIMITS],
)
def test_a_limit_that_cuts_the_answer_says_so(
    logq, big: str, small_window: None, small_table: None, fmt: str, limit: int
) -> None:
    """Whether the limit cuts the answer in the first window, in a streamed batch, at a batch's
    end, or not at all, and wherever it falls against the table's cap: the note comes exactly
    when rows were left out, and says what left them out."""
    run = logq("sql", EVERY_ROW, "-f", fmt, "--limit", str(limit), "--warehouse", big)
    assert run.exit_code == 0, run.stderr
    shown = min(limit, ROWS, CAP if fmt == "table" else ROWS)
    assert f"req-{shown - 1:08d}" in run.stdout and f"req-{shown:08d}" not in run.stdout
    if fmt == "table" and limit > CAP:
        assert f"showing the first {CAP:,} rows: a table" in run.stderr
    elif limit < ROWS:
        note = f"logq: showing the first {limit:,} rows; the result has more (raise --limit)"
        assert run.stderr == note + "\n"
    else:
        assert run.stderr == ""


def test_the_table_shows_the_first_rows_and_says_how_to_get_all(
    logq, big: str, small_window: None, small_table: None, monkeypatch
) -> None:
    """Before, the table rendered every row: 100,000 rows took 2 GiB and 8 minutes."""
    fetched = Fetched(monkeypatch)
    run = logq("sql", EVERY_ROW, "--limit", "5000", "--warehouse", big)
    assert run.exit_code == 0, run.stderr
    shown = [f"req-{i:08d}" for i in range(ROWS) if f"req-{i:08d}" in run.stdout]
    assert shown == [f"req-{i:08d}" for i in range(CAP)]
    assert f"showing the first {CAP} rows" in run.stderr
    assert "--limit" in run.stderr and "-f csv" in run.stderr
    assert fetched.rows <= WINDOW + BATCH  # the rest was never fetched


def test_the_table_fetches_one_row_past_its_cap_and_reads_no_footer(
    logq, big: str, small_window: None, small_table: None, monkeypatch
) -> None:
    """The table (the default format) never streams: it fetches one row more than it shows,
    to know that rows were left out. Streaming it read every file's footer first (7 s over
    9,600 files) and fetched a whole window, to show 1,000 rows (R5s20)."""
    fetched = Fetched(monkeypatch)
    footers: list[str] = []
    real = LocalEngine._uniform

    def uniform(self: LocalEngine, files: list[str]) -> bool:
        footers.extend(files)
        return real(self, files)

    monkeypatch.setattr(LocalEngine, "_uniform", uniform)
    run = logq("sql", EVERY_ROW, "--warehouse", big)
    assert run.exit_code == 0, run.stderr
    assert f"showing the first {CAP:,} rows" in run.stderr
    assert f"req-{CAP - 1:08d}" in run.stdout
    assert f"req-{CAP:08d}" not in run.stdout
    assert footers == []  # before: the 12 files' footers
    assert fetched.rows == CAP + 1  # before: a window and a batch (1,500)


def test_a_result_that_fits_the_table_has_no_note(logq, big: str, small_table: None) -> None:
    every = f"SELECT * FROM envoy_access ORDER BY request_id LIMIT {CAP}"
    run = logq("sql", every, "--limit", str(CAP), "--warehouse", big)
    assert run.exit_code == 0 and run.stderr == ""
    assert f"req-{CAP - 1:08d}" in run.stdout


def test_the_table_fetches_no_batch_past_its_rows() -> None:
    pulled: list[int] = []

    def more():
        for k in range(5):
            pulled.append(k)
            yield [(f"r{k}-{i}", i) for i in range(300)]

    first = [("first", i) for i in range(TABLE_MAX_ROWS - 100)]
    out = Recorder()
    written = emit(OutputFormat.table, ["name", "n"], first, out=out, more=more())
    assert written == (TABLE_MAX_ROWS, False) and pulled == [0]
    assert "r0-99 " in out.getvalue() and "r0-100 " not in out.getvalue()


class Recorder:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return "".join(self.parts)


def test_mixed_schemas_are_settled_before_the_first_row(logq, tmp_path: Path, monkeypatch) -> None:
    """An old-schema file (no ``upstream_host``), last in the engine's order of 60 files: without
    reading the footers first, DuckDB met it mid-stream, after rows had gone out, too late to
    read the table ``union_by_name``, and the answer failed ("schema mismatch in glob")."""
    monkeypatch.setattr(local_mod, "STREAM_WINDOW_ROWS", 200)
    monkeypatch.setattr(local_mod, "STREAM_BATCH_ROWS", 100)
    uri = str(tmp_path / "wh")
    frame = access_frame(ROWS, START, END, ["a"], seed=5)
    files = sorted(write_frame(uri, "envoy_access", frame, files_per_partition=20))
    # Read order: the newest hour (12:00), then 10:00 and 11:00: the last of 11:00 comes last.
    last = files[39]
    old = pq.read_table(last)
    pq.write_table(old.drop_columns(["upstream_host"]), last, compression="zstd")
    run = logq("sql", "SELECT * FROM envoy_access", "-f", "csv", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    got = pd.read_csv(pd.io.common.StringIO(run.stdout), keep_default_na=False)
    assert len(got) == ROWS
    in_old = got["request_id"].isin(old.column("request_id").to_pylist())
    assert in_old.sum() == old.num_rows and (got.loc[in_old, "upstream_host"] == "").all()
    assert (got.loc[~in_old, "upstream_host"] != "").any()


def test_a_failure_mid_stream_is_an_error_after_the_rows_written(
    logq, big: str, small_window: None, monkeypatch
) -> None:
    """DuckDB failing after rows went out (here the read of the third batch after the window):
    one line and exit 1, as a failure before any output; what was written stays written (the
    JSON array is not closed, so no reader takes it for a whole answer)."""
    import duckdb

    reads: list[int] = []
    real_read = local_mod._LocalBatches._read

    def failing_read(self: Any) -> Any:
        reads.append(1)
        if len(reads) == 3:
            raise duckdb.IOException("IO Error: the disk went away")
        return real_read(self)

    monkeypatch.setattr(local_mod._LocalBatches, "_read", failing_read)
    run = logq("sql", EVERY_ROW, "-f", "json", "--warehouse", big)
    assert run.exit_code == 1
    assert run.stderr == (
        "logq: error: DuckDB could not run the query: IO Error: the disk went away\n"
    )
    assert run.stdout.startswith("[\n  {") and not run.stdout.rstrip().endswith("]")
    assert run.stdout.count("request_id") == WINDOW + BATCH + 2 * BATCH


@pytest.mark.integration
def test_an_s3_warehouse_streams_too(logq, s3_warehouse: str, small_window: None, monkeypatch):
    """Over S3 (SeaweedFS) DuckDB scans a pyarrow dataset read in a Python generator: the
    batches after the window still come one at a time, each written before the next."""
    frame = access_frame(3_000, START, END, ["a", "b"], seed=13)
    write_frame(s3_warehouse, "envoy_access", frame, files_per_partition=2)
    fetched = Fetched(monkeypatch)
    run = logq("sql", EVERY_ROW, "-f", "csv", "--warehouse", s3_warehouse)
    assert run.exit_code == 0, run.stderr
    assert fetched.rows == 3_000 and fetched.at_writes[0] <= WINDOW + BATCH
    got = pd.read_csv(pd.io.common.StringIO(run.stdout), keep_default_na=False)
    assert got["request_id"].tolist() == sorted(frame["request_id"])


# --- the real sizes, in a real process ------------------------------------------------------


#: Rows of the subprocess tests' warehouse: past the first window and two more batches.
PAST_WINDOW = STREAM_WINDOW_ROWS + 2 * STREAM_BATCH_ROWS + 1_000
#: Lines of output after which rows fetched after the first window are being written.
STREAMING_LINES = STREAM_WINDOW_ROWS + STREAM_BATCH_ROWS + 500


@pytest.fixture(scope="module")
def past_window(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("past") / "wh")
    write_frame(uri, "envoy_access", access_frame(PAST_WINDOW, START, END, ["a", "b"], seed=4))
    return uri


def _popen(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(LOGQ), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Test runners may ignore SIGINT (pytest-xdist workers); a terminal's Ctrl-C is default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _read_lines(proc: subprocess.Popen[bytes], lines: int) -> bytes:
    """Read ``proc``'s stdout until it has written ``lines`` lines (one per row)."""
    assert proc.stdout is not None
    got = bytearray()
    while got.count(b"\n") < lines:
        piece = proc.stdout.read1(65536)
        assert piece, "logq ended before writing that many rows"
        got += piece
    return bytes(got)


@pytest.mark.integration
def test_a_pipe_closed_mid_stream_ends_quietly(past_window: str) -> None:
    """`logq sql "SELECT * ..." -f json | head -n 15500`: the reader quits while rows fetched
    after the first window are being written; exit 0, nothing on stderr (cli/errors.py)."""
    proc = _popen(["sql", "SELECT * FROM envoy_access", "-f", "json", "--warehouse", past_window])
    assert proc.stdout is not None and proc.stderr is not None
    got = _read_lines(proc, STREAMING_LINES)
    proc.stdout.close()  # what `head` does
    code = proc.wait(timeout=120)
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert (code, stderr) == (0, "") and got.startswith(b"[\n  {")


@pytest.mark.integration
def test_ctrl_c_while_rows_are_written(past_window: str) -> None:
    """Ctrl-C while a streamed result is being written: exit 130 and one line, as for a query
    still running; the process does not write the rest first."""
    proc = _popen(["sql", "SELECT * FROM envoy_access", "-f", "csv", "--warehouse", past_window])
    try:
        first = _read_lines(proc, STREAMING_LINES)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert first.startswith(b"timestamp,")
    assert (first + rest).count(b"\n") < PAST_WINDOW  # it stopped: not every row came out
    assert proc.returncode == 130 and err.decode() == "logq: interrupted\n"


@pytest.mark.integration
def test_json_past_the_window_is_one_document(past_window: str) -> None:
    args = ["sql", "SELECT request_id FROM envoy_access", "-f", "json"]
    proc = subprocess.run(
        [str(LOGQ), *args, "--warehouse", past_window],
        capture_output=True,
        timeout=120,
    )
    rows = json.loads(proc.stdout)
    assert proc.returncode == 0 and len(rows) == PAST_WINDOW
    assert len({r["request_id"] for r in rows}) == len(rows)


@pytest.fixture
def left_open(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The engine's list of what a Ctrl-C left to the exit, empty, and the process's end
    recorded instead of done (:func:`athena.engines.local.exit_now_if_stuck`); SIGINT's
    handler put back (the exit sets one that ends the process)."""
    import athena.engines.spill as spill_mod

    kept: list[tuple[Any, ...]] = []
    monkeypatch.setattr(local_mod, "_LEFT_OPEN", kept, raising=False)
    monkeypatch.setattr(local_mod, "_LEFT_RUNNING", [])
    monkeypatch.setattr(spill_mod, "remove_mine", lambda: None)
    handler = signal.getsignal(signal.SIGINT)
    yield kept
    signal.signal(signal.SIGINT, handler)
    for con, *_ in kept:
        con.close()


def _exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import os

    ended: list[int] = []
    monkeypatch.setattr(os, "_exit", ended.append)
    local_mod.exit_now_if_stuck(130)
    return ended


@pytest.mark.parametrize("where", ["writing", "fetching"])
def test_a_ctrl_c_leaves_the_streamed_result_to_the_exit(
    big: str,
    small_window: None,
    left_open: list[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """After a Ctrl-C the streamed result is not closed: closing the connection freed what
    DuckDB held (a sorted 20M-row result: gigabytes, most of the time logq took to exit), and
    Python's finalization freed it otherwise. The connection is kept, the process ends at once
    (``os._exit``, the output flushed and the spill folder removed first)."""
    from cli import runner

    if where == "fetching":  # the Ctrl-C lands while DuckDB reads the next batch
        monkeypatch.setattr(
            local_mod._LocalBatches, "_read", lambda self: (_ for _ in ()).throw(KeyboardInterrupt)
        )
    result = LocalEngine(big).run(EVERY_ROW, {}, stream=True)
    assert result.more is not None

    def show(*args: Any) -> None:
        # Held by a local, as emit's generators are by its frame in the traceback.
        batches = iter(result.more or ())
        next(batches)
        next(batches)
        raise KeyboardInterrupt  # the Ctrl-C lands while a batch is written

    monkeypatch.setattr(runner, "_show", show)
    with pytest.raises(KeyboardInterrupt):
        runner.show(None, result, None)  # type: ignore[arg-type]
    import duckdb

    assert len(left_open) == 1
    con = left_open[0][0]
    with pytest.raises(duckdb.ResourceInUseException, match="open result"):
        con.execute("SELECT 42")  # not closed, its result still held (closed: ConnectionException)
    assert _exits(monkeypatch) == [130]


def test_a_ctrl_c_before_the_first_row_leaves_the_connection_to_the_exit(
    big: str, left_open: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a Ctrl-C while the query runs, before its first window is read (a sort)."""

    def interrupted(relation: Any, max_rows: int | None) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(local_mod, "_first_window", interrupted)
    with pytest.raises(KeyboardInterrupt):
        LocalEngine(big).run(EVERY_ROW, {}, stream=True)
    assert len(left_open) == 1
    assert left_open[0][0].execute("SELECT 42").fetchall() == [(42,)]  # not closed
    assert _exits(monkeypatch) == [130]


def test_a_second_ctrl_c_while_the_exit_flushes_ends_it_with_the_same_status(
    left_open: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exit after a Ctrl-C flushes stdout (a pager may hold it up) and removes the spill
    folder; a second Ctrl-C then came out of it as a KeyboardInterrupt: a traceback, and the
    interpreter's finalization the exit is there to skip. Now it ends the process at once,
    with the status already said (130)."""
    import io
    import os

    import duckdb

    import athena.engines.spill as spill_mod

    class Ended(BaseException):
        """os._exit, which would end pytest."""

    ended: list[int] = []
    removed: list[bool] = []

    def exit_now(status: int) -> None:
        ended.append(status)
        raise Ended

    class PausedPager(io.StringIO):
        def flush(self) -> None:  # the user presses Ctrl-C again while it waits
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "_exit", exit_now)
    monkeypatch.setattr(spill_mod, "remove_mine", lambda: removed.append(True))
    monkeypatch.setattr(sys, "stdout", PausedPager())
    left_open.append((duckdb.connect(),))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's (the fixture puts back)
    with pytest.raises(Ended):
        try:
            local_mod.exit_now_if_stuck(130)
        except KeyboardInterrupt:
            pytest.fail("the second Ctrl-C came out of the exit as a KeyboardInterrupt")
    assert ended == [130] and removed == [True]
