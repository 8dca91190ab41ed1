"""Replays that run at the same time: aggregators that crashed together must not wait for each
other (ledger.py: replay marks, ordered by start), nor give up the duplicate protection.

A replaying node used to wait for every live peer's heartbeat to cover its start; a peer that
was replaying too published its heartbeat only after its own replay, which waited for the
first: both waited out the 60 s timeout, flushing nothing meanwhile, then replayed anyway.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from aggregator.ledger import (
    LEDGER_DIR,
    NODES_DIR,
    REPLAYING_DIR,
    SKEW_SLACK_S,
    Ledger,
    read_replay_marks,
    stale_after,
)
from aggregator.state_files import NODE_ID_NAME, SEGMENT_SUFFIX, segment_name
from athena.warehouse import Warehouse, open_warehouse
from shipper import wire
from tests.aggregator.helpers import (
    AggregatorProc,
    backdate,
    read_acks,
    read_table,
    record,
    start_aggregator,
)
from tests.support.procs import wait_until

NOW_NS = time.time_ns()
#: Long enough that no heartbeat written by a test goes stale while it runs.
LONG_INTERVAL = 300.0


def _send(agg: AggregatorProc, chunk: str, offsets: range, source: str = "host-a/c1") -> None:
    entries = [
        (NOW_NS, record(f"line {o}", service="billing", source_id=source, offset=o))
        for o in offsets
    ]
    with agg.connect() as sock:
        sock.sendall(wire.encode_packed_forward("logq.billing", entries, chunk=chunk))
        assert read_acks(sock, 1) == [chunk]


def _messages(warehouse: str) -> list[str]:
    if not (Path(warehouse) / "container_logs").exists():
        return []
    return sorted(read_table(warehouse, "container_logs")["message"].to_pylist())


def _expected(*ranges: range) -> list[str]:
    return sorted(f"line {o}" for r in ranges for o in r)


def _wait_for_log(agg: AggregatorProc, text: str, what: str) -> None:
    """Wait (generously: a run without the fix waits out its 60 s timeout) for a log line."""
    wait_until(lambda: text in agg.log_text(), 120, what, proc=agg.proc, log=agg.log)


def _live_peer(wh: Warehouse, node: str, committed_through: float) -> None:
    """A peer's fresh heartbeat, as a running aggregator writes it after each flush pass."""
    Ledger(wh, node).heartbeat(committed_through, LONG_INTERVAL)


@pytest.mark.integration
def test_two_aggregators_killed_together_replay_without_waiting_for_each_other(
    tmp_path: Path,
) -> None:
    """Both hold the batch a shipper resent from A to B, both are killed and restarted
    together: the first to start replays at once, the second waits for its commit and skips
    the batch. No timeout, every line once."""
    warehouse = str(tmp_path / "warehouse")
    slow = ["--flush-interval", str(LONG_INTERVAL)]  # nothing is flushed before the kill
    a = start_aggregator(tmp_path, warehouse, slow, name="a")
    b = start_aggregator(tmp_path, warehouse, slow, name="b")
    try:
        _send(a, "c1", range(1, 51))
        _send(a, "c2", range(51, 101))  # fsync'd by A; say its ack never reached the shipper
        _send(b, "c2-again", range(51, 101))  # so the shipper resent it to B
        _send(b, "c3", range(101, 151))
        assert a.kill9() == -signal.SIGKILL
        assert b.kill9() == -signal.SIGKILL
        beats = Path(warehouse) / LEDGER_DIR / NODES_DIR
        assert len(list(beats.glob("*.json"))) == 2  # both fresh: each is a live peer

        a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "1"], name="a")
        b = start_aggregator(tmp_path, warehouse, ["--flush-interval", "1"], name="b")
        _send(a, "c4", range(151, 171), "host-a/c2")  # new lines while the replays run
        _send(b, "c5", range(171, 191), "host-a/c2")
        for agg in (a, b):
            _wait_for_log(agg, "replay: other aggregators hold", "the replay's ledger read")
        assert a.stop() == 0, a.log_text()
        assert b.stop() == 0, b.log_text()
    finally:
        a.stop()
        b.stop()
    for agg in (a, b):
        assert "have not committed" not in agg.log_text(), agg.log_text()
    # A started first, so it replayed first; B waited for it and skipped c2, which A committed.
    assert "replay: other aggregators hold 0 committed lines" in a.log_text()
    assert "replay: other aggregators hold 100 committed lines" in b.log_text()
    assert _messages(warehouse) == _expected(range(1, 191))
    assert read_replay_marks(open_warehouse(warehouse)) == []  # both replays are done


