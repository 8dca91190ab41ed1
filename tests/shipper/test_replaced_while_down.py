"""A file whose content was replaced while the shipper was down, under the same checkpoint key.

A checkpoint's key is (device, inode, first line). Many programs start every log file with the
same banner, so a file deleted and created again on the inode just freed, or truncated in place
(copytruncate) and written again, has the old key: resumed at the old offset, the new lines
before it were lost without a word, and even read from 0 under the old ``source_id`` the
aggregator would drop them as resends. The checkpoint keeps a hash of the bytes just before its
position; a file whose bytes there differ is read from its start under a new id, with a WARNING
naming it, and counted as a possible loss (``truncated_in_place``).

The :class:`~tests.shipper.receiver.Receiver` drops records at or below the highest offset
stored for their ``source_id``, as the aggregator does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from shipper import wire
from shipper.checkpoint import FileState, Registry, file_key, parse_entry
from shipper.discover import SourceSpec
from shipper.fingerprint import TAIL_BYTES, tail_hash
from shipper.tailer import Tailer
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root
from tests.shipper.tailing import (
    aggregator_keeps,
    commit,
    create_on_inode,
    drain_sent,
    new_source_id,
    on_a_freed_inode,
    spec_for,
)
from tests.shipper.test_hostile_state import identity
from tests.shipper.test_once import run_shipper

pytestmark = pytest.mark.integration

BANNER = "=== worker log ==="


def banner_log(prefix: str, n: int) -> bytes:
    """A log as many programs write it: a fixed banner, then ``n`` lines."""
    return "".join([f"{BANNER}\n", *(f"{prefix} line {i}\n" for i in range(1, n + 1))]).encode()


def ship_once(tmp_path: Path, receiver: Receiver, log: Path) -> str:
    """One ``logq-shipper --once`` run over ``log``; its stderr."""
    res = run_shipper(
        *("--aggregator", receiver.address, "--hostname", "h"),
        *("--docker-root", str(empty_root(tmp_path)), "--cri-root", str(empty_root(tmp_path))),
        *("--path", str(log), "--state-dir", str(tmp_path / "state")),
        "--once",
    )
    assert res.returncode == 0, res.stderr
    return res.stderr


def stored(receiver: Receiver, prefix: str) -> list[str]:
    return [r["log"] for _, _, r in receiver.records if r["log"].startswith(prefix)]


def recreate_on_same_inode(path: Path, content: bytes) -> None:
    """Delete ``path`` and create it again with ``content`` on the inode just freed."""
    ino = path.stat().st_ino
    path.unlink()
    create_on_inode(path, content, ino)


def test_truncated_while_down_and_written_past_the_old_offset(
    tmp_path: Path, receiver: Receiver
) -> None:
    """copytruncate (no copy kept) while the shipper is down, then more lines than before: the
    shipper must read the new content from its start, not from the old offset."""
    log = tmp_path / "app.log"
    log.write_bytes(banner_log("old", 50))
    ship_once(tmp_path, receiver, log)
    assert len(stored(receiver, "old")) == 50
    ino = log.stat().st_ino
    with log.open("r+b") as f:  # truncated in place: same inode, then written again
        f.truncate(0)
        f.write(banner_log("new", 80))
    assert log.stat().st_ino == ino
    err = ship_once(tmp_path, receiver, log)
    assert stored(receiver, "new") == [f"new line {i}" for i in range(1, 81)]
    assert stored(receiver, BANNER) == [BANNER, BANNER]  # the new content's banner too
    assert receiver.duplicates == 0
    assert "file was replaced" in err and f"path={log}" in err and "level=warning" in err


def test_deleted_and_created_again_on_the_same_inode(tmp_path: Path) -> None:
    """The auditor's case: a log deleted and created again while the shipper is down gets the
    inode just freed, and the same banner; the new file is longer than the old offset."""

    def scenario(tmp_path: Path) -> None:
        receiver = Receiver()
        try:
            log = tmp_path / "worker.log"
            log.write_bytes(banner_log("run1", 100))
            ship_once(tmp_path, receiver, log)
            recreate_on_same_inode(log, banner_log("run2", 300))
            err = ship_once(tmp_path, receiver, log)
            assert stored(receiver, "run1") == [f"run1 line {i}" for i in range(1, 101)]
            assert stored(receiver, "run2") == [f"run2 line {i}" for i in range(1, 301)]
            assert stored(receiver, BANNER) == [BANNER, BANNER]
            assert "file was replaced" in err and f"path={log}" in err
            # A new source id: the aggregator's per-source dedup must not take them for resends.
            ids = {r[wire.KEY_SOURCE_ID] for _, _, r in receiver.records}
            assert len(ids) == 2
        finally:
            receiver.close()

    on_a_freed_inode(scenario, tmp_path)


def test_a_grown_file_resumes_at_its_checkpoint_without_a_warning(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The check must not fire on the usual case: the same content, appended to."""
    log = tmp_path / "app.log"
    log.write_bytes(banner_log("a", 100))
    ship_once(tmp_path, receiver, log)
    with log.open("ab") as f:
        f.write(b"".join(f"b line {i}\n".encode() for i in range(20)))
    err = ship_once(tmp_path, receiver, log)
    assert "level=warning" not in err
    assert len(stored(receiver, "a")) == 100 and len(stored(receiver, "b")) == 20
    assert receiver.messages == 2  # the second run sent only the new lines
    files = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())["files"]
    (entry,) = files.values()
    fd = os.open(log, os.O_RDONLY)
    try:
        assert entry["offset"] == log.stat().st_size > TAIL_BYTES
        assert entry["tail"] == tail_hash(fd, entry["offset"])
    finally:
        os.close(fd)


