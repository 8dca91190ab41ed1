"""Idle sources sleep until their live file changes (inotify), polling kept as the safety net.

The ceiling of that sleep is raised to a minute here: a line that arrives within the tests'
(generous) waits was brought by an event, not by the ceiling. Every time-driven duty of the
tailer (split-line flush, rotate wait) must still fire while the source waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import shipper.copytruncate as copytruncate_mod
import shipper.idle_sweep as idle_sweep_mod
import shipper.inotify as inotify_mod
import shipper.rotate_wait as rotate_wait
import shipper.source as source_mod
import shipper.split_lines as split_lines
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.idle_sweep import IdleSweep
from shipper.inotify import FileWatcher
from shipper.source import SourceRunner
from tests.shipper.hostgen import cri_line, docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until

WAIT = 30.0
"""Generous, and well below the patched ceiling: only an event can bring a line in time."""


@pytest.fixture(autouse=True)
def long_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_mod, "IDLE_CEILING_SECONDS", 60.0)
    monkeypatch.setattr(rotate_wait, "ROTATE_WAIT_SECONDS", 0.2)


@asynccontextmanager
async def running(
    tmp_path: Path, receiver: Receiver, docker: Path, poll: str = "0.05", cri: Path | None = None
) -> AsyncIterator[Shipper]:
    args = ("--poll-interval", poll, "--discover-interval", "0.2", "--retry-timeout", "5")
    config = load_config(shipper_args(tmp_path, receiver, *args, docker=docker, cri=cri))
    shipper = Shipper(config)
    run = asyncio.create_task(shipper.run())
    try:
        yield shipper
    finally:
        shipper.request_stop()
        assert await asyncio.wait_for(run, WAIT) == 0


def only_runner(shipper: Shipper) -> SourceRunner:
    (runner,) = shipper.runners.values()
    return runner


async def settled_on(runner: SourceRunner, path: Path) -> None:
    """Wait until the reader watches the file now at ``path``, then a moment more: its next
    idle turn is the long wait (a turn of --poll-interval follows a new watch)."""
    st = os.stat(path)
    await until(lambda: (runner._watched or (0, 0))[:2] == (st.st_dev, st.st_ino), WAIT)
    await asyncio.sleep(0.5)


def append(path: Path, *texts: str, start: int = 100) -> None:
    with open(path, "ab") as f:
        for i, text in enumerate(texts):
            f.write(docker_line(text, start + i))


def arrived(receiver: Receiver, *texts: str) -> Callable[[], bool]:
    return lambda: receiver.lines()[-len(texts) :] == list(texts)


def test_an_idle_watched_source_ships_an_appended_line_at_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    docker = tmp_path / "docker"
    log = make_container(docker, "a" * 64, "app", lines=["before"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "before"), WAIT)
            runner = only_runner(shipper)
            for n in range(3):  # woken again and again, not once
                await settled_on(runner, log)
                append(log, f"after-{n}", start=10 + n)
                await until(arrived(receiver, f"after-{n}"), WAIT)
            await settled_on(runner, log)
            watches = shipper.metrics.registry.get_sample_value("logq_shipper_file_watches")
            assert watches == 1.0, "the watch shows in /metrics"

    asyncio.run(scenario())
    assert receiver.lines() == ["before", "after-0", "after-1", "after-2"]
    assert receiver.duplicates == 0


def test_a_file_written_line_by_line_is_read_in_batches_not_a_turn_per_write(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Events coalesce, and a source woken by writes looks no more often than polling would:
    200 writes over about 2 s, polled every second, come in a handful of messages."""
    docker = tmp_path / "docker"
    log = make_container(docker, "f" * 64, "app", lines=["before"])
    texts = [f"line-{i}" for i in range(200)]

    async def scenario() -> int:
        async with running(tmp_path, receiver, docker, poll="1.0") as shipper:
            await until(arrived(receiver, "before"), WAIT)
            await settled_on(only_runner(shipper), log)
            before = receiver.messages
            for i, text in enumerate(texts):
                append(log, text, start=10 + i)
                await asyncio.sleep(0.01)
            await until(arrived(receiver, texts[-1]), WAIT)
            return receiver.messages - before

    messages = asyncio.run(scenario())
    assert receiver.lines() == ["before", *texts]
    assert messages < 40  # a turn per write would be about 200


