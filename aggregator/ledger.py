"""The offset ledger: which lines every aggregator has committed, kept in the warehouse itself.

Each aggregator drops resent lines with its own per-source high-water marks (dedup.py). That is
enough while a source sticks to one aggregator, but not across a failover: a shipper whose batch
was fsync'd by aggregator A, which died before its ack went out, resends the batch to B. Both
now hold it; B commits it, and A would commit it again when it replays its buffer (restarted, or
drained by ``logq-aggregator drain`` after it died for good).

So every flushed segment also writes a small Parquet object of the ``(source_id, offset)`` pairs
it committed, ``<warehouse>/_ledger/<hour written>/<node>-<segment>.parquet``, *after* the
segment's data objects (a crash in between can only cause a duplicate, never a loss). A replaying
aggregator reads the other nodes' ledger objects written since its oldest segment, for the
sources in its segments, and drops the pairs found there.

Before it does, it waits until every live peer has committed what it acknowledged before the
replay began: each node publishes ``_ledger/_nodes/<node>.json`` after each flush pass,
``{"committed_through": t}`` meaning every record it acked before unix time ``t`` is committed
and in its ledger. Peers whose heartbeat is stale are taken as down; they reconcile against us
when they replay. The heartbeat also names the process that wrote it (``process``), by which
a start on a copy of a running node's buffer dir is refused (:mod:`aggregator.twins`). The
``_`` prefix keeps all of this out of the tables (DESIGN.md layout rule).

Two aggregators that crashed together replay together, and each would wait for the other's
heartbeat, which a replaying node publishes only once its own replay is written: a wait only the
timeout ended, after which both replayed without the protection. So a replaying node also
publishes ``_ledger/_replaying/<node>.json``, ``{"since": t}``: everything it acknowledged
before ``t`` is in the segments it replays, which it reconciles against the ledger only after
the peers it waits for have committed. Replays are ordered by ``(since, node)``: a node waits
for the replaying peers that come before it and not for those after it, which will skip what it
commits (:meth:`Ledger.behind`). The order is total, so no two replays wait for each other. The
mark is written at start-up, and says ``reads_ledger`` before each check of the peers that may
lead to reading what they committed (:meth:`Ledger.check_in`): a later replay that may have read
the ledger without seeing this node's mark is waited for like any live peer. A stale mark is
ignored, and a node starting with nothing to replay deletes its own. The
marker lives beside the heartbeats, not in them, so that a node of an older version (which
reads every ``_nodes/*.json``) sees heartbeats as before.

Heartbeats and marks are read whole in one request (:func:`aggregator.storage.read_small`), and a
read the warehouse refuses fails the caller, who holds and retries: taken for "no such node", a
torn read or a 503 let a replay stop waiting for a lagging peer, or compaction merge while a
crashed one's replay was pending (R3s20). Their age is the warehouse's (:class:`Dating`): a
peer whose clock is off is not taken for down, nor a down one for live.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator.storage import (
    SmallObject,
    StorageError,
    UnreadableObject,
    list_folder,
    put_bytes,
    put_table,
    read_small,
)
from aggregator.throttle import Throttle
from aggregator.twins import ProcessToken, this_process
from athena.schema import DT_FORMAT
from athena.warehouse import Warehouse

log = logging.getLogger("logq.aggregator.ledger")

T = TypeVar("T")

LEDGER_DIR = "_ledger"
NODES_DIR = "_nodes"
#: Where replaying nodes say since when they replay (:class:`ReplayMark`).
REPLAYING_DIR = "_replaying"
#: Ledger hours older than this are deleted by each compaction pass, and hourly by an aggregator
#: that does not compact (a replay needs only the objects written since its oldest segment).
RETENTION = timedelta(days=7)
#: How often an aggregator without ``--compact-interval`` runs :func:`expire_unless_held`.
EXPIRY_INTERVAL_S = 3600.0
#: A peer whose heartbeat is older than this many of its flush intervals (plus a minute) is down.
STALE_INTERVALS = 10
STALE_GRACE_S = 60.0
#: Reads of a ledger document that does not parse before it is skipped as damaged: a torn read
#: (pyarrow's two requests, where boto3 cannot be used) parses at the next try.
PARSE_ATTEMPTS = 3
PARSE_RETRY_S = 0.1
#: A writer's clock this far off this host's (both measured against the warehouse's) is
#: logged as a WARNING: staleness does not depend on it, but the replay wait corrects for it
#: only as well as the warehouse's whole-second times allow (docs/operations.md, clocks).
SKEW_WARN_S = 10.0
#: How often the skew of one node is logged again while it lasts.
SKEW_WARN_EVERY_S = 600.0
#: Seconds a replay adds to a peer's estimated skew before taking its ``committed_through``
#: as covering its start (beyond the warehouse's clock resolution, twice: two dates compared).
SKEW_SLACK_S = 0.5
#: Seconds a clean stop spends retrying the read of its own heartbeat (:meth:`Ledger.forget`)
#: before it removes it unchecked: with one read of a hung endpoint (~15 s, see
#: :data:`athena.warehouse.S3_SMALL_READ_TIMEOUT`) the stop stays well within the 120 s a
#: service manager gives it (``terminationGracePeriodSeconds``, ECS ``stopTimeout``).
FORGET_READ_S = 10.0
#: How often the ERROR about one ledger document refused for good is logged again.
UNREADABLE_LOG_EVERY_S = 600.0


def stale_after(flush_interval: float) -> float:
    """Seconds without a heartbeat after which a node flushing every ``flush_interval`` seconds
    counts as down. Compaction waits on a down node (:func:`compaction_blocker`), and merges no
    file younger than this (:func:`aggregator.compaction.grace.safe_grace`): until then nobody knows
    that a node crashed in the middle of a flush."""
    return STALE_INTERVALS * flush_interval + STALE_GRACE_S


LEDGER_SCHEMA = pa.schema([("source_id", pa.string()), ("offset", pa.int64())])


@dataclass(frozen=True)
class Dating:
    """When a ledger document was read, and how old it was then, by the warehouse's clock:
    whether a peer is down is judged on one clock, not by comparing its writer's ``updated``
    with this host's time (two hosts' clocks, R3s20)."""

    age: float
    """Seconds since it was written, by the warehouse's clock (S3 ``Date`` minus
    ``Last-Modified``; a file's mtime against this host's clock)."""
    seen: float
    """This host's clock when it was read: the age at a later time of this clock adds the
    time passed since."""
    skew: float
    """How many seconds the writer's clock runs ahead of this host's (negative: behind),
    estimated as (its ``updated`` - ``Last-Modified``) - (``seen`` - ``Date``)."""
    error: float
    """How far :attr:`skew` may be off: the warehouse's times are whole seconds on S3 (two
    of them compared), plus :data:`SKEW_SLACK_S` for the upload and response times."""

    @classmethod
    def of(cls, obj: SmallObject, updated: float) -> Dating:
        writer_ahead_of_store = updated - obj.written
        reader_ahead_of_store = obj.seen - obj.store_now
        return cls(
            obj.age,
            obj.seen,
            writer_ahead_of_store - reader_ahead_of_store,
            2 * obj.resolution + SKEW_SLACK_S,
        )


def _age(updated: float, dated: Dating | None, now: float) -> float:
    """Seconds a document written at ``updated`` (its writer's clock) has gone unchanged at
    ``now`` (this host's clock): from the warehouse's dating when there is one."""
    if dated is None:
        return now - updated
    return dated.age + (now - dated.seen)


@dataclass(frozen=True)
class Heartbeat:
    node: str
    committed_through: float
    updated: float
    flush_interval: float
    compacts: bool | None = None
    """Whether the node runs the periodic compaction (``--compact-interval``); None for the
    heartbeat of a version before this field, which may or may not: such a node is never
    waited for (see :func:`compaction_blocker`)."""
    process: ProcessToken | None = None
    """The process that wrote it (None: a version before this field): a copy of a running
    node's buffer dir is told by it (:mod:`aggregator.twins`)."""
    dated: Dating | None = field(default=None, compare=False)
    """How old the warehouse says it was when read (None: not read from the warehouse, then
    ``updated`` is compared with the caller's clock). Not part of equality: the same heartbeat
    read twice is the same heartbeat."""
    unreadable: UnreadableObject | None = field(default=None, compare=False)
    """Why the warehouse refuses for good to read it (403, archived: :func:`_unreadable_beat`);
    its other fields then say nothing. Such a node is taken as down for compaction (held, as
    for a crashed node) and as live and behind for a replay (waited for, up to the wait's
    timeout): whether it holds a buffer is unknown."""

    @property
    def stale_after(self) -> float:
        """Seconds without a new heartbeat after which this node counts as down."""
        return stale_after(self.flush_interval)

    def stale(self, now: float) -> bool:
        """Whether it was not rewritten for longer than :attr:`stale_after` at ``now`` (this
        host's clock): by the warehouse's clock, not by the writer's ``updated`` (R3s20: a
        reader 2 minutes ahead took every peer for crashed)."""
        return self.stale_for(now) > 0

    def stale_for(self, now: float) -> float:
        """Seconds since it went stale at ``now`` (negative while it is not), by the same
        clock as :meth:`stale`; infinite for one that cannot be read."""
        if self.unreadable is not None:
            return float("inf")
        return _age(self.updated, self.dated, now) - self.stale_after

    @property
    def committed_here(self) -> float:
        """``committed_through`` on this host's clock: moved back by how far the writer's
        clock runs ahead of this one (:attr:`Dating.skew`) and the error of that estimate, so
        that a replay never takes a peer for caught up early (lines stored twice).

        Never moved forward (R4s20): a skew estimated below zero is not only a writer's clock
        running behind. A heartbeat whose PUT reached the warehouse seconds after its
        ``updated`` (a retried or timed-out request), a ``Date`` set by a proxy's clock (nginx
        replaces S3's by default) or an mtime set by a file server's clock (NFS) read the same
        way, and crediting them let a replay go on before the peer committed. A peer whose
        clock really runs behind has committed long before the replay's wait times out: not
        crediting it costs at most that wait."""
        if self.dated is None:
            return self.committed_through
        return self.committed_through - max(0.0, self.dated.skew + self.dated.error)


@dataclass(frozen=True)
class ReplayMark:
    """A node replaying the buffer segments a previous run of it left (``_replaying/``)."""

    node: str
    since: float
    """Unix time at which the replay began: everything the node acknowledged before it is in
    the replayed segments (or was committed before it stopped)."""
    updated: float
    """When the mark was last written (at the start of the replay and after each segment)."""
    flush_interval: float
    reads_ledger: bool = False
    """Whether the node reads, or has read, what its peers committed (:meth:`Ledger.check_in`):
    from then on it no longer waits for the replays that come before it, so they must wait for
    it. False while it waits for its peers, or has not reached its first replayed flush."""
    dated: Dating | None = field(default=None, compare=False)
    """How old the warehouse says it was when read (see :attr:`Heartbeat.dated`)."""

    def stale(self, now: float) -> bool:
        """A mark not rewritten for as long as a heartbeat may stay unchanged: left by a node
        that stopped in the middle of its replay, or by an earlier run of a node that now runs
        with an empty buffer (and removes it at start). It is treated as absent
        (:meth:`Ledger.behind`): the order it states is void, its node is live only by its
        heartbeat. Judged by the warehouse's clock, like :meth:`Heartbeat.stale`."""
        return _age(self.updated, self.dated, now) > stale_after(self.flush_interval)

    def replays_after(self, since: float, node: str) -> bool:
        """Whether this replay comes after that of ``node`` begun at ``since``: the order of
        replays, by start time, then node id (a total order: no two replays wait for each
        other)."""
        return (self.since, self.node) > (since, node)


class Committed:
    """What a replay must not write again: ``(source_id, offset)`` pairs other nodes committed
    (a mask of rows to drop), and this node's own segments whose ledger entry exists (``done``:
    every data object of such a segment was written before its entry, so the whole segment is
    skipped -- rewriting it would duplicate rows once compaction has merged its objects)."""

    def __init__(self, table: pa.Table, done: frozenset[str] = frozenset()):
        self.done = done
        self.pairs = table.num_rows
        self._keys = _keys(table["source_id"], table["offset"]) if table.num_rows else None

    def seen(self, source_id: pa.Array, offset: pa.Array) -> pa.Array:
        if self._keys is None or len(source_id) == 0:
            return pa.array([False] * len(source_id), pa.bool_())
        return pc.fill_null(pc.is_in(_keys(source_id, offset), value_set=self._keys), False)


def _keys(source_id: pa.Array | pa.ChunkedArray, offset: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One string per pair (``source\\x00offset``): is_in works on one column."""
    joined = pc.binary_join_element_wise(source_id, pc.cast(offset, pa.string()), "\x00")
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def entry_name(node_id: str, segment_seq: int) -> str:
    """Name of the ledger entry of one flushed buffer segment."""
    return f"{node_id}-{segment_seq:016d}.parquet"


class Ledger:
    """One node's view of the ledger: writes its own entries, reads everyone else's."""

    def __init__(self, warehouse: Warehouse, node_id: str, *, compacts: bool = True):
        self.warehouse = warehouse
        self.node_id = node_id
        self.compacts = compacts
        self.process = this_process()
        """Written into each heartbeat: which process runs this node (twins.py)."""
        self.inherited: Heartbeat | None = None
        """The heartbeat found at start-up and judged to be a process that no longer runs
        (the previous run's, a dead node's for ``drain``): :meth:`forget` may remove it."""

    # --- writing ----------------------------------------------------------------------------

    def record(
        self,
        name: str,
        source_id: pa.Array | pa.ChunkedArray,
        offset: pa.Array | pa.ChunkedArray,
    ) -> None:
        """Note the committed pairs of one flushed segment (``name``: :func:`entry_name`).

        ``source_id`` may be dictionary-encoded (it is stored so and read back as strings)."""
        table = pa.table({"source_id": source_id, "offset": offset})
        table = table.filter(pc.and_(pc.is_valid(table["source_id"]), pc.is_valid(table["offset"])))
        # Written even when empty (Fluent Bit / fluent-logger records carry no position): the
        # entry also says "this segment is complete" to a replay of this node (see Committed).
        hour = datetime.now(UTC).strftime(DT_FORMAT)
        put_table(self.warehouse, self.warehouse.path(LEDGER_DIR, f"written={hour}", name), table)

    def heartbeat(self, committed_through: float, flush_interval: float) -> None:
        """Publish that everything acked before ``committed_through`` is committed."""
        doc = {
            "node": self.node_id,
            "committed_through": committed_through,
            "updated": time.time(),
            "flush_interval": flush_interval,
            "compacts": self.compacts,
            "process": self.process.as_doc(),
        }
        put_bytes(self.warehouse, self._beat_path, (json.dumps(doc) + "\n").encode("utf-8"))

    def forget(self) -> None:
        """Remove this node's heartbeat and replay mark: its buffer is empty (clean stop, or
        drained), so a replaying peer need not wait for it.

        Only a heartbeat this process wrote, or one written before it started (its previous
        run's, or a dead node's that ``drain`` writes out), is removed: one that another
        process wrote since is a twin's, still running under this node id (a copied buffer dir
        the start-up check missed, see twins.py), and peers must go on seeing it."""
        beat = self.own_heartbeat_or_none()
        if beat is not None and self._written_by_a_twin(beat):
            who = beat.process.describe() if beat.process else "a process of an older version"
            log.warning(
                "not removing the heartbeat of node %s: another process (%s) wrote it while "
                "this one ran, so two aggregators use this node id and overwrite each "
                "other's objects (a copied --buffer-dir): stop one of them and start it "
                "with an empty --buffer-dir",
                self.node_id,
                who,
            )
            return  # its replay mark too is the twin's, if any
        self.replay_done()
        self._delete(self._beat_path, "heartbeat")

    def announce_replay(
        self, since: float, flush_interval: float, reads_ledger: bool = False
    ) -> None:
        """Publish that this node replays what it acknowledged before ``since`` (see the module
        docstring): peers whose replay began earlier need not wait for it while it has not
        read the ledger (``reads_ledger``). Written at start-up, before each check of the peers
        (:meth:`check_in`), and after each replayed segment, so that a long replay keeps its
        node counted as live."""
        doc = {
            "node": self.node_id,
            "since": since,
            "updated": time.time(),
            "flush_interval": flush_interval,
            "reads_ledger": reads_ledger,
        }
        put_bytes(self.warehouse, self._mark_path, (json.dumps(doc) + "\n").encode("utf-8"))

    def check_in(self, since: float, flush_interval: float) -> list[str]:
        """The peers a replay begun at ``since`` must still wait for, checked so that a replay
        that comes before this one and this one never both go on without the other.

        The mark says ``reads_ledger`` *before* the peers are read: an earlier replay whose
        mark this check does not see wrote it after this write, so every check it makes sees
        this node reading the ledger and waits for it; one whose mark this check sees is
        waited for here. While peers are behind, the mark goes back to not reading, so that the
        earlier replays stop waiting for this one (no two replays wait for each other for
        long). OSError when the mark cannot be written: the replay must not go on (a peer
        could skip it)."""
        self.announce_replay(since, flush_interval, reads_ledger=True)
        behind = self.behind(since, time.time())
        if behind:
            self.announce_replay(since, flush_interval, reads_ledger=False)
        return behind

    def replay_done(self) -> None:
        """Remove this node's replay mark: its replay is written (or left for the next start,
        which writes a new one)."""
        self._delete(self._mark_path, "replay mark")

    def _written_by_a_twin(self, beat: Heartbeat) -> bool:
        """Whether another process wrote ``beat`` since this one started (the heartbeat found
        at start-up, unchanged, is not: whatever the clocks of the two hosts say)."""
        if beat.process == self.process or beat == self.inherited:
            return False
        return beat.updated >= self.process.started

    def _delete(self, path: str, what: str) -> None:
        try:
            self.warehouse.fs.delete_file(path)
        except FileNotFoundError:
            pass
        except (OSError, pa.ArrowException) as exc:
            log.warning("could not delete the %s %s: %s", what, path, exc)

    @property
    def _beat_path(self) -> str:
        return self.warehouse.path(LEDGER_DIR, NODES_DIR, f"{self.node_id}.json")

    @property
    def _mark_path(self) -> str:
        return self.warehouse.path(LEDGER_DIR, REPLAYING_DIR, f"{self.node_id}.json")

    # --- reading ----------------------------------------------------------------------------

    def own_heartbeat(self) -> Heartbeat | None:
        """This node id's heartbeat as it is in the warehouse (maybe another process's: see
        twins.py); None when there is none, or it still cannot be parsed after
        :data:`PARSE_ATTEMPTS` reads (a foreign file, logged). :class:`StorageError` when the
        warehouse cannot be read: that is no answer, and must not be taken for "none"."""
        return _read_document(self.warehouse, self._beat_path, _heartbeat, "ledger heartbeat")

    def own_heartbeat_or_none(
        self, attempts: int = 3, pause: float = 0.5, within: float = FORGET_READ_S
    ) -> Heartbeat | None:
        """:meth:`own_heartbeat`, read up to ``attempts`` times while the warehouse refuses
        (a 503 passes), none begun after ``within`` seconds (a hung endpoint: the stop must
        end within its grace period, see :data:`FORGET_READ_S`); None when it still cannot
        be read (logged), at once when it is refused for good. For the clean stop
        (:meth:`forget`): a heartbeat left in place would hold every peer's compaction once
        stale, so the stop removes it without the twin check then (a twin rewrites it at its
        next flush)."""
        give_up = time.monotonic() + within
        for attempt in range(attempts):
            try:
                return self.own_heartbeat()
            except OSError as exc:
                last = attempt + 1 == attempts or isinstance(exc, UnreadableObject)
                if last or time.monotonic() + pause >= give_up:
                    log.warning(
                        "could not read the heartbeat %s to check that no other process "
                        "wrote it (%s): removing it without that check",
                        self._beat_path,
                        exc,
                    )
                    return None
                time.sleep(pause)
        return None

    def peers(self) -> list[Heartbeat]:
        """The other nodes' latest heartbeats."""
        return [b for b in read_heartbeats(self.warehouse) if b.node != self.node_id]

    def behind(self, since: float, now: float) -> list[str]:
        """The live peers that may hold uncommitted lines they acknowledged before ``since``,
        the start of this node's replay: the ones it must wait for.

        A peer counts when its heartbeat is fresh, or its replay mark (a node replaying after
        a crash has only its old heartbeat, maybe stale); a stale mark counts as absent. It is
        behind while its heartbeat's ``committed_through`` is before ``since``, unless it
        replays *after* this node (:meth:`ReplayMark.replays_after`) and has not begun to read
        the ledger: all it acknowledged before ``since`` is then in its own replay, which will
        see this node's mark, wait for this one and skip what this one commits. A later replay
        that reads the ledger may not have seen this node's mark (:meth:`check_in`): waited
        for like any live peer."""
        beats = {b.node: b for b in self.peers()}
        marks = {
            m.node: m
            for m in read_replay_marks(self.warehouse)
            if m.node != self.node_id and not m.stale(now)
        }
        waited = []
        for node in sorted(beats.keys() | marks.keys()):
            beat, mark = beats.get(node), marks.get(node)
            if (
                mark is not None
                and mark.replays_after(since, self.node_id)
                and not mark.reads_ledger
            ):
                continue
            live = beat is not None and (beat.unreadable is not None or not beat.stale(now))
            live = live or mark is not None
            committed = beat.committed_here if beat is not None else 0.0
            if live and committed < since:
                waited.append(node)
        return waited

    def wait_for_peers(
        self,
        since: float,
        timeout: float,
        poll: float = 1.0,
        stop: threading.Event | None = None,
        flush_interval: float | None = None,
    ) -> list[str]:
        """Wait until no live peer is :meth:`behind` ``since``.

        Returns the peers still behind when ``timeout`` ran out or ``stop`` was set (the
        caller decides: replay anyway, a line they hold may then be written twice, or leave
        the replay for later). The peers are read again at each poll: a peer's replay mark
        may appear after the wait began (two nodes restarted together). With
        ``flush_interval`` (a replay, which reads the ledger once this returns), each poll
        is a :meth:`check_in`.
        """
        deadline = time.monotonic() + timeout
        while True:
            if flush_interval is None:
                behind = self.behind(since, time.time())
            else:
                behind = self.check_in(since, flush_interval)
            if not behind or time.monotonic() >= deadline:
                return behind
            wait = min(poll, max(0.0, deadline - time.monotonic()))
            if stop is None:
                time.sleep(wait)
            elif stop.wait(wait):
                return behind

    def committed_elsewhere(self, since: float, sources: set[str]) -> Committed:
        """Pairs of ``sources`` that other nodes committed, and this node's completed segments,
        from ledger objects written since ``since`` (unix time; read by the hour, from the hour
        before it)."""
        wanted = pa.array(sorted(sources), pa.string())
        done: set[str] = set()
        start = datetime.fromtimestamp(since, UTC).replace(minute=0, second=0, microsecond=0)
        hour, end = start - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
        parts: list[pa.Table] = []
        while hour <= end:
            folder = self.warehouse.path(LEDGER_DIR, f"written={hour.strftime(DT_FORMAT)}")
            for info in list_folder(self.warehouse, folder):
                name = info.base_name
                if not name.endswith(".parquet") or name.startswith((".", "_")):
                    continue
                if name.startswith(f"{self.node_id}-"):
                    done.add(name)
                    continue
                if not sources:
                    continue
                table = self._read(info.path)
                parts.append(table.filter(pc.is_in(table["source_id"], value_set=wanted)))
            hour += timedelta(hours=1)
        table = pa.concat_tables(parts) if parts else LEDGER_SCHEMA.empty_table()
        return Committed(table, frozenset(done))

    def _read(self, path: str) -> pa.Table:
        try:
            with self.warehouse.fs.open_input_file(path) as fh:
                return pq.read_table(fh, schema=LEDGER_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"reading ledger {path} from {self.warehouse.uri}: {exc}") from exc


