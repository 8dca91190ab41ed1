"""Small buffer frames: a message of few rows as msgpack columns, not an Arrow IPC stream.

An IPC stream carries its schema (~1 KB) and nine dictionary batches whatever its rows, so a
message of one or two lines (a quiet source: most of a fleet's services) took ~3.9 KB of
buffer and ~25 µs to encode plus ~75 µs to decode, against ~160 B and ~0.1 µs a line for a
1,000-line message. A message of at most :data:`MAX_ROWS` rows is stored instead as

    [u32 rows][MAGIC][msgpack: [chunk key or nil, column, column, ...]]

one column per field of the buffer schema (``decode.BUFFER_SCHEMA``: a change to it needs a new
:data:`MAGIC`, and a reader of the old one for the segments left behind), in its order: a
dictionary column as
``[dictionary values, indices]`` (its dictionary kept exactly as built, nulls as nil indices),
any other as its values. An IPC stream always starts with the continuation marker
``0xFFFFFFFF`` right after the row count (pyarrow writes no legacy-format streams), so
:data:`MAGIC` tells the two kinds apart: segments written before small frames existed replay
and flush unchanged.

A run of small frames is decoded together (:func:`run_table`): their dictionaries unified in
Python as Arrow's ``unify_dictionaries`` unifies them (values in order of first appearance,
frame after frame), so the table a flush gets is the one the IPC frames of the same batches
would give (:func:`aggregator.batch.records_table`), at a few µs a frame.

``--buffer-compression`` applies to IPC frames only: a small frame is already smaller than a
compressed IPC stream of the same rows. A version older than small frames cannot read them:
stop an aggregator with SIGTERM (it writes out its buffer) or drain its buffer before a
downgrade (docs/operations.md).
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pyarrow as pa

#: Messages of at most this many rows are stored as small frames (bigger ones as Arrow IPC,
#: which costs less CPU per row: measured crossover ~20-40 rows, see docs/operations.md).
MAX_ROWS = 16
#: The four bytes after a small frame's row count (never an IPC stream's ``0xFFFFFFFF``).
MAGIC = b"LQs1"
_ROWS = struct.Struct(">I")
_HEAD = _ROWS.size + len(MAGIC)


def is_small(payload: bytes) -> bool:
    """Whether a buffer frame's payload is a small frame (else an Arrow IPC stream)."""
    return payload[_ROWS.size : _HEAD] == MAGIC


def encode(batch: pa.RecordBatch, key: bytes | None) -> bytes | None:
    """The small frame of ``batch`` with its chunk ``key``, or None when ``batch`` must go as
    an IPC stream: too many rows, or a dictionary holding a null or the same value twice
    (unification would merge those, where Arrow keeps a lone frame's dictionary as it is; the
    decode path builds neither)."""
    if batch.num_rows > MAX_ROWS:
        return None
    columns: list[Any] = [key]
    for column in batch.columns:
        if isinstance(column, pa.DictionaryArray):
            values = column.dictionary.to_pylist()
            if None in values or len(set(values)) < len(values):
                return None
            columns.append([values, column.indices.to_pylist()])
        else:
            columns.append(column.to_pylist())
    return _ROWS.pack(batch.num_rows) + MAGIC + msgpack.packb(columns, use_bin_type=True)


def chunk_of(payload: bytes) -> bytes | None:
    """The chunk key a small frame carries; None for one without, or one that does not decode
    (the flusher reports those)."""
    try:
        key = _columns(payload)[0]
    except (ValueError, LookupError, TypeError):  # msgpack's errors are ValueErrors
        return None
    return key if isinstance(key, bytes) else None


def run_table(payloads: list[bytes], schema: pa.Schema) -> pa.Table:
    """Consecutive small frames as one table of ``schema``, dictionaries unified in order."""
    kinds = [pa.types.is_dictionary(field.type) for field in schema]
    frames = [_checked(p, kinds) for p in payloads]
    arrays = [
        _dictionary([f[i] for f in frames], field.type)
        if kinds[i]
        else pa.array([v for f in frames for v in f[i]], field.type)
        for i, field in enumerate(schema)
    ]
    return pa.Table.from_batches([pa.RecordBatch.from_arrays(arrays, schema=schema)])


def _checked(payload: bytes, kinds: list[bool]) -> list[Any]:
    """A small frame's columns (``kinds``: which are dictionaries), checked against its row
    count and the schema's width. A run's frames are decoded together: a frame one value
    short and the next one long would otherwise shift rows into each other, silently, where a
    lone frame fails."""
    rows = _ROWS.unpack_from(payload)[0]
    columns = _columns(payload)[1:]
    lengths = {len(c[1] if d else c) for c, d in zip(columns, kinds, strict=False)}
    if len(columns) != len(kinds) or lengths - {rows}:
        raise ValueError(
            f"a small buffer frame of {rows} rows holds {len(columns)} columns of "
            f"{sorted(lengths)} values (this version writes {len(kinds)} of {rows}): damaged "
            "before its checksum, or written by another version; its segment is set aside "
            "after a few tries "
            "(logq-aggregator drain writes it out once a version that reads it runs)"
        )
    return columns


def _columns(payload: bytes) -> list[Any]:
    return msgpack.unpackb(memoryview(payload)[_HEAD:], raw=False, use_list=True)


def _dictionary(parts: list[list[Any]], type_: pa.DictionaryType) -> pa.Array:
    """One dictionary column from each frame's ``[values, indices]``: values in order of first
    appearance, indices mapped to them (Arrow's ``unify_dictionaries``, then one chunk)."""
    unified: dict[Any, int] = {}
    indices: list[int | None] = []
    for values, frame_indices in parts:
        mapped = [unified.setdefault(v, len(unified)) for v in values]
        indices.extend(None if i is None else mapped[i] for i in frame_indices)
    return pa.DictionaryArray.from_arrays(
        pa.array(indices, type_.index_type), pa.array(list(unified), type_.value_type)
    )
