"""``--multiline`` and compressed copies: kills twice in a row (the second one while a held file
is read again from its compressed copy, Docker ``compress`` and the kubelet's gzip), logrotate
``copytruncate`` + ``compress``, error loops across rotations, corrupt copies."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
from pathlib import Path

import pytest

import shipper.held_gz
import shipper.resume
from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper import test_multiline_fuzz_cri_plain as cri
from tests.shipper import test_multiline_fuzz_docker as dock
from tests.shipper.tailing import aggregator_keeps, fresh_process, rotate_docker, spec_for
from tests.shipper.test_multiline_restarts import _finish, _Run, same_or_joined
from tests.shipper.test_multiline_stop_and_gz import TRACE, _sent, _ship, _write

FROM = int(os.environ.get("R5_FROM", "8000"))
N = int(os.environ.get("R5_N", "10"))


def _fds_held() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "logq-held" in os.readlink(f"/proc/self/fd/{fd}"):
                n += 1
        except OSError:
            pass
    return n


def _play(kind: str, script, path, now, run, n, gen, start=0):
    if kind == "docker":
        return dock._play(script, path, now, run, n, start, compress=True)
    return cri._play(script, path, now, run, n, "cri", gen, start)


def _tailer(kind: str, path: Path, state: Path):
    return cri._tailer(path, state, "docker" if kind == "docker" else "cri")


@pytest.mark.parametrize("kind", ["docker", "kubelet"])
@pytest.mark.parametrize("seed", range(FROM, FROM + N))
def test_killed_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, kind: str):
    if kind == "kubelet":
        monkeypatch.setenv("R3_KUBELET", "1")
    rng = random.Random(seed)
    script = dock._script(rng) if kind == "docker" else cri._script(rng, "cri")
    now = fresh_process(monkeypatch)
    ref = tmp_path / "ref"
    ref.mkdir()
    name = "c-json.log" if kind == "docker" else "c.log"
    t, reg = _tailer(kind, ref / name, ref / "state")
    run = _Run(t, reg, 0, None)
    _play(kind, script, ref / name, now, run, [0], [0])
    _finish(run, now)
    expected = aggregator_keeps(run.sent)
    events = run.events
    base_fds = _fds_held()
    for trial in range(6):
        stop1 = rng.randint(1, events)
        stop2 = rng.randint(1, 12)
        lost = rng.choice([0, 1, 2])
        root = tmp_path / f"t{trial}"
        root.mkdir()
        path = root / name
        n, gen = [0], [0]
        t, reg = _tailer(kind, path, root / "state")
        first = _Run(t, reg, lost, stop1)
        at = _play(kind, script, path, now, first, n, gen)
        reg.save()
        t.close()
        reg.close()
        t, reg = _tailer(kind, path, root / "state")
        second = _Run(t, reg, lost, stop2)
        at2 = at
        if second.drain() and at is not None:
            at2 = _play(kind, script, path, now, second, n, gen, at + 1)
        elif at is None:
            at2 = None
        reg.save()
        t.close()
        reg.close()
        t, reg = _tailer(kind, path, root / "state")
        third = _Run(t, reg, 0, None)
        third.drain()
        if at2 is not None:
            _play(kind, script, path, now, third, n, gen, at2 + 1)
        _finish(third, now)
        t.close()
        kept = aggregator_keeps(first.sent + second.sent + third.sent)
        ctx = (seed, kind, trial, stop1, stop2, lost, at, at2)
        try:
            same_or_joined(kept, expected)
        except AssertionError as exc:
            raise AssertionError(f"{ctx}: {exc}") from None
        assert _fds_held() == base_fds, ctx


# -- targeted cases on shipper.held_gz ---------------------------------------------------------


def _ml(path: Path, state: Path, fmt: str = "docker", losses: list | None = None):
    reg = Registry(state)
    on_loss = losses.append if losses is not None else None
    return Tailer(spec_for(path, fmt), reg, "h", 65536, multiline="java", on_loss=on_loss), reg


def _held_at_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A trace open across a Docker ``compress`` rotation, the shipper killed: the rotated
    file is only ``.1.gz``, the checkpoint held before the trace."""
    now = fresh_process(monkeypatch)
    path, state = tmp_path / "c-json.log", tmp_path / "state"
    n = [0]
    _write(path, ["boot", *TRACE], n)
    t, reg = _ml(path, state)
    sent = _ship(t)
    rotate_docker(path, max_file=5, compress=True)
    sent += _ship(t)
    reg.save()
    t.close()
    reg.close()
    return now, path, state, n, sent