def test_rename_rotation_of_a_watched_file_is_followed(tmp_path: Path, receiver: Receiver) -> None:
    docker = tmp_path / "docker"
    log = make_container(docker, "b" * 64, "app", lines=["first"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "first"), WAIT)
            runner = only_runner(shipper)
            await settled_on(runner, log)
            # Docker's json-file rotation: rename, then a new file with the next lines.
            append(log, "last-of-old", start=1)
            log.rename(log.with_name(log.name + ".1"))
            append(log, "first-of-new", start=2)
            await until(arrived(receiver, "last-of-old", "first-of-new"), WAIT)
            await settled_on(runner, log)  # the watch moved to the new file
            append(log, "later", start=3)
            await until(arrived(receiver, "later"), WAIT)

    asyncio.run(scenario())
    assert receiver.lines() == ["first", "last-of-old", "first-of-new", "later"]


def test_copytruncate_of_a_watched_file_is_followed(tmp_path: Path, receiver: Receiver) -> None:
    docker = tmp_path / "docker"
    log = make_container(docker, "c" * 64, "app", lines=["one", "two"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "one", "two"), WAIT)
            runner = only_runner(shipper)
            await settled_on(runner, log)
            # logrotate copytruncate: copy, truncate in place, the writer goes on at 0.
            shutil.copyfile(log, log.with_name(log.name + ".1"))
            with open(log, "r+b") as f:
                f.truncate(0)
            append(log, "after-truncate", start=50)
            await until(arrived(receiver, "after-truncate"), WAIT)
            await settled_on(runner, log)
            append(log, "later", start=51)
            await until(arrived(receiver, "later"), WAIT)

    asyncio.run(scenario())
    assert receiver.lines() == ["one", "two", "after-truncate", "later"]


