"""Drop lines a shipper resends: per-source high-water offsets, committed with the Parquet files.

Every record from ``logq-shipper`` carries ``source_id`` (a stable id of the file it came from)
and ``offset`` (the byte offset just past the line, strictly increasing per source). A lost ack or
a shipper crash makes the shipper resend lines the aggregator already has; those are acknowledged
again and dropped here, at flush time, for the whole batch at once (Arrow group-by, no per-line
loop). A record is kept when its offset is above the highest committed for its source and it is
the first occurrence of its ``(source_id, offset)`` in the batch. Records without ``source_id``
(Fluent Bit, fluent-logger …) are not deduplicated here; a resent message of theirs is
recognised by its ``chunk`` id when it arrives (:mod:`aggregator.chunks`).

The high-water marks are saved durably *after* the batch's Parquet objects are committed and
*before* the buffer segment is deleted, so a crash at any point either replays the segment with
the old marks (rewriting the same object keys with the same rows) or finds every row already
committed.

Why a snapshot plus a journal. A source id is ``host:inode:fingerprint``, so every rotated file is
a new source: an aggregator remembers hundreds of thousands of them (~33k new a day at the
documented sizing, kept 14 days). Rewriting them all at every flush cost seconds and tens of MB
per flush, and ``json.dumps`` of the whole map held the GIL, stalling acks. So a flush appends
only the marks it changed to ``offsets.journal`` (one checksummed record ``[u32 length][u32
crc32][JSON list of [source, offset, seen]]``, fsync'd, the same framing as buffer segments);
the snapshot ``offsets.json`` (the same JSON object as before: ``{source: [offset, seen]}``) is
rewritten only when the journal outgrows it (or :data:`JOURNAL_MIN_BYTES`) and at a clean stop,
in chunks that let other threads run. Loading reads the snapshot then replays the journal;
merging takes the highest offset and latest time, so a replay is idempotent (a crash between a
snapshot's rename and the journal's truncation replays marks the snapshot already holds). A torn
last journal record is a save cut by a crash: its segment was not deleted, so the record is
dropped (and cut off the file) and the segment is replayed with the older marks. A directory
with only an ``offsets.json`` (an earlier version) loads as before.

A flush advances a :meth:`OffsetState.fork`: an overlay of the marks its segment raised over the
live map (nothing copied, so a flush costs what its segment changed, not what is remembered);
:meth:`OffsetState.adopt` merges the overlay once the segment is committed. The overlay reads
through to the live map, which is safe because one buffer's segments are flushed one at a time
and in order (service.py ``_flush_lock``), as the high-water rule requires anyway. Adopting
merges (highest offset wins) rather than replacing the map, so no fork can lower a mark.

Why 14 days (:data:`DEFAULT_RETENTION_S`). Sources unseen that long are forgotten at snapshot
time. A mark only matters when a shipper resends lines this aggregator already committed, and
the shipper resends from its checkpoint (shipper/checkpoint.py: the last *acknowledged* offset
per file, kept as long as the file exists). A host cut off or powered off, or all aggregators
down (docs/operations.md section 1-2: "the log files are the buffer"), delays that resend by the
length of the outage, which nothing in the aggregator bounds: only the hosts' log retention does.
A shorter retention would turn a long outage's resend into duplicates; at ~100 bytes a source
the 14 days cost ~45 MB of disk and ~150 MB of memory at the documented sizing
(bench/offsets.py), and no longer any per-flush cost, so the retention stays.

Why a bound on the sources too (:data:`MAX_SOURCES`). The retention bounds them by time, not by
number: a client that makes up a new ``source_id`` per file, per message or per record (20,000
in 20 messages, in one probe) grows the map, ``offsets.json`` and every snapshot's cost without
limit. Past :data:`MAX_SOURCES` (over twice the ~460,000 sources of the documented sizing), the
least recently seen sources are forgotten, down to :data:`EVICT_TO` (so it happens once per
100,000 new sources, not at every flush), as the retention would have forgotten them later, and
the next save writes the snapshot without them; a WARNING says so (at most every
:data:`EVICT_WARN_SECONDS`) and ``logq_aggregator_sources_evicted_total`` counts them.
What it costs: lines such a source resends later may be stored twice, exactly as after the
retention. Each id is at most ~512 bytes (:mod:`aggregator.source_ids`), so the map stays within
a few hundred MB whatever is sent.

Why the map is kept in the order the sources were last seen. Finding the least recently seen
by their times took ~0.15 s at 1,000,000 sources, under the lock and mostly holding the GIL
(a copy of every key, every time read into an array, a partition). Instead a raised mark is
moved to the end of the dict (popped and put back), so the least recently seen are the first
ones and forgetting them costs what is forgotten, taken in parts that let the event loop run
(``bench/offsets.py --evict``). A source raised again within :data:`ORDER_SLACK_S` keeps its
place: every move takes a new slot of the dict, which rebuilds itself once they run out, so
moving at every flush cost a ~50 ms rebuild every few hundred thousand raises; the order is
then by last seen within that slack, which does not matter to what is forgotten. The snapshot
is written in that order, so a restart reads it back in order; a file in another order (an
earlier version wrote first-seen order; the clock stepped back) is put in order once at load.
Replaying the journal moves the sources it raised, so a restart with a journal near its bound
may rebuild the dict once (bench/offsets.py: a peak RSS ~60 MB higher at 1,000,000 sources and
400,000 raised in the journal).
The file format is unchanged, and an earlier version reads what this one writes. Lookups
(:meth:`OffsetState.get`, once per source per batch) are unchanged.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregator.durable import atomic_file, fsync_dir
from aggregator.frames import HEADER, Scan, encode_frame, scan_frames

log = logging.getLogger("logq.aggregator.dedup")

#: The snapshot's name in the buffer dir (service.py loads it there; state_files.py checks it).
OFFSETS_NAME = "offsets.json"
#: What :func:`journal_path` puts after the snapshot's stem.
_JOURNAL_SUFFIX = ".journal"
#: The journal's name beside :data:`OFFSETS_NAME` (:func:`journal_path` of it).
OFFSETS_JOURNAL_NAME = f"{Path(OFFSETS_NAME).stem}{_JOURNAL_SUFFIX}"
DEFAULT_RETENTION_S = 14 * 24 * 3600
#: The journal is folded into a new snapshot once it is larger than the snapshot and than this.
JOURNAL_MIN_BYTES = 8 << 20
#: Sources encoded at once when a snapshot is written, or forgotten at once for
#: :data:`MAX_SOURCES` (each part lets other threads run).
SNAPSHOT_CHUNK = 10_000
#: Sources remembered at most: past it, the least recently seen are forgotten (module docstring).
MAX_SOURCES = 1_000_000
#: Sources kept when some are forgotten for :data:`MAX_SOURCES` (a tenth below it).
EVICT_TO = MAX_SOURCES - MAX_SOURCES // 10
#: Seconds between two WARNINGs about forgotten sources.
EVICT_WARN_SECONDS = 600.0
#: Seconds a source raised again keeps the place in the map its first raise in that time gave
#: it: moving it at every flush made the dict rebuild itself (~50 ms holding the GIL at 1,000,000
#: sources) after every few hundred thousand raises. The order is by last seen within this.
ORDER_SLACK_S = 300.0

_Mark = tuple[int, float]
_SNAPSHOT_TYPE = dict[str, tuple[int, float]]
_RECORD_TYPE = list[tuple[str, int, float]]


def _increasing_per_source(keyed: pa.Array, row_source: pa.Array, offset: pa.Array) -> bool:
    """True when, for every source, the keyed rows' offsets strictly rise in row order."""
    source = row_source.filter(keyed).to_numpy(zero_copy_only=False)
    offsets = offset.filter(keyed).to_numpy(zero_copy_only=False)
    order = np.argsort(source, kind="stable")
    source, offsets = source[order], offsets[order]
    same_source = source[1:] == source[:-1]
    return bool(np.all(~same_source | (offsets[1:] > offsets[:-1])))