def test_truncated_gz_of_a_held_file_is_a_counted_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now, path, state, n, sent = _held_at_kill(tmp_path, monkeypatch)
    gz = Path(f"{path}.1.gz")
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) - 12])  # trailer and some data cut off
    _write(path, ["\tat com.example.B.run(B.java:2)", "after"], n)
    losses: list[str] = []
    caplog.set_level(logging.INFO, logger="logq")
    t, reg = _ml(path, state, losses=losses)
    sent += _ship(t)
    now[0] += 30
    sent += _ship(t)
    t.close()
    reg.close()
    kept = aggregator_keeps(sent)
    print(kept, losses, [r.getMessage() for r in caplog.records])
    assert losses == ["deleted_unread"]
    assert "boot" in kept and "after" in kept


def test_corrupt_gz_body_of_a_held_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now, path, state, n, sent = _held_at_kill(tmp_path, monkeypatch)
    gz = Path(f"{path}.1.gz")
    data = bytearray(gz.read_bytes())
    data[len(data) - 8] ^= 0xFF  # CRC wrong, ISIZE intact
    gz.write_bytes(bytes(data))
    _write(path, ["after"], n)
    losses: list[str] = []
    caplog.set_level(logging.INFO, logger="logq")
    t, reg = _ml(path, state, losses=losses)
    sent += _ship(t)
    now[0] += 30
    sent += _ship(t)
    t.close()
    reg.close()
    kept = aggregator_keeps(sent)
    print(kept, losses, [r.getMessage() for r in caplog.records])
    assert losses == ["deleted_unread"]


def test_graceful_stop_while_reading_held_gz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restarted from the .gz, SIGTERM after one chunk of it: the stop ships the open records;
    the next start goes on; each line once."""
    now, path, state, n, sent = _held_at_kill(tmp_path, monkeypatch)
    _write(path, ["\tat com.example.B.run(B.java:2)", "after"], n)
    t, reg = _ml(path, state)
    chunk = t.read(max_lines=1)
    while chunk is None and t.poll():
        chunk = t.read(max_lines=1)
    assert chunk is not None
    sent += _sent(chunk)
    chunk.cursor.outstanding += 1
    t.commit(chunk.cursor, chunk.resume, chunk.lines.offsets[-1] if len(chunk.lines) else 0)
    t.end(stopping=True)
    while (c := t.read(max_lines=1)) is not None:  # what _ship_open_records sends
        sent += _sent(c)
        c.cursor.outstanding += 1
        t.commit(c.cursor, c.resume, c.lines.offsets[-1] if len(c.lines) else 0)
        if not t.parser.pending_origins():
            break
    reg.save()
    t.close()
    reg.close()
    assert _fds_held() == 0
    _write(path, ["later"], n)
    t, reg = _ml(path, state)
    sent += _ship(t)
    now[0] += 30
    sent += _ship(t)
    t.close()
    reg.close()
    kept = aggregator_keeps(sent)
    print(kept)
    joined = "\n".join(kept)
    for line in ["boot", *TRACE, "\tat com.example.B.run(B.java:2)", "after", "later"]:
        assert joined.count(line) == 1, (line, kept)
    assert _fds_held() == 0


def test_same_banner_generation_taken_for_the_held_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain --path file whose every generation starts with the same banner line; a trace
    opened right after it, the shipper killed after a compressing rotation. While it is down
    the next generation (same banner) is rotated and compressed too. Both ``.gz`` have the
    checkpoint's first line and the same bytes before its offset (all the tail hash covers):
    the copy read again is whichever the directory listing gives first."""
    now = fresh_process(monkeypatch)
    path, state = tmp_path / "app.log", tmp_path / "state"
    path.write_bytes(b"banner\n" + "\n".join(TRACE).encode() + b"\n")
    losses: list[str] = []
    t, reg = _ml(path, state, "plain", losses)
    sent = _ship(t)
    os.replace(path, f"{path}.1")
    gzip_to(Path(f"{path}.1"))
    path.write_bytes(b"")
    sent += _ship(t)
    reg.save()
    t.close()
    reg.close()
    # down: the next generation written, rotated and compressed
    path.write_bytes(b"banner\nB one\nB two\n")
    os.replace(f"{path}.1.gz", f"{path}.2.gz")
    os.replace(path, f"{path}.1")
    gzip_to(Path(f"{path}.1"))
    path.write_bytes(b"C one\n")
    real = shipper.held_gz.compressed_siblings
    monkeypatch.setattr(shipper.held_gz, "compressed_siblings", lambda p: sorted(real(p)))
    t, reg = _ml(path, state, "plain", losses)
    sent += _ship(t)
    now[0] += 30
    sent += _ship(t)
    t.close()
    reg.close()
    kept = aggregator_keeps(sent)
    print(kept, losses, sent)
    joined = "\n".join(kept)
    assert joined.count(TRACE[1]) == 1 or losses, (kept, losses)


