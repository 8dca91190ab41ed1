"""How far a file's lines sent to a failover aggregator reach (``sent_through`` beside
``sent_to`` in the checkpoint registry): a restart sends every batch of the lines read again
there, also when they come in more batches than went out (a lower ``--batch-lines``), and a
placement whose lines are all acknowledged is gone from the registry -- a file idle on its
failover aggregator does not send its later lines there after a restart."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest

from shipper import wire
from shipper.checkpoint import FileState, Registry
from shipper.config import load_config
from shipper.daemon import Shipper
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import failover_args, first_choice, until


def _saved(state: Path) -> dict:
    return json.loads((state / "checkpoints.json").read_text())


def test_lines_read_again_in_more_batches_all_go_to_the_aggregator_they_were_sent_to(
    tmp_path: Path,
) -> None:
    """Six lines go out in one batch to the failover aggregator (the first choice failed it),
    which stores them; the ack is lost and the shipper killed. Restarted with ``--batch-lines
    2`` it reads them again in three batches: all three go to the failover aggregator, which
    drops them by offset -- not only the first, the other two then stored a second time by
    the first choice. The line written after them goes to the first choice, as always."""
    root = tmp_path / "docker"
    log = make_container(root, "a" * 64, "app", lines=["before"])
    moved = [f"moved {i}" for i in range(6)]
    one, two = Receiver(), Receiver()
    try:

        async def first_run() -> tuple[Receiver, Receiver]:
            shipper = Shipper(load_config(failover_args(tmp_path, root, "state", one, two)))
            run = asyncio.create_task(shipper.run())
            first, failover = await first_choice(one, two)
            first.drop_first = 1  # fails the next batch, and is up again at once
            failover.ack_first = 0  # stores the next batch, its ack lost
            with open(log, "ab") as f:
                f.write(b"".join(docker_line(text, i + 1) for i, text in enumerate(moved)))
            await until(lambda: failover.lines() == moved)
            shutil.copytree(tmp_path / "state", tmp_path / "crashed")  # a kill -9 now
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            shipper.registry.close()
            return first, failover

        first, failover = asyncio.run(first_run())
        assert failover.chunks == [moved]  # one batch
        failover.ack_first = None
        with open(log, "ab") as f:
            f.write(docker_line("after", 7))

        async def second_run() -> None:
            args = [
                *failover_args(tmp_path, root, "crashed", first, failover),
                "--batch-lines",
                "2",
            ]
            shipper = Shipper(load_config(args))
            run = asyncio.create_task(shipper.run())
            await until(lambda: "after" in first.lines() + failover.lines())
            shipper.request_stop()
            assert await run == 0

        asyncio.run(second_run())
    finally:
        one.close()
        two.close()
    assert Counter(first.lines() + failover.lines()) == dict.fromkeys(
        ["before", *moved, "after"], 1
    )
    assert failover.chunks[1:] == [moved[0:2], moved[2:4], moved[4:6]]
    assert failover.duplicates == 6  # each line read again, dropped where it was stored
    assert first.lines() == ["before", "after"]  # past them: the first choice again
    assert "sent_to" not in _saved(tmp_path / "crashed")


def test_a_file_idle_on_its_failover_aggregator_sends_its_later_lines_to_its_first_choice(
    tmp_path: Path,
) -> None:
    """The first choice is down; a line goes to the other aggregator and is acknowledged
    there; the file is idle (read to its end, acknowledged). Nothing of it can be sent again,
    so its placement is gone from the registry with that ack's checkpoint. After a restart,
    with the first choice up again, the file's next line goes to the first choice, not to
    the aggregator of a placement that no longer meant anything."""
    root = tmp_path / "docker"
    log = make_container(root, "a" * 64, "app", lines=["before"])
    one, two = Receiver(), Receiver()
    try:

        async def first_run() -> tuple[Receiver, Receiver]:
            shipper = Shipper(load_config(failover_args(tmp_path, root, "state", one, two)))
            run = asyncio.create_task(shipper.run())
            first, failover = await first_choice(one, two)
            first.drop_first = 1_000_000  # down for good
            with open(log, "ab") as f:
                f.write(docker_line("moved", 1))
            await until(lambda: failover.lines() == ["moved"])
            offset = failover.records[-1][2][wire.KEY_OFFSET]

            def acked() -> int:
                [entry] = _saved(tmp_path / "state")["files"].values()
                return entry["acked"]

            await until(lambda: acked() >= offset)  # the ack's checkpoint is on disk
            assert "sent_to" not in _saved(tmp_path / "state")
            shipper.request_stop()
            assert await run == 0
            return first, failover

        first, failover = asyncio.run(first_run())
        first.drop_first = 0  # up again
        with open(log, "ab") as f:
            f.write(docker_line("later", 2))

        async def second_run() -> None:
            shipper = Shipper(load_config(failover_args(tmp_path, root, "state", first, failover)))
            run = asyncio.create_task(shipper.run())
            await until(lambda: "later" in first.lines() + failover.lines())
            shipper.request_stop()
            assert await run == 0

        asyncio.run(second_run())
    finally:
        one.close()
        two.close()
    assert first.lines() == ["before", "later"]
    assert failover.lines() == ["moved"]


def test_a_backlog_sent_to_the_failover_aggregator_saves_its_placement_once(
    tmp_path: Path,
) -> None:
    """The first choice refuses connections; ten lines waiting go out in five batches
    (``--batch-lines 2``) to the other aggregator. Each batch's reach must be on disk before
    it is sent, but the next batch is read while one is in flight: its reach rides on the
    write that records that ack, so only the move itself costs a write of its own -- not
    every batch. The last ack's write drops the placement (nothing is left to send there)."""
    root = tmp_path / "docker"
    log = make_container(root, "a" * 64, "app", lines=["before"])
    receivers = [Receiver(), Receiver()]
    moved = [f"moved {i}" for i in range(10)]
    saves: list[tuple[str, int | None]] = []
    try:

        async def go() -> Receiver:
            args = [*failover_args(tmp_path, root, "state", *receivers), "--batch-lines", "2"]
            shipper = Shipper(load_config(args))
            registry, place = shipper.registry, shipper.place

            async def counted(source_id: str, endpoint: str, through: int | None = None) -> None:
                was = registry.sent_to(source_id), registry.sent_through(source_id)
                await place(source_id, endpoint, through)
                if (registry.sent_to(source_id), registry.sent_through(source_id)) != was:
                    saves.append((endpoint, through))  # a write of its own, waited for

            shipper.place = counted  # type: ignore[method-assign]
            run = asyncio.create_task(shipper.run())
            await until(lambda: sum(len(r.lines()) for r in receivers) == 1)
            first, failover = sorted(receivers, key=lambda r: not r.lines())
            first.close()  # refused from now on
            receivers.remove(first)
            with open(log, "ab") as f:
                f.write(b"".join(docker_line(text, i + 1) for i, text in enumerate(moved)))
            await until(lambda: failover.lines() == moved)
            await until(lambda: "sent_to" not in _saved(tmp_path / "state"))
            shipper.request_stop()
            assert await run == 0
            return failover

        failover = asyncio.run(go())
    finally:
        for r in receivers:
            r.close()
    assert failover.chunks == [moved[i : i + 2] for i in range(0, 10, 2)]
    assert [endpoint for endpoint, _ in saves] == [failover.address]  # as the file moved


