"""`logq tail`: lines of one millisecond (a stack trace) come out in the order they were written.

The tables store milliseconds, and a traceback's lines share one: ordered by time alone, DuckDB's
top-N returned them in any order ("Traceback (most recent call last):" in the middle). The
files here are written by the aggregator's own writer, named from buffer segments as a flush
names them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from aggregator.writer import object_name, write_partitions
from athena.schema import CONTAINER_LOGS
from athena.timerange import iso_utc
from athena.warehouse import open_warehouse
from tests.cli.conftest import Run

#: The millisecond the traceback lines share (an hour's middle: one partition).
AT = datetime(2026, 11, 28, 9, 30, 15, 123_000, tzinfo=UTC)
#: Lines of the traceback in each of the two flushes.
PER_FILE = 400


def _flush(uri: str, segment: int, lines: list[tuple[datetime, str]]) -> None:
    """Write ``lines`` (recipe's stderr, in arrival order) as the flush of buffer segment
    ``segment`` of aggregator node ``node1`` writes them."""
    columns: dict[str, list] = {field.name: [] for field in CONTAINER_LOGS.arrow_schema()}
    for ts, message in lines:
        row = {"timestamp": ts, "host": "h1", "container_id": "c" * 64,
               "container_name": "app", "stream": "stderr", "message": message}  # fmt: skip
        for name, values in columns.items():
            values.append(row[name])
    table = pa.table(columns, schema=CONTAINER_LOGS.arrow_schema())
    table = table.append_column("service", pa.array(["recipe"] * len(lines)))
    wh = open_warehouse(uri, create=True)
    write_partitions(wh, "container_logs", table, object_name("node1", segment))


def _warehouse(uri: str) -> list[str]:
    """Two flushes into ``uri``, each with part of one millisecond's traceback, and a line
    either side; returns the messages in the order they were written."""
    trace = ["Traceback (most recent call last):"] + [
        f'  File "app.py", line {i}, in handler' for i in range(1, 2 * PER_FILE - 1)
    ] + ["ValueError: bad recipe"]  # fmt: skip
    before = (AT - timedelta(milliseconds=1), "handling request")
    after = (AT + timedelta(milliseconds=1), "request failed")
    # Arrival order is kept for a tie however the flush's rows came: here the next line first.
    _flush(uri, 7, [(AT, m) for m in trace[:PER_FILE]] + [before])
    _flush(uri, 8, [after] + [(AT, m) for m in trace[PER_FILE:]])
    return [before[1], *trace, after[1]]


def _tail(logq: Callable[..., Run], uri: str, *args: str) -> Run:
    return logq(
        "tail", "-s", "recipe", "--since", iso_utc(AT - timedelta(minutes=5)),
        "--until", iso_utc(AT + timedelta(minutes=5)), "--engine", "local",
        "--warehouse", uri, *args,
    )  # fmt: skip


def test_tail_prints_a_millisecond_in_written_order_across_files(
    tmp_path: Path, logq: Callable[..., Run]
) -> None:
    uri = str(tmp_path / "wh")
    written = _warehouse(uri)
    run = _tail(logq, uri, "--limit", "1000", "-f", "json")
    assert run.exit_code == 0, run.stderr
    assert [r["message"] for r in run.json()] == written

    text = _tail(logq, uri, "--limit", "1000")
    lines = text.stdout.splitlines()
    assert lines[1].endswith("recipe app!| Traceback (most recent call last):")
    assert [ln.split("!| ", 1)[1] for ln in lines] == written


def test_tail_limit_cuts_a_millisecond_at_its_newest_lines(
    tmp_path: Path, logq: Callable[..., Run]
) -> None:
    """--limit in the middle of the traceback: the newest lines as written, in their order,
    the same whichever end of the order the query reads it from."""
    uri = str(tmp_path / "wh")
    written = _warehouse(uri)
    for limit in (3, PER_FILE - 50, PER_FILE + 50):
        run = _tail(logq, uri, "--limit", str(limit), "-f", "json")
        assert run.exit_code == 0, run.stderr
        assert [r["message"] for r in run.json()] == written[-limit:], limit
        assert "showing the newest" in run.stderr


@pytest.mark.s3
@pytest.mark.integration
def test_tail_keeps_written_order_over_an_s3_warehouse(
    s3_warehouse: str, logq: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local engine reads S3 through pyarrow, which has no row-in-file column: the scan
    numbers each file's rows as it reads them, a few files at a time."""
    import athena.engines.s3scan as s3scan

    monkeypatch.setattr(s3scan, "FILES_PER_SCAN", 1)
    written = _warehouse(s3_warehouse)
    run = _tail(logq, s3_warehouse, "--limit", str(PER_FILE + 50), "-f", "json")
    assert run.exit_code == 0, run.stderr
    assert [r["message"] for r in run.json()] == written[-(PER_FILE + 50) :]
