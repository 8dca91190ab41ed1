"""The machinery of the kill-anywhere fuzzers (``test_multiline_fuzz_docker``,
``test_multiline_fuzz_cri_plain``, ``test_offset_floor_fuzz``): a random script from each
fuzzer's own steps and odds, played once as reference and then killed at sampled points with
lagging acks and restarted; the rotations they play; the seeds and kill points the ``R3_*``
variables choose (DEVELOPERS.md).

One copy of the generator and the run loop, so that a fix to how a kill or a restart is played
reaches every fuzzer; what differs (steps, odds, seeds, assertions) stays in each fuzzer."""

from __future__ import annotations

import gzip
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line, docker_line
from tests.shipper.tailing import spec_for
from tests.shipper.test_multiline_restarts import _finish, _Run

Step = tuple
"""``(stream, text)``, ``("part", stream, text)``, ``("tick", seconds)`` or a fuzzer's own
kind (``("rotate",)``, ``("damaged", raw)`` ...)."""
Make = Callable[[random.Random, str, int], Step]
"""A step from the rng, its stream and its number (the ``#n#`` token in its text)."""
Odds = Sequence[tuple[float, Make]]
"""``(below, make)`` rows in order: the first row whose ``below`` exceeds the step's draw
makes it; a draw above them all is a plain line."""

STOPS = int(os.environ.get("R3_STOPS", "6"))
"""Kill points sampled per script, each played with 0 and 2 acks lost."""
COMPRESS = bool(os.environ.get("R3_COMPRESS"))
"""``R3_COMPRESS=1``: Docker files rotated with ``compress`` (the rotated file gzipped at once)."""


def seeds(default: tuple[int, ...]) -> Sequence[int]:
    """The scripts played: ``R3_SEEDS=N`` plays N seeds from ``R3_SEED_FROM`` (default 0), so
    a review can try seeds no one ran before; by default ``default``, a few among them those
    that found defects, to keep the suite's time."""
    if "R3_SEEDS" not in os.environ:
        return default
    first = int(os.environ.get("R3_SEED_FROM", "0"))
    return range(first, first + int(os.environ["R3_SEEDS"]))


def boom(rng: random.Random, stream: str, n: int) -> Step:
    """A Java exception's first line: starts a ``--multiline java`` record."""
    return (stream, f"java.lang.IllegalStateException: boom #{n}#")


def trace(rng: random.Random, stream: str, n: int) -> Step:
    """A stack frame: continues the record."""
    return (stream, f"\tat com.example.C.m(C.java:{n}) #{n}#")


def more(rng: random.Random, stream: str, n: int) -> Step:
    """A trace's ``... N more``: continues the record."""
    return (stream, f"\t... {n} more #{n}#")


def part(rng: random.Random, stream: str, n: int) -> Step:
    """A split line's part (Docker's 16 KiB parts, CRI's ``P``)."""
    return ("part", stream, f"part #{n}# ")


def rotation(rng: random.Random, stream: str, n: int) -> Step:
    """A rename rotation (Docker's own for Docker files)."""
    return ("rotate",)


def copytruncate(rng: random.Random, stream: str, n: int) -> Step:
    """logrotate's ``copytruncate``."""
    return ("ctrunc",)


def ticks(*seconds: str) -> Make:
    """The clock moved by one of ``seconds``: split lines and records flushed at their
    timeouts, rotate waits passed."""
    return lambda rng, stream, n: ("tick", rng.choice(list(seconds)))


def streams(fmt: str) -> tuple[str, ...]:
    """A plain file has one stream; Docker and CRI files two."""
    return ("out",) if fmt == "plain" else ("out", "err")


def script(rng: random.Random, odds: Odds, streams: tuple[str, ...]) -> list[Step]:
    """10 to 60 steps drawn by ``odds``; a draw no row takes is a plain line. One stream draws
    nothing for it: the same seed makes the same script as before the fuzzers shared this
    generator."""
    s: list[Step] = []
    for n in range(1, rng.randint(10, 60) + 1):
        stream = streams[0] if len(streams) == 1 else rng.choice(list(streams))
        r = rng.random()
        make = next((make for below, make in odds if r < below), None)
        s.append(make(rng, stream, n) if make else (stream, f"plain #{n}#"))
    return s


def tokens(script: Sequence[Step]) -> list[str]:
    """The ``#n#`` token of every line the script writes."""
    return [re.search(r"#\d+#", s[-1]).group(0) for s in script if s[0] in ("out", "err", "part")]


def entry(step: Step, fmt: str, n: int) -> bytes:
    """The bytes a line or a split line's part is written as: the ``n``-th entry of a Docker
    or CRI file, or a plain file's line."""
    part = step[0] == "part"
    stream, text = (step[1], step[2]) if part else step
    std = "stdout" if stream == "out" else "stderr"
    if fmt == "docker":
        return docker_line(text, n, std, not part)
    if fmt == "cri":
        return cri_line(text, n, std, "P" if part else "F")
    return text.encode() + b"\n"


def play(
    script: Sequence[Step], now: list[float], run: _Run, start: int, act: Callable[[Step], None]
) -> int | None:
    """Play ``script`` from step ``start``: a tick moves the clock, ``act`` does any other step;
    the run drains after each. The step the kill came in, or None when it played to the end."""
    for i in range(start, len(script)):
        step = script[i]
        if step[0] == "tick":
            now[0] += float(step[1])
        else:
            act(step)
        if not run.drain() or run.event():
            return i
    return None


