"""One check of a local warehouse's folder (:func:`athena.warehouse.check_folder`), the words
``logq`` (exit 2) and ``logq-aggregator compact`` (exit 1) both say: a path that is missing or
no folder names what to fix, and a folder this user may not read says what to do about it (it
was Arrow's "Failed getting information for path ... Permission denied" of a table inside).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from athena.warehouse import check_folder
from tests.support.listing import without_override


def test_a_path_that_is_no_folder_names_what_to_fix(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    os.mkfifo(tmp_path / "a-pipe")  # neither file nor folder
    said = {
        name: check_folder(str(tmp_path / name), "check X", missing=", or make one")
        for name in ("nope", "a-file", "a-file/wh", "a-pipe")
    }
    assert said == {
        "nope": f"the warehouse {tmp_path / 'nope'} does not exist; check X, or make one",
        "a-file": f"the warehouse {tmp_path / 'a-file'} is a file, not a directory; check X",
        "a-file/wh": f"the warehouse {tmp_path / 'a-file/wh'} does not exist; check X, or make one",
        "a-pipe": f"the warehouse {tmp_path / 'a-pipe'} is not a directory; check X",
    }
    assert check_folder(str(tmp_path)) is None  # a folder, empty or not, is fine


#: The check, run where file permissions bind (root's bypass of them dropped).
_CHECK = "import sys; from athena.warehouse import check_folder; print(check_folder(sys.argv[1]))"


@pytest.mark.parametrize(
    ("mode", "inside"),
    [(0o000, False), (0o311, False), (0o644, False), (0o000, True)],
    ids=["no-permission", "no-read", "no-search", "a-folder-above"],
)
def test_a_folder_this_user_may_not_read_says_what_to_do(
    tmp_path: Path, subprocess_env: dict[str, str], mode: int, inside: bool
) -> None:
    """Neither listing (r) nor entering (x) may be missing: without x the names are listed and
    every table's folder then fails. A folder above that may not be entered denies it too. The
    ``ls`` to run is quoted for the shell (a space in the path)."""
    denied = tmp_path / "my wh"
    (denied / "envoy_access").mkdir(parents=True)
    warehouse = denied / "inner" if inside else denied
    warehouse.mkdir(exist_ok=True)
    denied.chmod(mode)
    try:
        done = subprocess.run(
            [*without_override(), sys.executable, "-c", _CHECK, str(warehouse)],
            capture_output=True,
            text=True,
            env=subprocess_env,
            timeout=60,
        )
    finally:
        denied.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"the warehouse {warehouse} cannot be read by this user (uid {os.geteuid()}, gid "
        f"{os.getegid()}): permission denied; check the permissions of the folder and of those "
        f"above it (`ls -ld {shlex.quote(str(warehouse))}`: it needs r-x, to list and enter "
        "it), or run as the user that owns it\n"
    )
