"""``logq-aggregator --help``, ``--version`` and a bad flag are answered before anything heavy is
imported (aggregator/arguments.py): they took 0.6 s, importing pyarrow, the server, the
compaction code and the AWS SDK to print a help text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.arguments import parse_command_line
from tests.support.procs import console_script

#: What none of these command lines may import: the data stack, the AWS SDK, and what only a
#: running server needs (the Forward codec, the event loop).
HEAVY = {"pyarrow", "pandas", "numpy", "duckdb", "boto3", "botocore", "msgpack", "asyncio"}


def imported(stderr: str) -> set[str]:
    """The top-level packages a ``python -X importtime`` run imported, from its stderr."""
    lines = (ln.split("|")[-1] for ln in stderr.splitlines() if ln.startswith("import time:"))
    return {name.strip().split(".")[0] for name in lines}


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["--help"], 0),
        (["-h"], 0),
        (["--version"], 0),
        (["compact", "--help"], 0),
        (["drain", "--help"], 0),
        (["drain", "--version"], 0),
        (["--no-such-flag"], 2),
        (["--buffer-compression", "gzip"], 2),
        (["compact", "--table", "nosuch"], 2),
        (["compact", "--grace-minutes", "-5"], 2),
    ],
)
def test_help_version_and_usage_errors_import_nothing_heavy(
    argv: list[str], status: int, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(console_script("logq-aggregator")), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env,
        timeout=60,
    )
    assert done.returncode == status, done.stderr[-2000:]
    modules = imported(done.stderr)
    assert "aggregator.arguments" in done.stderr  # (the run did go through the parser)
    assert modules & HEAVY == set(), sorted(modules & HEAVY)
    words = done.stdout if status == 0 else done.stderr
    assert "logq-aggregator" in words
    assert list(tmp_path.iterdir()) == []  # nothing started


def test_the_command_line_names_its_command() -> None:
    assert parse_command_line(["--listen", ":1"]).name == "serve"
    assert parse_command_line(["--listen", ":1"]).args.listen == ":1"
    assert parse_command_line(["drain", "--buffer-dir", "b"]).args.buffer_dir == "b"
    compact = parse_command_line(["compact", "--table", "envoy_access"])
    assert (compact.name, compact.args.table) == ("compact", ["envoy_access"])
