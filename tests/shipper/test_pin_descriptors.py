"""Pinning rotated files while behind, when file descriptors run short: back off and log once
instead of retrying (and logging) every pin check; stop pinning at the process budget."""

from __future__ import annotations

import errno
import logging
import os
import resource
import shutil
from pathlib import Path

import pytest

import shipper.fd_budget as fd_budget
from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.tailer import Tailer
from tests.shipper.tailing import append_docker, drain, set_clock


def rotate(path: Path) -> None:
    os.replace(path, f"{path}.1")


def test_out_of_descriptors_backs_off_and_logs_once(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 50)
    t = Tailer(SourceSpec("test:c", path, "docker", "svc"), reg, "h", 65536)
    first = t.read(max_lines=5)
    assert first is not None
    rotate(path)
    append_docker(path, 50, 50)

    clock = [1000.0]
    set_clock(monkeypatch, clock)
    real_open = os.open
    attempts = [0]

    def emfile(p, *args, **kwargs):
        if Path(p) == path:
            attempts[0] += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", emfile)
    caplog.set_level(logging.INFO, logger="logq.shipper.tailer")
    for _ in range(240):  # one simulated minute of pin checks every 0.25 s
        t.pin_new_generation()
        clock[0] += 0.25
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "out of file descriptors" in warnings[0].getMessage()
    assert 3 <= attempts[0] <= 8  # 1, 2, 4, 8, 16, 30 s pauses, not 240 tries

    monkeypatch.setattr(os, "open", real_open)  # descriptors are back
    clock[0] += 60
    t.pin_new_generation()
    assert t.live is not None and t.live.path == path and len(t.cursors) == 2
    assert first.lines.logs + drain(t) == [f"line {i}" for i in range(100)]
    t.close()


def test_pinning_stops_at_the_process_budget(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 50)
    losses: list[str] = []
    t = Tailer(SourceSpec("test:c", path, "docker", "svc"), reg, "h", 65536, on_loss=losses.append)
    assert t.read(max_lines=5) is not None
    monkeypatch.setattr(fd_budget, "pin_budget", lambda: fd_budget.open_files())
    for gen in range(3):
        rotate(path)
        append_docker(path, 100 * (gen + 1), 10)
        t.pin_new_generation()
    assert len(t.cursors) == 1  # the source keeps its one file, pins nothing more
    assert losses == ["pin_limit"]  # counted once for the episode
    monkeypatch.setattr(fd_budget, "pin_budget", lambda: 1 << 20)
    t.pin_new_generation()
    assert len(t.cursors) >= 2 and t.live is not None and t.live.path == path
    t.close()


def test_budget_leaves_a_reserve_below_the_soft_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = fd_budget.pin_budget()
    assert 0 < budget <= soft - fd_budget.FD_RESERVE_MIN


def _fail_opens(monkeypatch: pytest.MonkeyPatch, under: Path) -> list[int]:
    """os.open fails with EMFILE for files under ``under``; returns a counter of attempts."""
    real_open = os.open
    attempts = [0]

    def emfile(p, *args, **kwargs):
        if str(p).startswith(str(under)):
            attempts[0] += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", emfile)
    return attempts


def test_start_without_descriptors_forgets_no_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files that cannot be opened at start are not taken as deleted (their checkpoints would
    be forgotten and counted lost): start is put off until descriptors are back."""
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "c-json.log"
    append_docker(path, 0, 10)
    reg = Registry(tmp_path / "state")
    spec = SourceSpec(f"test:{path}", path, "docker", "svc")
    t = Tailer(spec, reg, "h", 65536)
    assert drain(t) == [f"line {i}" for i in range(10)]
    t.close()
    append_docker(path, 10, 5)
    rotate(path)
    append_docker(path, 15, 5)
    clock = [1000.0]
    set_clock(monkeypatch, clock)
    losses: list[str] = []
    with pytest.MonkeyPatch.context() as opens:
        _fail_opens(opens, logs)
        t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
        assert t.read() is None and not t.poll()
        assert losses == [] and len(reg.items()) == 1
    clock[0] += 60  # descriptors are back, and the backoff has passed
    assert drain(t) == [f"line {i}" for i in range(10, 20)]
    assert losses == []
    t.close()
    reg.close()


def test_copytruncate_without_descriptors_waits_for_the_copy(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "app.log"
    path.write_bytes(b"".join(b"first %d\n" % i for i in range(5)))
    losses: list[str] = []
    t = Tailer(SourceSpec("test:ct", path, "plain", "svc"), reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == [f"first {i}" for i in range(5)]
    with open(path, "ab") as f:
        f.write(b"late 1\n")  # lands in the copy only
    shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)
    path.write_bytes(b"after 1\nafter 2\nafter 3\nafter 4\nafter 5\nafter 6\n")
    clock = [1000.0]
    set_clock(monkeypatch, clock)
    with pytest.MonkeyPatch.context() as opens:
        _fail_opens(opens, logs)
        assert t.read() is None  # cannot look for the copy: neither reads on nor gives up
        assert not t.poll()
        assert losses == []
    clock[0] += 60  # descriptors are back, and the backoff has passed
    assert drain(t) == ["late 1"] + [f"after {i}" for i in range(1, 7)]
    assert losses == []
    t.close()