def test_a_split_line_is_flushed_while_the_source_waits(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(split_lines, "SPLIT_FLUSH_SECONDS", 0.3)
    docker = tmp_path / "docker"
    log = make_container(docker, "d" * 64, "app", lines=["before"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "before"), WAIT)
            await settled_on(only_runner(shipper), log)
            with open(log, "ab") as f:  # the first 16 KiB part of a line; the rest never comes
                f.write(docker_line("X-part ", 1, nl=False))
            # Nothing more is written: no event comes, only the flush deadline can ship it.
            await until(arrived(receiver, "X-part "), WAIT)

    asyncio.run(scenario())
    assert receiver.lines() == ["before", "X-part "]


def test_without_inotify_sources_poll(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FileWatcher, "create", classmethod(lambda cls: None))
    docker = tmp_path / "docker"
    log = make_container(docker, "e" * 64, "app", lines=["before"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "before"), WAIT)
            assert shipper.file_watcher is None  # run() tried to create it before discovery
            await asyncio.sleep(0.5)
            append(log, "polled")
            await until(arrived(receiver, "polled"), WAIT)
            assert only_runner(shipper)._watched is None

    asyncio.run(scenario())
    assert receiver.lines() == ["before", "polled"]


def test_a_file_the_watcher_refuses_is_polled(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch limit reached (ENOSPC) or a network filesystem: that source polls."""
    monkeypatch.setattr(FileWatcher, "watch", lambda self, fd, dev, wake: None)
    docker = tmp_path / "docker"
    log = make_container(docker, "9" * 64, "app", lines=["before"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "before"), WAIT)
            runner = only_runner(shipper)
            await until(lambda: runner._unwatchable is not None, WAIT)
            append(log, "polled")
            await until(arrived(receiver, "polled"), WAIT)
            assert runner._watched is None
            registry = shipper.metrics.registry
            assert registry.get_sample_value("logq_shipper_file_watches") == 0.0

    asyncio.run(scenario())
    assert receiver.lines() == ["before", "polled"]


def test_a_refused_file_is_offered_to_the_watcher_again(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Watches freed by sources that ended serve a source refused before (limit reached)."""
    monkeypatch.setattr(source_mod, "WATCH_RETRY_SECONDS", 0.3)
    real_watch = FileWatcher.watch
    calls: list[int] = []

    def refuse_first(self: FileWatcher, fd: int, dev: int, wake: asyncio.Event) -> int | None:
        calls.append(fd)
        return None if len(calls) == 1 else real_watch(self, fd, dev, wake)

    monkeypatch.setattr(FileWatcher, "watch", refuse_first)
    docker = tmp_path / "docker"
    log = make_container(docker, "8" * 64, "app", lines=["before"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "before"), WAIT)
            runner = only_runner(shipper)
            await settled_on(runner, log)  # watched at the second offer
            append(log, "woken")
            await until(arrived(receiver, "woken"), WAIT)

    asyncio.run(scenario())
    assert len(calls) == 2


def test_files_on_a_network_filesystem_are_not_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"x\n")
    magic = int(
        subprocess.run(
            ["stat", "-f", "-c", "%t", str(tmp_path)], check=True, capture_output=True, text=True
        ).stdout,
        16,
    )

    async def scenario() -> tuple[int | None, int | None]:
        fd = os.open(path, os.O_RDONLY)
        dev = os.fstat(fd).st_dev
        local, remote = FileWatcher.create(), FileWatcher.create()
        assert local is not None and remote is not None
        try:
            with monkeypatch.context() as m:
                m.setattr(inotify_mod, "NETWORK_FILESYSTEMS", {magic: "nfs"})
                remote_wd = remote.watch(fd, dev, asyncio.Event())
            return local.watch(fd, dev, asyncio.Event()), remote_wd
        finally:
            local.close()
            remote.close()
            os.close(fd)

    local_wd, remote_wd = asyncio.run(scenario())
    assert local_wd is not None and remote_wd is None


def kernel_watches(watcher: FileWatcher) -> int:
    """Watches the kernel holds on the watcher's descriptor (``/proc/self/fdinfo``)."""
    info = Path(f"/proc/self/fdinfo/{watcher._fd}").read_text()
    return sum(1 for line in info.splitlines() if line.startswith("inotify wd:"))


def test_watches_are_removed_when_sources_end(tmp_path: Path, receiver: Receiver) -> None:
    """Sources come and go by whole folders moved out of the root: their files live on, so
    only the shipper's own unwatch can drop their watches."""
    docker = tmp_path / "docker"
    gone = tmp_path / "gone"
    gone.mkdir()
    keep = [make_container(docker, f"{i:064x}", f"keep{i}", lines=["k"]) for i in range(5)]

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(lambda: len(shipper.runners) == 5, WAIT)
            watcher = shipper.file_watcher
            assert watcher is not None
            for round_ in range(3):
                batch = [
                    make_container(docker, f"{1000 + 100 * round_ + i:064x}", "x", lines=["t"])
                    for i in range(15)
                ]
                await until(lambda: watcher.watches == 20, WAIT)
                assert kernel_watches(watcher) == 20
                for path in batch:
                    path.parent.rename(gone / path.parent.name)
                await until(lambda: len(shipper.runners) == 5 and watcher.watches == 5, WAIT)
                assert kernel_watches(watcher) == 5
            assert {r.spec.path for r in shipper.runners.values()} == set(keep)

    asyncio.run(scenario())
    assert receiver.lines().count("t") == 45


def test_one_watch_serves_every_source_of_a_file_and_goes_with_the_last(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"x\n")

    async def scenario() -> None:
        watcher = FileWatcher.create()
        assert watcher is not None
        watcher.start(asyncio.get_running_loop())
        fd = os.open(path, os.O_RDONLY)
        try:
            a, b = asyncio.Event(), asyncio.Event()
            wd = watcher.watch(fd, os.fstat(fd).st_dev, a)
            assert wd is not None and watcher.watch(fd, os.fstat(fd).st_dev, b) == wd
            with open(path, "ab") as f:
                for _ in range(100):  # a burst: one Event each, set
                    f.write(b"y\n")
                    f.flush()
            await asyncio.wait_for(asyncio.gather(a.wait(), b.wait()), WAIT)
            watcher.unwatch(wd, a)
            assert watcher.watching(wd, b) and not watcher.watching(wd, a)
            assert kernel_watches(watcher) == 1
            b.clear()
            path.rename(tmp_path / "app.log.1")  # a rename wakes too
            await asyncio.wait_for(b.wait(), WAIT)
            watcher.unwatch(wd, b)
            assert watcher.watches == 0 and kernel_watches(watcher) == 0
        finally:
            os.close(fd)
            watcher.close()

    asyncio.run(scenario())


def test_a_file_refused_a_watch_is_counted_once_however_often_it_is_offered(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's watch limit reached (ENOSPC): each refused file counts once, not once per
    offer (a refused file is offered again every WATCH_RETRY_SECONDS)."""
    import ctypes
    import errno

    monkeypatch.setattr(source_mod, "WATCH_RETRY_SECONDS", 0.1)
    real_create = FileWatcher.create.__func__  # type: ignore[attr-defined]

    class FullLibc:
        def __init__(self, libc: ctypes.CDLL) -> None:
            self._real = libc

        def inotify_add_watch(self, *_args: object) -> int:
            ctypes.set_errno(errno.ENOSPC)
            return -1

        def __getattr__(self, name: str) -> object:
            return getattr(self._real, name)

    def create(cls: type[FileWatcher]) -> FileWatcher | None:
        watcher = real_create(cls)
        if watcher is not None:
            watcher._libc = FullLibc(watcher._libc)
        return watcher

    monkeypatch.setattr(FileWatcher, "create", classmethod(create))
    docker = tmp_path / "docker"
    make_container(docker, "c" * 64, "app", lines=["one"])
    make_container(docker, "d" * 64, "app", lines=["two"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "one", "two"), WAIT)
            runners = list(shipper.runners.values())
            await until(lambda: all(r._unwatchable is not None for r in runners), WAIT)
            refused = [r._unwatchable for r in runners]
            # Several offers each (0.1 s apart) ...
            await until(lambda: [r._unwatchable for r in runners] != refused, WAIT)
            await asyncio.sleep(0.5)
            registry = shipper.metrics.registry
            count = registry.get_sample_value("logq_shipper_file_watches_refused_total")
            assert count == 2.0, "... one count per file"

    asyncio.run(scenario())


@pytest.fixture(params=["lost events", "no inotify"])
def blind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Only the looks at the files of sleeping sources (:mod:`shipper.idle_sweep`) can bring
    a change: every event of the live files' watcher is read and dropped (with a short
    ceiling), or there is no watcher (polled every --poll-interval, 0.05 s here)."""
    if request.param == "no inotify":
        monkeypatch.setattr(FileWatcher, "create", classmethod(lambda cls: None))
        return request.param
    monkeypatch.setattr(source_mod, "IDLE_CEILING_SECONDS", 0.2)

    def drop(self: FileWatcher) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 64 * 1024):
                pass

    monkeypatch.setattr(FileWatcher, "_on_readable", drop)
    return request.param


async def asleep(shipper: Shipper, runner: SourceRunner, path: Path) -> None:
    """Wait until the reader sleeps on the file now at ``path`` (watched, or polled)."""
    if shipper.file_watcher is not None:
        await settled_on(runner, path)
        return
    st = os.stat(path)
    await until(lambda: runner._wake in shipper.poll_sweep._sleepers, WAIT)
    sleeper, _ = shipper.poll_sweep._sleepers[runner._wake]
    assert sleeper.named == (st.st_dev, st.st_ino)


def count_turns(runner: SourceRunner, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the runner's reader looked at its files (Tailer.poll), as it goes."""
    turns = [0]
    real = runner.tailer.poll

    def poll(finishing: bool = False) -> bool:
        turns[0] += 1
        return real(finishing)

    monkeypatch.setattr(runner.tailer, "poll", poll)
    return turns


@pytest.mark.usefixtures("blind")
def test_an_idle_unchanged_file_is_looked_at_without_waking_its_source(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net's looks at a file that did not change cost a stat, not a turn of the
    source's read loop (each turn: window room, a read at the end, the path, the first line),
    yet keep noting that the source has all its files in hand, as a turn did."""
    docker = tmp_path / "docker"
    log = make_container(docker, "7" * 64, "app", lines=["before"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "before"), WAIT)
            runner = only_runner(shipper)
            await asleep(shipper, runner, log)
            turns = count_turns(runner, monkeypatch)
            followed = shipper.registry.followed_at(runner.spec.key)
            await asyncio.sleep(1.5)  # 7 looks (30 when polled)
            assert turns[0] == 0, "a turn per period: the looks woke the source"
            assert len(shipper.idle_sweep) + len(shipper.poll_sweep) == 1
            assert (shipper.registry.followed_at(runner.spec.key) or 0) > (followed or 0)

    asyncio.run(scenario())


@pytest.mark.usefixtures("blind")
def test_a_write_no_event_reports_is_shipped_within_the_ceiling(
    tmp_path: Path, receiver: Receiver
) -> None:
    docker = tmp_path / "docker"
    log = make_container(docker, "6" * 64, "app", lines=["before"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "before"), WAIT)
            runner = only_runner(shipper)
            for n in range(3):
                await asleep(shipper, runner, log)
                append(log, f"unreported-{n}", start=10 + n)
                await until(arrived(receiver, f"unreported-{n}"), WAIT)

    asyncio.run(scenario())
    assert receiver.lines() == ["before", "unreported-0", "unreported-1", "unreported-2"]


@pytest.mark.usefixtures("blind")
def test_a_truncation_no_event_reports_is_followed(tmp_path: Path, receiver: Receiver) -> None:
    """copytruncate to the very size the file had: the size says nothing, its times do."""
    docker = tmp_path / "docker"
    log = make_container(docker, "5" * 64, "app", lines=["one"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "one"), WAIT)
            await asleep(shipper, only_runner(shipper), log)
            size = log.stat().st_size
            with open(log, "r+b") as f:
                f.truncate(0)
                f.write(docker_line("two", 1))
            assert log.stat().st_size == size
            await until(arrived(receiver, "two"), WAIT)

    asyncio.run(scenario())
    assert receiver.lines() == ["one", "two"]


@pytest.mark.usefixtures("blind")
def test_a_rename_no_event_reports_is_followed(tmp_path: Path, receiver: Receiver) -> None:
    """Renamed away and a new file made at the path, the old one unchanged: the path names
    another file, which the look at the path sees."""
    docker = tmp_path / "docker"
    log = make_container(docker, "4" * 64, "app", lines=["first"])

    async def scenario() -> None:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "first"), WAIT)
            runner = only_runner(shipper)
            await asleep(shipper, runner, log)
            log.rename(log.with_name(log.name + ".1"))
            append(log, "first-of-new", start=2)
            await until(arrived(receiver, "first-of-new"), WAIT)
            await asleep(shipper, runner, log)
            append(log, "later", start=3)
            await until(arrived(receiver, "later"), WAIT)

    asyncio.run(scenario())
    assert receiver.lines() == ["first", "first-of-new", "later"]


class _WholeSeconds:
    """An ``os.stat_result`` of a file system with whole-second times (ext3, some NFS
    servers): its modification and change times rounded down to the second."""

    def __init__(self, st: os.stat_result) -> None:
        self._st = st

    def __getattr__(self, name: str) -> object:
        value = getattr(self._st, name)
        if name in ("st_mtime_ns", "st_ctime_ns"):
            return value - value % 1_000_000_000
        return value


class _CoarseOs:
    """``os`` as the sweep, the source and the copytruncate check see it on such a file
    system."""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    @staticmethod
    def stat(*args: object, **kwargs: object) -> _WholeSeconds:
        return _WholeSeconds(os.stat(*args, **kwargs))  # type: ignore[arg-type]

    @staticmethod
    def fstat(fd: int) -> _WholeSeconds:
        return _WholeSeconds(os.fstat(fd))


def asleep_at(sweep: IdleSweep, runner: SourceRunner, size: int) -> bool:
    """Whether ``runner`` sleeps in ``sweep`` on its file as it was at ``size`` bytes."""
    slept = sweep._sleepers.get(runner._wake)
    return slept is not None and slept[0].seen[0] == size


@pytest.mark.usefixtures("blind")
def test_a_same_size_rewrite_within_the_second_of_coarse_times_is_followed(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole-second times: a line written, read, and the file truncated and written again to
    the same size within that second (copytruncate, then a line of the same length) leaves
    the file's size and times as the source last saw them. The tailer does not trust such
    times (Tailer._rewritten compares the content); nor may the sweep: the source takes a
    turn once the second is over, and the new line arrives within the bound, not at the next
    write, which may never come."""
    for module in (idle_sweep_mod, copytruncate_mod, source_mod):
        monkeypatch.setattr(module, "os", _CoarseOs())
    docker = tmp_path / "docker"
    log = make_container(docker, "3" * 64, "app", lines=["zero"])

    async def scenario() -> int:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "zero"), WAIT)
            runner = only_runner(shipper)
            sweep = shipper.idle_sweep if shipper.file_watcher is not None else shipper.poll_sweep
            for attempt in range(10):
                await asleep(shipper, runner, log)
                await asyncio.sleep(1.02 - time.time() % 1)  # the start of a second
                second = int(time.time())
                append(log, f"one-{attempt}", start=10 + attempt)
                await until(arrived(receiver, f"one-{attempt}"), WAIT)
                size = log.stat().st_size
                await until(functools.partial(asleep_at, sweep, runner, size), WAIT)
                text = "two-" + "x" * (size - len(docker_line("two-", 1)))
                with open(log, "r+b") as f:
                    f.truncate(0)
                    f.write(docker_line(text, 1))
                assert log.stat().st_size == size
                await until(arrived(receiver, text), 5.0)
                if int(time.time()) == second:
                    return attempt  # all of it within the second: the case looked for
            pytest.fail("no attempt wrote, read and rewrote the file within one second")

    asyncio.run(scenario())


def same_size_line(size: int, prefix: str, i: int) -> tuple[str, bytes]:
    """A Docker line of ``size`` bytes whose text starts with ``prefix``, and that text."""
    text = prefix + "x" * (size - len(docker_line(prefix, i)))
    return text, docker_line(text, i)


@pytest.mark.usefixtures("blind")
def test_a_file_replaced_by_a_copy_of_the_same_size_and_times_is_followed(
    tmp_path: Path, receiver: Receiver
) -> None:
    """``cp -p`` then ``mv`` over the path: another file, of the same size and modification
    time, no event. The path names another inode, which the look at the path sees."""
    docker = tmp_path / "docker"
    log = make_container(docker, "2" * 64, "app", lines=["one"])

    async def scenario() -> str:
        async with running(tmp_path, receiver, docker) as shipper:
            await until(arrived(receiver, "one"), WAIT)
            await asleep(shipper, only_runner(shipper), log)
            staged = log.with_name("staged")
            text, line = same_size_line(log.stat().st_size, "copy-", 1)
            staged.write_bytes(line)
            shutil.copystat(log, staged)
            os.replace(staged, log)
            await until(arrived(receiver, text), WAIT)
            return text

    text = asyncio.run(scenario())
    assert receiver.lines() == ["one", text]


@pytest.mark.usefixtures("blind")
def test_a_kubelet_rotation_of_an_idle_file_is_followed(tmp_path: Path, receiver: Receiver) -> None:
    """The kubelet renames ``0.log`` to ``0.log.<time>`` and the runtime opens a new
    ``0.log``, while the source sleeps and no event comes: the last line of the old file and
    those of the new one arrive, in order, once each."""
    pods = tmp_path / "pods"
    folder = pods / "shop_web-0_0f1e2d3c-0000-0000-0000-000000000000" / "app"
    folder.mkdir(parents=True)
    log = folder / "0.log"
    log.write_bytes(cri_line("first", 0))

    async def scenario() -> None:
        async with running(tmp_path, receiver, tmp_path / "docker", cri=pods) as shipper:
            await until(arrived(receiver, "first"), WAIT)
            runner = only_runner(shipper)
            for n in range(3):
                await asleep(shipper, runner, log)
                with open(log, "ab") as f:
                    f.write(cri_line(f"last-of-{n}", 1))
                log.rename(folder / f"0.log.20261206-07200{n}")
                log.write_bytes(cri_line(f"first-of-{n + 1}", 2))
                await until(arrived(receiver, f"last-of-{n}", f"first-of-{n + 1}"), WAIT)

    asyncio.run(scenario())
    assert receiver.lines() == [
        "first",
        *(t for n in range(3) for t in (f"last-of-{n}", f"first-of-{n + 1}")),
    ]
    assert receiver.duplicates == 0
