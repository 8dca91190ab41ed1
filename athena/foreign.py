"""Parquet files in a table's folder that logq's aggregator did not write: the error naming one.

Someone copies in a file from another tool, or one an old schema wrote: its columns may have
other types than the table declares (:mod:`athena.schema`, the source of truth). Athena refuses
such a file (``HIVE_BAD_DATA``); logq refuses it too, naming the file and the column, rather
than answering from a column DuckDB widened to text (``max(response_code)`` was ``abc``).

Nothing here runs on the happy path: the local engine reads every column cast to its declared
type (a cast that cannot convert a value raises), and only then are footers read, one at a time,
to find the file at fault (:func:`find_foreign`). Reading every footer of every query up front
would cost what the engine avoids (see :mod:`athena.engines.local`). One check does run on the
happy path of an S3 table, on schemas pyarrow's scan has read anyway
(:func:`refuse_integer_times`): pyarrow's cast of integer times does not fail, where DuckDB's
does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from athena.engines.result import EngineError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from athena.warehouse import Warehouse


#: Words of every :class:`ForeignFile` message: the local engine knows its own error by them
#: when an S3 scan raised it (:func:`refuse_integer_times`) and DuckDB passed it on as text.
DID_NOT_WRITE = "logq did not write it"


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
            f"the Parquet file {self.path} {self.problem}: {DID_NOT_WRITE}; move it out "
            f"of the table's folder or rewrite it {self.rewrite}{then}"
        )


#: How the message of a file of other types or values ends: what to rewrite it with.
_REWRITE = "with the table's types (`logq ddl` shows them)"


def wrong_type(path: str, column: str, found: pa.DataType, declared: str) -> ForeignFile:
    """The error for a file whose ``column`` is ``found``, where the table declares the Athena
    type ``declared`` (the words `logq ddl` shows it in)."""
    return ForeignFile(
        path,
        f"holds column {column} as {found} where the table has {declared}",
        _REWRITE,
    )


def times_out_of_range(path: str) -> ForeignFile:
    """The error for a file whose ``timestamp`` values lie past year 9999 (or before year 1)."""
    return ForeignFile(path, "holds times past year 9999", "with real times")


def out_of_range(path: str, column: str, values: str, declared: str) -> ForeignFile:
    """The error for a file whose ``column`` is of the declared kind but holds ``values`` (its
    footer's statistics: least to greatest) beyond what the table's type ``declared`` holds."""
    return ForeignFile(
        path, f"holds column {column} with values {values}, beyond the table's {declared}", _REWRITE
    )


def not_utf8(path: str, column: str) -> ForeignFile:
    """The error for a file whose ``column`` is raw bytes (Parquet BINARY without the UTF8
    annotation, as Spark, Hive and Impala write text) holding bytes that are not UTF-8 text."""
    return ForeignFile(
        path,
        f"holds column {column} as binary with bytes that are not UTF-8 text",
        "with that column as UTF-8 text",
    )


def uncastable(path: str, reason: str) -> ForeignFile:
    """The error for a file whose values failed the cast to the table's types as it was read
    (``reason``: pyarrow's words), where its footer did not tell."""
    return ForeignFile(
        path,
        f"holds values the table's types cannot hold ({reason})",
        _REWRITE,
    )


#: The times a ``timestamp`` can hold, in seconds since 1970: years 1 to 9999, as a ``dt``
#: partition names them (logq's writers keep every row within them; Python's datetime, and so
#: `logq services` and the stale-data note, can hold no other).
_TIME_SPAN_S = (-62_135_596_800, 253_402_300_800)
_PER_SECOND = {"ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def same_kind(found: pa.DataType, declared: pa.DataType) -> bool:
    """Whether a file's column type reads as the declared one without changing a value: any
    timestamp unit for a timestamp, any integer width for an integer (DuckDB checks the range
    as it casts), large or plain strings for a string, and binary too (:func:`text_as_binary`).
    A dictionary-encoded column (pandas' categories, as pyarrow writes them) is of its values'
    kind: DuckDB reads it as they are, and compaction's cast decodes it."""
    import pyarrow as pa

    if pa.types.is_dictionary(found):
        found = found.value_type
    kinds = (pa.types.is_timestamp, pa.types.is_integer, pa.types.is_floating)
    for kind in kinds:
        if kind(declared):
            return kind(found)
    if pa.types.is_string(declared) or pa.types.is_large_string(declared):
        return pa.types.is_string(found) or pa.types.is_large_string(found) or _binary(found)
    return found == declared


def _binary(found: pa.DataType) -> bool:
    """Whether ``found`` is raw bytes (Parquet BINARY without the UTF8 annotation), also
    dictionary-encoded."""
    import pyarrow as pa

    found = found.value_type if pa.types.is_dictionary(found) else found
    return pa.types.is_binary(found) or pa.types.is_large_binary(found)


def text_as_binary(table: str, schema: pa.Schema) -> list[str]:
    """The columns of a file's ``schema`` that the table declares as strings but the file holds
    as raw bytes: Parquet BINARY without the UTF8 annotation, as Spark
    (``spark.sql.parquet.binaryAsString`` readers), Hive, Impala and older writers store text.
    Athena (Trino's Hive connector) reads them as varchar; logq reads them as strings too (the
    local engine's ``binary_as_string``, compaction's cast), which holds only UTF-8 text: a
    value that is not fails the read (:func:`utf8_mismatch` names the file). Trino passes such
    bytes through unchecked; replacing them would change the data without a word."""
    import pyarrow as pa

    from athena.schema import table as schema_table

    declared = {c.name for c in schema_table(table).data_columns if pa.types.is_string(c.arrow)}
    return [f.name for f in schema if f.name in declared and _binary(f.type)]


def _binary_mismatch(table: str, path: str, schema: pa.Schema) -> ForeignFile | None:
    """The error for ``path`` when its ``schema`` holds raw bytes where the table declares
    another type than a string (``response_code`` as BINARY), else None. The local engine
    reads such a column as text too (``binary_as_string``): its bytes, when they are not
    UTF-8, fail that read before any cast could tell the type, and only the footer names the
    file (all other columns are left to :func:`mismatch`, which is not asked here)."""
    import pyarrow as pa

    return schema_mismatch(table, path, pa.schema([f for f in schema if _binary(f.type)]))


#: Rows of a file's raw-bytes text columns checked at a time (:func:`utf8_mismatch`).
UTF8_CHECK_ROWS = 64 * 1024


def utf8_mismatch(table: str, path: str, parquet: pq.ParquetFile) -> ForeignFile | None:
    """The error for ``path`` (open as ``parquet``) when a column it holds as raw bytes where
    the table declares a string (:func:`text_as_binary`) holds bytes that are not UTF-8, else
    None. Only those columns are read, a batch at a time, and only in such files: logq's own
    write strings, and a file without such a column costs nothing here."""
    import pyarrow as pa

    columns = text_as_binary(table, parquet.schema_arrow)
    if not columns:
        return None
    for batch in parquet.iter_batches(UTF8_CHECK_ROWS, columns=columns, use_threads=False):
        for name, values in zip(batch.schema.names, batch.columns, strict=True):
            try:
                values.cast(pa.string())  # (checks the bytes; pyarrow strings are UTF-8)
            except pa.ArrowInvalid:
                return not_utf8(path, name)
    return None


def mismatch(
    wh: Warehouse, table: str, path: str, column: str = "", failed: int | None = None
) -> ForeignFile | None:
    """The error for ``path`` when a column of it (``column``, else any) differs in kind from
    ``table``'s declared type (:func:`same_kind`) or holds integers beyond it
    (:func:`range_mismatch`; ``failed``: among them the value a query's cast failed on, when
    its error gave it), else None; reads its footer only.

    This explains a query's failed cast, so times are not judged by their statistics: DuckDB
    and pyarrow read a time past year 9999 as it is (the stale-data note names its file), and
    a file of such times named here would not be the file whose cast failed."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path, filesystem=wh.fs)
    return footer_mismatch(table, path, meta, column, failed=failed, times=False)


def footer_mismatch(
    table: str,
    path: str,
    meta: pq.FileMetaData,
    column: str = "",
    failed: int | None = None,
    times: bool = True,
) -> ForeignFile | None:
    """:func:`mismatch` for a footer already read (``meta``, the file at ``path``): compaction
    reads every input's footer anyway, and checks it here rather than read it twice (its
    times too, ``times``: a merge would keep a time past year 9999 as it is)."""
    schema = meta.schema.to_arrow_schema()
    return schema_mismatch(table, path, schema, column) or range_mismatch(
        table, path, meta, schema, column, failed=failed, times=times
    )


def schema_mismatch(
    table: str, path: str, schema: pa.Schema, column: str = ""
) -> ForeignFile | None:
    """The error for ``path`` when a column of its ``schema`` (``column``, else any) differs in
    kind from ``table``'s declared type (:func:`same_kind`), else None. A column
    the file lacks is no mismatch (older schema versions lack the columns added since), nor is
    one the table does not declare (readers never see it)."""
    from athena.schema import table as schema_table

    declared = {c.name: c for c in schema_table(table).data_columns}
    for field in schema:
        want = declared.get(field.name) if column in ("", field.name) else None
        if want is not None and not same_kind(field.type, want.arrow):
            return wrong_type(path, field.name, field.type, want.athena)
    return None


def range_mismatch(
    table: str,
    path: str,
    meta: pq.FileMetaData,
    schema: pa.Schema,
    column: str = "",
    failed: int | None = None,
    times: bool = True,
) -> ForeignFile | None:
    """The error for ``path`` when a column of it (``column``, else any) holds values its type
    allows but the declared one does not, by its footer's row-group statistics (no data page
    read), else None: integers wider than the table's (``response_code`` as int64 holding
    3,000,000,000, where the table has int) and times outside years 1 to 9999. Their types
    are of the declared kind (:func:`same_kind`), so nothing else told: the cast failed as the
    file was read, the merge of its partition at every pass naming only the partition, a query
    with DuckDB's words naming no file. A row group without statistics is not looked at (the
    cast, as the file is read, still decides for it).

    ``failed``, the value a cast failed on, names only a column whose statistics span it (the
    file whose cast failed, not another file beyond the type in another column); ``times``
    False leaves time columns out."""
    import pyarrow as pa

    from athena.freshness import time_unit
    from athena.schema import table as schema_table

    for want in schema_table(table).data_columns:
        name = want.name
        is_time = times and pa.types.is_timestamp(want.arrow)
        at = schema.get_field_index(name) if column in ("", name) else -1
        if at < 0 or not (is_time or pa.types.is_integer(want.arrow)):
            continue
        found = schema.field(at).type
        found = found.value_type if pa.types.is_dictionary(found) else found
        if not is_time and found == want.arrow:
            continue
        index = _leaf_index(meta, name)
        unit = time_unit(meta.schema.column(index)) if is_time and index is not None else None
        if index is None or (is_time and unit not in _PER_SECOND):  # (INT96: no statistics)
            continue
        if unit is not None:
            per = _PER_SECOND[unit]
            low, high = _TIME_SPAN_S[0] * per, _TIME_SPAN_S[1] * per - 1
            declared_range, suffix = "timestamp (years 1 to 9999)", f" ({unit} since 1970)"
        else:
            low, high = -(2 ** (want.arrow.bit_width - 1)), 2 ** (want.arrow.bit_width - 1) - 1
            declared_range, suffix = want.athena, ""
        bounds = _statistics_bounds(meta, index, raw=is_time)
        if bounds is None or (failed is not None and not bounds[0] <= failed <= bounds[1]):
            continue
        if bounds[0] < low or bounds[1] > high:
            values = f"{bounds[0]} to {bounds[1]}{suffix}"
            return out_of_range(path, name, values, declared_range)
    return None


def _leaf_index(meta: pq.FileMetaData, name: str) -> int | None:
    """The Parquet column of the top-level field ``name`` (None for a nested one: no table
    column is)."""
    names = meta.schema.names  # (leaf names: a nested field's may repeat a top-level one's)
    index = names.index(name) if name in names else None
    return index if index is not None and meta.schema.column(index).path == name else None


def _statistics_bounds(meta: pq.FileMetaData, index: int, raw: bool) -> tuple[int, int] | None:
    """The least and greatest value of column ``index`` over the row groups whose statistics
    give them (``raw``: as stored, for times, which pyarrow would convert to datetimes and fail
    on past year 9999), None when none does."""
    low: int | None = None
    high: int | None = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max:
            continue
        least, most = (stats.min_raw, stats.max_raw) if raw else (stats.min, stats.max)
        if not isinstance(least, int) or not isinstance(most, int):
            continue
        low = least if low is None else min(low, least)
        high = most if high is None else max(high, most)
    return None if low is None or high is None else (low, high)


def refuse_integer_times(
    table: str, path: str, schema: pa.Schema, reads: Callable[[str], bool]
) -> None:
    """Raise :class:`ForeignFile` for ``path`` when its ``schema`` holds integers in a column
    that ``table`` declares as a timestamp and that the scan ``reads`` (by name): the check an
    S3 table's scan runs on each file before its first rows go out
    (:func:`athena.engines.s3scan.chunked_dataset`). The error reaches the query as DuckDB's
    text: :func:`athena.engines.local._cast_failure` knows it by :data:`DID_NOT_WRITE`, and the
    engine names the file again from its footer, as for pyarrow's own failed casts.

    pyarrow's scan of an S3 table, which reads every file with the declared schema
    (:mod:`athena.engines.s3scan`), casts such a column without a word, the integers taken as
    epoch values in the declared unit (milliseconds): DuckDB's cast of a local file refuses
    it, and so does Athena (``HIVE_BAD_DATA``). Only a time filter whose row-group statistics
    pyarrow could not compare with it failed, and not for a row group of one value. Text times
    are not looked at: pyarrow's cast parses them as DuckDB's does, or fails. The scan has read
    ``schema`` (the footer) already: this reads nothing (a few microseconds a file)."""
    import pyarrow as pa

    for name, athena in _time_columns(table):
        at = schema.get_field_index(name)
        if at < 0:
            continue
        found = schema.field(at).type
        kind = found.value_type if pa.types.is_dictionary(found) else found
        if pa.types.is_integer(kind) and reads(name):
            raise wrong_type(path, name, found, athena)


@functools.cache
def _time_columns(table: str) -> tuple[tuple[str, str], ...]:
    """The columns ``table`` declares as timestamps: their names and Athena types."""
    import pyarrow as pa

    from athena.schema import table as schema_table

    columns = schema_table(table).data_columns
    return tuple((c.name, c.athena) for c in columns if pa.types.is_timestamp(c.arrow))


def cast_can_fail(table: str, column: str) -> bool:
    """Whether the cast of ``table``'s files to its declared types can fail on ``column`` (the
    one a failed cast names; ``""``: it names none, so any may). A column the table does not
    declare (``dt``, an alias of the statement) or declares as text cannot: any file value
    converts to text. DuckDB names the column of the statement's own cast too, and
    ``CAST(path AS INT)`` failing read every footer in scope to find no file at fault."""
    import pyarrow as pa

    from athena.schema import table as schema_table

    if not column:
        return True
    declared = {c.name: c.arrow for c in schema_table(table).data_columns}
    found = declared.get(column)
    return found is not None and not (pa.types.is_string(found) or pa.types.is_large_string(found))


def find_foreign(
    wh: Warehouse,
    table: str,
    paths: Iterable[str],
    first: Iterable[str] = (),
    column: str = "",
    failed: int | None = None,
    utf8: bool = False,
) -> ForeignFile | None:
    """The first file of ``paths`` (``first`` looked at before the others: the files a DuckDB
    error names, the file the view was bound to) whose ``column`` (else any column) differs
    from ``table``'s (:func:`mismatch`; ``failed``: the value the cast failed on), or with
    ``utf8`` (the read found bytes that are not UTF-8) whose raw bytes the table declares as
    another type (:func:`_binary_mismatch`) or whose raw-bytes text columns hold such bytes
    (:func:`utf8_mismatch`), or None. Files that cannot be read are skipped: this only
    explains an error already raised."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen: set[str] = set()
    for path in [*first, *paths]:
        if path in seen:
            continue
        seen.add(path)
        try:
            if utf8:
                with wh.fs.open_input_file(path) as fh:
                    parquet = pq.ParquetFile(fh)
                    found = _binary_mismatch(table, path, parquet.schema_arrow) or utf8_mismatch(
                        table, path, parquet
                    )
            else:
                found = mismatch(wh, table, path, column, failed)
        except (OSError, pa.ArrowException, ValueError):
            continue
        if found is not None:
            return found
    return None
