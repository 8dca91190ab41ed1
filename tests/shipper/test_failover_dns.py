"""A restart whose saved placement (see :mod:`tests.shipper.test_failover_restart`) is an
address of an aggregator name that does not resolve yet (a DNS outage at the start): that
file's batch waits for the name, re-resolved every ``PLACEMENT_DNS_POLL_SECONDS`` (at most
``PLACEMENT_DNS_WAIT_SECONDS``), instead of going to the first choice, which would store its
lines a second time. Other files go on meanwhile, and a stop ends the wait at once."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
from collections import Counter
from pathlib import Path

import pytest

from shipper.config import Endpoint, load_config, parse_endpoint
from shipper.daemon import Shipper
from shipper.errors import DeliveryError
from shipper.sender import ForwardClient, HeldAtStop, rendezvous_order
from shipper.source import StepAside, Window
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver, free_port
from tests.shipper.shipping import empty_root, first_choice, shipper_args, until
from tests.shipper.test_failover_restart import FakePlacements
from tests.shipper.test_sender import message

NAME = Endpoint("aggs.test", 24224)


class _Dns:
    """A resolver for ``aggs.test``: ``answer`` while ``up``, else a temporary failure
    (``EAI_AGAIN``), counted."""

    def __init__(self, *receivers: Receiver) -> None:
        self.answer = [("127.0.0.1", r.port) for r in receivers]
        self.up = True
        self.failures = 0

    async def resolve(self, host: str, port: int) -> list[tuple[str, int]]:
        assert (host, port) == (NAME.host, NAME.port)
        if not self.up:
            self.failures += 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return self.answer


def _shipper(tmp_path: Path, root: Path, state: str, dns: _Dns, *extra: str) -> Shipper:
    """A shipper of ``root``'s containers sending to the one name ``aggs.test``, resolved by
    ``dns``, its state under ``tmp_path/state``."""
    args = [
        *("--aggregator", str(NAME), "--hostname", "h", "--poll-interval", "0.05"),
        *("--docker-root", str(root), "--cri-root", str(empty_root(tmp_path))),
        *("--state-dir", str(tmp_path / state), *extra),
    ]
    shipper = Shipper(load_config(args))
    shipper.client._resolver = dns.resolve
    return shipper


def _killed_in_flight(
    tmp_path: Path, root: Path, log: Path, receivers: tuple[Receiver, Receiver]
) -> tuple[Receiver, Receiver]:
    """A first run, the name resolving to ``receivers``: ``before`` goes to the file's first
    choice, then ``in flight`` to the other (the first choice failed it), which stores it and
    whose ack never comes; the state is then copied to ``crashed``, as a kill -9 leaves it.
    Returns (first choice, failover)."""

    async def first_run() -> tuple[Receiver, Receiver]:
        shipper = _shipper(tmp_path, root, "state", _Dns(*receivers))
        run = asyncio.create_task(shipper.run())
        one, two = receivers
        first, failover = await first_choice(one, two)
        first.drop_first = 1
        failover.ack_first = 0
        with open(log, "ab") as f:
            f.write(docker_line("in flight", 1))
        await until(lambda: failover.lines() == ["in flight"])
        shutil.copytree(tmp_path / "state", tmp_path / "crashed")
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        shipper.registry.close()
        return first, failover

    first, failover = asyncio.run(first_run())
    failover.ack_first = None
    return first, failover


def test_a_batch_placed_on_an_address_of_a_name_not_resolved_yet_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The restart finds DNS down: the batch read again waits (the name resolved again
    meanwhile), and goes to the failover aggregator once the name resolves, which drops it by
    offset. Sent at once to the first choice, it was stored twice."""
    root = tmp_path / "docker"
    log = make_container(root, "a" * 64, "app", lines=["before"])
    receivers = (Receiver(), Receiver())
    try:
        first, failover = _killed_in_flight(tmp_path, root, log, receivers)
        with open(log, "ab") as f:
            f.write(docker_line("after", 2))
        dns = _Dns(*receivers)

        async def second_run() -> None:
            dns.up = False
            shipper = _shipper(tmp_path, root, "crashed", dns)
            shipper.client.placement_poll = 0.05
            run = asyncio.create_task(shipper.run())
            await until(lambda: dns.failures >= 3)  # resolved again while the batch waits
            assert (first.lines(), failover.lines()) == (["before"], ["in flight"])
            dns.up = True
            await until(lambda: "after" in first.lines() + failover.lines())
            with open(log, "ab") as f:
                f.write(docker_line("later", 3))
            await until(lambda: "later" in first.lines())
            shipper.request_stop()
            assert await run == 0

        with caplog.at_level(logging.INFO, logger="logq.shipper.sender"):
            asyncio.run(second_run())
    finally:
        for r in receivers:
            r.close()
    stored = Counter(first.lines() + failover.lines())
    assert stored == {"before": 1, "in flight": 1, "after": 1, "later": 1}
    assert failover.duplicates == 1
    assert "waiting for the aggregator names to resolve" in caplog.text
    assert "is not among the aggregator endpoints now" not in caplog.text


