"""R3s18 review: exact reproductions of what it found in the ``--multiline`` patch (H4s18), kept
as regression tests (fixed by H1s19)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from tests.shipper.tailing import aggregator_keeps, fresh_process
from tests.shipper.test_multiline_fuzz_cri_plain import _play, _script, _tailer
from tests.shipper.test_multiline_restarts import _finish, _Run


def test_cri_kill_after_two_rotations_inside_a_busy_span_stores_each_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRI, java parser. A stderr trace opened in file 1 is ended in file 2 by a new stderr
    trace that stays open to file 2's end (no quiet point in file 2); file 2 is rotated and
    flushed at the timeout; kill with the last 2 acks lost. R3s18 saw file 2 with no checkpoint
    entry at the kill, and the file-1 record stored twice: the harness (``_Run``) counted a
    chunk outstanding only when it acknowledged it, so the ack of an earlier chunk let the
    closed file 2 go while its last chunk still waited for its ack. The shipper counts a batch
    when it reads it (``SourceRunner._next_batch``), as the harness now does."""
    now = fresh_process(monkeypatch)
    script = _script(random.Random(17), "cri")
    ref = tmp_path / "ref"
    ref.mkdir()
    t, reg = _tailer(ref / "c.log", ref / "state", "cri")
    run = _Run(t, reg, 0, None)
    _play(script, ref / "c.log", now, run, [0], "cri", [0])
    _finish(run, now)
    expected = aggregator_keeps(run.sent)

    root = tmp_path / "run"
    root.mkdir()
    path = root / "c.log"
    n, gen = [0], [0]
    t, reg = _tailer(path, root / "state", "cri")
    first = _Run(t, reg, 2, 29)
    at = _play(script, path, now, first, n, "cri", gen)
    reg.save()  # kill -9
    t.close()
    reg.close()
    t, reg = _tailer(path, root / "state", "cri")
    second = _Run(t, reg, 0, None)
    second.drain()
    assert at is not None
    _play(script, path, now, second, n, "cri", gen, at + 1)
    _finish(second, now)
    kept = aggregator_keeps(first.sent + second.sent)
    doubled = [r for r, k in Counter(kept).items() if k > 1]
    assert doubled == [], doubled
    assert Counter(kept) == Counter(expected)


def test_docker_kill_with_lost_acks_stores_each_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker json-file, java parser, random script seed 171 (both streams, split lines,
    rotations, timeouts), killed at event 104 with the last 2 acks lost. ``boom #49#`` was
    flushed at its timeout in file A and its cut pruned once acked; a later, late ack of A,
    while a newer file was held, set A's checkpoint back to where A was opened
    (``Tailer._checkpoint_offset``), below the pruned cut: the restart joined the record to a
    later frame and shipped it again above the aggregator's mark, stored twice."""
    from tests.shipper.test_multiline import ml_tailer
    from tests.shipper.test_multiline_fuzz_docker import _play as dplay
    from tests.shipper.test_multiline_fuzz_docker import _script as dscript

    now = fresh_process(monkeypatch)
    script = dscript(random.Random(171))
    ref = tmp_path / "ref"
    ref.mkdir()
    t, reg = ml_tailer(ref / "c-json.log", ref / "state")
    run = _Run(t, reg, 0, None)
    dplay(script, ref / "c-json.log", now, run, [0])
    _finish(run, now)
    expected = aggregator_keeps(run.sent)
    root = tmp_path / "run"
    root.mkdir()
    path = root / "c-json.log"
    n = [0]
    t, reg = ml_tailer(path, root / "state")
    first = _Run(t, reg, 2, 104)
    at = dplay(script, path, now, first, n)
    reg.save()
    t.close()
    reg.close()
    t, reg = ml_tailer(path, root / "state")
    second = _Run(t, reg, 0, None)
    second.drain()
    assert at is not None
    dplay(script, path, now, second, n, at + 1)
    _finish(second, now)
    kept = aggregator_keeps(first.sent + second.sent)
    assert [r for r, k in Counter(kept).items() if k > 1] == []
    assert Counter(kept) == Counter(expected)


@pytest.mark.parametrize("name", ["java", None])
def test_a_record_open_at_a_copytruncate_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str | None
) -> None:
    """A plain ``--path`` file rotated by logrotate's copytruncate while a java record is open
    (its exception line read, its frame written after the truncation). No restart, no kill.
    With ``--multiline`` the open record and the frame after the truncation are never
    shipped; without it (control, ``None``) every line is."""
    import os
    import shutil

    from shipper.checkpoint import Registry
    from shipper.tailer import Tailer
    from tests.shipper.tailing import spec_for

    now = fresh_process(monkeypatch)
    p = tmp_path / "app.log"
    p.touch()
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(p, "plain"), reg, "h", 65536, multiline=name)
    run = _Run(t, reg, 0, None)

    def write(text: str) -> None:
        with open(p, "ab") as f:
            f.write(text.encode() + b"\n")
        run.drain()

    write("java.lang.IllegalStateException: A")
    write("\tat x.Y.b(Y.java:1) B")
    write("java.lang.IllegalStateException: C")
    shutil.copyfile(p, f"{p}.1")  # logrotate copytruncate
    os.truncate(p, 0)
    run.drain()
    write("\tat x.Y.d(Y.java:2) D")
    _finish(run, now)
    shipped = "\n".join(aggregator_keeps(run.sent))
    for token in ("A", "B", "C", "D"):
        assert shipped.count(f" {token}") == 1, (token, run.sent)
