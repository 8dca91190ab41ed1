"""A restart's work on compressed copies runs in the ``.gz`` worker threads, not on the loop.

* A held file read again from its ``.gz`` (a split line open at its end, or lines not read
  at the stop) is decompressed before the start, in a worker thread
  (:meth:`Tailer.prepare_off_loop`): the start itself reads no compressed copy, and the line
  comes out whole. A copy replaced after the worker read it is not taken from the worker's
  answer.
* Those threads are not the default executor's, which the checkpoint saves use
  (:mod:`shipper.gz_pool`).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import pytest

from shipper import fd_budget, gz_pool, held_gz
from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.tailing import (
    drain,
    drain_sent,
    rotate_docker,
    set_clock,
    spec_for,
    stop_behind_at_a_compress_rotation,
)


@pytest.fixture(autouse=True)
def _fresh_pool() -> Iterator[None]:
    yield
    gz_pool.shutdown()


def _tailer(path: Path, losses: list[str] | None = None) -> tuple[Tailer, Registry]:
    reg = Registry(path.parent / "state")
    on_loss = losses.append if losses is not None else None
    return Tailer(spec_for(path), reg, "h", 65536, on_loss=on_loss), reg


def _held_at_restart(path: Path) -> None:
    """A stdout line's first part ends a file Docker rotated with ``compress``, the shipper
    stopped before its last part: the next start reads the part again from ``.1.gz``."""
    path.write_bytes(docker_line("before", 0) + docker_line("head-", 1, "stdout", nl=False))
    t, reg = _tailer(path)
    assert [log for log, _, _ in drain_sent(t)] == ["before"]
    rotate_docker(path, max_file=3, compress=True)
    path.write_bytes(docker_line("err", 2, "stderr"))
    drain_sent(t)
    reg.save()
    t.close()
    reg.close()
    with open(path, "ab") as f:
        f.write(docker_line("tail", 3, "stdout"))


def _container_held_at_restart(tmp_path: Path, cid: str) -> Path:
    """The same for container ``cid``'s file, found by the shipper under ``tmp_path/docker``
    (returned), its state in ``tmp_path/state``: a stdout line's first part ends the file
    Docker rotated with ``compress``, its last part is in the next file, written while the
    shipper was down."""
    docker = tmp_path / "docker"
    path = make_container(docker, cid, "app")
    spec = SourceSpec(key=f"docker:{cid}", path=path, format="docker", service="app")
    path.write_bytes(docker_line("before", 0) + docker_line("head-", 1, "stdout", nl=False))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    assert [log for log, _, _ in drain_sent(t)] == ["before"]
    rotate_docker(path, max_file=3, compress=True)
    path.write_bytes(docker_line("tail", 2, "stdout"))
    reg.save()
    t.close()
    reg.close()
    return docker


def _held_copy_read_by_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Tailer, Registry, Path]:
    """A restart on :func:`_held_at_restart`'s files whose worker has read the held ``.gz``
    (returned) off the loop, the start itself not made yet."""
    set_clock(monkeypatch, [1000.0])
    path = tmp_path / "c-json.log"
    _held_at_restart(path)
    t, reg = _tailer(path)
    asyncio.run(t.prepare_off_loop())
    return t, reg, Path(f"{path}.1.gz")


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads the compressed copies are read in."""
    threads: list[str] = []
    decompressed = held_gz.decompressed

    def decompressed_spy(gz: Path, opened: BinaryIO | None = None) -> int | None:
        threads.append(threading.current_thread().name)
        return decompressed(gz, opened)

    monkeypatch.setattr(held_gz, "decompressed", decompressed_spy)
    return threads


def test_a_held_copy_is_decompressed_before_the_start_in_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_clock(monkeypatch, [1000.0])
    path = tmp_path / "c-json.log"
    _held_at_restart(path)
    threads = _spy(monkeypatch)
    losses: list[str] = []
    t, reg = _tailer(path, losses)
    asyncio.run(t.prepare_off_loop())
    worker = list(threads)
    assert worker and all(name.startswith("logq-gz") for name in worker)
    assert drain(t) == ["head-tail"]
    assert threads == worker  # the start read no compressed copy itself
    assert losses == []
    t.close()
    reg.close()


