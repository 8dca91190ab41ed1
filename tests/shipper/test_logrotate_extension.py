"""A ``--path`` file rotated by logrotate with ``extension .log`` (or ``addextension .log``).

logrotate then keeps the extension at the end of the rotated names: ``app.log`` becomes
``app-20261206.log`` with ``dateext`` (``app-20261206.log.gz`` with ``compress``) and
``app.1.log`` / ``app.1.log.gz`` without it (logrotate's man page: "mylog.foo rotated to
mylog.1.foo.gz"; its source puts the ``.N`` or the date between the name less the extension and
the extension, then the compression's). Those names were not taken for the file's rotated
generations: a shipper stopped across such a rotation counted the unread rest of the old file
lost (``deleted_unread``) though it lay right there, and a ``*.log`` glob took
``app-20261206.log`` and ``app.1.log`` for sources of their own (their lines shipped twice).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import shutil
from pathlib import Path

import pytest

from shipper import wire
from shipper.checkpoint import Registry
from shipper.discover import (
    Discoverer,
    SourceSpec,
    compressed_siblings,
    generation_name,
    rotated_siblings,
)
from shipper.rotated import age
from shipper.tailer import Tailer
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root, run_once
from tests.shipper.tailing import drain
from tests.shipper.test_logrotate_dateext import _gzip, _start, _stopped_after, _write


def test_an_extension_dateext_rotation_while_down_reads_the_unread_rest(tmp_path: Path) -> None:
    """Stopped at line 10; 30 more written; ``mv app.log app-20261206.log``, a new app.log
    with 10 lines. Every line from 10 on, once, in order, nothing counted lost (before: only
    the new file's 10, the rest counted ``deleted_unread``)."""
    spec, path = _stopped_after(tmp_path, 10)
    _write(path, 10, 30)
    os.rename(path, path.parent / "app-20261206.log")
    _write(path, 40, 10)
    lines, losses = _start(tmp_path, spec)
    assert lines == [f"line {i}" for i in range(10, 50)]
    assert losses == []
    assert _start(tmp_path, spec) == ([], [])  # read once


def test_an_extension_compress_rotation_while_down_reads_the_rest_from_the_gz(
    tmp_path: Path,
) -> None:
    """As above with ``compress``: the rest is only in ``app-20261206.log.gz``."""
    spec, path = _stopped_after(tmp_path, 10)
    _write(path, 10, 30)
    rotated = path.parent / "app-20261206.log"
    os.rename(path, rotated)
    _gzip(rotated)
    _write(path, 40, 10)
    lines, losses = _start(tmp_path, spec)
    assert lines == [f"line {i}" for i in range(10, 50)]
    assert losses == []
    assert _start(tmp_path, spec) == ([], [])


def _same_time(*paths: Path) -> None:
    """A coarse clock: every one of ``paths`` last modified in the same tick."""
    st = paths[0].stat()
    for p in paths[1:]:
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_numbered_extension_generations_are_read_oldest_first(tmp_path: Path) -> None:
    """Two rotations while down without ``dateext`` (``app.1.log`` moved on to ``app.2.log``,
    ``app.log`` to ``app.1.log``), both of the same modification time: ``.2`` is the older,
    read first from the checkpoint, then ``.1``, then the live file (before: ``app.2.log`` and
    ``app.1.log`` were no generations at all, and by name ``.1`` sorted first)."""
    spec, path = _stopped_after(tmp_path, 10)
    _write(path, 10, 30)
    os.rename(path, path.parent / "app.1.log")
    _write(path, 40, 5)
    os.rename(path.parent / "app.1.log", path.parent / "app.2.log")
    os.rename(path, path.parent / "app.1.log")
    _same_time(path.parent / "app.1.log", path.parent / "app.2.log")
    _write(path, 45, 10)
    lines, losses = _start(tmp_path, spec)
    assert lines == [f"line {i}" for i in range(10, 55)]
    assert losses == []


def test_numbered_extension_delaycompress_reads_the_copy_then_the_next(tmp_path: Path) -> None:
    """``compress`` + ``delaycompress``: the checkpointed file is ``app.2.log.gz`` by the
    next start, the one after it ``app.1.log`` (not compressed yet), both of the same time:
    the copy's rest, then ``app.1.log``, then the live file."""
    spec, path = _stopped_after(tmp_path, 10)
    _write(path, 10, 30)
    os.rename(path, path.parent / "app.1.log")
    _write(path, 40, 5)
    os.rename(path.parent / "app.1.log", path.parent / "app.2.log")
    os.rename(path, path.parent / "app.1.log")
    _gzip(path.parent / "app.2.log")
    _same_time(path.parent / "app.1.log", path.parent / "app.2.log.gz")
    _write(path, 45, 10)
    lines, losses = _start(tmp_path, spec)
    assert lines == [f"line {i}" for i in range(10, 55)]
    assert losses == []


def test_a_copytruncate_copy_keeping_the_extension_finishes_the_file(tmp_path: Path) -> None:
    """``copytruncate`` + ``extension .log`` + ``dateext`` while the shipper runs and is
    behind: the copy ``app-20261206.log`` holds the lines not read yet; they are read from it,
    nothing counted lost (before: ``truncated_without_copy``, 30 lines missing)."""
    path = tmp_path / "app.log"
    spec = SourceSpec(f"file:{path}", path, "plain", "app")
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    _write(path, 0, 10)
    assert drain(t) == [f"line {i}" for i in range(10)]
    _write(path, 10, 30)
    shutil.copyfile(path, tmp_path / "app-20261206.log")
    with open(path, "r+b") as f:
        f.truncate(0)
    _write(path, 40, 10)
    assert drain(t) == [f"line {i}" for i in range(10, 50)]
    assert losses == []
    t.close()
    reg.close()


#: Beside ``app.log`` and ``worker.log``: the names logrotate gives their generations with
#: ``extension .log`` (and without it), and files that only look alike.
_NAMES = (
    "app.log",
    "app.log.1",
    "app-20261206.log",
    "app-2026120613.log",
    "app-20261206-1765000000.log",
    "app-20261205.log.gz",
    "app.1.log",
    "app.2.log.gz",
    "app-backup.log",
    "app-v2.log",
    "app-1.log",
    "app-8080.log",
    "app-12345.log",
    "app-20261206.txt",
    "app.1.log.old",
    "app-20261204.log.tar.gz",
    "worker.log",
    "worker-1.log",
    "worker-12.log",
)


def test_extension_names_are_siblings_and_look_alikes_are_not(tmp_path: Path) -> None:
    for name in _NAMES:
        (tmp_path / name).write_bytes(b"x\n")
    live = tmp_path / "app.log"
    assert sorted(p.name for p in rotated_siblings(live)) == [
        "app-20261206-1765000000.log",
        "app-20261206.log",
        "app-2026120613.log",
        "app.1.log",
        "app.log.1",
    ]
    assert sorted(p.name for p in compressed_siblings(live)) == [
        "app-20261205.log.gz",
        "app.2.log.gz",
    ]
    assert rotated_siblings(tmp_path / "worker.log") == []
    assert not generation_name("app", "app-20261206.log")  # no extension to keep
    assert not generation_name(".log", "-20261206.log")  # a dot file has no extension


def test_a_glob_leaves_extension_generations_out_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--path '<dir>/*.log'`` matches ``app-20261206.log`` and ``app.1.log``: read as
    ``app.log``'s generations (one INFO), not sources of their own; ``app-backup.log``,
    ``app-v2.log``, ``app-1.log``, ``app-8080.log`` (a port, not a date) and ``worker-1.log``
    beside ``worker.log`` are sources."""
    for name in _NAMES:
        (tmp_path / name).write_bytes(b"x\n")
    found = Discoverer(empty_root(tmp_path, "d"), empty_root(tmp_path, "c"), (f"{tmp_path}/*.log",))
    with caplog.at_level(logging.INFO, logger="logq.shipper.discover"):
        for _ in range(2):
            scan = found.scan()
            assert sorted(s.path.name for s in scan.specs) == [
                "app-1.log",
                "app-12345.log",
                "app-8080.log",
                "app-backup.log",
                "app-v2.log",
                "app.log",
                "worker-1.log",
                "worker-12.log",
                "worker.log",
            ]
            assert scan.read_as == {
                f"file:{tmp_path / n}"
                for n in (
                    "app-20261206.log",
                    "app-2026120613.log",
                    "app-20261206-1765000000.log",
                    "app.1.log",
                )
            }
    said = [r.getMessage() for r in caplog.records if "rotated generations" in r.getMessage()]
    assert len(said) == 1, said


def test_a_glob_leaves_them_out_while_the_live_file_is_renamed(tmp_path: Path) -> None:
    """A pass between ``mv app.log app-20261206.log`` and the new ``app.log``: the
    generation is not a source (the live file had generations at the last pass)."""
    (tmp_path / "app.log").write_bytes(b"new\n")
    (tmp_path / "app.1.log").write_bytes(b"old\n")
    found = Discoverer(empty_root(tmp_path, "d"), empty_root(tmp_path, "c"), (f"{tmp_path}/*.log",))
    assert [s.path.name for s in found.scan().specs] == ["app.log"]
    os.rename(tmp_path / "app.log", tmp_path / "app-20261206.log")
    assert found.scan().specs == []


def test_extension_names_sort_by_their_counter_or_date() -> None:
    """Files of the same modification time sort by name: ``app.2.log`` before ``app.1.log``
    (counted, as ``app.log.2`` before ``app.log.1``), dated ones by their date after every
    counted one, a date ending in ``.<digits>`` (``-%Y%m%d.%H``) no counter; with ``.gz``
    as the callers strip it."""
    names = [
        "app-20261206.10.log",
        "app.1.log",
        "app-20261206.09.log",
        "app.10.log",
        "app.2.log",
        "app.log.3",
    ]
    assert sorted(names, key=lambda n: age(0, Path(n))) == [
        "app.10.log",
        "app.log.3",
        "app.2.log",
        "app.1.log",
        "app-20261206.09.log",
        "app-20261206.10.log",
    ]
    # Unchanged: Docker's, the kubelet's and logrotate's names without the extension kept.
    assert age(0, Path("x-json.log.2")) < age(0, Path("x-json.log.1"))
    assert age(0, Path("0.log.20261206-033000"))[1] == 0
    assert age(0, Path("app.log-20261206"))[1] == 0


def test_a_first_sighting_reads_extension_generations_first(tmp_path: Path) -> None:
    """A new source (no checkpoint, no run followed it) already rotated with ``extension``:
    its uncompressed generations are read first, oldest first, as ``app.log.1`` would be."""
    path = tmp_path / "app.log"
    spec = SourceSpec(f"file:{path}", path, "plain", "app")
    _write(path, 0, 3)
    os.rename(path, tmp_path / "app.2.log")
    _write(path, 3, 3)
    os.rename(path, tmp_path / "app.1.log")
    _same_time(tmp_path / "app.1.log", tmp_path / "app.2.log")
    _write(path, 6, 3)
    lines, losses = _start(tmp_path, spec)
    assert lines == [f"line {i}" for i in range(9)]
    assert losses == []


def test_a_gz_copy_keeping_the_extension_is_a_gz_sibling(tmp_path: Path) -> None:
    """The compressed copy with the extension before ``.gz`` is what a held file is read
    again from (:func:`compressed_siblings`), not ``app.log.gz``-style names only."""
    (tmp_path / "app.log").write_bytes(b"x\n")
    (tmp_path / "app.3.log.gz").write_bytes(gzip.compress(b"y\n"))
    assert [p.name for p in compressed_siblings(tmp_path / "app.log")] == ["app.3.log.gz"]


@pytest.mark.integration
def test_once_ships_each_line_once_under_the_live_file(tmp_path: Path, receiver: Receiver) -> None:
    """``--once --path '<dir>/*.log'`` over ``app.log``, ``app.1.log``, ``app-20261205.log``
    and a look-alike ``app-backup.log``: each line once, the generations' as ``app.log``'s
    (before: they were sources of their own too, shipped under their own names)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("app-20261205.log", "app.1.log", "app.log"):
        _write_as(logs / "app.log", name)
        if name != "app.log":
            os.rename(logs / "app.log", logs / name)
    _write_as(logs / "app-backup.log", "app-backup.log")
    run_once(tmp_path, receiver, "--path", f"{logs}/*.log")
    got = sorted((r[wire.KEY_LOG], r[wire.KEY_CONTAINER_NAME]) for _, _, r in receiver.records)
    assert got == sorted(
        [
            (f"{n} {i}", "app.log")
            for n in ("app-20261205.log", "app.1.log", "app.log")
            for i in range(3)
        ]
        + [(f"app-backup.log {i}", "app-backup.log") for i in range(3)]
    )


def _write_as(path: Path, what: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(b"%s %d\n" % (what.encode(), i) for i in range(3)))


def test_an_extension_generation_still_there_is_not_looked_for_in_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start's look at which checkpointed files are still in their folder
    (``Resume._present_inodes``) takes ``extension`` names too: a generation renamed
    ``app-20261205.log`` is read where it is, and an older ``app-20261204.log.gz`` with the
    same first line is not decompressed for it (before: the file counted as gone, the copy
    decompressed at every start)."""
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
    os.rename(path, tmp_path / "app-20261205.log")
    (tmp_path / "app-20261204.log.gz").write_bytes(gzip.compress(banner + b"a 1\nolder\n"))
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


def test_a_dateformat_starting_with_a_dot_keeps_the_extension_too(tmp_path: Path) -> None:
    """``dateformat .%Y-%m-%d`` (or ``.%Y%m%d``) with ``extension .log``: ``app.2026-12-06.log``
    is a generation, as ``app.log.2026-12-06`` is without the extension (``.`` and a digit);
    a glob of ``*.log`` leaves it out, and it sorts by its date."""
    for name in ("app.log", "app.2026-12-06.log", "app.20261205.log.gz", "app.v2.log"):
        (tmp_path / name).write_bytes(b"x\n")
    assert [p.name for p in rotated_siblings(tmp_path / "app.log")] == ["app.2026-12-06.log"]
    assert [p.name for p in compressed_siblings(tmp_path / "app.log")] == ["app.20261205.log.gz"]
    found = Discoverer(empty_root(tmp_path, "d"), empty_root(tmp_path, "c"), (f"{tmp_path}/*.log",))
    assert sorted(s.path.name for s in found.scan().specs) == ["app.log", "app.v2.log"]
    for names in (
        ["app.2026-12-07.log", "app.2026-12-06.log"],
        ["app.20261206.log", "app.20261205.log"],
        ["app.log.20261206", "app.log.20261205"],  # without the extension kept: the same
    ):
        assert sorted(names, key=lambda n: age(0, Path(n))) == sorted(names)
