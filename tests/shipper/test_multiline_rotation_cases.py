"""R1s19 review of ``--multiline`` (H1s19): reproductions of what the fuzzers do not model.

Each test plays one exact script through :class:`~shipper.tailer.Tailer` with the fake clock,
"kills" the shipper (the registry saved as it is, nothing more acknowledged), restarts it
from what the checkpoints hold, and checks what the aggregator (which keeps a record only above
the highest offset it stored from that source_id) ends up with: every line exactly once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import shipper.multiline
import shipper.resume
from shipper.checkpoint import Registry
from shipper.cursor import Chunk
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line
from tests.shipper.tailing import aggregator_keeps, fresh_process, rotate_docker, spec_for
from tests.shipper.test_multiline import ml_tailer
from tests.shipper.test_multiline_restarts import (
    Step,
    _finish,
    _play,
    _Run,
    _written,
    same_or_joined,
)


def _tailer(path: Path, state: Path, fmt: str, ml: str | None) -> tuple[Tailer, Registry]:
    reg = Registry(state)
    if ml is None:  # also runs on main, which has no such parameter
        return Tailer(spec_for(path, fmt), reg, "h", 65536), reg
    return Tailer(spec_for(path, fmt), reg, "h", 65536, multiline=ml), reg


def _read_all(t: Tailer) -> list[Chunk]:
    """Read until nothing changes, acknowledging nothing (each chunk counted outstanding, as
    the source's batch does when it is read)."""
    chunks: list[Chunk] = []
    while (chunk := t.read()) is not None or t.poll():
        if chunk is not None:
            chunk.cursor.outstanding += 1
            chunks.append(chunk)
    return chunks


def _ack(t: Tailer, chunk: Chunk) -> None:
    last = chunk.lines.offsets[-1] if chunk.lines.offsets else 0
    t.commit(chunk.cursor, chunk.resume, last)


def _sent(chunks: list[Chunk]) -> list[tuple[str, int, str]]:
    return [
        (log, off, c.cursor.source_id)
        for c in chunks
        for log, off in zip(c.lines.logs, c.lines.offsets, strict=True)
    ]


def _lines(kept: list[str]) -> list[str]:
    return [line for record in kept for line in record.split("\n")]


@pytest.mark.parametrize("ml", [None, "java"])
def test_a_copytruncate_while_a_batch_is_in_flight_loses_no_line_at_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ml: str | None
) -> None:
    """logrotate ``copytruncate``: the batch of the last lines read is in flight (not yet at
    the aggregator) when the file is copied and truncated; the shipper is killed before that
    batch is delivered. The restart must read those lines again from the copy.

    Option off (``ml=None``) this is main's own path: the copy, holding nothing past what was
    read, is followed (A3s18), read to its end at once and finished at its end although head's
    batch is still in flight: the restart never reads it again (H1s19's suspicion)."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    state = tmp_path / "state"
    path.write_bytes(b"a 0\na 1\n")
    t, reg = _tailer(path, state, "plain", ml)
    first = _read_all(t)
    for c in first:
        _ack(t, c)
    delivered = _sent(first)
    with open(path, "ab") as f:
        f.write(b"b 0\nb 1\n")
    in_flight = _read_all(t)  # read and batched, never delivered: the kill comes first
    assert in_flight
    shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)
    now[0] += 10
    _read_all(t)  # the truncation seen, the copy followed
    reg.save()  # kill -9
    t.close()
    reg.close()
    t, reg = _tailer(path, state, "plain", ml)
    now[0] += 10
    second = _read_all(t)
    for c in second:
        _ack(t, c)
    reg.close()
    lines = _lines(aggregator_keeps(delivered + _sent(second)))
    assert sorted(lines) == ["a 0", "a 1", "b 0", "b 1"], lines


def _docker(path: Path, lines: list[tuple[str, str]], n: list[int]) -> None:
    with open(path, "ab") as f:
        for stream, text in lines:
            f.write(docker_line(text, n[0], stream))
            n[0] += 1


@pytest.mark.parametrize("after", ["java", None])
def test_turning_the_option_off_across_a_restart_loses_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: str | None
) -> None:
    """An operator drops a service from ``--multiline`` (or a label flaps) and restarts the
    shipper while a stdout trace is open and stderr lines after it were shipped and acked.

    The checkpoint stays at the quiet point before the trace; the restart, with the option
    off, reads the trace's lines again and ships each at its own end offset -- below the
    stderr lines' offsets already acknowledged (:attr:`FileState.acked`) and stored: the
    shipper's floor and the aggregator drop them. ``after="java"`` (option kept) is the
    control."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    n = [0]
    _docker(path, [("stdout", "boot")], n)
    t, reg = _tailer(path, state, "docker", "java")
    sent: list[tuple[str, int, str]] = []
    for c in _read_all(t):
        _ack(t, c)
        sent += _sent([c])
    trace = [
        ("stdout", "java.lang.IllegalStateException: boom"),
        ("stdout", "\tat com.example.A.run(A.java:1)"),
    ]
    _docker(path, trace + [("stderr", f"err {i}") for i in range(3)], n)
    for c in _read_all(t):
        _ack(t, c)
        sent += _sent([c])
    reg.save()  # stopped (kill -9 or SIGTERM: all acks are in)
    t.close()
    reg.close()
    t, reg = _tailer(path, state, "docker", after)
    now[0] += 10
    _docker(path, [("stdout", "after")], n)
    for c in _read_all(t):
        _ack(t, c)
        sent += _sent([c])
    now[0] += 10
    for c in _read_all(t):
        _ack(t, c)
        sent += _sent([c])
    reg.close()
    lines = _lines(aggregator_keeps(sent))
    written = ["boot", trace[0][1], trace[1][1], "err 0", "err 1", "err 2", "after"]
    assert sorted(lines) == sorted(written), lines


