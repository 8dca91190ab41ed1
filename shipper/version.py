"""``--version`` of the three programs: the version of the installed ``logq`` package.

An operator upgrading a fleet asks each daemon what it runs (``logq-shipper --version``, as
``fluent-bit --version``); the package metadata is read only when asked, so a start pays
nothing for it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def version_text(program: str) -> str:
    """``PROGRAM VERSION``, or ``PROGRAM (not installed)`` when run from a source tree that was
    never installed (no package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{program} {version('logq')}"
    except PackageNotFoundError:
        return f"{program} (not installed)"


class VersionAction(argparse.Action):
    """``--version`` for an argparse parser: prints :func:`version_text` of the parser's
    program and exits 0 (argparse's own ``version`` action needs the text before parsing)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **_: Any):
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version"
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_text(parser.prog.split()[0]))
        parser.exit()
