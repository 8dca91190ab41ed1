"""The tailer step by step: resume, rotation, missed rotations, copytruncate, inode reuse."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import shipper.rotate_wait as rotate_wait
from shipper.checkpoint import FileState, Registry, file_key
from shipper.fingerprint import fingerprint
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line
from tests.shipper.tailing import append_docker, commit, drain, spec_for


def test_resume_after_restart_from_checkpoint(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 10)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == [f"line {i}" for i in range(10)]
    t.close()
    append_docker(path, 10, 5)
    t2 = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t2) == [f"line {i}" for i in range(10, 15)]


def test_unacked_lines_are_read_again(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 10)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert len(drain(t, ack=False)) == 10
    t.close()
    t2 = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t2) == [f"line {i}" for i in range(10)]


def test_rename_rotation_finishes_old_file_first(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 5)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == [f"line {i}" for i in range(5)]
    append_docker(path, 5, 3)  # written before the rotation, not read yet
    os.rename(path, tmp_path / "c-json.log.1")
    append_docker(path, 8, 4)
    assert drain(t) == [f"line {i}" for i in range(5, 12)]
    # The renamed file is watched for the rotate wait (another writer may append), then let
    # go: its checkpoint is gone, the live one's is there.
    t._lingering[0].rotated_at -= rotate_wait.ROTATE_WAIT_SECONDS
    assert drain(t) == []
    sources = [s.path for _, s in reg.items()]
    assert sources == [str(path)]


def test_two_rotations_between_polls(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 3)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert len(drain(t)) == 3
    os.rename(path, tmp_path / "c-json.log.1")
    append_docker(path, 3, 3)
    os.rename(tmp_path / "c-json.log.1", tmp_path / "c-json.log.2")
    os.rename(path, tmp_path / "c-json.log.1")
    append_docker(path, 6, 3)
    assert drain(t) == [f"line {i}" for i in range(3, 9)]


def test_rotated_file_resumed_after_restart(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 4)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert len(drain(t)) == 4
    t.close()
    # While the shipper is down: more lines, then a rotation, then new lines.
    append_docker(path, 4, 2)
    os.rename(path, tmp_path / "c-json.log.1")
    append_docker(path, 6, 2)
    t2 = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t2) == [f"line {i}" for i in range(4, 8)]


def test_copytruncate_reads_the_copy_then_restarts(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(f"first {i}\n".encode() for i in range(5)))
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    assert len(drain(t)) == 5
    old_sid = t.live.source_id if t.live else None
    with open(path, "ab") as f:
        f.write(b"late 1\nlate 2\n")  # lands in the copy only
    shutil.copyfile(path, tmp_path / "app.log.1")
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"after 1\nafter 2\n")
    assert drain(t) == ["late 1", "late 2", "after 1", "after 2"]
    assert t.live is not None and t.live.source_id != old_sid


def test_copytruncate_same_first_line_gets_new_source_id(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"header\nbody 1\nbody 2\n")
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    assert len(drain(t)) == 3
    old_sid = t.live.source_id if t.live else None
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"header\n")
    assert drain(t) == ["header"]
    assert t.live is not None and t.live.source_id == f"{old_sid}+1"


def test_inode_reuse_is_not_resumed(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 3)
    st = path.stat()
    # A checkpoint for the same device + inode but another file's first line.
    reg.put(
        file_key(st.st_dev, st.st_ino, "0123456789abcdef"),
        FileState("test:c-json.log", str(path), "h:old", 10_000, 10_000),
    )
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == ["line 0", "line 1", "line 2"]
    fd = os.open(path, os.O_RDONLY)
    try:
        assert reg.get(file_key(st.st_dev, st.st_ino, fingerprint(fd) or "")) is not None
    finally:
        os.close(fd)


def test_deleted_file_is_drained_and_released(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 2)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert len(drain(t)) == 2
    append_docker(path, 2, 2)
    path.unlink()
    assert drain(t) == ["line 2", "line 3"]
    assert t.cursors == [] and reg.items() == []


def test_one_mib_line_truncated_and_the_next_line_survives(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "big.log"
    path.write_bytes(b"x" * (3 << 20) + b"\nnext\n")
    t = Tailer(spec_for(path, "plain"), reg, "h", 256 * 1024, block_size=1 << 20)
    out = drain(t)
    assert len(out) == 2 and out[1] == "next"
    assert out[0].startswith("x" * 1000)
    assert out[0].endswith(f"[logq-shipper: truncated {(3 << 20) - 256 * 1024} bytes]")


def test_docker_one_mib_line_joined_from_partials(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    text = "".join(chr(97 + i % 26) for i in range(1 << 20))
    with open(path, "wb") as f:
        for i in range(0, len(text), 16384):
            part = text[i : i + 16384]
            f.write(docker_line(part, 0, nl=i + 16384 >= len(text)))
        f.write(docker_line("after", 1))
    t = Tailer(spec_for(path), reg, "h", 2 << 20, block_size=256 * 1024)
    assert drain(t) == [text, "after"]


def test_unterminated_last_line_of_a_rotated_file_is_shipped(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"one\ntwo\nthree without newline")
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    assert drain(t) == ["one", "two"]  # the live file may still complete the line
    os.rename(path, tmp_path / "app.log.1")
    path.write_bytes(b"four\n")
    assert drain(t) == ["three without newline", "four"]


def test_two_rotations_while_down_are_both_read(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 3)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert len(drain(t)) == 3
    t.close()
    append_docker(path, 3, 2)
    os.rename(path, tmp_path / "c-json.log.1")
    append_docker(path, 5, 2)
    os.rename(tmp_path / "c-json.log.1", tmp_path / "c-json.log.2")
    os.rename(path, tmp_path / "c-json.log.1")
    append_docker(path, 7, 2)
    t2 = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t2) == [f"line {i}" for i in range(3, 9)]


def _docker_rotate(path: Path, max_file: int) -> None:
    """Rotate like Docker's json-file driver: shift .N up, drop the oldest, live -> .1."""
    oldest = Path(f"{path}.{max_file}")
    if oldest.exists():
        oldest.unlink()
    for n in range(max_file - 1, 0, -1):
        older = Path(f"{path}.{n}")
        if older.exists():
            os.replace(older, f"{path}.{n + 1}")
    os.replace(path, f"{path}.1")


