"""A merge whose input deletes failed leaves its inputs beside its complete output until the next
compaction pass: the local engine reads each row once all the same (``athena/intents.py``).

The merges are the real compactor's, with the failure injected where it happens (the delete
step), on a local warehouse and on a real S3 server (SeaweedFS); counts are exact, before and
after the next pass finishes the merge.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import aggregator.compaction.attempt as attempt_mod
import aggregator.storage as storage
from aggregator.compaction.passes import CompactionFailed, compact_warehouse
from aggregator.storage import StorageError
from athena.engines.local import LocalEngine
from athena.intents import INTENT_PREFIX, superseded
from athena.partitions import list_files
from athena.timerange import TimeRange
from athena.warehouse import Warehouse, open_warehouse
from tests.athena.factory import access_frame, utc, write_frame

START, END = utc(2026, 11, 27, 22, 0), utc(2026, 11, 28, 1, 0)
#: Every hour written is closed (and its files old enough) for a pass "run" then.
LATER = datetime.now(UTC) + timedelta(days=1)
BY_SERVICE = "SELECT service, count(*) AS n FROM envoy_access GROUP BY service ORDER BY service"


def written(uri: str) -> pd.DataFrame:
    """Three hours of two services, four flush files per partition-hour."""
    frame = access_frame(900, START, END, ["a", "b"], seed=11)
    write_frame(uri, "envoy_access", frame, files_per_partition=4)
    return frame


def counts(frame: pd.DataFrame) -> list[tuple[str, int]]:
    return sorted(Counter(frame["service"]).items())


def answer(uri: str) -> list[tuple[Any, ...]]:
    """What ``logq sql`` answers: the local engine over the planner's files."""
    return LocalEngine(uri).run(BY_SERVICE, {}).rows


def leftovers(wh: Warehouse) -> list[str]:
    """The intents in the warehouse's partitions."""
    selector = pafs.FileSelector(wh.table_root("envoy_access"), recursive=True)
    return [i.path for i in wh.fs.get_file_info(selector) if i.base_name.startswith(INTENT_PREFIX)]


def raw_visible_rows(wh: Warehouse) -> int:
    """Rows in every ``*.parquet`` not hidden by its name: what a reader without the intent
    rule (Athena) counts."""
    selector = pafs.FileSelector(wh.table_root("envoy_access"), recursive=True)
    names = [
        i.path
        for i in wh.fs.get_file_info(selector)
        if i.base_name.endswith(".parquet") and not i.base_name.startswith(("_", "."))
    ]
    return sum(pq.read_metadata(p, filesystem=wh.fs).num_rows for p in names)


def check_failed_merge_then_next_pass(uri: str, frame: pd.DataFrame, fail: Any) -> None:
    """Run a pass with ``fail`` in place (a context that breaks the deletes), then check the
    answers are exact, then run the next pass unbroken and check them again."""
    wh = open_warehouse(uri)
    truth = counts(frame)
    assert answer(uri) == truth
    with fail, pytest.raises(CompactionFailed):
        compact_warehouse(wh, now=LATER, lookback=None, tables=["envoy_access"])
    assert leftovers(wh), "the failed merges' intents stay for the next pass"
    assert raw_visible_rows(wh) > len(frame), "inputs and outputs are both there"
    assert answer(uri) == truth  # each row once, while the merges wait for their deletes
    hour = TimeRange.parse("2026-11-27T23:00:00Z", "2026-11-28T00:00:00Z")
    engine = LocalEngine(uri)
    scoped = engine.run(
        "SELECT count(*) AS n FROM envoy_access",
        {},
        {"envoy_access": engine.plan("envoy_access", ["a"], hour)},
    )
    in_hour = frame[(frame["service"] == "a") & (frame["timestamp"] >= hour.since)]
    assert scoped.rows == [(int((in_hour["timestamp"] < hour.until).sum()),)]

    assert compact_warehouse(wh, now=LATER, lookback=None, tables=["envoy_access"]) == 0
    assert leftovers(wh) == []
    assert raw_visible_rows(wh) == len(frame)
    assert answer(uri) == truth


