"""Random rotations of a plain ``--path`` file, with a kill anywhere (A3s18's fuzzer).

A script of writes (some of them empty lines: every generation may then start with the same
line), logrotate ``create`` (rename) and ``copytruncate`` rotations and clock ticks is played
once without a stop (the reference: every line once), then again with a kill -9 after each of
a sample of events, the acks of the last 0 or 2 chunks lost, and a restart that plays the rest.
What the aggregator keeps (its dedup by ``source_id`` and offset) must be every line once.

A few seeds run in the suite (about 6 s; seed 30 of copytruncate with empty lines finished an
older copy with the same first line, A3s18's finding 2, and 63 and 86 failed before A3s18's
fix); ``LOGQ_ROTATION_SEEDS=N`` runs N seeds of each mode instead, from
``LOGQ_ROTATION_SEED_OFFSET`` (default 0): a review can try seeds no one ran before.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.cursor import Chunk
from shipper.tailer import Tailer
from tests.shipper.kill_anywhere import logrotate
from tests.shipper.tailing import aggregator_keeps, commit, fresh_process, spec_for

Step = tuple[str, ...]
MANY = int(os.environ.get("LOGQ_ROTATION_SEEDS", "0"))
FIRST = int(os.environ.get("LOGQ_ROTATION_SEED_OFFSET", "0"))
CASES = (
    [(mode, seed) for mode in ("ctrunc", "mixed") for seed in range(FIRST, FIRST + MANY)]
    if MANY
    else [("ctrunc", seed) for seed in (30, 63, 86, *range(6))]
    + [("mixed", seed) for seed in range(8)]
)
STOPS = 12
"""Kills sampled per script and lost-acks setting."""


@dataclass
class Run:
    """One shipper run: reads and acks everything, the last ``lost_acks`` chunks' acks lost
    at a kill after ``stop`` events (None: never killed)."""

    t: Tailer
    reg: Registry
    lost_acks: int
    stop: int | None
    events: int = 0
    read: list[Chunk] = field(default_factory=list)
    sent: list[tuple[str, int, str]] = field(default_factory=list)

    def drain(self) -> bool:
        """Read until nothing changes; False when the kill came."""
        while (chunk := self.t.read(max_lines=2)) is not None or self.t.poll():
            if chunk is None:
                continue
            self.read.append(chunk)
            sid = chunk.cursor.source_id
            lines = zip(chunk.lines.logs, chunk.lines.offsets, strict=True)
            self.sent += [(text, offset, sid) for text, offset in lines]
            if len(self.read) > self.lost_acks:
                commit(self.t, self.read[len(self.read) - 1 - self.lost_acks])
            if self.event():
                return False
        return True

    def event(self) -> bool:
        self.events += 1
        return self.stop is not None and self.events >= self.stop

    def finish(self, now: list[float]) -> None:
        """The end: the rotate waits pass, every ack arrives."""
        now[0] += 20
        self.drain()
        for chunk in self.read[len(self.read) - self.lost_acks :]:
            commit(self.t, chunk)
        self.reg.close()


def _run(path: Path, state: Path, lost_acks: int, stop: int | None) -> Run:
    reg = Registry(state)
    return Run(Tailer(spec_for(path, "plain"), reg, "h", 65536), reg, lost_acks, stop)


def _script(rng: random.Random, mode: str) -> list[Step]:
    steps: list[Step] = []
    for n in range(1, rng.randint(10, 60) + 1):
        r = rng.random()
        if r < 0.1:
            steps.append(("empty",))
        elif r < 0.22:
            steps.append(("ctrunc",) if mode == "ctrunc" else (rng.choice(["rotate", "ctrunc"]),))
        elif r < 0.32:
            steps.append(("tick", rng.choice(["0.5", "1.5", "2.5", "6"])))
        else:
            steps.append(("line", f"plain #{n}#"))
    return steps


def _play(
    steps: list[Step], path: Path, now: list[float], run: Run, generations: list[int], start: int
) -> int | None:
    """Play ``steps`` from ``start``; the index of the step the kill came after, if it did."""
    for i in range(start, len(steps)):
        step = steps[i]
        if step[0] in ("rotate", "ctrunc"):
            logrotate(path, generations, step[0] == "ctrunc")
        elif step[0] == "tick":
            now[0] += float(step[1])
        else:
            with open(path, "ab") as f:
                f.write(b"\n" if step[0] == "empty" else step[1].encode() + b"\n")
        if not run.drain() or run.event():
            return i
    return None


@pytest.mark.parametrize(("mode", "seed"), CASES)
def test_every_line_once_whatever_the_rotations_and_kills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, seed: int
) -> None:
    rng = random.Random(seed)
    steps = _script(rng, mode)
    now = fresh_process(monkeypatch)
    (tmp_path / "ref").mkdir()
    ref = _run(tmp_path / "ref" / "c.log", tmp_path / "ref" / "state", 0, None)
    _play(steps, tmp_path / "ref" / "c.log", now, ref, [0], 0)
    ref.finish(now)
    expected = Counter(aggregator_keeps(ref.sent))
    written = [s[1] if s[0] == "line" else "" for s in steps if s[0] in ("line", "empty")]
    assert expected == Counter(written), ("without a kill", steps)
    stops = sorted(rng.sample(range(1, ref.events + 1), min(STOPS, ref.events)))
    fails = []
    for lost_acks in (0, 2):
        for stop in stops:
            root = tmp_path / f"run{lost_acks}-{stop}"
            root.mkdir()
            path, generations = root / "c.log", [0]
            first = _run(path, root / "state", lost_acks, stop)
            at = _play(steps, path, now, first, generations, 0)
            first.reg.save()  # kill -9: the registry as last saved, the acks in flight lost
            first.t.close()
            first.reg.close()
            second = _run(path, root / "state", 0, None)
            second.drain()
            if at is not None:
                _play(steps, path, now, second, generations, at + 1)
            second.finish(now)
            kept = Counter(aggregator_keeps(first.sent + second.sent))
            if kept != expected:
                fails.append((lost_acks, stop, dict(expected - kept), dict(kept - expected)))
    assert not fails, (steps, fails)
