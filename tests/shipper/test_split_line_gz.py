"""Without ``--multiline``: a line the runtime split, open when Docker's ``compress: true``
rotation gzips (and deletes) the file holding its first parts (H1s20).

The file's checkpoint stays at the line's start until the line is acknowledged (see
:mod:`shipper.split_lines`); a restart reads it again from its ``.gz`` copy (see
:mod:`shipper.held_gz`), as the option has done since R1s19. Before, the parts were lost at any
restart (kill -9 or a graceful one) and the next part stored alone; with no next file they were
never shipped; and a new file on the deleted file's inode could take its checkpoint over, so
that a restart did not even count them lost.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from shipper import held_gz
from shipper.checkpoint import Registry
from shipper.split_lines import SPLIT_FLUSH_SECONDS
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line, docker_line
from tests.shipper.tailing import (
    aggregator_keeps,
    commit,
    create_on_inode,
    drain,
    drain_sent,
    on_a_freed_inode,
    rotate_docker,
    set_clock,
    spec_for,
    stop_behind_at_a_compress_rotation,
)


def _tailer(path: Path, losses: list[str] | None = None) -> tuple[Tailer, Registry]:
    """A tailer of the Docker file at ``path``, the option off, its state beside it."""
    reg = Registry(path.parent / "state")
    on_loss = losses.append if losses is not None else None
    return Tailer(spec_for(path), reg, "h", 65536, on_loss=on_loss), reg


def _kill(t: Tailer, reg: Registry) -> None:
    """``kill -9`` after the registry's last save: nothing else is written."""
    reg.save()
    t.close()
    reg.close()


@pytest.mark.parametrize("acked_before", [False, True], ids=["next-part-later", "ack-lost"])
def test_a_split_line_open_at_a_compress_rotation_is_stored_whole_once_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acked_before: bool
) -> None:
    """The first part of a stdout line ends the file; Docker rotates with ``compress`` (the
    file gzipped and deleted at once) and writes the next file; the shipper is killed, either
    before the line's last part is written or after it read it (the ack lost), and restarted.
    The aggregator keeps the line whole, once; nothing is counted lost."""
    set_clock(monkeypatch, [1000.0])
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("before", 0) + docker_line("head-", 1, "stdout", nl=False))
    t, reg = _tailer(path)
    sent = drain_sent(t)
    assert [log for log, _, _ in sent] == ["before"]
    rotate_docker(path, max_file=3, compress=True)
    path.write_bytes(docker_line("err", 2, "stderr"))
    if acked_before:
        with open(path, "ab") as f:
            f.write(docker_line("tail", 3, "stdout"))
    sent += drain_sent(t, ack=not acked_before)
    _kill(t, reg)
    losses: list[str] = []
    t, reg = _tailer(path, losses)
    if not acked_before:
        with open(path, "ab") as f:
            f.write(docker_line("tail", 3, "stdout"))
    sent += drain_sent(t)
    assert sorted(aggregator_keeps(sent)) == ["before", "err", "head-tail"]
    assert losses == []
    # The copy's checkpoint went with the line's ack: only the live file's is left.
    assert [s.path for _, s in reg.items()] == [str(path)]
    reg.close()


def test_a_graceful_restart_ships_the_split_line_whole_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop without ``--multiline`` does not ship an open split line (its next part may come):
    the restart after a graceful stop reads the parts again from the ``.gz`` as after a kill,
    also when it finds the line's first parts in two files, both compressed."""
    set_clock(monkeypatch, [1000.0])
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("a-", 0, "stdout", nl=False))
    t, reg = _tailer(path)
    assert drain(t) == []
    rotate_docker(path, max_file=4, compress=True)
    path.write_bytes(docker_line("b-", 1, "stdout", nl=False))
    assert drain(t) == []
    rotate_docker(path, max_file=4, compress=True)
    path.write_bytes(docker_line("x", 2, "stderr"))
    assert drain(t) == ["x"]
    _kill(t, reg)  # a graceful stop saves the same registry
    losses: list[str] = []
    t, reg = _tailer(path, losses)
    with open(path, "ab") as f:
        f.write(docker_line("c", 3, "stdout"))
    assert drain(t) == ["a-b-c"]
    assert losses == []
    reg.close()