def test_a_copy_replaced_after_the_worker_read_it_is_read_again_by_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's answer is for the file it read: a ``.gz`` replaced before the start (its
    identity changed) is read by the start, as without a worker, and its content is shipped."""
    t, reg, gz = _held_copy_read_by_the_worker(tmp_path, monkeypatch)
    with gzip.open(f"{gz}.new", "wb") as f:  # same bytes up to the checkpoint, another part
        f.write(docker_line("before", 0) + docker_line("other-", 1, "stdout", nl=False))
    os.replace(f"{gz}.new", gz)
    assert drain(t) == ["other-tail"]
    t.close()
    reg.close()


def test_a_copy_the_shipper_was_behind_in_is_decompressed_in_the_worker_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``--multiline`` a copy that ends in whole lines (the shipper was behind at its
    stop) is read from its checkpoint on too, so it is decompressed by the worker, not on the
    loop. Before, such a copy was only streamed, to find no split line open in it, and its
    unread lines counted lost ("deleted_unread")."""
    set_clock(monkeypatch, [1000.0])
    path = tmp_path / "c-json.log"
    stop_behind_at_a_compress_rotation(path)
    threads = _spy(monkeypatch)
    losses: list[str] = []
    t, reg = _tailer(path, losses)
    asyncio.run(t.prepare_off_loop())
    worker = list(threads)
    assert worker and all(name.startswith("logq-gz") for name in worker)
    assert drain(t) == ["in flight", "next"]
    assert threads == worker  # the start read no compressed copy itself
    assert losses == []
    t.close()
    reg.close()


def test_gz_work_does_not_wait_for_a_busy_default_executor(tmp_path: Path) -> None:
    """The checkpoint saves run on the default executor (``asyncio.to_thread``); the ``.gz``
    work has threads of its own. Here the default executor's only thread is taken by a save
    that waits, and a held copy is still decompressed: neither waits for the other."""
    path = tmp_path / "c-json.log"
    _held_at_restart(path)
    t, reg = _tailer(path)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        release = threading.Event()
        busy = asyncio.ensure_future(asyncio.to_thread(release.wait))
        try:
            # A deadlock guard, not a timing: on the default executor this never ends.
            await asyncio.wait_for(t.prepare_off_loop(), 30)
        finally:
            release.set()
            await busy

    asyncio.run(main())
    assert t._held_ready is not None and t._held_ready.copies
    assert drain(t) == ["head-tail"]
    t.close()
    reg.close()


def test_the_source_reader_decompresses_a_held_copy_in_a_gz_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipper's reader (:class:`shipper.source.SourceRunner`) prepares its tailer's start
    off the loop: the held copy of a container's file is decompressed in a ``.gz`` thread, and
    its split line is shipped whole."""
    from shipper.config import load_config
    from shipper.daemon import Shipper
    from tests.shipper.receiver import Receiver
    from tests.shipper.shipping import shipper_args, until

    docker = _container_held_at_restart(tmp_path, "d" * 64)
    threads = _spy(monkeypatch)
    receiver = Receiver()
    cfg = load_config(shipper_args(tmp_path, receiver, "--poll-interval", "0.01", docker=docker))

    async def go() -> None:
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        await until(lambda: "head-tail" in receiver.lines())
        shipper.request_stop()
        assert await run == 0

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        receiver.close()
    assert threads and all(name.startswith("logq-gz") for name in threads)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_copy_is_held_for_a_start_put_off_for_lack_of_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decompressed copies' descriptors are outside the budget of log files: they must not
    be held while a start waits for room in it (thousands of sources waiting at a restart held
    one per copy, and the copies' temp space). Asked with the budget spent, nothing is
    decompressed; spent after the worker's answer, the start closes it and asks again later."""
    set_clock(monkeypatch, [1000.0])
    path = tmp_path / "c-json.log"
    _held_at_restart(path)
    threads = _spy(monkeypatch)
    t, reg = _tailer(path)
    before = _fds()
    room = [False]
    monkeypatch.setattr(fd_budget, "room", lambda: room[0])
    asyncio.run(t.prepare_off_loop())
    assert threads == []  # no room: the start is put off, nothing is read for it
    assert t.read() is None
    room[0] = True
    asyncio.run(t.prepare_off_loop())
    assert threads and _fds() > before  # the worker's copy, held for the start
    room[0] = False  # other sources took the room meanwhile
    assert t.read() is None
    assert _fds() == before
    room[0] = True
    asyncio.run(t.prepare_off_loop())
    assert drain(t) == ["head-tail"]
    t.close()
    reg.close()


