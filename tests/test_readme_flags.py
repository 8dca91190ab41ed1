"""README.md's flag tables list every flag of the two daemons, as their ``--help`` does.

The shipper's table once lacked ``--poll-interval``, ``--discover-interval`` and ``--log-level``:
an operator reading the README could not know they existed.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from aggregator.config import add_serve_flags
from shipper.config import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def table_flags(program: str) -> set[str]:
    """The flags named in the first column of the flag table under ``### `program```."""
    section = README.read_text(encoding="utf-8").split(f"### `{program}`", 1)[1]
    section = section.split("\n### ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `--")]
    return {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)", row.split(" | ")[0])}


def help_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The long flags ``--help`` lists, ``--help`` itself aside."""
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    return flags - {"--help"}


@pytest.mark.parametrize("program", ["logq-shipper", "logq-aggregator"])
def test_every_flag_is_in_the_readme(program: str) -> None:
    if program == "logq-shipper":
        parser = build_parser()
    else:
        parser = argparse.ArgumentParser()
        add_serve_flags(parser)
    assert help_flags(parser) - table_flags(program) == set()
    assert table_flags(program) - help_flags(parser) == set()
