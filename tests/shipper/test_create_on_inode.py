"""The helper that builds the reused-inode scenarios (:func:`tests.shipper.tailing.create_on_inode`)
gets the freed inode back when another process takes it for a while, as a loaded machine's
short-lived files do, and fails (never skips) when it cannot; a scenario whose inode another file
kept is run again from the start (:func:`~tests.shipper.tailing.on_a_freed_inode`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shipper.tailing import InodeTaken, create_on_inode, on_a_freed_inode


def _freed(tmp_path: Path) -> int:
    gone = tmp_path / "gone"
    gone.write_bytes(b"old\n")
    ino = gone.stat().st_ino
    gone.unlink()
    return ino


def test_an_inode_taken_for_a_while_by_another_file_is_still_got(tmp_path: Path) -> None:
    def scenario(d: Path) -> None:
        ino = _freed(d)
        thief = d / "thief"
        create_on_inode(thief, b"not yours\n", ino)  # another process got there first
        path = d / "app.log"

        def let_go(probes: int) -> None:
            if probes == 250:  # after more tries than the old helper made (200)
                thief.unlink()

        # The thief lets go after a count of probes, not a time: a loaded machine makes fewer
        # than 250 probes in the default patience (186 in 1 s in a fresh clone's loaded run).
        # 15 s is 250 probes at 17 a second; more made a third file that kept the inode cost
        # the run 120 s of probing (18 CPU-s) before the next attempt.
        create_on_inode(path, b"new\n", ino, each_probe=let_go, patience=15.0)
        assert path.stat().st_ino == ino
        assert path.read_bytes() == b"new\n"
        assert sorted(p.name for p in d.iterdir()) == ["app.log"]  # no probe left behind

    # Under load a third file may take the inode the thief lets go, and keep it: run again.
    on_a_freed_inode(scenario, tmp_path)


def test_an_inode_kept_by_another_file_fails_the_test_with_what_to_do(tmp_path: Path) -> None:
    def scenario(d: Path) -> None:
        ino = _freed(d)
        thief = d / "thief"
        create_on_inode(thief, b"not yours\n", ino)
        with pytest.raises(InodeTaken, match=r"was not handed back.*--basetemp"):
            create_on_inode(d / "app.log", b"new\n", ino, patience=0.05)
        assert sorted(p.name for p in d.iterdir()) == ["thief"]

    on_a_freed_inode(scenario, tmp_path)  # the thief's own create_on_inode may lose, under load


def test_a_scenario_whose_inode_was_kept_runs_again_in_a_fresh_directory(tmp_path: Path) -> None:
    runs: list[Path] = []

    def scenario(d: Path) -> None:
        runs.append(d)
        assert list(d.iterdir()) == []  # nothing of the run before
        (d / "app.log").write_bytes(b"x\n")
        if len(runs) == 1:
            raise InodeTaken("kept by a parallel test's file")

    on_a_freed_inode(scenario, tmp_path)
    assert [d.name for d in runs] == ["run1", "run2"]


def test_a_scenario_that_loses_its_inode_every_time_fails(tmp_path: Path) -> None:
    def scenario(d: Path) -> None:
        raise InodeTaken("kept by a parallel test's file")

    with pytest.raises(InodeTaken, match="in all 3 runs: kept by a parallel test's file"):
        on_a_freed_inode(scenario, tmp_path)
