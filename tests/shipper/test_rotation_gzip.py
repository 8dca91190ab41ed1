"""A checkpointed file rotated and compressed while the shipper was down: a loss only if the
compressed file shows lines past our checkpoint (or no trace of the file is left)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line
from tests.shipper.tailing import drain


def write(path: Path, first: int, n: int) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(cri_line(f"line {i:06d}", i) for i in range(first, first + n)))


def rotate_and_gzip(path: Path, name: str) -> None:
    """The kubelet's rotation: rename to ``0.log.<time>``, later compress it and delete it."""
    rotated = path.parent / name
    os.rename(path, rotated)
    with open(rotated, "rb") as src, gzip.open(f"{rotated}.gz", "wb") as dst:
        dst.write(src.read())
    rotated.unlink()


@pytest.mark.parametrize("tail", [0, 7])
def test_compressed_after_read_to_its_end_is_no_loss(
    tmp_path: Path, reg: Registry, tail: int
) -> None:
    path = tmp_path / "0.log"
    write(path, 0, 3000)
    spec = SourceSpec("cri:test", path, "cri", "svc")
    losses: list[str] = []
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    assert len(drain(t)) == 3000
    t.close()
    write(path, 3000, tail)  # written after the shipper stopped: lost with the file
    rotate_and_gzip(path, "0.log.20261129-025902")
    write(path, 5000, 10)
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == [f"line {i:06d}" for i in range(5000, 5010)]
    assert losses == (["deleted_unread"] if tail else [])
