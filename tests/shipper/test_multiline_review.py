"""Reviewer R1s18: failing tests that show defects of the --multiline patch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from tests.shipper.hostgen import docker_line
from tests.shipper.tailing import aggregator_keeps, commit, drain_sent, fresh_process
from tests.shipper.test_multiline import JAVA, append, ml_tailer


def test_checkpoint_advances_on_a_busy_stream_after_one_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One trace, then a steady service (a line every 0.5 s, one stream only): every line is
    shipped and acked, yet the checkpoint never passes the trace's start."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["boot", *JAVA], 0)
    t, reg = ml_tailer(path, tmp_path / "state")
    sent = drain_sent(t)
    for i in range(200):
        append(path, [f"12:00:{i:02d} INFO request {i}"], 100 + i)
        now[0] += 0.5
        sent += drain_sent(t)
    reg.save()
    ((_, state),) = reg.items()
    size = path.stat().st_size
    assert len(sent) >= 200
    # the checkpoint should be near the end of the file (one line behind at most)
    assert state.offset > size - 500, (state.offset, size)
    t.close()
    reg.close()


def test_a_restart_after_a_trace_split_by_a_rotation_loses_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trace straddles a rotation; two log lines follow it in the new file; every record
    shipped so far is acked; kill -9 before the 2 s timeout; restart: "L1" must arrive."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    append(path, ["before", *JAVA[:2]], 0)
    t, reg = ml_tailer(path, state)
    sent = drain_sent(t)
    os.rename(path, f"{path}.1")
    append(path, [*JAVA[2:4], "L0", "L1"], 10)
    sent += drain_sent(t)
    # H4s18: a line that ends a record is no longer held, so L1 is shipped at once too
    assert [log for log, _, _ in sent] == ["before", "\n".join(JAVA[:4]), "L0", "L1"]
    reg.save()  # kill -9
    t.close()
    reg.close()
    t, reg = ml_tailer(path, state)
    sent += drain_sent(t)
    now[0] += 10
    sent += drain_sent(t)
    reg.close()
    assert aggregator_keeps(sent) == ["before", "\n".join(JAVA[:4]), "L0", "L1"]


def _write(path: Path, stream: str, texts: list[str], n: list[int]) -> None:
    with open(path, "ab") as f:
        for text in texts:
            f.write(docker_line(text, n[0], stream))
            n[0] += 1


@pytest.mark.parametrize("traces", [10, 70])
def test_timeout_cuts_beyond_max_cuts_while_another_stream_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, traces: int
) -> None:
    """stdout logs a line every 0.5 s (its chain of held lines never times out, so no quiet
    point); stderr throws a trace now and then, each shipped at the 2 s timeout (a cut in the
    checkpoint each). The last batch's ack is lost; kill -9; restart. Each trace and each
    stdout line must be stored exactly once."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    n = [0]
    _write(path, "stdout", ["boot", *JAVA, "ready"], n)  # one trace on stdout at start-up
    t, reg = ml_tailer(path, state)
    sent = drain_sent(t)
    k = 0
    for i in range(traces):
        _write(path, "stderr", JAVA, n)
        for _ in range(9):
            _write(path, "stdout", [f"INFO request {k}"], n)
            k += 1
            now[0] += 0.5
            sent += drain_sent(t, ack=i < traces - 1)
    reg.save()  # kill -9; the last round's acks were lost (the aggregator stored them)
    t.close()
    reg.close()
    peek = Registry(state)
    print("checkpoint:", [(s.offset, len(s.cuts)) for _, s in peek.items()], path.stat().st_size)
    peek.close()
    t, reg = ml_tailer(path, state)
    before = len(sent)
    sent += drain_sent(t)
    now[0] += 10
    sent += drain_sent(t)
    reg.close()
    kept = aggregator_keeps(sent)
    print("after restart:", [(log[:20], off) for log, off, _ in sent[before:]])
    trace = "\n".join(JAVA)
    assert kept.count(trace) == traces + 1
    for j in range(k):
        assert kept.count(f"INFO request {j}") == 1, j