def test_a_record_open_when_its_container_is_removed_is_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docker rm`` while a trace is open (the container crashed on it): the log file and its
    folder are deleted. The open record must still go out (at the timeout at the latest)."""
    now = fresh_process(monkeypatch)
    folder = tmp_path / "abc"
    folder.mkdir()
    path = folder / "abc-json.log"
    n = [0]
    trace = [
        ("stderr", "java.lang.IllegalStateException: boom"),
        ("stderr", "\tat com.example.A.run(A.java:1)"),
    ]
    _docker(path, [("stdout", "boot"), *trace], n)
    t, reg = _tailer(path, tmp_path / "state", "docker", "java")
    sent: list[tuple[str, int, str]] = []
    for c in _read_all(t):
        _ack(t, c)
        sent += _sent([c])
    shutil.rmtree(folder)
    for _ in range(3):
        now[0] += 10
        for c in _read_all(t):
            _ack(t, c)
            sent += _sent([c])
    reg.close()
    assert aggregator_keeps(sent) == ["boot", "\n".join(text for _, text in trace)]


@pytest.mark.parametrize("lost_acks", [0, 2])
def test_a_trace_past_the_cap_killed_anywhere_is_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost_acks: int
) -> None:
    """A runaway trace cut at the record cap (5 lines here, 1,000 in production), both streams,
    a rotation inside it, killed at every point with ``lost_acks`` acks lost: every line in
    exactly one record, as the uninterrupted run."""
    monkeypatch.setattr(shipper.multiline, "MAX_RECORD_LINES", 5)
    now = fresh_process(monkeypatch)
    script: list[Step] = [("out", "boot"), ("out", "java.lang.IllegalStateException: boom")]
    script += [("out", f"\tat com.example.A.f{i}(A.java:{i})") for i in range(8)]
    script += [("err", "java.lang.Error: other"), ("rotate",)]
    script += [("out", f"\tat com.example.B.f{i}(B.java:{i})") for i in range(7)]
    script += [("err", "\tat x.Y.z(Y.java:1)"), ("out", "done"), ("tick", "3")]
    expected, events = _reference(tmp_path, now, script)
    assert sum(r.count("\n") + 1 for r in expected) == _written(script)
    assert sum(1 for r in expected if r.count("\n") + 1 == 5) >= 3  # cut at the cap
    for stop in range(1, events + 1):
        root = tmp_path / f"run{stop}"
        root.mkdir()
        path = root / "c-json.log"
        n = [0]
        t, reg = ml_tailer(path, root / "state")
        first = _Run(t, reg, lost_acks, stop)
        at = _play(script, path, now, first, n)
        reg.save()
        t.close()
        reg.close()
        t, reg = ml_tailer(path, root / "state")
        second = _Run(t, reg, 0, None)
        second.drain()
        if at is not None:
            _play(script, path, now, second, n, at + 1)
        _finish(second, now)
        kept = aggregator_keeps(first.sent + second.sent)
        same_or_joined(kept, expected)


def _reference(tmp_path: Path, now: list[float], script: list[Step]) -> tuple[list[str], int]:
    path = tmp_path / "ref" / "c-json.log"
    path.parent.mkdir()
    t, reg = ml_tailer(path, tmp_path / "ref" / "state")
    run = _Run(t, reg, 0, None)
    _play(script, path, now, run, [0])
    _finish(run, now)
    return aggregator_keeps(run.sent), run.events


@pytest.mark.parametrize("ml", ["java", None])
def test_a_stop_while_a_trace_spans_a_compressed_rotation_loses_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ml: str | None
) -> None:
    """Docker json-file with ``compress: true`` (or the kubelet, which compresses the previous
    rotated file at the next rotation): the rotated file is gzipped at once, while the shipper
    still reads it. A trace open across that rotation, then a stop -- a graceful SIGTERM
    (every ack in) is enough: open records are not shipped at a stop, the checkpoint stays
    at the quiet point in the rotated file, and the restart cannot read a ``.gz``: the
    trace's head is lost. ``ml=None`` (option off, each line shipped as read) is the
    control."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    n = [0]
    head = [
        ("stdout", "boot"),
        ("stdout", "java.lang.IllegalStateException: boom"),
        ("stdout", "\tat com.example.A.run(A.java:1)"),
    ]
    _docker(path, head, n)
    t, reg = _tailer(path, state, "docker", ml)
    sent: list[tuple[str, int, str]] = []
    for c in _read_all(t):
        _ack(t, c)
        sent += _sent([c])
    rotate_docker(path, max_file=5, compress=True)
    _docker(path, [("stdout", "\tat com.example.B.run(B.java:2)")], n)
    for c in _read_all(t):
        _ack(t, c)
        sent += _sent([c])
    reg.save()  # SIGTERM: stop reading, every batch acknowledged, checkpoints saved
    t.close()
    reg.close()
    t, reg = _tailer(path, state, "docker", ml)
    _docker(path, [("stdout", "after")], n)
    for _ in range(2):
        now[0] += 10
        for c in _read_all(t):
            _ack(t, c)
            sent += _sent([c])
    reg.close()
    lines = _lines(aggregator_keeps(sent))
    written = [text for _, text in head] + ["\tat com.example.B.run(B.java:2)", "after"]
    assert sorted(lines) == sorted(written), lines


