"""copytruncate: a file refilled past our position with the same first line; lines read
between the copy and the truncation (R4s19)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.tailing import aggregator_keeps, drain_sent, fresh_process, spec_for


def _append(path: Path | str, *lines: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line.encode() + b"\n" for line in lines))


def test_lines_written_between_the_copy_and_the_truncation_and_read_count_no_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logrotate's copytruncate copies, then truncates: lines the writer appends in between
    are in the live file only, and the shipper may read (and check) past the copy's end
    before the truncation. The copy is then shorter than ``checked_pos`` and made after the
    open, though every line of it was read from the live file. Before 05567ba it was marked
    read (no loss); now it fits no case of ``copy_fit`` and ``truncated_in_place`` is counted
    (a ticket, WARNING) for a truncation that lost nothing (no line is stored twice: checked
    also after a later rotation and a restart)."""
    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    first = [f"alpha {i:03d}" for i in range(20)]
    _append(path, *first)
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    sent = drain_sent(t)
    shutil.copyfile(path, f"{path}.1")  # logrotate's copy ...
    _append(path, "written after the copy")  # ... the writer goes on ...
    sent += drain_sent(t)  # ... the shipper reads it (and checks again) ...
    with open(path, "r+b") as f:  # ... and the truncation
        f.truncate(0)
    _append(path, "beta 000")
    sent += drain_sent(t)
    t.close()
    reg.close()

    want = [*first, "written after the copy", "beta 000"]
    assert Counter(aggregator_keeps(sent)) == Counter(want), sent
    assert losses == [], losses


def test_a_truncation_written_past_our_position_with_the_same_first_line_is_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every generation starts with the same header (a CSV file); logrotate's copytruncate,
    then the writer writes more than our position before the shipper looks again. The first
    line is the same and the file is not shorter than our position, so ``_rewritten`` sees no
    truncation: the new content is read on from the middle under the old id (its first lines
    lost) and the copy's unread rest is never read (lost), nothing counted. The bytes before
    our position, which the cursor now keeps (05567ba), would tell."""
    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    header = "timestamp,level,message"
    _append(path, header, "alpha 000")
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    sent = drain_sent(t)
    _append(path, "alpha 001 unread")
    shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)
    new = [f"beta {i:03d}" for i in range(10)]
    _append(path, header, *new)
    sent += drain_sent(t)
    t.close()
    reg.close()

    want = [header, "alpha 000", "alpha 001 unread", header, *new]
    assert Counter(aggregator_keeps(sent)) == Counter(want), (sent, losses)
