"""Folders under the CRI root listed again only when they changed (shipper/listings.py):
whatever the folder's times say, a new, removed or replaced log file is found."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import shipper.listings as listings_mod
from shipper.discover import Discoverer
from shipper.exclude import Excluder
from shipper.inotify import directories_to_watch
from shipper.listings import Listings
from tests.shipper.hostgen import cri_line

POD = "shop_web-5d8f7c9b6d-x2x7k_0f1e2d3c-0000-0000-0000-000000000000"


def discoverer(tmp_path: Path) -> Discoverer:
    return Discoverer(tmp_path / "none", tmp_path / "pods", (), (), Excluder(()))


def keys(d: Discoverer) -> list[str]:
    return sorted(spec.key for spec in d.scan().specs)


def pod_log(tmp_path: Path, container: str, name: str) -> Path:
    folder = tmp_path / "pods" / POD / container
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(cri_line("hello"))
    return path


def key(container: str, name: str) -> str:
    return f"cri:{POD}/{container}/{name}"


def next_pass(kept: Listings) -> None:
    """One discovery pass ends and the next begins (as Discoverer.scan calls them)."""
    kept.end_pass()
    kept.begin_pass()


class Counted:
    """A listing that counts its calls."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls = 0

    def __call__(self) -> list[str]:
        self.calls += 1
        return sorted(os.listdir(self.folder))


@pytest.fixture
def old_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every folder counts as changed long ago: its listing is kept while its times hold."""
    monkeypatch.setattr(listings_mod, "RECENT_NS", -(10**18))


@pytest.mark.usefixtures("old_enough")
def test_an_unchanged_folder_is_not_listed_again_a_changed_one_is(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a").touch()
    kept, listing = Listings(), Counted(folder)
    assert kept.get(str(folder), listing) == ["a"]
    next_pass(kept)
    assert kept.get(str(folder), listing) == ["a"]
    assert listing.calls == 1
    next_pass(kept)
    (folder / "b").touch()
    assert kept.get(str(folder), listing) == ["a", "b"]
    next_pass(kept)
    (folder / "a").unlink()
    assert kept.get(str(folder), listing) == ["b"]
    assert listing.calls == 3


def test_a_folder_changed_in_the_last_two_seconds_is_listed_at_every_pass(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    kept, listing = Listings(), Counted(folder)
    for _ in range(3):
        kept.get(str(folder), listing)
        next_pass(kept)
    assert listing.calls == 3


@pytest.mark.usefixtures("old_enough")
def test_a_folder_replaced_by_another_with_the_same_times_is_listed_again(
    tmp_path: Path,
) -> None:
    """``touch -r`` / ``cp -a``: the same modification time, another folder (its inode, or
    its change time, which nothing can set back, differs)."""
    folder, other = tmp_path / "f", tmp_path / "g"
    folder.mkdir()
    (folder / "a").touch()
    kept, listing = Listings(), Counted(folder)
    assert kept.get(str(folder), listing) == ["a"]
    next_pass(kept)
    other.mkdir()
    (other / "b").touch()
    st = folder.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    (folder / "a").unlink()
    folder.rmdir()
    other.rename(folder)
    assert folder.stat().st_mtime_ns == st.st_mtime_ns
    assert kept.get(str(folder), listing) == ["b"]


def test_a_log_file_made_within_the_same_tick_of_coarse_times_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system with whole-second times (ext3, some NFS): a file created in the second
    the folder was listed leaves its times as they were; the folder is recent, so listed
    again, and the file is found at the next pass."""
    real = os.stat
    tick = 10**18  # the folders' times, frozen at one tick; the clock half a second later

    def coarse(path: object, *args: object, **kwargs: object) -> os.stat_result:
        st = real(path, *args, **kwargs)  # type: ignore[arg-type]
        return _Stat(st, {"st_mtime_ns": tick, "st_ctime_ns": tick})  # type: ignore[return-value]

    d = discoverer(tmp_path)
    pod_log(tmp_path, "app", "0.log")
    monkeypatch.setattr(listings_mod.time, "time_ns", lambda: tick + 500_000_000)
    monkeypatch.setattr(listings_mod.os, "stat", coarse)
    assert keys(d) == [key("app", "0.log")]
    pod_log(tmp_path, "app", "1.log")  # the container restarted, in the same tick
    pod_log(tmp_path, "sidecar", "0.log")  # a new container, in the same tick
    assert keys(d) == [key("app", "0.log"), key("app", "1.log"), key("sidecar", "0.log")]


class _Stat:
    """An ``os.stat_result`` with some fields replaced."""

    def __init__(self, st: os.stat_result, fields: dict[str, int]) -> None:
        self._st, self._fields = st, fields

    def __getattr__(self, name: str) -> object:
        return self._fields.get(name, getattr(self._st, name))


@pytest.mark.usefixtures("old_enough")
def test_discovery_finds_new_and_removed_log_files_through_kept_listings(
    tmp_path: Path,
) -> None:
    d = discoverer(tmp_path)
    first = pod_log(tmp_path, "app", "0.log")
    assert keys(d) == [key("app", "0.log")]
    assert keys(d) == [key("app", "0.log")]  # kept: the same sources
    pod_log(tmp_path, "app", "1.log")
    assert keys(d) == [key("app", "0.log"), key("app", "1.log")]
    first.unlink()
    assert keys(d) == [key("app", "1.log")]
    pod_log(tmp_path, "sidecar", "0.log")
    assert keys(d) == [key("app", "1.log"), key("sidecar", "0.log")]


