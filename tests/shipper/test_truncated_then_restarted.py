"""A file truncated in place, then a shipper restart: no loss to count (A2s18's F3).

After a truncation (logrotate ``copytruncate``, Docker ``max-file=1``) the checkpoint that says
"read it from 0 under the next epoch" was saved under the old content's key (its first line).
New content with another first line was followed under a key of its own, the old entry was
never opened again, and the next start counted it as a file deleted unread: a ``deleted_unread``
page ("lines after offset 0 are lost", naming the live file) while nothing was lost. New content
now takes that entry over (:meth:`shipper.checkpoint.Registry.take_restarted`), epoch included.

Taking it over removed the only record that the old first line had been used at a lower epoch
on that inode: content written after a truncation while the shipper was down, starting with
that line again, was opened at epoch 0 with the first content's ``source_id``, and the
aggregator dropped its lines as resends (R4s18). New content now starts past every epoch used
on its inode (:meth:`shipper.checkpoint.Registry.next_epoch`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from shipper.checkpoint import FileState, Registry
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import aggregator_keeps, append_docker, drain_sent, spec_for

EXTRA = ("--poll-interval", "0.05", "--retry-timeout", "5")


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(0)


def _tailer(reg: Registry, path: Path, losses: list[str]) -> Tailer:
    return Tailer(spec_for(path), reg, "h", 65536, on_loss=losses.append)


def test_a_restart_after_a_truncation_counts_no_loss_and_keeps_ids_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker ``max-file=1``: truncated, written again (another first line), restarted. The
    restart counts nothing; content that comes back to the first line of the content before
    gets an id of its own (the aggregator would drop its lines as resends of the first)."""
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 20, "first")
    state = tmp_path / "state"
    reg, losses = Registry(state), []
    t = _tailer(reg, path, losses)
    sent = drain_sent(t)
    _truncate(path)
    append_docker(path, 100, 20, "second")
    sent += drain_sent(t)
    assert losses == ["truncated_in_place"]  # lines written before our last look: possible
    on_inode = [k for k, _ in reg.items() if k.startswith(f"{path.stat().st_dev}:")]
    assert len(on_inode) == 1, on_inode  # the new content's entry only
    t.close()
    reg.save()
    reg.close()

    reg, losses = Registry(state), []
    t = _tailer(reg, path, losses)
    append_docker(path, 120, 5, "second")
    sent += drain_sent(t)
    assert losses == []  # was ["deleted_unread"]: the old content's entry, never opened
    _truncate(path)
    append_docker(path, 0, 20, "first")  # the very first line of the first content again
    sent += drain_sent(t)
    t.close()
    reg.close()
    expected = [f"first {i}" for i in range(20)] + [f"second {i}" for i in range(100, 125)]
    assert aggregator_keeps(sent) == expected + [f"first {i}" for i in range(20)]
    assert len({sid for _, _, sid in sent}) == 3


def test_an_entry_an_older_shipper_left_after_a_truncation_is_taken_over(tmp_path: Path) -> None:
    """A registry saved by a shipper before the fix holds the old content's "read from 0"
    entry beside the new content's: the start after the upgrade counts no loss for it."""
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 20, "first")
    state = tmp_path / "state"
    reg, losses = Registry(state), []
    t = _tailer(reg, path, losses)
    drain_sent(t)
    [(old_key, old)] = reg.items()
    _truncate(path)
    append_docker(path, 100, 20, "second")
    drain_sent(t)
    t.close()
    left = FileState(old.source, old.path, "sid-of-epoch-1", 0, 0, old.epoch + 1)
    reg.put(old_key, left)  # what _truncated left, never taken over then
    reg.save()
    reg.close()

    reg, losses = Registry(state), []
    t = _tailer(reg, path, losses)
    assert drain_sent(t) == []
    t.close()
    assert losses == []
    assert reg.get(old_key) is None
    reg.close()


