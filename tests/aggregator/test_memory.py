"""Allocator tuning (aggregator/memory.py): applied in a fresh process and in the real service;
pyarrow kept from loading pandas at the aggregator's start (aggregator/launch.py).

Each check runs in a child process: the settings are process-wide (Arrow's default pool, glibc's
arena limit) and must not leak into the test runner. Memory figures are in bench/ingest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.aggregator.helpers import envoy_line
from tests.support.pipeline import start_aggregator
from tests.support.procs import wait_until

_PROBE = """
import json
import pyarrow as pa
from aggregator.memory import tune_memory

settings = tune_memory()
before = pa.system_memory_pool().bytes_allocated()
data = pa.array([str(i) * 20 for i in range(50_000)])  # ~1 MB of string data
print(json.dumps({
    "pool": settings.arrow_pool,
    "native": settings.native_pool,
    "text": settings.describe(),
    "arena_max": settings.arena_max,
    "source": settings.source,
    "default_backend": pa.default_memory_pool().backend_name,
    "system_grew": pa.system_memory_pool().bytes_allocated() - before,
    "rows": len(data),
}))
"""


def _probe(env: dict[str, str]) -> dict[str, object]:
    return _json_probe(_PROBE, env)


def _clean(env: dict[str, str]) -> dict[str, str]:
    return {
        k: v for k, v in env.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "MALLOC_ARENA_MAX")
    }


def test_tune_memory_moves_arrow_to_the_system_pool_and_limits_arenas(
    subprocess_env: dict[str, str],
) -> None:
    out = _probe(_clean(subprocess_env))
    assert out["pool"] == out["default_backend"] == "system"
    assert out["arena_max"] == 2
    assert out["source"] == "tuned"
    # New Arrow buffers really come from glibc malloc now (not mimalloc).
    assert isinstance(out["system_grew"], int) and out["system_grew"] >= 1_000_000


def test_operator_environment_wins(subprocess_env: dict[str, str]) -> None:
    env = _clean(subprocess_env) | {
        "ARROW_DEFAULT_MEMORY_POOL": "mimalloc",
        "MALLOC_ARENA_MAX": "4",
    }
    out = _probe(env)
    assert out["pool"] == out["default_backend"] == out["native"] == "mimalloc"
    assert out["arena_max"] == 4
    assert out["source"] == "environment"
    assert out["system_grew"] == 0
    assert "native" not in str(out["text"])  # nothing left behind to point out


def test_an_arena_limit_that_is_no_number_is_unknown_not_a_crash(
    subprocess_env: dict[str, str],
) -> None:
    """``MALLOC_ARENA_MAX=²``: ``str.isdigit`` takes it, ``int`` raises; the aggregator did not
    start. glibc reads no number in it either: the limit is unknown, and left to glibc."""
    out = _probe(_clean(subprocess_env) | {"MALLOC_ARENA_MAX": "\u00b2"})
    assert out["arena_max"] is None
    assert out["source"] == "environment+tuned"  # the pool was tuned, the arenas were not
    assert out["pool"] == "system"


def test_native_pool_left_behind_is_named(subprocess_env: dict[str, str]) -> None:
    """Set at run time, Arrow's C++ default pool stays as loaded: the log line says so."""
    out = _probe(_clean(subprocess_env))
    if out["native"] == "system":
        pytest.skip("this pyarrow build's native default is already the system pool")
    assert f"Arrow's native pool stays {out['native']}" in str(out["text"])
    assert "ARROW_DEFAULT_MEMORY_POOL=system" in str(out["text"])