def _entry(source_id: str, acked: int = 0) -> FileState:
    return FileState(
        source="docker:a", path="/x.log", source_id=source_id, offset=acked, acked=acked
    )


def test_a_placement_keeps_how_far_its_lines_reach_until_they_are_acknowledged(
    tmp_path: Path,
) -> None:
    """``sent_through`` beside ``sent_to``: saved when the lines sent reach further (one
    save per batch while a file is away from its first choice, none while its batches stay
    within it; grown by the lines read ahead of an acknowledged batch sent there), loaded
    back, and gone once the file's checkpoint has every line of it acknowledged -- or when
    the file goes back to its first choice."""
    registry = Registry(tmp_path)
    registry.put("1:2:f", _entry("id-1"))
    registry.put("1:3:f", _entry("id-2"))
    assert registry.place("id-1", "10.0.0.2:24224", 100)
    assert not registry.place("id-1", "10.0.0.2:24224", 40)  # within what is saved
    assert registry.place("id-1", "10.0.0.2:24224", 180)  # reaches further: saved again
    assert registry.place("id-2", "10.0.0.3:24224", 50)
    # Lines read ahead of an acknowledged batch: a placement there reaches them; no other.
    registry.reach("id-1", "10.0.0.9:24224", 400)  # acknowledged elsewhere
    registry.reach("id-2", "10.0.0.3:24224", 20)  # within the reach already
    registry.reach("id-3", "10.0.0.3:24224", 20)  # on its first choice: none made
    assert [registry.sent_through(f"id-{i}") for i in range(1, 4)] == [180, 50, None]
    assert registry.sent_to("id-3") == ""
    registry.reach("id-2", "10.0.0.3:24224", 60)
    assert registry.sent_through("id-2") == 60
    registry.save()
    registry.close()
    saved = _saved(tmp_path)
    # An older shipper reads sent_to as it is (host:port strings) and ignores sent_through.
    assert saved["sent_to"] == {"id-1": "10.0.0.2:24224", "id-2": "10.0.0.3:24224"}
    assert saved["sent_through"] == {"id-1": 180, "id-2": 60}

    registry = Registry(tmp_path)
    assert (registry.sent_to("id-1"), registry.sent_through("id-1")) == ("10.0.0.2:24224", 180)
    assert registry.place("id-1", "10.0.0.4:24224", 200)  # moved on: its own reach
    assert registry.sent_through("id-1") == 200
    registry.put("1:2:f", _entry("id-1", acked=199))
    registry.put("1:3:f", _entry("id-2", acked=60))  # all of id-2's lines acknowledged
    registry.save()
    saved = _saved(tmp_path)
    assert saved["sent_to"] == {"id-1": "10.0.0.4:24224"}
    assert saved["sent_through"] == {"id-1": 200}
    assert registry.sent_to("id-2") == ""
    assert registry.place("id-1", "")  # back on its first choice
    registry.save()
    registry.close()
    assert {"sent_to", "sent_through"}.isdisjoint(_saved(tmp_path))


