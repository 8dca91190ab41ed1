"""``--multiline``: stack traces joined into one record each (shipper/multiline.py).

Parser-level tests feed Docker json-file lines to :class:`MultilineParser` directly; tailer-level
tests drive a :class:`~shipper.tailer.Tailer` on real files with the tailer's fake clock
(:func:`~tests.shipper.tailing.fresh_process`), so timeouts pass without sleeping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.formats import CriParser, DockerParser
from shipper.lines import Lines
from shipper.multiline import BUILTIN, MAX_RECORD_LINES, MULTILINE_FLUSH_SECONDS, MultilineParser
from shipper.split_lines import SPLIT_FLUSH_SECONDS
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line
from tests.shipper.tailing import (
    aggregator_keeps,
    commit,
    drain,
    drain_sent,
    fresh_process,
    spec_for,
)

JAVA = [
    "java.lang.IllegalStateException: recipe 42 has no steps",
    "\tat com.example.recipe.RecipeService.load(RecipeService.java:88)",
    "\tat com.example.recipe.RecipeController.get(RecipeController.java:31)",
    "\tat java.base/java.lang.Thread.run(Thread.java:833)",
    "Caused by: java.sql.SQLTransientConnectionException: pool - Connection is not available",
    "\tat com.zaxxer.hikari.pool.HikariPool.createTimeoutException(HikariPool.java:696)",
    "\tat com.zaxxer.hikari.pool.HikariPool.getConnection(HikariPool.java:181)",
    "\t... 12 more",
]
PYTHON = [
    "Traceback (most recent call last):",
    '  File "/app/recipe/views.py", line 41, in get',
    "    return store[recipe_id]",
    "           ~~~~~^^^^^^^^^^^",
    "KeyError: '42'",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "/app/recipe/views.py", line 43, in get',
    "    raise NotFound(recipe_id)",
    "recipe.errors.NotFound: 42",
]
GO = [
    "panic: runtime error: index out of range [5] with length 3",
    "",
    "goroutine 1 [running]:",
    "main.pick(...)",
    "\t/app/main.go:12",
    "main.main()",
    "\t/app/main.go:8 +0x1d",
    "",
    "goroutine 18 [chan receive]:",
    "main.worker(0xc000012345)",
    "\t/app/worker.go:20 +0x45",
    "created by main.main in goroutine 1",
    "\t/app/main.go:6 +0x3c",
]


def docker(texts: list[str], stream: str = "stdout", first: int = 0) -> list[bytes]:
    """Docker json-file lines (without their newline, as a cursor hands them to a parser)."""
    return [docker_line(t, first + i, stream)[:-1] for i, t in enumerate(texts)]


def grouped(name: str, raw: list[bytes], inner: type = DockerParser) -> tuple[Lines, object]:
    parser = MultilineParser(inner(), BUILTIN[name])
    parser.origin = "file"
    return parser.feed(raw, 0), parser


def texts(parser: MultilineParser, out: Lines) -> list[str]:
    """Every record: those fed out, then the open ones flushed as the end of a source would."""
    return out.logs + parser.flush("file", 10**9, every=True).logs


@pytest.mark.parametrize(
    ("name", "trace"), [("java", JAVA), ("python", PYTHON), ("go", GO)], ids=["java", "py", "go"]
)
def test_a_trace_is_one_record_and_the_lines_around_it_stay_apart(
    name: str, trace: list[str]
) -> None:
    lines = ["12:00:00 INFO loading recipe 42", *trace, "12:00:01 INFO next request"]
    out, parser = grouped(name, docker(lines))
    assert texts(parser, out) == [lines[0], "\n".join(trace), lines[-1]]
    assert out.multiline_joined == 1


def test_two_traces_in_a_row_are_two_records() -> None:
    second = ["java.lang.NullPointerException", "\tat com.example.A.b(A.java:1)"]
    out, parser = grouped("java", docker([*JAVA, *second, "done"]))
    assert texts(parser, out) == ["\n".join(JAVA), "\n".join(second), "done"]


def test_each_line_of_a_trace_is_in_exactly_one_record_whatever_the_mix() -> None:
    lines = ["a", *PYTHON, "b", "c", *PYTHON[:5], *PYTHON[:3], "d"]
    out, parser = grouped("python", docker(lines))
    records = texts(parser, out)
    assert "\n".join(records) == "\n".join(lines)
    traces = ["\n".join(PYTHON), "\n".join(PYTHON[:5]), "\n".join(PYTHON[:3])]
    assert records == ["a", traces[0], "b", "c", traces[1], traces[2], "d"]


def test_stdout_and_stderr_are_grouped_apart() -> None:
    """A trace on stderr with log lines on stdout between its lines: the trace is one record,
    the stdout lines stay separate, and no record's offset repeats or goes down."""
    raw: list[bytes] = []
    for i, frame in enumerate(JAVA):
        raw += docker([frame], "stderr", 2 * i)
        raw += docker([f"GET /recipes/{i} 200"], "stdout", 2 * i + 1)
    raw += docker(["12:00:02 WARN slow"], "stderr", 99)
    out, parser = grouped("java", raw)
    flushed = parser.flush("file", 10**9, every=True)
    pairs = list(zip(out.logs + flushed.logs, out.streams + flushed.streams, strict=True))
    by_stream = {s: [log for log, st in pairs if st == s] for s in ("stdout", "stderr")}
    assert by_stream["stderr"] == ["\n".join(JAVA), "12:00:02 WARN slow"]
    assert by_stream["stdout"] == [f"GET /recipes/{i} 200" for i in range(len(JAVA))]
    offsets = out.offsets + flushed.offsets
    assert offsets == sorted(set(offsets))


