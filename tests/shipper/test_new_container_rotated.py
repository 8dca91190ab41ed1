"""A container the shipper has never seen that already rotated (a burst in its first second, or
started during a shipper restart or rollout): its rotated files hold its first lines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root
from tests.shipper.tailing import drain


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


def test_rotated_files_older_than_the_previous_run_are_skipped(tmp_path: Path) -> None:
    """Written while a previous run watched the host: that run read them (the container
    stopped, its files were finished and forgotten, now it is back)."""
    path = tmp_path / "c-json.log"
    write(f"{path}.1", 0, 5, "read-before")
    old = time.time() - 3600
    os.utime(f"{path}.1", (old, old))
    previous_run(tmp_path / "state", time.time() - 60)
    write(path, 0, 2, "live")
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == ["live 0", "live 1"]
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
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == [f"rotated {i}" for i in range(5)] + ["live 0", "live 1"]
    while t.cursors:  # the source is gone: drain and release
        assert t.read() is None
        t.poll(finishing=True)
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
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    got = drain(t)
    assert [g.split()[0] for g in got[::2]] == ["gen-10", "gen-3", "gen-2", "gen-1", "live"]
    reg.close()
