"""Split lines (Docker 16 KiB partial entries, CRI ``P`` parts) whose parts straddle a rotation.

The parts are joined across the rotation, and no checkpoint passes the start of a group that is
not acknowledged whole: a restart at any point re-reads the group from its first part.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.cursor import Chunk
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line, docker_line
from tests.shipper.tailing import aggregator_keeps, commit, drain, drain_sent, spec_for

BIG = "A" * 16384
TAIL = "B" * 100


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def write(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def tailer(path: Path, state: Path, fmt: str = "docker") -> tuple[Tailer, Registry]:
    reg = Registry(state)
    return Tailer(spec_for(path, fmt), reg, "h", 65536), reg


def restart(t: Tailer, reg: Registry, path: Path, state: Path, fmt: str = "docker"):
    """Stop (checkpoints as acknowledged so far, persisted) and start again."""
    t.close()
    reg.save()
    reg.close()
    return tailer(path, state, fmt)


def test_docker_partial_joined_across_rename_rotation(tmp_path: Path, state: Path) -> None:
    path = tmp_path / "c-json.log"
    write(path, docker_line("before", 0))
    t, reg = tailer(path, state)
    assert drain(t) == ["before"]
    write(path, docker_line(BIG, 1, nl=False))  # a 16 KiB partial entry
    assert drain(t) == []  # held: its last part is not written yet
    os.rename(path, f"{path}.1")  # Docker's max-size rotation
    write(path, docker_line(TAIL, 2) + docker_line("after", 3))
    assert drain(t) == [BIG + TAIL, "after"]
    assert len(reg.items()) == 1  # the old file is forgotten
    reg.close()


def test_cri_parts_joined_across_kubelet_rotation(tmp_path: Path, state: Path) -> None:
    path = tmp_path / "0.log"
    write(path, cri_line("hello", 0))
    t, reg = tailer(path, state, "cri")
    assert drain(t) == ["hello"]
    write(path, cri_line("P" * 16384, 1, tag="P"))
    assert drain(t) == []
    os.rename(path, tmp_path / "0.log.20261129-031500")
    write(path, cri_line("tail-end", 2) + cri_line("next", 3))
    assert drain(t) == ["P" * 16384 + "tail-end", "next"]
    reg.close()


def test_restart_after_rotation_mid_group_reads_the_group_again(
    tmp_path: Path, state: Path
) -> None:
    """Stopped with the first part read and acknowledged, rotated while down: the old file's
    checkpoint is at the group's start, so the restart joins the whole line."""
    path = tmp_path / "c-json.log"
    write(path, docker_line("before", 0))
    t, reg = tailer(path, state)
    assert drain(t) == ["before"]
    write(path, docker_line(BIG, 1, nl=False) + docker_line(BIG, 2, nl=False))
    assert drain(t) == []
    t, reg = restart(t, reg, path, state)
    os.rename(path, f"{path}.1")
    write(path, docker_line(TAIL, 3) + docker_line("after", 4))
    assert drain(t) == [BIG + BIG + TAIL, "after"]
    t, reg = restart(t, reg, path, state)
    assert drain(t) == []  # nothing read twice once acknowledged
    reg.close()


def test_unacknowledged_completion_keeps_the_old_file_checkpoint(
    tmp_path: Path, state: Path
) -> None:
    """The line was completed from the new file but not acknowledged when the shipper stopped:
    the rotated file's checkpoint still holds the group's start."""
    path = tmp_path / "c-json.log"
    t, reg = tailer(path, state)
    write(path, docker_line("before", 0))
    assert drain(t) == ["before"]
    write(path, docker_line(BIG, 1, nl=False))
    assert drain(t) == []
    os.rename(path, f"{path}.1")
    write(path, docker_line(TAIL, 2))
    assert drain(t, ack=False) == [BIG + TAIL]
    assert len(reg.items()) == 2  # the rotated file's entry is held until acknowledged
    t, reg = restart(t, reg, path, state)
    assert drain(t) == [BIG + TAIL]
    assert len(reg.items()) == 1
    reg.close()


