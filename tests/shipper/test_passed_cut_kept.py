"""R1s24 (found by rs1): without ``--multiline``, a split line flushed at its timeout was
stored twice when its cut was dropped as an ack passed it and a held file then sent the
checkpoint back to where the file was opened (see :meth:`shipper.cursor.Cursor.place_cuts`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipper.checkpoint import MAX_CUTS, Registry, parse_entry
from shipper.split_lines import SPLIT_FLUSH_SECONDS
from shipper.tailer import Tailer
from tests.shipper import test_offset_floor_fuzz as fuzz
from tests.shipper.hostgen import docker_line
from tests.shipper.tailing import aggregator_keeps, drain_sent, fresh_process, spec_for


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _kill_and_restart(t: Tailer, reg: Registry, then: bytes) -> list[tuple[str, int, str]]:
    """A kill after the last save, a restart from that checkpoint, ``then`` (the next stdout
    line) written after it: what the new run sends."""
    spec = t.spec
    reg.save()
    t.close()
    reg.close()
    reg = Registry(reg.state_dir)
    try:
        t = Tailer(spec, reg, "h", 65536)
        _append(spec.path, then)
        again = drain_sent(t)
        t.close()
    finally:
        reg.close()
    return again


def test_a_cut_passed_by_an_ack_is_used_when_the_checkpoint_goes_back_to_where_its_file_was_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``part `` (stdout) is flushed at its timeout and acknowledged with an ack past its cut;
    stderr lines go on. A file held for a split line then sends the checkpoint back to where
    the file was opened (0); a kill. The restart reads the file from 0: without the cut,
    ``part `` was joined to the next stdout line (written after the restart), under that
    line's offset, new to the aggregator -- its parts stored twice."""
    clock = fresh_process(monkeypatch)
    spec = spec_for(tmp_path / "c-json.log")
    spec.path.write_bytes(docker_line("x", 0) + docker_line("part ", 1, nl=False))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    sent = drain_sent(t)
    clock[0] += SPLIT_FLUSH_SECONDS + 1
    sent += drain_sent(t)  # "part " flushed as it is, its cut recorded, then acknowledged
    _append(spec.path, docker_line("e1", 2, "stderr"))
    sent += drain_sent(t)  # an ack past the cut
    cur = t.cursors[0]
    assert cur.state.offset > cur.opened_at == 0 and cur.state.cuts == []
    _append(spec.path, docker_line("e2", 3, "stderr"))
    t._holding.add(object())  # as when a file before it (or this one) is held for a split line
    sent += drain_sent(t)
    assert cur.state.offset == 0  # sent back to where it was opened
    cut_at = len(docker_line("x", 0) + docker_line("part ", 1, nl=False))
    assert [c[0] for c in cur.state.cuts] == [cut_at]  # the cut comes back with it
    again = _kill_and_restart(t, reg, docker_line("more", 4))
    assert [log for log, _, _ in again] == ["more"]
    assert aggregator_keeps(sent + again) == ["x", "part ", "e1", "e2", "more"]


def test_cuts_kept_below_the_checkpoint_stay_within_max_cuts(tmp_path: Path) -> None:
    """The cuts passed by the checkpoint and those after it are at most
    :data:`~shipper.checkpoint.MAX_CUTS` together, the oldest dropped first: a saved entry
    with more is dropped as corrupt at the next start."""
    spec = spec_for(tmp_path / "c-json.log")
    spec.path.write_bytes(docker_line("x", 0))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    try:
        drain_sent(t)
        cur = t.cursors[0]
        cur.passed_cuts = [[p, p + 1, "stdout"] for p in range(1, MAX_CUTS + 1)]
        cur.state.cuts = [[1000, 1001, "stdout"]]
        cur.place_cuts(0)
        assert len(cur.state.cuts) == MAX_CUTS and cur.passed_cuts == []
        assert cur.state.cuts[0][0] == 2 and cur.state.cuts[-1][0] == 1000
    finally:
        t.close()
        reg.close()


@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_the_fuzz_case_that_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """rs1's seed 1092 (no ``--multiline``), killed at event 44 with 2 acks lost: parts 14
    and 15 were stored twice, joined to parts 21 and 28 under another offset."""
    fuzz.test_tiny_damaged_lines_kill_anywhere(tmp_path, monkeypatch, 1092, fmt, None)


def test_a_line_flushed_while_the_passed_cuts_fill_the_checkpoint_still_gets_its_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """:data:`~shipper.checkpoint.MAX_CUTS` split lines flushed and acknowledged, then a hold
    sends the checkpoint back to 0 and puts their cuts back. A line flushed then must still
    get its cut (the oldest passed one gives way): refused as the list was full, a restart
    joined ``tail `` to the next stdout line, written after it, and stored it twice."""
    clock = fresh_process(monkeypatch)
    spec = spec_for(tmp_path / "c-json.log")
    spec.path.write_bytes(docker_line("x", 0))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    sent = drain_sent(t)
    for i in range(MAX_CUTS):
        _append(spec.path, docker_line(f"p{i} ", i + 1, nl=False))
        sent += drain_sent(t)
        clock[0] += SPLIT_FLUSH_SECONDS + 1
        sent += drain_sent(t)  # flushed as it is, acknowledged: its cut passed
    cur = t.cursors[0]
    assert len(cur.passed_cuts) == MAX_CUTS and cur.state.cuts == []
    t._holding.add(object())  # as when a file before it (or this one) is held for a split line
    _append(spec.path, docker_line("e", 100, "stderr"))
    sent += drain_sent(t)
    assert cur.state.offset == 0 and len(cur.state.cuts) == MAX_CUTS  # put back
    _append(spec.path, docker_line("tail ", 101, nl=False))
    sent += drain_sent(t)
    clock[0] += SPLIT_FLUSH_SECONDS + 1
    sent += drain_sent(t)
    assert cur.state.cuts[-1][0] == spec.path.stat().st_size  # its cut, kept
    reg.save()
    saved = json.loads((tmp_path / "state" / "checkpoints.json").read_text())["files"]
    [(state, problem)] = [parse_entry(v) for v in saved.values()]
    assert problem == "" and state is not None and len(state.cuts) == MAX_CUTS  # loads whole
    assert state.offset == 0 and state.cuts[0][0] > 0
    again = _kill_and_restart(t, reg, docker_line("more", 102))
    assert [log for log, _, _ in again] == ["more"]
    parts = [f"p{i} " for i in range(MAX_CUTS)]
    assert aggregator_keeps(sent + again) == ["x", *parts, "e", "tail ", "more"]