def test_back_to_back_traces_across_rotations_report_no_false_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A service in an error loop: one trace right after another on one stream, no other line
    between (each exception line ends the record before it and opens the next), a line every
    0.5 s, Docker rotating with ``max-file=2``. A stream that never has a quiet point keeps
    every file's checkpoint where the loop began; the file it points at is deleted by
    ``max-file`` while the shipper still runs. A stop (every ack in) and a restart lose no line
    (the records in the deleted file were all shipped and acknowledged), but the restart
    reports that file as deleted unread, its lines lost: WARNING and
    ``logq_shipper_lost_files_total{reason="deleted_unread"}``, which pages (operations.md)."""
    now = fresh_process(monkeypatch)
    trace = [
        ("out", "java.lang.IllegalStateException: retry failed"),
        ("out", "\tat com.example.Loop.run(Loop.java:1)"),
    ]
    script: list[Step] = [("out", "boot")]
    for _rotation in range(3):
        for _ in range(3):
            script += [*trace, ("tick", "0.5")]
        script += [("rotate",)]
    script += trace
    path = tmp_path / "c-json.log"
    t, reg = ml_tailer(path, tmp_path / "state")
    first = _Run(t, reg, 0, None)
    n = 0
    for step in script:  # max-file=2: the older rotated file deleted at each rotation
        if step[0] == "rotate":
            rotate_docker(path, max_file=2)
        elif step[0] == "tick":
            now[0] += float(step[1])
        else:
            _docker(path, [("stdout", step[1])], [n])
            n += 1
        first.drain()
    offsets = sorted((st.path, st.offset, st.acked) for _, st in reg.items())
    reg.save()  # SIGTERM: every chunk acknowledged
    t.close()
    reg.close()
    t, reg = ml_tailer(path, tmp_path / "state")
    second = _Run(t, reg, 0, None)
    second.drain()
    _docker(path, [("stdout", "done")], [n])
    _finish(second, now)
    lines = _lines(aggregator_keeps(first.sent + second.sent))
    assert len(lines) == _written(script) + 1, (offsets, lines)
    assert offsets[0][1] < 100  # the checkpoint stayed where the loop began (documented)
    false_alarms = [r for r in caplog.records if "deleted before it was read" in r.getMessage()]
    assert not false_alarms, false_alarms[0].getMessage()


def test_two_once_runs_inside_a_trace_store_each_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--once`` ends while a trace is open (shipped as it is, its cut kept); the service
    writes more frames and a line; the next ``--once`` run ships them: each line once."""
    fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    n = [0]
    first = [
        ("stdout", "boot"),
        ("stdout", "java.lang.IllegalStateException: boom"),
        ("stdout", "\tat com.example.A.run(A.java:1)"),
    ]
    later = [("stdout", "\tat com.example.B.run(B.java:2)"), ("stdout", "after")]
    sent: list[tuple[str, int, str]] = []
    for lines in (first, later):
        _docker(path, lines, n)
        reg = Registry(state)
        t = Tailer(spec_for(path), reg, "h", 65536, multiline="java", once=True)
        for _ in range(5):
            for c in _read_all(t):
                _ack(t, c)
                sent += _sent([c])
        assert t.finished()
        reg.save()
        t.close()
        reg.close()
    got = _lines(aggregator_keeps(sent))
    assert sorted(got) == sorted(text for _, text in first + later), got
