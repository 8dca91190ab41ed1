"""A reader's listing of a folder that takes several pages, while compaction merges in it: no
row is missed (nor read twice).

An S3 LIST returns 1,000 keys per request; a bigger folder (or a service walked recursively) is
listed in several requests, each starting after the last key of the one before. A merge that
commits between two of them -- its output ``c-<id>`` sorting on a page listed before it was
written, its inputs on one listed after they were deleted -- is missed whole: the files read are
all there, so nothing fails, and the answer lacks rows.

The tear is made deterministic here: :class:`_TwoPages` wraps the warehouse filesystem and
answers the first listing of one folder as S3 would across a page boundary: the entries up to a
key as they were, then a real compaction pass (the compactor's own code, on the unwrapped
filesystem), then the entries after that key as they are now. The reader's page size is
lowered so that a folder of a few files counts as a listing of several pages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from aggregator.compaction.passes import compact_warehouse
from athena import partitions
from athena.partitions import ListingUnsettled, Partition, plan
from athena.schema import ENVOY_ACCESS, is_compacted_object
from athena.timerange import TimeRange
from athena.warehouse import Warehouse, open_warehouse
from tests.athena.factory import access_frame, utc

HOUR = utc(2026, 11, 27, 23, 0)
FOLDER = "envoy_access/service=big/dt=2026-11-27-23"
#: Large files (left alone by the merge), the last one ending the first page, then two small
#: flush files on the second page, which the pass merges into a ``c-<id>`` sorting on the first.
LARGE = [f"{i:04d}aaaaaaaa-0000000000000001-0000.parquet" for i in range(4)]
PAGE_END = "c3aaaaaaaaaa-0000000000000001-0000.parquet"
SMALL = ["d10000000000-0000000000000001-0000.parquet", "d20000000000-0000000000000001-0000.parquet"]
LARGE_ROWS = 300
#: Every hour written is closed, its files past the grace, for a pass "run" then.
LATER = datetime.now(UTC) + timedelta(days=1)


def _write(wh: Warehouse, name: str, rows: int, seed: int) -> int:
    """One file of ``rows`` rows in :data:`FOLDER`; returns its size."""
    frame = access_frame(rows, HOUR, HOUR + timedelta(hours=1), ["big"], seed=seed)
    table = pa.Table.from_pandas(
        frame.drop(columns=["service"]), schema=ENVOY_ACCESS.arrow_schema(), preserve_index=False
    ).replace_schema_metadata(None)
    path = wh.path(FOLDER, name)
    pq.write_table(table, path, filesystem=wh.fs, compression="zstd")
    return wh.fs.get_file_info(path).size or 0


def _layout(wh: Warehouse) -> int:
    """The partition above; returns the target size that merges the small files only."""
    if not wh.is_s3:
        wh.fs.create_dir(wh.path(FOLDER), recursive=True)
    large = [_write(wh, name, LARGE_ROWS, i) for i, name in enumerate([*LARGE, PAGE_END])]
    small = [_write(wh, name, 1, 10 + i) for i, name in enumerate(SMALL)]
    assert max(small) < min(large)
    return 2 * min(large)  # large files are "big enough" (>= target/2), two small ones fit


class _TwoPages:
    """The warehouse filesystem; the first listing that holds the files of ``folder`` (its own,
    or a service's walk) is torn after :data:`PAGE_END` by ``between`` (a merge), as an S3
    listing of two pages can be. Counts the listings of those files."""

    def __init__(self, fs: Any, folder: str, between: Callable[[], None]) -> None:
        self.fs, self.folder, self.between = fs, folder, between
        self.listings = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def get_file_info(self, what: Any) -> Any:
        if getattr(what, "base_dir", None) is None:
            return self.fs.get_file_info(what)
        first = sorted(self.fs.get_file_info(what), key=lambda i: i.path)
        ends = [i for i, info in enumerate(first) if info.path == f"{self.folder}/{PAGE_END}"]
        if not ends:  # a listing that does not hold the folder's files
            return first
        self.listings += 1
        if self.listings > 1:
            return first
        cut = ends[0] + 1
        self.between()
        now = sorted(self.fs.get_file_info(what), key=lambda i: i.path)
        return first[:cut] + [i for i in now if i.path > first[cut - 1].path]


def _rows(wh: Warehouse, parts: list[Partition]) -> int:
    return sum(pq.read_metadata(f.path, filesystem=wh.fs).num_rows for p in parts for f in p.files)


def _check_merge_between_pages(wh: Warehouse, trange: TimeRange | None) -> _TwoPages:
    """Plan the query while a pass merges the small files between the two pages: every row is
    read once; returns the wrapper (its listings)."""
    target = _layout(wh)
    want = len(LARGE) * LARGE_ROWS + LARGE_ROWS + len(SMALL)
    assert _rows(wh, plan(wh, "envoy_access", ["big"], trange)) == want

    def merge() -> None:
        assert compact_warehouse(
            wh, target_bytes=target, now=LATER, lookback=None, tables=["envoy_access"]
        ) == len(SMALL)

    torn = _TwoPages(wh.fs, wh.path(FOLDER), merge)
    seen = Warehouse(uri=wh.uri, fs=torn, base=wh.base)  # type: ignore[arg-type]
    parts = plan(seen, "envoy_access", ["big"], trange)
    assert _rows(wh, parts) == want
    names = [f.path.rsplit("/", 1)[1] for p in parts for f in p.files]
    assert sum(map(is_compacted_object, names)) == 1, names  # the merge's output, read
    assert not set(SMALL) & set(names)
    return torn


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing of 4 entries or more counts as one of several pages (really: 1,000 on S3)."""
    monkeypatch.setattr(partitions, "S3_PAGE_ENTRIES", 4)
    monkeypatch.setattr(partitions, "LOCAL_PAGE_ENTRIES", 4)


HOUR_RANGE = ("2026-11-27T23:00:00Z", "2026-11-28T00:00:00Z")


@pytest.mark.parametrize("bounds", [None, HOUR_RANGE], ids=["every-hour", "one-hour"])
def test_local_merge_between_two_pages_of_a_listing_loses_no_row(
    tmp_path: Path, small_pages: None, bounds: tuple[str, str] | None
) -> None:
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    torn = _check_merge_between_pages(wh, TimeRange.parse(*bounds) if bounds else None)
    assert torn.listings == 3  # torn, then one that disagreed with it, then one that agreed


@pytest.mark.s3
@pytest.mark.integration
@pytest.mark.parametrize(
    ("bounds", "listings"), [(None, 4), (HOUR_RANGE, 3)], ids=["walked", "one-hour"]
)
def test_s3_merge_between_two_pages_of_a_listing_loses_no_row(
    s3_warehouse: str, small_pages: None, bounds: tuple[str, str] | None, listings: int
) -> None:
    """On S3 both ways of listing: the whole service walked (every hour) and one folder. A
    walk that disagrees with the next one in an hour lists that hour again on its own (twice
    here: it holds 4 files or more, "several pages" at the lowered page size)."""
    wh = open_warehouse(s3_warehouse)
    torn = _check_merge_between_pages(wh, TimeRange.parse(*bounds) if bounds else None)
    assert torn.listings == listings


class _Changing:
    """The warehouse filesystem; ``before`` runs before each listing of ``folder``."""

    def __init__(self, fs: Any, folder: str, before: Callable[[int], None]) -> None:
        self.fs, self.folder, self.before = fs, folder, before
        self.listings = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def get_file_info(self, what: Any) -> Any:
        if getattr(what, "base_dir", None) == self.folder:
            self.listings += 1
            self.before(self.listings)
        return self.fs.get_file_info(what)


def test_flush_files_arriving_between_listings_are_no_reason_to_list_again(
    tmp_path: Path, small_pages: None
) -> None:
    """An open hour gets new flush files all the time: the listing is taken as soon as the next
    one shows only those, never retried until the folder stops changing."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _layout(wh)

    def flush(n: int) -> None:
        _write(wh, f"e{n:011d}-0000000000000001-0000.parquet", 1, 20 + n)

    changing = _Changing(wh.fs, wh.path(FOLDER), flush)
    seen = Warehouse(uri=wh.uri, fs=changing, base=wh.base)  # type: ignore[arg-type]
    files = partitions.list_files(seen, wh.path(FOLDER))
    assert changing.listings == 2
    first_flush = "e00000000001-0000000000000001-0000.parquet"  # the one before the first listing
    assert [f.path.rsplit("/", 1)[1] for f in files] == [*LARGE, PAGE_END, *SMALL, first_flush]


def test_a_folder_that_never_settles_fails_with_advice(tmp_path: Path, small_pages: None) -> None:
    """A new merge output before every listing: after a bounded number of listings the plan
    fails (exit 1 in the CLI) and says what to do, rather than answer from a torn listing."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _layout(wh)
    source = wh.path(FOLDER, LARGE[0])

    def merged(n: int) -> None:
        wh.fs.copy_file(source, wh.path(FOLDER, f"c-{n:020x}.parquet"))

    changing = _Changing(wh.fs, wh.path(FOLDER), merged)
    seen = Warehouse(uri=wh.uri, fs=changing, base=wh.base)  # type: ignore[arg-type]
    with pytest.raises(ListingUnsettled, match=r"changed between each of 6 listings.*again"):
        plan(seen, "envoy_access", ["big"], TimeRange.parse(*HOUR_RANGE))
    assert changing.listings == partitions.SETTLE_LISTINGS
    assert isinstance(ListingUnsettled("x"), OSError)  # the CLI's exit 1 with the message
    assert pafs.FileType.File == wh.fs.get_file_info(source).type


#: A range of more than :data:`partitions.PROBE_MAX_HOURS` hours holding :data:`HOUR` but not
#: :data:`OLD_HOUR`: with those two folders only, it holds half of them, so it is walked on S3.
WALKED_RANGE = ("2026-11-27T14:00:00Z", "2026-11-28T00:00:00Z")
OLD_HOUR = "envoy_access/service=big/dt=2026-11-27-10"


class _Walks(_Changing):
    """:class:`_Changing` for the recursive listings (walks) of ``folder`` only."""

    def get_file_info(self, what: Any) -> Any:
        if getattr(what, "recursive", False):
            return super().get_file_info(what)
        return self.fs.get_file_info(what)


@pytest.mark.s3
@pytest.mark.integration
@pytest.mark.parametrize("expiring", [OLD_HOUR, FOLDER], ids=["out-of-range", "in-range"])
def test_s3_walk_settles_hour_by_hour_while_an_hour_loses_files(
    s3_warehouse: str, small_pages: None, expiring: str
) -> None:
    """An S3 lifecycle rule expires an hour's files one by one (compaction merging an hour
    changes its folder the same way) before every walk of the service. The walk is settled
    hour by hour: an hour out of the range is not read, so its changes never make the plan
    list again; one in range is listed again on its own. Before, every walk disagreed with
    the next, and the plan failed with ListingUnsettled on a service that only lost old files.
    """
    wh = open_warehouse(s3_warehouse)
    _layout(wh)
    doomed = [f"{i:04d}eeeeeeee-0000000000000001-0000.parquet" for i in range(8)]
    for i, name in enumerate(doomed):
        target = wh.path(expiring, name)
        wh.fs.copy_file(wh.path(FOLDER, SMALL[0]), target)
        if expiring == OLD_HOUR:
            wh.fs.copy_file(wh.path(FOLDER, SMALL[i % 2]), wh.path(OLD_HOUR, f"x{i}.parquet"))

    def expire(n: int) -> None:
        wh.fs.delete_file(wh.path(expiring, doomed[n - 1]))

    walks = _Walks(wh.fs, wh.path("envoy_access/service=big"), expire)
    seen = Warehouse(uri=wh.uri, fs=walks, base=wh.base)  # type: ignore[arg-type]
    parts = plan(seen, "envoy_access", ["big"], TimeRange.parse(*WALKED_RANGE))
    assert walks.listings == 2  # two walks, never more: only an hour is listed again
    assert [p.dt for p in parts] == ["2026-11-27-23"]
    names = {f.path.rsplit("/", 1)[1] for f in parts[0].files}
    still = set(doomed[2:]) if expiring == FOLDER else set()  # two gone before the two walks
    assert names == {*LARGE, PAGE_END, *SMALL} | still


#: A flush file of a node whose id starts with ``b``: it sorts between a merge's intent
#: (``_compact-``) and its output (``c-``), so a page can end on it, with the intent before it
#: and the output after it.
BETWEEN = "b0000000000a-0000000000000001-0000.parquet"
MERGE_ID = "0000000000000000beef"


class _Reading(pafs.FileSystemHandler):
    """A read-only pyarrow filesystem over ``fs`` (so that the intent rule's Parquet reads go
    through it too) whose listings of ``folder`` subclasses change (:meth:`listed`)."""

    def __init__(self, fs: Any, folder: str) -> None:
        self.fs, self.folder = fs, folder
        self.listings = 0

    def get_file_info_selector(self, selector: Any) -> Any:
        if selector.base_dir != self.folder:
            return self.fs.get_file_info(selector)
        self.listings += 1
        return self.listed(selector)

    def listed(self, selector: Any) -> Any:
        return self.fs.get_file_info(selector)

    def get_file_info(self, paths: Any) -> Any:
        return self.fs.get_file_info(paths)

    def open_input_file(self, path: str) -> Any:
        return self.fs.open_input_file(path)

    def open_input_stream(self, path: str) -> Any:
        return self.fs.open_input_stream(path)

    def get_type_name(self) -> str:
        return "reading"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def equals(self, other: Any) -> bool:
        return other is self

    def _read_only(self, *args: Any) -> None:
        raise NotImplementedError("the reader only lists and reads")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
    delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only


class _TornAt(_Reading):
    """The first listing of ``folder`` is torn after ``cut``: ``between`` runs once the
    entries up to ``cut`` are listed, and those after it are listed as they are then (an S3
    listing whose next page is requested after a merge began)."""

    def __init__(self, fs: Any, folder: str, cut: str, between: Callable[[], None]) -> None:
        super().__init__(fs, folder)
        self.cut, self.between = cut, between

    def listed(self, selector: Any) -> Any:
        first = sorted(self.fs.get_file_info(selector), key=lambda i: i.path)
        if self.listings > 1:
            return first
        end = f"{self.folder}/{self.cut}"
        self.between()
        now = sorted(self.fs.get_file_info(selector), key=lambda i: i.path)
        return [i for i in first if i.path <= end] + [i for i in now if i.path > end]


class _BeforeEach(_Reading):
    """``before(n)`` runs before the ``n``-th listing of ``folder``."""

    def __init__(self, fs: Any, folder: str, before: Callable[[int], None]) -> None:
        super().__init__(fs, folder)
        self.before = before

    def listed(self, selector: Any) -> Any:
        self.before(self.listings)
        return self.fs.get_file_info(selector)


def _intent_and_output(wh: Warehouse, inputs: list[str]) -> str:
    """A merge of ``inputs`` (in :data:`FOLDER`) up to its deletes: its intent and complete
    output written. Returns the output's name."""
    output = f"c-{MERGE_ID}.parquet"
    merged = pq.read_table([wh.path(FOLDER, n) for n in inputs], filesystem=wh.fs)
    intent = {"inputs": inputs, "output": output, "rows": merged.num_rows}
    with wh.fs.open_output_stream(wh.path(FOLDER, f"_compact-{MERGE_ID}.json")) as out:
        out.write(json.dumps(intent).encode())
    pq.write_table(merged, wh.path(FOLDER, output), filesystem=wh.fs)
    return output


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_merge_started_between_two_pages_is_not_read_twice(
    tmp_path: Path, small_pages: None, request: pytest.FixtureRequest, where: str
) -> None:
    """The merge of the small files writes its intent after the page that would hold it was
    listed, and its complete output before the page that holds it; its deletes then fail (the
    inputs stay until the next pass: docs/operations.md). The next listing shows every file
    of the torn one still there and no new output: only the new intent tells that the torn
    listing, without it, would read the small files and the output that holds their rows."""
    if where == "s3":
        wh = open_warehouse(request.getfixturevalue("s3_warehouse"))
    else:
        wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _layout(wh)
    _write(wh, BETWEEN, 1, 30)
    want = len(LARGE) * LARGE_ROWS + LARGE_ROWS + len(SMALL) + 1
    output = f"c-{MERGE_ID}.parquet"

    def merge_whose_deletes_fail() -> None:
        assert _intent_and_output(wh, SMALL) == output

    torn = _TornAt(wh.fs, wh.path(FOLDER), BETWEEN, merge_whose_deletes_fail)
    seen = Warehouse(uri=wh.uri, fs=pafs.PyFileSystem(torn), base=wh.base)
    files = partitions.list_files(seen, wh.path(FOLDER))
    names = [f.path.rsplit("/", 1)[1] for f in files]
    assert output in names and not set(SMALL) & set(names), names
    assert _rows(wh, [Partition("envoy_access", "big", "2026-11-27-23", files)]) == want
    assert torn.listings == 3  # torn, then one with the new intent, then one that agreed


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_merge_deleting_its_inputs_in_batches_settles_at_once(
    tmp_path: Path, small_pages: None, request: pytest.FixtureRequest, where: str
) -> None:
    """A merge of many files deletes its inputs one request per 1,000 (seconds for 5,000
    inputs), then its intent: each listing of the folder meanwhile lacks some inputs of the
    one before. The first listing already read the merge as done (its intent and complete
    output hide the inputs), so it is taken at the second, where every listing differing
    from the next made the reader fail with ListingUnsettled."""
    if where == "s3":
        wh = open_warehouse(request.getfixturevalue("s3_warehouse"))
    else:
        wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _layout(wh)
    inputs = [*SMALL, *(f"d{n}0000000000-0000000000000001-0000.parquet" for n in range(3, 9))]
    for n, name in enumerate(inputs[len(SMALL) :]):
        _write(wh, name, 1, 40 + n)
    output = _intent_and_output(wh, inputs)
    gone = [wh.path(FOLDER, n) for n in inputs] + [wh.path(FOLDER, f"_compact-{MERGE_ID}.json")]

    def deleting(n: int) -> None:  # one "batch" before each listing after the first
        if 1 < n <= len(gone) + 1:
            wh.fs.delete_file(gone[n - 2])

    deletes = _BeforeEach(wh.fs, wh.path(FOLDER), deleting)
    seen = Warehouse(uri=wh.uri, fs=pafs.PyFileSystem(deletes), base=wh.base)
    files = partitions.list_files(seen, wh.path(FOLDER))
    assert deletes.listings == 2
    assert [f.path.rsplit("/", 1)[1] for f in files] == [*LARGE, output, PAGE_END]
    want = len(LARGE) * LARGE_ROWS + LARGE_ROWS + len(inputs)
    assert _rows(wh, [Partition("envoy_access", "big", "2026-11-27-23", files)]) == want