def test_a_copy_rewritten_to_the_same_size_and_mtime_is_read_again_by_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same inode, size and mtime (rewritten in place, its mtime set back as ``touch -r`` or
    ``rsync --inplace`` do), other bytes: not the file the worker read (its ctime moved)."""
    t, reg, gz = _held_copy_read_by_the_worker(tmp_path, monkeypatch)
    st = gz.stat()
    other = gzip.compress(
        docker_line("before", 0) + docker_line("OTHER", 1, "stdout", nl=False), mtime=0
    )
    original = gz.read_bytes()
    other += b"\0" * (len(original) - len(other))  # gzip ignores trailing zeros
    assert len(other) == len(original) and other != original
    with open(gz, "r+b") as f:
        f.write(other)
    os.utime(gz, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (gz.stat().st_ino, gz.stat().st_size, gz.stat().st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )
    assert drain(t) == ["OTHERtail"]
    t.close()
    reg.close()


def _occupy_gz_threads() -> tuple[threading.Event, list[asyncio.Future[object]]]:
    """Both ``.gz`` threads busy until the returned gate is set (other sources' copies)."""
    gate = threading.Event()
    busy = [asyncio.ensure_future(gz_pool.run(gate.wait, None)) for _ in range(gz_pool.GZ_THREADS)]
    return gate, busy


def test_a_stop_does_not_wait_for_a_start_queued_for_a_gz_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart of many sources queues their copies for the two ``.gz`` threads: a stop meanwhile
    ends the sources waiting there at once, not at ``--retry-timeout`` "with unacknowledged
    batches" (nothing was read), and their copies are never decompressed. The window room
    reserved for the read given up is released."""
    from shipper import resume
    from shipper.config import load_config
    from shipper.daemon import Shipper
    from tests.shipper.receiver import Receiver
    from tests.shipper.shipping import shipper_args, until

    docker = _container_held_at_restart(tmp_path, "e" * 64)
    prepared: list[object] = []
    real = resume.prepare_held
    monkeypatch.setattr(resume, "prepare_held", lambda plan: prepared.append(plan) or real(plan))
    receiver = Receiver()
    args = ("--poll-interval", "0.01", "--retry-timeout", "1")
    cfg = load_config(shipper_args(tmp_path, receiver, *args, docker=docker))

    async def go() -> None:
        gate, busy = _occupy_gz_threads()
        pool = gz_pool._executor()
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        try:
            await until(lambda: pool.queued() > 0)  # the source's plan, queued
            shipper.request_stop()
            assert await run == 0
            assert shipper.window.used == 0  # the room reserved for the read not made is back
        finally:
            gate.set()
            await asyncio.gather(*busy, return_exceptions=True)
        await asyncio.to_thread(pool.shutdown, True)

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        receiver.close()
    assert prepared == []
    assert "unacknowledged" not in caplog.text


def test_a_stop_gives_up_the_scan_of_an_unread_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the scan of a copy compressed while the shipper was down, at the end of a
    held file (:meth:`Tailer.scan_off_loop`): the reader stopping does not wait for it."""
    from shipper import split_lines

    set_clock(monkeypatch, [1000.0])
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("before", 0) + docker_line("head-", 1, "stdout", nl=False))
    t, reg = _tailer(path)
    assert [log for log, _, _ in drain_sent(t)] == ["before"]
    rotate_docker(path, max_file=5, compress=True)
    reg.save()
    t.close()
    reg.close()
    path.write_bytes(docker_line("tail", 2, "stdout"))  # the next file, never opened
    rotate_docker(path, max_file=5, compress=True)
    path.write_bytes(docker_line("live", 3, "stdout"))
    gate, scanning = threading.Event(), threading.Event()

    def blocked_scan(question: object) -> object:
        scanning.set()
        gate.wait()
        raise AssertionError("not awaited any more")

    monkeypatch.setattr(split_lines, "unseen_cut", blocked_scan)
    t, reg = _tailer(path)

    async def main() -> None:
        t.gz_stop = asyncio.Event()
        while t.read() is not None:
            pass
        poll = asyncio.ensure_future(t.poll_off_loop())
        try:
            await asyncio.to_thread(scanning.wait)
            t.gz_stop.set()
            with pytest.raises(gz_pool.GivenUp):
                await asyncio.wait_for(poll, 10)  # a deadlock guard, not a timing
        finally:
            gate.set()

    asyncio.run(main())
    t.close()
    reg.close()