@pytest.mark.parametrize(
    "first",
    [JAVA, ["12:00:00 ERROR c.e.Db - java.sql.SQLException: timeout"]],
    ids=["a-trace", "one-error-line"],
)
def test_a_restart_after_a_plain_rotation_loses_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: list[str]
) -> None:
    """No trace straddles the rotation: one trace long before it, then a steady service
    (a line every 0.5 s). After the rotation two lines in the new file; all acked; kill -9
    before 2 s pass; restart: the last line must still arrive."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    append(path, ["boot", *first, "ready"], 0)
    t, reg = ml_tailer(path, state)
    sent = drain_sent(t)
    for i in range(5):
        append(path, [f"A {i}"], 20 + i)
        now[0] += 0.5
        sent += drain_sent(t)
    os.rename(path, f"{path}.1")
    append(path, ["B 0", "B 1"], 40)
    now[0] += 0.5
    sent += drain_sent(t)
    reg.save()  # kill -9
    t.close()
    reg.close()
    t, reg = ml_tailer(path, state)
    sent += drain_sent(t)
    now[0] += 10
    sent += drain_sent(t)
    reg.close()
    kept = aggregator_keeps(sent)
    assert kept[-3:] == ["A 4", "B 0", "B 1"], kept


def test_rotated_files_are_not_kept_alive_by_the_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 rotations of a quiet service: the parser must not keep a quiet point (and with it
    the Cursor object) for every file it ever read."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["boot"], 0)
    t, reg = ml_tailer(path, tmp_path / "state")
    drain_sent(t)
    for i in range(50):
        os.rename(path, f"{path}.1")
        append(path, [f"line {i}"], i + 1)
        now[0] += 10
        drain_sent(t)
    assert len(t.parser._span) <= 2, len(t.parser._span)  # H4s18: _quiet became _span
    reg.close()


def test_a_held_whole_line_is_not_reported_as_an_unfinished_split_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After one trace, a service writing a line every 3 s: the line after the trace is held
    and flushed at the 2 s timeout, logged as 'an unfinished split line ... 5 s'."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["boot", *JAVA, "ready"], 0)
    t, reg = ml_tailer(path, tmp_path / "state")
    saves = 0
    with caplog.at_level("INFO", logger="logq.shipper.tailer"):
        for i in range(10):
            append(path, [f"INFO tick {i}"], 20 + i)
            for _ in range(2):  # read the line, then 3 s later look again
                while (chunk := t.read()) is not None or t.poll():
                    if chunk is not None:
                        saves += chunk.save_first
                        commit(t, chunk)
                now[0] += 2.5 if _ == 0 else 0.5
    split_msgs = [r.getMessage() for r in caplog.records if "split line" in r.getMessage()]
    assert split_msgs == [], split_msgs  # no split line here: a whole log line, held
    reg.close()


PY_FROZEN_IMPORT = [
    "Traceback (most recent call last):",
    '  File "/app/main.py", line 3, in <module>',
    "    import recipe",
    '  File "<frozen importlib._bootstrap>", line 1176, in _find_and_load',
    '  File "<frozen importlib._bootstrap>", line 1147, in _find_and_load_unlocked',
    '  File "<frozen importlib._bootstrap>", line 690, in _load_unlocked',
    '  File "<frozen importlib._bootstrap_external>", line 940, in exec_module',
    '  File "<frozen importlib._bootstrap>", line 241, in _call_with_frames_removed',
    '  File "/app/recipe.py", line 1, in <module>',
    "    1/0",
    "    ~^~",
    "ZeroDivisionError: division by zero",
]
PY_RECURSION = [
    "Traceback (most recent call last):",
    '  File "/app/r.py", line 4, in <module>',
    "    f()",
    '  File "/app/r.py", line 2, in f',
    "    return f()",
    "           ^^^",
    "  [Previous line repeated 996 more times]",
    "RecursionError: maximum recursion depth exceeded",
]
PY_EXCEPTION_GROUP = [
    "  + Exception Group Traceback (most recent call last):",
    '  |   File "/app/tg.py", line 12, in main',
    "  |     async with asyncio.TaskGroup() as tg:",
    "  | ExceptionGroup: unhandled errors in a TaskGroup (2 sub-exceptions)",
    "  +-+---------------- 1 ----------------",
    "    | Traceback (most recent call last):",
    '    |   File "/app/tg.py", line 5, in fetch',
    '    |     raise ValueError("bad id")',
    "    | ValueError: bad id",
    "    +---------------- 2 ----------------",
    "    | Traceback (most recent call last):",
    '    |   File "/app/tg.py", line 7, in fetch',
    '    |     raise KeyError("k")',
    "    | KeyError: 'k'",
    "    +------------------------------------",
]
PY_BARE_EXCEPTION = [
    "Traceback (most recent call last):",
    '  File "/app/w.py", line 9, in run',
    "    raise Shutdown",
    "app.Shutdown",
]
GO_GENERIC = [
    "panic: boom",
    "",
    "goroutine 1 [running]:",
    "main.Map[...]({0xc000012090, 0x3, 0x3}, 0x4b8f40)",
    "\t/app/main.go:12 +0x1d",
    "main.main()",
    "\t/app/main.go:20 +0x45",
]
GO_REPANIC = [
    "panic: first [recovered]",
    "\tpanic: second",
    "",
    "goroutine 1 [running]:",
    "main.main.func1()",
    "\t/app/main.go:7 +0x5d",
    "main.main()",
    "\t/app/main.go:10 +0x45",
]


@pytest.mark.parametrize(
    ("name", "trace"),
    [
        ("python", PY_FROZEN_IMPORT),
        ("python", PY_RECURSION),
        ("python", PY_EXCEPTION_GROUP),
        ("python", PY_BARE_EXCEPTION),
        ("go", GO_GENERIC),
        ("go", GO_REPANIC),
    ],
    ids=[
        "py-frozen-frames",
        "py-recursion",
        "py-exception-group",
        "py-bare-exc",
        "go-generic",
        "go-repanic",
    ],
)
def test_real_traces_are_one_record(name: str, trace: list[str]) -> None:
    from tests.shipper.test_multiline import docker, grouped, texts

    lines = ["12:00:00 INFO start", *trace, "12:00:01 INFO next"]
    out, parser = grouped(name, docker(lines))
    assert texts(parser, out) == [lines[0], "\n".join(trace), lines[-1]]
