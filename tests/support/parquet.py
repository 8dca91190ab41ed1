"""What an independent Parquet reader makes of our files: fastparquet's values, compared value
for value with pyarrow's (a row count said nothing when fastparquet read strings as nulls)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

with warnings.catch_warnings():  # fastparquet warns about a pandas option on import
    warnings.simplefilter("ignore")
    import fastparquet

Source = str | Path | bytes


def plain_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column's values as Python ones: strings, ints, timestamps as milliseconds."""
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column.cast(pa.timestamp("ms", tz="UTC")), pa.int64())
    return column.to_pylist()


def arrow_values(table: pa.Table) -> dict[str, list[Any]]:
    return {name: plain_values(table[name]) for name in table.column_names}


def _open(source: Source) -> Any:
    return io.BytesIO(source) if isinstance(source, bytes) else str(source)


def fastparquet_values(source: Source) -> dict[str, list[Any]]:
    """Every column fastparquet reads from ``source``, as :func:`plain_values` gives them."""
    frame = fastparquet.ParquetFile(_open(source)).to_pandas()
    out = {}
    for name in frame.columns:
        series = frame[name]
        missing = series.isna().tolist()
        if pd.api.types.is_datetime64_any_dtype(series.dtype):
            naive = series.dt.tz_localize(None) if series.dt.tz else series
            stamps = naive.to_numpy(dtype="datetime64[ms]").astype(np.int64).tolist()
            out[name] = [None if m else v for m, v in zip(missing, stamps, strict=True)]
        elif pd.api.types.is_numeric_dtype(series.dtype):
            assert not pd.api.types.is_float_dtype(series.dtype), f"{name} read as floats"
            out[name] = [None if m else int(v) for m, v in zip(missing, series, strict=True)]
        else:
            out[name] = [None if m else v for m, v in zip(missing, series, strict=True)]
    return out


def assert_same_values(
    reader: str, got: dict[str, list[Any]], expected: dict[str, list[Any]]
) -> None:
    """``got`` (one reader's columns) is ``expected``, column for column, value for value."""
    assert list(got) == list(expected), reader
    for name, values in expected.items():
        if got[name] != values:
            wrong = [i for i, (a, b) in enumerate(zip(got[name], values, strict=False)) if a != b]
            first = wrong[0] if wrong else min(len(got[name]), len(values))
            raise AssertionError(
                f"{reader} misread {name}: {len(got[name])} values for {len(values)}, "
                f"{len(wrong)} different, first at row {first}: "
                f"{str(got[name][first : first + 1])[:60]} "
                f"for {str(values[first : first + 1])[:60]}"
            )


def assert_fastparquet_reads(source: Source) -> int:
    """fastparquet reads every value of ``source`` as pyarrow does; returns the rows."""
    expected = arrow_values(pq.read_table(_open(source)))
    assert_same_values("fastparquet", fastparquet_values(source), expected)
    return len(next(iter(expected.values()), []))
