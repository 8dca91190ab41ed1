"""A restart after a truncation the shipper handled, the file still empty (A3s18).

The running shipper leaves the live file's entry at offset 0 under the next epoch, nothing
acknowledged. At the next start the empty file has no first line, so that entry is not opened,
and its inode with its birth time still at the path read as "truncated while the shipper was
down": ``truncated_in_place``, a ticket-level alert, after every such restart, with nothing
lost. A file truncated while the shipper was down after it had read lines there (acknowledged
or not) still counts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from shipper.birth import birth_time
from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.tailing import drain_sent, fresh_process, spec_for


def _append(path: Path, *lines: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line.encode() + b"\n" for line in lines))


def _truncate(path: Path, copy: bool) -> None:
    """logrotate ``copytruncate`` (the copy kept as ``.1``), or Docker ``max-file=1``."""
    if copy:
        shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)


class Run:
    """One shipper run over ``app.log``, with the loss counts it made."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "app.log"
        self.losses: list[str] = []
        self.reg = Registry(tmp_path / "state")
        self.t = Tailer(
            spec_for(self.path, "plain"), self.reg, "h", 65536, on_loss=self.losses.append
        )

    def stop(self) -> None:
        """What a ``kill -9`` leaves: the registry as last saved."""
        self.reg.save()
        self.t.close()
        self.reg.close()


def _needs_birth_times(path: Path) -> None:
    with open(path, "rb") as f:
        if birth_time(f.fileno()) is None:
            pytest.skip("this file system records no birth times")


@pytest.mark.parametrize("copy", [True, False], ids=["copytruncate", "max-file-1"])
def test_a_restart_while_the_file_is_still_empty_counts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy: bool
) -> None:
    fresh_process(monkeypatch)
    run = Run(tmp_path)
    _append(run.path, "alpha")
    _needs_birth_times(run.path)
    assert [x for x, _, _ in drain_sent(run.t)] == ["alpha"]
    _truncate(run.path, copy)
    drain_sent(run.t)  # noticed while running (max-file=1 counts its possible loss here)
    counted_while_running = list(run.losses)
    run.stop()

    again = Run(tmp_path)
    assert drain_sent(again.t) == []
    assert again.losses == [], (again.losses, counted_while_running)
    _append(again.path, "beta")
    assert [x for x, _, _ in drain_sent(again.t)] == ["beta"]
    again.stop()


@pytest.mark.parametrize("acked", [True, False], ids=["acked", "acks-lost"])
def test_a_file_truncated_while_down_still_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acked: bool
) -> None:
    """Lines read (acknowledged or not), then a truncation after a handled one, while the
    shipper is down: the lines written there before it, if any, are lost."""
    fresh_process(monkeypatch)
    run = Run(tmp_path)
    _append(run.path, "alpha")
    _needs_birth_times(run.path)
    drain_sent(run.t)
    _truncate(run.path, copy=False)
    drain_sent(run.t)
    _append(run.path, "beta")  # another first line: it takes the offset-0 entry over
    drain_sent(run.t, ack=acked)
    saved = max(state.updated for _, state in run.reg.items())
    run.stop()
    _truncate(run.path, copy=False)  # while the shipper is down
    while run.path.stat().st_mtime <= saved:  # file times lag the clock by up to a jiffy
        os.utime(run.path)  # as a truncation that moment later would leave it

    again = Run(tmp_path)
    drain_sent(again.t)
    assert again.losses == ["truncated_in_place"]
    again.stop()
