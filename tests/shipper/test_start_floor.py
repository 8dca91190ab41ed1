"""What a start leaves to the search for missed rotations, and what that search finds.

A start that cannot open the live file (empty, or not there yet) sets the floor of the search
from the newest file time (``test_empty_live_at_start.py``). The rotated files the start found
and did not open -- finished by a previous run and forgotten, or older than a first sighting
reads -- must not be taken for missed rotations then, nor when file times tie (1 s clocks):
opened again from 0 their lines went out again, and the first part of a split line that had
been shipped cut was joined to the next file's part and stored twice. A file written, rotated
and compressed before the empty live file was ever opened is counted as lost, and a file
rotated in and out while the newest live file stays empty is read without waiting for it.
Found by R1's review of 91d11ae (session 14).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line, docker_line
from tests.shipper.tailing import (
    aggregator_keeps,
    create_on_inode,
    drain_sent,
    fresh_process,
    on_a_freed_inode,
    rotate_docker,
    spec_for,
)


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The tailer's clock (moved by the tests past the rotate wait and the split-line flush),
    and a process that has not seen any source yet."""
    return fresh_process(monkeypatch)


def tailer(path: Path, losses: list[str], fmt: str = "docker") -> tuple[Tailer, Registry]:
    reg = Registry(path.parent / "state")
    return Tailer(spec_for(path, fmt), reg, "h", 65536, on_loss=losses.append), reg


def stop(t: Tailer, reg: Registry) -> None:
    t.close()
    reg.save()
    reg.close()


def backdate(path: Path | str, seconds: float = 10.0, to: int | None = None) -> int:
    """Set the file's times ``seconds`` before now (or to ``to``); the time set."""
    stamp = to if to is not None else os.stat(path).st_mtime_ns - int(seconds * 1e9)
    os.utime(path, ns=(stamp, stamp))
    return stamp


def logs(sent: list[tuple[str, int, str]]) -> list[str]:
    return [log for log, _, _ in sent]


def test_a_restart_between_the_rename_and_the_new_file_reads_no_finished_file_again(
    tmp_path: Path, clock: list[float]
) -> None:
    """The newest file when the restart finds no live file is one finished and forgotten: it
    sets the floor, and the search took it again when the live file came (R1 #2)."""
    path = tmp_path / "c-json.log"
    losses: list[str] = []
    path.write_bytes(docker_line("a 0", 0) + docker_line("part-one ", 1, "stderr", nl=False))
    os.replace(path, f"{path}.1")  # rotated; the new live file is not there yet
    t, reg = tailer(path, losses)
    sent = drain_sent(t)
    clock[0] += 10.0  # the split line waits for its next part, then goes as it is
    sent += drain_sent(t)
    assert aggregator_keeps(sent) == ["a 0", "part-one "]
    stop(t, reg)
    backdate(f"{path}.1")
    t, reg = tailer(path, losses)
    sent += drain_sent(t)
    path.write_bytes(docker_line("part-two", 2, "stderr") + docker_line("b 0", 3))
    again = drain_sent(t)
    assert logs(again) == ["part-two", "b 0"]
    assert aggregator_keeps(sent + again) == ["a 0", "part-one ", "part-two", "b 0"]
    assert losses == []
    reg.close()


def test_a_restart_with_an_empty_live_file_as_old_as_the_finished_one_reads_nothing_again(
    tmp_path: Path, clock: list[float]
) -> None:
    """The same with the new live file there, empty, its time that of the rename (one tick)."""
    path = tmp_path / "c-json.log"
    losses: list[str] = []
    path.write_bytes(docker_line("a 0", 0) + docker_line("a 1", 1))
    os.replace(path, f"{path}.1")
    path.write_bytes(b"")
    t, reg = tailer(path, losses)
    assert logs(drain_sent(t)) == ["a 0", "a 1"]
    clock[0] += 10.0  # past the rotate wait: .1 is let go, its checkpoint forgotten
    assert drain_sent(t) == []
    stop(t, reg)
    stamp = backdate(f"{path}.1")
    backdate(path, to=stamp)
    t, reg = tailer(path, losses)
    assert drain_sent(t) == []
    path.write_bytes(docker_line("b 0", 2))
    backdate(path, to=stamp)
    assert logs(drain_sent(t)) == ["b 0"]
    assert losses == []
    reg.close()