def _tailer(tmp_path: Path, path: Path, state: FileState, losses: list[str]) -> Tailer:
    reg = Registry(tmp_path / "state")
    st, fp = identity(path)
    reg.put(file_key(st.st_dev, st.st_ino, fp), state)
    spec = SourceSpec(key="file:app", path=path, format="plain", service="svc")
    return Tailer(spec, reg, "h", 65536, on_loss=losses.append)


def test_replaced_content_is_counted_and_read_under_a_new_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(banner_log("new", 10))
    offset = len(banner_log("old", 5))
    state = FileState("file:app", str(path), "h:1:ab", offset, offset - 1, tail="0" * 16)
    losses: list[str] = []
    tailer = _tailer(tmp_path, path, state, losses)
    try:
        with caplog.at_level(logging.WARNING, logger="logq.shipper.tailer"):
            sent = drain_sent(tailer)
        assert [log for log, _, _ in sent] == [BANNER, *(f"new line {i}" for i in range(1, 11))]
        assert {sid for _, _, sid in sent} == {new_source_id("h", path, epoch=1)}
        assert losses == ["truncated_in_place"]
        (record,) = caplog.records
        assert f"offset={offset}" in record.getMessage() and str(path) in record.getMessage()
    finally:
        tailer.close()
        tailer.registry.close()


def test_an_older_shippers_entry_without_tail_resumes_at_its_offset(tmp_path: Path) -> None:
    """Backward compatible: entries written before the check existed carry no ``tail``; they
    resume where they say, as before (only a position past the end restarts the file)."""
    path = tmp_path / "app.log"
    path.write_bytes(banner_log("x", 10))
    offset = len(banner_log("x", 4))
    st, fp = identity(path)
    key = file_key(st.st_dev, st.st_ino, fp)
    entry = {"source": "file:app", "path": str(path), "source_id": "h:old", "offset": offset}
    (tmp_path / "state").mkdir()
    doc = {"version": 1, "files": {key: {**entry, "acked": offset - 1, "epoch": 0}}}
    (tmp_path / "state" / "checkpoints.json").write_text(json.dumps(doc))
    reg = Registry(tmp_path / "state")
    spec = SourceSpec(key="file:app", path=path, format="plain", service="svc")
    losses: list[str] = []
    tailer = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    try:
        sent = drain_sent(tailer)
        assert [log for log, _, _ in sent] == [f"x line {i}" for i in range(5, 11)]
        assert {sid for _, _, sid in sent} == {"h:old"} and losses == []
        state = reg.get(key)
        assert state is not None and state.tail  # taken at the first acknowledgement
    finally:
        tailer.close()
        reg.close()