def test_a_stop_ends_the_wait_for_a_name_and_keeps_the_placement(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop while the batch waits for the name: the shipper ends at once -- not at
    ``--retry-timeout``, its batch given up as unacknowledged -- the batch sent nowhere, its
    placement still saved for the next start."""
    root = tmp_path / "docker"
    log = make_container(root, "a" * 64, "app", lines=["before"])
    receivers = (Receiver(), Receiver())
    try:
        first, failover = _killed_in_flight(tmp_path, root, log, receivers)
        assert failover.address in (tmp_path / "crashed" / "checkpoints.json").read_text()
        dns = _Dns(*receivers)

        async def second_run() -> None:
            dns.up = False
            shipper = _shipper(tmp_path, root, "crashed", dns, "--retry-timeout", "30")
            shipper.client.placement_poll = 0.05
            run = asyncio.create_task(shipper.run())
            await until(lambda: dns.failures >= 2)
            assert shipper.window.aside > 0  # the waiting batch stepped out of the window
            shipper.request_stop()
            assert await run == 0
            assert (shipper.window.used, shipper.window.aside) == (0, 0)

        with caplog.at_level(logging.INFO):
            asyncio.run(second_run())
    finally:
        for r in receivers:
            r.close()
    assert (first.lines(), failover.lines()) == (["before"], ["in flight"])
    assert "exiting with unacknowledged batches" not in caplog.text  # it ended by itself
    assert "stopped while its batch waited for the aggregator names" in caplog.text
    assert failover.address in (tmp_path / "crashed" / "checkpoints.json").read_text()


def test_batches_aside_stay_within_the_window() -> None:
    """Batches waiting for the names step out of the window, together at most its size (one
    alone always may): past it one stays in, and the batches read stay within twice the
    window. Sent, a batch counts again at once, whatever the room."""

    async def go() -> None:
        w = Window(100)
        await w.acquire(60)
        assert await w.step_aside(60)
        assert (w.used, w.aside) == (0, 60)
        await w.acquire(60)  # room again: another source reads
        assert not await w.step_aside(60)  # 120 aside would pass the window
        assert (w.used, w.aside) == (60, 60)
        w.step_back(60)
        assert (w.used, w.aside, w.has_room(1)) == (120, 0, False)
        await w.release(120)
        await w.acquire(150)  # bigger than the window: alone
        assert await w.step_aside(150)
        assert (w.used, w.aside) == (0, 150)

    asyncio.run(go())


def _first_on(endpoint: Endpoint, endpoints: tuple[Endpoint, ...], n: int) -> list[str]:
    """``n`` source ids that rank ``endpoint`` first among ``endpoints``."""
    ids = (f"src-{i}" for i in range(10_000))
    return [a for a in ids if rendezvous_order(a, endpoints)[0] == endpoint][:n]


class _Setting:
    """The name ``aggs.test`` (down) and an address configured beside it (``direct``), and a
    source whose placement is an address of the name, ``named`` (its first choice is
    ``direct``), and one without a placement."""

    def __init__(self) -> None:
        self.named, self.direct = Receiver(), Receiver()
        self.dns = _Dns(self.named)
        self.dns.answer.append(("127.0.0.1", free_port()))  # two addresses: two endpoints
        self.dns.up = False
        self.configured = (NAME, parse_endpoint(self.direct.address))
        self.held, self.free = _first_on(self.configured[1], self.configured, 2)

    def client(self, wait: float) -> ForwardClient:
        placements = FakePlacements()
        placements.saved[self.held] = self.named.address
        placements.through[self.held] = 40
        return ForwardClient(
            self.configured,
            hostname="h",
            resolver=self.dns.resolve,
            placements=placements,
            placement_wait=wait,
            placement_poll=0.05,
        )

    def held_batch(self, c: ForwardClient) -> asyncio.Task[Endpoint]:
        deliver = c.deliver(*message(3, first=30), affinity=self.held, offsets=(31, 33))
        return asyncio.create_task(deliver)

    def close(self) -> None:
        self.named.close()
        self.direct.close()


def test_other_files_go_on_while_one_waits_for_the_name_and_a_stop_ends_the_wait() -> None:
    """While one source's batch waits for the name (its placement an address of it, the name
    resolved again meanwhile), a source without a placement is delivered (to the address
    configured beside the name); a stop ends the wait with :class:`HeldAtStop`."""
    setting = _Setting()
    try:

        async def go() -> None:
            c = setting.client(60.0)
            waiting = setting.held_batch(c)
            await c.deliver(*message(1), affinity=setting.free, offsets=(1, 1))
            assert not waiting.done()
            failures = setting.dns.failures
            await until(lambda: setting.dns.failures >= failures + 2)
            assert not waiting.done()
            c.stop_holding()
            with pytest.raises(HeldAtStop):
                await waiting
            await c.close()

        asyncio.run(go())
    finally:
        setting.close()
    assert (setting.named.messages, len(setting.direct.records)) == (0, 1)


def test_past_the_wait_the_batch_goes_to_its_first_choice_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    setting = _Setting()
    try:

        async def go() -> Endpoint:
            c = setting.client(0.2)
            where = await setting.held_batch(c)
            await c.close()
            return where

        with caplog.at_level(logging.WARNING, logger="logq.shipper.sender"):
            where = asyncio.run(go())
    finally:
        setting.close()
    assert where == setting.configured[1]
    assert "is not among the aggregator endpoints now" in caplog.text
    assert "did not resolve within 0.2 s" in caplog.text
    assert setting.named.messages == 0


def test_a_stop_sends_a_waiting_batch_of_a_deleted_file_to_its_first_choice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file whose batch waits for the name is deleted (the shipper holds it open: a
    restart could not read it), then the shipper stops: the stop reads it to its end, so
    the batch stops waiting and goes to the file's first choice at once, with the WARNING --
    stored there, a second time if the other had it, rather than lost."""
    named, direct = Receiver(), Receiver()
    configured = (NAME, parse_endpoint(direct.address))
    [source_id] = _first_on(configured[1], configured, 1)  # its first choice: direct
    root = tmp_path / "docker"
    log = make_container(root, "a" * 64, "app", lines=["before"])
    dns = _Dns(named)
    dns.up = False
    try:

        async def first_run() -> None:  # a checkpoint for the file, on direct alone
            shipper = Shipper(load_config(shipper_args(tmp_path, direct, docker=root)))
            run = asyncio.create_task(shipper.run())
            await until(lambda: direct.lines() == ["before"])
            shipper.request_stop()
            assert await run == 0

        asyncio.run(first_run())
        # As a run that failed over to an address of the name before a kill -9 left it.
        registry = tmp_path / "state" / "checkpoints.json"
        doc = json.loads(registry.read_text())
        [entry] = doc["files"].values()
        entry["source_id"] = source_id
        doc["sent_to"], doc["sent_through"] = {source_id: named.address}, {source_id: 10**6}
        registry.write_text(json.dumps(doc))
        with open(log, "ab") as f:
            f.write(docker_line("in flight", 1))

        async def second_run() -> None:
            shipper = _shipper(tmp_path, root, "state", dns, "--aggregator", direct.address)
            shipper.client.placement_poll = 0.05
            run = asyncio.create_task(shipper.run())
            await until(lambda: dns.failures >= 2)  # the batch waits
            assert shipper.window.aside > 0
            log.unlink()
            shipper.request_stop()
            assert await run == 0
            assert (shipper.window.used, shipper.window.aside) == (0, 0)

        with caplog.at_level(logging.INFO):
            asyncio.run(second_run())
    finally:
        named.close()
        direct.close()
    assert (direct.lines(), named.messages) == (["before", "in flight"], 0)
    assert "is not among the aggregator endpoints now" in caplog.text
    assert "stopped while its batch waited" not in caplog.text


