"""``logq-shipper --once`` is bounded: it ships what the files held when it started, then exits.

DESIGN.md section 2: ``--once`` means "ship what the files hold now, wait for every ack, exit 0".
A container that writes faster than the shipper ships must not keep a ``--once`` run going: each
source ships whole lines up to its live file's size at start (plus rotated files that existed
then), and leaves the rest -- with its checkpoint just before it -- for the next run. The writer
here outpaces the shipper (small batches, a receiver that acks slowly), so a run that follows the
file instead of stopping at its bound would never end; the wait for it is generous but bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root
from tests.shipper.tailing import commit, drain, spec_for
from tests.support.procs import start_group

CID = "c" * 64
RUN_LIMIT = 90.0
"""Seconds a bounded run gets to exit (it needs a few); an unbounded one never exits."""


def text(i: int) -> str:
    return f"line {i:07d} " + "x" * 60


def once_tailer(path: Path, state: Path) -> tuple[Tailer, Registry]:
    reg = Registry(state)
    return Tailer(spec_for(path), reg, "h", 65536, once=True), reg


def next_run(t: Tailer, reg: Registry, path: Path, state: Path) -> tuple[Tailer, Registry]:
    """End this run (checkpoints as acknowledged, persisted) and start the next."""
    t.close()
    reg.save()
    reg.close()
    return once_tailer(path, state)


def offset(reg: Registry) -> int:
    (_, st), *rest = reg.items()
    assert not rest
    return st.offset


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # Slow acks and small batches: the shipper ships at most a few hundred lines a second.
    r = Receiver(ack_delay=0.02)
    yield r
    r.close()


def start_once(
    receiver: Receiver, root: Path, state: Path, log: Path, batch_lines: int = 10
) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "shipper.daemon",
        "--aggregator", receiver.address,
        "--docker-root", str(root),
        "--cri-root", str(empty_root(root.parent, "no-cri")),
        "--state-dir", str(state),
        "--once",
        "--batch-lines", str(batch_lines),
        "--poll-interval", "0.05",
    ]  # fmt: skip
    return start_group(cmd, log)


def finish(proc: subprocess.Popen, log: Path) -> int:
    """The run's exit status; a run still going after :data:`RUN_LIMIT` is killed and fails."""
    try:
        return proc.wait(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        tail = log.read_text(errors="replace")[-3000:]
        pytest.fail(f"--once still running after {RUN_LIMIT:g} s (not bounded)\n{tail}")


class Writer(threading.Thread):
    """Appends numbered lines as fast as it can, each in two writes (so a reader can find a
    half-written last line), until stopped."""

    def __init__(self, path: Path, start: int) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.next = start
        self.stop = threading.Event()

    def run(self) -> None:
        with open(self.path, "ab", buffering=0) as f:
            while not self.stop.is_set():
                line = docker_line(text(self.next), self.next)
                f.write(line[:40])
                f.write(line[40:])
                self.next += 1
                if self.next % 10 == 0:
                    time.sleep(0.005)  # up to 2000 lines a second: faster than the shipper

    def halt(self) -> int:
        self.stop.set()
        self.join(10)
        return self.next


def received(receiver: Receiver) -> list[str]:
    return [t.rstrip("\n") for t in receiver.lines()]


@pytest.mark.integration
def test_once_ends_at_the_bound_while_the_writer_goes_on(tmp_path: Path, receiver: Receiver):
    root = tmp_path / "containers"
    start_lines = 300
    path = make_container(root, CID, "chatty", lines=[text(i) for i in range(start_lines)])
    state = tmp_path / "state"
    writer = Writer(path, start_lines)
    writer.start()
    try:
        time.sleep(0.2)  # the writer is going before the shipper starts
        log = tmp_path / "once-1.log"
        rc = finish(start_once(receiver, root, state, log), log)
        assert rc == 0, log.read_text()[-3000:]
        first = received(receiver)
    finally:
        total = writer.halt()
    # Every line in the file before the run (and at its start) arrived exactly once, in order,
    # whole; nothing after a gap, and the run did not follow the writer to the end.
    assert first == [text(i) for i in range(len(first))]
    assert len(first) >= start_lines
    assert len(first) < total
    assert receiver.duplicates == 0

    # The next run ships the rest from the checkpoint: no line twice, none missing. The
    # writer has stopped; acks come at once and batches are large, so this is quick.
    receiver.ack_delay = 0.0
    log = tmp_path / "once-2.log"
    rc = finish(start_once(receiver, root, state, log, batch_lines=2048), log)
    assert rc == 0, log.read_text()[-3000:]
    assert received(receiver) == [text(i) for i in range(total)]
    assert receiver.duplicates == 0


@pytest.mark.integration
def test_rotation_during_once_keeps_the_lines_below_the_bound(
    tmp_path: Path, receiver: Receiver
) -> None:
    root = tmp_path / "containers"
    start_lines = 1000
    path = make_container(root, CID, "rotating", lines=[text(i) for i in range(start_lines)])
    state = tmp_path / "state"
    log = tmp_path / "once-1.log"
    proc = start_once(receiver, root, state, log)
    try:
        receiver.wait_for(30, timeout=60)  # the run started, well before its bound
        # Docker-style rotation mid-run: more lines (after the bound) into the old file, then
        # rename it and go on in a new one.
        n = start_lines
        with open(path, "ab") as f:
            for _ in range(50):
                f.write(docker_line(text(n), n))
                n += 1
        path.rename(path.with_name(path.name + ".1"))
        with open(path, "ab") as f:
            for _ in range(50):
                f.write(docker_line(text(n), n))
                n += 1
    finally:
        rc = finish(proc, log)
    assert rc == 0, log.read_text()[-3000:]
    # Exactly what the file held at start: the rotated-away bytes below the bound were read
    # from the renamed file, nothing written after the start was.
    assert received(receiver) == [text(i) for i in range(start_lines)]
    assert receiver.duplicates == 0

    log = tmp_path / "once-2.log"
    rc = finish(start_once(receiver, root, state, log), log)
    assert rc == 0, log.read_text()[-3000:]
    assert received(receiver) == [text(i) for i in range(n)]
    assert receiver.duplicates == 0


def test_half_written_line_at_the_bound_is_left_for_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    whole = docker_line("a", 0) + docker_line("b", 1)
    half = docker_line("c", 2)
    path.write_bytes(whole + half[:10])
    t, reg = once_tailer(path, state)
    first = t.read()  # the source starts: its bound is the file's size now
    assert first is not None and first.lines.logs == ["a", "b"]
    with open(path, "ab") as f:  # the line is finished, and another written, after the start
        f.write(half[10:] + docker_line("d", 3))
    commit(t, first)
    assert drain(t) == []
    assert t.finished()
    assert offset(reg) == len(whole)  # the checkpoint stays before the half line
    t, reg = next_run(t, reg, path, state)
    assert drain(t) == ["c", "d"]
    assert offset(reg) == path.stat().st_size
    reg.close()


def test_split_line_unfinished_at_the_bound_is_shipped_as_it_is(tmp_path: Path) -> None:
    """A run that ends with a split line open ships its parts as they are (a container's
    last line, a crash message without a newline, must not wait for a next run that a
    removed container never gets); the next run starts after them, so a next part written
    later is a line of its own, and nothing is shipped twice (see Tailer.end)."""
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    before = docker_line("before", 0)
    path.write_bytes(before + docker_line("A" * 16384, 1, nl=False))  # a 16 KiB partial entry
    t, reg = once_tailer(path, state)
    assert drain(t) == ["before", "A" * 16384]
    assert t.finished()
    assert offset(reg) == path.stat().st_size  # past the parts
    with open(path, "ab") as f:
        f.write(docker_line("tail", 2) + docker_line("after", 3))
    t, reg = next_run(t, reg, path, state)
    assert drain(t) == ["tail", "after"]
    reg.close()


def test_copytruncate_during_once_finishes_the_copy_to_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    path.write_bytes(b"".join(docker_line(f"old {i}", i) for i in range(3)))
    t, reg = once_tailer(path, state)
    first = t.read(max_lines=1)  # the source starts: its bound is the three lines
    assert first is not None and first.lines.logs == ["old 0"]
    commit(t, first)
    with open(path, "ab") as f:
        f.write(docker_line("old 3", 3))  # after the bound, before the rotation
    shutil.copyfile(path, path.with_name(path.name + ".1"))  # logrotate copytruncate
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(docker_line("new 0", 4))
    assert drain(t) == ["old 1", "old 2"]
    assert t.finished()
    t, reg = next_run(t, reg, path, state)
    assert drain(t) == ["old 3", "new 0"]
    reg.close()
