"""B3s19: a status change while the shipper was down is no write.

A truncation the running shipper handled leaves an entry at offset 0 (see
``test_restart_after_handled_truncation.py``); at the next start a file not written since
counts nothing. Since 05567ba the change time decides too, so that a tool setting the
modification time back cannot hide a loss (R2s19, ``test_restart_after_times_set_back.py``).
But chmod, chown, setfacl, xattrs, ``restorecon`` or a backup's hard link move the change
time alone: while the shipper was down, they brought back the false ``truncated_in_place``
ticket. The entry keeps the file's size and modification time as the truncation was handled
(``left_at``): both unchanged, the file was not written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from shipper.checkpoint import parse_entry
from tests.shipper.tailing import drain_sent, fresh_process
from tests.shipper.test_restart_after_handled_truncation import (
    Run,
    _append,
    _needs_birth_times,
    _truncate,
)


def _saved_long_ago(state_dir: Path, seconds: float) -> None:
    """Every entry of the registry saved ``seconds`` ago: the change time of what happens
    next is after it for sure (file times come from a coarse clock, a few ms behind)."""
    path = state_dir / "checkpoints.json"
    doc = json.loads(path.read_text())
    for entry in doc["files"].values():
        entry["updated"] = time.time() - seconds
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("while_down", ["chmod", "written-and-time-set-back"])
def test_a_status_change_while_down_counts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, while_down: str
) -> None:
    fresh_process(monkeypatch)
    run = Run(tmp_path)
    _append(run.path, "alpha")
    _needs_birth_times(run.path)
    drain_sent(run.t)
    _truncate(run.path, copy=False)
    then = (int(time.time()) - 120) * 10**9 + 123_456_789  # not a whole second
    os.utime(run.path, ns=(then, then))
    drain_sent(run.t)  # handled while running: entry at offset 0, the file's time kept
    run.stop()
    _saved_long_ago(tmp_path / "state", 60)
    if while_down == "chmod":  # configuration management sets the mode: no write
        os.chmod(run.path, 0o640)
    else:  # written and truncated again, its time set back to a moment before the save
        _append(run.path, "beta 1", "beta 2")
        _truncate(run.path, copy=False)
        os.utime(run.path, ns=(then + 1000, then + 1000))

    again = Run(tmp_path)
    drain_sent(again.t)
    want = [] if while_down == "chmod" else ["truncated_in_place"]
    assert again.losses == want
    again.stop()


@pytest.mark.parametrize(
    ("value", "kept"),
    [([0, 1_700_000_000_123_456_789], True), ([0], False), (["0", 1], False), ([-1, 5], False)],
)
def test_left_at_is_kept_or_dropped_with_a_note(value: object, kept: bool) -> None:
    """A damaged ``left_at`` is only a check: dropped (the file times decide), the entry
    kept."""
    entry = {"source": "file:/x", "path": "/x", "source_id": "h:1:ab", "offset": 0, "acked": 0}
    state, problem = parse_entry({**entry, "left_at": value})
    assert state is not None
    assert state.left_at == (value if kept else None)
    assert ("left_at=" in problem) is not kept