@pytest.mark.integration
def test_a_stop_during_the_replay_wait_ends_it_and_leaves_the_replay(tmp_path: Path) -> None:
    """A SIGTERM while the replay waits for a live peer that has not committed: nothing was
    acknowledged in this run, so the stop ends at once and leaves the replay, with its
    duplicate protection, to the next start, rather than waiting the timeout out and replaying
    anyway. It exits 1 with data in the buffer: exit 0 would say the volume is empty."""
    warehouse = str(tmp_path / "warehouse")
    a = start_aggregator(tmp_path, warehouse, ["--flush-interval", str(LONG_INTERVAL)], name="a")
    try:
        _send(a, "c1", range(1, 21))
        assert a.kill9() == -signal.SIGKILL
    finally:
        a.stop()
    wh = open_warehouse(warehouse)
    _live_peer(wh, "peer", committed_through=0.0)  # live, and never commits
    a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "1"], name="a")
    try:
        # As soon as it listens: its replay waits. (The timeout lets a stop that waits the
        # replay's 60 s out end, and show what it did: replay anyway.)
        assert a.stop(timeout=120) == 1, a.log_text()
    finally:
        a.stop()
    log = a.log_text()
    assert "have not committed their buffers" not in log, log
    assert "replay waits for peers ['peer']" in log, log
    assert "stopped before the replay of the 1 buffer segments" in log, log
    assert f"the data is safe in {a.buffer_dir} and will be written at the next start" in log
    assert _messages(warehouse) == []
    assert len(list(a.buffer_dir.glob(f"*{SEGMENT_SUFFIX}"))) == 1
    assert read_replay_marks(wh) == []
    node_a = (a.buffer_dir / NODE_ID_NAME).read_text().strip()
    assert (Path(warehouse) / LEDGER_DIR / NODES_DIR / f"{node_a}.json").exists()  # not empty

    Ledger(wh, "peer").forget()  # the peer stopped cleanly: its buffer is written
    a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "1"], name="a")
    try:
        assert a.stop() == 0, a.log_text()
    finally:
        a.stop()
    assert _messages(warehouse) == _expected(range(1, 21))


@pytest.mark.integration
def test_a_stop_with_new_data_waits_for_the_peer_then_writes_all(tmp_path: Path) -> None:
    """A SIGTERM during the replay's wait when this run acknowledged lines (they sit behind
    the replay): the stop goes on waiting for the peer, without replaying anyway, and writes
    everything once the peer has committed."""
    warehouse = str(tmp_path / "warehouse")
    a = start_aggregator(tmp_path, warehouse, ["--flush-interval", str(LONG_INTERVAL)], name="a")
    try:
        _send(a, "c1", range(1, 21))
        assert a.kill9() == -signal.SIGKILL
    finally:
        a.stop()
    wh = open_warehouse(warehouse)
    _live_peer(wh, "peer", committed_through=0.0)
    a = start_aggregator(tmp_path, warehouse, ["--flush-interval", "1"], name="a")
    try:
        _wait_for_log(a, "replay waits for peers ['peer']", "the replay's wait for the peer")
        _send(a, "c2", range(21, 41))
        a.proc.send_signal(signal.SIGTERM)
        wait_until(  # the stop's flush waits for the peer in turn
            lambda: a.log_text().count("replay waits for peers ['peer']") == 2,
            30,
            "the stop's wait for the peer",
            proc=a.proc,
            log=a.log,
        )
        # The peer commits past the replay's start by more than the slack a replay allows
        # for clock skew (committed_here): on a fast machine the SIGTERM came < 0.5 s in.
        time.sleep(SKEW_SLACK_S + 0.2)
        _live_peer(wh, "peer", committed_through=time.time())
        assert a.proc.wait(timeout=30) == 0, a.log_text()  # the one SIGTERM's stop ends
    finally:
        a.stop()
    log = a.log_text()
    assert "have not committed their buffers" not in log, log
    assert "stopped cleanly" in log, log
    assert _messages(warehouse) == _expected(range(1, 41))
    assert list(a.buffer_dir.glob(f"*{SEGMENT_SUFFIX}")) == []


# --- the order of replays (ledger.py), without processes ------------------------------------