@pytest.mark.usefixtures("old_enough")
def test_a_pod_log_link_is_looked_at_at_every_pass(tmp_path: Path) -> None:
    """Where a link points may appear (a folder mounted) with no change in the link's folder:
    a folder holding a link is not kept."""
    cid = "c" * 64
    target = tmp_path / "docker" / cid / f"{cid}-json.log"
    folder = tmp_path / "pods" / POD / "app"
    folder.mkdir(parents=True)
    (folder / "0.log").symlink_to(target)
    d = discoverer(tmp_path)
    assert keys(d) == []  # dangling: said once, skipped
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")
    assert keys(d) == [key("app", "0.log")]


def test_a_log_file_made_within_the_tick_of_a_listing_is_found_by_a_later_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole-second times again, the next pass more than 2 s after the change (a
    --discover-interval of 5 s, the 10 s rescan with inotify, a pass held up): the folder is
    not recent at that pass, and its times are those of a listing made before the file
    appeared (in the same second). That listing must not be trusted: it was made while the
    folder's times could still move without changing."""
    real = os.stat
    tick = 10**18
    clock = [tick + 500_000_000]

    def coarse(path: object, *args: object, **kwargs: object) -> os.stat_result:
        st = real(path, *args, **kwargs)  # type: ignore[arg-type]
        return _Stat(st, {"st_mtime_ns": tick, "st_ctime_ns": tick})  # type: ignore[return-value]

    d = discoverer(tmp_path)
    pod_log(tmp_path, "app", "0.log")
    monkeypatch.setattr(listings_mod.time, "time_ns", lambda: clock[0])
    monkeypatch.setattr(listings_mod.os, "stat", coarse)
    assert keys(d) == [key("app", "0.log")]
    pod_log(tmp_path, "app", "1.log")  # the container restarted, in the same second
    pod_log(tmp_path, "sidecar", "0.log")  # a new container, in the same second
    clock[0] = tick + 5_000_000_000  # the next pass, 5 s later
    assert keys(d) == [key("app", "0.log"), key("app", "1.log"), key("sidecar", "0.log")]
    assert keys(d) == [key("app", "0.log"), key("app", "1.log"), key("sidecar", "0.log")]


def test_a_pod_folder_made_again_within_the_tick_of_a_listing_is_listed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod removed and made again with the same name within one second of a listing, its
    freed inode given back to it (ext3 and ext4 hand a freed inode to the next file), on a
    file system with whole-second times: the same version, another pod. The next pass finds
    its containers however late it comes."""
    real = os.stat
    tick = 10**18
    clock = [tick + 500_000_000]

    def same_inode(path: object, *args: object, **kwargs: object) -> os.stat_result:
        st = real(path, *args, **kwargs)  # type: ignore[arg-type]
        fields = {"st_mtime_ns": tick, "st_ctime_ns": tick, "st_ino": hash(str(path))}
        return _Stat(st, fields)  # type: ignore[return-value]

    d = discoverer(tmp_path)
    pod_log(tmp_path, "app", "0.log")
    monkeypatch.setattr(listings_mod.time, "time_ns", lambda: clock[0])
    monkeypatch.setattr(listings_mod.os, "stat", same_inode)
    assert keys(d) == [key("app", "0.log")]
    shutil.rmtree(tmp_path / "pods" / POD)
    pod_log(tmp_path, "web", "0.log")
    clock[0] = tick + 12_000_000_000  # the next pass: the 10 s rescan with inotify
    assert keys(d) == [key("web", "0.log")]


@pytest.mark.usefixtures("old_enough")
def test_a_pass_after_the_watch_list_finds_what_appeared_in_between(tmp_path: Path) -> None:
    """With inotify the watch list is made right after each pass, from the same listings: a
    pod or a container made after it is found by the next pass (the one its event brings),
    not a pass later."""
    d = discoverer(tmp_path)
    pod_log(tmp_path, "app", "0.log")
    assert keys(d) == [key("app", "0.log")]
    directories_to_watch(None, tmp_path / "pods", [], d.listings)
    pod_log(tmp_path, "sidecar", "0.log")  # a new container of the pod
    assert keys(d) == [key("app", "0.log"), key("sidecar", "0.log")]
    directories_to_watch(None, tmp_path / "pods", [], d.listings)
    other = "shop_api-0_1f1e2d3c-0000-0000-0000-000000000000"
    (tmp_path / "pods" / other / "api").mkdir(parents=True)
    (tmp_path / "pods" / other / "api" / "0.log").write_bytes(cri_line("hi"))  # a new pod
    assert f"cri:{other}/api/0.log" in keys(d)


def test_after_the_clock_went_back_a_folder_is_listed_at_every_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock stepped back an hour (NTP, a VM restored): the folders' times are in
    the future, which says nothing of when they changed; they are listed at every pass, not
    trusted, until the clock passes them."""
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a").touch()
    back = folder.stat().st_mtime_ns - 3600 * 10**9
    monkeypatch.setattr(listings_mod.time, "time_ns", lambda: back)
    kept, listing = Listings(), Counted(folder)
    for _ in range(3):
        assert kept.get(str(folder), listing) == ["a"]
        next_pass(kept)
    assert listing.calls == 3
