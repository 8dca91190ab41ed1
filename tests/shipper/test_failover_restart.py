"""A shipper killed while a source's batch was in flight to a failover aggregator: the restart
sends it to that aggregator first, whose offset marks drop it, not to the source's first choice,
which would store it a second time (u1's finding, session 25). Also the ``sent_to`` part of the
checkpoint registry this needs: older registries without it, a damaged one, an aggregator
removed from the configuration meanwhile."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from shipper.checkpoint import FileState, Registry
from shipper.config import Endpoint, load_config, parse_endpoint
from shipper.daemon import Shipper
from shipper.errors import ShipperError
from shipper.sender import ForwardClient, rendezvous_order
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver, free_port
from tests.shipper.shipping import failover_args, first_choice, until
from tests.shipper.test_sender import message


@pytest.mark.parametrize(
    ("kept", "stopped"),
    [(True, False), (False, False), (True, True)],
    ids=["failover-kept", "failover-removed", "stopped-unacked"],
)
def test_a_batch_in_flight_to_a_failover_aggregator_goes_there_again_after_a_kill(
    tmp_path: Path, kept: bool, stopped: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The first choice fails (it closes the connection on the batch, storing nothing) and is
    at once up again; the batch goes to the other aggregator, which stores it and whose ack
    never comes; the shipper is killed (its state copied as it is then). The restart, with the
    first choice up and healthy, sends the batch read again to the failover aggregator: it
    drops it by offset. Each line is stored once. With the failover aggregator removed from
    ``--aggregator`` meanwhile the batch can only go to the first choice, which stores it
    again: a WARNING says so. Either way the next batch goes to the first choice, and the
    placement is dropped. A stop that does not wait for the ack (SIGTERM twice: the
    connection reset, the batch unacknowledged) leaves the same to its restart."""
    root = tmp_path / "docker"
    log = make_container(root, "a" * 64, "app", lines=["before"])
    one, two = Receiver(), Receiver()
    try:

        async def first_run() -> tuple[Receiver, Receiver]:
            shipper = Shipper(load_config(failover_args(tmp_path, root, "state", one, two)))
            run = asyncio.create_task(shipper.run())
            first, failover = await first_choice(one, two)
            first.drop_first = 1  # fails the next batch, and is up again at once
            failover.ack_first = 0  # stores the next batch, its ack lost
            with open(log, "ab") as f:
                f.write(docker_line("in flight", 1))
            await until(lambda: failover.lines() == ["in flight"])
            ignore = shutil.ignore_patterns("lock")
            if stopped:
                shipper.request_stop()
                shipper.request_stop()  # at once, the batch unacknowledged
                assert await run == 0
            # What a kill -9 leaves: the state as it is now, the ack never come.
            shutil.copytree(tmp_path / "state", tmp_path / "crashed", ignore=ignore)
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            shipper.registry.close()
            return first, failover

        first, failover = asyncio.run(first_run())
        assert first.lines() == ["before"]
        failover.ack_first = None
        with open(log, "ab") as f:
            f.write(docker_line("after", 2))
        receivers = (first, failover) if kept else (first,)

        async def second_run() -> Shipper:
            shipper = Shipper(load_config(failover_args(tmp_path, root, "crashed", *receivers)))
            run = asyncio.create_task(shipper.run())
            await until(lambda: "after" in first.lines() + failover.lines())
            with open(log, "ab") as f:  # the next batch: back to the first choice, as always
                f.write(docker_line("later", 3))
            await until(lambda: "later" in first.lines())
            shipper.request_stop()
            assert await run == 0
            return shipper

        with caplog.at_level(logging.WARNING, logger="logq.shipper.sender"):
            asyncio.run(second_run())
    finally:
        one.close()
        two.close()
    stored = Counter(first.lines() + failover.lines())
    warned = [
        r for r in caplog.records if "is not among the aggregator endpoints now" in r.getMessage()
    ]
    if kept:
        assert stored == {"before": 1, "in flight": 1, "after": 1, "later": 1}
        assert failover.duplicates == 1  # the batch read again, dropped where it was stored
        assert not warned
    else:
        assert stored == {"before": 1, "in flight": 2, "after": 1, "later": 1}
        assert len(warned) == 1
    saved = json.loads((tmp_path / "crashed" / "checkpoints.json").read_text())
    assert "sent_to" not in saved  # the file's last batch went to its first choice