def test_a_line_split_by_the_runtime_is_joined_before_grouping() -> None:
    """CRI ``P`` parts are joined into one logical line first, then grouped."""
    ts = "2026-11-28T12:00:00.000000001Z"
    raw = [
        f"{ts} stderr F {JAVA[0]}".encode(),
        f"{ts} stderr P \tat com.example.Long".encode(),
        f"{ts} stderr F .frame(Long.java:1)".encode(),
        f"{ts} stderr F \t... 3 more".encode(),
    ]
    out, parser = grouped("java", raw, CriParser)
    assert texts(parser, out) == [
        f"{JAVA[0]}\n\tat com.example.Long.frame(Long.java:1)\n\t... 3 more"
    ]


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ("\tat com.example.Cut", ["\n".join([*JAVA[:2], "\tat com.example.Cut"])]),
        ("12:00:09 INFO unrelated", ["\n".join(JAVA[:2]), "12:00:09 INFO unrelated"]),
    ],
    ids=["continues", "unrelated"],
)
def test_a_flush_ships_the_record_with_a_split_line_cut_at_the_same_time(
    part: str, expected: list[str]
) -> None:
    """The runtime's last part of a line never came: the parts go out as they are (5 s), and
    with them the record that line would have continued, in the same flush."""
    ts = "2026-11-28T12:00:00.000000001Z"
    raw = [f"{ts} stderr F {JAVA[0]}".encode(), f"{ts} stderr F {JAVA[1]}".encode()]
    raw.append(f"{ts} stderr P {part}".encode())
    out, parser = grouped("java", raw, CriParser)
    assert out.logs == []
    flushed = parser.flush("file", 1000, every=True)
    assert flushed.logs == expected
    assert flushed.offsets == list(range(1000, 1000 + len(expected)))
    assert parser.pending_origins() == set()


def test_a_record_is_cut_at_the_line_cap_and_counted() -> None:
    frames = [f"\tat com.example.Deep.call{i}(Deep.java:{i})" for i in range(MAX_RECORD_LINES + 5)]
    out, parser = grouped("java", docker([JAVA[0], *frames, "after"]))
    records = texts(parser, out)
    assert len(records[0].split("\n")) == MAX_RECORD_LINES
    assert records[1].split("\n") == frames[MAX_RECORD_LINES - 1 :]  # goes on, as frames
    assert records[2] == "after"
    assert out.multiline_cut == 1


def test_a_record_is_cut_at_max_line_bytes() -> None:
    parser = MultilineParser(DockerParser(max_line_bytes=4096), BUILTIN["java"])
    parser.origin = "file"
    # Not ASCII: the cap counts UTF-8 bytes, so nothing is truncated, every line is kept.
    frames = [f"\tat com.example.Wide.appel{i}({'é' * 100}.java:{i})" for i in range(60)]
    out = parser.feed(docker([JAVA[0], *frames]), 0)
    records = out.logs + parser.flush("file", 10**9, every=True).logs
    assert all(len(r.encode()) <= 4096 for r in records)
    assert "\n".join(records) == "\n".join([JAVA[0], *frames])
    assert out.multiline_cut >= 1 and out.truncated == 0


