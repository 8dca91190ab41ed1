"""The Athena engine against moto's server: API path, quoting, progress, cancel, cost."""

from __future__ import annotations

import io
import os
import signal
import threading
from datetime import datetime

import pytest

from athena import queries
from athena.engines.athena import AthenaEngine
from athena.engines.result import (
    STREAM_BATCH_ROWS,
    STREAM_WINDOW_ROWS,
    EngineError,
    ScanBudgetError,
    athena_cost_usd,
)
from tests.athena.athena_moto import athena_env, executions, queue_result, set_progression

pytestmark = pytest.mark.integration

PARAMS = {
    "dt_from": "2026-11-27-23",
    "dt_to": "2026-11-28-00",
    "since": "2026-11-27 23:15:00.000",
    "until": "2026-11-28 00:45:00.000",
    "all_services": False,
    "services": ["recipe"],
    "path_prefix": "/api' OR '1'='1",
    "path_route": "",
    "method": "",
    "row_limit": 20,
    "status_min": 500,
    "status_max": 599,
    "raw_paths": False,
}


@pytest.fixture
def moto(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    athena_env(monkeypatch, moto_server)
    set_progression(moto_server, None)
    yield moto_server
    set_progression(moto_server, None)


def test_errors_query_round_trip(moto: str) -> None:
    queue_result(
        moto,
        [("path", "varchar"), ("response_code", "integer"), ("response_flags", "varchar"),
         ("count", "bigint"), ("path_share_pct", "double"), ("path_requests", "bigint")],
        [["/api/recipes", 503, "UH", 12, 2.5, 480], ["/api/users", 502, "UF,URX", 3, 0.75, 400]],
    )  # fmt: skip
    engine = AthenaEngine(output="s3://results/logq/", database="logs")
    res = engine.run(queries.load("errors").text, PARAMS)
    assert res.columns[:4] == ["path", "response_code", "response_flags", "count"]
    assert res.rows == [
        ("/api/recipes", 503, "UH", 12, 2.5, 480),
        ("/api/users", 502, "UF,URX", 3, 0.75, 400),
    ]
    assert res.engine == "athena" and res.query_id
    assert res.scanned_bytes == 0 and res.cost_usd == athena_cost_usd(0)
    sent = next(e for e in executions(moto) if e["QueryExecutionId"] == res.query_id)
    text = sent["Query"]
    assert "dt BETWEEN '2026-11-27-23' AND '2026-11-28-00'" in text
    assert "service IN ('recipe')" in text
    assert "starts_with(path, '/api'' OR ''1''=''1')" in text
    # The query files' leading comments are not sent: pyathena chooses Trino escaping from the
    # first word (before 3.35.4 a comment there made it escape the Hive way, '\'').
    assert text.startswith(("SELECT", "WITH")), text[:80]
    assert sent["QueryExecutionContext"]["Database"] == "logs"
    assert sent["ResultConfiguration"]["OutputLocation"].startswith("s3://results/logq/")


def test_max_rows_fetches_only_the_first_rows(moto: str) -> None:
    """``logq sql --limit``: the rows past it are not fetched (each 1,000 is an API call)."""
    queue_result(moto, [("n", "integer")], [[i] for i in range(10)])
    engine = AthenaEngine(output="s3://results/logq/", database="logs")
    res = engine.run("SELECT n FROM t ORDER BY n", {}, max_rows=3)
    assert res.rows == [(0,), (1,), (2,)]


def test_a_streamed_result_is_fetched_as_it_is_read(moto: str) -> None:
    """``logq sql`` on Athena: past the first window the rows come a batch at a time, as they
    are read (pages of GetQueryResults), instead of ``fetchall`` holding every row."""
    total = STREAM_WINDOW_ROWS + 2 * STREAM_BATCH_ROWS + 10
    queue_result(moto, [("n", "integer")], [[i] for i in range(total)])
    engine = AthenaEngine(output="s3://results/logq/", database="logs")
    res = engine.run("SELECT n FROM t ORDER BY n", {}, stream=True)
    assert len(res.rows) == STREAM_WINDOW_ROWS + 1 and res.more is not None
    batches = list(res.more)
    assert [len(b) for b in batches] == [STREAM_BATCH_ROWS, STREAM_BATCH_ROWS, 9]
    assert [r[0] for b in [res.rows, *batches] for r in b] == list(range(total))


def test_a_streamed_result_stops_at_max_rows(moto: str) -> None:
    total = STREAM_WINDOW_ROWS + 2 * STREAM_BATCH_ROWS
    queue_result(moto, [("n", "integer")], [[i] for i in range(total)])
    engine = AthenaEngine(output="s3://results/logq/", database="logs")
    res = engine.run("SELECT n FROM t ORDER BY n", {}, max_rows=12_345, stream=True)
    assert res.more is not None
    assert [r[0] for b in [res.rows, *res.more] for r in b] == list(range(12_345))
    queue_result(moto, [("n", "integer")], [[i] for i in range(total)])
    small = engine.run("SELECT n FROM t ORDER BY n", {}, max_rows=10, stream=True)
    assert small.more is None and len(small.rows) == 10


def test_timestamps_and_nulls(moto: str) -> None:
    queue_result(
        moto,
        [("timestamp", "timestamp"), ("upstream_host", "varchar"), ("duration_ms", "integer")],
        [["2026-11-28 00:01:02.345", None, 17]],
    )
    res = AthenaEngine(output="s3://r/").run("SELECT 1", {})
    assert res.rows == [(datetime(2026, 11, 28, 0, 1, 2, 345000), None, 17)]


def test_progress_line_and_states(moto: str) -> None:
    # Each state lasts 1 s: at 0.3 s a loaded machine's first poll came after QUEUED had gone.
    set_progression(moto, 1.0)
    queue_result(moto, [("n", "bigint")], [[1]])
    out = io.StringIO()
    engine = AthenaEngine(output="s3://r/", progress=True, progress_out=out, poll_interval=0.1)
    res = engine.run("SELECT count(*) AS n FROM envoy_access", {})
    assert res.rows == [(1,)]
    text = out.getvalue()
    assert "QUEUED" in text and "RUNNING" in text and "SUCCEEDED" in text
    assert text.endswith("\n") and "\r" in text


def test_ctrl_c_cancels_on_athena(moto: str) -> None:
    set_progression(moto, 30)
    out = io.StringIO()
    engine = AthenaEngine(output="s3://r/", progress=True, progress_out=out, poll_interval=0.1)
    main = threading.get_ident()
    # A real SIGINT, as Ctrl-C sends, with Python's own handler: a process started in the
    # background (a CI job, `make test &`) inherits SIGINT as ignored, and Python then installs
    # no KeyboardInterrupt handler at all.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = threading.Event()

    def press_ctrl_c() -> None:
        # Once the query runs (its progress line is out: a Ctrl-C before that stops the engine
        # before it started anything, as a loaded machine showed), again each second until the
        # engine says it cancels: a KeyboardInterrupt that lands in a gc callback (hypothesis
        # installs one) is swallowed as "unraisable".
        while not finished.wait(0.1):
            text = out.getvalue()
            if "cancelling query" in text:
                return
            if text:
                os.kill(os.getpid(), signal.SIGINT)
                finished.wait(1.0)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.run("SELECT 'slow' AS s", {})
    finally:
        finished.set()
        presser.join(timeout=5)
        signal.signal(signal.SIGINT, previous)
    assert threading.get_ident() == main
    slow = [e for e in executions(moto) if e["Query"] == "SELECT 'slow' AS s"]
    assert slow and slow[-1]["Status"]["State"] == "CANCELLED"
    assert "cancelling query" in out.getvalue()


def test_needs_output_and_region(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EngineError, match="athena-output"):
        AthenaEngine()
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    with pytest.raises(EngineError, match="region"):
        AthenaEngine(output="s3://r/")


def test_region_from_the_aws_profile(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """As boto3 resolves it: no AWS_REGION, the profile's region (it used to be refused)."""
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-3\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert AthenaEngine(output="s3://r/").region == "eu-west-3"


def test_a_missing_aws_profile_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(EngineError, match="AWS_PROFILE names a profile"):
        AthenaEngine(output="s3://r/")


def test_a_query_that_lost_a_file_to_compaction_runs_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from athena.engines import athena as athena_mod
    from athena.engines.result import QueryResult

    out = io.StringIO()
    engine = AthenaEngine(output="s3://r/", region="us-east-1", progress_out=out)
    reasons = [
        "HIVE_CANNOT_OPEN_SPLIT: Error opening Hive split s3://b/wh/x.parquet: "
        "The specified key does not exist.",
        "HIVE_FILE_NOT_FOUND: File does not exist",
    ]
    calls: list[str] = []

    def once(sql: str, params: dict, max_rows: int | None, stream: bool) -> QueryResult:
        calls.append(sql)
        if reasons:
            raise athena_mod._VanishedFile(f"Athena query q FAILED: {reasons.pop(0)}")
        return QueryResult(columns=["n"], rows=[(1,)], engine="athena", elapsed_s=0.1)

    monkeypatch.setattr(engine, "_run_once", once)
    assert engine.run("SELECT 1 AS n", {}).rows == [(1,)]
    assert len(calls) == 3 and out.getvalue().count("running the query again") == 2
    reasons[:] = ["NoSuchKey"] * 3
    with pytest.raises(EngineError, match="being compacted, try again"):
        engine.run("SELECT 1 AS n", {})
    assert athena_mod.VANISHED_FILE.search("Table with name x does not exist") is None
    # Not cured by running again: said at once, not as "being compacted".
    denied = "HIVE_CANNOT_OPEN_SPLIT: Error opening Hive split s3://b/x.parquet: Access Denied"
    assert athena_mod.VANISHED_FILE.search(denied) is None


def test_a_query_over_budget_that_already_finished_returns_its_rows(moto: str) -> None:
    """Its scan is paid for: the rows come with a warning, not a 'cancelled' error."""
    queue_result(moto, [("b", "varchar")], [["x"]])
    out = io.StringIO()
    engine = AthenaEngine(output="s3://r/", max_scan_bytes=-1, poll_interval=0.05, progress_out=out)
    assert engine.run("SELECT 'finished' AS b", {}).rows == [("x",)]
    assert "over --max-scan-bytes" in out.getvalue() and "finished before" in out.getvalue()


def test_scan_budget_error_type() -> None:
    assert issubclass(ScanBudgetError, EngineError)
    assert athena_cost_usd(0) == pytest.approx(10 * 1024**2 * 5 / 1024**4)
    assert athena_cost_usd(1024**4) == pytest.approx(5.0)
    assert athena_cost_usd(10 * 1024**2 + 1) == pytest.approx(11 * 1024**2 * 5 / 1024**4)


def test_scan_budget_cancels_running_query(moto: str) -> None:
    """Athena reports bytes scanned while running; over budget, the query is stopped."""
    set_progression(moto, 30)
    # moto always reports 0 bytes scanned, so a budget below zero is what "over budget" is here.
    engine = AthenaEngine(output="s3://r/", max_scan_bytes=-1, poll_interval=0.05)
    with pytest.raises(ScanBudgetError, match="cancelled"):
        engine.run("SELECT 'budget' AS b", {})
    sent = [e for e in executions(moto) if e["Query"] == "SELECT 'budget' AS b"]
    assert sent[-1]["Status"]["State"] == "CANCELLED"


def test_signals_ignored_on_purpose_stay_ignored() -> None:
    """``nohup logq ...`` ignores SIGHUP: the engine must not turn it back into a stop. The
    signals it takes get their handlers back afterwards."""
    from athena.engines.interrupts import Interrupts

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    term = signal.getsignal(signal.SIGTERM)
    try:
        with Interrupts().taken():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, term)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_signal_while_a_query_starts_is_raised_once_it_has_an_id() -> None:
    from athena.engines.interrupts import Interrupts
    from athena.engines.result import Terminated

    interrupts = Interrupts()
    started = []
    with interrupts.taken(), pytest.raises(Terminated) as stopped, interrupts.starting():
        os.kill(os.getpid(), signal.SIGTERM)
        started.append("query id")  # the start went on to its end
    assert started == ["query id"] and stopped.value.exit_status == 143


def test_a_second_ctrl_c_during_the_cancel_says_how_to_stop_the_query() -> None:
    """A second Ctrl-C (or a signal) while StopQueryExecution is on its way ends logq at once:
    the query may go on running on Athena (and billing), so the command that stops it is
    printed, as when the cancel fails."""

    class CancelCutShort:
        def cancel(self, query_id: str):
            class Pending:
                def result(self) -> None:
                    raise KeyboardInterrupt

            return Pending()

    out = io.StringIO()
    engine = AthenaEngine(output="s3://r/", region="us-east-1", progress_out=out)
    with pytest.raises(KeyboardInterrupt):
        engine._stop(CancelCutShort(), "q-123", KeyboardInterrupt())
    assert out.getvalue().splitlines()[1:] == [
        "athena: cancelling query q-123",
        "athena: the cancel of query q-123 was cut short: stop it with "
        "`aws athena stop-query-execution --query-execution-id q-123`",
    ]