def test_content_truncated_while_down_does_not_reuse_an_earlier_contents_id(
    tmp_path: Path,
) -> None:
    """C1 (first line L1) shipped; truncated while running, C2 takes its entry over; the
    shipper stops; truncated while down, C3 starts with L1 again (a banner, a CSV header). C3
    must get an id of its own: with C1's, every line of it is dropped as a resend."""
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 20, "first")
    state = tmp_path / "state"
    reg, losses = Registry(state), []
    t = _tailer(reg, path, losses)
    sent = drain_sent(t)
    _truncate(path)  # truncated while the shipper runs: the next content takes the entry over
    append_docker(path, 100, 20, "second")
    sent += drain_sent(t)
    t.close()
    reg.save()
    reg.close()  # the shipper stops (deploy, restart)

    _truncate(path)  # truncated while it is down; the new content starts as the first did
    append_docker(path, 0, 20, "first")
    reg, losses = Registry(state), []
    t = _tailer(reg, path, losses)
    sent += drain_sent(t)
    t.close()
    reg.close()
    ids = [sid for _, _, sid in sent]
    assert len(set(ids)) == 3, sorted(set(ids))
    assert losses == ["truncated_in_place"], losses  # C2 truncated while down: possible loss
    kept = aggregator_keeps(sent)
    assert kept[-20:] == [f"first {i}" for i in range(20)], (kept, sorted(set(ids)))


def test_content_written_after_a_restart_on_a_file_emptied_while_down_gets_its_own_id(
    tmp_path: Path,
) -> None:
    """Truncated while the shipper is down and still empty at its start: the old content's
    checkpoint goes (nothing on the inode holds it), and with it the record of its epoch. The
    banner written next (here before the start after that) got epoch 0 and the old content's
    id, and the aggregator dropped its lines as resends; the truncation was counted as a file
    deleted unread (a page)."""
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 20, "first")
    state = tmp_path / "state"
    reg, losses = Registry(state), []
    t = _tailer(reg, path, losses)
    sent = drain_sent(t)
    t.close()
    reg.save()
    reg.close()
    _truncate(path)  # while the shipper is down; still empty when it starts
    reg, losses = Registry(state), []
    t = _tailer(reg, path, losses)
    sent += drain_sent(t)
    t.close()
    reg.save()
    reg.close()  # stopped again before anything was written: the record is saved
    assert losses == ["truncated_in_place"]  # lines written before the truncation: possible
    append_docker(path, 0, 20, "first")  # then the banner again, while the shipper is down
    reg, losses = Registry(state), []
    t = _tailer(reg, path, losses)
    sent += drain_sent(t)
    t.close()
    reg.close()
    ids = sorted({sid for _, _, sid in sent})
    assert len(ids) == 2, ids
    assert aggregator_keeps(sent) == [f"first {i}" for i in range(20)] * 2
    assert losses == []


def _entries(state: Path) -> dict[str, dict[str, object]]:
    try:
        return json.loads((state / "checkpoints.json").read_bytes())["files"]
    except FileNotFoundError:
        return {}


def _no_lock(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "lock"]


class Truncated:
    """A file the shipper reads, truncated in place once while it runs: a plain ``--path``
    file under logrotate ``copytruncate`` (the copy kept as ``app.log.1``), or a Docker
    container's log with ``max-file=1`` (no copy)."""

    def __init__(self, tmp_path: Path, kind: str) -> None:
        self.kind = kind
        if kind == "docker":
            self.path = make_container(tmp_path / "docker", "d" * 64, "mf1")
            self.service, self.extra = "mf1", ("--docker-root", str(tmp_path / "docker"))
        else:
            self.path = tmp_path / "plain" / "app.log"
            self.path.parent.mkdir()
            self.path.touch()
            self.service, self.extra = "app", ("--path", str(self.path))
        self.written: list[str] = []

    def write(self, what: str, n: int) -> None:
        with open(self.path, "ab") as f:
            for i in range(n):
                text = f"{what} {i}"
                f.write(docker_line(text, i) if self.kind == "docker" else text.encode() + b"\n")
                self.written.append(text)

    def rotate(self) -> None:
        if self.kind == "plain":
            shutil.copyfile(self.path, f"{self.path}.1")
        _truncate(self.path)

    def args(self, tmp_path: Path, receiver: Receiver, state: Path) -> list[str]:
        args = shipper_args(tmp_path, receiver, *EXTRA)
        args[args.index(str(tmp_path / "state"))] = str(state)
        if self.kind == "docker":
            args[args.index("--docker-root") + 1] = str(tmp_path / "docker")
            return args
        return [*args, *self.extra]


