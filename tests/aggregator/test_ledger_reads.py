"""Reading the peers' heartbeats and replay marks (ledger.py) with several aggregators on one
warehouse (R3s20, audit A1s20 findings 1 and 4):

* a document rewritten while it is read is read as one whole version, never as a torn one
  taken for "no such node" (pyarrow read it in two S3 requests, a HEAD then a GET);
* a read the warehouse refuses (503 SlowDown) fails the caller, which then holds, instead of
  leaving the node out (a crashed node's hold on compaction vanished);
* whether a peer is down is judged by the warehouse's clock, not by comparing its writer's
  clock with the reader's; a replay corrects a peer's ``committed_through`` by its clock's
  skew measured against the warehouse's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from aggregator.compaction.command import compact_main
from aggregator.ledger import (
    LEDGER_DIR,
    NODES_DIR,
    Ledger,
    compaction_blocker,
    read_heartbeats,
    read_replay_marks,
    unreadable_documents,
)
from aggregator.storage import StorageError, read_small
from athena import warehouse as warehouse_mod
from athena.warehouse import Warehouse, open_warehouse, s3_client, s3_small_client
from tests.aggregator.helpers import LocalPassThrough
from tests.aggregator.s3_hook_proxy import S3HookProxy
from tests.support.seaweedfs import SeaweedFS

FLUSH = 1.0
#: Ten flush intervals and a minute: a heartbeat older than this is a down node's.
STALE = 10 * FLUSH + 60.0


@pytest.fixture
def proxy(seaweedfs: SeaweedFS, s3_env: dict[str, str]) -> Iterator[S3HookProxy]:
    """A proxy in front of the test S3 server, the one the code under test talks to."""
    hook = S3HookProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]))
    try:
        yield hook
    finally:
        hook.close()


def _through(proxy: S3HookProxy, uri: str, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    return open_warehouse(uri)


def _key(uri: str, node: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, f"{prefix}/{LEDGER_DIR}/{NODES_DIR}/{node}.json"


# --- a document rewritten between two requests -----------------------------------------------


@pytest.mark.integration
def test_a_heartbeat_rewritten_while_it_is_read_reads_whole(
    seaweedfs: SeaweedFS,
    s3_warehouse: str,
    proxy: S3HookProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peer rewrites its heartbeat right after the reader's first request for it was
    answered (a flush pass ending then): the reader still gets a whole version. Read in two
    requests (HEAD for the size, then a GET), the new, longer version came back cut at the old
    size: the live, lagging peer was left out of the replay's wait, and a running twin was
    taken as gone."""
    wh = _through(proxy, s3_warehouse, monkeypatch)
    since = time.time() + 3600  # the replay began after all the peer committed: it waits
    Ledger(wh, "peer").heartbeat(time.time(), FLUSH)
    proxy.seen.clear()
    bucket, key = _key(s3_warehouse, "peer")
    direct = seaweedfs.client()

    def rewrite_once_after(method: str, path: str) -> None:
        if key in path and method in ("HEAD", "GET"):
            proxy.after = None
            doc = json.loads(direct.get_object(Bucket=bucket, Key=key)["Body"].read())
            doc.update(updated=time.time(), padding="x" * 64)  # a pass later: longer
            direct.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode() + b"\n")

    reads = {
        "behind": lambda: Ledger(wh, "me").behind(since, time.time()) == ["peer"],
        "read_heartbeats": lambda: [b.node for b in read_heartbeats(wh)] == ["peer"],
        "own_heartbeat": lambda: Ledger(wh, "peer").own_heartbeat() is not None,
    }
    for what, right in reads.items():
        proxy.after = rewrite_once_after
        assert right(), f"{what}: the peer's heartbeat, rewritten while read, was taken as absent"
        assert proxy.after is None, f"{what}: the rewrite did not happen during the read"
    assert "HEAD" not in proxy.requests_to(key), "a heartbeat is read in one GetObject"


