"""A folder made while it is listed is listed, not an error; an unreadable folder stays one.

Arrow's local listing forgives a missing folder (``allow_not_found``) only if it is still
missing when Arrow looks a second time: one made between the two looks failed the listing
("Cannot list directory"), as ``logq`` met the aggregator's first flush into a new warehouse.
:func:`athena.warehouse.list_entries` lists it again; every other failure is raised at once.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from athena.partitions import list_files, plan
from athena.timerange import TimeRange, dt_of
from athena.warehouse import (
    LISTING_ATTEMPTS,
    appeared_during_listing,
    list_entries,
    open_warehouse,
)
from tests.athena.factory import access_frame, utc, write_frame
from tests.support.listing import FolderAppears, listed_without_override

START = utc(2026, 3, 1, 10, 0)


def _selector(folder: Path | str, recursive: bool = False) -> pafs.FileSelector:
    return pafs.FileSelector(str(folder), recursive=recursive, allow_not_found=True)


@pytest.mark.parametrize("recursive", [False, True])
def test_a_folder_made_during_its_listing_is_listed(tmp_path: Path, recursive: bool) -> None:
    """Arrow's own listing fails when the folder appears between its two looks; listed again,
    the folder is read as it is then (the folder above the one made, too)."""
    made = str(tmp_path / "wh" / "container_logs" / "service=a" / "dt=2026-03-01-10")
    with pytest.raises(FileNotFoundError, match="Cannot list directory") as raw:
        FolderAppears([made]).get_file_info(_selector(made, recursive))
    assert appeared_during_listing(raw.value)
    os.removedirs(made)

    fs = FolderAppears([made])
    table = str(tmp_path / "wh" / "container_logs")
    found = list_entries(fs, _selector(table, recursive))
    assert fs.appeared == [made] and fs.listings == [table, table]
    assert [i.base_name for i in found] == (
        ["service=a", "dt=2026-03-01-10"] if recursive else ["service=a"]
    )


class _AlwaysAppearing(FolderAppears):
    """A folder removed and made again during every listing (no warehouse folder does so)."""

    def get_file_info(self, what):  # type: ignore[no-untyped-def, override]
        if isinstance(what, pafs.FileSelector) and os.path.isdir(what.base_dir):
            os.rmdir(what.base_dir)
            self.appearing.add(what.base_dir)
        return super().get_file_info(what)


def test_listing_again_is_bounded(tmp_path: Path) -> None:
    """A folder that keeps appearing during each listing fails after LISTING_ATTEMPTS, with
    Arrow's own error, rather than holding the caller in a loop."""
    folder = str(tmp_path / "flapping")
    fs = _AlwaysAppearing([folder])
    with pytest.raises(FileNotFoundError, match="Cannot list directory"):
        list_entries(fs, _selector(folder))
    assert len(fs.listings) == LISTING_ATTEMPTS


def test_a_missing_folder_without_allow_not_found_is_not_listed_again(tmp_path: Path) -> None:
    """Without ``allow_not_found`` a folder missing when listed is the caller's error."""
    folder = str(tmp_path / "made")
    fs = FolderAppears([folder])
    with pytest.raises(FileNotFoundError):
        list_entries(fs, pafs.FileSelector(folder))
    assert fs.listings == [folder]


@pytest.fixture
def denied(tmp_path: Path) -> Iterator[Path]:
    """A folder with an entry, of mode 000 (restored afterwards, for pytest to remove it)."""
    folder = tmp_path / "wh" / "container_logs"
    (folder / "service=a").mkdir(parents=True)
    folder.chmod(0)
    yield folder
    folder.chmod(0o755)


def test_a_denied_folder_fails_at_the_first_listing(
    denied: Path, subprocess_env: dict[str, str]
) -> None:
    """A folder this user may not read is Arrow's error, raised at once: not listed again.
    (In a process that file permissions bind: root's own would list it.)"""
    calls, outcome = listed_without_override(denied, subprocess_env)
    assert calls == 1, outcome
    assert outcome.startswith("PermissionError"), outcome
    assert f"Cannot list directory '{denied}'" in outcome and "Permission denied" in outcome


def test_a_file_where_a_folder_should_be_fails_at_the_first_listing(tmp_path: Path) -> None:
    table = tmp_path / "container_logs"
    table.write_text("a file, not a folder")
    fs = FolderAppears()
    with pytest.raises(NotADirectoryError, match="Cannot list directory"):
        list_entries(fs, _selector(table))
    assert fs.listings == [str(table)]


def test_the_race_itself_is_the_one_recognised(tmp_path: Path) -> None:
    """The real race, not a model of it: a thread makes and removes a folder while it is
    listed. Each failure of Arrow's listing is the one :func:`appeared_during_listing` takes
    (it is met within a few thousand listings): Arrow's words and errno, as this pyarrow
    gives them. (:func:`list_entries` is not asked here: a folder removed and made again
    between its listings may fail every one, by design; see LISTING_ATTEMPTS.)"""
    folder = str(tmp_path / "flapping")
    stop = threading.Event()

    def flap() -> None:
        while not stop.is_set():
            os.mkdir(folder)
            os.rmdir(folder)

    fs = pafs.LocalFileSystem()
    errors: list[OSError] = []
    flapper = threading.Thread(target=flap, daemon=True)
    flapper.start()
    try:
        for _ in range(200_000):
            try:
                fs.get_file_info(_selector(folder))
            except OSError as exc:
                errors.append(exc)
                if len(errors) == 5:
                    break
    finally:
        stop.set()
        flapper.join()
    if not errors:
        pytest.skip("the race was not met in 200,000 listings (a single core?)")
    assert all(isinstance(e, FileNotFoundError) and appeared_during_listing(e) for e in errors)


@pytest.fixture
def warehouse(tmp_path: Path) -> str:
    uri = str(tmp_path / "wh")
    frame = access_frame(40, START, START + timedelta(hours=2), ["a", "b"], seed=3)
    write_frame(uri, "envoy_access", frame)
    return uri


def test_a_query_plans_the_hour_folder_made_during_its_listing(warehouse: str) -> None:
    """A short range looks each hour's folder up by name: the current one, made by a flush
    right then, is listed (it was "Cannot list directory" for the whole query)."""
    now_hour = START + timedelta(hours=3)
    made = f"{warehouse}/envoy_access/service=a/dt={dt_of(now_hour)}"
    fs = FolderAppears([made])
    wh = dataclasses.replace(open_warehouse(warehouse), fs=fs)
    trange = TimeRange(START, now_hour + timedelta(minutes=5))
    parts = plan(wh, "envoy_access", None, trange)
    assert fs.appeared == [made]
    assert {(p.service, p.dt) for p in parts} == {
        (s, dt_of(START + timedelta(hours=h))) for s in ("a", "b") for h in (0, 1)
    }
    assert list_files(wh, made) == ()


def test_a_table_folder_made_during_the_listing_of_services(warehouse: str) -> None:
    """The aggregator's first flush of container_logs makes the table's folder while a query
    lists its services: no service yet, no error."""
    made = f"{warehouse}/container_logs/service=a/dt={dt_of(START)}"
    fs = FolderAppears([made])
    wh = dataclasses.replace(open_warehouse(warehouse), fs=fs)
    assert plan(wh, "container_logs", None, None) == []
    assert fs.appeared == [made]
