"""Compaction and a Parquet file logq did not write (a foreign file: other column types).

Athena refuses such a file (``HIVE_BAD_DATA``) and ``logq`` names it (:mod:`athena.foreign`).
Compaction cast it into the merge instead: epoch integers came out as times (the file laundered
into one Athena reads), text times that parse likewise, and a value that does not convert failed
the whole partition's merge, at every pass, naming the partition, not the file. Now it is left
in place, untouched, named in an ERROR once a pass (and in ``compact``'s notes), and the rest of
its partition is merged. A file of an older schema (columns missing, none of another type) is
not foreign: it is merged as before.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aggregator.compaction.command import compact_main
from aggregator.compaction.inputs import _conform
from aggregator.compaction.passes import CompactionFailed, compact_warehouse
from athena.schema import partition_path
from athena.schema import table as table_spec
from athena.warehouse import open_warehouse
from tests.aggregator.test_compaction import DT, HOUR, LATER, flush_files
from tests.athena.factory import access_frame, write_frame

ADVICE = "logq did not write it; move it out of the table's folder or rewrite it"

#: How each foreign file differs from the table: its ``timestamp`` column, from the rows copied.
TIMES: dict[str, Callable[[pa.Table], pa.Array]] = {
    # Epoch milliseconds, as another tool writes them: HEAD merged them as times.
    "epoch_int": lambda t: t["timestamp"].cast(pa.int64()),
    # ISO-8601 text: HEAD parsed it into times (Athena refuses the file).
    "iso_text": lambda t: pa.array([v.isoformat() for v in t["timestamp"].to_pylist()]),
    # Text that is no time: HEAD failed the partition's merge, naming the partition only.
    "words": lambda t: pa.array(["yesterday"] * len(t)),
}


def folder_of(uri: str, service: str = "recipe") -> Path:
    return Path(open_warehouse(uri).path(partition_path("container_logs", service, DT)))


def add_file(
    folder: Path, name: str, change: Callable[[pa.Table], pa.Table], of: str = "n-*.parquet"
) -> Path:
    """A copy of the rows of the partition's first flush file (the first file named ``of``),
    changed by ``change``, as ``name``."""
    first = sorted(folder.glob(of))[0]
    path = folder / name
    pq.write_table(change(pq.read_table(first)), path)
    return path


def foreign(kind: str) -> Callable[[pa.Table], pa.Table]:
    def change(t: pa.Table) -> pa.Table:
        return t.set_column(t.schema.get_field_index("timestamp"), "timestamp", TIMES[kind](t))

    return change


def values_of(column: str, folder: Path, skip: Path | None = None) -> Counter[str]:
    """The ``column`` values of every visible Parquet file of ``folder`` but ``skip``."""
    found: Counter[str] = Counter()
    for path in folder.glob("*.parquet"):
        if path != skip:
            found.update(pq.read_table(path)[column].to_pylist())
    return found


def messages(folder: Path, skip: Path | None = None) -> Counter[str]:
    """The messages of every visible Parquet file of ``folder`` but ``skip``."""
    return values_of("message", folder, skip)


def test_an_epoch_int_file_is_left_alone_named_once_a_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """HEAD merged it: its epoch milliseconds became times (Athena would refuse the file), and
    its rows sat twice in the merged file beside the originals."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=20)
    folder = folder_of(uri)
    truth = messages(folder)
    odd = add_file(folder, "0-foreign.parquet", foreign("epoch_int"))
    data, stat = odd.read_bytes(), odd.stat()
    wh = open_warehouse(uri)

    caplog.set_level(logging.INFO, "logq.aggregator.compaction")
    assert compact_warehouse(wh, now=LATER, lookback=None) == 6  # both hours' flush files
    named = [r for r in caplog.records if str(odd) in r.getMessage()]
    assert len(named) == 1 and named[0].levelno == logging.ERROR, caplog.text
    assert named[0].getMessage() == (
        f"the Parquet file {odd} holds column timestamp as int64 where the table has "
        f"timestamp: {ADVICE} with the table's types (`logq ddl` shows them); compaction "
        "merges the rest of its partition without it until then"
    )
    assert odd.read_bytes() == data and odd.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name[:2] for p in folder.glob("*.parquet")) == ["0-", "c-"]
    assert messages(folder, skip=odd) == truth  # no row lost, none twice

    caplog.clear()  # the next pass: named again, once; nothing else to merge
    assert compact_warehouse(wh, now=LATER, lookback=None) == 0
    assert len([r for r in caplog.records if str(odd) in r.getMessage()]) == 1
    assert odd.read_bytes() == data