Play = Callable[[Sequence[Step], Path, list[float], _Run, list[int], list[int], int], "int | None"]
"""``(script, path, now, run, n, gen, start)``: a fuzzer's :func:`play` of its steps to
``path``, ``n`` the entries written and ``gen`` the rotations so far."""


@dataclass(frozen=True)
class Fuzz:
    """What one fuzzer plays: its tailer, its steps and the log file's name."""

    tailer: Callable[[Path, Path], tuple[Tailer, Registry]]
    play: Play
    name: str = "c.log"


@dataclass(frozen=True)
class Kill:
    """One kill-anywhere case: the run killed after ``stop`` events with ``lost_acks`` acks lost
    (in step ``at``, None: it played to the end) and the restart that played the rest."""

    lost_acks: int
    stop: int
    at: int | None
    first: _Run
    second: _Run


def reference(fuzz: Fuzz, script: Sequence[Step], tmp_path: Path, now: list[float]) -> _Run:
    """The script played without a kill: what every kill must come to."""
    ref = tmp_path / "ref"
    ref.mkdir()
    t, reg = fuzz.tailer(ref / fuzz.name, ref / "state")
    run = _Run(t, reg, 0, None)
    fuzz.play(script, ref / fuzz.name, now, run, [0], [0], 0)
    _finish(run, now)
    t.close()  # each tailer's files count against the process's open-files budget
    return run


def kills(
    fuzz: Fuzz,
    script: Sequence[Step],
    tmp_path: Path,
    now: list[float],
    rng: random.Random,
    events: int,
) -> Iterator[Kill]:
    """The script killed at :data:`STOPS` of the reference's ``events`` drawn from ``rng``
    (the registry as last saved, the last ``lost_acks`` acks lost), each restarted to play the
    rest."""
    stops = sorted(rng.sample(range(1, events + 1), min(STOPS, events)))
    for lost_acks in (0, 2):
        for stop in stops:
            root = tmp_path / f"run{lost_acks}-{stop}"
            root.mkdir()
            path = root / fuzz.name
            n, gen = [0], [0]
            t, reg = fuzz.tailer(path, root / "state")
            first = _Run(t, reg, lost_acks, stop)
            at = fuzz.play(script, path, now, first, n, gen, 0)
            reg.save()
            t.close()
            reg.close()
            t, reg = fuzz.tailer(path, root / "state")
            second = _Run(t, reg, 0, None)
            second.drain()
            if at is not None:
                fuzz.play(script, path, now, second, n, gen, at + 1)
            _finish(second, now)
            t.close()
            yield Kill(lost_acks, stop, at, first, second)


def tailer(path: Path, state: Path, fmt: str, multiline: str | None) -> tuple[Tailer, Registry]:
    """A tailer of ``path`` as ``fmt``, its registry at ``state``."""
    reg = Registry(state)
    return Tailer(spec_for(path, fmt), reg, "h", 65536, multiline=multiline), reg


def rotate(path: Path, gen: list[int], copy: bool) -> None:
    """:func:`logrotate`, as the ``R3_*`` variables choose: ``R3_KUBELET=1``, a rename
    rotation is the kubelet's (:func:`rotate_kubelet`); ``R3_NOROT=1``, none."""
    if os.environ.get("R3_NOROT"):
        return
    if os.environ.get("R3_KUBELET") and not copy:
        if path.exists() and path.stat().st_size:
            gen[0] += 1
            rotate_kubelet(path, gen[0])
        return
    logrotate(path, gen, copy)


def logrotate(path: Path, gen: list[int], copy: bool) -> None:
    """logrotate (Docker's numbering): ``.N`` moves to ``.N+1``; the live file is renamed to
    ``.1`` and created again, or copied to ``.1`` and truncated (``copy``). An empty file is
    not rotated; ``gen`` counts the rotations."""
    if not path.exists() or not path.stat().st_size:
        return
    gen[0] += 1
    for k in range(gen[0], 0, -1):
        older = Path(f"{path}.{k}")
        if older.exists():
            os.replace(older, f"{path}.{k + 1}")
    if copy:
        shutil.copyfile(path, f"{path}.1")
        with open(path, "r+b") as f:
            f.truncate(0)
    else:
        os.replace(path, f"{path}.1")
        path.touch()


def rotate_kubelet(path: Path, gen: int, max_files: int = 5) -> None:
    """The kubelet's rotation (``R3_KUBELET=1``, R1s19): ``0.log`` renamed to
    ``0.log.<timestamp>``, the rotated files before it gzip-compressed (``.gz``, the plain one
    removed), the oldest beyond ``max_files`` deleted, a new ``0.log`` created."""
    for old in sorted(path.parent.glob(path.name + ".*")):
        if not old.name.endswith(".gz"):
            with open(old, "rb") as src, gzip.open(f"{old}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            old.unlink()
    os.replace(path, f"{path}.20261130-{120000 + gen:06d}")
    rotated = sorted(path.parent.glob(path.name + ".*"))
    for old in rotated[: max(0, len(rotated) - (max_files - 1))]:
        old.unlink()
    path.touch()
