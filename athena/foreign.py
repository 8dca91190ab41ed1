"""Parquet files in a table's folder that logq's aggregator did not write: the error naming one.

Someone copies in a file from another tool, or one an old schema wrote: its columns may have
other types than the table declares (:mod:`athena.schema`, the source of truth). Athena refuses
such a file (``HIVE_BAD_DATA``); logq refuses it too, naming the file and the column, rather
than answering from a column DuckDB widened to text (``max(response_code)`` was ``abc``).

Nothing here runs on the happy path: the local engine reads every column cast to its declared
type (a cast that cannot convert a value raises), and only then are footers read, one at a time,
to find the file at fault (:func:`find_foreign`). Reading every footer of every query up front
would cost what the engine avoids (see :mod:`athena.engines.local`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from athena.engines.result import EngineError

if TYPE_CHECKING:
    import pyarrow as pa

    from athena.warehouse import Warehouse


class ForeignFile(EngineError):
    """A Parquet file whose columns do not hold what the table declares (exit 1). Worded short:
    errors are cut to about 400 characters (:func:`cli.errors.shorten`), and the path is long."""

    def __init__(self, path: str, problem: str, rewrite: str) -> None:
        self.path, self.problem, self.rewrite = path, problem, rewrite
        super().__init__(self.advice(", then run the command again"))

    def advice(self, then: str) -> str:
        """The message, ending in ``then`` (``logq``: run the command again; compaction, which
        goes on without the file: what it does until then)."""
        return (
            f"the Parquet file {self.path} {self.problem}: logq did not write it; move it out "
            f"of the table's folder or rewrite it {self.rewrite}{then}"
        )


def wrong_type(path: str, column: str, found: pa.DataType, declared: str) -> ForeignFile:
    """The error for a file whose ``column`` is ``found``, where the table declares the Athena
    type ``declared`` (the words `logq ddl` shows it in)."""
    return ForeignFile(
        path,
        f"holds column {column} as {found} where the table has {declared}",
        "with the table's types (`logq ddl` shows them)",
    )


def times_out_of_range(path: str) -> ForeignFile:
    """The error for a file whose ``timestamp`` values lie past year 9999 (or before year 1)."""
    return ForeignFile(path, "holds times past year 9999", "with real times")


def same_kind(found: pa.DataType, declared: pa.DataType) -> bool:
    """Whether a file's column type reads as the declared one without changing a value: any
    timestamp unit for a timestamp, any integer width for an integer (DuckDB checks the range
    as it casts), large or plain strings for a string. A dictionary-encoded column (pandas'
    categories, as pyarrow writes them) is of its values' kind: DuckDB reads it as they are,
    and compaction's cast decodes it."""
    import pyarrow as pa

    if pa.types.is_dictionary(found):
        found = found.value_type
    kinds = (pa.types.is_timestamp, pa.types.is_integer, pa.types.is_floating)
    for kind in kinds:
        if kind(declared):
            return kind(found)
    if pa.types.is_string(declared) or pa.types.is_large_string(declared):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    return found == declared


def mismatch(wh: Warehouse, table: str, path: str, column: str = "") -> ForeignFile | None:
    """The error for ``path`` when a column of it (``column``, else any) differs in kind from
    ``table``'s declared type (:func:`same_kind`), else None; reads its footer only."""
    import pyarrow.parquet as pq

    return schema_mismatch(table, path, pq.read_schema(path, filesystem=wh.fs), column)


def schema_mismatch(
    table: str, path: str, schema: pa.Schema, column: str = ""
) -> ForeignFile | None:
    """:func:`mismatch` for a footer already read (``schema``, the file at ``path``): compaction
    reads every input's footer anyway, and checks it here rather than read it twice. A column
    the file lacks is no mismatch (older schema versions lack the columns added since), nor is
    one the table does not declare (readers never see it)."""
    from athena.schema import table as schema_table

    declared = {c.name: c for c in schema_table(table).data_columns}
    for field in schema:
        want = declared.get(field.name) if column in ("", field.name) else None
        if want is not None and not same_kind(field.type, want.arrow):
            return wrong_type(path, field.name, field.type, want.athena)
    return None


def find_foreign(
    wh: Warehouse, table: str, paths: Iterable[str], first: Iterable[str] = (), column: str = ""
) -> ForeignFile | None:
    """The first file of ``paths`` (``first`` looked at before the others: the files a DuckDB
    error names, the file the view was bound to) whose ``column`` (else any column) differs
    from ``table``'s, or None. Files that cannot be read are skipped: this only explains an
    error already raised."""
    import pyarrow as pa

    seen: set[str] = set()
    for path in [*first, *paths]:
        if path in seen:
            continue
        seen.add(path)
        try:
            found = mismatch(wh, table, path, column)
        except (OSError, pa.ArrowException, ValueError):
            continue
        if found is not None:
            return found
    return None
