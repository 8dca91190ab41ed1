"""copytruncate told by the bytes read before our position (H9s19, R4s19's B1 and B2).

Every generation starts with the same line (a CSV header, a banner) and the file is truncated
and written again past our position before the shipper looks: neither its size nor its first
line tells. The bytes just before our position, and before the last checked one, do
(:func:`shipper.copytruncate.still_read_there`). R4s19's own cases are in
``test_r4s19_copytruncate_review.py``; these take a pause in the middle of a backlog, a
truncation between the check and a read, and the copy shorter than what was read since.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

import shipper.cursor
from shipper.checkpoint import Registry
from shipper.cursor import Cursor
from shipper.tailer import Tailer
from tests.shipper.tailing import aggregator_keeps, commit, drain_sent, fresh_process, spec_for

HEADER = "timestamp,level,message"


def _append(path: Path | str, *lines: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line.encode() + b"\n" for line in lines))


def _copytruncate(path: Path) -> None:
    shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)


def test_a_pause_in_a_backlog_then_a_truncation_written_past_our_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipper stops reading in the middle of a backlog (the aggregator holds its acks
    back), logrotate copies and truncates, and the writer writes more than our position
    before reading goes on. Read on from our position, the new content's first lines and the
    copy's unread rest were lost (nothing counted) and a cut line stored."""
    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    old = [f"alpha {i:04d} {'x' * 40}" for i in range(400)]  # about 20 KiB
    _append(path, HEADER, *old)
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    sent: list[tuple[str, int, str]] = []
    for _ in range(3):  # three small batches, then the pause
        chunk = t.read(max_lines=50)
        assert chunk is not None
        sid, lines = chunk.cursor.source_id, chunk.lines
        sent += [(x, o, sid) for x, o in zip(lines.logs, lines.offsets, strict=True)]
        commit(t, chunk)
    _copytruncate(path)
    new = [f"beta {i:04d} {'y' * 40}" for i in range(600)]  # past our position
    _append(path, HEADER, *new)
    sent += drain_sent(t)
    t.close()
    reg.close()

    assert Counter(aggregator_keeps(sent)) == Counter([HEADER, *old, HEADER, *new]), losses
    assert losses == []


@pytest.mark.parametrize("written", [15, 40], ids=["read-under-256-bytes", "read-more"])
def test_a_truncation_between_the_check_and_the_read_with_the_same_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: int
) -> None:
    """The truncation falls between the check before a read and the read, and the new
    content (same first line) is written past the checked position: the read takes the new
    content's bytes, so (after a read of 256 bytes or more) the bytes before our position
    match the file. Those before the checked position do not: the copy is read again from
    there, none of its lines lost."""
    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    old = [f"old line {i:03d}" for i in range(60)]
    new = [f"new line {i:03d}" for i in range(written)]
    _append(path, HEADER, *old[:10])
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    sent = drain_sent(t)
    _append(path, *old[10:])
    real = Tailer._rewritten
    armed = [True]

    def rewritten(cur: Cursor) -> bool:
        """The real check, then logrotate's copytruncate and a burst of the new content."""
        found = real(cur)
        if armed[0] and not found:
            armed[0] = False
            _copytruncate(path)
            _append(path, HEADER, *new)
        return found

    monkeypatch.setattr(Tailer, "_rewritten", staticmethod(rewritten))
    sent += drain_sent(t)
    t.close()
    reg.close()

    assert not armed[0], "the truncation was not made between a check and a read"
    kept = Counter(aggregator_keeps(sent))
    missing = [line for line in [HEADER, *old, *new] if not kept[line]]
    assert missing == [], sent


@pytest.mark.parametrize("after_copy", [1, 40])
def test_lines_read_between_the_copy_and_the_truncation_count_no_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after_copy: int
) -> None:
    """``cp app.log app.log.1 && truncate -s0 app.log`` with a busy writer: the shipper reads
    (and checks) the lines written between the copy and the truncation, so the copy is
    shorter than the checked position. It ends with the bytes read before that offset: ours,
    read whole. Counted ``truncated_in_place`` (a WARNING and a ticket) since 05567ba."""
    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    first = [f"alpha {i:03d}" for i in range(300)]  # more than the bytes a cursor keeps
    _append(path, HEADER, *first)
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    sent = drain_sent(t)
    shutil.copyfile(path, f"{path}.1")
    between = [f"written after the copy {i:03d}" for i in range(after_copy)]
    _append(path, *between)
    sent += drain_sent(t)
    with open(path, "r+b") as f:
        f.truncate(0)
    _append(path, HEADER, "beta 000")
    sent += drain_sent(t)
    t.close()
    reg.close()

    want = [HEADER, *first, *between, HEADER, "beta 000"]
    assert Counter(aggregator_keeps(sent)) == Counter(want), sent
    assert losses == [], losses


def test_a_copy_ending_before_the_bytes_kept_still_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More was read since the copy than a cursor keeps: whether the copy is ours cannot be
    told (a later generation shorter than our position looks the same), so the possible loss
    is counted as before, and nothing is stored twice."""
    fresh_process(monkeypatch)
    monkeypatch.setattr(shipper.cursor, "RECENT_BYTES", 512, raising=False)
    path = tmp_path / "app.log"
    first = [f"alpha {i:03d}" for i in range(10)]
    _append(path, HEADER, *first[:5])
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    sent = drain_sent(t)
    _append(path, *first[5:])
    shutil.copyfile(path, f"{path}.1")  # its end is read with the lines after it, at once
    between = [f"written after the copy {i:03d}" for i in range(40)]  # about 1 KiB
    _append(path, *between)
    sent += drain_sent(t)
    with open(path, "r+b") as f:
        f.truncate(0)
    _append(path, HEADER, "beta 000")
    sent += drain_sent(t)
    t.close()
    reg.close()

    want = [HEADER, *first, *between, HEADER, "beta 000"]
    assert Counter(aggregator_keeps(sent)) == Counter(want), sent
    assert losses == ["truncated_in_place"]
