"""athena.arrow_values: the same Python values as pyarrow's own conversion, without pandas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from athena.arrow_values import column_values, scalar_value
from tests.athena.factory import access_frame, utc, write_frame

INSTANTS = [0, 1_700_000_000_123_456, -86_400_000_001, None, 253_402_300_799_999_999]
"""Microseconds: the epoch, a recent time, before 1970, NULL, the last microsecond of 9999."""


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
@pytest.mark.parametrize("tz", ["UTC", "Etc/UTC", "+05:30", "-08:00", "America/New_York"])
def test_zoned_timestamps_equal_pyarrows_own_values(unit: str, tz: str) -> None:
    per_unit = {"s": 1_000_000, "ms": 1_000, "us": 1}[unit]
    values = [None if v is None else v // per_unit for v in INSTANTS]
    column = pa.chunked_array([pa.array(values, pa.int64()).cast(pa.timestamp(unit, tz=tz))])
    try:
        theirs = column.to_pylist()
    except OverflowError:  # year 9999 east of UTC: past datetime's range, both refuse
        with pytest.raises(OverflowError):
            column_values(column)
        column = column.slice(0, len(values) - 1)
        theirs = column.to_pylist()
    ours = column_values(column)
    assert ours == theirs
    assert [t.utcoffset() if t else None for t in ours] == [
        t.utcoffset() if t else None for t in theirs
    ]
    for i, value in enumerate(theirs):
        assert scalar_value(column[i]) == value


def test_other_types_are_pyarrows_own_values() -> None:
    table = pa.table(
        {
            "naive": pa.array([1, None], pa.timestamp("ms")),
            "text": ["a", None],
            "n": [1, 2],
            "ns": pa.array([1, None], pa.timestamp("ns", tz="UTC")),
        }
    )
    for column in table.columns:
        assert column_values(column) == column.to_pylist()


def test_a_local_query_with_times_does_not_import_pandas(tmp_path: Path) -> None:
    """pyarrow imports pandas (half a second) to convert zoned times; logq's answers hold
    them, and `logq services` reads the newest of each partition: neither needs it."""
    uri = str(tmp_path / "wh")
    write_frame(uri, "envoy_access", access_frame(50, utc(2026, 11, 27), utc(2026, 11, 28), ["a"]))
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cli.app import app\n"
        f"for args in (['errors', '--since', '2026-11-26T00:00:00Z'], ['services'],\n"
        "             ['sql', 'SELECT timestamp FROM envoy_access', '-f', 'json']):\n"
        f"    done = CliRunner().invoke(app, [*args, '--warehouse', {uri!r}])\n"
        "    assert done.exit_code == 0, done.output\n"
        "    assert '2026-11-27' in done.output, done.output\n"
        "print('pandas' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
