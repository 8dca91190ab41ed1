"""``--multiline`` (H1s19, from R3s18's review): a record open when its file is truncated in
place with no copy; a copy's checkpoint while the batches of its truncated file wait for their
acks; the metric families listed only when a source groups lines; the bad-label memory
bounded."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from shipper import discover as discover_mod
from shipper.checkpoint import Registry
from shipper.discover import Discoverer
from shipper.metrics import Metrics
from shipper.tailer import Tailer
from tests.shipper.hostgen import make_container
from tests.shipper.tailing import aggregator_keeps, fresh_process, spec_for
from tests.shipper.test_multiline_fuzz_cri_plain import _play, _script, _tailer
from tests.shipper.test_multiline_restarts import _finish, _Run

MULTILINE_FAMILIES = {
    "logq_shipper_multiline_records",
    "logq_shipper_multiline_cut_records",
    "logq_shipper_cuts_dropped",
}


def _write(path: Path, *lines: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line.encode() + b"\n" for line in lines))


@pytest.mark.parametrize("name", ["java", None])
def test_a_record_open_at_a_truncation_without_copy_is_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str | None
) -> None:
    """A plain ``--path`` file truncated in place with no copy (Docker ``max-file=1``, or a
    copy compressed at once) while a java record is open, everything written read before:
    the record goes out as it is, once, under the old content's id, and the new content is
    read from its start under its own. Before, it stayed open for good (no later line of the
    old file could end it) and was never shipped. ``None``: the option off, the control."""
    now = fresh_process(monkeypatch)
    p = tmp_path / "app.log"
    p.touch()
    reg = Registry(tmp_path / "state")
    run = _Run(Tailer(spec_for(p, "plain"), reg, "h", 65536, multiline=name), reg, 0, None)
    _write(p, "boot", "java.lang.IllegalStateException: A", "\tat x.Y.b(Y.java:1) B")
    run.drain()
    os.truncate(p, 0)
    run.drain()
    _write(p, "ready C")
    run.drain()
    _finish(run, now)
    kept = aggregator_keeps(run.sent)
    trace = ["java.lang.IllegalStateException: A", "\tat x.Y.b(Y.java:1) B"]
    assert kept == ["boot", *(["\n".join(trace)] if name else trace), "ready C"]
    first_id = run.sent[0][2]
    assert [sid == first_id for _, _, sid in run.sent] == [True] * (len(kept) - 1) + [False]


def test_a_record_open_at_a_truncation_is_not_joined_to_the_new_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new content's first line would continue the record (a frame): it is not joined to
    lines of a content that is gone, and not held back until a later line ends it."""
    now = fresh_process(monkeypatch)
    p = tmp_path / "app.log"
    p.touch()
    reg = Registry(tmp_path / "state")
    run = _Run(Tailer(spec_for(p, "plain"), reg, "h", 65536, multiline="java"), reg, 0, None)
    _write(p, "java.lang.IllegalStateException: A")
    run.drain()
    os.truncate(p, 0)
    _write(p, "\tat x.Y.d(Y.java:2) D")
    run.drain()  # no clock step: nothing waits for the timeout
    assert [log for log, _, _ in run.sent] == [
        "java.lang.IllegalStateException: A",
        "\tat x.Y.d(Y.java:2) D",
    ]
    assert run.sent[0][2] != run.sent[1][2]  # the old content's id, the new content's
    _finish(run, now)
    assert len(aggregator_keeps(run.sent)) == 2


def test_multiline_metric_families_are_listed_only_once_a_source_groups_lines() -> None:
    """With the option off ``/metrics`` lists what it listed before the option existed."""
    m = Metrics()
    assert not MULTILINE_FAMILIES & {f.name for f in m.registry.collect()}
    m.multiline_listed()
    m.multiline_listed()  # a second source: listed once (a second register would raise)
    assert {f.name for f in m.registry.collect()} >= MULTILINE_FAMILIES


def test_the_bad_label_memory_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Containers whose ``logq.multiline`` label names no parser are remembered (to warn once
    each) up to :data:`~shipper.discover.MAX_BAD_MULTILINE`, the newest kept."""
    monkeypatch.setattr(discover_mod, "MAX_BAD_MULTILINE", 2)
    monkeypatch.setattr(discover_mod, "_BAD_MULTILINE", {})
    root = tmp_path / "docker"
    for c in "abc":
        make_container(root, c * 64, f"svc-{c}", labels={"logq.multiline": "ruby"})
    with caplog.at_level(logging.WARNING, logger=discover_mod.log.name):
        Discoverer(root, tmp_path / "none", (), ()).scan()
    assert len(caplog.records) == 3
    assert list(discover_mod._BAD_MULTILINE) in (["b" * 64, "c" * 64], ["a" * 64, "c" * 64])
    assert len(discover_mod._BAD_MULTILINE) == 2


def test_plain_copytruncates_inside_a_record_kill_with_lost_acks_stores_each_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain file, logrotate ``copytruncate`` only (fuzzer seed 40), killed at event 30 with
    the last 2 acks lost. A record opened in one content goes on in the next (after a
    truncation); a quiet point is reached there and the content is truncated again, its copy
    holding nothing past what was read. That copy had no batch of its own: it was finished at
    once, while the batches that reached the quiet point (read from the live file before the
    truncation) still waited for their acks, and the file the record began in was still held.
    The restart read that file again, never the copy: the record's head was joined to the
    next content's line and stored a second time. Now the acks of those batches advance the
    copy's checkpoint (:attr:`~shipper.cursor.Cursor.copied_to`)."""
    monkeypatch.setenv("R3_PLAIN_ROT", "1")
    monkeypatch.setenv("R3_CTONLY", "1")
    monkeypatch.delenv("R3_ML", raising=False)  # the option on (java), whatever the shell says
    now = fresh_process(monkeypatch)
    script = _script(random.Random(40), "plain")
    ref = tmp_path / "ref"
    ref.mkdir()
    t, reg = _tailer(ref / "c.log", ref / "state", "plain")
    run = _Run(t, reg, 0, None)
    _play(script, ref / "c.log", now, run, [0], "plain", [0])
    _finish(run, now)
    expected = aggregator_keeps(run.sent)

    root = tmp_path / "run"
    root.mkdir()
    path = root / "c.log"
    n, gen = [0], [0]
    t, reg = _tailer(path, root / "state", "plain")
    first = _Run(t, reg, 2, 30)
    at = _play(script, path, now, first, n, "plain", gen)
    assert at == 17  # the third copytruncate
    reg.save()  # kill -9
    t.close()
    reg.close()
    t, reg = _tailer(path, root / "state", "plain")
    second = _Run(t, reg, 0, None)
    second.drain()
    _play(script, path, now, second, n, "plain", gen, at + 1)
    _finish(second, now)
    assert sorted(aggregator_keeps(first.sent + second.sent)) == sorted(expected)
