"""A container the shipper has never seen that already rotated (a burst in its first second, or
started during a shipper restart or rollout): its rotated files hold its first lines."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

import shipper.tailer as tailer_module
from shipper import checkpoint as checkpoint_module
from shipper import resume
from shipper.checkpoint import Registry
from shipper.cursor import Chunk
from shipper.discover import SourceSpec
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root
from tests.shipper.tailing import commit, drain, fresh_process


def spec_for(path: Path) -> SourceSpec:
    return SourceSpec(key=f"test:{path}", path=path, format="docker", service="svc")


def write(path: Path | str, first: int, n: int, what: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(docker_line(f"{what} {i}", i) for i in range(first, first + n)))


def previous_run(state: Path, at: float) -> None:
    """A registry a previous run saved at ``at`` (it knew nothing of this container)."""
    reg = Registry(state)
    reg.save()
    reg.close()
    os.utime(state / "checkpoints.json", (at, at))


def set_wall(monkeypatch: pytest.MonkeyPatch, start: float, *modules: ModuleType) -> list[float]:
    """Make the tailer and resume modules (and ``modules``) read ``wall[0]`` as the wall
    clock, from ``start``: the test moves it."""
    wall = [start]
    for module in (resume, tailer_module, *modules):
        monkeypatch.setattr(module.time, "time", lambda: wall[0])
    return wall


def let_go(t: Tailer) -> list[Chunk]:
    """The source's runner ends: what is open is read to its end (each chunk acknowledged)
    and let go. The chunks it read."""
    chunks: list[Chunk] = []
    while t.cursors:
        if (chunk := t.read()) is not None:
            chunks.append(chunk)
            commit(t, chunk)
        t.poll(finishing=True)
    return chunks


def stop(t: Tailer, reg: Registry) -> None:
    """The run stops: its tailer closed, its registry saved a last time and closed."""
    t.close()
    reg.save()
    reg.close()


def start(state: Path, path: Path) -> tuple[Registry, Tailer]:
    """A run's start on the registry in ``state``: its tailer of ``path``."""
    reg = Registry(state)
    return reg, Tailer(spec_for(path), reg, "h", 65536)


@pytest.mark.parametrize("first_run", [True, False])
def test_rotated_files_of_a_new_source_are_read_first(tmp_path: Path, first_run: bool) -> None:
    path = tmp_path / "c-json.log"
    if not first_run:
        previous_run(tmp_path / "state", time.time() - 60)
    write(f"{path}.2", 0, 300, "oldest")
    write(f"{path}.1", 0, 2000, "first-file")
    os.utime(f"{path}.2", (time.time() - 10, time.time() - 10))
    write(path, 0, 1, "second-file")
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == (
        [f"oldest {i}" for i in range(300)]
        + [f"first-file {i}" for i in range(2000)]
        + ["second-file 0"]
    )
    assert losses == []
    t.close()
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == []  # a restart reads none of them again
    reg.close()


@pytest.mark.parametrize("older_shipper", [False, True], ids=["followed", "older-registry"])
def test_rotated_files_older_than_the_previous_run_are_skipped(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    older_shipper: bool,
) -> None:
    """Written while a previous run followed the source: that run read them (the container
    stopped, its files were finished and forgotten, now it is back). Skipped too, with a
    WARNING, when the registry was saved by a shipper that kept no record of the sources it
    followed (no ``followed`` part): written before its final save."""
    fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    write(f"{path}.1", 0, 5, "read-before")
    old = time.time() - 3600
    os.utime(f"{path}.1", (old, old))
    reg, t = start(tmp_path / "state", path)
    assert drain(t) == [f"read-before {i}" for i in range(5)]
    assert let_go(t) == []  # the container stopped: its checkpoint forgotten
    stop(t, reg)
    assert reg.items() == []
    if older_shipper:
        doc = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
        del doc["followed"]
        (tmp_path / "state" / "checkpoints.json").write_text(json.dumps(doc))
    write(path, 0, 2, "live")
    fresh_process(monkeypatch)  # the restart; the container is back
    reg, t = start(tmp_path / "state", path)
    with caplog.at_level(logging.INFO, logger="logq.shipper.tailer"):
        assert drain(t) == ["live 0", "live 1"]
    (skip,) = [r for r in caplog.records if "not reading rotated files" in r.getMessage()]
    assert skip.levelno == (logging.WARNING if older_shipper else logging.INFO)
    t.close()
    reg.close()


