"""The Parquet settings of a merge's output, decided for all of its rows.

A ``pq.ParquetWriter`` takes its settings once, before the first row group, and the merge
writes its output a row group at a time (:mod:`.merge`): the settings were
:func:`.storage.write_options` of the first row group alone, the earliest ~48 MiB of the
partition-hour. Whether a string or integer column is dictionary-encoded was then decided on
rows that may be nothing like the rest: a service whose first minutes logged a few repeated
lines and then distinct ones, or the reverse, or a column all null at first (no values: a
dictionary), and every later row group was encoded that way. Measured (bench-like rows, four
sequential inputs of 20,000 rows, the first unlike the others, ``message`` column): repeated
then distinct, 1,300,878 bytes merged from 1,190,171 of inputs; distinct then repeated,
637,739 from 489,268; null then distinct, 1,286,789 from 1,176,478.

The inputs were each written with the choice their own writer made on their rows (a flushed
object on all of them), and their footers are read already: the output takes, per column, the
choice of the inputs that hold most of its values (values counted from the footers: a chunk's
values less its nulls where its statistics count them: integers and times). The first row
group still decides the rest (DELTA or PLAIN, statistics) and any column the inputs do not
decide (a tie, or no values).

An integer chunk of at most :data:`.storage.INT_DICTIONARY_MAX` values has no vote for a
dictionary: its writer's choice was by count of distinct values (:func:`.storage._int_encoding`),
and so few cannot exceed it, whatever the column holds. Small flushed objects (a partition's
rows of one flush: hundreds to a few thousand) all had every integer column dictionary-encoded,
and their votes made a merge dictionary-encode response sizes and durations with hundreds of
thousands of distinct values. Measured (100 inputs of 2,000 envoy rows, random sizes and
durations): 6,124,050 bytes merged with those votes, 5,087,026 without (the first row group's
PLAIN). A chunk that chose PLAIN, or a dictionary over more values, still votes.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from aggregator.storage import (
    DICTIONARY_PAGE_LIMIT,
    INT_DICTIONARY_MAX,
    NO_DICTIONARY,
    write_options,
)

#: Parquet physical types of integer columns (and of times, which no vote changes).
_INTEGER_TYPES = frozenset({"INT32", "INT64"})

#: Per column: (values in input chunks with a dictionary, values in chunks without one).
Votes = dict[str, tuple[int, int]]


def dictionary_votes(footers: Iterable[pq.FileMetaData | None]) -> Votes:
    """How many values of each column the inputs (``footers``) hold dictionary-encoded and
    how many not; chunks with no values (all null, where statistics say so) do not count, nor
    does the dictionary of an integer chunk of :data:`INT_DICTIONARY_MAX` values or fewer (the
    module's docstring)."""
    votes: Votes = {}
    for meta in footers:
        if meta is None:
            continue
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        integers = [
            meta.schema.column(i).physical_type in _INTEGER_TYPES for i in range(meta.num_columns)
        ]
        for r in range(meta.num_row_groups):
            row_group = meta.row_group(r)
            for i, name in enumerate(names):
                chunk = row_group.column(i)
                values = chunk.num_values
                stats = chunk.statistics
                if stats is not None and stats.has_null_count:
                    values -= stats.null_count
                if values <= 0:
                    continue
                with_dict, without = votes.get(name, (0, 0))
                if chunk.has_dictionary_page and integers[i] and values <= INT_DICTIONARY_MAX:
                    continue  # too few values to have chosen otherwise: no vote
                if chunk.has_dictionary_page:
                    votes[name] = (with_dict + values, without)
                else:
                    votes[name] = (with_dict, without + values)
    return votes


def writer_options(first: pa.Table, votes: Votes) -> dict:
    """:func:`.storage.write_options` of the first row group ``first``, for every row group,
    with each string or integer column dictionary-encoded or not as ``votes`` (the inputs')
    decide. DELTA only for the event time (one partition-hour's, sorted, never null: deltas
    under 22 bits): an integer column the first row group finds ascending (DELTA) may be all
    null or jump in a later one, pages that fastparquet misdecodes (see
    :func:`.storage._delta_fits`); PLAIN costs ascending sizes little."""
    opts = write_options(first)
    opts.pop("row_group_size", None)
    encoding: dict[str, str] = {
        name: "PLAIN" if enc == "DELTA_BINARY_PACKED" and name != "timestamp" else enc
        for name, enc in opts["column_encoding"].items()
    }
    dictionary = list(opts["use_dictionary"])
    for f in first.schema:
        value_type = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        with_dict, without = votes.get(f.name, (0, 0))
        if with_dict == without or f.name in NO_DICTIONARY:
            continue  # the first row group decides
        if pa.types.is_integer(value_type):
            if with_dict > without and f.name not in dictionary:
                encoding.pop(f.name, None)
                dictionary.append(f.name)
            elif without > with_dict and f.name in dictionary:
                dictionary.remove(f.name)
                encoding[f.name] = "PLAIN"
        elif pa.types.is_string(value_type) or pa.types.is_large_string(value_type):
            fits = first[f.name].nbytes < DICTIONARY_PAGE_LIMIT
            if with_dict > without and fits and f.name not in dictionary:
                dictionary.append(f.name)
            elif without > with_dict and f.name in dictionary:
                dictionary.remove(f.name)
    opts["use_dictionary"] = dictionary
    opts["column_encoding"] = encoding
    return opts