def test_a_file_passed_over_at_the_start_is_not_taken_for_a_missed_one_on_a_time_tie(
    tmp_path: Path, clock: list[float]
) -> None:
    """A source first seen skips a rotated file older than the previous run's last save;
    the live file it follows has the same (coarse) time. When that one is rotated, the search
    looks from its time and found the skipped file too (R1 #6)."""
    path = tmp_path / "c-json.log"
    losses: list[str] = []
    path.write_bytes(docker_line("a 0", 0) + docker_line("a 1", 1))
    os.replace(path, f"{path}.1")
    path.write_bytes(b"")
    t, reg = tailer(path, losses)
    assert logs(drain_sent(t)) == ["a 0", "a 1"]
    clock[0] += 10.0
    assert drain_sent(t) == []
    stop(t, reg)  # the registry keeps nothing of this source: its next start is a first sighting
    stamp = backdate(f"{path}.1")
    path.write_bytes(docker_line("b 0", 2))
    backdate(path, to=stamp)
    t, reg = tailer(path, losses)
    assert logs(drain_sent(t)) == ["b 0"]
    rotate_docker(path, max_file=5)
    path.write_bytes(docker_line("c 0", 3))
    clock[0] += 10.0
    assert logs(drain_sent(t)) == ["c 0"]
    assert losses == []
    reg.close()


def test_an_empty_live_file_written_rotated_and_compressed_before_it_was_opened_is_a_loss(
    tmp_path: Path,
) -> None:
    """Docker's ``compress`` (``.1`` gzipped at once): the file empty at the start got lines
    and was rotated and compressed before the next look. Its lines cannot be read, and were
    counted nowhere (R1 #3)."""
    path = tmp_path / "c-json.log"
    path.write_bytes(b"")
    losses: list[str] = []
    t, reg = tailer(path, losses)
    assert drain_sent(t) == []
    path.write_bytes(docker_line("first 0", 0) + docker_line("first 1", 1))
    rotate_docker(path, max_file=3, compress=True)
    path.write_bytes(docker_line("second 0", 2))
    assert logs(drain_sent(t)) == ["second 0"]
    assert losses == ["rotated_unseen"]
    reg.close()


def test_compressed_copies_there_at_the_start_are_not_counted_as_unseen(tmp_path: Path) -> None:
    """The same search with compressed copies made before the start (newer than the empty
    live file: compressed after the rename) and after it, of files read to their end: none is
    a loss."""
    path = tmp_path / "c-json.log"
    losses: list[str] = []
    path.write_bytes(docker_line("old 0", 0))
    t, reg = tailer(path, losses)
    assert logs(drain_sent(t)) == ["old 0"]
    stop(t, reg)
    rotate_docker(path, max_file=3, compress=True)  # while the shipper is down: read whole
    path.write_bytes(b"")
    backdate(path)  # the live file is older than the compressed copy
    t, reg = tailer(path, losses)
    assert drain_sent(t) == []
    path.write_bytes(docker_line("new 0", 1))
    assert logs(drain_sent(t)) == ["new 0"]
    rotate_docker(path, max_file=3, compress=True)  # .1.gz -> .2.gz; read whole: no loss
    path.write_bytes(docker_line("newer 0", 2))
    assert logs(drain_sent(t)) == ["newer 0"]
    assert losses == []
    reg.close()


def test_a_file_rotated_in_and_out_is_read_while_the_newest_live_file_stays_empty(
    tmp_path: Path, clock: list[float]
) -> None:
    """The runtime rotates twice between two looks and the newest file stays empty (a quiet
    container after a burst; the kubelet creates it empty): the file in between was read only
    once the container wrote again (R1 #5)."""
    path = tmp_path / "0.log"
    path.write_bytes(cri_line("a 0", 0))
    losses: list[str] = []
    t, reg = tailer(path, losses, "cri")
    assert logs(drain_sent(t)) == ["a 0"]
    os.replace(path, f"{path}.20260101-000001")
    path.write_bytes(cri_line("b 0", 1) + cri_line("b 1", 2))
    os.replace(path, f"{path}.20260101-000011")
    path.write_bytes(b"")
    got = logs(drain_sent(t))
    clock[0] += 10.0  # past the rotate wait of the file renamed first
    got += logs(drain_sent(t))
    assert got == ["b 0", "b 1"]
    assert losses == []
    path.write_bytes(cri_line("c 0", 3))  # the container writes again: nothing read twice
    assert logs(drain_sent(t)) == ["c 0"]
    reg.close()