def test_files_waiting_for_the_name_leave_the_window_to_the_others(tmp_path: Path) -> None:
    """Two files whose placements are addresses of the name (DNS down at the start), each
    with a backlog of many batches, and a third file that can go to the address configured
    beside the name, in a small ``--max-inflight-bytes``. The waiting files read one batch
    each, held outside the window, and nothing more while they wait: the third file's new
    line is delivered while they still wait -- before, their batches read ahead filled the
    window, and it waited the whole 60 s with them. Once the name resolves, the waiting
    files go on where they were: every line is stored once."""
    named, direct = Receiver(), Receiver()
    dns = _Dns(named)
    dns.answer.append(("127.0.0.1", free_port()))  # two addresses: two endpoints
    dns.up = False
    configured = (NAME, parse_endpoint(direct.address))
    [free_id] = _first_on(configured[1], configured, 1)  # its first choice: direct
    root = tmp_path / "docker"
    held = [make_container(root, c * 64, f"held{c}", lines=[f"{c} first"]) for c in "ab"]
    free = make_container(root, "f" * 64, "free", lines=["f first"])
    backlog = {
        log: [f"{log.parent.name[0]} {i:03d} {'x' * 100}" for i in range(60)] for log in held
    }
    sent_again = [t for texts in backlog.values() for t in texts]
    try:

        async def first_run() -> None:  # a checkpoint for each file, on direct alone
            shipper = Shipper(load_config(shipper_args(tmp_path, direct, docker=root)))
            run = asyncio.create_task(shipper.run())
            await until(lambda: len(direct.lines()) == 3)
            shipper.request_stop()
            assert await run == 0

        asyncio.run(first_run())
        # As a run that failed the two over to an address of the name before a kill -9.
        registry = tmp_path / "state" / "checkpoints.json"
        doc = json.loads(registry.read_text())
        placed: list[str] = []
        for entry in doc["files"].values():
            if entry["path"] == str(free):
                entry["source_id"] = free_id
            else:
                placed.append(entry["source_id"])
        assert len(placed) == 2
        doc["sent_to"] = {sid: named.address for sid in placed}
        doc["sent_through"] = {sid: 10**6 for sid in placed}
        registry.write_text(json.dumps(doc))
        for log, texts in backlog.items():
            with open(log, "ab") as f:
                f.writelines(docker_line(text, i + 1) for i, text in enumerate(texts))

        async def second_run() -> None:
            # A batch of 5 lines is about 1.9 kB, and a reader reserves 2 kB (twice
            # --batch-bytes) before it reads: the two waiting batches in the window would
            # leave the free file no room (and their read-ahead even less); stepped out of it
            # (together within its 5000 bytes), they leave it all.
            shipper = _shipper(
                tmp_path,
                root,
                "state",
                dns,
                *("--aggregator", direct.address),
                *("--batch-lines", "5", "--batch-bytes", "1000", "--max-inflight-bytes", "5000"),
            )
            shipper.client.placement_poll = 0.05
            run = asyncio.create_task(shipper.run())
            await until(lambda: dns.failures >= 3)  # both files wait for the name
            with open(free, "ab") as f:
                f.write(docker_line("f second", 1))
            # Well within the 60 s the waiting files may wait.
            await until(lambda: "f second" in direct.lines(), timeout=20)
            assert not dns.up and named.messages == 0
            waiting = [r for r in shipper.runners.values() if r.spec.path in held]
            assert len(waiting) == 2 and all(r.queue.empty() for r in waiting)  # read no more
            dns.up = True
            everything = set(sent_again)
            await until(lambda: everything <= set(named.lines()))
            shipper.request_stop()
            assert await run == 0
            assert (shipper.window.used, shipper.window.aside) == (0, 0)

        asyncio.run(second_run())
    finally:
        named.close()
        direct.close()
    stored = Counter(named.lines() + direct.lines())
    expected = ["a first", "b first", "f first", "f second", *sent_again]
    assert stored == Counter(expected)
    for log, texts in backlog.items():  # each file's lines in order, on the saved aggregator
        assert [t for t in named.lines() if t[0] == log.parent.name[0]] == texts


