"""Ctrl-C while a streamed result is written ends the output with a whole row (cli.whole_rows).

A sweep of ``logq --engine athena sql ... -f csv|json|markdown`` with a SIGINT raised at chosen
moments (a sitecustomize hook) left the output cut inside a row: half a CSV quoted field, a
JSON object without its ``}``, a Markdown or table row without its closing bar; a SIGINT while the
next batch was fetched left JSON's last row without its line break. Here the same moments in
process: a real SIGINT raised halfway through a write, or while the next batch is fetched."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from athena.timerange import iso_utc
from cli.output import WRITE_CHUNK, OutputFormat, emit, visible
from shipper.startup import redeliver_dropped_interrupts

COLUMNS = ["path", "message", "n"]
ROWS = [(f"/p/{i}", f'line "{i}"\nsecond, with a comma', i) for i in range(2_000)]


@pytest.fixture(autouse=True)
def _dropped_ctrl_c_sent_again() -> None:
    """What logq's ``main()`` does first (cli/launch.py): a Ctrl-C whose KeyboardInterrupt
    lands in a gc callback is dropped as "unraisable", and is sent again. Hypothesis installs
    such a callback in any process that ran one of its tests: without this, a test's one
    Ctrl-C was dropped there now and then, and its hang detector sent the second. (conftest's
    ``_unraisable_hook_restored`` puts pytest's hook back.)"""
    redeliver_dropped_interrupts()


class CutWrite(io.StringIO):
    """A stream whose ``cut``-th write gets a SIGINT halfway (a Ctrl-C landing in it)."""

    def __init__(self, cut: int) -> None:
        super().__init__()
        self.cut, self.writes = cut, 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes != self.cut:
            return super().write(text)
        half = len(text) // 2
        super().write(text[:half])
        signal.raise_signal(signal.SIGINT)  # without the fix: KeyboardInterrupt here
        return half + super().write(text[half:])


@pytest.fixture(autouse=True)
def _usual_sigint() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    "fmt", [OutputFormat.csv, OutputFormat.markdown, OutputFormat.json, OutputFormat.table]
)
def test_ctrl_c_inside_a_write_ends_with_the_whole_row(fmt: OutputFormat) -> None:
    out = CutWrite(cut=3)
    with pytest.raises(KeyboardInterrupt):
        emit(fmt, COLUMNS, ROWS[:1], out=out, more=[ROWS[1:]])
    text = out.getvalue()
    assert WRITE_CHUNK < len(text) < WRITE_CHUNK * 4  # stopped soon after the cut
    assert text.endswith("\n")
    if fmt is OutputFormat.csv:
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows[0] == COLUMNS
        assert [(r[0], r[1], int(r[2])) for r in rows[1:]] == ROWS[: len(rows) - 1]
    elif fmt is OutputFormat.json:
        last = text.rstrip(",\n").rsplit("\n  ", 1)[-1]
        n = json.loads(last)["n"]
        assert json.loads(text.rstrip(",\n") + "\n]") == [
            dict(zip(COLUMNS, r, strict=True)) for r in ROWS[: n + 1]
        ]
    elif fmt is OutputFormat.markdown:
        last = text.splitlines()[-1]
        assert last.startswith("| /p/") and last.endswith(" |")
    else:  # Rich's table, written whole in one call of ChunkedFile.write
        last = text.splitlines()[-1]
        assert last.startswith("│ /p/") and last.endswith(" │")


def test_ctrl_c_while_the_next_batch_is_fetched_ends_the_json_line() -> None:
    def more() -> Iterator[list[tuple]]:
        yield ROWS[1:10]
        raise KeyboardInterrupt  # the Ctrl-C lands in GetQueryResults

    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        emit(OutputFormat.json, COLUMNS, ROWS[:1], out=out, more=more())
    text = out.getvalue()
    assert text.endswith('"n": 9}\n')
    assert json.loads(text + "]") == [dict(zip(COLUMNS, r, strict=True)) for r in ROWS[:10]]


