"""M2s23: an empty physical line in a CRI or Docker file (damaged or hand-written: the runtime
never writes one) under ``--multiline``. It is shipped raw (malformed); it used to end its
stream's record, which then took the offset just below it: the end of the line before it,
already taken by another stream's line, so the aggregator dropped the record without a count
(z1 fuzzing, /work/notes/z1-report.md "Not fixed" 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.formats import CriParser, DockerParser, PlainParser
from shipper.multiline import BUILTIN, MultilineParser
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line, docker_line
from tests.shipper.tailing import aggregator_keeps, fresh_process, spec_for
from tests.shipper.test_multiline_restarts import _finish, _Run

TB = "Traceback (most recent call last):"
FRAME = '  File "app.py", line 3, in main'
CODE = "    run()"
ERR = "ValueError: bad"


def test_cri_an_empty_line_after_another_streams_line_gives_no_offset_twice() -> None:
    p = MultilineParser(CriParser(), BUILTIN["python"])
    p.origin = "f1"
    a = b"2024-01-02T03:04:05Z stdout F " + TB.encode()
    first = p.feed([a], 0)
    out = p.feed([b"2024-01-02T03:04:05Z stderr F xx", b""], len(a) + 1)
    offsets = [*first.offsets, *out.offsets]
    assert offsets == sorted(set(offsets)), list(zip(out.offsets, out.logs, strict=True))
    assert (out.logs, out.malformed) == (["xx", ""], 1)  # the empty line: raw, counted
    rest = b"2024-01-02T03:04:05Z stdout F " + FRAME.encode()
    later = p.feed([rest], 100)
    flushed = p.flush("f1", 100 + len(rest) + 1, every=True)
    assert later.logs == [] and flushed.logs == [f"{TB}\n{FRAME}"]  # the record stayed open
    assert flushed.offsets[0] > out.offsets[-1]


def test_docker_an_empty_line_neither_continues_nor_ends_a_record() -> None:
    p = MultilineParser(DockerParser(), BUILTIN["python"])
    p.origin = "f1"
    lines = [
        docker_line(TB).rstrip(b"\n"),
        docker_line("xx", stream="stderr").rstrip(b"\n"),
        b"",
        docker_line(FRAME).rstrip(b"\n"),
        docker_line(CODE).rstrip(b"\n"),
        docker_line(ERR).rstrip(b"\n"),
        docker_line("next").rstrip(b"\n"),
    ]
    out = p.feed(lines, 0)
    assert out.logs == ["xx", "", "\n".join([TB, FRAME, CODE, ERR]), "next"]
    assert out.offsets == sorted(set(out.offsets))
    # A plain file's empty line is text (a chained traceback's blank line): unchanged.
    plain = MultilineParser(PlainParser(), BUILTIN["python"])
    plain.origin = "f1"
    text = [TB, FRAME, CODE, ERR, "", "next"]
    assert plain.feed([t.encode() for t in text], 0).logs == ["\n".join(text[:5]), "next"]


def _tailer(path: Path, state: Path) -> tuple[Tailer, Registry]:
    reg = Registry(state)
    return Tailer(spec_for(path, "cri"), reg, "h", 65536, multiline="python"), reg


_SCRIPT: list[tuple[str, str]] = [
    ("stdout", "boot"),
    ("stdout", TB),
    ("stderr", "xx"),
    ("empty", ""),
    ("stdout", FRAME),
    ("stdout", CODE),
    ("stdout", ERR),
    ("stderr", "yy"),
    ("empty", ""),
    ("stdout", "after"),
]


def _play(path: Path, run: _Run, start: int = 0) -> int | None:
    """Write the script from step ``start``, draining after each; the step the run was
    killed in, or None."""
    for i in range(start, len(_SCRIPT)):
        stream, text = _SCRIPT[i]
        with open(path, "ab") as f:
            f.write(b"\n" if stream == "empty" else cri_line(text, i, stream))
        if not run.drain() or run.event():
            return i
    return None


@pytest.mark.parametrize("lost_acks", [0, 2])
def test_cri_empty_lines_across_a_kill_at_any_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost_acks: int
) -> None:
    """Uninterrupted, the traceback is one record and no record is dropped by offset; killed
    (kill -9, the last acks lost) at any point and restarted, the aggregator keeps exactly
    the same records."""
    now = fresh_process(monkeypatch)
    (tmp_path / "ref").mkdir()
    t, reg = _tailer(tmp_path / "ref" / "c.log", tmp_path / "ref" / "state")
    ref = _Run(t, reg, 0, None)
    assert _play(tmp_path / "ref" / "c.log", ref) is None
    _finish(ref, now)
    expected = aggregator_keeps(ref.sent)
    # the record may take a chained traceback's blank line: it ends at "after"
    assert expected == ["boot", "xx", "", "yy", "", "\n".join([TB, FRAME, CODE, ERR]), "after"]
    for stop in range(1, ref.events + 1):
        root = tmp_path / f"run{stop}"
        root.mkdir()
        path = root / "c.log"
        t, reg = _tailer(path, root / "state")
        first = _Run(t, reg, lost_acks, stop)
        at = _play(path, first)
        reg.save()  # kill -9
        t.close()
        reg.close()
        t, reg = _tailer(path, root / "state")
        second = _Run(t, reg, 0, None)
        second.drain()
        if at is not None:
            _play(path, second, at + 1)
        _finish(second, now)
        kept = aggregator_keeps(first.sent + second.sent)
        assert kept == expected, f"killed at {stop} of {ref.events} (step {at})"


@pytest.mark.parametrize("fmt", ["cri", "docker"])
def test_an_empty_line_in_a_block_with_a_split_line_is_kept_apart_too(fmt: str) -> None:
    """A block holding a split line's parts is fed one physical line at a time
    (``MultilineParser._feed_each``): the empty line there also leaves the record open."""
    if fmt == "cri":
        p = MultilineParser(CriParser(), BUILTIN["python"])
        first = cri_line(TB, 0).rstrip(b"\n")
        part, rest, other = (
            cri_line("a", 1, "stderr", "P"),
            cri_line("b", 2, "stderr"),
            cri_line("xx", 3, "stderr"),
        )
    else:
        p = MultilineParser(DockerParser(), BUILTIN["python"])
        first = docker_line(TB).rstrip(b"\n")
        part, rest, other = (
            docker_line("a", 1, "stderr", nl=False),
            docker_line("b", 2, "stderr"),
            docker_line("xx", 3, "stderr"),
        )
    p.origin = "f1"
    opened = p.feed([first], 0)
    block = [part.rstrip(b"\n"), rest.rstrip(b"\n"), other.rstrip(b"\n"), b""]
    out = p.feed(block, len(first) + 1)
    assert opened.logs == [] and (out.logs, out.malformed) == (["ab", "xx", ""], 1)
    assert out.offsets == sorted(set(out.offsets))
    frame = (cri_line if fmt == "cri" else docker_line)(FRAME, 4).rstrip(b"\n")
    base = len(first) + 1 + sum(len(x) + 1 for x in block)
    later = p.feed([frame], base)  # joins the record the empty line left open
    flushed = p.flush("f1", base + len(frame) + 2, every=True)
    assert later.logs == [] and flushed.logs == [f"{TB}\n{FRAME}"]
    assert flushed.offsets[0] > out.offsets[-1]