def read_heartbeats(warehouse: Warehouse) -> list[Heartbeat]:
    """Every node's latest heartbeat (a node removes its own on a clean stop or drain).
    :class:`StorageError` when one cannot be read: a caller that went on without it could take
    a crashed node for one that stopped cleanly (compaction) or a lagging one for none (a
    replay), so it must try again later instead."""
    beats = _documents(warehouse, NODES_DIR, _heartbeat, "ledger heartbeat", _unreadable_beat)
    for beat in beats:
        _warn_of_skew(beat)
    return beats


def _unreadable_beat(exc: UnreadableObject) -> Heartbeat:
    """The heartbeat at ``exc.path`` that the warehouse refuses for good: its node (from the
    file name), marked :attr:`Heartbeat.unreadable`."""
    node = exc.path.rsplit("/", 1)[-1].removesuffix(".json")
    return Heartbeat(node, 0.0, 0.0, 0.0, unreadable=exc)


def _heartbeat(doc: dict[str, Any], obj: SmallObject) -> Heartbeat:
    beat = Heartbeat(
        str(doc["node"]),
        float(doc["committed_through"]),
        float(doc["updated"]),
        float(doc["flush_interval"]),
        _flag(doc.get("compacts")),
        ProcessToken.from_doc(doc.get("process")),
    )
    return replace(beat, dated=Dating.of(obj, beat.updated))