def test_once_gives_up_naming_the_name_a_waiting_batch_waits_for() -> None:
    """``--once`` (a give-up time) with DNS down and the only batch waiting for the name (no
    connect tried, so no connect error to tell): it gives up saying which name did not
    resolve and why, not "no endpoint answered" -- once the wait for the name has ended
    (longer than the give-up time here, as by default: 60 s against 30), saying how long it
    tried and why that long."""
    named = Receiver()
    dns = _Dns(named)
    dns.up = False
    placements = FakePlacements()
    placements.saved["src"], placements.through["src"] = named.address, 40
    try:

        async def go() -> None:
            c = ForwardClient(
                (NAME,),
                hostname="h",
                resolver=dns.resolve,
                placements=placements,
                give_up_after=0.3,
                placement_wait=0.5,
                placement_poll=0.05,
            )
            try:
                with pytest.raises(DeliveryError) as failed:
                    await c.deliver(*message(1, first=30), affinity="src", offsets=(31, 31))
            finally:
                await c.close()
            # Its wait over, the batch went to the name itself: the system resolver's reason.
            text = str(failed.value)
            assert text.startswith(
                "could not resolve aggregator name(s) aggs.test:24224 (tried for 0.5 s, as long "
                "as a file's unacknowledged lines waited for the aggregator names: before the "
                "restart they went to an address that may be one of theirs): "
            ), text
            assert text.endswith("; check DNS or --aggregator"), text

        asyncio.run(go())
    finally:
        named.close()
    assert named.messages == 0


