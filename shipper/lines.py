"""Parsed log lines as columns: what each line's Forward entry needs.

The format parsers (see :mod:`shipper.formats`) return the logical lines a block of physical
lines completes as :class:`Lines`: columns (event time already packed, see :mod:`shipper.entry`),
plus the byte offset just past each line's last part (offsets strictly increase per file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate, islice, repeat
from typing import Any

from msgspec import Raw

from shipper import wire
from shipper.entry import encode_body, entry_head, head_time_ns, record_bound

_K_LOG, _K_STREAM, _K_TIME, _K_OFFSET = (
    wire.KEY_LOG,
    wire.KEY_STREAM,
    wire.KEY_TIME,
    wire.KEY_OFFSET,
)


@dataclass(slots=True)
class Lines:
    """Logical lines in file order, as columns: what each line's Forward entry needs.

    Columns (not one object per line) let parsers fill them with whole-block C calls, and
    :func:`shipper.entry.encode_body` interleaves them into msgpack in one call.
    """

    offsets: list[int] = field(default_factory=list)
    """Byte offset just past the line's last part in its file."""
    heads: list[Raw] = field(default_factory=list, repr=False)
    """Each entry's pre-encoded ``[EventTime,`` (see :func:`shipper.entry.entry_head`)."""
    logs: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    times: list[str] = field(default_factory=list)
    """The runtime's own RFC 3339 time text of each line."""
    nbytes: int = 0
    """Size of the log texts (in characters, for speed)."""
    truncated: int = 0
    invalid_utf8: int = 0
    malformed: int = 0
    bad_times: int = 0
    """Lines whose runtime time is unparseable or outside
    :data:`~shipper.entry.MIN_EVENT_TIME_NS` .. :data:`~shipper.entry.MAX_EVENT_TIME_NS`: their
    event time is the read time (the text stays in ``time``)."""
    multiline_joined: int = 0
    """Records of several lines joined by ``--multiline`` (see :mod:`shipper.multiline`)."""
    multiline_cut: int = 0
    """Records ``--multiline`` cut at its line or byte cap (their next lines go on in a new
    record)."""
    cuts_dropped: int = 0
    """Lines flushed as they are whose cut the checkpoint had no room for (see
    :meth:`shipper.split_lines.SplitLines._cut_not_kept`)."""

    def __len__(self) -> int:
        return len(self.offsets)

    def extend(self, other: Lines) -> None:
        self.offsets += other.offsets
        self.heads += other.heads
        self.logs += other.logs
        self.streams += other.streams
        self.times += other.times
        self.nbytes += other.nbytes
        self.truncated += other.truncated
        self.invalid_utf8 += other.invalid_utf8
        self.malformed += other.malformed
        self.bad_times += other.bad_times
        self.multiline_joined += other.multiline_joined
        self.multiline_cut += other.multiline_cut
        self.cuts_dropped += other.cuts_dropped

    def add(self, offset: int, t: str, t_ns: int, stream: str, log: str) -> None:
        self.offsets.append(offset)
        self.heads.append(entry_head(t_ns))
        self.logs.append(log)
        self.streams.append(stream)
        self.times.append(t)
        self.nbytes += len(log)

    def select(self, keep: list[int]) -> Lines:
        """The lines at the indexes ``keep`` (counters kept)."""
        out = Lines(
            truncated=self.truncated,
            invalid_utf8=self.invalid_utf8,
            malformed=self.malformed,
            bad_times=self.bad_times,
            multiline_joined=self.multiline_joined,
            multiline_cut=self.multiline_cut,
            cuts_dropped=self.cuts_dropped,
        )
        for i in keep:
            out.offsets.append(self.offsets[i])
            out.heads.append(self.heads[i])
            out.logs.append(self.logs[i])
            out.streams.append(self.streams[i])
            out.times.append(self.times[i])
            out.nbytes += len(self.logs[i])
        return out

    def split(self, n: int) -> tuple[Lines, Lines]:
        """The first ``n`` lines and the rest; the counters go with the first part (counted
        once, as they are read)."""
        rest = Lines(
            self.offsets[n:], self.heads[n:], self.logs[n:], self.streams[n:], self.times[n:]
        )
        rest.nbytes = sum(map(len, rest.logs))
        first = self.select([])
        first.offsets, first.heads, first.logs = self.offsets[:n], self.heads[:n], self.logs[:n]
        first.streams, first.times = self.streams[:n], self.times[:n]
        first.nbytes = self.nbytes - rest.nbytes
        return first, rest

    def wire_bytes(self, per_record: int) -> int:
        """Most bytes these lines take in a message body, ``per_record`` bytes of keys and
        headers each (see :data:`~shipper.entry.RECORD_BYTES`), without encoding them: it is
        counted for every read. A join measures a column in ~5 ns a line, ``sum(map(len,
        ...))`` in ~20."""
        chars = self.nbytes + len("".join(self.streams)) + len("".join(self.times))
        return len(self.offsets) * per_record + 4 * chars

    def wire_ends(self, per_record: int, n: int) -> list[int]:
        """:meth:`wire_bytes` of the first 1, 2, ... ``n`` lines."""
        first = [islice(column, n) for column in (self.logs, self.streams, self.times)]
        return list(accumulate(map(record_bound, *first, repeat(per_record, n))))

    def encode(self, shared: dict[str, Any]) -> memoryview:
        """The PackedForward body of these lines with the source's ``shared`` record keys."""
        return encode_body(self.heads, self.logs, self.streams, self.times, self.offsets, shared)

    @property
    def time_ns(self) -> list[int]:
        """Event time of each line (ns since the epoch)."""
        return [head_time_ns(h) for h in self.heads]

    def records(self) -> list[tuple[int, dict[str, object]]]:
        """(event time ns, per-line record keys) of every line, for tests and debugging."""
        return [
            (t, {_K_LOG: log, _K_STREAM: s, _K_TIME: tt, _K_OFFSET: off})
            for t, log, s, tt, off in zip(
                self.time_ns, self.logs, self.streams, self.times, self.offsets, strict=True
            )
        ]
