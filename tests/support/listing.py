"""Folders that appear while a listing runs, and folders that no listing may read.

Arrow lists a local folder by opening it; when that fails and the selector has
``allow_not_found``, it forgives the failure only if the folder is still missing when it looks
again. A folder made between the two (the aggregator's first flush making ``container_logs/``)
fails the listing. The window is microseconds wide: :class:`FolderAppears` opens it on demand,
so a test meets the race at the listing it chooses, every time.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs
import pytest

import athena.warehouse


class FolderAppears(pafs.LocalFileSystem):
    """The local filesystem, where each folder of ``appearing`` is made (with the folders
    above it, as a flush makes its partition's) during the first listing of it, or of a
    folder above it, that runs while the folder listed is missing: as Arrow sees a folder
    appear between its two looks. The listing is Arrow's own, of the folder still missing,
    and its error is raised once the folder is there. Every listing is counted (``listings``:
    the folders listed, in order). A subclass, not a wrapper: the product takes it for the
    local disk it is (:func:`athena.partitions._is_local`)."""

    def __init__(self, appearing: Iterable[str] = ()) -> None:
        super().__init__()
        self.appearing = set(appearing)
        self.appeared: list[str] = []
        self.listings: list[str] = []

    def get_file_info(self, what):  # type: ignore[no-untyped-def, override]
        if not isinstance(what, pafs.FileSelector):
            return super().get_file_info(what)
        self.listings.append(what.base_dir)
        folder = self._made_by_this_listing(what.base_dir) if what.allow_not_found else None
        if folder is None:  # (a missing folder is an error without allow_not_found anyway)
            return super().get_file_info(what)
        try:  # Arrow's first look: the folder is missing (the error Arrow then holds)
            super().get_file_info(pafs.FileSelector(what.base_dir, recursive=what.recursive))
        except FileNotFoundError as missing:
            os.makedirs(folder, exist_ok=True)  # ... made before Arrow looks again
            self.appeared.append(folder)
            raise missing from None
        raise AssertionError(f"{what.base_dir} was there before it appeared")

    def _made_by_this_listing(self, listed: str) -> str | None:
        """The folder of ``appearing`` that is ``listed`` or inside it, while ``listed`` is
        missing (taken out of ``appearing``: it appears once)."""
        if os.path.exists(listed):
            return None
        for folder in sorted(self.appearing):
            if folder == listed or folder.startswith(listed.rstrip("/") + "/"):
                self.appearing.discard(folder)
                return folder
        return None


def folders_appear(monkeypatch: pytest.MonkeyPatch, folders: Iterable[str]) -> FolderAppears:
    """Every local warehouse the program opens (:func:`athena.warehouse.open_warehouse`, which
    ``logq`` imports when it runs a command) on one :class:`FolderAppears` of ``folders``."""
    fs = FolderAppears(folders)
    opened = athena.warehouse.open_warehouse

    def on_racing_disk(uri: str | None = None, create: bool = False) -> athena.warehouse.Warehouse:
        wh = opened(uri, create)
        return wh if wh.is_s3 else dataclasses.replace(wh, fs=fs)

    monkeypatch.setattr(athena.warehouse, "open_warehouse", on_racing_disk)
    return fs


#: What the listing in :func:`listed_without_override` prints: the listings it made, then the
#: error's type and text (or "listed" and the entries' count).
_LISTING = """
import sys
import pyarrow.fs as pafs
from athena.warehouse import list_entries

class Counted(pafs.LocalFileSystem):
    calls = 0
    def get_file_info(self, what):
        Counted.calls += isinstance(what, pafs.FileSelector)
        return super().get_file_info(what)

try:
    found = list_entries(Counted(), pafs.FileSelector(sys.argv[1], allow_not_found=True))
    print(Counted.calls, "listed", len(found))
except OSError as exc:
    print(Counted.calls, type(exc).__name__, exc)
"""


def listed_without_override(folder: Path, env: dict[str, str]) -> tuple[int, str]:
    """(listings made, outcome) of :func:`athena.warehouse.list_entries` of ``folder`` in a
    process that file permissions bind: root's bypass of them dropped (``setpriv``), so a
    folder of mode 000 is denied to it as to any user."""
    done = subprocess.run(
        [*without_override(), sys.executable, "-c", _LISTING, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    calls, outcome = done.stdout.strip().split(" ", 1)
    return int(calls), outcome


def without_override() -> list[str]:
    """The command prefix that runs a program bound by file permissions: none for a user
    other than root; for root, ``setpriv`` without the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root ignores file permissions and setpriv (util-linux) is not installed")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