class _Patched:
    """A context that sets an attribute for its duration (pytest's monkeypatch.context, which
    the helper above takes as a plain context manager)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: object, name: str, value: Any):
        self.ctx = monkeypatch.context()
        self.target, self.name, self.value = target, name, value

    def __enter__(self) -> None:
        patch = self.ctx.__enter__()
        patch.setattr(self.target, self.name, self.value)

    def __exit__(self, *exc: object) -> None:
        self.ctx.__exit__(*exc)


def test_a_merge_whose_deletes_failed_is_read_once_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses the deletes (as DeleteObjects answering 503 SlowDown would): every
    merged partition keeps its inputs and its intent beside the complete output."""
    uri = str(tmp_path / "wh")
    frame = written(uri)

    def refused(wh: Warehouse, paths: list[str]) -> None:
        raise StorageError("DeleteObjects failed (503 SlowDown)")

    check_failed_merge_then_next_pass(
        uri, frame, _Patched(monkeypatch, attempt_mod, "delete_objects", refused)
    )


class _RefusingOne:
    """The warehouse's S3 client, whose DeleteObjects leaves out (and reports as refused, as S3
    reports a key a policy denies) the second key of every batch: some inputs of each merge
    are deleted, some are not."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def delete_objects(self, Bucket: str, Delete: dict) -> dict:
        refused = Delete["Objects"][1:2]
        keep = [o for o in Delete["Objects"] if o not in refused]
        answer = self.real.delete_objects(Bucket=Bucket, Delete={**Delete, "Objects": keep})
        errors = [{"Key": o["Key"], "Code": "AccessDenied", "Message": "denied"} for o in refused]
        return {**answer, "Errors": [*answer.get("Errors", []), *errors]}


@pytest.mark.s3
@pytest.mark.integration
def test_a_merge_whose_deletes_failed_is_read_once_on_s3(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 the planner lists a service folder whole (one recursive listing) or hour by hour;
    both skip the replaced inputs."""
    from athena.warehouse import s3_client

    frame = written(s3_warehouse)
    wh = open_warehouse(s3_warehouse)
    assert wh.s3 is not None
    client = _RefusingOne(s3_client(wh.s3))
    check_failed_merge_then_next_pass(
        s3_warehouse, frame, _Patched(monkeypatch, storage, "s3_client", lambda _: client)
    )


# --- the rule, case by case (a local folder; the S3 listing applies the same function) ---------


@pytest.fixture
def hour_folder(tmp_path: Path) -> tuple[str, Path, list[str], int]:
    """One partition-hour of 4 files: (uri, folder, file names, rows)."""
    uri = str(tmp_path / "wh")
    frame = access_frame(200, START, START + timedelta(hours=1), ["a"], seed=4)
    paths = write_frame(uri, "envoy_access", frame, files_per_partition=4)
    folder = Path(paths[0]).parent
    return uri, folder, sorted(Path(p).name for p in paths), len(frame)


def _intent(folder: Path, inputs: list[str], output: str, rows: int) -> None:
    body = {"inputs": inputs, "output": output, "rows": rows}
    (folder / f"{INTENT_PREFIX}{output[2:-8]}.json").write_text(json.dumps(body))


def _merged(folder: Path, inputs: list[str], output: str, keep_rows: int | None = None) -> int:
    """Write ``output`` holding the rows of ``inputs`` (the first ``keep_rows`` only: a short
    file); return the inputs' row count."""
    table = pq.read_table([str(folder / n) for n in inputs], partitioning=None)
    pq.write_table(table if keep_rows is None else table.slice(0, keep_rows), folder / output)
    return table.num_rows


def _names(uri: str, folder: Path) -> list[str]:
    return [Path(f.path).name for f in list_files(open_warehouse(uri), str(folder))]


def _rows(uri: str) -> int:
    return LocalEngine(uri).run("SELECT count(*) FROM envoy_access", {}).rows[0][0]


def test_a_complete_output_stands_for_its_inputs(hour_folder) -> None:
    uri, folder, names, rows = hour_folder
    merged = names[:3]
    _intent(folder, merged, "c-0001.parquet", _merged(folder, merged, "c-0001.parquet"))
    assert _names(uri, folder) == ["c-0001.parquet", names[3]]
    assert _rows(uri) == rows


def test_the_athena_scan_budget_counts_what_athena_reads_inputs_included(
    hour_folder,
) -> None:
    """Athena cannot skip the inputs of a merge whose deletes are pending: ``--max-scan-bytes``
    on Athena must count them (it counted what the local engine reads, so it let through
    queries that then scanned more than the budget)."""
    from types import SimpleNamespace

    from cli.runner import partition_bytes

    uri, folder, names, _ = hour_folder
    merged = names[:3]
    _intent(folder, merged, "c-0005.parquet", _merged(folder, merged, "c-0005.parquet"))
    on_disk = sum((folder / n).stat().st_size for n in [*names, "c-0005.parquet"])
    read_locally = sum(f.size for f in list_files(open_warehouse(uri), str(folder)))
    assert read_locally < on_disk
    common: Any = SimpleNamespace(warehouse=uri)  # all partition_bytes reads of the options
    hour = TimeRange.parse("2026-11-27T22:00:00Z", "2026-11-27T23:00:00Z")
    assert partition_bytes(common, ["envoy_access"], ["a"], hour) == on_disk
    assert partition_bytes(common, ["envoy_access"], None, None) == on_disk


