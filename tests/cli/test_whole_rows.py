"""Ctrl-C while a streamed result is written ends the output with a whole row (cli.whole_rows).

A sweep of ``logq --engine athena sql ... -f csv|json|markdown`` with a SIGINT raised at chosen
moments (a sitecustomize hook) left the output cut inside a row: half a CSV quoted field, a
JSON object without its ``}``, a Markdown or table row without its closing bar; a SIGINT while the
next batch was fetched left JSON's last row without its line break. Here the same moments in
process: a real SIGINT raised halfway through a write, or while the next batch is fetched."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sys
from collections.abc import Iterator

import pytest

from cli.output import WRITE_CHUNK, OutputFormat, emit

COLUMNS = ["path", "message", "n"]
ROWS = [(f"/p/{i}", f'line "{i}"\nsecond, with a comma', i) for i in range(2_000)]


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