class PausedReader(io.TextIOWrapper):
    """Stdout into a pipe whose reader does not read (a paused ``less``): the first write gets a
    Ctrl-C halfway (held while the piece goes out), then ``second`` says where the second
    Ctrl-C lands: ``"write"`` in that same write, ``"flush"`` in every flush (each one waits on
    the reader until a Ctrl-C stops it)."""

    def __init__(self, fd: int, second: str) -> None:
        super().__init__(io.BufferedWriter(io.FileIO(fd, "w")), encoding="utf-8")
        self.second, self.writes = second, 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes != 1:
            return super().write(text)
        half = len(text) // 2
        super().write(text[:half])
        signal.raise_signal(signal.SIGINT)  # held: the piece is written on
        if self.second == "write":
            signal.raise_signal(signal.SIGINT)  # the second one stops the write at once
        return half + super().write(text[half:])

    def flush(self) -> None:
        if self.second == "flush":
            raise KeyboardInterrupt  # the second Ctrl-C, while the flush waits on the reader
        super().flush()


@pytest.mark.parametrize("second", ["write", "flush"])
def test_a_second_ctrl_c_leaves_no_flush_to_wait_on_the_reader(
    second: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the second Ctrl-C stdout points at /dev/null: what is still buffered cannot make
    the flushes after it (emit's, the interpreter's at exit) wait on the paused reader again."""
    read_end, write_end = os.pipe()
    stdout = PausedReader(write_end, second)
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        with pytest.raises(KeyboardInterrupt):
            emit(OutputFormat.csv, COLUMNS, ROWS[:300])  # 14 KB: fits in the pipe
        assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
    finally:
        stdout.second = ""
        stdout.close()
        os.close(read_end)


class _Valve:
    """A second Ctrl-C sent to the main thread if the code under test still runs after
    ``seconds`` (a hang detector: what the test asserts is that it was not needed)."""

    def __init__(self, seconds: float) -> None:
        self.opened = False
        self._done = threading.Event()
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)

    def _run(self, seconds: float) -> None:
        if not self._done.wait(seconds):
            self.opened = True
            signal.pthread_kill(self._main, signal.SIGINT)

    def __enter__(self) -> _Valve:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def _full_pipe() -> tuple[int, int]:
    """A pipe whose reader does not read (a paused ``less``), already full: any write of
    stdout's to it blocks."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    return read_end, write_end


# pytest-timeout's "signal" method takes SIGALRM, which logq's bound uses (it leaves another
# handler's SIGALRM alone): these tests time out by a thread instead.
@pytest.mark.timeout(60, method="thread")
def test_one_ctrl_c_ends_a_write_blocked_on_a_paused_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The held Ctrl-C waits for the piece to go out only GIVE_UP_SECONDS: into a pager that
    does not read, logq waited until a second Ctrl-C (or until the pager was quit)."""
    read_end, write_end = _full_pipe()
    stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(write_end, "w")), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    main = threading.main_thread().ident

    def ctrl_c_once_blocked() -> None:
        time.sleep(0.3)  # emit is blocked in its first write by then: the pipe is full
        signal.pthread_kill(main, signal.SIGINT)

    first = threading.Thread(target=ctrl_c_once_blocked, daemon=True)
    try:
        with _Valve(15) as valve, pytest.raises(KeyboardInterrupt):
            first.start()
            emit(OutputFormat.csv, COLUMNS, ROWS)
        first.join()
        assert not valve.opened, "one Ctrl-C did not end a write blocked on the reader"
        assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))  # given up on
    finally:
        stdout.close()
        os.close(read_end)


@pytest.mark.timeout(60, method="thread")
def test_one_ctrl_c_ends_the_last_flush_into_a_paused_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C while the next batch is fetched: the rows written so far are flushed (with the
    line break of the last one) for GIVE_UP_SECONDS at most, not until the reader reads."""
    read_end, write_end = _full_pipe()
    buffered = io.BufferedWriter(io.FileIO(write_end, "w"), buffer_size=1 << 20)
    stdout = io.TextIOWrapper(buffered, encoding="utf-8")  # the rows fit in its buffers
    monkeypatch.setattr(sys, "stdout", stdout)

    def more() -> Iterator[list[tuple]]:
        yield ROWS[1:10]
        raise KeyboardInterrupt  # the Ctrl-C lands in GetQueryResults

    try:
        with _Valve(15) as valve, pytest.raises(KeyboardInterrupt):
            emit(OutputFormat.json, COLUMNS, ROWS[:1], more=more())
        assert not valve.opened, "one Ctrl-C did not end a flush blocked on the reader"
        assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
    finally:
        stdout.close()
        os.close(read_end)


LOG_ROWS = [
    (
        datetime(2026, 11, 30, 22, 0, 0, i * 1000, tzinfo=UTC),
        "catalog",
        f"catalog-{i % 3}",
        "stderr" if i % 2 else "stdout",
        f'panic "{i}": a line, with a comma\nand a second line',
    )
    for i in range(400)
]


@pytest.mark.parametrize("fmt", [OutputFormat.csv, OutputFormat.json, OutputFormat.table])
def test_ctrl_c_while_tail_follow_writes_ends_with_the_whole_row(
    fmt: OutputFormat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``logq tail -F`` printed its lines with plain writes: a Ctrl-C (how a follow stops)
    inside one cut the row there; half a CSV quoted field made a reader take the rest of the
    file into it. Here the SIGINT lands halfway through the first write of a poll's lines."""
    from types import SimpleNamespace

    from cli.commands.logs import _print_log_lines
    from cli.follow import DISPLAY_COLUMNS, _Rows

    out = CutWrite(cut=1)
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(KeyboardInterrupt):
        _print_log_lines(
            SimpleNamespace(fmt=fmt), _Rows(DISPLAY_COLUMNS), None, LOG_ROWS, stream=True
        )
    text = out.getvalue()
    assert text.endswith("\n")
    if fmt is OutputFormat.csv:
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows[0] == DISPLAY_COLUMNS
        assert rows[1:] == [[iso_utc(r[0]), *r[1:]] for r in LOG_ROWS[: len(rows) - 1]]
    elif fmt is OutputFormat.json:
        lines = text.splitlines()
        assert [json.loads(line)["message"] for line in lines] == [
            r[4] for r in LOG_ROWS[: len(lines)]
        ]
    else:
        lines = text.splitlines()
        assert lines and all(
            line.endswith("| " + visible(r[4]))
            for line, r in zip(lines, LOG_ROWS[: len(lines)], strict=True)
        )


def _print_tail_lines(fmt: OutputFormat) -> None:
    """One ``logq tail -F`` poll's lines printed (csv: the header too)."""
    from types import SimpleNamespace

    from cli.commands.logs import _print_log_lines
    from cli.follow import DISPLAY_COLUMNS, _Rows

    common = SimpleNamespace(fmt=fmt)
    _print_log_lines(common, _Rows(DISPLAY_COLUMNS), None, LOG_ROWS[:20], stream=True)


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda: _print_tail_lines(OutputFormat.csv), id="tail-follow"),
        pytest.param(lambda: emit(OutputFormat.table, COLUMNS, ROWS[:20]), id="table"),
    ],
)
def test_one_ctrl_c_ends_a_flush_of_whole_rows_into_a_paused_reader(
    write: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few rows fit in stdout's buffers and go out in the flush after their write (a
    ``tail -F`` poll's lines; Rich's flush after a table): into a pager that does not read,
    the flush waits. The Ctrl-C stopped it at once but left the rows buffered, and the
    interpreter's flush at exit waited on them again, deaf to any other Ctrl-C until the pager
    was quit. Now the flush is held GIVE_UP_SECONDS, then stdout is given up on."""
    read_end, write_end = _full_pipe()
    buffered = io.BufferedWriter(io.FileIO(write_end, "w"), buffer_size=1 << 20)
    stdout = io.TextIOWrapper(buffered, encoding="utf-8")  # the rows fit in its buffers
    monkeypatch.setattr(sys, "stdout", stdout)
    main = threading.main_thread().ident

    def ctrl_c_once_blocked() -> None:
        time.sleep(0.3)  # blocked in the flush by then: the pipe is full
        signal.pthread_kill(main, signal.SIGINT)

    first = threading.Thread(target=ctrl_c_once_blocked, daemon=True)
    try:
        with _Valve(15) as valve, pytest.raises(KeyboardInterrupt):
            first.start()
            write()
        first.join()
        assert not valve.opened, "one Ctrl-C did not end a flush blocked on the reader"
        # Given up on: the exit's flush of what is still buffered cannot wait on the reader.
        assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
    finally:
        os.close(read_end)  # first: a flush still waiting on it fails instead of hanging
        with contextlib.suppress(BrokenPipeError):
            stdout.close()