def test_lagging_reader_keeps_rotated_files_the_runtime_deletes(
    tmp_path: Path, reg: Registry
) -> None:
    """Ten rotations with max-file 3 while the reader is stuck on the first file: every
    generation was deleted from disk before it was read, yet every line arrives, in order."""
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 50)
    t = Tailer(spec_for(path), reg, "h", 65536)
    first = t.read(max_lines=5)
    assert first is not None and first.lines.logs == [f"line {i}" for i in range(5)]
    for gen in range(1, 11):
        _docker_rotate(path, max_file=3)
        append_docker(path, gen * 50, 50)
        t.pin_new_generation()  # what the source's pin loop does every 0.25 s
    assert not Path(f"{path}.4").exists() and len(list(tmp_path.glob("c-json.log*"))) == 4
    rest = drain(t)
    assert first.lines.logs + rest == [f"line {i}" for i in range(550)]


@pytest.mark.parametrize("pin", [True, False])
def test_pinning_goes_on_after_a_rotation_to_a_file_not_written_yet(
    tmp_path: Path, reg: Registry, pin: bool
) -> None:
    """The reader noticed a rotation while the new file was still empty (no live file open),
    then waits for acks while the runtime rotates on with max-file 3: the pin checks open the
    new file once it has a line, so the generations deleted meanwhile still arrive."""
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 5)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == [f"line {i}" for i in range(5)]
    _docker_rotate(path, max_file=3)
    path.touch()  # the runtime's new file, nothing in it yet
    assert t.read() is None and t.poll() and t.live is None
    assert t.read() is None  # the rotated file is done; reading now waits (acks)
    for gen in range(1, 6):
        append_docker(path, gen * 10, 10)
        if pin:
            t.pin_new_generation()  # the source's pin loop, every 0.25 s
        _docker_rotate(path, max_file=3)
    append_docker(path, 60, 10)
    rest = drain(t)
    if pin:
        assert rest == [f"line {i}" for i in range(10, 70)]
    else:
        assert len(rest) < 60  # generations deleted before anyone opened them


