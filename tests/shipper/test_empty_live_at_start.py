"""A source whose live file has no complete first line when its tailer starts (the container has
not written yet, or the runtime has just rotated a new, empty file in, also while the shipper was
down), and that file gets its lines and is rotated away before the tailer opened it.

Nothing knew where to look for it: the next live file was opened, and this one, still on disk
as ``.1``, was never read nor counted as lost (found by the randomized model,
``test_tailer_model.py``; confirmed with a real shipper and aggregator). The start now sets the
floor of the missed-rotation search, as a rotation seen by ``poll`` does.
"""

from __future__ import annotations

import os
from pathlib import Path

from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.tailing import append_docker, commit, drain, spec_for


def tailer(path: Path, losses: list[str]) -> tuple[Tailer, Registry]:
    reg = Registry(path.parent / "state")
    return Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append), reg


def _three_lines_read_then_stopped(path: Path, losses: list[str]) -> None:
    """A run that reads three lines, saves its checkpoint and stops."""
    append_docker(path, 0, 3, "a")
    t, reg = tailer(path, losses)
    assert drain(t) == ["a 0", "a 1", "a 2"]
    t.close()
    reg.save()
    reg.close()


def rotate(path: Path) -> None:
    """Docker's rename rotation: ``.1`` -> ``.2``, the live file -> ``.1``; no new file yet."""
    if Path(f"{path}.1").exists():
        os.replace(f"{path}.1", f"{path}.2")
    os.replace(path, f"{path}.1")


def test_new_source_whose_empty_file_is_written_and_rotated_between_two_looks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c-json.log"
    path.write_bytes(b"")
    losses: list[str] = []
    t, reg = tailer(path, losses)
    assert drain(t) == []  # nothing to open yet
    append_docker(path, 0, 3, "first")
    rotate(path)  # a burst: rotated before the next look
    append_docker(path, 0, 2, "second")
    assert drain(t) == ["first 0", "first 1", "first 2", "second 0", "second 1"]
    assert losses == []
    reg.close()


def test_restart_with_a_backlog_and_an_empty_live_file(tmp_path: Path) -> None:
    """Rotated while the shipper was down (the new file still empty), then written full and
    rotated again while the restarted shipper reads its backlog."""
    path = tmp_path / "c-json.log"
    losses: list[str] = []
    _three_lines_read_then_stopped(path, losses)
    append_docker(path, 3, 2, "a")  # while the shipper is down
    rotate(path)
    path.write_bytes(b"")
    t, reg = tailer(path, losses)
    chunk = t.read()  # the start: the rest of the rotated file; the live one cannot be opened
    assert chunk is not None and chunk.lines.logs == ["a 3", "a 4"]
    commit(t, chunk)
    append_docker(path, 0, 2, "b")
    rotate(path)
    append_docker(path, 0, 1, "c")
    assert drain(t) == ["b 0", "b 1", "c 0"]
    assert losses == []
    reg.close()


def test_a_file_finished_before_the_restart_is_not_taken_for_a_missed_one(
    tmp_path: Path,
) -> None:
    """The rotated file was read to its end before the restart (its checkpoint is forgotten
    at the start) and has the very modification time of the new, empty live file (coarse file
    times): it is not read again when the missed-rotation search looks from that time."""
    path = tmp_path / "c-json.log"
    losses: list[str] = []
    _three_lines_read_then_stopped(path, losses)
    rotate(path)
    path.write_bytes(b"")
    stamp = os.stat(path).st_mtime_ns
    os.utime(f"{path}.1", ns=(stamp, stamp))
    t, reg = tailer(path, losses)
    assert drain(t) == []
    append_docker(path, 0, 2, "b")
    rotate(path)
    append_docker(path, 0, 1, "c")
    assert drain(t) == ["b 0", "b 1", "c 0"]
    reg.close()
