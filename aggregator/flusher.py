"""Turning one sealed buffer segment into committed Parquet objects (runs in a worker thread).

Order of a flush, which is what makes it exactly-once (see buffer.py and dedup.py): for each
slice of the segment, decode -> drop resent lines (per-source offsets) -> route and parse ->
park the rows by partition on local disk (spill.py; in memory when that disk is full); then
write every partition's objects under keys derived from the segment -> note the segment's
``(source_id, offset)`` pairs in the warehouse's offset ledger (ledger.py) -> raise and save
the offsets -> the caller deletes the segment. A failure anywhere leaves the segment in place
to be retried (the same objects under the same keys, minus those an earlier attempt committed:
see below). A segment replayed after a crash is also checked against the lines other
aggregators committed (``committed``), which catches the batches a shipper resent elsewhere
when this aggregator died before its ack.

That check can make a replay write fewer objects than the attempt that crashed (a partition whose
rows were all resent elsewhere, or one object fewer under :data:`aggregator.spill.PART_ROWS`).
So before writing, a flush notes the keys it is about to write in ``<buffer-dir>/flushing/``
(added to those of earlier attempts), and after writing deletes the earlier attempts' keys it
did not write again: no stale object keeps rows that are now elsewhere. A replayed segment
without such a note (its attempt crashed under a version that wrote none, one object per
100,000-row slice) has its partition folders listed for this segment's keys instead.

An attempt that fails part-way (one partition refused, S3 down mid-flush) has committed some
objects already, and compaction may merge them before the retry. So a retry does not write again
an object an earlier attempt committed with the same rows (same row count, same partition row
count: a replay can only drop rows, so equal counts mean equal rows); rewriting it next to its
compacted copy would store its rows twice. The keys committed so far are kept per segment in
memory and, when an attempt fails, in the segment's note under ``flushing/`` for a restart. (A
kill -9 mid-flush loses the memory: its replay rewrites those objects, and compaction waits for
it, see ledger.compaction_blocker.)

One object per partition per segment (not per slice) is what keeps S3 requests and small files
down when hundreds of services share an aggregator: raise ``--segment-bytes`` and
``--flush-interval`` together and each object holds more rows; memory stays bounded by the slice
and :data:`aggregator.spill.PART_ROWS`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from aggregator.batch import FRAMES_AT_ONCE, UnparsedSample, frame_tables, joined_tables, route
from aggregator.buffer import Segment, read_frames
from aggregator.decode import ipc_rows
from aggregator.dedup import OffsetState
from aggregator.durable import write_atomic
from aggregator.envoy import EnvoyFormat
from aggregator.ledger import Committed, Ledger, entry_name
from aggregator.spill import Spill
from aggregator.storage import delete_object, list_parquet
from aggregator.writer import (
    WrittenFile,
    is_segment_object,
    object_name,
    object_path,
    write_objects,
)
from athena.warehouse import Warehouse
from shipper import wire

log = logging.getLogger("logq.aggregator.flush")

#: Records decoded and deduplicated at once (memory: the raw records of one slice).
SLICE_ROWS = 100_000
#: Records routed and parsed at once. Parsing holds ~1.6 KB of Arrow intermediates per line
#: (split lists, regex results, casts), so a slice is parsed in parts of this size: the Arrow
#: peak of a 100k-row slice drops from ~155 to ~75 MiB, for the same rows and files.
ROUTE_ROWS = 25_000


@dataclass
class FlushResult:
    """What one segment's flush did (for logs and metrics)."""

    segment: int
    records: int = 0
    duplicates: int = 0
    files: list[WrittenFile] = field(default_factory=list)
    parse_failures: dict[str, int] = field(default_factory=dict)
    unparsed_samples: dict[str, UnparsedSample] = field(default_factory=dict)
    """One of those unparsed lines per service with failures: the first slice's that had one."""
    numbers_rounded: dict[str, int] = field(default_factory=dict)
    """Envoy JSON access lines stored with a number rounded, per service (Routed)."""
    numbers_too_large: dict[str, int] = field(default_factory=dict)
    """Envoy JSON access lines stored with a number past its column NULL, per service."""
    seconds: float = 0.0
    services: set[str] = field(default_factory=set)
    """Services that got rows (the catalog extends the Athena ``service`` enum with them)."""

    def rows(self, table: str) -> int:
        return sum(f.rows for f in self.files if f.table == table)


