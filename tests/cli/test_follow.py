"""`logq tail --follow`: lines that arrive later are printed once each, in time order."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from athena.engines.local import LocalEngine
from athena.timerange import iso_utc
from cli import follow, runner
from cli.follow import follow_lines, follow_sql
from cli.options import Common, EngineName
from cli.output import OutputFormat
from tests.athena.factory import in_one_hour, logs_frame, write_frame

LOGQ = Path(sys.executable).with_name("logq")
#: :func:`cli.follow._pipe_out` itself, for the test of :func:`cli.follow.pause`.
PIPE_OUT = follow._pipe_out


@pytest.fixture(autouse=True)
def _stdout_never_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests drive the polls through ``follow.time.sleep``, which ``pause`` skips when
    stdout is a pipe: under ``pytest -s | tee`` they found no arrival and failed. Stdout is
    watched only in the tests of that watch."""
    monkeypatch.setattr(follow, "_pipe_out", lambda: None)


def _common(uri: str, fmt: OutputFormat = OutputFormat.json) -> Common:
    return Common(
        service=["svc"], since="10m", until=None, path=None, method=None, limit=None, fmt=fmt,
        engine=EngineName.local, warehouse=uri, dry_run=False, athena_database="logq",
        athena_workgroup=None, athena_output=None, athena_region=None, max_scan_bytes=None,
    )  # fmt: skip


def _tail_shown(uri: str, limit: int = 100) -> tuple[Common, Any, list[tuple]]:
    """What ``logq tail --follow`` over ``uri`` starts from: its options, the prepared query
    (with the follow SQL) and the lines the first answer printed, oldest first."""
    common = _common(uri)
    prep = runner.prepare(
        common, "tail", "container_logs", {"grep": "", "stream": ""}, default_since="10m",
        default_limit=limit,
    )  # fmt: skip
    prep.sql = follow_sql()
    return common, prep, list(reversed(runner.execute(common, prep).rows))