#: Node -> when (monotonic) its clock skew was last logged.
_SKEW_WARNED: dict[str, float] = {}


def _warn_of_skew(beat: Heartbeat) -> None:
    """Log a WARNING (at most every :data:`SKEW_WARN_EVERY_S` per node) when the clock of the
    node that wrote ``beat`` disagrees with this host's by more than :data:`SKEW_WARN_S`."""
    if beat.dated is None or abs(beat.dated.skew) <= max(SKEW_WARN_S, beat.dated.error):
        return
    last = _SKEW_WARNED.get(beat.node)
    if last is not None and time.monotonic() - last < SKEW_WARN_EVERY_S:
        return
    _SKEW_WARNED[beat.node] = time.monotonic()
    skew = beat.dated.skew
    log.warning(
        "the clock of aggregator %s runs %.0fs %s this host's (judged by the warehouse's "
        "clock; or the warehouse's times come from a clock of their own: a proxy's Date, a "
        "file server's mtime): peers' liveness does not depend on it, but keep the "
        "aggregators' clocks in sync (NTP, docs/operations.md)",
        beat.node,
        abs(skew),
        "ahead of" if skew > 0 else "behind",
    )


def read_replay_marks(warehouse: Warehouse) -> list[ReplayMark]:
    """The replay marks of the nodes replaying now (or that stopped in the middle of it)."""

    def mark(doc: dict[str, Any], obj: SmallObject) -> ReplayMark:
        updated = float(doc["updated"])
        return ReplayMark(
            str(doc["node"]),
            float(doc["since"]),
            updated,
            float(doc["flush_interval"]),
            bool(doc.get("reads_ledger", False)),
            Dating.of(obj, updated),
        )

    # A mark refused for good is left out: mostly one a lifecycle rule archived, left by a node
    # lost in the middle of its replay (stale for long); a live node is still seen by its
    # heartbeat. Its ERROR says to delete it.
    return _documents(warehouse, REPLAYING_DIR, mark, "replay mark", lambda _: None)


