"""``--multiline`` (H6s19): what the fixes of R1s19's findings hold beyond R1's reproductions
(tests/shipper/test_multiline_rotation_cases.py): a graceful stop ships the open records, a
record open at a rotation that deletes its file goes out at the timeout, a source whose option
was turned off groups only until the record open at the stop is shipped, and the checkpoints of
sources without the option keep their format.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from pathlib import Path

import pytest

import shipper.multiline
import shipper.resume
from shipper.checkpoint import FileState, Registry
from shipper.config import load_config
from shipper.cursor import Chunk
from shipper.daemon import Shipper
from shipper.fingerprint import fingerprint, tail_hash
from shipper.held_gz import decompressed, held_by_compressed, verified
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import aggregator_keeps, fresh_process, rotate_docker, spec_for

TRACE = ["java.lang.IllegalStateException: boom", "\tat com.example.A.run(A.java:1)"]


def _tailer(path: Path, state: Path, ml: str | None) -> tuple[Tailer, Registry]:
    reg = Registry(state)
    return Tailer(spec_for(path), reg, "h", 65536, multiline=ml), reg


def _write(path: Path, texts: list[str], n: list[int], stream: str = "stdout") -> None:
    with open(path, "ab") as f:
        for text in texts:
            f.write(docker_line(text, n[0], stream))
            n[0] += 1


def _ship(t: Tailer) -> list[tuple[str, int, str]]:
    """Read until nothing changes, each chunk acknowledged; what was sent."""
    sent: list[tuple[str, int, str]] = []
    while (chunk := t.read()) is not None or t.poll():
        if chunk is not None:
            sent += _sent(chunk)
            chunk.cursor.outstanding += 1
            last = chunk.lines.offsets[-1] if chunk.lines.offsets else 0
            t.commit(chunk.cursor, chunk.resume, last)
    return sent


def _sent(chunk: Chunk) -> list[tuple[str, int, str]]:
    sid = chunk.cursor.source_id
    return [(log, off, sid) for log, off in zip(chunk.lines.logs, chunk.lines.offsets, strict=True)]


def test_a_graceful_stop_ships_the_open_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (a shipper upgrade) while a trace is open: the record goes out as it is in the
    batches the stop waits for, and the checkpoint passes it. Left to the restart, it depended
    on the rotated files holding its head still being there (R1s19 #1)."""
    monkeypatch.setattr(shipper.multiline, "MULTILINE_FLUSH_SECONDS", 600.0)  # no timeout
    docker = tmp_path / "docker"
    log = make_container(docker, "e" * 64, "app", lines=["boot"])
    receiver = Receiver()
    extra = ("--poll-interval", "0.05", "--multiline", "app=java")

    async def go() -> int:
        shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *extra, docker=docker)))
        run = asyncio.create_task(shipper.run())
        await until(lambda: receiver.lines() == ["boot"])
        _write(log, TRACE, [1])
        await until(
            lambda: any(
                r.tailer.parser.pending_origins() and r.tailer.cursors[0].read_pos == size
                for r in shipper.runners.values()
                if r.tailer.cursors and (size := log.stat().st_size)
            )
        )
        shipper.request_stop()
        return await asyncio.wait_for(run, 60)

    try:
        assert asyncio.run(go()) == 0
    finally:
        receiver.close()
    assert receiver.lines() == ["boot", "\n".join(TRACE)]
    saved = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
    (entry,) = saved["files"].values()
    assert entry["offset"] == log.stat().st_size  # a restart reads none of it again


def test_a_record_open_when_its_file_is_compressed_away_goes_out_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker ``compress: true``: the file is renamed and gzipped at once, and the container
    writes nothing more (it stopped). No file is open, and the record waited for a next file
    that never came: never shipped, lost at the next stop."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    n = [0]
    _write(path, ["boot", *TRACE], n)
    t, reg = _tailer(path, tmp_path / "state", "java")
    sent = _ship(t)
    assert [log for log, _, _ in sent] == ["boot"]
    rotate_docker(path, max_file=5, compress=True)
    sent += _ship(t)
    now[0] += 3  # past the 2 s wait
    sent += _ship(t)
    reg.close()
    assert aggregator_keeps(sent) == ["boot", "\n".join(TRACE)]


