"""A ``--path`` glob that also matches the rotated generations of the files it follows.

``--path '/var/log/app/*'`` or ``'*.log*'`` (common in Fluent Bit configs written before
``Exclude_Path``) matches ``app.log.1`` and logrotate's ``app.log-20261206`` beside
``app.log``. Each was a source of its own: its lines were shipped again under another source
(``app.log``'s source reads its generations itself when it needs them), and followed by path,
so each rotation put the next generation there to be read again from its start. Now a matched
file that is a generation of another matched file is left out (one INFO per glob), also while
the live file is missing between a rotation's rename and the new file; a generation whose live
file is not matched stays a source.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from shipper import wire
from shipper.checkpoint import Registry
from shipper.discover import Discoverer, SourceSpec, discover_paths, rotated_siblings
from shipper.tailer import Tailer
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root, run_once
from tests.shipper.tailing import drain


def _write(path: Path, first: int, n: int, what: str = "line") -> None:
    with open(path, "ab") as f:
        f.write(b"".join(b"%s %d\n" % (what.encode(), i) for i in range(first, first + n)))


def test_generations_a_glob_matches_are_not_sources(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``*`` over a live file, its generations (``.N``, dateext, compressed) and files that
    only look alike (``app.log.json``, a live file of its own maybe, and ``app.log`` beside
    ``app``): the live file and the look-alikes are sources, the generations not; a generation
    whose live file is not there (``db.log.1``) is one. Said once per glob."""
    for name in (
        "app.log",
        "app.log.1",
        "app.log.2.gz",
        "app.log.1.old",
        "app.log-20261206",
        "app.log-20261205.gz",
        "app.log-old",
        "app.log-1a",
        "app.log.json",
        "app.logger",
        "app",
        "db.log.1",
        "db.log.2",
    ):
        (tmp_path / name).write_bytes(b"x\n")
    found = Discoverer(empty_root(tmp_path, "d"), empty_root(tmp_path, "c"), (f"{tmp_path}/*",))
    with caplog.at_level(logging.INFO, logger="logq.shipper.discover"):
        for _ in range(2):
            scan = found.scan()
            assert sorted(s.path.name for s in scan.specs) == [
                "app",
                "app.log",
                "app.log-1a",
                "app.log-old",
                "app.log.json",
                "app.logger",
                "db.log.1",
                "db.log.2",
            ]
            assert scan.read_as == {
                f"file:{tmp_path / n}" for n in ("app.log.1", "app.log.1.old", "app.log-20261206")
            }
    said = [r.getMessage() for r in caplog.records if "rotated generations" in r.getMessage()]
    assert len(said) == 1, said
    assert "a glob that matches the live files only" in said[0]


def test_a_generation_stays_left_out_while_its_live_file_is_renamed(tmp_path: Path) -> None:
    """A pass between ``mv app.log app.log.1`` and the new ``app.log``: the live file is
    missing, its generations are still not sources (before: each was one)."""
    (tmp_path / "app.log").write_bytes(b"new\n")
    (tmp_path / "app.log.1").write_bytes(b"old\n")
    found = Discoverer(empty_root(tmp_path, "d"), empty_root(tmp_path, "c"), (f"{tmp_path}/*",))
    assert [s.path.name for s in found.scan().specs] == ["app.log"]
    os.rename(tmp_path / "app.log.1", tmp_path / "app.log.2")
    os.rename(tmp_path / "app.log", tmp_path / "app.log.1")
    scan = found.scan()
    assert scan.specs == []
    assert scan.read_as == {f"file:{tmp_path / 'app.log.1'}", f"file:{tmp_path / 'app.log.2'}"}
    (tmp_path / "app.log").write_bytes(b"newer\n")
    assert [s.path.name for s in found.scan().specs] == ["app.log"]
    # A new process never saw app.log: then the generation alone is a source.
    os.unlink(tmp_path / "app.log")
    assert [s.path.name for s in discover_paths((f"{tmp_path}/*.1",))] == ["app.log.1"]


def _once(tmp_path: Path, receiver: Receiver, pattern: str) -> subprocess.CompletedProcess[str]:
    return run_once(tmp_path, receiver, "--path", pattern)


def _received(receiver: Receiver) -> list[tuple[str, str]]:
    return sorted((r[wire.KEY_LOG], r[wire.KEY_CONTAINER_NAME]) for _, _, r in receiver.records)


@pytest.mark.integration
def test_once_ships_each_line_once_under_the_live_file(tmp_path: Path, receiver: Receiver) -> None:
    """``--once --path '<dir>/*'`` over ``app.log``, ``app.log.1`` and ``app.log-20261205``:
    each line once, as ``app.log``'s (before: 15 lines for 9, the generations' twice)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("app.log-20261205", "app.log.1", "app.log"):
        _write(logs / "app.log", 0, 3, name)
        if name != "app.log":
            os.rename(logs / "app.log", logs / name)
    _once(tmp_path, receiver, f"{logs}/*")
    assert _received(receiver) == sorted(
        (f"{name} {i}", "app.log")
        for name in ("app.log-20261205", "app.log.1", "app.log")
        for i in range(3)
    )


@pytest.mark.integration
def test_a_generation_shipped_before_is_not_shipped_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A state from before: ``app.log`` and ``app.log.1`` both read to their end, each under
    its own source. While stopped: 5 more lines, a rotation, 4 lines in the new file. The next
    start ships those 9, once, as ``app.log``'s, nothing counted lost, and starts no source
    for the generations (before: one each, under the old keys)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    live, gen = logs / "app.log", logs / "app.log.1"
    _write(live, 0, 10, "old")
    os.rename(live, gen)
    _write(live, 0, 10)
    reg = Registry(tmp_path / "state")
    for path in (gen, live):
        t = Tailer(SourceSpec(f"file:{path}", path, "plain", "app"), reg, "h", 65536)
        drain(t)
        t.close()
    reg.save()
    reg.close()
    _write(live, 10, 5)
    os.rename(gen, logs / "app.log.2")
    os.rename(live, gen)
    _write(live, 15, 4)
    done = _once(tmp_path, receiver, f"{logs}/*")
    assert _received(receiver) == sorted((f"line {i}", "app.log") for i in range(10, 19))
    assert "level=warning" not in done.stderr, done.stderr[-3000:]
    # The generations are not sources (before: app.log.1 and app.log.2 were, each reading
    # nothing here only because the checkpoints of their files lay under app.log's source).
    assert "sources=1 " in done.stderr, done.stderr[-3000:]


def test_numbered_instances_are_sources_not_generations(tmp_path: Path) -> None:
    """Files of numbered instances without an extension (``worker``, ``worker-1``,
    ``worker-2``: one per process) are live files of their own, not ``worker``'s dateext
    generations: a ``-`` and fewer than four digits is no date. Before, ``worker-1`` and
    ``worker-2`` were left out of a ``*`` glob as generations and their lines never shipped
    (``worker``'s source never reads them: they are not its rotated files)."""
    for name in ("worker", "worker-1", "worker-2", "worker-12", "worker-20261206"):
        (tmp_path / name).write_bytes(b"x\n")
    found = Discoverer(empty_root(tmp_path, "d"), empty_root(tmp_path, "c"), (f"{tmp_path}/*",))
    assert sorted(s.path.name for s in found.scan().specs) == [
        "worker",
        "worker-1",
        "worker-12",
        "worker-2",
    ]
    assert sorted(p.name for p in rotated_siblings(tmp_path / "worker")) == ["worker-20261206"]