@pytest.mark.integration
def test_first_start_ships_rotated_files_of_every_container(tmp_path: Path) -> None:
    """The auditor's host: containers each with a rotated ``.1`` and a live file when the
    shipper first starts -- every line arrives, the rotated ones first."""
    root = tmp_path / "containers"
    expected: dict[str, list[str]] = {}
    for i in range(20):
        cid = f"{i:064x}"
        log = make_container(root, cid, f"svc{i}", labels={"logq.service": f"svc{i}"})
        write(f"{log}.1", 0, 3, f"rot {i}")
        write(log, 3, 5, f"live {i}")
        expected[f"svc{i}"] = [f"rot {i} {j}" for j in range(3)] + [
            f"live {i} {j}" for j in range(3, 8)
        ]
    receiver = Receiver()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "shipper.daemon", "--aggregator", receiver.address,
             "--docker-root", str(root), "--cri-root", str(empty_root(tmp_path)),
             "--state-dir", str(tmp_path / "state"), "--once"],
            capture_output=True, text=True, timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        got: dict[str, list[str]] = {}
        for _, _, r in receiver.records:
            got.setdefault(r["service"], []).append(r["log"])
    finally:
        receiver.close()
    assert got == expected


def test_a_source_found_again_does_not_read_its_rotated_files_twice(tmp_path: Path) -> None:
    """Discovery lost the source for a moment (its runner drained and forgot its files) and
    found it again: the new tailer is not a first sighting."""
    path = tmp_path / "c-json.log"
    write(f"{path}.1", 0, 5, "rotated")
    old = time.time() - 30
    os.utime(f"{path}.1", (old, old))
    write(path, 0, 2, "live")
    reg, t = start(tmp_path / "state", path)
    assert drain(t) == [f"rotated {i}" for i in range(5)] + ["live 0", "live 1"]
    assert let_go(t) == []  # the source is gone: drain and release
    t.close()
    assert reg.items() == []
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert "rotated 0" not in drain(t)
    reg.close()


def test_rotated_files_of_the_same_time_are_read_in_rotation_order(tmp_path: Path) -> None:
    """Coarse file times can tie: Docker's ``.3`` is older than its ``.2``, older than ``.1``."""
    path = tmp_path / "c-json.log"
    for n in (1, 2, 3, 10):
        write(f"{path}.{n}", 0, 2, f"gen-{n}")
    now = time.time_ns()
    for n in (1, 2, 3, 10):
        os.utime(f"{path}.{n}", ns=(now, now))
    write(path, 0, 1, "live")
    reg, t = start(tmp_path / "state", path)
    got = drain(t)
    assert [g.split()[0] for g in got[::2]] == ["gen-10", "gen-3", "gen-2", "gen-1", "live"]
    reg.close()


def test_rotated_files_of_a_source_the_previous_run_never_followed_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous run followed container A only: B started while it ran but was not
    followed before it stopped (found after its last discovery pass, during a rollout's
    drain, or waiting for a file descriptor), and B rotated before that run's final save.
    Nothing of B was ever read: its rotated file is read at the restart, before its live
    file, like its live file from its start (it was skipped, its lines lost uncounted)."""
    fresh_process(monkeypatch)
    a, b = tmp_path / "a-json.log", tmp_path / "b-json.log"
    write(a, 0, 3, "a")
    write(f"{b}.1", 0, 4, "b-early")
    early = time.time() - 60
    os.utime(f"{b}.1", (early, early))
    write(b, 4, 2, "b-later")
    reg, t = start(tmp_path / "state", a)
    assert drain(t) == [f"a {i}" for i in range(3)]
    stop(t, reg)  # the previous run's final save: after B's rotation
    fresh_process(monkeypatch)  # the restart
    reg, t = start(tmp_path / "state", b)
    assert drain(t) == [f"b-early {i}" for i in range(4)] + ["b-later 4", "b-later 5"]
    t.close()
    reg.close()


def test_rotated_files_a_run_looked_for_but_never_opened_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous run started B's tailer before B wrote anything (no live file yet: nothing
    opened, no checkpoint). B then wrote a burst and rotated, and the run stopped before B's
    reader looked again (a stop ends the reader without a last poll). That run followed B, but
    never opened ``.1``: its lines are read at the restart, not skipped as "read then"."""
    fresh_process(monkeypatch)
    wall = set_wall(monkeypatch, time.time() - 100)
    b = tmp_path / "b-json.log"
    reg, t = start(tmp_path / "state", b)
    assert drain(t) == []  # started: B has no file yet
    write(f"{b}.1", 0, 4, "b-early")  # the burst, 50 s later, rotated
    burst = wall[0] + 50
    os.utime(f"{b}.1", (burst, burst))
    write(b, 4, 2, "b-later")
    wall[0] += 90
    stop(t, reg)  # the reader ends at once
    fresh_process(monkeypatch)  # the restart
    reg, t = start(tmp_path / "state", b)
    assert drain(t) == [f"b-early {i}" for i in range(4)] + ["b-later 4", "b-later 5"]
    t.close()
    reg.close()