def test_once_forgets_the_error_of_an_endpoint_that_delivered_since() -> None:
    """An endpoint that failed and then delivered is up: when ``--once`` gives up later, its
    old error is no reason (it turned a DNS-only outage into "cannot reach ...: refused")."""
    live = Receiver()
    ep = parse_endpoint(live.address)
    try:

        async def go() -> str:
            c = ForwardClient((ep,), hostname="h", give_up_after=0.3)
            try:
                c._mark_down(ep, ConnectionRefusedError(111, "Connection refused"))
                c._health[ep].down_until = 0.0  # tried again at once
                await c.deliver(*message(1))
                c._last_success = float("-inf")  # nothing acknowledged since, for the test
                with pytest.raises(DeliveryError) as failed:
                    c._check_give_up()
                return str(failed.value)
            finally:
                await c.close()

        text = asyncio.run(go())
    finally:
        live.close()
    assert live.messages == 1
    assert text.endswith("no endpoint answered") and "refused" not in text.lower()


def test_a_waiting_batch_refused_room_aside_steps_out_as_soon_as_there_is_some() -> None:
    """Two batches wait for the names in a window of 100 bytes, 60 each: the second is
    refused room aside (120 would pass the window) and stays in. Once the first is sent, the
    second steps out, woken by it -- the wait for the names polls once an hour here, and no
    poll comes. Refused once, it stayed in for its whole wait (up to a minute); tried again
    at each poll, up to 2 s past the room coming back, keeping the files that can be sent from
    being read meanwhile. A stop ends its wait, and it counts again."""
    named = Receiver()
    dns = _Dns(named)
    dns.answer.append(("127.0.0.1", free_port()))  # two addresses: two endpoints
    dns.up = False
    placements = FakePlacements()
    placements.saved["src"], placements.through["src"] = named.address, 40
    try:

        async def go() -> None:
            w = Window(100)
            await w.acquire(60)
            assert await w.step_aside(60)  # the first waiting batch
            await w.acquire(60)  # the second one, read meanwhile
            c = ForwardClient(
                (NAME,),
                hostname="h",
                resolver=dns.resolve,
                placements=placements,
                placement_poll=3600.0,
            )
            second = StepAside(w, 60)
            calls: list[bool] = []

            async def on_hold(held: bool) -> None:
                calls.append(held)
                await second(held)

            try:
                send = asyncio.create_task(
                    c.deliver(
                        *message(1, first=30), affinity="src", offsets=(31, 31), on_hold=on_hold
                    )
                )
                await until(lambda: calls == [True])  # it waits, refused room aside
                assert (w.used, w.aside, second.aside) == (60, 60, False)
                w.step_back(60)  # the first one is sent...
                await w.release(60)  # ...and acknowledged
                await until(lambda: second.aside)
                assert (w.used, w.aside, dns.failures, calls) == (0, 60, 1, [True])  # no poll
                c.stop_holding()
                with pytest.raises(HeldAtStop):
                    await send
                await second(False)  # as SourceRunner._deliver does
                assert (w.used, w.aside, second.aside) == (60, 0, False)
            finally:
                await c.close()

        asyncio.run(go())
    finally:
        named.close()
    assert named.messages == 0


