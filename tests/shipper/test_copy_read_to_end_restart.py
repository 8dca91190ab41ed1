"""A copytruncate copy already read to its end, then a restart (A3s18).

A plain ``--path`` file renamed away (logrotate ``create``) is kept in the registry during its
rotate wait. When the new live file is then truncated by ``copytruncate`` after everything in
it was read, its copy (``app.log.1``) must still be known after a restart: the restart's
missed-rotation search starts from the checkpointed rotated file and would otherwise read that
copy whole under a new ``source_id``, so the aggregator stored its lines twice.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.tailing import aggregator_keeps, drain_sent, fresh_process, spec_for


def _tailer(path: Path, state: Path) -> tuple[Tailer, Registry]:
    reg = Registry(state)
    return Tailer(spec_for(path, "plain"), reg, "h", 65536), reg


def _append(path: Path, line: str) -> None:
    with open(path, "ab") as f:
        f.write(line.encode() + b"\n")


def _rename_rotate(path: Path) -> None:
    """logrotate ``create``: ``app.log`` becomes ``app.log.1``, a new empty ``app.log``."""
    os.replace(path, f"{path}.1")
    path.touch()


def _copytruncate(path: Path) -> None:
    """logrotate ``copytruncate`` after the previous rotation: ``.1`` moves to ``.2``."""
    os.replace(f"{path}.1", f"{path}.2")
    shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)


@pytest.mark.parametrize("acked", [True, False], ids=["acked", "acks-lost"])
def test_copy_read_to_end_is_not_read_again_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acked: bool
) -> None:
    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    _append(path, "first generation")
    t, reg = _tailer(path, tmp_path / "state")
    sent = drain_sent(t)
    _rename_rotate(path)
    _append(path, "second generation")
    sent += drain_sent(t, ack=acked)
    _copytruncate(path)
    sent += drain_sent(t)  # notices the truncation: the copy holds nothing unread
    reg.save()  # kill -9 here
    t.close()
    reg.close()

    t, reg = _tailer(path, tmp_path / "state")
    sent += drain_sent(t)
    _append(path, "third generation")
    sent += drain_sent(t)
    reg.close()

    kept = Counter(aggregator_keeps(sent))
    assert kept == Counter(["first generation", "second generation", "third generation"]), sent
