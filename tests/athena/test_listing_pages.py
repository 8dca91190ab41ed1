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
@pytest.mark.parametrize("bounds", [None, HOUR_RANGE], ids=["walked", "one-hour"])
def test_s3_merge_between_two_pages_of_a_listing_loses_no_row(
    s3_warehouse: str, small_pages: None, bounds: tuple[str, str] | None
) -> None:
    """On S3 both ways of listing: the whole service walked (every hour) and one folder."""
    wh = open_warehouse(s3_warehouse)
    torn = _check_merge_between_pages(wh, TimeRange.parse(*bounds) if bounds else None)
    assert torn.listings == 3


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