def test_a_file_rotated_after_the_held_one_is_read_whatever_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet (CRI, ``0.log.<time>``, the previous file gzipped at each rotation): a
    ``P`` part ends the file, which is rotated; the shipper is killed before it opens the
    next file (the live path not created again yet). While it is down the next file gets the
    line's last part and is rotated too, and the held file gzipped. Its lines were written
    before the held file's last acknowledgement (acks lag): by time alone it looked older than
    the checkpoint and was passed over, never read nor counted, and the held parts were
    joined to the live file's next line. Rotated after the held file, it is read."""
    set_clock(monkeypatch, [1000.0])
    path = tmp_path / "0.log"
    path.write_bytes(cri_line("a", 0) + cri_line("head-", 1, tag="P"))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path, "cri"), reg, "h", 65536)
    assert drain(t) == ["a"]
    (held,) = [s for _, s in reg.items()]
    first, second = tmp_path / "0.log.20261130-100000", tmp_path / "0.log.20261130-100500"
    os.rename(path, first)
    _kill(t, reg)
    path.write_bytes(cri_line("tail", 2) + cri_line("err", 3, "stderr"))
    before_ack = int((held.updated - 1) * 1e9)
    os.utime(path, ns=(before_ack, before_ack))
    os.rename(path, second)
    Path(f"{first}.gz").write_bytes(gzip.compress(first.read_bytes()))
    first.unlink()
    path.write_bytes(cri_line("next", 4))
    losses: list[str] = []
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path, "cri"), reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == ["head-tail", "err", "next"]
    assert losses == []
    reg.close()


def test_a_split_line_whose_file_is_deleted_at_its_rotation_goes_out_after_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container wrote a first part and nothing since (it died mid-line); the rotation
    gzipped the file away and no next file came. With no file open the 5 s wait never ran:
    the parts were never shipped (the fuzzer's uninterrupted runs lost them)."""
    clock = [1000.0]
    set_clock(monkeypatch, clock)
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("last words", 0, "stdout", nl=False))
    t, reg = _tailer(path)
    assert drain(t) == []
    rotate_docker(path, max_file=3, compress=True)
    assert drain(t) == []
    clock[0] += SPLIT_FLUSH_SECONDS - 0.5
    assert drain(t) == []  # its next part may still come
    clock[0] += 1.0
    assert drain(t) == ["last words"]
    assert list(reg.items()) == []  # acknowledged: the deleted file's checkpoint went
    reg.close()


def test_a_new_file_on_the_inode_of_a_held_file_does_not_take_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held file is deleted by the gzip and the next file created on its freed inode
    (ext4 does that at once) with another first line: its entry -- at offset 0, nothing
    acknowledged, an epoch above 0 as the inode was used before -- looked like the one a
    truncation in place leaves for new content (:meth:`Registry.take_restarted`), and the new
    file took it over. A restart then knew nothing of the held file: its parts were lost,
    uncounted, and the next part stored alone."""

    def scenario(tmp_path: Path) -> None:
        set_clock(monkeypatch, [1000.0])
        path = tmp_path / "c-json.log"
        path.write_bytes(docker_line("first", 0))
        t, reg = _tailer(path)
        assert drain(t) == ["first"]
        freed = path.stat().st_ino
        rotate_docker(path, max_file=5, compress=True)
        assert drain(t) == []  # let go: its inode is free once the descriptor is closed
        # The held file on the inode just freed: epoch 1 (the finished entry of "first" had 0).
        create_on_inode(path, docker_line("head-", 1, "stdout", nl=False), freed)
        assert drain(t) == []
        (held,) = [(k, s) for k, s in reg.items() if s.path == str(path)]
        assert held[1].epoch > 0 and held[1].offset == 0 and held[1].acked == 0
        rotate_docker(path, max_file=5, compress=True)
        assert drain(t) == []  # let go, held: the line's next part is not there yet
        create_on_inode(path, docker_line("err", 2, "stderr"), freed)
        assert drain(t) == ["err"]
        assert held[0] in dict(reg.items())  # still there for a restart
        _kill(t, reg)
        losses: list[str] = []
        t, reg = _tailer(path, losses)
        with open(path, "ab") as f:
            f.write(docker_line("tail", 3, "stdout"))
        assert drain(t) == ["head-tail"]
        assert losses == []
        reg.close()

    on_a_freed_inode(scenario, tmp_path)


def test_a_file_behind_at_the_stop_and_compressed_is_read_from_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No split line open: a file whose last lines were in flight at a kill and that Docker
    compressed is read from its ``.gz`` too, from its checkpoint on, before the next file:
    nothing is lost. Before, a copy was read again only for a split line open at its end, and
    this one's unread lines were counted lost (``deleted_unread``, a page) with the copy right
    there (a shipper stopped for a DaemonSet or ECS agent update met it often)."""
    set_clock(monkeypatch, [1000.0])
    path = tmp_path / "c-json.log"
    stop_behind_at_a_compress_rotation(path)
    losses: list[str] = []
    t, reg = _tailer(path, losses)
    assert drain(t) == ["in flight", "next"]
    assert losses == []
    assert os.path.exists(f"{path}.1.gz")
    reg.close()


