"""A ``--state-dir`` whose files a ``--path`` glob matches (shipper/own_files.py).

Tried by hand: with ``--path '/x/logs/*' --state-dir /x/logs`` the shipper followed its own
``lock`` and ``checkpoints.json`` as logs (``new source ... service=checkpoints``). Nothing of
them was shipped (``checkpoints.json`` holds no line break and is replaced whole), but each
checkpoint write replaced a followed file: 20,000 lines over 10 s took the shipper 0.31-0.32 s
of CPU against 0.16-0.18 s with the state dir elsewhere. Nothing breaks, so a WARNING at start
names the glob, the file and what to do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shipper.own_files import glob_matches
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import REPO, shipper_args


def _once(tmp_path: Path, *extra: str) -> str:
    receiver = Receiver()
    try:
        args = shipper_args(tmp_path, receiver, *extra, "--once", "--retry-timeout", "5")
        done = subprocess.run(
            [sys.executable, "-m", "shipper.daemon", *args],
            capture_output=True,
            text=True,
            timeout=45,
            cwd=REPO,
        )
    finally:
        receiver.close()
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _warned(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "state file" in line]


@pytest.mark.parametrize(
    ("glob", "state"), [("*", "logs"), ("*.json", "logs"), ("**/*", "logs"), ("*", "link")]
)
def test_a_glob_over_the_state_dir_is_warned_about_at_start(
    tmp_path: Path, glob: str, state: str
) -> None:
    """Also before ``checkpoints.json`` exists (a first start), and with ``--state-dir`` a
    link to the folder the glob lists."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("one\n")
    if state == "link":
        (tmp_path / "link").symlink_to(logs)
    pattern = f"{logs}/{glob}"
    stderr = _once(tmp_path, "--path", pattern, "--state-dir", str(tmp_path / state))
    (line,) = _warned(stderr)
    assert "level=warning logger=logq.shipper" in line
    named = logs / ("checkpoints.json" if glob == "*.json" else "lock")
    assert f"--path {pattern} matches the shipper's own state files " in line, line
    assert str(named) in line and f"(--state-dir {tmp_path / state})" in line, line
    assert f"or --exclude '{logs}/" in line, line


@pytest.mark.parametrize("glob", ["*.log", "**/*.log"])
def test_globs_that_miss_the_state_files_say_nothing(tmp_path: Path, glob: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("one\n")
    assert not _warned(_once(tmp_path, "--path", f"{logs}/{glob}", "--state-dir", str(logs)))


def test_state_files_left_out_by_exclude_say_nothing(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    args = ("--path", f"{logs}/*", "--state-dir", str(logs), "--exclude", f"{logs}/[cl]*[!g]")
    assert not _warned(_once(tmp_path, *args))


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/a/*", "/a/lock", True),
        ("/a/*", "/a/b/lock", False),
        ("/a/**", "/a/b/c/lock", True),
        ("/a/**/lock", "/a/lock", True),
        ("/a/**/*.json", "/a/b/checkpoints.json", True),
        ("/a/*/lock", "/a/.hidden/lock", False),
        ("/a/.*/lock", "/a/.hidden/lock", True),
        ("/a/**/lock", "/a/.hidden/lock", False),
        ("/a/[bc]/lock", "/a/c/lock", True),
        ("/a/lock", "/a/lock", True),
    ],
)
def test_glob_matches_as_discovery_expands(pattern: str, path: str, matches: bool) -> None:
    """The same rules as discovery's :func:`shipper.discover.expand_glob`: ``*`` and ``**``
    pass over names starting with a dot, ``**`` spans any number of folders, none included."""
    assert glob_matches(pattern, path) is matches
