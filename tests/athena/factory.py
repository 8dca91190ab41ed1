"""Test warehouses written exactly as the aggregator's writer lays them out.

Rows are generated with a seeded RNG as pandas frames (kept by the tests to compute expected
answers independently), then written per ``(service, dt)`` partition with pyarrow: zstd, INT64
millisecond UTC timestamps, columns exactly as ``athena.schema``, no partition columns inside.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from athena.schema import CONTAINER_LOGS, ENVOY_ACCESS, dt_of
from athena.warehouse import open_warehouse

PATHS = ["/api/recipes", "/api/recipes/42", "/api/users", "/healthz", "/api/orders"]
METHODS = ["GET", "GET", "GET", "POST", "DELETE"]
CODES = [200] * 40 + [201, 204, 301, 304, 400, 404, 404, 429, 500, 502, 503, 503, 504, 0]
FLAGS_BY_CODE = {
    0: ["DC"],
    502: ["UF", "UF,URX", "-"],
    503: ["UH", "UO", "UF,URX", "-"],
    504: ["UT"],
    429: ["RL"],
    404: ["-", "NR"],
}
AGENTS = ["curl/8.5.0", "Mozilla/5.0", "okhttp/4.12", None]


def access_frame(
    n: int, start: datetime, end: datetime, services: list[str], seed: int = 1
) -> pd.DataFrame:
    """``n`` envoy_access rows with timestamps uniform in ``[start, end)`` (ms precision)."""
    rng = random.Random(seed)
    span_ms = int((end - start).total_seconds() * 1000)
    rows = []
    for i in range(n):
        ts = start + timedelta(milliseconds=rng.randrange(span_ms))
        code = rng.choice(CODES)
        flags = rng.choice(FLAGS_BY_CODE.get(code, ["-"]))
        up = (
            None
            if flags in ("UH", "NR", "DC")
            else f"10.0.{rng.randrange(3)}.{rng.randrange(4)}:8080"
        )
        xff = rng.choice([None, f"203.0.113.{rng.randrange(5)}", "198.51.100.7, 10.0.0.1"])
        rows.append(
            {
                "timestamp": ts,
                "service": services[i % len(services)],
                "host": f"host-{i % 3}",
                "container_id": f"c{i % 7:063d}",
                "container_name": "envoy",
                "method": rng.choice(METHODS),
                "path": rng.choice(PATHS),
                "protocol": "HTTP/1.1",
                "response_code": code,
                "response_flags": flags,
                "bytes_received": rng.randrange(0, 5000),
                "bytes_sent": rng.randrange(0, 50000),
                "duration_ms": rng.randrange(1, 2000),
                "upstream_service_time_ms": None if up is None else rng.randrange(0, 1500),
                "x_forwarded_for": xff,
                "user_agent": rng.choice(AGENTS),
                "request_id": f"req-{i:08d}",
                "authority": "api.example.com",
                "upstream_host": up,
            }
        )
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.floor("ms")
    return frame


def logs_frame(
    n: int, start: datetime, end: datetime, services: list[str], seed: int = 2
) -> pd.DataFrame:
    """``n`` container_logs rows."""
    rng = random.Random(seed)
    span_ms = int((end - start).total_seconds() * 1000)
    rows = []
    for i in range(n):
        ts = start + timedelta(milliseconds=rng.randrange(span_ms))
        stream = rng.choice(["stdout", "stdout", "stderr"])
        level = "ERROR" if stream == "stderr" else "INFO"
        rows.append(
            {
                "timestamp": ts,
                "service": services[i % len(services)],
                "host": f"host-{i % 3}",
                "container_id": f"a{i % 5:063d}",
                "container_name": "app",
                "stream": stream,
                "message": f"{level} line {i} user={rng.randrange(100)}",
            }
        )
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.floor("ms")
    return frame


def write_frame(
    uri: str, table: str, frame: pd.DataFrame, files_per_partition: int = 1
) -> list[str]:
    """Write ``frame`` into the warehouse at ``uri`` as the writer would; returns file paths."""
    schema_table = {"envoy_access": ENVOY_ACCESS, "container_logs": CONTAINER_LOGS}[table]
    schema = schema_table.arrow_schema()
    wh = open_warehouse(uri, create=True)
    written = []
    if frame.empty:
        return written
    dts = frame["timestamp"].map(lambda t: dt_of(t.to_pydatetime()))
    # The frame is converted to Arrow once and each file's rows taken from it: converting
    # each file's slice of the frame on its own cost ~10 ms a file (tests write hundreds).
    rows = pa.Table.from_pandas(
        frame.drop(columns=["service"]), schema=schema, preserve_index=False
    ).replace_schema_metadata(None)
    partitions = frame.groupby([frame["service"], dts], sort=True).indices
    for service, dt in sorted(partitions):
        folder = wh.path(table, f"service={service}", f"dt={dt}")
        wh.fs.create_dir(folder, recursive=True)
        at = partitions[(service, dt)]  # the partition's rows, in the frame's order
        for k in range(files_per_partition):
            chunk = at[k::files_per_partition]
            if not len(chunk):
                continue
            arrow = rows.take(chunk)
            path = f"{folder}/part-{k:04d}.parquet"
            pq.write_table(arrow, path, filesystem=wh.fs, compression="zstd")
            written.append(path)
    return written


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def in_one_hour(t: datetime, span: timedelta) -> datetime:
    """``t``, or the second before its hour when that hour began less than ``span`` before it:
    rows stamped up to ``span`` before the result fall into one partition-hour, whose files
    compaction merges and the freshness notes read together. Tests that wrote such rows back
    from now failed when run just after the hour."""
    began = t.replace(minute=0, second=0, microsecond=0)
    return began - timedelta(seconds=1) if t - began < span else t


#: How far before the newest of :func:`recent_in_one_hour`'s rows the others may go.
RECENT_SPAN = timedelta(minutes=5)


def recent_in_one_hour(now: datetime) -> tuple[datetime, datetime]:
    """``(lo, at)``: ``at`` 3 minutes before ``now`` or earlier (older than the stale note's
    120 s) and ``lo`` :data:`RECENT_SPAN` before it, both in one partition-hour
    (:func:`in_one_hour`). Rows 6-8 minutes before ``now`` and the newest 3 minutes before it
    fell into two hours between :03 and :08."""
    at = in_one_hour(now - timedelta(minutes=3), RECENT_SPAN)
    return at - RECENT_SPAN, at


def write_with_writer(
    uri: str, table: str, frame: pd.DataFrame, seq: int = 1, name: str | None = None
) -> list[str]:
    """Write ``frame`` with the aggregator's own writer (``aggregator.writer``: its partitions,
    sorting and object names, ``node-a-<seq>-<part>.parquet``), as one flushed segment would
    (``name``: another object name, e.g. a compaction output's); returns the paths written."""
    from aggregator.writer import object_name, write_partitions

    schema_table = {"envoy_access": ENVOY_ACCESS, "container_logs": CONTAINER_LOGS}[table]
    schema = pa.schema([pa.field("service", pa.string()), *schema_table.arrow_schema()])
    rows = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    wh = open_warehouse(uri, create=True)
    named = name or object_name("node-a", seq)
    return [w.path for w in write_partitions(wh, table, rows, named)]