def test_follow_prints_late_lines_once(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    first = logs_frame(20, now - timedelta(minutes=5), now - timedelta(minutes=3), ["svc"], seed=1)
    # Arrives later but carries container timestamps *before* the newest line already shown.
    late = logs_frame(5, now - timedelta(minutes=4), now - timedelta(minutes=3), ["svc"], seed=2)
    late["message"] = [f"late {i}" for i in range(5)]
    late["container_id"] = "late"
    write_frame(uri, "container_logs", first)

    common, prep, initial = _tail_shown(uri)
    printed: list[list[tuple]] = []

    def printer(common, result, prep, rows, stream=False):
        printed.append(list(rows))
        if len(printed) == 1:
            folder = Path(uri, "container_logs", "service=svc")
            write_frame(str(tmp_path / "staging"), "container_logs", late)
            for src in Path(tmp_path / "staging", "container_logs", "service=svc").rglob(
                "*.parquet"
            ):
                dest = folder / src.parent.name / "late-0001.parquet"
                dest.parent.mkdir(parents=True, exist_ok=True)
                src.rename(dest)

    follow_lines(common, prep, initial, 0.01, printer, polls=3)
    assert len(printed) == 2, "the initial lines, then one batch with the late lines, then nothing"
    assert [r[4] for r in printed[0]] == list(first.sort_values("timestamp")["message"])
    assert sorted(r[4] for r in printed[1]) == sorted(late["message"])
    shown = [iso_utc(r[0]) for r in printed[1]]
    assert shown == sorted(shown)


def _add_file(uri: str, tmp_path: Path, frame: pd.DataFrame, name: str) -> None:
    """Add ``frame`` as new files next to those already in the warehouse (as a flush does)."""
    staging = tmp_path / f"staging-{name}"
    write_frame(str(staging), "container_logs", frame)
    for src in staging.rglob("*.parquet"):
        rel = src.relative_to(staging)
        dest = Path(uri, rel.parent, f"{name}-{src.name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dest)


def _frame(rows: list[tuple[datetime, str, str, str]]) -> pd.DataFrame:
    """container_logs rows of service ``svc`` from (timestamp, host, container_id, message)."""
    frame = pd.DataFrame(
        [
            {"timestamp": ts, "service": "svc", "host": host, "container_id": cid,
             "container_name": "app", "stream": "stdout", "message": msg}
            for ts, host, cid, msg in rows
        ]
    )  # fmt: skip
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.floor("ms")
    return frame


#: How far back from its "now" the rows of a compaction test reach (the seed at 50 s).
ROWS_SPAN = timedelta(minutes=2)


def _now_in_one_hour() -> datetime:
    """Now to the second, moved before the hour when it began less than :data:`ROWS_SPAN` ago
    (:func:`~tests.athena.factory.in_one_hour`). Run across the hour, the seed and the arrivals
    fell into two partition-hours, and compaction, which merges one hour's files, merged none
    (found by a run at 13:00)."""
    return in_one_hour(datetime.now(UTC).replace(microsecond=0), ROWS_SPAN)


def _follow(
    tmp_path: Path,
    arrivals: list[pd.DataFrame | Callable[[str], object]],
    polls: int,
    monkeypatch,
    limit: int = 100,
    history: list[str] = (),
    now: datetime | None = None,
) -> tuple[list[list[tuple]], list[str], int]:
    """Follow ``svc``; before poll k, ``arrivals[k]`` lands (as new objects, as a flush adds
    them) or runs (a callable, given the warehouse). Returns the printed batches (after the
    initial one), the notes and the number of queries the polls ran. ``now``: the time the
    seed is written back from (a compaction test's :func:`_now_in_one_hour`)."""
    uri = str(tmp_path / "wh")
    now = now or datetime.now(UTC).replace(microsecond=0)
    old = [(now - timedelta(seconds=60 + i), "h1", "c", msg) for i, msg in enumerate(history)]
    write_frame(
        uri, "container_logs", _frame([*old, (now - timedelta(seconds=50), "h1", "c", "seed")])
    )
    common, prep, initial = _tail_shown(uri, limit)
    batches: list[list[tuple]] = []
    notes: list[str] = []
    queries = {"n": 0}
    real_run = LocalEngine.run

    def counting_run(self, *args, **kwargs):
        queries["n"] += 1
        return real_run(self, *args, **kwargs)

    def sleep(seconds: float) -> None:
        k = len(batches_seen)
        if k < len(arrivals) and callable(arrivals[k]):
            arrivals[k](uri)
        elif k < len(arrivals) and not arrivals[k].empty:
            _add_file(uri, tmp_path, arrivals[k], f"arrival{k}")
        batches_seen.append(k)

    batches_seen: list[int] = []

    def printer(common, result, prep, rows, stream=False):
        batches.append(list(rows))

    monkeypatch.setattr(LocalEngine, "run", counting_run)
    monkeypatch.setattr(runner, "note", notes.append)
    monkeypatch.setattr(follow.time, "sleep", sleep)
    follow_lines(common, prep, initial, 1.0, printer, polls=polls)
    assert [r[4] for r in batches[0]] == ["seed"]
    return batches[1:], notes, queries["n"]


def test_follow_pages_through_a_burst_larger_than_a_poll(tmp_path: Path, monkeypatch) -> None:
    """More new lines than one query returns (POLL_LIMIT) between two polls: all are printed,
    once, in time order, and no note is needed."""
    monkeypatch.setattr(follow, "POLL_LIMIT", 40)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=20)
    # 150 lines; several share a millisecond so a page boundary falls inside one.
    burst = _frame([(base + timedelta(milliseconds=i // 3), "h1", "c", f"burst {i}")
                    for i in range(150)])  # fmt: skip
    batches, notes, queries = _follow(tmp_path, [burst], 2, monkeypatch)
    printed = [r[4] for b in batches for r in b]
    assert sorted(printed) == sorted(burst["message"]) and len(printed) == 150
    shown = [r[0] for b in batches for r in b]
    assert shown == sorted(shown)
    assert notes == []
    assert queries > 2, "a poll that got a full page read on"


def test_follow_prints_each_millisecond_in_written_order(tmp_path: Path, monkeypatch) -> None:
    """A stack trace that arrives while following (many lines in each of a few milliseconds,
    pages cutting through them) prints in the order it was written, not upside down or
    scrambled: the rows come newest first, and sorting them by time kept ties reversed."""
    monkeypatch.setattr(follow, "POLL_LIMIT", 40)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=20)
    trace = _frame([(base + timedelta(milliseconds=i // 30), "h1", "c", f"frame {i}")
                    for i in range(90)])  # fmt: skip
    batches, notes, _ = _follow(tmp_path, [trace], 2, monkeypatch)
    assert [r[4] for b in batches for r in b] == list(trace["message"])
    assert notes == []


def test_follow_tells_apart_hosts_and_repeated_lines(tmp_path: Path, monkeypatch) -> None:
    """The same line at the same millisecond from another host, arriving a poll later, is a new
    line; so is a container printing the same line twice in one millisecond."""
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    first = _frame([(ts, "hostA", "c", "GET /health 200")])
    second = _frame([(ts, "hostB", "c", "GET /health 200"), (ts, "hostB", "c2", "GET /health 200"),
                     (ts, "hostA", "c", "twice"), (ts, "hostA", "c", "twice")])  # fmt: skip
    batches, notes, queries = _follow(tmp_path, [first, second, pd.DataFrame()], 3, monkeypatch)
    assert queries == 2, "a poll that finds no new object runs no query"
    assert len(batches) == 2 and len(batches[0]) == 1 and len(batches[1]) == 4
    assert sorted(r[4] for r in batches[1]) == sorted(second["message"])
    assert notes == []


def test_follow_says_when_it_cannot_read_everything(tmp_path: Path, monkeypatch) -> None:
    """More lines in one millisecond than a query returns cannot be paged: a note says so, once,
    and the lines it could read are still printed."""
    monkeypatch.setattr(follow, "POLL_LIMIT", 20)
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    crowd = _frame([(ts, "h1", "c", f"same ms {i}") for i in range(30)])
    batches, notes, _ = _follow(tmp_path, [crowd, pd.DataFrame()], 2, monkeypatch)
    assert len(notes) == 1 and "skipped" in notes[0], notes
    assert sum(len(b) for b in batches) == 20


def test_follow_does_not_print_lines_older_than_the_first_page(tmp_path: Path, monkeypatch) -> None:
    """`tail -F --limit 1`: the lines before the one shown are history and stay unprinted, but a
    line arriving late (stamped before the one shown) is news and is printed."""
    now = datetime.now(UTC).replace(microsecond=0)
    late = _frame([(now - timedelta(seconds=55), "h2", "c", "late")])
    batches, notes, _ = _follow(
        tmp_path, [pd.DataFrame(), late, pd.DataFrame()], 3, monkeypatch, limit=1,
        history=["old 1", "old 2"],
    )  # fmt: skip
    assert [[r[4] for r in b] for b in batches] == [["late"]] and notes == []


def test_follow_prints_lines_that_arrive_minutes_late_once(tmp_path: Path, monkeypatch) -> None:
    """Another aggregator flushing minutes behind: its lines are stamped minutes before the
    newest one printed (150 s, 9 min). Each is printed once, when its object appears; later
    polls print nothing again. (Before: a 2-minute look-back skipped both, silently.)"""
    now = datetime.now(UTC).replace(microsecond=0)
    fresh = _frame([(now - timedelta(seconds=1), "h1", "c", "fresh")])
    late = _frame([(now - timedelta(seconds=150), "h2", "c", "late 150 s"),
                   (now - timedelta(minutes=9), "h2", "c", "late 9 min")])  # fmt: skip
    batches, notes, queries = _follow(
        tmp_path, [fresh, late, pd.DataFrame(), pd.DataFrame()], 4, monkeypatch
    )
    assert [[r[4] for r in b] for b in batches] == [["fresh"], ["late 9 min", "late 150 s"]]
    assert notes == [] and queries == 2


def test_follow_does_not_print_a_compaction_output_again(tmp_path: Path, monkeypatch) -> None:
    """Compaction merges the flush files already printed into one new object (and deletes
    them): its rows are not news. A line that lands after it still is."""
    from aggregator.compaction.partition import compact_partition
    from athena.schema import CONTAINER_LOGS
    from athena.warehouse import open_warehouse

    now = _now_in_one_hour()
    merged: list[int] = []

    def compact(uri: str) -> None:
        wh = open_warehouse(uri)
        for folder in Path(uri, "container_logs", "service=svc").iterdir():
            merged.append(compact_partition(wh, CONTAINER_LOGS, str(folder), 1 << 30))

    one = _frame([(now - timedelta(seconds=3), "h1", "c", "one")])
    after = _frame([(now - timedelta(seconds=2), "h1", "c", "after compaction")])
    batches, notes, _ = _follow(
        tmp_path, [one, compact, after, pd.DataFrame()], 4, monkeypatch, now=now
    )
    assert sum(merged) >= 2, "the seed's and the first arrival's objects were merged"
    assert [[r[4] for r in b] for b in batches] == [["one"], ["after compaction"]]
    assert notes == []


def test_a_flush_object_of_a_node_called_c_is_not_taken_for_compaction() -> None:
    """Follow skips compaction outputs by name: a node id may be ``c``, so the prefix alone
    would have skipped that node's flushes."""
    from aggregator.writer import object_name
    from athena.schema import compacted_object_name, is_compacted_object

    assert is_compacted_object(compacted_object_name("0123456789abcdef0123"))
    assert not is_compacted_object(object_name("c", 1))
    assert not is_compacted_object(object_name("c-0123456789abcdef0123", 1))


def test_follow_cli_stops_on_ctrl_c(tmp_path: Path, monkeypatch) -> None:
    """The CLI path: --follow with json prints NDJSON and exits 0 on Ctrl-C."""
    import json

    from typer.testing import CliRunner

    from cli.app import app

    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    write_frame(uri, "container_logs", logs_frame(3, now - timedelta(minutes=2), now, ["svc"]))
    calls = {"n": 0}

    def fake_sleep(seconds: float) -> None:
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr("cli.follow.time.sleep", fake_sleep)
    result = CliRunner().invoke(app, ["tail", "-s", "svc", "-F", "-f", "json", "--warehouse", uri])
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(ln) for ln in result.stdout.splitlines()]
    assert len(lines) == 3 and calls["n"] == 1
    assert [ln["timestamp"] for ln in lines] == sorted(ln["timestamp"] for ln in lines)


def test_follow_cli_in_markdown_stops_on_ctrl_c(tmp_path: Path, monkeypatch) -> None:
    """--follow -f markdown prints through runner.show, which closes the result it shows:
    follow's result (the column names) had no close, and the first lines ended in an
    AttributeError traceback, status 1."""
    from typer.testing import CliRunner

    from cli.app import app

    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    write_frame(uri, "container_logs", logs_frame(3, now - timedelta(minutes=2), now, ["svc"]))

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("cli.follow.time.sleep", ctrl_c)
    args = ["tail", "-s", "svc", "-F", "-f", "markdown", "--warehouse", uri]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| timestamp ") and len(lines) == 2 + 3


def test_follow_cli_in_markdown_prints_the_header_once(tmp_path: Path, monkeypatch) -> None:
    """--follow -f markdown is one table, as csv is one file: the header and the alignment
    row come with the first answer, each later poll adds its rows only, and a poll with
    nothing new prints nothing (each poll was a whole new table, an empty one included)."""
    from typer.testing import CliRunner

    from cli.app import app

    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    write_frame(uri, "container_logs", logs_frame(3, now - timedelta(minutes=2), now, ["svc"]))
    later = _frame([(now - timedelta(seconds=30), "h", "c2", f"later {i}") for i in range(2)])
    sleeps = {"n": 0}

    def poll_then_stop(seconds: float) -> None:
        sleeps["n"] += 1
        if sleeps["n"] == 1:
            _add_file(uri, tmp_path, later, "later")
        elif sleeps["n"] == 3:  # the second poll found nothing new
            raise KeyboardInterrupt

    monkeypatch.setattr("cli.follow.time.sleep", poll_then_stop)
    args = ["tail", "-s", "svc", "-F", "-f", "markdown", "--warehouse", uri]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| timestamp ") and set(lines[1]) <= set("|-: ")
    assert len(lines) == 2 + 3 + 2 and sum("| timestamp " in ln for ln in lines) == 1
    assert [ln.split("|")[-2].strip() for ln in lines[-2:]] == ["later 0", "later 1"]
    assert len({len(ln) for ln in lines}) == 1  # the same layout: one table


def test_athena_follow_reads_a_window_and_says_its_limit(monkeypatch) -> None:
    """Athena's answer names no object, so there follow re-reads the last ATHENA_LOOKBACK: a
    line up to that late is printed once; one later than that is not, as the start note says."""
    from types import SimpleNamespace

    from athena.timerange import TimeRange
    from cli.follow import start_note

    note = start_note(EngineName.athena)
    assert note is not None and "more than 2 min after its timestamp is not printed" in note
    assert start_note(EngineName.local) is None
    now = datetime.now(UTC).replace(microsecond=0)
    table: list[tuple] = [(now - timedelta(seconds=50), "svc", "app", "stdout", "seed", "h", "c")]
    arrivals = [
        [(now - timedelta(seconds=60), "svc", "app", "stdout", "late 60 s", "h2", "c")],
        [(now - timedelta(minutes=5), "svc", "app", "stdout", "late 5 min", "h2", "c")],
        [],
    ]

    def execute(common, prep):  # Athena's answer: the rows in range, newest first
        rows = [r for r in table if prep.trange.since <= r[0] < prep.trange.until]
        return SimpleNamespace(rows=sorted(rows, key=lambda r: r[0], reverse=True))

    def sleep(seconds: float) -> None:
        table.extend(arrivals.pop(0))

    printed: list[list[tuple]] = []
    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(follow.time, "sleep", sleep)
    common = replace(_common("s3://unused/wh"), engine=EngineName.athena)
    prep = SimpleNamespace(
        trange=TimeRange(now - timedelta(minutes=10), now), params={"row_limit": 100}
    )
    follow_lines(common, prep, list(table), 10.0, lambda *a, **k: printed.append(a[3]), polls=3)
    assert [[r[4] for r in b] for b in printed] == [["seed"], ["late 60 s"]]


def _compact_hours(uri: str) -> None:
    """Run compaction over every hour of ``svc`` now (no grace: the test decides when)."""
    from aggregator.compaction.partition import compact_partition
    from athena.schema import CONTAINER_LOGS
    from athena.warehouse import open_warehouse

    wh = open_warehouse(uri)
    for folder in Path(uri, "container_logs", "service=svc").iterdir():
        compact_partition(wh, CONTAINER_LOGS, str(folder), 1 << 30)


def test_follow_does_not_reprint_history_when_a_listed_object_vanishes(
    tmp_path: Path, monkeypatch
) -> None:
    """(Review R2.) A merge whose input deletes failed leaves inputs, output and intent in the
    hour; the first answer reads the output (the inputs are superseded). The next compaction
    pass then finishes the merge between a poll's listing and its read of the intent: the poll
    takes the inputs for new objects, finds them gone, and must print nothing. (Before: the
    engine listed the whole hour again and every line of it was printed a second time.)"""
    from aggregator.compaction import attempt
    from aggregator.compaction.partition import compact_partition
    from aggregator.storage import StorageError
    from athena import intents
    from athena.schema import CONTAINER_LOGS
    from athena.warehouse import open_warehouse

    uri = str(tmp_path / "wh")
    now = _now_in_one_hour()
    rows = [(now - timedelta(seconds=30 + i), "h1", "c", f"old {i}") for i in range(6)]
    write_frame(uri, "container_logs", _frame(rows), files_per_partition=2)
    wh = open_warehouse(uri)

    def failing_delete(wh, paths):  # S3 SlowDown / AccessDenied on the input deletes
        raise StorageError("SlowDown")

    with monkeypatch.context() as patched:  # not undo(): it would undo the fixture's patch
        patched.setattr(attempt, "delete_objects", failing_delete)
        for folder in Path(uri, "container_logs", "service=svc").iterdir():
            with pytest.raises(StorageError):
                compact_partition(wh, CONTAINER_LOGS, str(folder), 1 << 30)
    left = sorted(p.name for p in Path(uri, "container_logs").rglob("*") if p.is_file())
    assert any(n.startswith("_compact-") for n in left) and len(left) >= 4, left

    common, prep, initial = _tail_shown(uri)
    assert sorted(r[4] for r in initial) == sorted(r[3] for r in rows)  # each line once
    real_read = intents.read_intent

    def finished_meanwhile(fs, path):
        """The compactor's next pass deletes the inputs, then the intent, right after the
        poll listed the folder."""
        folder = path.rsplit("/", 1)[0]
        for name in real_read(fs, path).inputs:
            fs.delete_file(f"{folder}/{name}")
        fs.delete_file(path)
        return real_read(fs, path)  # FileNotFoundError, as the reader then gets

    printed: list[list[tuple]] = []
    monkeypatch.setattr(intents, "read_intent", finished_meanwhile)
    monkeypatch.setattr(follow.time, "sleep", lambda s: None)
    follow_lines(common, prep, initial, 1.0, lambda *a, **k: printed.append(list(a[3])), polls=2)
    again = [r[4] for batch in printed[1:] for r in batch]
    assert again == [], f"printed again: {again}"


def test_follow_does_not_reprint_a_flush_the_first_answer_read_after_a_relisting(
    tmp_path: Path, monkeypatch
) -> None:
    """Compaction swaps the hour's files under the first answer's query and a flush lands at
    that moment: the engine lists the hour again and the first answer prints the flush's line.
    The polls must count what that answer read, not its first listing: the flush is history.
    (Before: the first poll printed it a second time.)"""
    now = _now_in_one_hour()
    flush = _frame([(now - timedelta(seconds=20), "h2", "c", "landed during the relisting")])
    seed = _frame([(now - timedelta(seconds=50 + i), "h1", "c", f"old {i}") for i in range(3)])
    uri = str(tmp_path / "wh")
    write_frame(uri, "container_logs", seed, files_per_partition=3)
    real_run_once = LocalEngine._run_once
    swaps: list[int] = []

    def swapped_under_the_query(self, *args, **kwargs):
        if not swaps:  # the first run only: compaction, then a flush, after the listing
            swaps.append(1)
            _compact_hours(uri)
            _add_file(uri, tmp_path, flush, "during")
        return real_run_once(self, *args, **kwargs)

    monkeypatch.setattr(LocalEngine, "_run_once", swapped_under_the_query)
    common, prep, initial = _tail_shown(uri)
    assert swaps and "landed during the relisting" in [r[4] for r in initial]
    printed: list[list[tuple]] = []
    monkeypatch.setattr(follow.time, "sleep", lambda s: None)
    follow_lines(common, prep, initial, 1.0, lambda *a, **k: printed.append(list(a[3])), polls=2)
    assert [r[4] for b in printed[1:] for r in b] == []


def _paused_clock(monkeypatch) -> dict[str, timedelta]:
    """follow's clock, running ``offset`` ahead of the real one (a test moves it on)."""
    clock = {"offset": timedelta(0)}
    monkeypatch.setattr(follow, "_now", lambda: datetime.now(UTC) + clock["offset"])
    return clock


def test_follow_says_when_a_pause_let_compaction_take_a_late_flush(
    tmp_path: Path, monkeypatch
) -> None:
    """(Review R2.) A flush lands in a watched hour; then follow is paused longer than the
    compaction grace floor (``| less`` left paused, a laptop asleep) and compaction merges
    that hour. The merged object is skipped (its other rows were printed), so the late lines
    are not printed: a note must say so, with the command that shows them. (Before: silent.)"""
    from athena.intents import GRACE_FLOOR

    clock = _paused_clock(monkeypatch)
    now = _now_in_one_hour()
    late = _frame([(now - timedelta(seconds=50), "h2", "c", "late flush")])  # the seed's hour

    def lands_then_compacted(uri: str) -> None:
        _add_file(uri, tmp_path, late, "late")
        clock["offset"] = GRACE_FLOOR + timedelta(minutes=1)
        _compact_hours(uri)

    batches, notes, _ = _follow(
        tmp_path, [lands_then_compacted, pd.DataFrame()], 2, monkeypatch, now=now
    )
    assert [r[4] for b in batches for r in b] == []
    assert len(notes) == 1, notes
    hour = f"{now - timedelta(seconds=50):%Y-%m-%d-%H}"
    assert "paused for 7 min" in notes[0] and "may not have been printed" in notes[0]
    assert f"the hour {hour} was compacted" in notes[0], notes[0]
    assert "logq tail --service svc --since " in notes[0], notes[0]


def test_follow_says_nothing_of_a_pause_shorter_than_the_grace_floor(
    tmp_path: Path, monkeypatch
) -> None:
    """Compaction merging hours follow printed (an ``--force`` pass with no grace here) is no
    loss when follow listed in time: no note, nothing printed again."""
    _paused_clock(monkeypatch)
    batches, notes, _ = _follow(tmp_path, [_compact_hours, pd.DataFrame()], 2, monkeypatch)
    assert batches == [] and notes == []


def test_follow_catches_up_on_hours_a_long_pause_skipped(tmp_path: Path, monkeypatch) -> None:
    """A pause longer than TRACK (a night asleep): the hours it spanned were never listed, and
    may have been compacted meanwhile. Their lines are all news, merged or not. (Before: the
    next poll listed only the last hour; they were lost without a note.)"""
    clock = _paused_clock(monkeypatch)
    now = datetime.now(UTC).replace(microsecond=0)
    ahead = now + timedelta(hours=1)
    spanned = [_frame([(ahead + timedelta(seconds=i), "h1", "c", f"while away {i}")])
               for i in range(2)]  # fmt: skip

    def night(uri: str) -> None:
        for i, frame in enumerate(spanned):
            _add_file(uri, tmp_path, frame, f"night{i}")
        clock["offset"] = timedelta(hours=3)
        for folder in Path(uri, "container_logs", "service=svc").iterdir():
            if folder.name == f"dt={ahead:%Y-%m-%d-%H}":
                from aggregator.compaction.partition import compact_partition
                from athena.schema import CONTAINER_LOGS
                from athena.warehouse import open_warehouse

                assert compact_partition(open_warehouse(uri), CONTAINER_LOGS, str(folder), 1 << 30)

    batches, notes, _ = _follow(tmp_path, [night, pd.DataFrame()], 2, monkeypatch)
    assert [[r[4] for r in b] for b in batches] == [["while away 0", "while away 1"]]
    assert notes == []


def test_grace_floor_is_compactions_own() -> None:
    """The CLI reads the floor from athena.intents (it must not import the aggregator): it
    must be what compaction's safe grace is for the fastest-flushing node."""
    from aggregator.compaction.grace import safe_grace
    from athena.intents import GRACE_FLOOR

    assert GRACE_FLOOR <= safe_grace([], flush_interval=0.001) < GRACE_FLOOR + timedelta(seconds=1)


def test_follow_counts_a_pause_while_printing_the_first_answer(tmp_path: Path, monkeypatch) -> None:
    """``logq tail -F | less``: the first answer's printing blocks until the reader scrolls.
    A flush that lands then and is compacted before the first poll is a pause like any other:
    the note is given. (Before, the pause was timed from after that printing: silent.)"""
    from athena.intents import GRACE_FLOOR

    clock = _paused_clock(monkeypatch)
    uri = str(tmp_path / "wh")
    now = _now_in_one_hour()
    write_frame(uri, "container_logs", _frame([(now - timedelta(seconds=50), "h1", "c", "seed")]))
    common, prep, initial = _tail_shown(uri)
    late = _frame([(now - timedelta(seconds=50), "h2", "c", "late flush")])
    printed: list[list[tuple]] = []
    notes: list[str] = []

    def blocked_printer(*args, **kwargs) -> None:
        printed.append(list(args[3]))
        if len(printed) == 1:  # the reader comes back GRACE_FLOOR + 1 min later
            _add_file(uri, tmp_path, late, "late")
            clock["offset"] = GRACE_FLOOR + timedelta(minutes=1)
            _compact_hours(uri)

    monkeypatch.setattr(runner, "note", notes.append)
    monkeypatch.setattr(follow.time, "sleep", lambda s: None)
    follow_lines(common, prep, initial, 1.0, blocked_printer, polls=1)
    assert len(printed) == 1 and len(notes) == 1 and "may not have been printed" in notes[0]


@pytest.mark.skipif(sys.platform != "linux", reason="POLLERR on a pipe without reader: Linux")
def test_follow_ends_when_the_reader_of_its_pipe_goes_away(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """``logq tail -F | head -1`` on a quiet service: ``head`` exits after the first line, but
    follow wrote nothing more (no new rows), so no write failed and it polled on until a line
    arrived, holding the pipeline open. It now ends with status 0 once the reader is gone, as
    after any write into a closed pipe."""
    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    old = logs_frame(3, now - timedelta(minutes=3), now - timedelta(minutes=2), ["svc"], seed=4)
    write_frame(uri, "container_logs", old)
    read_end, write_end = os.pipe()
    args = ["tail", "-s", "svc", "-F", "--interval", "0.2", "--warehouse", uri]
    proc = subprocess.Popen(
        [str(LOGQ), *args], stdout=write_end, stderr=subprocess.PIPE, env=subprocess_env
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:  # head -1: one line, then the pipe is closed
        first = reader.readline()
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("logq tail -F kept polling after the reader of its stdout went away")
    assert proc.returncode == 0, stderr.decode()
    assert b" svc " in first and b"Traceback" not in stderr


def test_follow_waits_between_polls_while_its_pipe_has_a_reader(monkeypatch) -> None:
    """The wait is cut short by a pipe's reader going away only: with a reader it lasts the
    interval, stdout that is no pipe (a file, a terminal) is never watched, and a read end
    given as stdout, whose writer is gone (``POLLHUP``), is no reader gone: it sleeps."""
    monkeypatch.setattr(follow, "_pipe_out", PIPE_OUT)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as out:
        monkeypatch.setattr(sys, "stdout", out)
        follow.pause(0.05)  # the reader is there: no error
        os.close(read_end)
        if sys.platform == "linux":
            with pytest.raises(BrokenPipeError):
                follow.pause(60)
    slept: list[float] = []
    monkeypatch.setattr(follow.time, "sleep", slept.append)
    with open(os.devnull, "w") as out:
        monkeypatch.setattr(sys, "stdout", out)
        follow.pause(3.0)
    assert slept == [3.0]
    read_end, write_end = os.pipe()
    os.close(write_end)
    with os.fdopen(read_end, "w") as out:  # nonsense, but no reason to stop following
        monkeypatch.setattr(sys, "stdout", out)
        follow.pause(3.0)
    assert len(slept) == 2 and 2.0 < slept[1] <= 3.0, slept


@pytest.mark.parametrize("interval", ["2", "0.5"])
def test_interval_without_follow_is_a_usage_error(
    tmp_path: Path, interval: str, monkeypatch
) -> None:
    """``logq tail --interval 5`` (``-F`` forgotten) printed the lines once and exited 0, as
    if polling; the option is refused, saying what it is for."""
    from typer.testing import CliRunner

    from cli.app import app

    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    write_frame(uri, "container_logs", logs_frame(3, now - timedelta(minutes=2), now, ["svc"]))
    run = CliRunner().invoke(app, ["tail", "-s", "svc", "--interval", interval, "--warehouse", uri])
    assert run.exit_code == 2, run.stderr
    assert run.stdout == ""
    assert "logq: error: --interval only applies with --follow" in run.stderr