def test_without_pinning_a_lagging_reader_loses_deleted_generations(
    tmp_path: Path, reg: Registry
) -> None:
    """The same run without the pin checks: the loss the pin loop exists to prevent."""
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 50)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert t.read(max_lines=5) is not None
    for gen in range(1, 11):
        _docker_rotate(path, max_file=3)
        append_docker(path, gen * 50, 50)
    rest = drain(t)
    assert len(rest) < 545


def test_files_rotated_away_while_down_are_counted_as_lost(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 4)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert len(drain(t)) == 4
    t.close()
    # While the shipper is down: lines, then rotations past max-file delete the file we knew.
    append_docker(path, 4, 2)
    path.unlink()
    append_docker(path, 100, 2)
    losses: list[str] = []
    t2 = Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)
    assert drain(t2) == ["line 100", "line 101"]
    assert losses == ["deleted_unread"]
    assert [s.path for _, s in reg.items()] == [str(path)]  # the vanished entry is forgotten
    t2.close()
    t3 = Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)
    assert drain(t3) == []
    assert losses == ["deleted_unread"]  # counted once


def test_nothing_lost_is_not_counted(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 4)
    losses: list[str] = []
    t = Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)
    assert len(drain(t)) == 4
    t.close()
    append_docker(path, 4, 2)
    os.rename(path, tmp_path / "c-json.log.1")  # rotated while down, still there
    append_docker(path, 6, 2)
    t2 = Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)
    assert drain(t2) == [f"line {i}" for i in range(4, 8)]
    assert losses == []


def test_truncation_in_place_after_all_was_read_is_a_possible_loss(
    tmp_path: Path, reg: Registry
) -> None:
    """No copy, and we had read all we saw (Docker max-file=1 truncates at every rotation):
    only lines written since our last look may be lost. Counted apart
    (truncated_in_place), so that max-file=1 does not page as a certain loss."""
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(f"first {i}\n".encode() for i in range(5)))
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    assert len(drain(t)) == 5
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"after 1\n")
    assert drain(t) == ["after 1"]
    assert losses == ["truncated_in_place"]


def test_truncation_in_place_with_unread_lines_is_counted_as_lost(
    tmp_path: Path, reg: Registry
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(f"first {i:05d} {'x' * 80}\n".encode() for i in range(2000)))
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 1024, on_loss=losses.append)
    # One 64 KiB read of the ~190 KB: its first line given, its other lines kept for the
    # next reads (see Tailer._fit), the rest of the file unread.
    chunk = t.read(max_bytes=1)
    assert chunk is not None and len(chunk.lines) == 1
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"after 1\n")
    whole = 65536 // len(f"first 00000 {'x' * 80}\n")  # the lines wholly in the read
    assert drain(t) == [f"first {i:05d} {'x' * 80}" for i in range(1, whole)] + ["after 1"]
    assert losses == ["truncated_without_copy"]


@pytest.mark.parametrize("extra", [0, 3], ids=["read-whole", "lines-unread"])
def test_a_compressed_copy_tells_whether_a_truncation_lost_lines(
    tmp_path: Path, reg: Registry, extra: int
) -> None:
    """copytruncate with immediate compression: the .gz holds the old content whole; its
    size against our position says whether anything was lost."""
    import gzip

    path = tmp_path / "app.log"
    old = b"".join(f"first {i}\n".encode() for i in range(5))
    path.write_bytes(old)
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    assert len(drain(t)) == 5
    old += b"".join(f"late {i}\n".encode() for i in range(extra))
    (tmp_path / "app.log.1.gz").write_bytes(gzip.compress(old))
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"after 1\n")
    assert drain(t) == ["after 1"]
    assert losses == (["truncated_without_copy"] if extra else [])


def test_copytruncate_then_growth_past_our_position_before_we_look(
    tmp_path: Path, reg: Registry
) -> None:
    """logrotate copytruncate, then the app writes more than we had read, all between two
    looks: the new content must be read from its start, the copy's tail from the copy."""
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(f"first {i}\n".encode() for i in range(5)))
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    assert len(drain(t)) == 5
    with open(path, "ab") as f:
        f.write(b"late 1\n")  # lands in the copy only
    shutil.copyfile(path, tmp_path / "app.log.1")
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"".join(f"after {i:03d}\n".encode() for i in range(20)))
    assert os.path.getsize(path) > os.path.getsize(tmp_path / "app.log.1")
    assert drain(t) == ["late 1"] + [f"after {i:03d}" for i in range(20)]