def test_a_short_output_is_skipped_and_its_inputs_read(hour_folder) -> None:
    """Cut short (a streamed S3 merge that failed, before its rollback deletes it): the inputs
    are the truth, as compaction's recovery decides."""
    uri, folder, names, rows = hour_folder
    _intent(folder, names[:2], "c-0002.parquet", _merged(folder, names[:2], "c-0002.parquet", 5))
    assert _names(uri, folder) == names
    assert _rows(uri) == rows
    (folder / "c-0002.parquet").write_bytes(b"PAR1 cut")  # not Parquet at all: skipped too
    assert _names(uri, folder) == names


def test_an_intent_without_its_output_hides_nothing(hour_folder) -> None:
    """A merge under way (its output not written yet) or rolled back: every input counts."""
    uri, folder, names, rows = hour_folder
    _intent(folder, names[:2], "c-0003.parquet", 10)
    assert _names(uri, folder) == names
    assert _rows(uri) == rows


@pytest.mark.parametrize("junk", ['{"inputs": ', "[" * 200_000], ids=["cut", "nested-deep"])
def test_an_unreadable_intent_hides_nothing(hour_folder, junk: str) -> None:
    """Cut short, or nested too deeply for Python's JSON reader (a RecursionError traceback
    from every query of the hour)."""
    uri, folder, names, rows = hour_folder
    (folder / f"{INTENT_PREFIX}junk.json").write_text(junk)
    assert _names(uri, folder) == names
    assert _rows(uri) == rows


class _NoReads:
    """The warehouse filesystem, listing as usual but failing any read of a file."""

    def __init__(self, fs: pafs.FileSystem) -> None:
        self.fs = fs

    def get_file_info(self, what: Any) -> Any:
        return self.fs.get_file_info(what)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the planner called {name} on a folder without an intent")


def test_a_folder_without_an_intent_costs_only_its_listing(hour_folder) -> None:
    uri, folder, names, _ = hour_folder
    wh = open_warehouse(uri)
    quiet = Warehouse(uri=wh.uri, fs=_NoReads(wh.fs), base=wh.base)  # type: ignore[arg-type]
    assert [Path(f.path).name for f in list_files(quiet, str(folder))] == names
    _intent(folder, names[:2], "c-0004.parquet", _merged(folder, names[:2], "c-0004.parquet"))
    with pytest.raises(AssertionError, match="open_input_stream"):
        list_files(quiet, str(folder))  # with one, the intent is read


class _GoneBeforeTheRead:
    """The warehouse filesystem; an intent opened for reading is deleted before its first read
    (on S3: after the HEAD that opens the stream, before the GET), as when its merge finishes
    while a reader plans a query over that hour."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def open_input_stream(self, path: str) -> Any:
        stream = self.fs.open_input_stream(path)
        if Path(path).name.startswith(INTENT_PREFIX):
            self.fs.delete_file(path)
        return stream


@pytest.mark.s3
@pytest.mark.integration
def test_an_intent_finished_between_open_and_read_on_s3_hides_nothing(s3_warehouse: str) -> None:
    """The merge finished (inputs, then its intent deleted) between the reader's listing and
    its read of the intent: the read fails with a bare OSError on S3, which must count as
    "gone" (nothing skipped), not fail the query with a raw AWS error."""
    wh = open_warehouse(s3_warehouse)
    folder = wh.path("envoy_access/service=a/dt=2026-11-27-22")
    output = "c-00000000000000000001.parquet"
    inputs = ["0000aaaaaaaa-0000000000000001-0000.parquet"]
    intent = f"{folder}/{INTENT_PREFIX}00000000000000000001.json"
    with wh.fs.open_output_stream(intent) as out:
        out.write(json.dumps({"inputs": inputs, "output": output, "rows": 1}).encode())
    gone = _GoneBeforeTheRead(wh.fs)
    names = [*inputs, output, Path(intent).name]
    assert superseded(gone, folder, names) == frozenset()  # type: ignore[arg-type]
    assert wh.fs.get_file_info(intent).type == pafs.FileType.NotFound