def test_a_refused_batch_that_stops_waiting_takes_no_room_aside_later() -> None:
    """A batch refused room aside that stops waiting (sent, or given up at a stop) before
    there is room no longer waits for it: when room comes back, only the batches still
    waiting step out. Stepped out after it was sent, its bytes were counted aside for good,
    and the window lost them."""

    async def go() -> None:
        w = Window(100)
        await w.acquire(60)
        first = StepAside(w, 60)
        await first(True)
        await w.acquire(50)
        second = StepAside(w, 50)
        await second(True)  # 110 aside would pass the window
        await w.acquire(50)
        third = StepAside(w, 50)
        await third(True)
        assert (w.used, w.aside, second.aside, third.aside) == (100, 60, False, False)
        await second(False)  # sent before there was room aside
        await first(False)
        await until(lambda: third.aside)  # woken after the second, were it still waiting
        assert (w.used, w.aside, second.aside) == (110, 50, False)
        await third(False)
        assert (w.used, w.aside) == (160, 0)

    asyncio.run(go())


def test_once_does_not_give_up_on_a_batch_before_its_wait_for_the_name_ends() -> None:
    """``--once`` whose give-up time is shorter than the wait for the names (30 s against
    60 s by default), DNS down: the waiting batch goes, once its wait ends, to its first
    choice (the address configured beside the name), which takes it. Before, ``--once``
    gave up while it waited and the run failed."""
    _once_held_batch_goes_to_its_first_choice(wait=0.5, give_up_after=0.2)


def test_once_does_not_give_up_on_a_batch_that_begins_to_wait_long_after_the_last_ack() -> None:
    """``--once``, DNS down, and nothing acknowledged for longer than the give-up time and
    the wait for the names when a file's batch begins to wait for them (its file got a
    descriptor late, say): it waits all the same, then goes to its first choice, which takes
    it. Given up by the time since the last ack alone, the run failed at the start of the
    wait, with a batch the first choice would take."""
    _once_held_batch_goes_to_its_first_choice(wait=0.3, give_up_after=0.1, last_ack_ago=3600.0)


def _once_held_batch_goes_to_its_first_choice(
    wait: float, give_up_after: float, last_ack_ago: float = 0.0
) -> None:
    """``--once`` giving up after ``give_up_after`` s, DNS down, the last ack
    ``last_ack_ago`` s back: the batch waiting up to ``wait`` s for the names goes to its
    first choice (the address configured beside the name), which takes it."""
    setting = _Setting()
    try:

        async def go() -> Endpoint:
            c = setting.client(wait=wait)
            c.give_up_after = give_up_after
            c._last_success -= last_ack_ago
            try:
                return await setting.held_batch(c)
            finally:
                await c.close()

        assert asyncio.run(go()) == setting.configured[1]
    finally:
        setting.close()
    assert (setting.direct.messages, setting.named.messages) == (1, 0)