def test_copytruncate_after_everything_was_read_is_not_a_loss(
    tmp_path: Path, reg: Registry
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(f"first {i}\n".encode() for i in range(5)))
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    assert len(drain(t)) == 5
    shutil.copyfile(path, tmp_path / "app.log.1")  # the copy holds nothing we have not read
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"after 1\n")
    assert drain(t) == ["after 1"]
    assert losses == []


@pytest.mark.parametrize("late", [True, False])
def test_two_copytruncates_before_we_look_lose_nothing(
    tmp_path: Path, reg: Registry, late: bool
) -> None:
    """logrotate ran twice between two looks (``.1`` renamed to ``.2``, a new ``.1`` copied):
    the second copy holds lines the live file had only between the two runs."""
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(f"first {i}\n".encode() for i in range(5)))
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    assert len(drain(t)) == 5
    if late:
        with open(path, "ab") as f:
            f.write(b"late 1\n")  # lands in the first copy only
    shutil.copyfile(path, tmp_path / "app.log.1")
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"mid 1\nmid 2\n")  # lands in the second copy only
    os.rename(tmp_path / "app.log.1", tmp_path / "app.log.2")
    shutil.copyfile(path, tmp_path / "app.log.1")
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"after 1\n")
    expected = (["late 1"] if late else []) + ["mid 1", "mid 2", "after 1"]
    assert drain(t) == expected
    assert losses == []
    t.close()
    # A restart reads nothing twice: every copy is checkpointed at its end.
    t2 = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    assert drain(t2) == []


def test_lines_read_past_a_message_go_in_the_next_within_both_limits(
    tmp_path: Path, reg: Registry
) -> None:
    """A read takes 64 KiB whatever room the message has: the lines past the room are given
    by the next reads, each within ``max_bytes`` of log text and ``max_lines`` lines (a
    line longer than ``max_bytes`` alone), in order, none twice."""
    path = tmp_path / "app.log"
    texts = [f"{i:04d} " + "x" * (3000 if i == 50 else (i * 37) % 200) for i in range(800)]
    path.write_bytes("".join(f"{t}\n" for t in texts).encode())
    t = Tailer(spec_for(path, "plain"), reg, "h", 16384)
    got: list[list[str]] = []
    while (chunk := t.read(max_lines=7, max_bytes=1000)) is not None:
        got.append(chunk.lines.logs)
        commit(t, chunk)
    assert [log for logs in got for log in logs] == texts
    assert all(len(logs) <= 7 for logs in got)
    assert [logs for logs in got if sum(map(len, logs)) > 1000] == [[texts[50]]]


@pytest.mark.parametrize("rotation", ["rename", "copytruncate"])
def test_a_restart_after_part_of_a_read_was_acked_sends_the_rest_once_after_a_rotation(
    tmp_path: Path, reg: Registry, rotation: str
) -> None:
    """A message cut from a read is acknowledged, its file rotated, then the shipper dies with
    the rest of the read unsent. The checkpoint is where the read began, in that file (now
    renamed away, or copied away and truncated in place): the restart reads it again there,
    drops the acknowledged lines by their offsets, and sends each other line once."""
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 5)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == [f"line {i}" for i in range(5)]
    append_docker(path, 5, 200)
    head = t.read(max_bytes=100)  # one read of the 200 lines: its first few given, the rest kept
    assert head is not None
    commit(t, head)
    acked = len(head.lines)
    assert 0 < acked < 200
    rotated = tmp_path / "c-json.log.1"
    if rotation == "rename":
        os.rename(path, rotated)
    else:
        shutil.copyfile(path, rotated)
        os.truncate(path, 0)
    append_docker(path, 205, 3)
    t.close()  # killed: the kept lines never went
    t2 = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t2) == [f"line {i}" for i in range(5 + acked, 208)]