@pytest.mark.integration
def test_the_aggregator_applies_it_at_start(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    agg = start_aggregator(
        str(tmp_path / "warehouse"), tmp_path, _clean(subprocess_env), "--log-level", "info"
    )
    try:
        wait_until(
            lambda: "memory: arrow pool system, malloc arenas 2 (tuned)" in agg.log.read_text(),
            60,
            "the aggregator's memory settings log line",
            proc=agg.proc,
            log=agg.log,
        )
        # The console script tunes before pyarrow loads (aggregator/launch.py): Arrow's native
        # pool (S3 streams, IPC) moved to the system allocator as well.
        assert "native pool stays" not in agg.log.read_text()
        assert agg.terminate() == 0
    finally:
        agg.kill()


_EARLY_PROBE = """
import json, os, sys
from aggregator.memory import tune_memory, tune_memory_early

early = tune_memory_early() if sys.argv[1] == "early" else None
leaked = "ARROW_DEFAULT_MEMORY_POOL" in os.environ
import pyarrow as pa
import pyarrow.parquet as pq

settings = tune_memory()
table = pa.table({"a": pa.array([str(i) * 20 for i in range(50_000)])})
sink = pa.BufferOutputStream()
pq.write_table(table, sink)
pq.read_table(pa.BufferReader(sink.getvalue()))
print(json.dumps({
    "early": early,
    "leaked": leaked,
    "native": settings.native_pool,
    "again": tune_memory_early(),
    "mimalloc_max": pa.mimalloc_memory_pool().max_memory(),
}))
"""


def _json_probe(code: str, env: dict[str, str], *args: str) -> dict[str, object]:
    """What ``code``, run by a new Python with ``args``, prints last (a JSON object)."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _early_probe(env: dict[str, str], mode: str) -> dict[str, object]:
    return _json_probe(_EARLY_PROBE, env, mode)


def test_early_tuning_moves_arrows_native_pool_too(subprocess_env: dict[str, str]) -> None:
    late = _early_probe(_clean(subprocess_env), "late")
    if late["native"] == "system":
        pytest.skip("this pyarrow build's native default is already the system pool")
    # Tuned at run time only, Parquet I/O still touches the native (mimalloc) pool ...
    assert isinstance(late["mimalloc_max"], int) and late["mimalloc_max"] > 0
    early = _early_probe(_clean(subprocess_env), "early")
    # ... chosen before pyarrow loaded, nothing does, and the variable did not stay set.
    assert early["early"] is True
    assert early["native"] == "system"
    assert early["mimalloc_max"] == 0
    assert early["leaked"] is False
    assert early["again"] is False  # once pyarrow is loaded it is too late: says so


_FATAL = """
import os, signal
import aggregator.commands
aggregator.commands.run = lambda command: os.kill(os.getpid(), signal.SIGBUS)
from aggregator.launch import main
main([])
"""


def test_a_fatal_signal_leaves_the_python_stack(subprocess_env: dict[str, str]) -> None:
    """Spilled rows are memory-mapped (aggregator/spill.py): a disk error while one is read
    back is SIGBUS. The console entry then prints where it happened, not just a dead process."""
    done = subprocess.run(
        [sys.executable, "-c", _FATAL],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -7  # SIGBUS
    assert "Fatal Python error: Bus error" in done.stderr
    assert 'File "<string>", line 4' in done.stderr  # the lambda that raised it


_NO_PANDAS = """
import json, sys
import aggregator.commands

def serve(command):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from aggregator.envoy import parse_lines

    parsed = parse_lines(pa.array([sys.argv[2]]))  # pa.array of numpy offsets inside
    times = pa.table({"t": pa.array([1_700_000_000_000], pa.timestamp("ms", tz="UTC"))})
    sink = pa.BufferOutputStream()
    pq.write_table(times, sink)
    read = pq.read_table(pa.BufferReader(sink.getvalue()))["t"].to_pylist()
    arrow = {
        "pandas_loaded": "pandas" in sys.modules,
        "rows": parsed.rows.to_pylist(),
        "numbers": pa.array(np.arange(3)).to_pylist(),
        "time": read[0].isoformat(),
    }
    import pandas  # still there for anything else that wants it

    arrow["series"] = pa.array(pandas.Series([4, 5])).to_pylist()
    print(json.dumps(arrow))
    return 0

aggregator.commands.run = serve
if sys.argv[1] == "launch":
    from aggregator.launch import main
    sys.exit(main([]))
sys.exit(serve([]))
"""


@pytest.mark.parametrize("mode", ["launch", "plain"])
def test_the_console_entry_keeps_pandas_out_of_pyarrow(
    mode: str, subprocess_env: dict[str, str]
) -> None:
    """``logq-aggregator`` keeps pyarrow from importing pandas (aggregator/launch.py), which
    its pandas shim does the first time ``pa.array`` runs: half a CPU-second or more of every
    aggregator, which never uses pandas. Through the console entry, Envoy parsing, numpy
    arrays and zoned timestamps read back from Parquet give the same values and pandas is never
    imported (it stays importable); without it (``plain``: the same work, the entry skipped),
    pyarrow imports pandas."""
    out = _json_probe(_NO_PANDAS, subprocess_env, mode, envoy_line())
    assert out["pandas_loaded"] is (mode == "plain")
    assert out["rows"] == [0]
    assert out["numbers"] == [0, 1, 2]
    assert out["time"] == "2023-11-14T22:13:20+00:00"
    assert out["series"] == [4, 5]
