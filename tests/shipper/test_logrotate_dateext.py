"""A ``--path`` file rotated by logrotate with ``dateext`` (RHEL, Fedora, Amazon Linux's default).

logrotate then names the old file ``app.log-20261206`` (``dateformat -%Y%m%d``), not
``app.log.1``; ``app.log-20261206.gz`` with ``compress`` (with ``delaycompress`` one rotation
later). Those names were not taken for the file's rotated generations: a shipper stopped across
such a rotation counted the unread rest of the old file lost (``deleted_unread``, a page) and
shipped only the new file's lines, though the rest lay right there; a ``copytruncate`` copy of
that name was not found to finish the truncated file from.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.discover import SourceSpec, compressed_siblings, discover_paths, rotated_siblings
from shipper.rotated import age
from shipper.tailer import Tailer
from tests.shipper.tailing import drain


def _write(path: Path, first: int, n: int) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(b"line %d\n" % i for i in range(first, first + n)))


def _gzip(path: Path) -> None:
    """logrotate's ``compress``: ``<path>.gz``, the plain file removed."""
    with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
        dst.write(src.read())
    path.unlink()


def _stopped_after(tmp_path: Path, n: int) -> tuple[SourceSpec, Path]:
    """``app.log`` with ``n`` lines, read and checkpointed by a shipper that then stopped."""
    path = tmp_path / "logs" / "app.log"
    path.parent.mkdir()
    spec = SourceSpec(f"file:{path}", path, "plain", "app")
    reg = Registry(tmp_path / "state")
    _write(path, 0, n)
    t = Tailer(spec, reg, "h", 65536)
    assert drain(t) == [f"line {i}" for i in range(n)]
    reg.save()
    t.close()
    reg.close()
    return spec, path


def _start(tmp_path: Path, spec: SourceSpec) -> tuple[list[str], list[str]]:
    """A new start: the lines it reads, the losses it counts."""
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    asyncio.run(t.prepare_off_loop())  # what the source's reader does before the start
    lines = drain(t)
    t.close()
    reg.save()
    reg.close()
    return lines, losses


def test_a_dateext_rotation_while_down_reads_the_unread_rest(tmp_path: Path) -> None:
    """Stopped at line 10; 30 more written; ``mv app.log app.log-20261206``, a new app.log
    with 10 lines. Every line from 10 on, once, in order, nothing counted lost (before: only
    the new file's 10, the rest counted ``deleted_unread``)."""
    spec, path = _stopped_after(tmp_path, 10)
    _write(path, 10, 30)
    os.rename(path, path.parent / "app.log-20261206")
    _write(path, 40, 10)
    lines, losses = _start(tmp_path, spec)
    assert lines == [f"line {i}" for i in range(10, 50)]
    assert losses == []
    assert _start(tmp_path, spec) == ([], [])  # read once


def test_a_dateext_compress_rotation_while_down_reads_the_rest_from_the_gz(
    tmp_path: Path,
) -> None:
    """As above with ``compress``: the rest is only in ``app.log-20261206.gz``."""
    spec, path = _stopped_after(tmp_path, 10)
    _write(path, 10, 30)
    rotated = path.parent / "app.log-20261206"
    os.rename(path, rotated)
    _gzip(rotated)
    _write(path, 40, 10)
    lines, losses = _start(tmp_path, spec)
    assert lines == [f"line {i}" for i in range(10, 50)]
    assert losses == []
    assert _start(tmp_path, spec) == ([], [])


def test_dateext_delaycompress_generations_are_read_oldest_first(tmp_path: Path) -> None:
    """Two rotations while down with ``delaycompress``: the checkpointed file is
    ``app.log-20261205.gz`` by then, the next one ``app.log-20261206`` (not compressed yet),
    both with the same modification time (a coarse clock): the copy's rest, then the next
    generation, then the live file."""
    spec, path = _stopped_after(tmp_path, 10)
    _write(path, 10, 30)
    older = path.parent / "app.log-20261205"
    os.rename(path, older)
    _write(path, 40, 5)
    newer = path.parent / "app.log-20261206"
    os.rename(path, newer)
    _gzip(older)
    st = newer.stat()
    os.utime(f"{older}.gz", ns=(st.st_atime_ns, st.st_mtime_ns))
    _write(path, 45, 10)
    lines, losses = _start(tmp_path, spec)
    assert lines == [f"line {i}" for i in range(10, 55)]
    assert losses == []