Build = Callable[[dict[str, Any], SmallObject], T]

#: Ledger folder -> the documents in it the warehouse refused for good at its last read
#: (:func:`unreadable_documents`).
_UNREADABLE: dict[str, tuple[str, ...]] = {}
_UNREADABLE_LOGGED = Throttle(
    UNREADABLE_LOG_EVERY_S, what="unreadable ledger documents", logger=log
)


def unreadable_documents(warehouse: Warehouse) -> list[str]:
    """The ledger documents (heartbeats, replay marks) of ``warehouse`` that it refused for good
    at the last read of their folder by this process (the gauge
    ``logq_aggregator_ledger_unreadable_objects``)."""
    folders = [warehouse.path(LEDGER_DIR, folder) for folder in (NODES_DIR, REPLAYING_DIR)]
    return sorted(path for folder in folders for path in _UNREADABLE.get(folder, ()))


def _documents(
    warehouse: Warehouse,
    folder: str,
    build: Build[T],
    what: str,
    unreadable: Callable[[UnreadableObject], T | None],
) -> list[T]:
    """``build`` of each JSON document in the ledger's ``folder`` (:func:`_read_document`):
    one removed since the listing is left out (its writer stopped cleanly); one that cannot be
    read now fails the whole call (:class:`StorageError`: a 503, a timeout pass; the caller
    holds and retries). One refused for good (:class:`UnreadableObject`: 403, archived) would
    fail every call until a person acts: it is logged as an ERROR that says what to do, and
    ``unreadable`` says what stands for it (None: left out)."""
    out, refused = [], []
    for info in list_folder(warehouse, warehouse.path(LEDGER_DIR, folder)):
        if not info.base_name.endswith(".json") or info.base_name.startswith((".", "_")):
            continue
        try:
            found = _read_document(warehouse, info.path, build, what)
        except UnreadableObject as exc:
            refused.append(info.path)
            _log_unreadable(warehouse, what, exc)
            found = unreadable(exc)
        if found is not None:
            out.append(found)
    _UNREADABLE[warehouse.path(LEDGER_DIR, folder)] = tuple(refused)
    return out