def test_a_placement_without_its_reach_loads_as_one_for_the_first_batch_read_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A registry saved by a shipper that kept no ``sent_through`` (or one that could not be
    read): its placements say where the first batch read again goes, as they did; no word
    for a missing one, a WARNING for a damaged one."""
    files = {
        f"1:{i}:f": {"source": "s", "path": f"/p{i}", "source_id": f"id-{i}"} for i in range(1, 5)
    }
    sent_to = {f"id-{i}": "10.0.0.2:24224" for i in range(1, 5)}
    doc = {"version": 1, "files": files, "sent_to": sent_to}
    (tmp_path / "checkpoints.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="logq.shipper.checkpoint"):
        registry = Registry(tmp_path)
    registry.close()
    assert [registry.sent_through(f"id-{i}") for i in range(1, 5)] == [None] * 4
    assert registry.sent_to("id-1") == "10.0.0.2:24224"
    assert not caplog.records

    doc["sent_through"] = {"id-1": 7, "id-2": -1, "id-3": "7", "id-4": True, "gone": 3}
    (tmp_path / "checkpoints.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="logq.shipper.checkpoint"):
        registry = Registry(tmp_path)
    registry.close()
    assert [registry.sent_through(f"id-{i}") for i in range(1, 5)] == [7, None, None, None]
    assert [registry.sent_to(f"id-{i}") for i in range(1, 5)] == ["10.0.0.2:24224"] * 4
    [warning] = caplog.records
    assert "ignoring malformed aggregator placements" in warning.getMessage()
    assert "sent_through" in warning.getMessage()
