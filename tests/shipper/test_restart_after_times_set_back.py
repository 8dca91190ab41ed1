"""R2s19: a loss while the shipper was down whose file time is behind the entry's save.

:func:`shipper.resume._unchanged_since` takes a file at offset 0 last modified before its
entry was saved as untouched since a truncation the running shipper handled. Lines written
while the shipper was down and truncated away again (Docker ``max-file=1``, copytruncate with
an immediately compressed copy) are a possible loss, counted ``truncated_in_place`` before
12cd119. With the file time behind the entry's ``updated`` -- the wall clock stepped back
while the shipper was down (NTP after a VM resume), or a tool set the time (``touch -r``,
``rsync -t``) -- they now count nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.shipper.tailing import drain_sent, fresh_process
from tests.shipper.test_restart_after_handled_truncation import (
    Run,
    _append,
    _needs_birth_times,
    _truncate,
)


def test_written_and_truncated_while_down_with_the_clock_stepped_back_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_process(monkeypatch)
    run = Run(tmp_path)
    _append(run.path, "alpha")
    _needs_birth_times(run.path)
    drain_sent(run.t)
    _truncate(run.path, copy=False)
    drain_sent(run.t)  # handled while running: entry at offset 0 under the next epoch
    saved = max(state.updated for _, state in run.reg.items())
    run.stop()
    # While down: the writer writes, the file is truncated again (its lines gone), and the
    # clock had been stepped back 60 s meanwhile (or a tool set the time).
    _append(run.path, "beta 1", "beta 2")
    _truncate(run.path, copy=False)
    os.utime(run.path, (saved - 60, saved - 60))

    again = Run(tmp_path)
    drain_sent(again.t)
    assert again.losses == ["truncated_in_place"]
    again.stop()