def _merge(current: _Mark | None, offset: int, seen: float) -> _Mark:
    """The higher offset and the later time (marks only rise; merging twice changes nothing)."""
    if current is None:
        return (offset, seen)
    return (max(offset, current[0]), max(seen, current[1]))


def journal_path(snapshot: Path) -> Path:
    """``<dir>/offsets.json`` -> ``<dir>/offsets.journal``."""
    return snapshot.with_name(f"{snapshot.stem}{_JOURNAL_SUFFIX}")


class OffsetState:
    """``source_id -> (highest committed offset, last seen unix time)``: a JSON snapshot plus an
    append-only journal of the marks each flush changed (see the module docstring).

    A state made by :meth:`fork` is an overlay: it reads through to its base and holds only the
    marks raised since; it is never saved itself, only adopted by its base.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        retention_s: float = DEFAULT_RETENTION_S,
        journal_min_bytes: int = JOURNAL_MIN_BYTES,
        max_sources: int = MAX_SOURCES,
        evict_to: int = EVICT_TO,
    ):
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self.retention_s = retention_s
        self.journal_min_bytes = journal_min_bytes
        self.max_sources = max_sources
        self.evict_to = min(evict_to, max_sources)
        self.evicted = 0
        """Sources forgotten for :data:`MAX_SOURCES` since the start (a metric reads it)."""
        self._evict_warned: float | None = None
        self._snapshot_due = False
        """Sources were forgotten for the bound: the next save writes the snapshot without them."""
        self._marks: dict[str, _Mark] = {}
        """The base's map; a fork's marks raised since it was made."""
        self._base: OffsetState | None = None
        self._dirty: dict[str, _Mark] = {}
        """Marks changed since the last save (the next journal record)."""
        self._moved: set[str] = set()
        """Sources moved to the end of the map since ``_moved_since`` (:data:`ORDER_SLACK_S`)."""
        self._moved_since = -ORDER_SLACK_S
        self._lock = threading.RLock()
        """Serialises changes to the map with saves, and a fork's reads of its base (a fork
        shares its base's: two flush threads may share the base)."""
        self._journal_bytes = 0
        self._snapshot_bytes = 0

    # --- loading --------------------------------------------------------------------------

    def load(self) -> OffsetState:
        """Read the snapshot, then replay the journal (a torn last record is cut off)."""
        try:
            data = self.path.read_bytes()
            self._snapshot_bytes = len(data)
            snapshot = msgspec.json.decode(data, type=_SNAPSHOT_TYPE)
        except FileNotFoundError:
            snapshot = {}
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise OSError(
                f"{self.path} is unreadable ({exc}); restore it or delete it (resent lines "
                "may then be stored twice)"
            ) from exc
        self._marks = snapshot  # decoded as (int, float) tuples: no second copy
        self._replay_journal()
        self._order_by_seen()
        self._bound()
        return self

    def _order_by_seen(self) -> None:
        """Put the map in the order the sources were last seen, if it is not (a snapshot from
        an earlier version, written in first-seen order; a clock that stepped back): eviction
        takes the first ones (see the module docstring). Checked at load only."""
        seen = np.fromiter((mark[1] for mark in self._marks.values()), np.float64)
        if len(seen) < 2 or bool(np.all(np.maximum.accumulate(seen) - seen <= ORDER_SLACK_S)):
            return
        sids = list(self._marks)
        marks = self._marks
        self._marks = {sids[i]: marks[sids[i]] for i in np.argsort(seen, kind="stable").tolist()}

    def _replay_journal(self) -> None:
        if not self.journal.exists():
            return

        def damaged(pos: int, length: int) -> None:
            log.error(
                "%s: the record at offset %d (%d bytes) is damaged though records follow it "
                "(disk damage): its marks are lost, so lines its sources resend may be stored "
                "twice (check the disk)",
                self.journal,
                pos,
                length,
            )

        with open(self.journal, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            scan = Scan()
            for payload in scan_frames(fh, size, scan, damaged):
                if not self._apply(payload):
                    damaged(scan.end - HEADER.size - len(payload), HEADER.size + len(payload))
            if scan.end < size:
                log.warning(
                    "%s: cutting off %d bytes of a torn record at offset %d (a save cut by a "
                    "crash: its segment is replayed with the older marks)",
                    self.journal,
                    size - scan.end,
                    scan.end,
                )
                fh.truncate(scan.end)
                fh.flush()
                os.fsync(fh.fileno())
            self._journal_bytes = scan.end

    def _apply(self, payload: bytes) -> bool:
        """Merge one journal record's marks; False if it does not decode."""
        if not payload:
            return True  # a zero-filled tail reads as empty records: nothing in them
        try:
            entries = msgspec.json.decode(payload, type=_RECORD_TYPE)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        marks = self._marks
        for sid, offset, seen in entries:
            marks[sid] = _merge(marks.pop(sid, None), offset, seen)  # to the end: seen last
        return True

    # --- reading --------------------------------------------------------------------------

    def __len__(self) -> int:
        if self._base is None:
            return len(self._marks)
        return len(self._base) + sum(1 for s in self._marks if self._base.get(s) is None)

    def get(self, source_id: str) -> int | None:
        mark = self._marks.get(source_id)
        if self._base is None:
            return None if mark is None else mark[0]
        below = self._base.get(source_id)
        if mark is None:
            return below
        return mark[0] if below is None else max(mark[0], below)

    def keep_mask(self, source_id: pa.Array, offset: pa.Array) -> pa.Array:
        """Boolean mask of the rows to keep (see the module docstring for the rule)."""
        n = len(source_id)
        if isinstance(source_id, pa.DictionaryArray):
            # dictionary_encode() would return it as is: a dictionary holding a source twice
            # would then give that source two marks' rows (and miss its repeats).
            source_id = source_id.dictionary_decode()
        keyed = pc.and_(pc.is_valid(source_id), pc.is_valid(offset))
        if n == 0 or not pc.any(keyed).as_py():
            return pa.array([True] * n, pa.bool_())
        # One hashing pass gives both each row's source and the sources (their marks are
        # looked up once each): unique() then index_in() hashed every row twice.
        encoded = pc.dictionary_encode(source_id)
        sources = encoded.dictionary.to_pylist()
        with self._lock:  # _raise pops a mark and puts it back: never read between the two
            stored = pa.array([self.get(s) for s in sources], pa.int64())
        row_source = encoded.indices
        row_stored = pc.take(stored, row_source)
        above = pc.fill_null(pc.greater(offset, row_stored), True)
        if _increasing_per_source(keyed, row_source, offset):
            # The usual batch: every source's offsets rise, so no (source, offset) repeats and
            # the group-by below (the costliest step, in time and memory) is not needed.
            return pc.or_(pc.invert(keyed), above)
        idx = pa.array(np.arange(n, dtype=np.int64))
        keyed_table = pa.table({"s": source_id, "o": offset, "i": idx}).filter(keyed)
        firsts = keyed_table.group_by(["s", "o"], use_threads=False).aggregate([("i", "min")])
        first = pc.is_in(idx, value_set=firsts["i_min"])
        return pc.or_(pc.invert(keyed), pc.and_(above, first))

    # --- changing -------------------------------------------------------------------------

    def fork(self) -> OffsetState:
        """An overlay to advance while a segment is flushed (:meth:`adopt` it once the segment
        is committed; a failed flush just drops it). Nothing is copied: it reads through."""
        overlay = OffsetState(
            self.path, self.retention_s, self.journal_min_bytes, self.max_sources, self.evict_to
        )
        overlay._base = self
        # One lock for both: the overlay reads the base's map (get), where _raise pops a mark
        # and puts it back at the end, so a read between the two would find no mark.
        overlay._lock = self._lock
        return overlay

    def adopt(self, other: OffsetState) -> None:
        """Merge the marks of a fork whose rows are now committed (saved by :meth:`save`)."""
        if other._base is not self:
            raise ValueError("adopt() takes a fork of this state")
        with self._lock:
            self._start_moving()
            for sid, (offset, seen) in other._marks.items():
                self._raise(sid, offset, seen)
            self._bound()
        other._marks = {}

    def advance(self, source_id: pa.Array, offset: pa.Array) -> None:
        """Raise the marks to the highest offsets of the kept rows (call after the commit)."""
        table = pa.table({"s": source_id, "o": offset}).filter(
            pc.and_(pc.is_valid(source_id), pc.is_valid(offset))
        )
        if table.num_rows == 0:
            return
        now = time.time()
        maxima = table.group_by("s", use_threads=False).aggregate([("o", "max")])
        with self._lock:
            if self._base is None:
                self._start_moving()
            for sid, off in zip(maxima["s"].to_pylist(), maxima["o_max"].to_pylist(), strict=True):
                self._raise(sid, off, now)
            if self._base is None:
                self._bound()

    def _raise(self, sid: str, offset: int, seen: float) -> None:
        if self._base is not None:
            self._marks[sid] = _merge(self._marks.get(sid), offset, seen)
            return
        if sid in self._moved:
            mark = _merge(self._marks.get(sid), offset, seen)  # moved lately: stays in place
        else:
            # Popped and put back: the map stays in the order the sources were last seen, so
            # the least recently seen are the first (see the module docstring). A new source
            # is put at the end anyway: only a move is remembered.
            current = self._marks.pop(sid, None)
            if current is not None:
                self._moved.add(sid)
            mark = _merge(current, offset, seen)
        self._marks[sid] = mark
        self._dirty[sid] = mark

    def _start_moving(self) -> None:
        """Let every source move to the end again once :data:`ORDER_SLACK_S` have passed."""
        now = time.monotonic()
        if now - self._moved_since >= ORDER_SLACK_S:
            self._moved.clear()
            self._moved_since = now

    def _bound(self) -> None:
        """Past ``max_sources``, forget the least recently seen down to ``evict_to`` (see the
        module docstring). The next save (or stop) writes the snapshot without them: left in
        ``offsets.json`` until the journal outgrew it, they came back at every start, to be
        forgotten, counted and warned about again."""
        excess = len(self._marks) - self.max_sources
        if excess <= 0:
            return
        count = len(self._marks) - self.evict_to
        marks, dirty = self._marks, self._dirty
        newest = 0.0
        left = count
        # The first ones are the least recently seen (the map is kept in that order), taken in
        # parts so that the event loop gets the GIL between them, as a snapshot does.
        while left > 0:
            part = list(itertools.islice(marks, min(left, SNAPSHOT_CHUNK)))
            for sid in part:
                newest = max(newest, marks.pop(sid)[1])
                dirty.pop(sid, None)
            left -= len(part)
            time.sleep(0)  # hand the GIL over between parts
        self.evicted += count
        self._snapshot_due = True
        now = time.time()
        if self._evict_warned is not None and now - self._evict_warned < EVICT_WARN_SECONDS:
            return
        self._evict_warned = now
        log.warning(
            "remembering over %d sources for the offset dedup: forgot the %d seen least "
            "recently (last seen %s UTC or earlier), so lines they resend may be stored twice. "
            "A fleet at the documented sizing has under half as many: look for a client that "
            "sends a new source_id per file, message or record (said at most every %.0f s; "
            "logq_aggregator_sources_evicted_total counts them)",
            self.max_sources,
            count,
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(newest)),
            EVICT_WARN_SECONDS,
        )

    # --- saving ---------------------------------------------------------------------------

    def save(self) -> None:
        """Make the marks changed since the last save durable: one fsync'd journal record, or
        a new snapshot when the journal has outgrown it (see the module docstring)."""
        if self._base is not None:
            raise ValueError("a fork is not saved: adopt() it into its base")
        with self._lock:
            if self._snapshot_due:
                self.snapshot()
                return
            if not self._dirty:
                return
            payload = msgspec.json.encode([(sid, *mark) for sid, mark in self._dirty.items()])
            record = encode_frame(payload)
            bound = max(self.journal_min_bytes, self._snapshot_bytes)
            if self._journal_bytes + len(record) > bound:
                self.snapshot()
                return
            created = not self.journal.exists()
            with open(self.journal, "ab") as fh:
                start = fh.tell()
                try:
                    fh.write(record)
                    fh.flush()
                    os.fsync(fh.fileno())
                except BaseException:
                    # A half-written record (disk full) would read as damage once the next
                    # one follows it: cut it off; the marks stay dirty for the next save.
                    with contextlib.suppress(OSError):
                        fh.truncate(start)
                    raise
            if created:
                fsync_dir(self.journal.parent)
            self._journal_bytes = start + len(record)
            self._dirty.clear()

    def snapshot(self) -> None:
        """Rewrite ``offsets.json`` with every mark, forgetting sources unseen for
        ``retention_s``, then empty the journal. Encoded in parts of :data:`SNAPSHOT_CHUNK`
        sources, so the event loop gets the GIL between them."""
        if self._base is not None:
            raise ValueError("a fork is not saved: adopt() it into its base")
        with self._lock:
            cutoff = time.time() - self.retention_s
            expired: list[str] = []
            encoder = msgspec.json.Encoder()
            items = iter(self._marks.items())  # changed only under the lock, held here
            with atomic_file(self.path) as fh:
                fh.write(b"{")
                first = True
                while part := list(itertools.islice(items, SNAPSHOT_CHUNK)):
                    keep = {}
                    for sid, mark in part:
                        if mark[1] < cutoff:
                            expired.append(sid)
                        else:
                            keep[sid] = mark
                    if keep:
                        body = encoder.encode(keep)[1:-1]
                        fh.write(body if first else b"," + body)
                        first = False
                    time.sleep(0)  # hand the GIL over between parts
                fh.write(b"}")
                size = fh.tell()
            for sid in expired:
                del self._marks[sid]
            self._snapshot_bytes = size
            self._dirty.clear()
            if self._journal_bytes or self.journal.exists():
                with open(self.journal, "r+b") as jh:
                    jh.truncate(0)
                    jh.flush()
                    os.fsync(jh.fileno())
            self._journal_bytes = 0
            self._snapshot_due = False
            if expired:
                log.info("forgot %d sources unseen for %.0f s", len(expired), self.retention_s)

    def close(self) -> None:
        """At a clean stop: fold the journal into the snapshot (the next start reads one file)."""
        with self._lock:
            if self._dirty or self._journal_bytes or self._snapshot_due:
                self.snapshot()