def test_rotated_files_read_after_the_start_are_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous run followed C for a while: C's file was rotated after the start and read
    to its end, then C stopped and its checkpoints were forgotten. When C is back after a
    restart, that rotated file was read: skipped, as written before the run last had all of
    C's files in hand (its live file at its path, nothing before it left), not only before
    that run's start."""
    clock = fresh_process(monkeypatch)
    wall = set_wall(monkeypatch, time.time() - 100)
    path = tmp_path / "c-json.log"
    write(path, 0, 2, "first")
    reg, t = start(tmp_path / "state", path)
    assert drain(t) == ["first 0", "first 1"]
    path.rename(f"{path}.1")  # rotated 10 s after the start
    rotated = wall[0] + 10
    os.utime(f"{path}.1", (rotated, rotated))
    write(path, 2, 1, "second")
    wall[0] += 30
    assert drain(t) == ["second 2"]
    clock[0] += 30  # past the wait for a writer still appending to the renamed file
    assert drain(t) == []
    assert let_go(t) == []  # C stopped: its checkpoints forgotten
    t.close()
    reg._finished.clear()  # a later save: files finished moments ago are no longer in it
    reg.save()
    reg.close()
    assert reg.items() == []
    path.unlink()
    write(path, 0, 1, "back")
    fresh_process(monkeypatch)  # the restart; C is back
    reg, t = start(tmp_path / "state", path)
    assert drain(t) == ["back 0"]
    t.close()
    reg.close()


@pytest.mark.parametrize("saved", [1e20, float("inf"), "future"])
def test_a_followed_time_later_than_now_skips_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved: float | str
) -> None:
    """A ``followed`` time later than the start's clock (the wall clock stepped back since the
    previous run, or a value no run wrote) made every rotated file look written before it:
    all were skipped unread ("read then"), or the start failed formatting the time. Such an
    entry is dropped: the source's rotated files are read as those of one no run followed."""
    fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    write(f"{path}.1", 0, 2, "rotated")
    write(path, 2, 1, "live")
    state = tmp_path / "state"
    Registry(state).close()  # the state folder and its lock
    at = time.time() + 3600 if saved == "future" else saved
    doc = {"version": 1, "files": {}, "followed": {spec_for(path).key: at}}
    (state / "checkpoints.json").write_text(json.dumps(doc))
    reg, t = start(state, path)
    assert drain(t) == ["rotated 0", "rotated 1", "live 2"]
    t.close()
    reg.close()