def _log_unreadable(warehouse: Warehouse, what: str, exc: UnreadableObject) -> None:
    """The ERROR for a ledger document refused for good, at most every
    :data:`UNREADABLE_LOG_EVERY_S` per document: what it is, why, and what to do."""
    if not _UNREADABLE_LOGGED.due(exc.path, time.time()):
        return
    consequence = (
        "compaction and ledger expiry wait, and replays wait up to their timeout, as for a "
        "node that stopped without writing out its buffer"
        if what == "ledger heartbeat"
        else "it is left out (its node counts as live by its heartbeat alone)"
    )
    log.error(
        "the %s %s cannot be read (%s): %s. If its node is gone for good (its buffer drained "
        "or lost), delete it (%s); otherwise let every aggregator read it "
        "(s3:GetObject, kms:Decrypt on its key) or restore it if a lifecycle rule archived "
        "it, and keep _ledger/ out of lifecycle transitions (docs/operations.md)",
        what,
        exc.path,
        exc.code,
        consequence,
        f"aws s3 rm s3://{exc.path}" if warehouse.is_s3 else f"rm {exc.path}",
    )


def _read_document(warehouse: Warehouse, path: str, build: Build[T], what: str) -> T | None:
    """``build`` of the JSON document at ``path``, read whole in one request
    (:func:`aggregator.storage.read_small`); None when there is none.

    A document that does not parse is read again (:data:`PARSE_ATTEMPTS` times): where boto3
    cannot be used, pyarrow's read of an object rewritten meanwhile is torn, and the next
    read gets a whole version. One that never parses (a foreign or damaged file) is skipped
    with a WARNING. A warehouse that cannot be read raises :class:`StorageError`: a throttled
    read (S3's 503 SlowDown) says nothing about whether the document is there."""
    problem: Exception | None = None
    for attempt in range(PARSE_ATTEMPTS):
        if attempt:
            time.sleep(PARSE_RETRY_S * attempt)
        obj = read_small(warehouse, path)
        if obj is None:
            return None
        try:
            return build(json.loads(obj.data), obj)
        except (ValueError, KeyError, TypeError) as exc:
            problem = exc
    log.warning(
        "ignoring unreadable %s %s (read %d times): %s", what, path, PARSE_ATTEMPTS, problem
    )
    return None