async def _first_run(tmp_path: Path, receiver: Receiver, log: Truncated) -> None:
    """Ship, truncate, ship the new content; once its acknowledged position is on disk, what a
    ``kill -9`` leaves is copied to ``crashed``, then the run stops cleanly."""
    state = tmp_path / "state"
    shipper = Shipper(load_config(log.args(tmp_path, receiver, state)))
    run = asyncio.create_task(shipper.run())
    log.write("before", 20)
    await until(lambda: receiver.lines() == log.written)
    await until(lambda: any(e["offset"] for e in _entries(state).values()))  # acked, on disk
    before = set(_entries(state))
    log.rotate()
    log.write("after", 20)
    await until(lambda: receiver.lines() == log.written)
    live = str(log.path)
    await until(  # the new content's acknowledged position (a crash before it resends it)
        lambda: any(
            e["path"] == live and e["offset"] and k not in before
            for k, e in _entries(state).items()
        )
    )
    shutil.copytree(state, tmp_path / "crashed", ignore=_no_lock)
    shipper.request_stop()
    assert await run == 0


async def _restart(tmp_path: Path, receiver: Receiver, log: Truncated, state: Path) -> float:
    shipper = Shipper(load_config(log.args(tmp_path, receiver, state)))
    run = asyncio.create_task(shipper.run())
    await until(lambda: receiver.lines()[-5:] == log.written[-5:])
    lost = shipper.metrics.registry.get_sample_value(
        "logq_shipper_files_lost_total", {"service": log.service, "reason": "deleted_unread"}
    )
    shipper.request_stop()
    assert await run == 0
    return lost or 0.0


@pytest.mark.integration
@pytest.mark.parametrize("stop", ["sigterm", "kill"])
@pytest.mark.parametrize("kind", ["plain", "docker"], ids=["copytruncate", "docker-max-file-1"])
def test_a_shipper_restarted_after_a_truncation_pages_for_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, stop: str
) -> None:
    """A2s18's ``ct.py`` and ``mf1.py``: every line once, and ``deleted_unread`` stays 0."""
    log = Truncated(tmp_path, kind)
    receiver = Receiver()
    try:
        asyncio.run(_first_run(tmp_path, receiver, log))
        log.write("restarted", 5)
        state = tmp_path / ("crashed" if stop == "kill" else "state")
        with caplog.at_level(logging.WARNING, logger="logq.shipper.tailer"):
            lost = asyncio.run(_restart(tmp_path, receiver, log, state))
    finally:
        receiver.close()
    assert lost == 0.0
    assert not [r for r in caplog.records if "deleted before it was read" in r.getMessage()]
    assert Counter(receiver.lines()) == Counter(log.written)


def test_the_epoch_kept_for_an_emptied_inode_is_saved_pruned_and_superseded(
    tmp_path: Path,
) -> None:
    """The record :meth:`Registry.keep_epoch` leaves survives a restart, goes once an entry on
    the inode carries it, and is dropped after a week; a malformed one is ignored."""
    state = tmp_path / "state"
    reg = Registry(state)
    reg.put("1:2:aa", FileState("s", "p", "sid+3", 10, 10, 3))
    reg.keep_epoch("1:2:aa")
    reg.remove("1:2:aa")
    reg.save()
    reg.close()
    reg = Registry(state)
    assert reg.next_epoch(1, 2) == 4 and reg.next_epoch(1, 3) == 0
    reg.put("1:2:bb", FileState("s", "p", "sid+4", 0, 0, 4))
    reg.save()
    reg.close()
    assert "epochs" not in json.loads((state / "checkpoints.json").read_bytes())

    doc = json.loads((state / "checkpoints.json").read_bytes())
    doc["files"] = {}
    doc["epochs"] = {"1:2": [7, time.time() - 8 * 24 * 3600], "1:3": "x", "1:4": [2, time.time()]}
    (state / "checkpoints.json").write_text(json.dumps(doc))
    reg = Registry(state)
    try:
        assert (reg.next_epoch(1, 2), reg.next_epoch(1, 3), reg.next_epoch(1, 4)) == (0, 0, 2)
        assert list(json.loads(reg.snapshot())["epochs"]) == ["1:4"]  # a week old: dropped
    finally:
        reg.close()
