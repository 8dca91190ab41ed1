"""inotify wakes discovery at once; the watch set follows the directories that exist."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shipper.inotify import DirectoryWatcher, directories_to_watch


def test_directories_to_watch_covers_roots_and_their_folders(tmp_path: Path) -> None:
    docker = tmp_path / "containers"
    (docker / "abc").mkdir(parents=True)
    pods = tmp_path / "pods"
    (pods / "ns_web-1_uid" / "envoy").mkdir(parents=True)
    (tmp_path / "app").mkdir()
    dirs = set(directories_to_watch(docker, pods, [str(tmp_path / "app" / "*.log")]))
    assert dirs == {
        docker,
        docker / "abc",
        pods,
        pods / "ns_web-1_uid",
        pods / "ns_web-1_uid" / "envoy",
        tmp_path / "app",
    }
    assert directories_to_watch(tmp_path / "missing", None, []) == []


def test_new_container_directory_and_file_wake_the_watcher(tmp_path: Path) -> None:
    async def scenario() -> list[bool]:
        watcher = DirectoryWatcher.create()
        assert watcher is not None
        watcher.start(asyncio.get_running_loop())
        try:
            watcher.watch_all([tmp_path])
            quiet = await watcher.wait(0.2)
            (tmp_path / "new-container").mkdir()
            created = await watcher.wait(2.0)
            watcher.watch_all(directories_to_watch(tmp_path, None, []))
            assert str(tmp_path / "new-container") in watcher.watched
            (tmp_path / "new-container" / "x-json.log").write_text("{}\n")
            file_created = await watcher.wait(2.0)
            (tmp_path / "new-container" / "x-json.log").rename(tmp_path / "new-container" / "x.1")
            rotated = await watcher.wait(2.0)
            return [quiet, created, file_created, rotated]
        finally:
            watcher.close()

    assert asyncio.run(scenario()) == [False, True, True, True]


def test_removed_directories_are_unwatched(tmp_path: Path) -> None:
    async def scenario() -> set[str]:
        watcher = DirectoryWatcher.create()
        assert watcher is not None
        watcher.start(asyncio.get_running_loop())
        try:
            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            watcher.watch_all([tmp_path / "a", tmp_path / "b"])
            watcher.watch_all([tmp_path / "b"])
            assert not watcher.watch(tmp_path / "missing")
            return watcher.watched
        finally:
            watcher.close()

    assert asyncio.run(scenario()) == {str(tmp_path / "b")}
