"""A statement's own failed cast reads no footer looking for a foreign file.

The local engine reads footers after a failed cast to name a file of other column types
(:func:`athena.foreign.find_foreign`). A cast only the statement could have made (of a column
the table declares as text, or DuckDB's own cast over an S3 table, whose files pyarrow reads
with the declared types) read every footer in scope to name none: seconds over thousands of S3
files before the user saw their own error. tests/cli/test_foreign_files.py keeps the files that
are at fault named.
"""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
import pytest

from athena.engines import StatementError
from athena.engines.local import LocalEngine
from tests.athena.factory import access_frame, utc, write_frame

#: Casts of the statement's own: of a text column, of a partition column, of an expression.
OWN_CASTS = {
    "text column": ("SELECT CAST(path AS INTEGER) FROM envoy_access", False),
    "partition column": ("SELECT CAST(service AS INTEGER) FROM envoy_access", False),
    "expression": ("SELECT CAST(substr(path, 2) AS INTEGER) FROM envoy_access", True),
}


def _logq_files(uri: str) -> list[str]:
    """A warehouse of 12 envoy_access files logq wrote (2 services, 3 hours, 2 files each)."""
    frame = access_frame(120, utc(2026, 11, 28, 10, 0), utc(2026, 11, 28, 13, 0), ["a", "b"])
    files = write_frame(uri, "envoy_access", frame, files_per_partition=2)
    assert len(files) == 12
    return files


def _footers_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose footers pyarrow reads from now on (metadata or schema)."""
    reads: list[str] = []
    for name in ("read_metadata", "read_schema"):
        real = getattr(pq, name)

        def counting(path: str, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            reads.append(path)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(pq, name, counting)
    return reads


def _own_error(uri: str, sql: str) -> str:
    with pytest.raises(StatementError) as failed:
        LocalEngine(uri).run(sql, {})
    return str(failed.value)


@pytest.mark.parametrize("case", [c for c, (_, anywhere) in OWN_CASTS.items() if not anywhere])
def test_a_failed_cast_of_a_column_no_file_can_fail_reads_no_footer(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """DuckDB names the column of the statement's cast (``... when casting from source column
    path``); the view casts ``path`` to text and ``service`` is no file column, so no file
    can be at fault. Each read all 12 footers."""
    uri = str(tmp_path / "wh")
    _logq_files(uri)
    reads = _footers_read(monkeypatch)
    message = _own_error(uri, OWN_CASTS[case][0])
    assert "Could not convert string" in message, message
    assert reads == [], f"{len(reads)} footers read for the statement's own cast"


@pytest.mark.s3
@pytest.mark.integration
@pytest.mark.parametrize("case", list(OWN_CASTS))
def test_a_failed_cast_over_s3_reads_no_footer(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Over S3 DuckDB's casts see the declared types (a file's own fail in pyarrow's scan,
    in pyarrow's words), so none is a file's, even of an expression, which names no column."""
    _logq_files(s3_warehouse)
    reads = _footers_read(monkeypatch)
    message = _own_error(s3_warehouse, OWN_CASTS[case][0])
    assert "Could not convert string" in message, message
    assert reads == [], f"{len(reads)} footers read for the statement's own cast"


def test_a_first_file_holding_a_text_column_as_integers_is_still_named(tmp_path: Any) -> None:
    """A text column cannot fail the view's cast, but DuckDB's reader casts every file to the
    first file's types: a foreign first file with ``path`` as int64 fails the others' text
    ("failed to cast column path ... reading file", a logq file). That file is named, as
    before: only the view's cast of a text column is left unsearched."""
    import pyarrow as pa

    from athena.foreign import ForeignFile

    uri = str(tmp_path / "wh")
    newest = max(_logq_files(uri), key=lambda f: f.split("dt=")[1])
    rows = pq.read_table(newest)
    numbers = pa.array(range(rows.num_rows), pa.int64())
    foreign = f"{newest.rsplit('/', 1)[0]}/0-foreign.parquet"  # listed first: the view's
    pq.write_table(rows.set_column(rows.schema.get_field_index("path"), "path", numbers), foreign)
    with pytest.raises(ForeignFile) as named:
        LocalEngine(uri).run("SELECT count(*), max(path) FROM envoy_access", {})
    assert named.value.path == foreign, str(named.value)
    assert "holds column path as int64 where the table has string" in str(named.value)