def _flag(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"'compacts' is {value!r}, not true or false")
    return value


@dataclass(frozen=True)
class CompactionHold:
    """Why a node must not compact now."""

    reason: str
    peer_down: bool
    """A node stopped without writing out its buffer (worth a WARNING), rather than another
    node being the one that compacts (the normal case on all but one aggregator)."""


def compaction_blocker(
    beats: list[Heartbeat], node_id: str | None, now: float, *, compacts: bool = True
) -> CompactionHold | None:
    """Why ``node_id`` (None: the ``compact`` command) must not compact now, or None.

    * A node whose heartbeat is stale stopped without writing out its buffer (a clean stop or
      ``drain`` removes the heartbeat). If it crashed in the middle of a segment, its replay
      rewrites that segment's objects: merged meanwhile, they would be stored twice. So nobody
      compacts until it is back or drained.
    * Of the live nodes that compact (``--compact-interval``, said in their heartbeat), only
      the one with the smallest id does: the flag can be set on every aggregator, and a
      second compactor never races the first. A node set alone would otherwise wait for ever
      behind a smaller one that never compacts.
    * The ledger's expiry (``compacts=False``: a node without the flag, hourly) follows the
      same election, so that exactly one node expires: none of them while a live node
      compacts (its passes expire the ledger), else the live one with the smallest id.
    * A node of an older version (no ``compacts`` in its heartbeat) is not waited for as the
      compactor: during a rolling upgrade it may compact beside the elected node (safe, only
      wasted work, see :mod:`aggregator.compaction`) rather than each node deferring to the
      other and none compacting or expiring the ledger.
    """
    refused = sorted(b.unreadable.path for b in beats if b.unreadable and b.node != node_id)
    if refused:
        reason = (
            f"the heartbeat {', '.join(refused)} cannot be read (access denied or archived): "
            "its node may have stopped without writing out its buffer. Delete it if that node "
            "is gone for good (drained, or its buffer lost), else let this aggregator read it"
        )
        return CompactionHold(reason, peer_down=True)
    stale = sorted(b.node for b in beats if b.node != node_id and b.stale(now))
    if stale:
        reason = (
            f"aggregator {', '.join(stale)} stopped without writing out its buffer (stale "
            f"heartbeat in {LEDGER_DIR}/{NODES_DIR}/): merging now could store rows of a segment "
            "it replays twice. Restart it, or run `logq-aggregator drain --buffer-dir DIR` on "
            "its buffer; if that buffer is lost for good, delete its heartbeat file"
        )
        return CompactionHold(reason, peer_down=True)
    if node_id is None:
        return None
    others = [b for b in beats if b.node != node_id]  # every one of them is fresh here
    compactors = sorted(b.node for b in others if b.compacts is True)
    if compacts:
        if compactors and compactors[0] < node_id:
            reason = f"aggregator {compactors[0]} compacts (the live one with the smallest node id)"
            return CompactionHold(reason, peer_down=False)
    elif compactors:
        reason = f"aggregator {compactors[0]} compacts, which expires the ledger"
        return CompactionHold(reason, peer_down=False)
    else:
        first = min((b.node for b in others), default=node_id)
        if first < node_id:
            reason = f"aggregator {first} expires the ledger (the live one with the smallest id)"
            return CompactionHold(reason, peer_down=False)
    return None