def test_last_part_acked_frees_the_old_file_only_then(tmp_path: Path, state: Path) -> None:
    path = tmp_path / "c-json.log"
    t, reg = tailer(path, state)
    write(path, docker_line(BIG, 1, nl=False))
    assert drain(t) == []
    os.rename(path, f"{path}.1")
    write(path, docker_line(TAIL, 2))
    chunks: list[Chunk] = []
    while True:
        chunk = t.read()
        if chunk is None:
            if not t.poll():
                break
            continue
        chunks.append(chunk)
    assert [log for c in chunks for log in c.lines.logs] == [BIG + TAIL]
    assert len(reg.items()) == 2  # the rotated file's entry is held until acknowledged
    for chunk in chunks:
        commit(t, chunk)
    assert len(reg.items()) == 1
    reg.close()


@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_restart_while_the_old_file_is_held_stores_no_part_twice(
    tmp_path: Path, state: Path, fmt: str
) -> None:
    """The rotated file ends with the first parts of a stdout and a stderr line; the new file
    completes the stderr line only, and that is acknowledged. The rotated file's checkpoint is
    held at the stdout line's start, so a restart reads the stderr line's first part again
    too: the new file must be read again from where it was opened (its acknowledged lines are
    not sent again), else that part is joined to the next stderr line and stored twice (found
    by the randomized model, ``test_tailer_model.py``)."""
    path = tmp_path / ("c-json.log" if fmt == "docker" else "0.log")

    def part(text: str, i: int, stream: str, last: bool) -> bytes:
        if fmt == "docker":
            return docker_line(text, i, stream, nl=last)
        return cri_line(text, i, stream, tag="F" if last else "P")

    t, reg = tailer(path, state, fmt)
    write(path, part("out-1 ", 0, "stdout", False) + part("err-1 ", 1, "stderr", False))
    assert drain(t) == []
    os.rename(path, f"{path}.1")
    write(path, part("err-2", 2, "stderr", True) + part("err-3", 3, "stderr", True))
    sent = drain_sent(t)
    assert [log for log, _, _ in sent] == ["err-1 err-2", "err-3"]
    assert len(reg.items()) == 2  # the rotated file is held for the stdout line
    t, reg = restart(t, reg, path, state, fmt)
    write(path, part("err-4", 4, "stderr", True) + part("out-2", 5, "stdout", True))
    sent += drain_sent(t)
    assert aggregator_keeps(sent) == ["err-1 err-2", "err-3", "err-4", "out-1 out-2"]
    stamp = os.stat(f"{path}.1").st_mtime_ns - 10**10  # renamed longer than the rotate wait ago
    os.utime(f"{path}.1", ns=(stamp, stamp))
    t, reg = restart(t, reg, path, state, fmt)
    assert drain(t) == []
    assert len(reg.items()) == 1
    reg.close()


@pytest.mark.integration
def test_follow_mode_joins_a_line_split_across_rotation(tmp_path: Path) -> None:
    """The auditor's run through the real daemon: a 16 KiB partial entry, Docker rotates, the
    last part lands in the new file. The warehouse must get the whole line."""
    from tests.shipper.hostgen import make_container
    from tests.shipper.receiver import Receiver
    from tests.shipper.test_follow import ShipperProc

    root = tmp_path / "containers"
    log = make_container(root, "c1" * 32, "svc1", lines=["before"])
    receiver = Receiver()
    sh = ShipperProc(tmp_path, "--aggregator", receiver.address, "--docker-root", str(root))
    try:
        receiver.wait_for(1, timeout=60)
        write(log, docker_line(BIG, 1, nl=False))
        os.rename(log, f"{log}.1")
        write(log, docker_line(TAIL, 2) + docker_line("after", 3))
        receiver.wait_for(3, timeout=60)
    finally:
        rc, err = sh.stop()
        receiver.close()
    assert rc == 0, err
    assert receiver.lines() == ["before", BIG + TAIL, "after"]