def _mark(wh: Warehouse, node: str, since: float, updated: float | None = None) -> None:
    doc = {
        "node": node,
        "since": since,
        "updated": time.time() if updated is None else updated,
        "flush_interval": 1.0,
    }
    path = Path(wh.path(LEDGER_DIR, REPLAYING_DIR, f"{node}.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    backdate(path, doc["updated"])


def test_replays_wait_only_for_the_ones_that_began_earlier(tmp_path: Path) -> None:
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    for node in ("n0", "n1", "n2"):
        _live_peer(wh, node, committed_through=100.0)  # their heartbeats from before the crash
    n0, n1, n2 = Ledger(wh, "n0"), Ledger(wh, "n1"), Ledger(wh, "n2")
    n1.announce_replay(since=200.0, flush_interval=1.0)
    n0.announce_replay(since=201.0, flush_interval=1.0)
    n2.announce_replay(since=201.0, flush_interval=1.0)  # same start as n0: the node id decides
    now = time.time()
    assert n1.behind(200.0, now) == []
    assert n0.behind(201.0, now) == ["n1"]
    assert n2.behind(201.0, now) == ["n0", "n1"]
    n1.replay_done()  # n1's replay is written, and its heartbeat says how far
    _live_peer(wh, "n1", committed_through=205.0)
    assert n0.behind(201.0, now) == []
    assert n2.behind(201.0, now) == ["n0"]


def test_a_replaying_peer_counts_as_live_by_its_mark(tmp_path: Path) -> None:
    """A node down for long (stale heartbeat) that replays now is waited for by a replay that
    began after its own, as long as its mark is fresh; a mark left by a replay that stopped
    half-way goes stale with it."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    Ledger(wh, "old").heartbeat(0.0, 1.0)
    beat = Path(wh.path(LEDGER_DIR, NODES_DIR, "old.json"))
    beat.write_text(json.dumps({**json.loads(beat.read_text()), "updated": time.time() - 3600}))
    backdate(beat, time.time() - 3600)
    me = Ledger(wh, "me")
    assert me.behind(500.0, time.time()) == []  # stale heartbeat, no mark: down
    _mark(wh, "old", since=400.0)
    assert me.behind(500.0, time.time()) == ["old"]
    _mark(wh, "old", since=400.0, updated=time.time() - 3600)
    assert me.behind(500.0, time.time()) == []


def test_the_wait_for_peers_ends_when_stopped(tmp_path: Path) -> None:
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    _live_peer(wh, "peer", committed_through=0.0)
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    try:
        behind = Ledger(wh, "me").wait_for_peers(time.time(), timeout=600.0, stop=stop)
    finally:
        timer.cancel()
    assert behind == ["peer"]


# --- a later replay that read the ledger first (found by the R4s18 review) ------------------

FLUSH = 10.0


def _stale_heartbeat(wh: Warehouse, node: str) -> None:
    """The heartbeat of a node down for longer than it may stay unchanged."""
    Ledger(wh, node).heartbeat(time.time() - 3600, FLUSH)
    beat = Path(wh.path(LEDGER_DIR, NODES_DIR, f"{node}.json"))
    doc = json.loads(beat.read_text())
    beat.write_text(json.dumps({**doc, "updated": time.time() - stale_after(FLUSH) - 60}))
    backdate(beat, time.time() - stale_after(FLUSH) - 60)


def test_a_replay_waits_for_a_later_one_that_read_the_ledger_before_it_could_see_it(
    tmp_path: Path,
) -> None:
    """A was down long ago (stale heartbeat); B crashed just now, holding a batch a shipper
    resent from A. Both restart; A's replay began first but its buffer is larger, so B reaches
    its ledger read before A's mark exists: B waits for nobody and reads. A must then wait for
    B, although B's replay comes after its own, or both write that batch."""
    wh = open_warehouse(str(tmp_path / "warehouse"), create=True)
    a, b = Ledger(wh, "a"), Ledger(wh, "b")
    now = time.time()
    _stale_heartbeat(wh, "a")
    b.heartbeat(now - 30, FLUSH)
    since_a, since_b = now - 5, now - 3
    b.announce_replay(since_b, FLUSH)  # B's start-up
    assert b.check_in(since_b, FLUSH) == []  # no mark of A yet, A down: B reads the ledger
    a.announce_replay(since_a, FLUSH)  # A's start-up, once its buffer is read
    assert a.check_in(since_a, FLUSH) == ["b"]


def test_a_later_replay_that_sees_the_earlier_one_waits_and_does_not_hold_it(
    tmp_path: Path,
) -> None:
    """The other interleaving: A's mark is there when B checks. B waits for A and says it does
    not read the ledger, so A does not wait for B (no two replays wait for each other)."""
    wh = open_warehouse(str(tmp_path / "warehouse"), create=True)
    a, b = Ledger(wh, "a"), Ledger(wh, "b")
    now = time.time()
    _stale_heartbeat(wh, "a")
    b.heartbeat(now - 30, FLUSH)
    since_a, since_b = now - 5, now - 3
    a.announce_replay(since_a, FLUSH)
    b.announce_replay(since_b, FLUSH)
    assert b.check_in(since_b, FLUSH) == ["a"]
    assert a.check_in(since_a, FLUSH) == []
    (mark_b,) = [m for m in read_replay_marks(wh) if m.node == "b"]
    assert not mark_b.reads_ledger


def test_a_stale_leftover_mark_does_not_exempt_a_live_peer(tmp_path: Path) -> None:
    """B crashed mid-replay (its mark stays), then came back with an empty buffer and runs:
    fresh heartbeat, no replay. Its clock runs 10 min ahead, so its old mark orders it after
    any replay of A's; A must still wait for B, live and behind A's start (R4s18 review)."""
    wh = open_warehouse(str(tmp_path / "warehouse"), create=True)
    a, b = Ledger(wh, "a"), Ledger(wh, "b")
    now = time.time()
    b.announce_replay(now + 600, FLUSH)
    mark = Path(wh.path(LEDGER_DIR, REPLAYING_DIR, "b.json"))
    doc = json.loads(mark.read_text())
    mark.write_text(json.dumps({**doc, "updated": now - stale_after(FLUSH) - 60}))
    backdate(mark, now - stale_after(FLUSH) - 60)
    b.heartbeat(now - 30, FLUSH)
    assert a.behind(now, now) == ["b"]


@pytest.mark.integration
def test_an_aggregator_with_nothing_to_replay_removes_its_leftover_mark(tmp_path: Path) -> None:
    """Its mark from a run that crashed mid-replay would order this live node among the
    replays (fresh or not, with its clock ahead)."""
    warehouse = str(tmp_path / "warehouse")
    wh = open_warehouse(warehouse, create=True)
    _mark(wh, "n9", since=time.time() + 600)
    _mark(wh, "other", since=time.time())
    agg = start_aggregator(tmp_path, warehouse, ["--node-id", "n9"], name="n9")
    try:
        assert [m.node for m in read_replay_marks(wh)] == ["other"]  # before it listened
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()


# --- failed polls during the wait (R4s20 finding 5) ---------------------------------------------


def test_failed_polls_do_not_put_off_the_replay_waits_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A live peer stays behind, and every third read of the peers fails (a 503 now and
    then). A failed poll fails the flush; its retry used to begin a full wait again, so the
    timeout never came while the errors went on and the replay (with every segment behind
    it) waited for as long as they lasted. The wait's end now outlives a failed poll: the
    replay goes ahead once the timeout has run, counted from the first wait."""
    from aggregator import service as service_mod
    from aggregator.config import Settings
    from aggregator.service import Aggregator
    from aggregator.storage import StorageError
    from tests.aggregator.test_flusher import write_segment
    from tests.aggregator.test_quarantine import flush_buffer

    buffer_dir, warehouse = tmp_path / "buffer", str(tmp_path / "warehouse")
    buffer_dir.mkdir()
    rows = write_segment(buffer_dir / segment_name(1), 2, 30)  # left by a previous run
    _live_peer(open_warehouse(warehouse, create=True), "peer", committed_through=0.0)
    monkeypatch.setattr(service_mod, "REPLAY_PEER_WAIT_SECONDS", 2.0)
    agg = Aggregator(
        Settings(warehouse=warehouse, buffer_dir=str(buffer_dir), retry_max_interval=0.5)
    )
    real_check_in = Ledger.check_in
    polls = 0

    def flaky_check_in(ledger: Ledger, since: float, flush_interval: float) -> list[str]:
        nonlocal polls
        polls += 1
        if polls > 40:  # the wait went on far past its 2 s: end the test
            agg.stop()
        if polls % 3 == 0:
            raise StorageError("reading _ledger/_nodes/peer.json failed: 503 SlowDown")
        return real_check_in(ledger, since, flush_interval)

    monkeypatch.setattr(Ledger, "check_in", flaky_check_in)
    assert asyncio.run(asyncio.wait_for(flush_buffer(agg), 120)), f"{polls} polls"
    assert polls <= 12, polls
    assert "peers ['peer'] have not committed their buffers" in caplog.text
    assert len(_messages(warehouse)) + _envoy_rows(warehouse) == rows


def _envoy_rows(warehouse: str) -> int:
    if not (Path(warehouse) / "envoy_access").exists():
        return 0
    return read_table(warehouse, "envoy_access").num_rows
