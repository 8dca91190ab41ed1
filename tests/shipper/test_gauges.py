"""``logq_shipper_bytes_behind``: refreshed every second from one look at each open file, and
set only where it moved (an idle host's files were a label look-up each, every second)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from shipper.config import load_config
from shipper.daemon import Shipper
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args


class Files:
    """A tailer's stand-in: the bytes behind of its open files, as the test sets them."""

    def __init__(self) -> None:
        self.behind: list[tuple[str, int]] = []

    def note_sizes(self) -> list[tuple[str, int]]:
        return list(self.behind)


def gauge(shipper: Shipper, path: str) -> float | None:
    return shipper.metrics.registry.get_sample_value("logq_shipper_bytes_behind", {"path": path})


def test_bytes_behind_is_set_only_where_it_moved(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipper = Shipper(load_config(shipper_args(tmp_path, receiver)))
    files = Files()
    runner = types.SimpleNamespace(tailer=files, spec=types.SimpleNamespace(service="s"))
    shipper.runners["k"] = runner  # type: ignore[assignment]
    looked: list[tuple[str, ...]] = []
    labels = shipper.metrics.bytes_behind.labels

    def spy(*values: str) -> object:
        looked.append(values)
        return labels(*values)

    monkeypatch.setattr(shipper.metrics.bytes_behind, "labels", spy)
    try:
        files.behind = [("/a.log", 5), ("/b.log", 0)]
        shipper._update_gauges()
        assert (gauge(shipper, "/a.log"), gauge(shipper, "/b.log")) == (5.0, 0.0)
        assert len(looked) == 2
        for _ in range(3):  # idle: nothing moved, nothing is set
            shipper._update_gauges()
        assert len(looked) == 2
        files.behind = [("/a.log", 7), ("/b.log", 0)]
        shipper._update_gauges()
        assert (gauge(shipper, "/a.log"), gauge(shipper, "/b.log")) == (7.0, 0.0)
        assert looked[2:] == [("/a.log",)]
        files.behind = [("/b.log", 0)]  # a.log let go: its series goes
        shipper._update_gauges()
        assert gauge(shipper, "/a.log") is None
        files.behind = [("/a.log", 7), ("/b.log", 0)]  # open again at the same figure
        shipper._update_gauges()
        assert gauge(shipper, "/a.log") == 7.0
        assert shipper.metrics.registry.get_sample_value("logq_shipper_open_files") == 2.0
    finally:
        shipper.registry.close()


def test_bytes_behind_counts_what_is_written_and_not_acknowledged(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The tailer's figures for the gauges come from the look that notes the sizes."""
    docker = tmp_path / "docker"
    log = make_container(docker, "a" * 64, "app", lines=["one"])
    shipper = Shipper(load_config(shipper_args(tmp_path, receiver, docker=docker)))
    try:
        from shipper.source import SourceRunner

        (spec,) = shipper._pass({}).specs
        runner = SourceRunner(shipper, spec)
        tailer = runner.tailer
        assert tailer.read() is not None  # opened and read: nothing acknowledged yet
        size = log.stat().st_size
        assert tailer.note_sizes() == [(str(log), size)]
        (cur,) = tailer.cursors
        assert cur.state.seen == size
        with open(log, "ab") as f:
            f.write(b"more\n")
        assert tailer.note_sizes() == [(str(log), size + 5)]
        assert cur.state.seen == size + 5
        tailer.close()
    finally:
        shipper.registry.close()
