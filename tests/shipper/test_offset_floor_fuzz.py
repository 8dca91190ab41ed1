"""Random scripts with one- and two-byte damaged lines (``"\\n"``, ``"x\\n"``, runs of them)
among split lines flushed at their timeout, ``--multiline`` records, rotations and
copytruncate, played once as reference, then killed at sampled points with lagging acks and
restarted (the machinery of the ``--multiline`` fuzzers).

A flushed split line (or record) takes the offset one past the read position; the tiny lines
after it are numbered above it (:meth:`shipper.cursor.Cursor.number`), and a restart resumes
that numbering from the checkpoint's :attr:`~shipper.checkpoint.FileState.floor`. What must
hold: the uninterrupted run loses none of them at the aggregator's high-water mark, and after
a kill anywhere every record read again goes out under the offset it had (the same offset
never names two different records), so the aggregator stores each line once.

``R3_SEEDS``, ``R3_SEED_FROM``, ``R3_STOPS``, ``R3_COMPRESS`` and ``R3_KUBELET`` as for the
other fuzzers (DEVELOPERS.md)."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line, docker_line
from tests.shipper.tailing import aggregator_keeps, fresh_process, rotate_docker, spec_for
from tests.shipper.test_multiline_fuzz_cri_plain import _rotate
from tests.shipper.test_multiline_restarts import _finish, _Run, same_or_joined

_FROM = int(os.environ.get("R3_SEED_FROM", "0"))
SEEDS = range(_FROM, _FROM + int(os.environ["R3_SEEDS"])) if "R3_SEEDS" in os.environ else (0, 1)
STOPS = int(os.environ.get("R3_STOPS", "6"))
COMPRESS = bool(os.environ.get("R3_COMPRESS"))
"""``R3_COMPRESS=1``: Docker files rotated with ``compress`` (a held file read again from its
``.gz``); ``R3_KUBELET=1`` rotates CRI and plain files as the kubelet does (see
:func:`tests.shipper.test_multiline_fuzz_cri_plain._rotate`)."""

DAMAGED = (b"\n", b"x\n", b"\n\n\n\n", b"\nx\n", b"x\n\n")
"""Raw bytes that parse as no Docker or CRI entry (shipped as they are), and as empty or
one-letter lines of a plain file: each line ends at most two bytes past the one before."""


def _script(rng: random.Random, fmt: str) -> list[tuple]:
    s: list[tuple] = []
    for n in range(1, rng.randint(10, 60) + 1):
        stream = "out" if fmt == "plain" else rng.choice(["out", "err"])
        r = rng.random()
        if r < 0.1:
            s.append((stream, f"java.lang.IllegalStateException: boom #{n}#"))
        elif r < 0.25:
            s.append((stream, f"\tat com.example.C.m(C.java:{n}) #{n}#"))
        elif r < 0.4 and fmt != "plain":
            s.append(("part", stream, f"part #{n}# "))
        elif r < 0.65:
            s.append(("damaged", rng.choice(DAMAGED)))
        elif r < 0.7:
            s.append(("rotate",))
        elif r < 0.73 and fmt == "plain":
            s.append(("ctrunc",))
        elif r < 0.88:
            s.append(("tick", rng.choice(["0.5", "2.5", "6"])))
        else:
            s.append((stream, f"plain #{n}#"))
    return s


def _entry(step: tuple, fmt: str, n: int) -> bytes:
    part = step[0] == "part"
    stream, text = (step[1], step[2]) if part else step
    std = "stdout" if stream == "out" else "stderr"
    if fmt == "docker":
        return docker_line(text, n, std, not part)
    if fmt == "cri":
        return cri_line(text, n, std, "P" if part else "F")
    return text.encode() + b"\n"


def _play(script, path: Path, now, run: _Run, n, fmt: str, gen: list[int], start: int = 0):
    for i in range(start, len(script)):
        step = script[i]
        if step[0] in ("rotate", "ctrunc"):
            if fmt == "docker":
                if path.exists() and path.stat().st_size:
                    rotate_docker(path, max_file=50, compress=COMPRESS)
            else:
                _rotate(path, gen, step[0] == "ctrunc")
        elif step[0] == "tick":
            now[0] += float(step[1])
        elif step[0] == "damaged" and not (path.exists() and path.stat().st_size):
            # Not a file's first line: files are told apart by their first bytes (see
            # shipper.fingerprint), and two that begin with the same damaged bytes on one
            # reused inode (compress, the kubelet's gzip) are a matter of identity, not of
            # offsets.
            pass
        else:
            with open(path, "ab") as f:
                f.write(step[1] if step[0] == "damaged" else _entry(step, fmt, n[0]))
            n[0] += 1
        if not run.drain() or run.event():
            return i
    return None


def _tailer(path: Path, state: Path, fmt: str, multiline: str | None) -> tuple[Tailer, Registry]:
    reg = Registry(state)
    return Tailer(spec_for(path, fmt), reg, "h", 65536, multiline=multiline), reg


_PARTS = re.compile(r"^(part #\d+# )+")
"""A split line's first parts at a record's start: a restart that reads them again within the
split wait joins them to their next part, where the run before shipped them cut (the
regrouping the docs allow), under the offset the next part has alone."""


def _one_record_per_offset(sent: list[tuple[str, int, str]]) -> None:
    """A record read again goes out under the offset it had: no offset names two records."""
    named: dict[tuple[str, int], str] = {}
    for log, offset, sid in sent:
        had = named.setdefault((sid, offset), log)
        assert _PARTS.sub("", had) == _PARTS.sub("", log), (sid, offset, had, log)


@pytest.mark.parametrize("multiline", ["java", None], ids=["ml", "plain"])
@pytest.mark.parametrize("fmt", ["docker", "cri", "plain"])
@pytest.mark.parametrize("seed", SEEDS)
def test_tiny_damaged_lines_kill_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, fmt: str, multiline: str | None
) -> None:
    rng = random.Random(seed)
    script = _script(rng, fmt)
    now = fresh_process(monkeypatch)
    ref = tmp_path / "ref"
    ref.mkdir()
    t, reg = _tailer(ref / "c.log", ref / "state", fmt, multiline)
    run = _Run(t, reg, 0, None)
    _play(script, ref / "c.log", now, run, [0], fmt, [0])
    _finish(run, now)
    t.close()  # each tailer's files count against the process's open-files budget
    expected = aggregator_keeps(run.sent)
    assert len(expected) == len(run.sent), (seed, run.sent)  # nothing swallowed
    joined = "\n".join(expected)
    for step in script:
        if step[0] not in ("damaged", "rotate", "ctrunc", "tick"):
            assert joined.count(re.search(r"#\d+#", step[-1]).group(0)) == 1, (seed, step)
    events = run.events
    stops = sorted(rng.sample(range(1, events + 1), min(STOPS, events)))
    for lost_acks in (0, 2):
        for stop in stops:
            root = tmp_path / f"run{lost_acks}-{stop}"
            root.mkdir()
            path = root / "c.log"
            n, gen = [0], [0]
            t, reg = _tailer(path, root / "state", fmt, multiline)
            first = _Run(t, reg, lost_acks, stop)
            at = _play(script, path, now, first, n, fmt, gen)
            reg.save()
            t.close()
            reg.close()
            t, reg = _tailer(path, root / "state", fmt, multiline)
            second = _Run(t, reg, 0, None)
            second.drain()
            if at is not None:
                _play(script, path, now, second, n, fmt, gen, at + 1)
            _finish(second, now)
            t.close()
            where = (seed, lost_acks, stop, at)
            _one_record_per_offset(first.sent + second.sent)
            kept = aggregator_keeps(first.sent + second.sent)
            try:
                same_or_joined(kept, expected)
            except AssertionError as e:
                raise AssertionError(f"{where}: {e}") from None
