"""Driving a :class:`shipper.tailer.Tailer` in-process, as the shipper's source loop does."""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

import pytest

from shipper.birth import birth_time
from shipper.cursor import Chunk
from shipper.discover import SourceSpec
from shipper.fingerprint import fingerprint
from shipper.opening import source_id
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line


def set_clock(monkeypatch: pytest.MonkeyPatch, clock: list[float]) -> None:
    """Make every part of :class:`Tailer` read ``clock[0]`` as the monotonic time, so backoffs
    and waits pass when the test moves it. The parts live in several modules (see
    :mod:`shipper.tailer`), each with its own ``time``: all of them are patched."""
    fake = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    parts = {sys.modules[cls.__module__] for cls in Tailer.__mro__}
    for module in parts:
        if getattr(module, "time", None) is time:
            monkeypatch.setattr(module, "time", fake)


def fresh_process(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A tailer clock at 1000 (see :func:`set_clock`): what the tests of restarts and
    rotations start from. What a process remembers of the sources it followed is in its
    :class:`~shipper.checkpoint.Registry` (``followed``): a new one is a new process."""
    now = [1000.0]
    set_clock(monkeypatch, now)
    return now


def create_on_inode(path: Path, content: bytes, ino: int) -> None:
    """Create ``path`` with ``content`` on inode ``ino``, just freed, as a file system does when
    nothing else takes it first (ext4 hands out the lowest free inode of the group: files are
    created until one gets it, the others deleted). Skips where the file system never does."""
    spares = []
    for i in range(200):
        spare = path.with_name(f".spare{i}")
        spare.write_bytes(content)
        if spare.stat().st_ino == ino:
            spare.rename(path)
            break
        spares.append(spare)
    else:
        pytest.skip("this file system did not hand the freed inode to a new file")
    for spare in spares:
        spare.unlink()


def spec_for(path: Path, fmt: str = "docker") -> SourceSpec:
    return SourceSpec(key=f"test:{path.name}", path=path, format=fmt, service="svc")


def append_docker(path: Path | str, start: int, n: int, what: str = "line") -> None:
    """Docker json-file lines ``"<what> <i>"`` for i in ``start .. start + n - 1``."""
    with open(path, "ab") as f:
        f.write(b"".join(docker_line(f"{what} {i}", i) for i in range(start, start + n)))


def new_source_id(host: str, path: Path, epoch: int = 0) -> str:
    """The ``source_id`` a shipper of ``host`` gives the file at ``path`` when it first sees it
    (with its birth time, where the file system records one)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return source_id(host, os.fstat(fd).st_ino, fingerprint(fd) or "", epoch, birth_time(fd))
    finally:
        os.close(fd)


def commit(t: Tailer, chunk: Chunk) -> None:
    """What an ack of ``chunk`` does."""
    chunk.cursor.outstanding += 1
    last = chunk.lines.offsets[-1] if chunk.lines.offsets else 0
    t.commit(chunk.cursor, chunk.resume, last)


def drain(t: Tailer, ack: bool = True) -> list[str]:
    """Read until nothing changes; acknowledge every chunk (unless ``ack`` is False)."""
    return [log for log, _, _ in drain_sent(t, ack)]


def drain_sent(t: Tailer, ack: bool = True) -> list[tuple[str, int, str]]:
    """:func:`drain`, with each line's offset and source id (what the aggregator dedups by)."""
    out: list[tuple[str, int, str]] = []
    while (chunk := t.read()) is not None or t.poll():
        if chunk is None:
            continue
        lines, sid = chunk.lines, chunk.cursor.source_id
        out += [(log, off, sid) for log, off in zip(lines.logs, lines.offsets, strict=True)]
        if ack:
            commit(t, chunk)
        else:
            chunk.cursor.outstanding += 1
    return out


def rotate_docker(path: Path, max_file: int = 3, compress: bool = False) -> None:
    """Docker's json-file rotation with ``max-file``: the oldest generation is deleted. With
    ``compress``, the rotated copies are ``.N.gz``: the live file becomes ``.1`` and is
    compressed to ``.1.gz`` at once (the plain copy removed)."""
    import gzip
    import os

    gz = ".gz" if compress else ""
    for n in range(max_file - 1, 0, -1):
        older = Path(f"{path}.{n}{gz}")
        if older.exists():
            if n == max_file - 1:
                older.unlink()
            else:
                os.replace(older, f"{path}.{n + 1}{gz}")
    os.replace(path, f"{path}.1")
    if compress:
        rotated = Path(f"{path}.1")
        Path(f"{path}.1.gz").write_bytes(gzip.compress(rotated.read_bytes()))
        rotated.unlink()


def aggregator_keeps(sent: list[tuple[str, int, str]]) -> list[str]:
    """The lines of ``sent`` (as :func:`drain_sent` gives them) the aggregator stores: per
    ``source_id``, a record only when its offset is above the highest stored before."""
    kept: list[str] = []
    highest: dict[str, int] = {}
    for log, offset, sid in sent:
        if offset > highest.get(sid, -1):
            highest[sid] = offset
            kept.append(log)
    return kept
