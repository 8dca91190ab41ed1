"""``--version`` of the three programs: the installed package's version, printed before any
other flag is checked or anything starts (an operator upgrading a fleet asks each daemon)."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from shipper import version as versions
from tests.support.procs import console_script


@pytest.mark.parametrize(
    "argv",
    [
        ["logq-shipper", "--version"],
        ["logq-shipper", "--aggregator", "nohostport", "--version"],  # bad flags: not checked
        ["logq-aggregator", "--version"],
        ["logq-aggregator", "drain", "--version"],
        ["logq", "--version"],
    ],
)
def test_version_is_printed_and_nothing_starts(
    argv: list[str], tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    program, *args = argv
    done = subprocess.run(
        [str(console_script(program)), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{program} {version('logq')}\n"
    assert done.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no state, buffer or warehouse folder made


def test_a_source_tree_never_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr("importlib.metadata.version", missing)
    assert versions.version_text("logq-shipper") == "logq-shipper (not installed)"
