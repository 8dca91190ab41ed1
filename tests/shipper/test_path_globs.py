"""``--path`` globs over deep trees and folders that link back to themselves.

Before the fix, ``glob.glob(recursive=True)`` recursed once per folder level: a tree 1200
levels deep under ``--path '.../**/*.log'`` raised RecursionError (a traceback and exit 1 at
start; the daemon died at the next pass when it appeared while running). It followed links to
folders again and again: ``a -> .`` and ``b -> .`` made it fan out exponentially on the event
loop (``--once`` never ended, SIGTERM was not handled), and one such link gave each file 41
times, 41 sources of one file. Now the walk is iterative, enters each folder once per part of
the pattern (by device and inode), and each file is one source.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shipper.discover import discover_paths, expand_glob
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import run_once

#: A walk that fans out again (the old glob) fails the test instead of stalling the suite.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def deep() -> Iterator[Callable[[Path, int], Path]]:
    """Makes ``top/d/d/.../d`` ``levels`` deep (relative to a descriptor: no long paths),
    removed after the test: pytest's own clean-up of old temporary folders recurses, and a
    tree this deep left behind stopped a later session with RecursionError."""
    made: list[tuple[Path, int]] = []

    def make(top: Path, levels: int) -> Path:
        fd = os.open(top, os.O_RDONLY)
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(fd)
        made.append((top, levels))
        return top.joinpath(*["d"] * levels)

    yield make
    for top, levels in made:
        for k in range(levels, 0, -1):  # deepest first, without recursion
            folder = top.joinpath(*["d"] * k)
            for entry in folder.iterdir():
                if not entry.is_dir():
                    entry.unlink()
            folder.rmdir()


def test_a_deep_tree_is_walked_without_recursion(
    tmp_path: Path, deep: Callable[[Path, int], Path]
) -> None:
    (tmp_path / "top.log").write_text("top\n")
    bottom = deep(tmp_path, 1200)
    (bottom / "bottom.log").write_text("bottom\n")
    specs = discover_paths((f"{tmp_path}/**/*.log",))
    assert sorted(s.path for s in specs) == [bottom / "bottom.log", tmp_path / "top.log"]


def test_a_link_to_its_own_folder_gives_each_file_once(tmp_path: Path) -> None:
    (tmp_path / "app.log").write_text("x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "db.log").write_text("y\n")
    os.symlink(".", tmp_path / "cur")  # one link: the old glob gave each file 41 times
    specs = discover_paths((f"{tmp_path}/**/*.log",))
    assert [s.path for s in specs] == [tmp_path / "app.log", tmp_path / "sub" / "db.log"]


def test_a_linked_file_is_one_source_under_its_shortest_name(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "app.log").write_text("x\n")
    os.symlink("real", tmp_path / "alias")
    os.symlink("real/app.log", tmp_path / "z.log")
    specs = discover_paths((f"{tmp_path}/**/*.log",))
    assert [s.path for s in specs] == [tmp_path / "z.log"]


@pytest.mark.parametrize(
    "pattern",
    ["t/**/*.log", "t/*/*.log", "t/**", "t/a/b/*.log", "t/.*", "t/**/.*", "t/a/**/c/*.log"],
)
def test_matches_what_glob_matches_on_a_plain_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pattern: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("t/top.log", "t/a/1.log", "t/a/b/2.log", "t/a/b/c/3.log", "t/.hid/h.log"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text("x\n")
    Path("t/.dot.log").write_text("x\n")
    files = [p for p in glob.glob(pattern, recursive=True) if not os.path.isdir(p)]
    assert sorted(p for p in expand_glob(pattern) if not os.path.isdir(p)) == sorted(files)


@pytest.mark.integration
@pytest.mark.parametrize("tree", ["two self-links", "deep"])
def test_once_ships_the_file_once_and_ends(
    tmp_path: Path, receiver: Receiver, deep: Callable[[Path, int], Path], tree: str
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("the line\n")
    if tree == "deep":
        deep(logs, 1200)
    else:
        os.symlink(".", logs / "a")
        os.symlink(".", logs / "b")
    done = run_once(tmp_path, receiver, "--path", f"{logs}/**/*.log")
    assert "Traceback" not in done.stderr
    assert receiver.lines() == ["the line"]