def test_a_source_whose_option_was_turned_off_groups_only_the_record_open_at_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The option turned off across a restart while a trace was open: that record goes out
    grouped, as the checkpoint kept it (R1s19 #2); once a read ends at a quiet point past
    what was acknowledged, lines are one record each, and the checkpoint no longer names the
    parser."""
    now = fresh_process(monkeypatch)
    path, state = tmp_path / "c-json.log", tmp_path / "state"
    n = [0]
    _write(path, ["boot"], n)
    t, reg = _tailer(path, state, "java")
    sent = _ship(t)
    _write(path, TRACE, n)
    _write(path, ["err 0"], n, "stderr")
    sent += _ship(t)
    assert reg.items()[0][1].grouped == "java"
    reg.save()
    t.close()
    reg.close()
    t, reg = _tailer(path, state, None)
    _write(path, ["after"], n)
    now[0] += 10
    sent += _ship(t)  # ends at a quiet point past what was acknowledged: line by line now
    _write(path, TRACE, n)
    sent += _ship(t)
    reg.save()
    reg.close()
    assert aggregator_keeps(sent) == ["boot", "err 0", "\n".join(TRACE), "after", *TRACE]
    (entry,) = json.loads((state / "checkpoints.json").read_bytes())["files"].values()
    assert "grouped" not in entry and "shipped" not in entry


def test_checkpoints_without_the_option_keep_their_format(tmp_path: Path) -> None:
    """The fields the option adds to a checkpoint entry are saved only when set: a source
    without it saves what it saved before them."""
    path = tmp_path / "c-json.log"
    _write(path, ["boot", *TRACE], [0])
    t, reg = _tailer(path, tmp_path / "state", None)
    _ship(t)
    reg.save()
    reg.close()
    (entry,) = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())["files"].values()
    assert set(entry) == {
        "source",
        "path",
        "source_id",
        "offset",
        "acked",
        "epoch",
        "updated",
        "cuts",
        "acked_to",
        "tail",
        "seen",
    }


def test_a_held_file_is_read_again_from_its_own_compressed_copy(tmp_path: Path) -> None:
    """Generations that share a first line (a banner) leave several ``.gz`` copies with the
    checkpoint's first line and room past its offset: the one read again is the one holding
    the bytes the checkpoint checked before its offset, not another generation's."""
    ours = b"banner\nplain x\n" + "\n".join(TRACE).encode() + b"\n"  # a plain --path file
    other = b"banner\nplain a\nplain b\nplain c\n"
    live = tmp_path / "app.log"
    live.write_bytes(b"after\n")
    (tmp_path / "app.log.1.gz").write_bytes(gzip.compress(ours))
    (tmp_path / "app.log.2.gz").write_bytes(gzip.compress(other))
    (tmp_path / "was").write_bytes(ours)
    fd = os.open(tmp_path / "was", os.O_RDONLY)
    offset = len(b"banner\nplain x\n")  # the quiet point before the trace
    state = FileState("test:app.log", "app.log", "h:x", offset, 0, tail=tail_hash(fd, offset) or "")
    key = f"1:2:{fingerprint(fd)}"
    os.close(fd)
    ((_, _, candidates),) = held_by_compressed(live, [(key, state)])
    assert sorted(p.name for p in candidates) == ["app.log.1.gz", "app.log.2.gz"]
    kept = []
    for gz in candidates:
        fd = decompressed(gz)
        assert fd is not None
        if verified(fd, state):
            kept.append(gz.name)
        os.close(fd)
    assert kept == ["app.log.1.gz"]
