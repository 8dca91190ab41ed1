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

import random
import re
from pathlib import Path

import pytest

from tests.shipper import kill_anywhere as ka
from tests.shipper.tailing import aggregator_keeps, fresh_process, rotate_docker
from tests.shipper.test_multiline_restarts import _Run, same_or_joined

SEEDS = ka.seeds((0, 1))
STOPS = ka.STOPS
COMPRESS = ka.COMPRESS
"""``R3_COMPRESS=1``: Docker files rotated with ``compress`` (a held file read again from its
``.gz``); ``R3_KUBELET=1`` rotates CRI and plain files as the kubelet does (see
:func:`tests.shipper.kill_anywhere.rotate`)."""

DAMAGED = (b"\n", b"x\n", b"\n\n\n\n", b"\nx\n", b"x\n\n")
"""Raw bytes that parse as no Docker or CRI entry (shipped as they are), and as empty or
one-letter lines of a plain file: each line ends at most two bytes past the one before."""


def _odds(fmt: str) -> ka.Odds:
    """Damaged lines among traces, split lines (not in plain files), rotations, copytruncate
    (plain files) and timeouts; the rest plain lines."""
    plain = fmt == "plain"
    return (
        (0.1, ka.boom),
        (0.25, ka.trace),
        *([] if plain else [(0.4, ka.part)]),
        (0.65, lambda rng, st, n: ("damaged", rng.choice(DAMAGED))),
        (0.7, ka.rotation),
        *([(0.73, ka.copytruncate)] if plain else []),
        (0.88, ka.ticks("0.5", "2.5", "6")),
    )


def _script(rng: random.Random, fmt: str) -> list[tuple]:
    return ka.script(rng, _odds(fmt), ka.streams(fmt))


def _play(script, path: Path, now, run: _Run, n, fmt: str, gen: list[int], start: int = 0):
    def act(step: tuple) -> None:
        if step[0] in ("rotate", "ctrunc"):
            if fmt == "docker":
                if path.exists() and path.stat().st_size:
                    rotate_docker(path, max_file=50, compress=COMPRESS)
            else:
                ka.rotate(path, gen, step[0] == "ctrunc")
        elif step[0] == "damaged" and not (path.exists() and path.stat().st_size):
            # Not a file's first line: files are told apart by their first bytes (see
            # shipper.fingerprint), and two that begin with the same damaged bytes on one
            # reused inode (compress, the kubelet's gzip) are a matter of identity, not of
            # offsets.
            pass
        else:
            with open(path, "ab") as f:
                f.write(step[1] if step[0] == "damaged" else ka.entry(step, fmt, n[0]))
            n[0] += 1

    return ka.play(script, now, run, start, act)


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
    fuzz = ka.Fuzz(
        lambda path, state: ka.tailer(path, state, fmt, multiline),
        lambda script, path, now, run, n, gen, start: _play(
            script, path, now, run, n, fmt, gen, start
        ),
    )
    run = ka.reference(fuzz, script, tmp_path, now)
    expected = aggregator_keeps(run.sent)
    assert len(expected) == len(run.sent), (seed, run.sent)  # nothing swallowed
    joined = "\n".join(expected)
    for step in script:
        if step[0] not in ("damaged", "rotate", "ctrunc", "tick"):
            assert joined.count(re.search(r"#\d+#", step[-1]).group(0)) == 1, (seed, step)
    for kill in ka.kills(fuzz, script, tmp_path, now, rng, run.events):
        where = (seed, kill.lost_acks, kill.stop, kill.at)
        _one_record_per_offset(kill.first.sent + kill.second.sent)
        kept = aggregator_keeps(kill.first.sent + kill.second.sent)
        try:
            same_or_joined(kept, expected)
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}") from None