def test_a_first_seen_file_with_a_whole_second_time_written_after_the_last_save_is_read(
    tmp_path: Path,
) -> None:
    """Coarse file times (1 s) drop the fraction: a rotated file written just after the
    previous run's last save looked older than it, and a source first seen skipped it unread.
    A file time that is a whole second counts as the end of that second."""
    path = tmp_path / "c-json.log"
    losses: list[str] = []
    reg = Registry(tmp_path / "state")
    reg.save()  # the previous run's last save, with nothing of this source
    saved = os.stat(reg.path).st_mtime_ns
    reg.close()
    path.write_bytes(docker_line("a 0", 0))
    os.replace(path, f"{path}.1")
    backdate(f"{path}.1", to=saved // 10**9 * 10**9)  # its second, the fraction dropped
    path.write_bytes(docker_line("b 0", 1))
    t, reg = tailer(path, losses)
    assert logs(drain_sent(t)) == ["a 0", "b 0"]
    reg.close()


def test_a_restart_does_not_take_an_older_forgotten_file_of_the_same_second_for_a_newer_one(
    tmp_path: Path, clock: list[float]
) -> None:
    """Rotated files the registry does not know are read at a restart when they are newer than
    the newest one it knows (rotated twice while the shipper was down). With 1 s file times,
    an older file, finished and forgotten by the previous run, has the same time: the name
    tells it is older (Docker's ``.2`` before its ``.1``), and it is not read again (R1 #6)."""
    path = tmp_path / "c-json.log"
    losses: list[str] = []
    path.write_bytes(docker_line("a 0", 0))
    t, reg = tailer(path, losses)
    assert logs(drain_sent(t)) == ["a 0"]
    rotate_docker(path, max_file=5)
    path.write_bytes(docker_line("b 0", 1))
    assert logs(drain_sent(t)) == ["b 0"]
    clock[0] += 10.0  # past the rotate wait: the first file is let go and forgotten
    assert drain_sent(t) == []
    assert len(reg.items()) == 1
    stop(t, reg)
    stamp = backdate(f"{path}.1")
    backdate(path, to=stamp)  # both written in one (coarse) second
    rotate_docker(path, max_file=5)  # while the shipper is down
    path.write_bytes(docker_line("c 0", 2))
    t, reg = tailer(path, losses)
    assert logs(drain_sent(t)) == ["c 0"]
    assert losses == []
    reg.close()


def test_a_copy_on_the_inode_and_time_of_one_there_at_the_start_is_still_a_loss(
    tmp_path: Path,
) -> None:
    """Copies there at the start are the start's to judge, and were told by (device, inode,
    time). Docker's ``max-file`` deletes the oldest copy, and the next one compressed in the
    same tick of a coarse clock (1 s file times) got its inode: taken for the copy there at the
    start, a file the shipper never read was not counted (R3s20, the extended tailer model's
    ``cri_slow_reopen`` seed 34, coarse times)."""

    def scenario(tmp_path: Path) -> None:
        path = tmp_path / "c-json.log"
        old = Path(f"{path}.1.gz")
        old.write_bytes(gzip.compress(docker_line("old 0", 0)))
        path.write_bytes(b"")
        tick = os.stat(path).st_mtime_ns // 10**9 * 10**9
        for p in (old, path):
            backdate(p, to=tick)
        losses: list[str] = []
        t, reg = tailer(path, losses)
        assert drain_sent(t) == []
        ino = old.stat().st_ino
        path.write_bytes(docker_line("first 0", 1) + docker_line("first 1", 2))
        old.unlink()  # max-file 2: the oldest copy goes, the live file is rotated and compressed
        os.replace(path, f"{path}.1")
        create_on_inode(old, gzip.compress(Path(f"{path}.1").read_bytes()), ino)
        os.unlink(f"{path}.1")
        backdate(old, to=tick)
        path.write_bytes(docker_line("second 0", 3))
        assert logs(drain_sent(t)) == ["second 0"]
        assert losses == ["rotated_unseen"]
        reg.close()

    on_a_freed_inode(scenario, tmp_path)
