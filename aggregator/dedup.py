"""Drop lines a shipper resends: per-source high-water offsets, committed with the Parquet files.

Every record from ``logq-shipper`` carries ``source_id`` (a stable id of the file it came from)
and ``offset`` (the byte offset just past the line, strictly increasing per source). A lost ack or
a shipper crash makes the shipper resend lines the aggregator already has; those are acknowledged
again and dropped here, at flush time, for the whole batch at once (Arrow group-by, no per-line
loop). A record is kept when its offset is above the highest committed for its source and it is
the first occurrence of its ``(source_id, offset)`` in the batch. Records without ``source_id``
(Fluent Bit, fluent-logger …) are not deduplicated here; a resent message of theirs is
recognised by its ``chunk`` id when it arrives (:mod:`aggregator.chunks`).

The high-water marks are saved (tmp, fsync, rename) *after* the batch's Parquet objects are
committed and *before* the buffer segment is deleted, so a crash at any point either replays the
segment with the old marks (rewriting the same object keys with the same rows) or finds every
row already committed. Sources unseen for ``retention_s`` are forgotten so the file stays small.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregator.durable import write_atomic

DEFAULT_RETENTION_S = 14 * 24 * 3600


def _increasing_per_source(keyed: pa.Array, row_source: pa.Array, offset: pa.Array) -> bool:
    """True when, for every source, the keyed rows' offsets strictly rise in row order."""
    source = row_source.filter(keyed).to_numpy(zero_copy_only=False)
    offsets = offset.filter(keyed).to_numpy(zero_copy_only=False)
    order = np.argsort(source, kind="stable")
    source, offsets = source[order], offsets[order]
    same_source = source[1:] == source[:-1]
    return bool(np.all(~same_source | (offsets[1:] > offsets[:-1])))


class OffsetState:
    """``source_id -> (highest committed offset, last seen unix time)``, persisted as JSON."""

    def __init__(self, path: str | os.PathLike[str], retention_s: float = DEFAULT_RETENTION_S):
        self.path = Path(path)
        self.retention_s = retention_s
        self._marks: dict[str, tuple[int, float]] = {}

    def load(self) -> OffsetState:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self
        except (OSError, ValueError) as exc:
            raise OSError(
                f"{self.path} is unreadable ({exc}); restore it or delete it (resent lines "
                "may then be stored twice)"
            ) from exc
        self._marks = {str(k): (int(v[0]), float(v[1])) for k, v in raw.items()}
        return self

    def __len__(self) -> int:
        return len(self._marks)

    def get(self, source_id: str) -> int | None:
        mark = self._marks.get(source_id)
        return None if mark is None else mark[0]

    def keep_mask(self, source_id: pa.Array, offset: pa.Array) -> pa.Array:
        """Boolean mask of the rows to keep (see the module docstring for the rule)."""
        n = len(source_id)
        keyed = pc.and_(pc.is_valid(source_id), pc.is_valid(offset))
        if n == 0 or not pc.any(keyed).as_py():
            return pa.array([True] * n, pa.bool_())
        uniques = pc.unique(source_id.filter(keyed))
        stored = pa.array([self.get(s) for s in uniques.to_pylist()], pa.int64())
        row_source = pc.index_in(source_id, value_set=uniques)
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

    def fork(self) -> OffsetState:
        """An in-memory copy to advance while a segment is flushed (:meth:`adopt` it once the
        segment is committed; a failed flush just drops it)."""
        copy = OffsetState(self.path, self.retention_s)
        copy._marks = dict(self._marks)
        return copy

    def adopt(self, other: OffsetState) -> None:
        """Take the marks of a fork whose rows are now committed."""
        self._marks = dict(other._marks)

    def advance(self, source_id: pa.Array, offset: pa.Array) -> None:
        """Raise the marks to the highest offsets of the kept rows (call after the commit)."""
        table = pa.table({"s": source_id, "o": offset}).filter(
            pc.and_(pc.is_valid(source_id), pc.is_valid(offset))
        )
        if table.num_rows == 0:
            return
        now = time.time()
        maxima = table.group_by("s", use_threads=False).aggregate([("o", "max")])
        for sid, off in zip(maxima["s"].to_pylist(), maxima["o_max"].to_pylist(), strict=True):
            current = self.get(sid)
            self._marks[sid] = (off if current is None else max(off, current), now)

    def save(self) -> None:
        """Persist atomically (tmp, fsync, rename, fsync dir), forgetting stale sources."""
        cutoff = time.time() - self.retention_s
        self._marks = {k: v for k, v in self._marks.items() if v[1] >= cutoff}
        doc = {k: [v[0], v[1]] for k, v in self._marks.items()}
        write_atomic(self.path, json.dumps(doc).encode("utf-8"))