def test_off_by_default_one_record_per_line(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    path.write_bytes(b"".join(docker_line(t, i) for i, t in enumerate(JAVA)))
    t = Tailer(spec_for(path), Registry(tmp_path / "state"), "h", 65536)
    assert drain(t) == JAVA


# -- in the tailer: flush timeout, rotation, restarts ------------------------------------------


def ml_tailer(path: Path, state: Path, name: str = "java") -> tuple[Tailer, Registry]:
    reg = Registry(state)
    return Tailer(spec_for(path), reg, "h", 65536, multiline=name), reg


def append(path: Path, texts: list[str], first: int, stream: str = "stdout") -> None:
    with open(path, "ab") as f:
        f.write(b"".join(docker_line(t, first + i, stream) for i, t in enumerate(texts)))


def test_an_open_trace_is_shipped_after_the_flush_timeout_not_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["started", *JAVA], 0)
    t, reg = ml_tailer(path, tmp_path / "state")
    assert drain(t) == ["started"]  # the trace may go on: held
    now[0] += MULTILINE_FLUSH_SECONDS - 0.1
    assert drain(t) == []
    now[0] += 0.2
    assert drain(t) == ["\n".join(JAVA)]
    append(path, ["\tat late.Frame.x(X.java:1)"], 50)  # after the flush: a record of its own
    now[0] += MULTILINE_FLUSH_SECONDS + 0.1
    assert drain(t) == ["\tat late.Frame.x(X.java:1)"]
    reg.close()


def test_a_trace_split_by_a_rotation_is_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["before", *JAVA[:4]], 0)
    t, reg = ml_tailer(path, tmp_path / "state")
    assert drain(t) == ["before"]
    os.rename(path, f"{path}.1")  # Docker's max-size rotation in the middle of the trace
    append(path, [*JAVA[4:], "after"], 10)
    # the line that ends the trace is shipped with it, at once (it waits for nothing)
    assert drain(t) == ["\n".join(JAVA), "after"]
    assert len(reg.items()) == 1  # the rotated file is let go once the trace is acked
    reg.close()


def test_a_rotation_after_a_trace_with_nothing_next_ships_it_after_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, JAVA, 0)
    t, reg = ml_tailer(path, tmp_path / "state")
    assert drain(t) == []
    os.rename(path, f"{path}.1")
    path.write_bytes(b"")
    assert drain(t) == []
    now[0] += max(SPLIT_FLUSH_SECONDS, MULTILINE_FLUSH_SECONDS) + 1
    assert drain(t) == ["\n".join(JAVA)]
    reg.close()


def _columns(lines: Lines) -> tuple[list[str], list[int]]:
    return lines.logs, lines.offsets


def _mixed() -> list[tuple[str, str]]:
    """(stream, text): traces of both streams interleaved with plain lines and each other."""
    out: list[tuple[str, str]] = [("stdout", "boot")]
    for i, frame in enumerate(JAVA):
        out.append(("stderr", frame))
        if i % 3 == 0:
            out.append(("stdout", f"GET /r/{i} 200"))
    out += [("stdout", JAVA[0]), ("stderr", "12:00:03 WARN retry")]
    out += [("stdout", f) for f in JAVA[1:4]]
    out += [("stderr", JAVA[0]), ("stdout", "12:00:04 INFO ok"), ("stderr", JAVA[1])]
    out += [("stdout", "12:00:05 INFO bye"), ("stderr", "12:00:06 INFO bye")]
    return out


def _write_mixed(path: Path, split: bool) -> None:
    """:func:`_mixed` as Docker lines; with ``split``, every fifth one in two runtime parts
    (as Docker writes a line over 16 KiB), which the format parser joins before grouping."""
    with open(path, "ab") as f:
        for i, (stream, text) in enumerate(_mixed()):
            if split and i % 5 == 2:
                f.write(docker_line(text[:9], i, stream, nl=False))
                text = text[9:]
            f.write(docker_line(text, i, stream))


def _reference(tmp_path: Path, now: list[float], split: bool) -> list[str]:
    path = tmp_path / "ref" / "c-json.log"
    path.parent.mkdir()
    _write_mixed(path, split)
    t, reg = ml_tailer(path, tmp_path / "ref-state")
    out = drain(t)
    now[0] += MULTILINE_FLUSH_SECONDS + 1
    out += drain(t)
    reg.close()
    return out