class Flusher:
    """Flushes segments of one buffer into one warehouse (``spill_dir``: local scratch space)."""

    def __init__(
        self,
        warehouse: Warehouse,
        offsets: OffsetState,
        node_id: str,
        formats: tuple[EnvoyFormat, ...],
        spill_dir: Path,
        ledger: Ledger | None = None,
    ):
        self.warehouse = warehouse
        self.offsets = offsets
        self.node_id = node_id
        self.formats = formats
        self.spill_dir = spill_dir
        self.ledger = ledger
        self.manifests = spill_dir.parent / "flushing"
        """Per segment being flushed: the object keys its attempts wrote (see module doc)."""
        self._committed_keys: dict[int, dict[str, tuple[int, int]]] = {}
        """Per segment whose flush failed here: objects its attempts committed, by key, with
        (rows, rows of their partition); a retry keeps them instead of writing them again."""
        self._unsaved: dict[int, FlushResult] = {}
        """Segments committed whole whose offset marks could not be saved: a retry saves."""

    def flush(self, segment: Segment, committed: Committed | None = None) -> FlushResult:
        """Flush one segment: parsed a slice of :data:`SLICE_ROWS` records at a time, written
        as one object per partition (``<node>-<segment>-<part>``, see spill.py).

        ``committed``: pairs other aggregators already committed (given for replayed segments).
        """
        started = time.monotonic()
        unsaved = self._unsaved.get(segment.seq)
        if unsaved is not None:
            # An earlier attempt committed the segment (objects, ledger entry) and raised the
            # marks, then failed to save them: only the save is left. Flushing again would find
            # every row covered by those marks and replace the ledger entry with an empty one.
            self.offsets.save()
            del self._unsaved[segment.seq]
            return unsaved
        result = FlushResult(segment.seq)
        if committed is not None and entry_name(self.node_id, segment.seq) in committed.done:
            # Completed before the crash (its ledger entry is written last): skip it whole.
            for records in _slices(read_frames(segment.path, segment.end), SLICE_ROWS):
                result.records += records.num_rows
                result.duplicates += records.num_rows
                self.offsets.advance(
                    _plain(records[wire.KEY_SOURCE_ID]), _plain(records[wire.KEY_OFFSET])
                )
            self._committed_keys.pop(segment.seq, None)
            self._manifest(segment.seq).unlink(missing_ok=True)
        else:
            self._flush_segment(segment, result, committed)
        self._unsaved[segment.seq] = result
        self.offsets.save()
        del self._unsaved[segment.seq]
        # Hand the slices' Arrow buffers back to the OS between flushes: on the system pool
        # (aggregator/memory.py) this is malloc_trim(0); other pools keep freed pages cached.
        pa.default_memory_pool().release_unused()
        result.seconds = time.monotonic() - started
        log.info(
            "flushed segment %d: %d records, %d duplicates dropped, %d files, %.3fs",
            segment.seq,
            result.records,
            result.duplicates,
            len(result.files),
            result.seconds,
        )
        return result

    def sources(self, segments: list[Segment]) -> set[str]:
        """The source ids of the records in ``segments``, read a slice of :data:`SLICE_ROWS`
        records at a time: the memory of a flush whatever the frames' sizes (groups of
        ``FRAMES_AT_ONCE`` frames of Fluentd's 8 MB messages would hold gigabytes)."""
        found: set[str] = set()
        for segment in segments:
            try:
                for records in _slices(read_frames(segment.path, segment.end), SLICE_ROWS):
                    column = _plain(records[wire.KEY_SOURCE_ID])
                    found.update(s for s in pc.unique(column).to_pylist() if s is not None)
            except OSError:
                raise  # the disk: the flush that asked is retried
            except Exception as exc:  # a data error: raised here, it would fail (and set aside)
                # the segment being flushed, not this one, whose own flush fails on it
                log.warning(
                    "replay: segment %d does not decode (%s: %s); read the others, its own "
                    "flush will report it",
                    segment.seq,
                    type(exc).__name__,
                    exc,
                )
        return found

    def _flush_segment(
        self, segment: Segment, result: FlushResult, committed: Committed | None
    ) -> None:
        marks = self.offsets.fork()  # advanced slice by slice; adopted once all is committed
        kept_sources: list[pa.Array] = []
        kept_offsets: list[pa.Array] = []
        spill = Spill(self.spill_dir)
        try:
            for records in _slices(read_frames(segment.path, segment.end), SLICE_ROWS):
                kept, source_id, offset = self._keep(records, marks, result, committed)
                for start in range(0, kept.num_rows, ROUTE_ROWS):
                    routed = route(kept.slice(start, ROUTE_ROWS), self.formats)
                    for service, count in routed.parse_failures.items():
                        result.parse_failures[service] = (
                            result.parse_failures.get(service, 0) + count
                        )
                    for service, sample in routed.unparsed_samples.items():
                        result.unparsed_samples.setdefault(service, sample)
                    for service, count in routed.numbers_rounded.items():
                        result.numbers_rounded[service] = (
                            result.numbers_rounded.get(service, 0) + count
                        )
                    for service, count in routed.numbers_too_large.items():
                        result.numbers_too_large[service] = (
                            result.numbers_too_large.get(service, 0) + count
                        )
                    for table_name, table in routed.tables.items():
                        result.services |= _services(table)
                        spill.add(table_name, table)
                marks.advance(source_id, offset)
                kept_sources.append(pc.dictionary_encode(source_id))  # a few bytes a row
                kept_offsets.append(offset)
            rows, totals = spill.object_rows(), spill.partition_rows()
            paths = {
                key: object_path(
                    self.warehouse, *key[:3], object_name(self.node_id, segment.seq, key[3])
                )
                for key in rows
            }
            stale = self._note_keys(segment.seq, list(paths.values()), committed is not None)
            done = self._committed_keys.setdefault(segment.seq, {})
            earlier = self._noted_commits(segment.seq) | done
            kept = {
                key
                for key, path in paths.items()
                if earlier.get(path) == (rows[key], totals[key[:3]])
            }
            for key in sorted(kept):
                done[paths[key]] = earlier[paths[key]]
                result.files.append(WrittenFile(*key[:3], paths[key], rows[key]))
            if kept:
                log.info(
                    "segment %d: keeping %d objects an earlier attempt committed (not rewritten)",
                    segment.seq,
                    len(kept),
                )

            def note(written: WrittenFile) -> None:
                done[written.path] = (
                    written.rows,
                    totals[written.table, written.service, written.dt],
                )

            result.files += write_objects(
                self.warehouse,
                spill.objects(skip=kept),
                lambda part: object_name(self.node_id, segment.seq, part),
                on_written=note,
            )
            for path in stale:
                delete_object(self.warehouse, path)
                done.pop(path, None)
                log.info(
                    "deleted %s: written by an earlier attempt at segment %d", path, segment.seq
                )
            if self.ledger is not None:
                self.ledger.record(
                    entry_name(self.node_id, segment.seq),
                    pa.chunked_array(kept_sources, pa.dictionary(pa.int32(), pa.string())),
                    pa.chunked_array(kept_offsets, pa.int64()),
                )
        except BaseException:
            self._save_commits(segment.seq)
            raise
        finally:
            spill.close()
        self.offsets.adopt(marks)  # saved by the caller
        self._committed_keys.pop(segment.seq, None)
        self._manifest(segment.seq).unlink(missing_ok=True)

    def abandon(self, seq: int) -> None:
        """Delete what failed attempts at a segment wrote (it is set aside, see
        Buffer.quarantine): its rows are not committed, and drained later under other keys."""
        for key in self._noted(seq) or []:
            delete_object(self.warehouse, key)
        self._committed_keys.pop(seq, None)
        self._manifest(seq).unlink(missing_ok=True)

    def _manifest(self, seq: int) -> Path:
        return self.manifests / f"{seq}.json"

    def _read_manifest(self, seq: int) -> dict[str, Any] | None:
        """The segment's note, or None if there is none or it names another warehouse."""
        try:
            body: dict[str, Any] = json.loads(self._manifest(seq).read_text())
        except FileNotFoundError:
            return None
        noted_in = body.get("warehouse", self.warehouse.uri)  # older notes name none
        if noted_in != self.warehouse.uri:
            # Its keys are paths of that warehouse's filesystem (an S3 bucket's "logs/wh/..."
            # would be a folder under the current directory here): never delete them here.
            log.warning(
                "segment %d: the note of an earlier attempt names the warehouse %s, this run "
                "writes to %s; the objects written there are left as they are",
                seq,
                noted_in,
                self.warehouse.uri,
            )
            return None
        return body

    def _noted(self, seq: int) -> list[str] | None:
        """The keys earlier attempts at the segment noted, or None if none noted any."""
        body = self._read_manifest(seq)
        return None if body is None else list(body["objects"])

    def _noted_commits(self, seq: int) -> dict[str, tuple[int, int]]:
        """The objects failed attempts (maybe of an earlier run) noted as committed."""
        body = self._read_manifest(seq) or {}
        return {key: (rows, total) for key, (rows, total) in body.get("committed", {}).items()}

    def _save_commits(self, seq: int) -> None:
        """Note the objects committed by the attempts so far (an attempt failed), for a retry
        after a restart. Best effort: without the note, that retry rewrites them."""
        done = self._committed_keys.get(seq)
        body = self._read_manifest(seq)
        if not done or body is None:
            return
        body["committed"] = {key: list(value) for key, value in sorted(done.items())}
        try:
            write_atomic(self._manifest(seq), json.dumps(body).encode())
        except OSError as exc:
            log.warning("segment %d: could not note its committed objects: %s", seq, exc)

    def _note_keys(self, seq: int, planned: list[str], replay: bool) -> list[str]:
        """Add ``planned`` to the segment's manifest (durably, before any object is written);
        return the keys earlier attempts wrote that this one does not."""
        body = self._read_manifest(seq)
        if body is not None:
            earlier = list(body["objects"])
        else:
            earlier = self._found(seq, planned) if replay else []
            body = {}
        stale = sorted(set(earlier) - set(planned))
        if stale or not set(planned) <= set(earlier):
            for key in stale:  # deleted next: never to be kept by a later attempt
                body.get("committed", {}).pop(key, None)
            self.manifests.mkdir(parents=True, exist_ok=True)
            body["warehouse"] = self.warehouse.uri
            body["objects"] = sorted(set(earlier) | set(planned))
            write_atomic(self._manifest(seq), json.dumps(body).encode())
        return stale

    def _found(self, seq: int, planned: list[str]) -> list[str]:
        """This segment's objects already in the folders ``planned`` writes to."""
        folders = sorted({key.rsplit("/", 1)[0] for key in planned})
        return [  # spelled as the planned keys are, so that set difference compares alike
            f"{folder}/{info.base_name}"
            for folder in folders
            for info in list_parquet(self.warehouse, folder)
            if is_segment_object(info.base_name, self.node_id, seq)
        ]

    def _keep(
        self,
        records: pa.Table,
        marks: OffsetState,
        result: FlushResult,
        committed: Committed | None,
    ) -> tuple[pa.Table, pa.Array, pa.Array]:
        """The records of a slice that are not resent lines (nor committed by a peer), with
        their ``source_id`` and ``offset`` as plain arrays."""
        result.records += records.num_rows
        source_id, offset = _plain(records[wire.KEY_SOURCE_ID]), _plain(records[wire.KEY_OFFSET])
        keep = marks.keep_mask(source_id, offset)
        if committed is not None and committed.pairs:
            keep = pc.and_(keep, pc.invert(committed.seen(source_id, offset)))
        if pc.all(keep).as_py():  # the usual slice: all new, nothing copied
            return records, source_id, offset
        result.duplicates += records.num_rows - pc.sum(keep).as_py()
        return records.filter(keep), source_id.filter(keep), offset.filter(keep)