def test_a_copytruncate_copy_with_a_dateext_name_finishes_the_file(tmp_path: Path) -> None:
    """``copytruncate`` + ``dateext`` while the shipper runs and is behind: the copy
    ``app.log-20261206`` holds the lines not read yet; they are read from it, nothing counted
    lost (before: ``truncated_without_copy``, 30 lines missing)."""
    path = tmp_path / "app.log"
    spec = SourceSpec(f"file:{path}", path, "plain", "app")
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    _write(path, 0, 10)
    assert drain(t) == [f"line {i}" for i in range(10)]
    _write(path, 10, 30)
    shutil.copyfile(path, tmp_path / "app.log-20261206")
    with open(path, "r+b") as f:
        f.truncate(0)
    _write(path, 40, 10)
    assert drain(t) == [f"line {i}" for i in range(10, 50)]
    assert losses == []
    t.close()
    reg.close()


def test_dateext_names_are_siblings_and_other_files_are_not(tmp_path: Path) -> None:
    """Which names beside ``app.log`` are its rotated generations, and that a ``--path``
    glob of live files does not take a dated one for a source of its own."""
    for name in (
        "app.log",
        "app.log.1",
        "app.log-20261206",
        "app.log-2026120613",
        "app.log-20261206-1765000000",
        "app.log-20261205.gz",
        "app.log-old",
        "app.log-backup.tar",
        "app.log-",
        "app.log-1a",
        "app.log-20261204.tar.gz",
        "app.logger",
    ):
        (tmp_path / name).write_bytes(b"x\n")
    live = tmp_path / "app.log"
    assert sorted(p.name for p in rotated_siblings(live)) == [
        "app.log-20261206",
        "app.log-20261206-1765000000",
        "app.log-2026120613",
        "app.log.1",
    ]
    assert [p.name for p in compressed_siblings(live)] == ["app.log-20261205.gz"]
    assert [s.path.name for s in discover_paths((f"{tmp_path}/*.log",))] == ["app.log"]


def test_dateext_names_sort_by_their_date() -> None:
    """Files of the same modification time sort by name: dated names by their date, even one
    whose date ends in ``.<digits>`` (``-%Y%m%d.%H``), which is no ``.N`` counter (before,
    ``.10`` sorted as older than ``.09``); counted ``.N`` files (``dateext`` turned on later)
    come before them."""
    names = ["app.log-20261206.10", "app.log.1", "app.log-20261206.09", "app.log.2"]
    assert sorted(names, key=lambda n: age(0, Path(n))) == [
        "app.log.2",
        "app.log.1",
        "app.log-20261206.09",
        "app.log-20261206.10",
    ]


def test_a_dateext_generation_still_there_is_not_looked_for_in_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start decompresses the ``.gz`` copies a checkpointed file not in its folder may be in
    (``Tailer.prepare_off_loop``). Its look at the folder knew ``app.log`` and ``app.log.*``
    only: a generation logrotate had renamed ``app.log-20261205`` counted as gone, and an
    older ``app.log-20261204.gz`` with the same first line was decompressed at every start for
    nothing. The generation is read where it is, its lines once."""
    from shipper import resume

    path = tmp_path / "app.log"
    spec = SourceSpec("plain:test", path, "plain", "svc")
    banner = b"=== app starting ===\n"
    path.write_bytes(banner + b"a 1\n")
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    assert drain(t) == ["=== app starting ===", "a 1"]
    reg.save()
    t.close()
    reg.close()
    with open(path, "ab") as f:  # written while the shipper was down, then rotated
        f.write(b"a 2\n")
    os.rename(path, tmp_path / "app.log-20261205")
    Path(f"{path}-20261204.gz").write_bytes(gzip.compress(banner + b"a 1\nolder\n"))
    path.write_bytes(banner + b"b 1\n")
    planned: list[object] = []
    real = resume.prepare_held
    monkeypatch.setattr(resume, "prepare_held", lambda plan: planned.append(plan) or real(plan))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    asyncio.run(t.prepare_off_loop())
    assert drain(t) == ["a 2", "=== app starting ===", "b 1"]
    assert planned == []
    t.close()
    reg.close()