def _entry(source_id: str) -> FileState:
    return FileState(source="docker:a", path="/x.log", source_id=source_id, offset=0, acked=0)


def test_placements_are_saved_with_their_file_and_go_with_it(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.put("1:2:f", _entry("id-1"))
    assert registry.place("id-1", "10.0.0.2:24224")
    assert not registry.place("id-1", "10.0.0.2:24224")  # no change: no save needed
    assert registry.place("gone", "10.0.0.2:24224")
    registry.save()
    registry.close()
    saved = json.loads((tmp_path / "checkpoints.json").read_text())
    assert saved["sent_to"] == {"id-1": "10.0.0.2:24224"}  # a file without an entry: pruned
    registry = Registry(tmp_path)
    assert registry.sent_to("id-1") == "10.0.0.2:24224"
    assert registry.place("id-1", "")  # back on its first choice
    registry.save()
    registry.close()
    assert "sent_to" not in json.loads((tmp_path / "checkpoints.json").read_text())


def test_a_registry_without_placements_loads_as_every_file_on_its_first_choice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older shipper's registry has no ``sent_to``: loaded without a word."""
    doc = {"version": 1, "files": {"1:2:f": {"source": "s", "path": "/p", "source_id": "id-1"}}}
    (tmp_path / "checkpoints.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="logq.shipper.checkpoint"):
        registry = Registry(tmp_path)
    registry.close()
    assert registry.sent_to("id-1") == ""
    assert registry.get("1:2:f") is not None
    assert not caplog.records


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("10.0.0.2:24224", set()),
        ([1, 2], set()),
        ({"id-1": 5, "id-2": "10.0.0.2:24224", "id-3": "", "id-4": "x" * 400}, {"id-2"}),
    ],
    ids=["string", "array", "bad-entries"],
)
def test_a_damaged_placement_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, value: object, kept: set[str]
) -> None:
    files = {
        f"1:{i}:f": {"source": "s", "path": f"/p{i}", "source_id": f"id-{i}"} for i in range(1, 5)
    }
    doc = {"version": 1, "files": files, "sent_to": value}
    (tmp_path / "checkpoints.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="logq.shipper.checkpoint"):
        registry = Registry(tmp_path)
    registry.close()
    assert {f"id-{i}" for i in range(1, 5) if registry.sent_to(f"id-{i}")} == kept
    assert len(registry.items()) == 4  # the checkpoints themselves are untouched
    [warning] = caplog.records
    assert "ignoring malformed aggregator placements" in warning.getMessage()


class FakePlacements:
    """What :class:`shipper.sender.Placements` is asked: each change it would save (a
    checkpoint write, waited for before the batch is sent), as the registry decides it
    (:meth:`shipper.checkpoint.Registry.place`); ``on_save`` is called as one begins."""

    def __init__(self) -> None:
        self.saved: dict[str, str] = {}
        self.through: dict[str, int] = {}
        self.changes: list[tuple[str, str, int | None]] = []
        self.on_save: Callable[[str], None] | None = None

    def sent_to(self, affinity: str) -> str:
        return self.saved.get(affinity, "")

    def sent_through(self, affinity: str) -> int | None:
        return self.through.get(affinity)

    async def place(self, affinity: str, endpoint: str, through: int | None = None) -> None:
        old, reach = self.saved.get(affinity, ""), self.through.get(affinity)
        if old == endpoint and (not endpoint or through is None or (reach or -1) >= through):
            return
        self.saved[affinity] = endpoint
        self.through.pop(affinity, None)
        if endpoint and through is not None:
            self.through[affinity] = max(through, reach or 0) if old == endpoint else through
        self.changes.append((affinity, endpoint, through))
        if self.on_save is not None:
            self.on_save(endpoint)
        await asyncio.sleep(0.01)  # the write and its fsync


def _ranked_after_a_dead_one(live: Receiver) -> tuple[tuple[Endpoint, ...], str]:
    """Two endpoints, the first a port nobody listens on, and a source id that ranks it first
    (its batches fail over to ``live``)."""
    eps = (parse_endpoint(f"127.0.0.1:{free_port()}"), parse_endpoint(live.address))
    affinity = next(
        f"src-{i}" for i in range(1000) if rendezvous_order(f"src-{i}", eps)[0] == eps[0]
    )
    return eps, affinity


def test_a_failover_saves_the_placement_per_batch_and_normal_running_never() -> None:
    """The hot path: away from its first choice a source saves its placement once per batch
    (how far its lines reach: all of them may be read again after a kill), and a batch within
    what is saved (sent again) nothing; on its first choice it never saves one."""
    live = Receiver()
    try:
        eps, affinity = _ranked_after_a_dead_one(live)

        async def go() -> tuple[list[tuple[str, str, int | None]], ...]:
            moved = FakePlacements()
            c = ForwardClient(
                eps, hostname="h", backoff_base=0.01, backoff_cap=0.1, placements=moved
            )
            for i in range(5):
                await c.deliver(*message(2, first=2 * i), affinity=affinity, offsets=(i, 2 * i))
            await c.deliver(*message(2, first=6), affinity=affinity, offsets=(7, 8))  # again
            await c.close()
            steady = FakePlacements()
            c = ForwardClient(eps[1:], hostname="h", placements=steady)
            for i in range(5, 10):
                await c.deliver(*message(2, first=2 * i), affinity=affinity, offsets=(i, 2 * i))
            await c.close()
            return moved.changes, steady.changes

        moved, steady = asyncio.run(go())
    finally:
        live.close()
    assert moved == [(affinity, live.address, 2 * i) for i in range(5)]
    assert steady == []  # on its first choice: never
    assert (len(live.records), live.duplicates) == (20, 2)


def test_a_connection_closed_during_a_placement_save_is_no_failure_of_its_aggregator() -> None:
    """The placement is saved between taking the connection and sending on it; closed
    meanwhile (the aggregator ended it, or another batch's failure did), it was sent on and
    failed: the aggregator marked down for a batch that never reached it, and a new connection
    another source had opened to it in between was reset with its batches."""
    live = Receiver()
    try:

        async def go() -> dict[str, int]:
            eps, affinity = _ranked_after_a_dead_one(live)
            placements = FakePlacements()
            c = ForwardClient(
                eps, hostname="h", backoff_base=0.01, backoff_cap=0.1, placements=placements
            )

            def close_it(endpoint: str) -> None:
                conn = c._conns.get(parse_endpoint(endpoint)) if endpoint else None
                if conn is not None:
                    conn.close()

            placements.on_save = close_it
            assert await c.deliver(*message(3), affinity=affinity) == eps[1]
            await c.close()
            return c.stats.retries

        retries = asyncio.run(go())
    finally:
        live.close()
    assert live.address not in retries  # only the dead first choice failed
    assert len(live.records) == 3


def test_a_placement_that_cannot_be_saved_does_not_hold_up_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full ``--state-dir``: a source that fails over waits for no placement save (the
    checkpoints are in the same case); its lines reach the other aggregator."""
    root = tmp_path / "docker"
    log = make_container(root, "a" * 64, "app", lines=["before"])
    one, two = Receiver(), Receiver()

    def full_disk(self: Registry, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Registry, "write", full_disk)
    try:

        async def go() -> tuple[Receiver, Receiver]:
            shipper = Shipper(load_config(failover_args(tmp_path, root, "state", one, two)))
            run = asyncio.create_task(shipper.run())
            first, failover = await first_choice(one, two)
            first.drop_first = 1_000_000  # down for good
            with open(log, "ab") as f:
                for i in range(3):
                    f.write(docker_line(f"moved {i}", i + 1))
            await until(lambda: len(failover.lines()) == 3)
            shipper.request_stop()
            with pytest.raises(ShipperError, match="cannot save checkpoints"):
                await run
            return first, failover

        first, failover = asyncio.run(go())
    finally:
        one.close()
        two.close()
    assert first.lines() == ["before"]
    assert sorted(failover.lines()) == ["moved 0", "moved 1", "moved 2"]