@pytest.mark.parametrize("bad", [5, "not hex", "a" * 65, "abc", "0123456789ABCDEF", None])
def test_a_malformed_tail_is_dropped_and_the_entryaggregator_keeps(bad: object) -> None:
    """A damaged ``tail`` only loses the check: the entry resumes at its offset, as an older
    shipper's entry does."""
    entry = {"source": "file:/x", "path": "/x", "source_id": "h:1:ab", "offset": 10, "acked": 9}
    state, problem = parse_entry({**entry, "tail": bad})
    assert state is not None and state.offset == 10 and state.tail == ""
    assert problem.startswith("tail=") and problem.endswith("dropped")
    state, problem = parse_entry({**entry, "tail": "0123456789abcdef"})
    assert state is not None and state.tail == "0123456789abcdef" and problem == ""


def test_copytruncate_copy_keeps_a_tail_of_its_own_bytes(tmp_path: Path) -> None:
    """An ack that lands after a copytruncate but before the poll that notices it hashes the
    NEW content at the old offset; the copy's checkpoint inherits that hash (copytruncate.py,
    second branch) and found a 'mismatch' at a restart before the copy's first ack, which
    re-read the whole copy under a new epoch: duplicates the aggregator keeps (R1)."""
    state = tmp_path / "state"
    path = tmp_path / "app.log"
    path.write_bytes(_numbered("old", 0, 50))
    reg = Registry(state)
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    chunk = t.read()
    assert chunk is not None and len(chunk.lines.logs) == 50
    resume = chunk.resume
    # logrotate copytruncate while the batch is in flight, with lines we have not read yet
    with open(path, "ab") as f:
        f.write(b"late 1\nlate 2\n")
    # the writer goes on (a busy one, or one without O_APPEND writing at its old offset)
    _copytruncate(path, "app.log.1", _numbered("new", 0, 100))
    assert path.stat().st_size > resume
    commit(t, chunk)  # the ack arrives before the poll
    assert t.poll()  # notices the truncation, finds the copy (bigger than our position)
    reg.save()
    reg.close()  # kill -9 here: the copy's first ack has not come
    reg2 = Registry(state)
    t2 = Tailer(spec_for(path, "plain"), reg2, "h", 65536)
    sent = [log for log, _, _ in drain_sent(t2)]
    reg2.close()
    old_again = [s for s in sent if s.startswith("old ")]
    assert old_again == [], f"{len(old_again)} lines of the copy sent again under a new id"


def test_a_copy_made_while_down_resumes_at_the_checkpoint_of_the_file_it_copies(
    tmp_path: Path,
) -> None:
    """logrotate ``copytruncate`` while the shipper was down, the copy kept (``app.log.1``):
    the copy is a new inode the registry does not know, and was read whole under a new id, so
    every line already stored was stored again (H6's note). A copy whose first line and bytes
    before the original's checkpoint are the original's resumes at that checkpoint, under its
    source id; the truncated live file is read from its start under a new one."""
    state, path = tmp_path / "state", tmp_path / "app.log"
    path.write_bytes(_numbered("old", 0, 50))
    first = _first_run(state, path)
    with open(path, "ab") as f:  # while the shipper is down:
        f.write(_numbered("old", 50, 60))
    _copytruncate(path, "app.log.1", _numbered("new", 0, 20))
    second, lost = _second_run(state, path)
    kept = aggregator_keeps([*first, *second])
    assert kept == [f"old {i}" for i in range(60)] + [f"new {i}" for i in range(20)]
    assert [log for log, _, _ in second][:10] == [f"old {i}" for i in range(50, 60)]
    assert lost == []  # the original's lines went on in the copy: nothing to count


def _numbered(prefix: str, start: int, stop: int) -> bytes:
    """Plain lines ``<prefix> <i>`` for i in ``start .. stop - 1``."""
    return b"".join(f"{prefix} {i}\n".encode() for i in range(start, stop))


def _copytruncate(path: Path, copy: str, then: bytes) -> None:
    """logrotate ``copytruncate``: ``path`` copied to ``copy`` beside it and truncated in
    place; then the writer goes on with ``then``."""
    shutil.copyfile(path, path.parent / copy)
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(then)


def _first_run(state: Path, path: Path) -> list[tuple[str, int, str]]:
    reg = Registry(state)
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    first = drain_sent(t)
    t.close()
    reg.save()
    reg.close()
    return first


def _second_run(state: Path, path: Path) -> tuple[list[tuple[str, int, str]], list[str]]:
    reg = Registry(state)
    lost: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=lost.append)
    second = drain_sent(t)
    t.close()
    reg.close()
    return second, lost


