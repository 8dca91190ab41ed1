"""A file finished and forgotten just before the last save is not read again after a restart.

A source the registry does not know reads its rotated files written after the previous run's
last save. File times of whole seconds (a coarse file system) cannot tell "just before" from
"just after" that save: a rotated file read to its end, acknowledged and forgotten moments
before the save was read again from its start. The first part of a split line that had been
shipped cut (its next part had not come) was then joined to the part written later and stored
twice. The registry now keeps such files for a moment under ``finished``, and a start resumes
them where they ended. Found with R1's extended model (session 14, ``docker_late_create``,
coarse times, seed 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import shipper.resume
import shipper.split_lines
import shipper.tailer
from shipper.checkpoint import FileState, Registry
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line
from tests.shipper.tailing import aggregator_keeps, drain_sent, fresh_process, spec_for


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    monkeypatch.setattr(shipper.split_lines, "SPLIT_FLUSH_SECONDS", 5.0)
    return fresh_process(monkeypatch)


def start(path: Path, losses: list[str]) -> tuple[Tailer, Registry]:
    reg = Registry(path.parent / "state")
    return Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append), reg


def kill(t: Tailer, reg: Registry) -> None:
    """kill -9 right after the checkpoint save of the last acknowledgement."""
    t.close()
    reg.save()
    reg.close()


def test_a_rotated_file_finished_just_before_the_save_is_not_read_again(
    tmp_path: Path, clock: list[float]
) -> None:
    path = tmp_path / "c-json.log"
    rotated = Path(f"{path}.1")
    losses: list[str] = []
    path.write_bytes(docker_line("a", 0) + docker_line("part ", 1, "stderr", nl=False))
    t, reg = start(path, losses)
    sent = drain_sent(t)
    clock[0] += 10.0  # its next part does not come: shipped cut
    sent += drain_sent(t)
    os.replace(path, rotated)  # rotated; the runtime creates the new file later
    kill(t, reg)
    t, reg = start(path, losses)
    sent += drain_sent(t)
    clock[0] += 10.0  # past the rotate wait: read to its end, acknowledged, forgotten
    sent += drain_sent(t)
    kill(t, reg)
    doc = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
    assert doc["files"] == {} and len(doc["finished"]) == 1
    # A 1 s clock: the file's time is the second the save was made in.
    saved = os.stat(tmp_path / "state" / "checkpoints.json").st_mtime_ns
    whole = saved - saved % 10**9
    os.utime(rotated, ns=(whole, whole))
    path.write_bytes(docker_line("rest", 2, "stderr"))
    t, reg = start(path, losses)
    sent += drain_sent(t)
    assert aggregator_keeps(sent) == ["a", "part ", "rest"]
    assert losses == []
    t.close()
    reg.close()


def test_finished_files_are_saved_for_a_moment_only_and_old_registries_load(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    reg = Registry(state)
    entry = FileState("test:x", str(tmp_path / "x"), "h:1:ab", 10, 10)
    reg.put("1:2:ab", entry)
    reg.finish("1:2:ab", 40, "")
    assert reg.items() == []
    doc = json.loads(reg.snapshot())
    assert doc["finished"]["1:2:ab"]["offset"] == 40
    reg.finish("1:3:cd", 5, "")  # not a known file: nothing to remember
    reg._finished["1:2:ab"].updated -= 10  # finished long before the next save
    assert "finished" not in json.loads(reg.snapshot())
    reg.close()
    # A registry written before ``finished`` existed, and one whose part is damaged.
    for finished in (None, ["junk"], {"1:2:ab": {"offset": -1}}):
        files = {"1:4:ef": {"source": "s", "path": "p", "source_id": "i", "offset": 3, "acked": 3}}
        doc = {"version": 1, "files": files}
        if finished is not None:
            doc["finished"] = finished
        (state / "checkpoints.json").write_text(json.dumps(doc))
        reg = Registry(state)
        assert [k for k, _ in reg.items()] == ["1:4:ef"]
        assert reg.finished("1:2:ab") is None
        reg.close()
