"""Driving a :class:`shipper.tailer.Tailer` in-process, as the shipper's source loop does."""

from __future__ import annotations

import os
import shutil
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from shipper.birth import birth_time
from shipper.checkpoint import Registry
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


class InodeTaken(AssertionError):
    """The inode a test meant to create a file on stayed taken by another file."""


def create_on_inode(
    path: Path,
    content: bytes,
    ino: int,
    *,
    patience: float = 5.0,
    each_probe: Callable[[int], object] | None = None,
) -> None:
    """Create ``path`` with ``content`` on inode ``ino``, just freed, as logrotate's ``create``
    gets it: ext4 hands out the lowest free inode of the directory's group.

    Probe files are created until one lands on ``ino``. One below it (a lower inode freed
    meanwhile) is held, so the next probe goes higher. One above it means another process took
    ``ino`` (parallel test workers, anything creating files on the file system): the probe is
    deleted and the next one tries again, since such files are mostly short-lived. After
    ``patience`` seconds the test fails with :class:`InodeTaken` (never skips): its scenario
    cannot be built. ``each_probe`` is called with the count of probes made (for the tests of
    this helper)."""
    held: list[Path] = []
    deadline = time.monotonic() + patience
    probes = 0
    try:
        while True:
            probe = path.with_name(f".probe{len(held)}")
            probe.write_bytes(content)
            got = probe.stat().st_ino
            probes += 1
            if got == ino:
                probe.rename(path)
                return
            if got < ino:
                held.append(probe)
            else:
                probe.unlink()
            if time.monotonic() > deadline:
                if not reuses_freed_inodes(path.parent):
                    pytest.skip(
                        f"the file system of {path.parent} never hands a freed inode to a new "
                        "file (tmpfs, btrfs): the scenario cannot happen there. Run the tests "
                        "with --basetemp on an ext4 file system to cover it."
                    )
                raise InodeTaken(
                    f"inode {ino} freed under {path.parent} was not handed back to a new file "
                    f"within {patience} s ({probes} tries): another file holds it, or this file "
                    "system does not reuse freed inodes (tmpfs, btrfs). Run the tests with "
                    "--basetemp on an ext4 file system."
                )
            if each_probe is not None:
                each_probe(probes)
            if got > ino:
                time.sleep(0.001)  # let whoever holds ``ino`` run, and maybe delete it
    finally:
        for probe in held:
            probe.unlink()


_REUSE_SEEN: dict[int, bool] = {}


def _reuse_seen(folder: Path) -> bool:
    for trial in range(5):
        d = folder / f".reuse-probe-{os.getpid()}-{trial}"
        d.mkdir()
        try:
            first = d / "first"
            first.write_bytes(b"x")
            ino = first.stat().st_ino
            first.unlink()
            for i in range(64):
                f = d / f"f{i}"
                f.write_bytes(b"x")
                if f.stat().st_ino == ino:
                    return True
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return False


def reuses_freed_inodes(folder: Path) -> bool:
    """Whether the file system of ``folder`` hands a freed inode to a new file at all (ext4 and
    xfs do; tmpfs and btrfs never do): five tries in private folders, once per file system.
    Only asked when :func:`create_on_inode` gave up, to tell "another file holds it" (a
    failure) from "it can never happen here" (a skip)."""
    dev = folder.stat().st_dev
    if dev not in _REUSE_SEEN:
        _REUSE_SEEN[dev] = _reuse_seen(folder)
    return _REUSE_SEEN[dev]


def on_a_freed_inode(scenario: Callable[[Path], None], tmp_path: Path, attempts: int = 3) -> None:
    """Run ``scenario``, which frees an inode and creates a file on it (:func:`create_on_inode`),
    in a fresh directory under ``tmp_path``; again in another one when another file kept that
    inode (:class:`InodeTaken`: a file a parallel test created in the same inode group while the
    scenario had the inode free). Up to ``attempts`` runs, then the test fails: never skips."""
    taken: list[str] = []
    for n in range(1, attempts + 1):
        d = tmp_path / f"run{n}"
        d.mkdir()
        try:
            scenario(d)
            return
        except InodeTaken as e:
            taken.append(str(e))
    raise InodeTaken(f"the scenario lost its freed inode in all {attempts} runs: {taken[-1]}")


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


def stop_behind_at_a_compress_rotation(path: Path) -> None:
    """The shipper behind at its stop in the Docker file ``path``, which Docker then rotates
    with ``compress``: ``acked`` shipped, ``in flight`` sent and never acknowledged, the file
    gzipped to ``.1.gz`` and the next one written (``next``); the registry (``state`` beside
    ``path``) saved and closed, nothing else written, as at a ``kill -9``. The copy ends in
    whole lines: no split line is open in it."""
    reg = Registry(path.parent / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    path.write_bytes(docker_line("acked", 0))
    assert drain(t) == ["acked"]
    with open(path, "ab") as f:
        f.write(docker_line("in flight", 1))
    assert drain(t, ack=False) == ["in flight"]
    rotate_docker(path, max_file=3, compress=True)
    path.write_bytes(docker_line("next", 2))
    reg.save()
    t.close()
    reg.close()