def test_a_copy_behind_at_the_stop_ending_in_whole_lines_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines after the acknowledged ones, in a copy that ends in whole lines, are read
    from it once: decompressed once, each line sent once, and a restart after they are
    acknowledged reads nothing again. Before, the copy was only streamed to find whether a
    split line was open at its end (R3s20) and, none being, not decompressed: 45 lines lost."""
    set_clock(monkeypatch, [1000.0])
    made: list[Path] = []
    real = held_gz.decompressed

    def spy(gz: Path, opened: BinaryIO | None = None) -> int | None:
        made.append(gz)
        return real(gz, opened)

    monkeypatch.setattr(held_gz, "decompressed", spy)
    path = tmp_path / "c-json.log"
    path.write_bytes(b"".join(docker_line(f"line {i}", i) for i in range(50)))
    t, reg = _tailer(path)
    chunk = t.read(max_lines=5)
    assert chunk is not None
    commit(t, chunk)
    rotate_docker(path, max_file=3, compress=True)
    path.write_bytes(docker_line("next", 50))
    _kill(t, reg)
    losses: list[str] = []
    t, reg = _tailer(path, losses)
    assert drain(t) == [f"line {i}" for i in range(5, 50)] + ["next"]
    assert losses == []
    assert made == [Path(f"{path}.1.gz")]
    _kill(t, reg)
    t, reg = _tailer(path, losses)
    assert drain(t) == []
    assert losses == []
    assert made == [Path(f"{path}.1.gz")]
    reg.close()


@pytest.mark.parametrize("kill", [False, True], ids=["running", "killed"])
def test_a_next_file_rotated_away_while_the_path_named_none_is_read_before_the_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: bool
) -> None:
    """Docker ``max-file: 2`` with a runtime that creates the new file only at its next write:
    the file holding a split line's first part is renamed, the next file is created with the
    line's last part and renamed in turn (the first one deleted), and the path names no file.
    No file open, the held part went out alone after the wait; once acknowledged, the source
    had no checkpoint left, and a restart took it for a new source and passed the next file
    over: its part lost, uncounted (R3s20, the extended tailer model's ``docker_late_create``
    seed 54). The next file is found and read first: the line is stored whole."""
    clock = [1000.0]
    set_clock(monkeypatch, clock)
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("before", 0) + docker_line("head-", 1, "stdout", nl=False))
    losses: list[str] = []
    t, reg = _tailer(path, losses)
    sent = drain_sent(t)
    rotate_docker(path, max_file=2)  # the new file comes with the next write
    clock[0] += 1.0
    sent += drain_sent(t)
    path.write_bytes(docker_line("tail", 2, "stdout"))
    rotate_docker(path, max_file=2)  # the first file deleted; the path names none again
    sent += drain_sent(t)  # let go, deleted, its part held
    clock[0] += SPLIT_FLUSH_SECONDS + 1
    sent += drain_sent(t)
    if kill:
        _kill(t, reg)
        t, reg = _tailer(path, losses)
    path.write_bytes(docker_line("after", 3, "stdout"))
    clock[0] += SPLIT_FLUSH_SECONDS + 1
    sent += drain_sent(t)
    assert sorted(aggregator_keeps(sent)) == ["after", "before", "head-tail"]
    assert losses == []
    reg.close()