def test_rotated_files_of_a_source_found_again_that_its_tailer_never_opened_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one process: B's tailer started before B wrote anything (nothing opened), B wrote a
    burst and rotated, and B's runner ended before its reader looked again (B excluded, or
    its container stopped, its runner closed at once). Discovery finds B again in the same
    process: ``.1`` was never opened, its lines are read -- not skipped as "read then"
    because the closed tailer had looked at B (its look said nothing of ``.1``)."""
    fresh_process(monkeypatch)
    wall = set_wall(monkeypatch, time.time() - 100)
    b = tmp_path / "b-json.log"
    reg, t = start(tmp_path / "state", b)
    assert drain(t) == []  # started: B has no file yet
    wall[0] += 20
    assert drain(t) == []  # looked again: still none
    write(f"{b}.1", 0, 4, "b-early")  # the burst, 50 s after the start, rotated
    burst = wall[0] + 30
    os.utime(f"{b}.1", (burst, burst))
    write(b, 4, 2, "b-later")
    wall[0] += 70
    t.close()  # the runner ends: no last look
    t = Tailer(spec_for(b), reg, "h", 65536)  # found again, in the same process
    assert drain(t) == [f"b-early {i}" for i in range(4)] + ["b-later 4", "b-later 5"]
    t.close()
    reg.close()


def test_a_file_rotated_as_a_source_s_runner_ended_is_read_when_it_is_found_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one process: C was followed; its container wrote a burst and rotated (the file
    followed renamed ``.1``, a new live file written), and C's runner ended right then
    (discovery lost C: it drained the file it had open and let go; the new live file was
    never opened). C is found again after another rotation: that live file, now ``.1``,
    holds lines no tailer read -- read, not skipped because the ended tailer had looked at
    C after it was written. The renamed file read to its end is not read again."""
    fresh_process(monkeypatch)
    wall = set_wall(monkeypatch, time.time() - 100)
    path = tmp_path / "c-json.log"
    write(path, 0, 2, "first")
    reg, t = start(tmp_path / "state", path)
    assert drain(t) == ["first 0", "first 1"]
    wall[0] += 10
    write(path, 2, 3, "burst")
    os.utime(path, (wall[0], wall[0]))
    path.rename(f"{path}.1")  # the burst rotated
    write(path, 0, 2, "next")
    os.utime(path, (wall[0], wall[0]))
    wall[0] += 5
    read = let_go(t)  # the runner ends
    assert [log for chunk in read for log in chunk.lines.logs] == ["burst 2", "burst 3", "burst 4"]
    t.close()
    os.rename(f"{path}.1", f"{path}.2")  # rotated again before C is found again
    path.rename(f"{path}.1")
    write(path, 0, 1, "live")
    wall[0] += 20
    t = Tailer(spec_for(path), reg, "h", 65536)  # found again, in the same process
    assert drain(t) == ["next 0", "next 1", "live 0"]
    t.close()
    reg.close()


def test_rotated_files_of_a_source_found_again_are_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one process: C was followed (its file read, then rotated and the copy read to its
    end), C's container stopped and its runner drained and forgot its files; C is found again,
    its rotated file still there. Nothing is read twice: the rotated file was in hand when
    the tailer last found C's live file at its path, with nothing before it left to read."""
    clock = fresh_process(monkeypatch)
    wall = set_wall(monkeypatch, time.time() - 100)
    path = tmp_path / "c-json.log"
    write(path, 0, 2, "first")
    reg, t = start(tmp_path / "state", path)
    assert drain(t) == ["first 0", "first 1"]
    wall[0] += 10
    path.rename(f"{path}.1")
    rotated = wall[0]
    os.utime(f"{path}.1", (rotated, rotated))
    write(path, 2, 1, "second")
    wall[0] += 20
    assert drain(t) == ["second 2"]
    clock[0] += 30  # past the wait for a writer still appending to the renamed file
    wall[0] += 30
    assert drain(t) == []
    assert let_go(t) == []  # C stopped: its checkpoints forgotten
    t.close()
    assert reg.items() == []
    wall[0] += 30
    t = Tailer(spec_for(path), reg, "h", 65536)  # found again, in the same process
    assert drain(t) == []  # nor its live file, read to its end and finished
    t.close()
    reg.close()