def _slices(payloads: Iterator[bytes], rows: int) -> Iterator[pa.Table]:
    """Consecutive frames grouped into tables of at least ``rows`` records (the last: fewer).

    Frames are decoded :data:`~aggregator.batch.FRAMES_AT_ONCE` at a time as they are read,
    so a slice of many small frames holds its rows, not every frame's bytes and decoding."""
    decoded: list[pa.Table] = []
    pending: list[bytes] = []
    count = 0
    for payload in payloads:
        pending.append(payload)
        count += ipc_rows(payload)
        if len(pending) >= FRAMES_AT_ONCE or count >= rows:
            decoded.append(joined_tables(frame_tables(pending)))
            pending = []  # let the frames go
        if count >= rows:
            table = joined_tables(decoded)
            decoded, count = [], 0  # let the groups go while the slice is parsed
            yield table
    if pending:
        decoded.append(joined_tables(frame_tables(pending)))
        pending = []
    if decoded:
        table = joined_tables(decoded)
        decoded = []
        yield table


def _services(table: pa.Table) -> set[str]:
    column = table["service"].combine_chunks()
    if isinstance(column, pa.DictionaryArray):
        return set(column.dictionary.take(pc.unique(column.indices)).to_pylist())
    return set(pc.unique(column).to_pylist())


def _plain(column: pa.ChunkedArray) -> pa.Array:
    array = column.combine_chunks()
    return array.dictionary_decode() if isinstance(array, pa.DictionaryArray) else array