@pytest.mark.parametrize("kind", ["iso_text", "words"])
def test_a_text_file_is_left_alone_and_the_rest_merged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """``compact`` exits 0 and names the file after its count; the other partitions (and the
    rest of this one) are merged, row for row. HEAD parsed ISO text into times, and failed the
    partition on words (exit 1, the partition named, its files left unmerged at every pass)."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=4, rows_per_file=25, service="aaa")
    flush_files(uri, files=3, rows_per_file=25, service="zzz")
    folder, other = folder_of(uri, "aaa"), folder_of(uri, "zzz")
    truth, other_truth = messages(folder), messages(other)
    odd = add_file(folder, "z-foreign.parquet", foreign(kind))
    data = odd.read_bytes()

    assert compact_main(["--warehouse", uri, "--all", "--grace-minutes", "0", "--force"]) == 0
    err = capsys.readouterr().err
    assert "compacted 14 files" in err, err
    assert f"the Parquet file {odd} holds column timestamp as string where the table " in err
    assert (
        f"logq-aggregator compact: 1 Parquet file that logq did not write (columns the table's "
        f"types cannot hold) was left in place, out of the merges: {odd}; move it out of the "
        "table's folder or rewrite it with the table's types (`logq ddl` shows them)"
    ) in err.splitlines()
    assert odd.read_bytes() == data
    assert sorted(p.name[:2] for p in folder.glob("*.parquet")) == ["c-", "z-"]
    assert [p.name[:2] for p in other.glob("*.parquet")] == ["c-"]
    assert messages(folder, skip=odd) == truth and messages(other) == other_truth
    assert sum(messages(folder, skip=odd).values()) == 100


def test_an_older_schema_file_is_merged_beside_a_foreign_one(tmp_path: Path) -> None:
    """A file that only lacks a column (an older logq schema) is no foreign file: it is merged,
    its missing column null, while the foreign file beside it is left out. (HEAD failed the
    whole partition on the foreign file, the older one with it.)"""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=2, rows_per_file=10)
    folder = folder_of(uri)
    truth = messages(folder)

    def older(t: pa.Table) -> pa.Table:
        renamed = t.set_column(
            t.schema.get_field_index("message"),
            "message",
            pa.array([f"old-{m}" for m in t["message"].to_pylist()]),
        )
        return renamed.drop_columns(["stream"])

    old = add_file(folder, "a-older.parquet", older)
    odd = add_file(folder, "0-foreign.parquet", foreign("words"))
    truth.update(pq.read_table(old)["message"].to_pylist())

    assert compact_warehouse(open_warehouse(uri), now=LATER, lookback=None) == 5
    assert not old.exists() and odd.exists()
    (merged,) = folder.glob("c-*.parquet")
    table = pq.read_table(merged)
    assert Counter(table["message"].to_pylist()) == truth
    rows = zip(table["message"].to_pylist(), table["stream"].to_pylist(), strict=True)
    streams = [s for m, s in rows if m.startswith("old-")]
    assert len(streams) == 10 and set(streams) == {None}


def finer_times(unit: str, tz: str | None) -> Callable[[pa.Table], pa.Table]:
    """The rows' times in ``unit`` (and ``tz``), as pandas and Spark write them, each 999
    microseconds later (``.000999``); the first row in the hour's last millisecond
    (``HH:59:59.999999``). (Not a nanosecond before the next millisecond: DuckDB rounds
    nanoseconds to its microseconds, and ``logq`` shows ``HH:59:59.999999999`` as the next
    hour's first millisecond.)"""
    per_ms = {"us": 1000, "ns": 1_000_000}[unit]

    def change(t: pa.Table) -> pa.Table:
        ms = t["timestamp"].cast(pa.int64()).to_pylist()
        ms[0] = int((HOUR + timedelta(hours=1)).timestamp() * 1000) - 1
        times = pa.array([v * per_ms + per_ms - per_ms // 1000 for v in ms], pa.int64())
        return t.set_column(
            t.schema.get_field_index("timestamp"), "timestamp", times.cast(pa.timestamp(unit, tz))
        )

    return change


def logq_rows(uri: str) -> str:
    """What ``logq sql`` shows of the table's rows (the local engine)."""
    from typer.testing import CliRunner

    from cli.app import app

    sql = "SELECT message, timestamp FROM container_logs ORDER BY message, timestamp"
    run = CliRunner().invoke(app, ["sql", sql, "-f", "csv", "--warehouse", uri])
    assert run.exit_code == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize(("unit", "tz"), [("us", "UTC"), ("ns", None), ("us", "America/New_York")])
def test_a_file_of_finer_times_is_merged_floored_to_milliseconds(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    unit: str,
    tz: str | None,
) -> None:
    """A file whose times are finer than the table's milliseconds (pandas, Spark) is no foreign
    file: ``logq`` reads it, and shows its times in milliseconds. The merge's safe cast refused
    its sub-millisecond values (``would lose data``), failing its partition at every pass. Now
    they are floored: ``logq`` shows the same rows after the merge as before, and a time in the
    hour's last millisecond stays in it (rounding would carry it into the next hour)."""
    monkeypatch.setenv("LOGQ_CACHE_DIR", str(tmp_path / "cache"))
    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=5)
    folder = folder_of(uri)
    first = pq.read_table(sorted(folder.glob("n-*.parquet"))[0])
    fine = add_file(folder, "u-finer.parquet", finer_times(unit, tz))
    truth = messages(folder)
    shown = logq_rows(uri)

    caplog.set_level(logging.INFO, "logq.aggregator.compaction")
    assert compact_warehouse(open_warehouse(uri), now=LATER, lookback=None) == 7
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not fine.exists()
    (merged,) = folder.glob("*.parquet")
    table = pq.read_table(merged)
    assert Counter(table["message"].to_pylist()) == truth  # no row lost, none twice
    hour_end = int((HOUR + timedelta(hours=1)).timestamp() * 1000)
    times = Counter(table["timestamp"].cast(pa.int64()).to_pylist())
    copied = [hour_end - 1, *first["timestamp"].cast(pa.int64()).to_pylist()[1:]]
    assert all(times[t] >= 1 for t in copied) and max(times) == hour_end - 1
    assert logq_rows(uri) == shown


def test_a_dictionary_encoded_file_is_merged(tmp_path: Path) -> None:
    """A string column dictionary-encoded (pandas' categories, as pyarrow writes them) is of
    its values' kind: ``logq`` reads it, and it is merged, not left out as foreign."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=2, rows_per_file=10)
    folder = folder_of(uri)

    def encoded(t: pa.Table) -> pa.Table:
        index = t.schema.get_field_index("message")
        return t.set_column(index, "message", t["message"].dictionary_encode())

    add_file(folder, "d-encoded.parquet", encoded)
    truth = messages(folder)
    assert compact_warehouse(open_warehouse(uri), now=LATER, lookback=None) == 5
    (merged,) = folder.glob("*.parquet")
    assert Counter(pq.read_table(merged)["message"].to_pylist()) == truth


def test_finer_times_are_floored_in_utc_whatever_their_zone() -> None:
    """Flooring in the column's zone (``floor_temporal`` does) raises on the hour a zone with
    summer time repeats (01:30 on 2026-11-01 in New York); the instants are floored as UTC."""
    at = datetime(2026, 11, 1, 5, 30, 0, 123456, UTC)  # 01:30:00.123456 EDT, repeated in EST
    micros = int(at.timestamp()) * 1_000_000 + at.microsecond
    for tz in ("America/New_York", "UTC", None):
        column = pa.array([micros, -1], pa.timestamp("us", tz))
        spec = table_spec("container_logs")
        got = _conform(pa.table({"timestamp": column}), spec)["timestamp"]
        assert got.cast(pa.int64()).to_pylist() == [micros // 1000, -1], tz


def envoy_folder(uri: str) -> Path:
    """Three logq files of 60 envoy_access rows in the closed hour ``HOUR``; their folder."""
    frame = access_frame(60, HOUR, HOUR + timedelta(minutes=50), ["recipe"])
    written = write_frame(uri, "envoy_access", frame, files_per_partition=3)
    return Path(written[0]).parent


def request_ids(folder: Path, skip: Path | None = None) -> Counter[str]:
    """The ``request_id`` of every visible Parquet file of ``folder`` but ``skip``."""
    return values_of("request_id", folder, skip)


#: Microseconds since 1970 in year 26059 (three times year 9999's end), as a clock bug writes.
FAR_US = 253402300800 * 3 * 1_000_000

#: Values a footer's types allow but the table's do not: the column, its values from the rows
#: copied, and how the ERROR names them.
BEYOND: dict[str, tuple[str, Callable[[pa.Table], pa.Array], str]] = {
    "code_huge": (
        "response_code",
        lambda t: pa.array([200] * (len(t) - 1) + [3_000_000_000], pa.int64()),
        "with values 200 to 3000000000, beyond the table's int",
    ),
    "ts_far": (
        "timestamp",
        lambda t: pa.array([FAR_US] * len(t), pa.timestamp("us", "UTC")),
        f"with values {FAR_US} to {FAR_US} (us since 1970), beyond the table's timestamp "
        "(years 1 to 9999)",
    ),
}


def beyond(kind: str) -> Callable[[pa.Table], pa.Table]:
    column, values, _ = BEYOND[kind]
    return lambda t: t.set_column(t.schema.get_field_index(column), column, values(t))


@pytest.mark.parametrize("kind", list(BEYOND))
def test_a_file_of_values_beyond_the_table_types_is_left_alone_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Its types are of the table's kinds (int64 for int, microseconds for milliseconds): its
    footer's statistics tell the values. HEAD failed the partition's merge at every pass on
    the int64 code (pyarrow's "Integer value 3000000000 not in range", naming the partition
    only), and merged the far times into a file of logq's, which `logq services` then named
    as one logq did not write, with every row of the hour in it."""
    uri = str(tmp_path / "wh")
    folder = envoy_folder(uri)
    truth = request_ids(folder)
    odd = add_file(folder, "z-foreign.parquet", beyond(kind), "part-*")
    data = odd.read_bytes()

    assert compact_main(["--warehouse", uri, "--all", "--grace-minutes", "0", "--force"]) == 0
    err = capsys.readouterr().err
    assert "compacted 3 files" in err, err
    column, _, values = BEYOND[kind]
    assert (
        f"the Parquet file {odd} holds column {column} {values}: {ADVICE} with the table's " in err
    )
    assert f"was left in place, out of the merges: {odd}; " in err
    assert odd.read_bytes() == data
    assert sorted(p.name[:2] for p in folder.glob("*.parquet")) == ["c-", "z-"]
    assert request_ids(folder, skip=odd) == truth  # no row lost, none twice


def test_a_wider_file_of_values_the_table_holds_is_merged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An int64 ``response_code`` whose values fit the table's int is no foreign file: it is
    merged, its codes cast to int."""
    uri = str(tmp_path / "wh")
    folder = envoy_folder(uri)

    def wider(t: pa.Table) -> pa.Table:
        index = t.schema.get_field_index("response_code")
        return t.set_column(index, "response_code", t["response_code"].cast(pa.int64()))

    copied = add_file(folder, "w-wider.parquet", wider, "part-*")
    truth = request_ids(folder)
    codes: Counter[int] = Counter()
    for path in folder.glob("*.parquet"):
        codes.update(pq.read_table(path)["response_code"].to_pylist())
    caplog.set_level(logging.INFO, "logq.aggregator.compaction")
    assert compact_warehouse(open_warehouse(uri), now=LATER, lookback=None) == 4
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not copied.exists()
    (merged,) = folder.glob("*.parquet")
    table = pq.read_table(merged)
    assert table.schema.field("response_code").type == pa.int32()
    assert request_ids(folder) == truth  # no row lost, none twice
    assert Counter(table["response_code"].to_pylist()) == codes


def test_a_cast_failure_without_statistics_names_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file written without statistics tells nothing before its rows are read: its merge's
    cast still fails, but the error names the file (HEAD: the partition and pyarrow's words
    only), and the partition's files stay as they were."""
    uri = str(tmp_path / "wh")
    folder = envoy_folder(uri)
    first = sorted(folder.glob("part-*.parquet"))[0]
    odd = folder / "z-foreign.parquet"
    pq.write_table(beyond("code_huge")(pq.read_table(first)), odd, write_statistics=False)
    before = sorted(p.name for p in folder.glob("*.parquet"))

    caplog.set_level(logging.INFO, "logq.aggregator.compaction")
    with pytest.raises(CompactionFailed) as failed:
        compact_warehouse(open_warehouse(uri), now=LATER, lookback=None)
    assert failed.value.failed == [str(folder)]
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.startswith(
        f"compaction of {folder} failed: the Parquet file {odd} holds values the table's types "
        "cannot hold (Integer value 3000000000 not in range"
    ), error
    assert f"{ADVICE} with the table's types (`logq ddl` shows them); its partition is" in error
    assert sorted(p.name for p in folder.glob("*.parquet")) == before


@pytest.mark.parametrize("name", ["Recipe", "recipe=x", "%2Frecipe"])
def test_a_service_folder_no_reader_reads_is_left_alone(tmp_path: Path, name: str) -> None:
    """A ``service=`` folder named as no aggregator names one (copied in by hand): no reader
    reads it (athena.stray_folders), so compaction does not rewrite it either; the real one
    beside it is compacted."""
    import shutil

    uri = str(tmp_path / "wh")
    flush_files(uri, files=3, rows_per_file=10)
    real = folder_of(uri)
    stray = real.parent.parent / f"service={name}" / real.name
    shutil.copytree(real, stray)
    before = sorted(p.name for p in stray.iterdir())
    merged = compact_warehouse(open_warehouse(uri), now=LATER, lookback=None)
    assert merged == 3 + 3  # the real folder's two hours: 3 files each
    assert sorted(p.name for p in stray.iterdir()) == before
    assert [p.name[:2] for p in real.glob("*.parquet")] == ["c-"]
