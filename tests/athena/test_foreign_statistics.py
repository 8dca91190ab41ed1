"""A foreign file's values judged by its footer's row-group statistics (:func:`footer_mismatch`):
columns of the table's kinds (an int64 for an int, microseconds for milliseconds) whose values
the table's type cannot hold, found without reading a data page."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from athena.foreign import find_foreign, footer_mismatch
from athena.warehouse import open_warehouse

#: 0001-01-01T00:00:00Z in milliseconds since 1970, and one millisecond before it.
YEAR_1_MS = -62_135_596_800_000

CASES: dict[str, tuple[str, pa.Array, str | None]] = {
    "before year 1": (
        "timestamp",
        pa.array([YEAR_1_MS - 1, 0], pa.timestamp("ms", "UTC")),
        f"holds column timestamp with values {YEAR_1_MS - 1} to 0 (ms since 1970), beyond the "
        "table's timestamp (years 1 to 9999)",
    ),
    "year 1": ("timestamp", pa.array([YEAR_1_MS, 0], pa.timestamp("ms", "UTC")), None),
    "nanoseconds": ("timestamp", pa.array([2**63 - 1], pa.timestamp("ns")), None),
    "uint32 beyond int": (
        "duration_ms",
        pa.array([1, 4_000_000_000], pa.uint32()),
        "holds column duration_ms with values 1 to 4000000000, beyond the table's int",
    ),
    "int64 within int": ("response_code", pa.array([-(2**31), 2**31 - 1], pa.int64()), None),
    "dictionary beyond int": (
        "response_code",
        pa.array([2**31], pa.int64()).dictionary_encode(),
        "holds column response_code with values 2147483648 to 2147483648, beyond the table's int",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_values_beyond_the_declared_type_are_named(tmp_path: Path, case: str) -> None:
    column, values, problem = CASES[case]
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table({column: values}), path)
    found = footer_mismatch("envoy_access", path, pq.read_metadata(path))
    assert (found and found.problem) == problem
    if problem is not None:  # without statistics the footer cannot tell: the cast decides
        pq.write_table(pa.table({column: values}), path, write_statistics=False)
        assert footer_mismatch("envoy_access", path, pq.read_metadata(path)) is None


def test_a_failed_cast_names_only_a_file_whose_statistics_hold_it(tmp_path: Path) -> None:
    """An S3 table's cast failure names no column ("Integer value 3000000000 not in range",
    "Failed to parse string"): every file is looked at, in order. A file of times past year
    9999 (which a query reads as they are) or of another column beyond int, though first, is
    not the one whose cast failed; the file whose statistics hold the failing value, or whose
    column is text, is named."""
    far = str(tmp_path / "far.parquet")
    other = str(tmp_path / "other.parquet")
    huge = str(tmp_path / "huge.parquet")
    text = str(tmp_path / "text.parquet")
    pq.write_table(pa.table({"timestamp": pa.array([2**62], pa.timestamp("us", "UTC"))}), far)
    pq.write_table(pa.table({"duration_ms": pa.array([4_000_000_000], pa.uint32())}), other)
    pq.write_table(pa.table({"response_code": pa.array([3_000_000_000], pa.int64())}), huge)
    pq.write_table(pa.table({"response_code": pa.array(["abc"])}), text)
    wh = open_warehouse(str(tmp_path))
    found = find_foreign(wh, "envoy_access", [far, other, huge], failed=3_000_000_000)
    assert found is not None and found.path == huge, found
    assert find_foreign(wh, "envoy_access", [far, other], failed=3_000_000_000) is None
    found = find_foreign(wh, "envoy_access", [far, text])
    assert found is not None and found.path == text, found