@pytest.mark.parametrize("split", [False, True], ids=["whole", "runtime-split"])
@pytest.mark.parametrize("lost_acks", [0, 1, 2])
def test_a_restart_at_any_point_loses_and_duplicates_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost_acks: int, split: bool
) -> None:
    """Kill after each chunk in turn (the last ``lost_acks`` chunks stored by the aggregator
    but their acks lost), restart from what was on disk: the aggregator ends up with every
    record of an uninterrupted run, once, in order."""
    now = fresh_process(monkeypatch)
    expected = _reference(tmp_path, now, split)
    assert sum(r.count("\n") + 1 for r in expected) == len(_mixed())
    chunks_total = None
    stop = 1
    while chunks_total is None or stop <= chunks_total:
        run = tmp_path / f"run{stop}"
        run.mkdir()
        path = run / "c-json.log"
        _write_mixed(path, split)
        t, reg = ml_tailer(path, run / "state")
        sent: list[tuple[str, int, str]] = []
        read: list = []
        while len(read) < stop and ((chunk := t.read(max_lines=2)) is not None or t.poll()):
            if chunk is not None:
                read.append(chunk)
        if len(read) < stop:  # everything read: the flush timeout ends the run's records
            now[0] += MULTILINE_FLUSH_SECONDS + 1
            while (chunk := t.read(max_lines=2)) is not None or t.poll():
                if chunk is not None:
                    read.append(chunk)
            chunks_total = len(read)
        acked = len(read) - lost_acks
        for n, chunk in enumerate(read):
            sid = chunk.cursor.source_id
            sent += [(log, off, sid) for log, off in zip(*_columns(chunk.lines), strict=True)]
            if n < acked:
                commit(t, chunk)
        reg.save()  # what a kill -9 leaves: the checkpoints of the acked chunks
        t.close()
        reg.close()
        t, reg = ml_tailer(path, run / "state")
        sent += drain_sent(t)
        now[0] += MULTILINE_FLUSH_SECONDS + 1
        sent += drain_sent(t)
        reg.close()
        assert aggregator_keeps(sent) == expected, f"killed after chunk {stop}"
        stop += 1


def test_a_restart_inside_a_trace_split_by_a_rotation_reads_it_whole_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    append(path, ["before", *JAVA[:3]], 0)
    t, reg = ml_tailer(path, state)
    sent = drain_sent(t)
    os.rename(path, f"{path}.1")
    append(path, [*JAVA[3:], "after"], 10)
    while (chunk := t.read()) is None:  # the record is completed here, its ack lost
        assert t.poll()
    assert chunk is not None and chunk.lines.logs == ["\n".join(JAVA), "after"]
    sid = chunk.cursor.source_id
    sent += [(log, off, sid) for log, off in zip(*_columns(chunk.lines), strict=True)]
    reg.save()
    t.close()
    reg.close()
    t, reg = ml_tailer(path, state)
    sent += drain_sent(t)
    reg.close()
    assert aggregator_keeps(sent) == ["before", "\n".join(JAVA), "after"]


def test_a_trace_split_by_a_copytruncate_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain log file (``--path``) that logrotate rotates with ``copytruncate`` in the middle
    of a traceback, its first lines not read yet: the copy is finished and the trace goes on in
    the emptied file. A crash before the trace is complete: the copy's checkpoint was kept at
    the trace's start, so the next run ships the trace whole, once."""
    import shutil

    now = fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    state = tmp_path / "state"

    def write(lines: list[str]) -> None:
        with open(path, "a") as f:
            f.write("".join(f"{line}\n" for line in lines))

    write(["started", *PYTHON[:3]])
    reg = Registry(state)
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, multiline="python")
    sent = drain_sent(t)
    write(PYTHON[3:6])  # not read before the rotation: the copy holds them
    shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)
    write(PYTHON[6:9])  # the trace goes on, not complete yet
    sent += drain_sent(t)
    assert [log for log, _, _ in sent] == ["started"]
    reg.save()  # kill -9 here
    t.close()
    reg.close()
    write([*PYTHON[9:], "done"])
    reg = Registry(state)
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, multiline="python")
    sent += drain_sent(t)
    now[0] += MULTILINE_FLUSH_SECONDS + 1
    sent += drain_sent(t)
    reg.close()
    assert aggregator_keeps(sent) == ["started", "\n".join(PYTHON), "done"]
