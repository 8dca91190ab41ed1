"""A checkpointed file rotated and compressed while the shipper was down: lines past what was
acknowledged are read from the compressed file, nothing lost (a loss only if no trace of the
file is left)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line, docker_line
from tests.shipper.tailing import drain, rotate_docker, set_clock, spec_for


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
    """With ``tail`` lines written after the stop, the compressed file holds lines past the
    checkpoint: they are read from it, before the new file, and nothing is counted lost.
    Counted ``deleted_unread`` (and not read) before: the copy was read again only for a line
    the runtime split open at its end."""
    path = tmp_path / "0.log"
    write(path, 0, 3000)
    spec = SourceSpec("cri:test", path, "cri", "svc")
    losses: list[str] = []
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    assert len(drain(t)) == 3000
    t.close()
    write(path, 3000, tail)  # written after the shipper stopped: read from the .gz
    rotate_and_gzip(path, "0.log.20261129-025902")
    write(path, 5000, 10)
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    unread = [f"line {i:06d}" for i in range(3000, 3000 + tail)]
    assert drain(t) == unread + [f"line {i:06d}" for i in range(5000, 5010)]
    assert losses == []


def test_a_file_read_whole_while_another_held_a_split_line_is_no_loss_once_compressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker ``compress``: the rotated file ends with the first part of a stdout line (held);
    the next file's whole stderr lines are all read and acknowledged, but its checkpoint stays
    where it was opened (0) while the other is held. Rotated and compressed while the shipper
    is down, it was counted lost ("lines after offset 0"), though every line of it was
    acknowledged: where the acknowledged batches end is kept too (R1 #4). The held part of the
    first file was lost too (counted), and the next part stored alone: both files are read
    again from their ``.gz`` copies now, the stderr lines not sent again (H1s20)."""
    clock = [1000.0]
    set_clock(monkeypatch, clock)
    path = tmp_path / "c-json.log"
    losses: list[str] = []
    path.write_bytes(docker_line("x 0", 0) + docker_line("out-1 ", 1, "stdout", nl=False))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == ["x 0"]
    rotate_docker(path, max_file=3, compress=True)  # .1 gzipped at once; we hold it open
    path.write_bytes(docker_line("err-1", 2, "stderr") + docker_line("err-2", 3, "stderr"))
    assert drain(t) == ["err-1", "err-2"]
    ino = os.stat(path).st_ino
    live = next(s for k, s in reg.items() if int(k.split(":")[1]) == ino)
    assert live.offset == 0 and live.acked_to == os.stat(path).st_size
    t.close()
    reg.save()
    reg.close()
    rotate_docker(path, max_file=3, compress=True)  # while the shipper is down
    path.write_bytes(docker_line("out-2", 4, "stdout"))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == ["out-1 out-2"]
    assert losses == []
    reg.close()