def expire_ledger(warehouse: Warehouse, now: datetime | None = None) -> int:
    """Delete ledger hours older than :data:`RETENTION`; returns how many were removed."""
    cutoff = ((now or datetime.now(UTC)) - RETENTION).strftime(DT_FORMAT)
    removed = 0
    for info in list_folder(warehouse, warehouse.path(LEDGER_DIR)):
        name = info.base_name
        old = name.startswith("written=") and name.removeprefix("written=") < cutoff
        if info.type == pafs.FileType.Directory and old:
            warehouse.fs.delete_dir(info.path)
            removed += 1
    return removed


def expire_unless_held(warehouse: Warehouse, node_id: str, now: float | None = None) -> int | None:
    """Expire the ledger (:func:`expire_ledger`) if ``node_id`` may: the number of hours
    removed, or None when it must not (logged).

    The ledger is what a replay reads, so it is expired under the rule that guards compaction
    (:func:`compaction_blocker`), not only by whoever compacts: while a node that stopped
    without writing out its buffer is neither back nor drained (stale heartbeat), nothing is
    deleted, since its replay, however late, reads the peers' entries written since its oldest
    segment and its own ones (to skip segments already written). Expiring only this node's own
    entries would not be safer: a down peer's replay needs them. Of the live nodes, none
    expires while one of them compacts (its passes expire the ledger), else only the one with
    the smallest id.
    """
    now = time.time() if now is None else now
    hold = compaction_blocker(read_heartbeats(warehouse), node_id, now, compacts=False)
    if hold is not None:
        if hold.peer_down:
            log.warning("ledger expiry deferred: %s", hold.reason)
        return None
    removed = expire_ledger(warehouse, datetime.fromtimestamp(now, UTC))
    if removed:
        log.info("deleted %d ledger hours older than %s", removed, RETENTION)
    return removed