def test_banner_copytruncate_while_down_counts_no_loss(tmp_path: Path) -> None:
    """The live file keeps its first line (a banner): it is re-read under a new epoch, and its
    copy goes on from the checkpoint, so nothing was lost and nothing is counted (R3)."""
    state, path = tmp_path / "state", tmp_path / "app.log"
    path.write_bytes(b"BANNER\n" + _numbered("old", 0, 50))
    first = _first_run(state, path)
    with open(path, "ab") as f:
        f.write(_numbered("old", 50, 60))
    _copytruncate(path, "app.log.1", b"BANNER\n" + _numbered("new", 0, 20))
    second, lost = _second_run(state, path)
    kept = aggregator_keeps([*first, *second])
    assert kept == ["BANNER"] + [f"old {i}" for i in range(60)] + ["BANNER"] + [
        f"new {i}" for i in range(20)
    ]
    assert lost == [], lost


def test_rename_rotation_with_banner_and_repeated_lines_is_not_adopted(tmp_path: Path) -> None:
    """Plain file, logrotate ``create`` (rename) twice while down; a banner first line and
    lines without timestamps (e.g. a health-check tick): the newer rotated file matches the
    older one's checkpoint bytes by chance and must not be adopted (R3)."""
    state, path = tmp_path / "state", tmp_path / "app.log"
    path.write_bytes(b"BANNER\n" + b"tick\n" * 100)
    first = _first_run(state, path)
    with open(path, "ab") as f:
        f.write(b"tick\n" * 5 + b"end of A\n")
    os.rename(path, tmp_path / "app.log.2")  # inode A, known
    path.write_bytes(b"BANNER\n" + b"tick\n" * 150 + b"end of C\n")
    os.rename(path, tmp_path / "app.log.1")  # inode C, unknown
    path.write_bytes(b"BANNER\nlive\n")
    second, _ = _second_run(state, path)
    logs = [log for log, _, _ in second]
    kept = aggregator_keeps([*first, *second])
    # C holds the banner and 150 ticks: all must be stored (it is a different file)
    assert kept.count("tick") == 100 + 5 + 150, (kept.count("tick"), logs[:5])
    assert "end of C" in kept


def test_plain_restart_after_one_rename_rotation_does_not_adopt_the_old_file(
    tmp_path: Path,
) -> None:
    """One logrotate ``create`` rotation, read to its end while running (forgotten), then a
    plain restart: the old file .1 is unknown to the registry again, and matches the live
    file's checkpoint bytes by chance; adopted, the live file's new lines were dropped (R3)."""
    state, path = tmp_path / "state", tmp_path / "app.log"
    path.write_bytes(b"BANNER\n" + b"tick\n" * 105 + b"end of A\n")
    first = _first_run(state, path)
    os.rename(path, tmp_path / "app.log.1")
    path.write_bytes(b"BANNER\n" + b"tick\n" * 50)
    second = _first_run(state, path)  # .1 finished: forgotten; live C read to 257
    reg = Registry(state)
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    third = drain_sent(t)
    with open(path, "ab") as f:
        f.write(_numbered("C", 0, 60))
    third += drain_sent(t)
    t.close()
    reg.close()
    kept = aggregator_keeps([*first, *second, *third])
    assert "end of A" not in [log for log, _, _ in third], "old file read again"
    assert [k for k in kept if k.startswith("C ")] == [f"C {i}" for i in range(60)]


def test_two_copies_of_one_checkpoint(tmp_path: Path) -> None:
    """``copy`` then ``copytruncate`` while down: both copies resume at the checkpoint."""
    state, path = tmp_path / "state", tmp_path / "app.log"
    path.write_bytes(_numbered("l", 0, 50))
    first = _first_run(state, path)
    with open(path, "ab") as f:
        f.write(_numbered("l", 50, 60))
    shutil.copyfile(path, tmp_path / "app.log.2")
    with open(path, "ab") as f:
        f.write(_numbered("l", 60, 70))
    _copytruncate(path, "app.log.1", _numbered("new", 0, 5))
    second, lost = _second_run(state, path)
    assert aggregator_keeps([*first, *second]) == [f"l {i}" for i in range(70)] + [
        f"new {i}" for i in range(5)
    ]
    assert lost == []