class _TornOnce(LocalPassThrough):
    """A local filesystem whose first read of each ``.json`` file returns only its first half,
    as pyarrow's two requests return an S3 object rewritten between them (the path taken
    where boto3 cannot be used: a filesystem :func:`open_warehouse` did not build)."""

    def __init__(self) -> None:
        super().__init__()
        self.torn: set[str] = set()

    def open_input_stream(self, path: str) -> pafs.NativeFile:
        if path.endswith(".json") and path not in self.torn:
            self.torn.add(path)
            with self.fs.open_input_stream(path) as fh:
                data = fh.read()
            import pyarrow as pa

            return pa.BufferReader(data[: len(data) // 2])
        return self.fs.open_input_stream(path)


def test_a_torn_read_is_read_again_not_taken_for_absence(tmp_path: Path) -> None:
    """Where a document can only be read in two requests, a torn read is retried: the peer's
    heartbeat is found, whole."""
    local = open_warehouse(str(tmp_path / "wh"), create=True)
    Ledger(local, "peer").heartbeat(123.0, FLUSH)
    torn = Warehouse(local.uri, pafs.PyFileSystem(_TornOnce()), local.base)
    beats = read_heartbeats(torn)
    assert [(b.node, b.committed_through) for b in beats] == [("peer", 123.0)]
    Ledger(local, "twin").heartbeat(5.0, FLUSH)
    assert Ledger(torn, "twin").own_heartbeat() is not None


# --- a read the warehouse refuses --------------------------------------------------------------


@pytest.mark.integration
def test_a_throttled_heartbeat_read_holds_compaction(
    s3_warehouse: str,
    proxy: S3HookProxy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A crashed node's stale heartbeat holds compaction. When S3 answers the reads of it with
    503 SlowDown, the hold must stay: the read fails the check (``compact`` exits 1, to be run
    again), where the node used to be skipped as unreadable, and the pass went ahead."""
    wh = _through(proxy, s3_warehouse, monkeypatch)
    Ledger(wh, "dead").heartbeat(time.time() - 3600, FLUSH)  # then it crashed
    later = time.time() + STALE + 60  # its heartbeat is stale by then
    hold = compaction_blocker(read_heartbeats(wh), None, later)
    assert hold is not None and hold.peer_down and "dead" in hold.reason

    proxy.throttled = re.compile(r"_nodes/dead\.json")
    with pytest.raises(StorageError, match=r"dead\.json"):
        read_heartbeats(wh)
    assert compact_main(["--warehouse", s3_warehouse]) == 1
    err = capsys.readouterr().err
    assert "dead.json" in err and "compacted" not in err, err


# --- clocks --------------------------------------------------------------------------------------


def _rewrite(wh: Warehouse, node: str, **fields: float) -> None:
    """Change fields of ``node``'s heartbeat as its writer's clock would have set them (the
    file's mtime, the warehouse's clock, stays now)."""
    path = Path(wh.path(LEDGER_DIR, NODES_DIR, f"{node}.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}) + "\n")


def test_a_peer_whose_clock_is_behind_is_not_taken_for_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """b-node's clock runs 200 s behind a-node's (more than its staleness of 70 s): b-node's
    fresh heartbeat says it was written 200 s ago. a-node used to take it for crashed, told the
    operator to drain it, and compacted nothing while b-node deferred to a-node."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    Ledger(wh, "b-node").heartbeat(time.time(), FLUSH)
    _rewrite(wh, "b-node", updated=time.time() - 200, committed_through=time.time() - 200)
    assert compaction_blocker(read_heartbeats(wh), "a-node", time.time()) is None
    assert "b-node runs 200s behind this host" in caplog.text
    # And a heartbeat that stops changing still goes stale, by the same clock.
    later = time.time() + STALE + 1
    hold = compaction_blocker(read_heartbeats(wh), "a-node", later)
    assert hold is not None and hold.peer_down


@pytest.mark.integration
def test_staleness_on_s3_is_judged_by_the_s3_clock(s3_warehouse: str, s3_env: object) -> None:
    """On S3 the age is the answer's ``Date`` less the object's ``Last-Modified``: a heartbeat
    whose writer's clock is an hour behind is fresh, and ages with time."""
    wh = open_warehouse(s3_warehouse)
    Ledger(wh, "b-node").heartbeat(time.time() - 7200, FLUSH)
    path = wh.path(LEDGER_DIR, NODES_DIR, "b-node.json")
    beat = read_heartbeats(wh)[0]
    doc = {**json.loads(wh.fs.open_input_stream(path).read()), "updated": beat.updated - 3600}
    with wh.fs.open_output_stream(path) as out:
        out.write(json.dumps(doc).encode())
    (beat,) = read_heartbeats(wh)
    assert not beat.stale(time.time())
    assert beat.stale(time.time() + STALE + 2)
    assert beat.dated is not None and -3605 < beat.dated.skew < -3595, beat.dated


def test_a_replay_does_not_take_a_peer_whose_clock_is_ahead_for_caught_up(
    tmp_path: Path,
) -> None:
    """The peer's clock runs 120 s ahead: its ``committed_through`` 100 s after this replay's
    start, by its clock, is 20 s before it in truth. The replay must go on waiting for it (it
    used to stop, and the lines a shipper resent to the peer were stored twice). A peer whose
    clock seems to run behind is not credited (R4s20): it is waited for until its own
    ``committed_through`` passes the start, as before the skew was measured; one that has
    caught up by its own clock is not waited for."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    since = time.time()
    Ledger(wh, "ahead").heartbeat(0.0, FLUSH)
    _rewrite(wh, "ahead", updated=time.time() + 120, committed_through=since + 100)
    Ledger(wh, "behind").heartbeat(0.0, FLUSH)
    _rewrite(wh, "behind", updated=time.time() - 120, committed_through=since - 100)
    Ledger(wh, "caught-up").heartbeat(0.0, FLUSH)
    _rewrite(wh, "caught-up", updated=time.time() - 120, committed_through=since + 1)
    assert Ledger(wh, "me").behind(since, time.time()) == ["ahead", "behind"]


def test_a_heartbeat_dated_later_than_written_does_not_credit_its_peer(tmp_path: Path) -> None:
    """Both aggregators' clocks agree (one host); the peer committed through 2 s before this
    replay's start. Its heartbeat file's mtime is 3 s after its ``updated``: a file server
    whose clock runs 3 s ahead (NFS sets mtime by the server's clock), or a write that took
    3 s. Read as the peer's clock running 3 s behind, it was credited 3 s and the replay
    went on while the peer had not committed the lines a shipper resent to it (R4s20)."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    since = time.time()
    Ledger(wh, "peer").heartbeat(since - 2.0, FLUSH)
    path = Path(wh.path(LEDGER_DIR, NODES_DIR, "peer.json"))
    updated = json.loads(path.read_text())["updated"]
    os.utime(path, (updated + 3.0, updated + 3.0))
    assert Ledger(wh, "me").behind(since, time.time()) == ["peer"]


@pytest.mark.integration
def test_a_heartbeat_that_reached_s3_late_does_not_credit_its_peer(
    s3_warehouse: str, s3_env: object
) -> None:
    """Both clocks agree; the peer's heartbeat PUT reached S3 4 s after the peer stamped its
    ``updated`` (a request that timed out once and was sent again: pyarrow's S3 client gives
    a request 3 s). Its ``Last-Modified`` then says the peer's clock runs ~4 s behind, and
    that credit, less the 2.5 s margin, took a peer that had committed through 0.4 s before
    the replay's start for caught up, every time (R4s20)."""
    wh = open_warehouse(s3_warehouse)
    since = time.time()
    doc = {"node": "peer", "committed_through": since - 0.4, "flush_interval": FLUSH}
    doc["updated"] = time.time() - 4.0  # what a PUT sent 4 s after the stamp leaves
    path = wh.path(LEDGER_DIR, NODES_DIR, "peer.json")
    with wh.fs.open_output_stream(path) as out:
        out.write(json.dumps(doc).encode())
    assert Ledger(wh, "me").behind(since, time.time()) == ["peer"]


def test_a_pass_under_way_stops_when_the_heartbeats_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic pass re-reads the heartbeats between partitions: a read the warehouse
    refuses stops it (the next pass retries), as a peer that went down does."""
    from aggregator import compact_loop
    from aggregator.config import Settings
    from aggregator.metrics import Metrics

    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    loop = compact_loop.PeriodicCompaction(wh, Settings(), Metrics(), Ledger(wh, "node-a"))
    monkeypatch.setattr(compact_loop, "HOLD_RECHECK_SECONDS", 0.0)
    hold = loop._hold_checker()
    assert hold() is None

    def refused(_: Warehouse) -> list[object]:
        raise StorageError("listing _ledger/_nodes failed: 503 SlowDown")

    monkeypatch.setattr(compact_loop, "read_heartbeats", refused)
    reason = hold()
    assert reason is not None and "503 SlowDown" in reason


# --- a hung endpoint -----------------------------------------------------------------------------


class _Silent:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a hung S3
    endpoint (an overloaded gateway, a volume server that stopped answering GETs)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                self.accepted.append(self._server.accept()[0])

    def close(self) -> None:
        self._server.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Silent]:
    """A warehouse endpoint that never answers, and the AWS settings that point at it."""
    server = _Silent()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    for name, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    try:
        yield server
    finally:
        server.close()


def _within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """What ``call`` raised (None: it returned), failing the test if it has not ended after
    ``seconds``: a hang detector, not a timing (it runs in a thread left behind then)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting on a hung endpoint after {seconds:.0f}s: no read timeout"
    return outcome[0]


def test_the_s3_clients_have_timeouts_close_to_pyarrows(silent: _Silent) -> None:
    """botocore's defaults (60 s to connect, 60 s per read, 3 attempts) let one heartbeat read
    of a hung endpoint take 4 minutes (R4s20): the clients carry the module's timeouts."""
    settings = open_warehouse("s3://bucket/wh").s3
    assert settings is not None
    for client, read in (
        (s3_client(settings), warehouse_mod.S3_READ_TIMEOUT),
        (s3_small_client(settings), warehouse_mod.S3_SMALL_READ_TIMEOUT),
    ):
        assert client.meta.config.connect_timeout == warehouse_mod.S3_CONNECT_TIMEOUT <= 5
        assert client.meta.config.read_timeout == read
        assert client.meta.config.retries["total_max_attempts"] == 3  # as pyarrow's
    assert warehouse_mod.S3_SMALL_READ_TIMEOUT <= 5 < warehouse_mod.S3_READ_TIMEOUT <= 30


def test_a_hung_endpoint_fails_a_heartbeat_read_instead_of_holding_it(
    silent: _Silent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One heartbeat read of an endpoint that takes the request and never answers: boto3's
    three attempts each time out, and the read fails (a StorageError the caller holds on);
    pyarrow's requests, which would wait on the same endpoint, are not sent after them. The
    read timeout is shortened here so that the test takes seconds; its value is checked above."""
    monkeypatch.setattr(warehouse_mod, "S3_SMALL_READ_TIMEOUT", 0.3)
    wh = open_warehouse("s3://bucket/wh")
    error = _within(30, lambda: read_small(wh, wh.path(LEDGER_DIR, NODES_DIR, "peer.json")))
    assert isinstance(error, StorageError) and "timed out" in str(error), error
    assert len(silent.accepted) == 3, "boto3's three attempts, and no pyarrow requests after"

    # A clean stop reads its own heartbeat (to spare a twin's): not again and again past
    # its budget. One read of it, here: the budget is spent by then.
    silent.accepted.clear()
    assert _within(30, lambda: Ledger(wh, "me").own_heartbeat_or_none(within=0.0)) is None
    assert len(silent.accepted) == 3, "one read (three attempts), not three reads"


# --- a document refused for good ------------------------------------------------------------------


@pytest.mark.integration
def test_a_replay_mark_refused_for_good_no_longer_stops_replays(
    s3_warehouse: str,
    proxy: S3HookProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node lost in the middle of its replay left its replay mark; a lifecycle rule archived
    it, and S3 answers its GET with 403 InvalidObjectState for good. Every replay poll used to
    fail on it, so a restarting node's replay (and the segments behind it) waited for ever.
    Now the mark is left out, with an ERROR that names it and says what to do, and counted."""
    wh = _through(proxy, s3_warehouse, monkeypatch)
    since = time.time()
    Ledger(wh, "lost").announce_replay(since - 86400, FLUSH)
    Ledger(wh, "peer").heartbeat(since + 10, FLUSH)  # a live peer that has caught up
    proxy.refused, proxy.refused_code = re.compile(r"_replaying/lost\.json"), "InvalidObjectState"

    assert read_replay_marks(wh) == []
    assert Ledger(wh, "me").check_in(since, FLUSH) == []  # the replay goes on
    mark = wh.path(LEDGER_DIR, "_replaying", "lost.json")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors  # once per object, not at every poll
    assert f"the replay mark {mark} cannot be read (InvalidObjectState)" in errors[0]
    assert f"delete it (aws s3 rm s3://{mark})" in errors[0]
    assert unreadable_documents(wh) == [mark]

    proxy.refused = None  # deleted or restored: no longer counted
    read_replay_marks(wh)
    assert unreadable_documents(wh) == []


@pytest.mark.integration
def test_a_heartbeat_refused_for_good_holds_compaction_and_says_what_to_do(
    s3_warehouse: str,
    proxy: S3HookProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A heartbeat S3 refuses for good (AccessDenied: a KMS key this role may not use): whether
    its node holds a buffer is unknown. Compaction holds, as for a crashed node, naming the
    object and what to do (``compact`` exits 3: no restart ends this wait), the metric counts
    it; a replay waits for it like a live peer that is behind (then, after its timeout,
    replays anyway) instead of failing every poll for ever."""
    from aggregator.compact_loop import PeriodicCompaction
    from aggregator.config import Settings
    from aggregator.metrics import Metrics

    wh = _through(proxy, s3_warehouse, monkeypatch)
    since = time.time()
    Ledger(wh, "locked").heartbeat(since + 1, FLUSH)
    proxy.refused = re.compile(r"_nodes/locked\.json")

    (beat,) = read_heartbeats(wh)
    assert beat.node == "locked" and beat.unreadable is not None
    beat_path = wh.path(LEDGER_DIR, NODES_DIR, "locked.json")
    hold = compaction_blocker([beat], "me", time.time())
    assert hold is not None and hold.peer_down and beat_path in hold.reason
    assert Ledger(wh, "me").behind(since, time.time()) == ["locked"]
    assert f"the ledger heartbeat {beat_path} cannot be read (AccessDenied)" in caplog.text

    metrics = Metrics()
    PeriodicCompaction(wh, Settings(), metrics, Ledger(wh, "me"))._count_down([beat])
    assert metrics.registry.get_sample_value("logq_aggregator_ledger_unreadable_objects") == 1
    assert metrics.registry.get_sample_value("logq_aggregator_peers_down") == 1

    assert compact_main(["--warehouse", s3_warehouse]) == 3
    err = capsys.readouterr().err
    assert beat_path in err and "No restart ends this wait" in err, err