def gzip_to(plain: Path) -> None:
    Path(f"{plain}.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()


def test_registry_after_a_restart_from_gz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now, path, state, n, sent = _held_at_kill(tmp_path, monkeypatch)
    _write(path, ["\tat com.example.B.run(B.java:2)", "after"], n)
    for round_ in range(3):
        t, reg = _ml(path, state)
        sent += _ship(t)
        now[0] += 30
        sent += _ship(t)
        _write(path, [f"more {round_}"], n)
        sent += _ship(t)
        reg.save()
        t.close()
        reg.close()
        doc = json.loads((state / "checkpoints.json").read_bytes())
        print(round_, json.dumps(doc, indent=1))
    print(aggregator_keeps(sent))
    assert len(doc["files"]) == 1


@pytest.mark.parametrize("ml", ["java", None])
@pytest.mark.parametrize("new_first", [True, False])
def test_copytruncate_compress_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ml: str | None, new_first: bool
) -> None:
    """logrotate ``copytruncate`` + ``compress`` (no delaycompress) of a plain --path file,
    handled while running, then a restart: nothing may be stored twice."""
    now = fresh_process(monkeypatch)
    path, state = tmp_path / "app.log", tmp_path / "state"
    path.write_bytes(b"one\ntwo\nthree\n")
    reg = Registry(state)
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, multiline=ml)
    sent = _ship(t)
    # logrotate: copy, truncate, compress the copy
    Path(f"{path}.1").write_bytes(path.read_bytes())
    with open(path, "r+b") as f:
        f.truncate(0)
    gzip_to(Path(f"{path}.1"))
    sent += _ship(t)
    now[0] += 10
    sent += _ship(t)
    if new_first:
        path.write_bytes(b"four\n")
        sent += _ship(t)
    reg.save()
    t.close()
    reg.close()
    print(json.dumps(json.loads((state / "checkpoints.json").read_bytes()), indent=1))
    with open(path, "ab") as f:
        f.write(b"five\n")
    reg = Registry(state)
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, multiline=ml)
    sent += _ship(t)
    now[0] += 10
    sent += _ship(t)
    t.close()
    reg.close()
    kept = aggregator_keeps(sent)
    print(kept)
    want = ["one", "two", "three", "four", "five"] if new_first else ["one", "two", "three", "five"]
    assert kept == want


def _open_deleted() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)"):
                n += 1
        except OSError:
            pass
    return n


def test_error_loop_across_rotations_keeps_the_registry_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service in an error loop (traces back to back, no quiet point) across many max-file
    rotations: every rotated file stays held until a quiet point, but the entries of those
    deleted (max-file=3: at most 3 files exist), all their records stored, are dropped."""
    fresh_process(monkeypatch)
    path, state = tmp_path / "c-json.log", tmp_path / "state"
    n = [0]
    t, reg = _ml(path, state)
    before = _open_deleted()
    sent = []
    peak = 0
    for _gen in range(30):
        for _ in range(5):
            _write(path, TRACE, n)
        sent += _ship(t)
        rotate_docker(path, max_file=3)
        sent += _ship(t)
        peak = max(peak, len(t._held))
    reg.save()
    entries = len(json.loads((state / "checkpoints.json").read_bytes())["files"])
    print("peak held:", peak, "open deleted:", _open_deleted() - before, "entries:", entries)
    t.close()
    reg.close()
    assert entries <= 3


def test_error_loop_then_a_restart_stores_every_trace_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entries of deleted held files dropped in an error loop (see the test above), then a
    kill and a restart: every trace is stored once, whole, and nothing is counted lost."""
    now = fresh_process(monkeypatch)
    path, state = tmp_path / "c-json.log", tmp_path / "state"
    n = [0]
    losses: list[str] = []
    t, reg = _ml(path, state, losses=losses)
    sent = []
    for _gen in range(8):
        for _ in range(5):
            _write(path, TRACE, n)
        sent += _ship(t)
        rotate_docker(path, max_file=3)
        sent += _ship(t)
    _write(path, TRACE, n)
    sent += _ship(t)
    reg.save()
    entries = len(json.loads((state / "checkpoints.json").read_bytes())["files"])
    t.close()  # killed: no stop, the last trace still open
    reg.close()
    _write(path, ["after"], n)
    t, reg = _ml(path, state, losses=losses)
    sent += _ship(t)
    now[0] += 30
    sent += _ship(t)
    t.close()
    reg.close()
    kept = aggregator_keeps(sent)
    assert entries <= 3
    assert kept == ["\n".join(TRACE)] * 41 + ["after"]
    assert losses == []