def test_a_file_written_as_its_source_ended_is_not_read_again_when_it_is_found_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one process: C was followed; it wrote more lines and its file was renamed away
    before the reader looked again (no full look after those writes), and not made again:
    C's runner drained the renamed file to its end and ended. C's file is made again later:
    the renamed file, read whole by the ended tailer, is not read again (every line of it
    sent twice) -- nor after a restart that finds C without checkpoints."""
    clock = fresh_process(monkeypatch)
    wall = set_wall(monkeypatch, time.time() - 1000, checkpoint_module)
    path = tmp_path / "c-json.log"
    write(path, 0, 2, "first")
    state = tmp_path / "state"
    reg, t = start(state, path)
    assert drain(t) == ["first 0", "first 1"]
    wall[0] += 10
    write(path, 2, 3, "burst")  # written after the last full look
    os.utime(path, (wall[0], wall[0]))
    path.rename(f"{path}.1")  # renamed away, not made again: the source is gone
    wall[0] += 1
    clock[0] += 1
    read = let_go(t)  # the runner ends
    assert [log for chunk in read for log in chunk.lines.logs] == ["burst 2", "burst 3", "burst 4"]
    t.close()
    assert reg.items() == []
    wall[0] += 60  # long past the memory of files finished moments ago
    clock[0] += 60
    reg.save()
    write(path, 0, 1, "back")
    t = Tailer(spec_for(path), reg, "h", 65536)  # found again, in the same process
    assert drain(t) == ["back 0"]
    t.close()
    reg.close()
    path.unlink()
    write(path, 0, 1, "again")
    reg, t = start(state, path)  # a restart finds C without checkpoints
    assert drain(t) == ["again 0"]
    t.close()
    reg.close()


def test_a_file_written_after_its_ended_tailer_let_it_go_is_read_when_found_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the writer never reopened: it appended to the renamed file after the
    ended tailer had drained it and let it go. Found again, that file is read again (the
    lines read before go out twice, the aggregator drops them by offset), not skipped with
    the lines written after it was let go."""
    clock = fresh_process(monkeypatch)
    wall = set_wall(monkeypatch, time.time() - 1000, checkpoint_module)
    path = tmp_path / "c-json.log"
    write(path, 0, 2, "first")
    os.utime(path, (wall[0], wall[0]))
    reg, t = start(tmp_path / "state", path)
    assert drain(t) == ["first 0", "first 1"]
    wall[0] += 10
    path.rename(f"{path}.1")
    clock[0] += 10
    wall[0] += 1
    assert let_go(t) == []  # the runner ends
    write(f"{path}.1", 2, 1, "late")  # its writer still appends to it
    os.utime(f"{path}.1", (wall[0], wall[0]))
    wall[0] += 1
    t.close()
    wall[0] += 60
    clock[0] += 60
    write(path, 0, 1, "back")
    t = Tailer(spec_for(path), reg, "h", 65536)  # found again, in the same process
    assert drain(t) == ["first 0", "first 1", "late 2", "back 0"]
    t.close()
    reg.close()


def _gzip_docker(path: Path, first: int, n: int, what: str) -> None:
    """Docker ``compress: true``: a rotated file gzipped at once, only its ``.gz`` left."""
    with gzip.open(path, "wb") as f:
        f.write(b"".join(docker_line(f"{what} {i}", i) for i in range(first, first + n)))


@pytest.mark.parametrize("first_run", [True, False])
def test_compressed_rotated_files_of_a_new_source_are_not_read_and_it_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, first_run: bool
) -> None:
    """A new container (no run followed it) already rotated twice, the older file compressed
    (Docker ``compress``, the kubelet): the uncompressed ``.1`` and the live file are read,
    the ``.2.gz`` is not (a compressed file is read only from a checkpoint held in it: see
    ``Resume._first_seen`` for why), and an INFO says how many were left (before: nothing
    said, its lines gone unnoticed)."""
    path = tmp_path / "c-json.log"
    if not first_run:
        previous_run(tmp_path / "state", time.time() - 60)
    _gzip_docker(Path(f"{path}.2.gz"), 0, 3, "compressed")
    write(f"{path}.1", 3, 3, "rotated")
    write(path, 6, 2, "live")
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)
    with caplog.at_level(logging.INFO, logger="logq.shipper.tailer"):
        assert drain(t) == [f"rotated {i}" for i in range(3, 6)] + ["live 6", "live 7"]
    (said,) = [r for r in caplog.records if "compressed rotated files" in r.getMessage()]
    assert said.levelno == logging.INFO
    assert "compressed=1" in said.getMessage()
    assert f"source={spec_for(path).key}" in said.getMessage()
    assert losses == []
    t.close()
    reg.close()


def test_compressed_files_a_run_read_are_not_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A source found again without checkpoints (a run read its files and forgot them): its
    ``.gz`` last written before that run last had all its files in hand held lines read then,
    and is not named as possibly unread."""
    fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    write(path, 0, 2, "live")
    reg, t = start(tmp_path / "state", path)
    assert drain(t) == ["live 0", "live 1"]
    assert let_go(t) == []
    stop(t, reg)
    os.rename(path, f"{path}.1")
    with open(f"{path}.1", "rb") as src:
        data = src.read()
    os.unlink(f"{path}.1")
    with gzip.open(f"{path}.1.gz", "wb") as dst:
        dst.write(data)
    old = time.time() - 3600
    os.utime(f"{path}.1.gz", (old, old))
    write(path, 2, 1, "live")
    fresh_process(monkeypatch)
    reg, t = start(tmp_path / "state", path)
    with caplog.at_level(logging.INFO, logger="logq.shipper.tailer"):
        assert drain(t) == ["live 2"]
    assert not [r for r in caplog.records if "compressed rotated files" in r.getMessage()]
    t.close()
    reg.close()
