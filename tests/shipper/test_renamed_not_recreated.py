"""A live file renamed away while its writer has not reopened yet: the path names no file.

The kubelet's runtime renames ``0.log`` to ``0.log.<time>`` and writes on to the renamed file
until it reopens ``0.log``; the kubelet compresses older rotations (the plain file deleted).
Two ways this lost lines without a count, found with R1's extended model (session 14):

* the followed file, renamed and then deleted (compressed) before the path named a file again,
  was released as deleted with no floor for the search for missed rotations: a file the
  runtime created, renamed and wrote meanwhile was never looked for;
* a restart found the renamed file read to its end and forgot it at once, while its writer
  (not reopened yet) went on appending to it.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line
from tests.shipper.tailing import drain, fresh_process, spec_for


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    return fresh_process(monkeypatch)


def tailer(path: Path, losses: list[str]) -> tuple[Tailer, Registry]:
    reg = Registry(path.parent / "state")
    return Tailer(spec_for(path, "cri"), reg, "h", 65536, on_loss=losses.append), reg


def append(path: Path | str, *texts: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(cri_line(text, i) for i, text in enumerate(texts)))


def stamp(path: Path | str, seconds_ago: float) -> None:
    ns = int((os.stat(path).st_mtime - seconds_ago) * 1e9)
    os.utime(path, ns=(ns, ns))


def test_a_file_created_and_renamed_while_the_followed_one_was_deleted_is_read(
    tmp_path: Path, clock: list[float]
) -> None:
    path = tmp_path / "0.log"
    first, second = tmp_path / "0.log.20260001-000000", tmp_path / "0.log.20260002-000000"
    losses: list[str] = []
    append(path, "a")
    t, reg = tailer(path, losses)
    assert drain(t) == ["a"]
    os.replace(path, first)  # renamed; the runtime writes on to it until it reopens
    append(first, "a2")
    assert drain(t) == ["a2"]
    stamp(first, 10)
    # Between two looks: reopened, written, renamed again (not reopened yet), written; the
    # kubelet compresses the older rotation, deleting the file we follow.
    append(path, "b")
    os.replace(path, second)
    append(second, "b2")
    stamp(second, 5)
    Path(f"{first}.gz").write_bytes(gzip.compress(first.read_bytes()))
    first.unlink()
    assert drain(t) == []  # the followed file is let go; the path names no file yet
    append(path, "c")  # reopened
    clock[0] += 10.0
    assert drain(t) == ["b", "b2", "c"]
    assert losses == []
    t.close()
    reg.close()


def test_a_restart_keeps_a_renamed_file_read_to_its_end_while_its_writer_may_append(
    tmp_path: Path, clock: list[float]
) -> None:
    path = tmp_path / "0.log"
    renamed = tmp_path / "0.log.20260001-000000"
    losses: list[str] = []
    append(path, "a")
    t, reg = tailer(path, losses)
    assert drain(t) == ["a"]
    os.replace(path, renamed)  # the runtime has not reopened 0.log yet
    t.close()  # kill -9: the checkpoint of every acknowledged line is on disk
    reg.save()
    reg.close()
    t, reg = tailer(path, losses)
    assert drain(t) == []
    append(renamed, "a2")  # still its writer's file
    assert drain(t) == ["a2"]
    append(path, "b")  # reopened
    clock[0] += 10.0
    assert drain(t) == ["b"]
    assert losses == []
    t.close()
    reg.close()