@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_a_split_line_whose_last_part_never_comes_is_shipped_as_it_is(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """A container that died mid-line: after SPLIT_FLUSH_SECONDS without its next part, the
    parts read so far go out as one line (Fluent Bit's Docker_Mode_Flush), and the file's
    checkpoint moves past them, so a restart neither holds nor ships them again."""
    import shipper.split_lines as split_lines

    monkeypatch.setattr(split_lines, "SPLIT_FLUSH_SECONDS", 0.2)
    path = tmp_path / ("c-json.log" if fmt == "docker" else "0.log")
    if fmt == "docker":
        line = docker_line
        parts = docker_line(BIG, 1, nl=False) + docker_line("more", 2, nl=False)
    else:
        line = cri_line
        parts = cri_line(BIG, 1, tag="P") + cri_line("more", 2, tag="P")
    write(path, line("before", 0) + parts)
    t, reg = tailer(path, state, fmt)
    assert drain(t) == ["before"]  # the split line waits for its next part
    key = next(iter(reg.items()))[0]
    held_at = reg.get(key).offset
    time.sleep(0.3)
    assert drain(t) == [BIG + "more"]
    assert reg.get(key).offset == path.stat().st_size  # past the parts: not read again
    write(path, line("after", 3))
    assert drain(t) == ["after"]
    t, reg = restart(t, reg, path, state, fmt)
    assert drain(t) == []
    assert held_at < path.stat().st_size
    reg.close()


def test_a_split_line_completed_in_time_is_not_cut(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shipper.split_lines as split_lines

    monkeypatch.setattr(split_lines, "SPLIT_FLUSH_SECONDS", 30.0)
    path = tmp_path / "c-json.log"
    write(path, docker_line(BIG, 1, nl=False))
    t, reg = tailer(path, state)
    assert drain(t) == []
    write(path, docker_line(TAIL, 2))
    assert drain(t) == [BIG + TAIL]
    reg.close()


def _plain(path: Path, texts: list[str]) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(t.encode() + b"\n" for t in texts))


def test_logrotate_create_lines_written_to_the_renamed_file_before_the_reopen_arrive(
    tmp_path: Path, state: Path
) -> None:
    """logrotate's default create mode: rename app.log to app.log.1, create an empty app.log,
    then signal the program, which reopens a moment later; until then it appends to
    app.log.1. Those lines used to be lost in silence (the renamed file was released as soon
    as the rotation was seen)."""
    path = tmp_path / "app.log"
    _plain(path, ["a0", "a1"])
    t, reg = tailer(path, state, "plain")
    assert drain(t) == ["a0", "a1"]
    os.rename(path, f"{path}.1")
    path.write_bytes(b"")  # create
    assert drain(t) == []  # the rotation is seen; the renamed file is still watched
    _plain(Path(f"{path}.1"), ["a2", "a3"])  # the program has not reopened yet
    assert drain(t) == ["a2", "a3"]
    _plain(path, ["b0"])  # reopened: the new file has data
    assert drain(t) == ["b0"]
    _plain(Path(f"{path}.1"), ["late"])  # a second writer that has not reopened yet
    assert drain(t) == ["late"]  # still read: the renamed file is watched for the whole wait
    reg.close()


def test_a_renamed_file_is_released_after_the_rotate_wait(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shipper.rotate_wait as rotate_wait

    monkeypatch.setattr(rotate_wait, "ROTATE_WAIT_SECONDS", 0.2)
    path = tmp_path / "app.log"
    _plain(path, ["a0"])
    t, reg = tailer(path, state, "plain")
    assert drain(t) == ["a0"]
    os.rename(path, f"{path}.1")
    path.write_bytes(b"")
    old = os.stat(f"{path}.1").st_ino
    assert drain(t) == []
    assert [c.ino for c in t.cursors] == [old]  # watched while the new file is empty
    time.sleep(0.3)
    assert drain(t) == []
    assert old not in [c.ino for c in t.cursors]  # then let go
    _plain(Path(f"{path}.1"), ["late"])
    _plain(path, ["b0"])
    assert drain(t) == ["b0"]
    reg.close()


def test_a_split_line_is_not_joined_across_a_lost_file(tmp_path: Path, state: Path) -> None:
    """The file holding the last part of line X and the first part of line Y was rotated in
    and deleted between two looks (counted rotated_unseen). X's first part must not be joined
    to Y's last part in the next file: each goes out as it is (the rotation auditor saw one
    corrupt 56,384-character record made of two lines)."""
    path = tmp_path / "c-json.log"
    write(path, docker_line("before", 0) + docker_line("X-first", 1, nl=False))
    losses: list[str] = []
    reg = Registry(state)
    t = Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == ["before"]

    def rotate() -> None:  # max-file 2: the rotated copy before it is deleted
        Path(f"{path}.1").unlink(missing_ok=True)
        os.rename(path, f"{path}.1")

    rotate()
    write(path, docker_line("X-last", 2) + docker_line("Y-first", 3, nl=False))
    rotate()
    write(path, docker_line("Y-last", 4))
    rotate()  # the file with X-last and Y-first is gone, never opened
    write(path, docker_line("after", 5))
    t.pin_new_generation()  # the look that finds the live file it held deleted
    assert losses == ["rotated_unseen"]
    assert drain(t) == ["X-first", "Y-last", "after"]
    reg.close()


def test_a_flushed_split_line_gets_an_offset_above_the_lines_read_after_its_parts(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stdout's split line is open while a whole stderr line follows it: the flushed line's
    offset must be above the stderr line's, or the aggregator (which drops a record whose
    offset is not above those it has for the file) would drop it."""
    import shipper.split_lines as split_lines
    from tests.shipper.tailing import commit

    monkeypatch.setattr(split_lines, "SPLIT_FLUSH_SECONDS", 0.1)
    path = tmp_path / "c-json.log"
    write(path, docker_line("out-part", 0, nl=False) + docker_line("err", 1, stream="stderr"))
    t, reg = tailer(path, state)
    first = t.read()
    assert first is not None and first.lines.logs == ["err"]
    commit(t, first)
    assert t.read() is None
    time.sleep(0.2)
    flushed = t.read()
    assert flushed is not None and flushed.lines.logs == ["out-part"]
    assert flushed.lines.offsets[0] > first.lines.offsets[0]
    reg.close()


@pytest.mark.parametrize("mode", ["parts-in-old-file", "parts-across-rotation"])
def test_a_split_line_cut_by_a_rotation_is_flushed_too(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """CRI parts of a line, then a kubelet rotation, and the last part never comes (the
    container died): the parts go out as they are after SPLIT_FLUSH_SECONDS, whether they all
    lie in the rotated file (the new one stays empty) or also in the new one. They used to be
    held for as long as the source lived, and dropped with it."""
    import shipper.rotate_wait as rotate_wait
    import shipper.split_lines as split_lines

    monkeypatch.setattr(split_lines, "SPLIT_FLUSH_SECONDS", 0.3)
    monkeypatch.setattr(rotate_wait, "ROTATE_WAIT_SECONDS", 0.1)
    path = tmp_path / "0.log"
    write(path, cri_line("full", 0) + cri_line("part-a ", 1, tag="P"))
    t, reg = tailer(path, state, "cri")
    assert drain(t) == ["full"]
    os.rename(path, f"{path}.20260101-000000")
    path.write_bytes(b"")
    if mode == "parts-across-rotation":
        write(path, cri_line("part-b", 2, tag="P"))
    assert drain(t) == []
    time.sleep(0.4)
    want = "part-a part-b" if mode == "parts-across-rotation" else "part-a "
    assert drain(t) == [want]
    write(path, cri_line("next", 3))
    assert drain(t) == ["next"]
    t, reg = restart(t, reg, path, state, "cri")
    assert drain(t) == []  # nothing shipped twice
    reg.close()


def test_a_restart_during_the_rotate_wait_still_reads_what_the_renamed_file_gets(
    tmp_path: Path, state: Path
) -> None:
    path = tmp_path / "app.log"
    _plain(path, ["a0", "a1"])
    t, reg = tailer(path, state, "plain")
    assert drain(t) == ["a0", "a1"]
    _plain(path, ["a2"])
    os.rename(path, f"{path}.1")
    path.write_bytes(b"")  # logrotate create; the shipper restarts at this moment
    t, reg = restart(t, reg, path, state, "plain")
    assert drain(t) == ["a2"]
    _plain(Path(f"{path}.1"), ["a3"])  # the program has not reopened yet
    assert drain(t) == ["a3"]
    reg.close()


def _split_line(fmt: str, text: str, i: int, partial: bool = False) -> bytes:
    if fmt == "docker":
        return docker_line(text, i, nl=not partial)
    return cri_line(text, i, tag="P" if partial else "F")


def _flushed_unacked_then_completed(
    path: Path, state: Path, monkeypatch: pytest.MonkeyPatch, fmt: str = "docker"
) -> tuple[Tailer, Registry, Chunk]:
    """``before`` read and acknowledged; the split parts ``X-part `` flushed as they are after
    the split-flush wait, their ack never coming; then the line's next part ``X-rest`` and a
    line ``after`` written. Returns the tailer, its registry and the flushed chunk."""
    import shipper.split_lines as split_lines

    monkeypatch.setattr(split_lines, "SPLIT_FLUSH_SECONDS", 0.1)
    write(path, _split_line(fmt, "before", 0) + _split_line(fmt, "X-part ", 1, partial=True))
    t, reg = tailer(path, state, fmt)
    assert drain(t) == ["before"]
    time.sleep(0.2)
    flushed = t.read()
    assert flushed is not None and flushed.lines.logs == ["X-part "]
    flushed.cursor.outstanding += 1
    write(path, _split_line(fmt, "X-rest", 2) + _split_line(fmt, "after", 3))
    return t, reg, flushed


@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_a_flushed_split_line_is_cut_again_at_the_same_place_after_a_restart(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The flushed parts were sent but their ack was lost; the line's next part came, then the
    shipper restarted. Re-read from the checkpoint (the parts' start), the parts must go out
    again as the same record -- same text, same offset, so the aggregator drops it as one it
    has -- and the next part as a line of its own. Joined instead, the parts were stored twice:
    once flushed, once inside the joined line under a higher offset."""
    path = tmp_path / ("c-json.log" if fmt == "docker" else "0.log")
    t, reg, flushed = _flushed_unacked_then_completed(path, state, monkeypatch, fmt)
    t, reg = restart(t, reg, path, state, fmt)
    sent = drain_sent(t)
    assert [log for log, _, _ in sent] == ["X-part ", "X-rest", "after"]
    assert sent[0][1] == flushed.lines.offsets[0]
    assert {sid for _, _, sid in sent} == {flushed.cursor.source_id}
    t, reg = restart(t, reg, path, state, fmt)
    assert drain(t) == []  # everything acknowledged: nothing comes a third time
    reg.close()


def test_a_cut_that_is_not_at_a_line_boundary_is_dropped_not_stopped_at(
    tmp_path: Path, state: Path
) -> None:
    """A checkpoint whose cut falls inside a line (the file is not what was cut): reading
    goes on, every line whole; it used to stop at the cut for good."""
    path = tmp_path / "c-json.log"
    write(path, docker_line("first", 0))
    t, reg = tailer(path, state)
    assert drain(t) == ["first"]
    write(path, docker_line("second, a longer line", 1) + docker_line("third", 2))
    ((key, st),) = reg.items()
    st.cuts = [[st.offset + 10, st.offset + 11]]  # inside "second"
    reg.put(key, st)
    t, reg = restart(t, reg, path, state)
    assert drain(t) == ["second, a longer line", "third"]
    reg.close()


def test_once_cuts_a_flushed_split_line_again_and_ships_an_unfinished_one_at_its_end(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart after the lost ack is a --once run: its bound must not override the cut
    (the parts were joined with the next part, and an unfinished line at the end went out
    under an offset below the others, then dropped, its checkpoint passed). The unfinished
    line at the end goes out last, above every offset, and the next run does not send it
    again."""
    path = tmp_path / "c-json.log"
    t, reg, flushed = _flushed_unacked_then_completed(path, state, monkeypatch)
    write(path, docker_line("Y-part ", 4, nl=False))  # unfinished: shipped as it is at the end
    t.close()
    reg.save()
    reg.close()
    reg = Registry(state)
    t = Tailer(spec_for(path), reg, "h", 65536, once=True)
    sent = drain_sent(t)
    assert [log for log, _, _ in sent] == ["X-part ", "X-rest", "after", "Y-part "]
    assert sent[0][1] == flushed.lines.offsets[0]
    assert [off for _, off, _ in sent] == sorted(off for _, off, _ in sent)
    ((_, st),) = reg.items()
    assert st.offset == path.stat().st_size  # past Y-part: the next run starts after it
    t.close()
    reg.save()
    reg.close()
    reg = Registry(state)
    t = Tailer(spec_for(path), reg, "h", 65536, once=True)
    assert drain(t) == []
    reg.close()


def test_a_copytruncate_keeps_the_cut_of_a_flushed_split_line(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flushed, ack lost, then a copytruncate and a restart: the copy carries the same bytes,
    so it carries the cut too (it started with none, and the parts were joined again)."""
    import shutil

    path = tmp_path / "c-json.log"
    t, reg, flushed = _flushed_unacked_then_completed(path, state, monkeypatch)
    shutil.copy(path, f"{path}.1")  # logrotate's copytruncate
    os.truncate(path, 0)
    write(path, docker_line("new", 4))
    assert drain(t, ack=False) == ["X-rest", "after", "new"]  # nothing acked either
    t, reg = restart(t, reg, path, state)
    sent = drain_sent(t)
    assert [log for log, _, _ in sent] == ["X-part ", "X-rest", "after", "new"]
    assert sent[0][1] == flushed.lines.offsets[0]
    reg.close()
