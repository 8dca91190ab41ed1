"""The canned queries against an independent answer, on rows chosen to break them.

``test_commands`` checks each command on well-behaved rows. Here the warehouse holds the rows
that trip SQL up: NULL durations, paths, flags, upstreams and x-forwarded-for; response codes
0, 1, 100, 199, 399, 499, 599; rows exactly on hour boundaries, on ``--since`` and ``--until``
and a millisecond inside them; huge durations; service names with ``-``, ``_`` and ``.``; one
request id in several services in different cases. It is in the state compaction leaves (a
compacted file and a later flush in one hour) and holds a 0-row file. The truth is read back
from the Parquet files with pyarrow and computed row by row in Python, never by logq's SQL, so
a row read twice or missed by the engine shows as well as a wrong aggregate.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from aggregator.compaction.passes import compact_warehouse
from athena.schema import ENVOY_ACCESS
from athena.warehouse import open_warehouse
from tests.athena.factory import access_frame, logs_frame, utc, write_with_writer
from tests.cli.routes import route
from tests.cli.test_commands import iso

SERVICES = ["api-gw", "pay_svc", "svc.v2"]
SINCE, UNTIL = utc(2026, 11, 20, 10, 15), utc(2026, 11, 20, 12, 45)
WINDOW = ["--since", "2026-11-20T10:15:00Z", "--until", "2026-11-20T12:45:00Z"]
MS = timedelta(milliseconds=1)
#: Times every edge row is written at: hour boundaries, the range's ends, a millisecond inside.
EDGE_TIMES = [
    utc(2026, 11, 20, 11),
    utc(2026, 11, 20, 12),
    SINCE,
    UNTIL,
    SINCE - MS,
    UNTIL - MS,
    utc(2026, 11, 20, 12) - MS,
]
CODES = [0, 1, 100, 199, 200, 399, 400, 499, 500, 599]
#: Paths with ids to fold, a query string, case, NULL, empty and empty segments.
PATHS = [
    "/API/Items/12345?x=1",
    "/api/items/12345",
    None,
    "/",
    "",
    "/a//b",
    "/v1/SKU-99880/x",
    "/files/abcdef0123456789abcdef",
]


def edge_rows(base: dict[str, Any]) -> pd.DataFrame:
    """One row per edge time, code and service, its other columns picked from hostile values."""
    rng = random.Random(3)
    rows = []
    for t in EDGE_TIMES:
        for code in CODES:
            for service in SERVICES:
                rows.append(
                    {
                        **base,
                        "timestamp": t,
                        "service": service,
                        "response_code": code,
                        "request_id": f"edge-{len(rows)}",
                        "duration_ms": rng.choice([None, 0, 1, 5, 5, 2**31 - 1]),
                        "upstream_service_time_ms": None,
                        "x_forwarded_for": rng.choice([None, "", " , 10.0.0.1", "1.2.3.4,5.6.7.8"]),
                        "path": rng.choice(PATHS),
                        "method": rng.choice(["GET", "get", "POST"]),
                        "response_flags": rng.choice(["-", "UF,URX", "URX,UF", "UH", ",UF", None]),
                        "upstream_host": rng.choice([None, "10.0.0.1:80"]),
                        "user_agent": rng.choice([None, "curl/8"]),
                    }
                )
    for k, service in enumerate(SERVICES):  # one request through every service, ids in any case
        rid = "ABC-trace" if k % 2 else "abc-TRACE"
        rows.append(
            {
                **base,
                "timestamp": utc(2026, 11, 20, 12, 30) + k * MS,
                "service": service,
                "request_id": rid,
            }
        )
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The warehouse: half the rows in two flushes compacted into one file per hour, the other
    half flushed after the compaction, and a 0-row file in one partition."""
    uri = str(tmp_path_factory.mktemp("edges") / "wh")
    start, end = utc(2026, 11, 20, 10), utc(2026, 11, 20, 13)
    access = access_frame(1200, start, end, SERVICES, seed=11)
    access = pd.concat([access, edge_rows(access.iloc[0].to_dict())], ignore_index=True)
    access = access.astype({"duration_ms": "Int64", "upstream_service_time_ms": "Int64"})
    logs = logs_frame(300, start, end, SERVICES, seed=5)
    # Shuffled: the frames give rows to services in turn, so every third row is one service's.
    access, logs = access.sample(frac=1.0, random_state=4), logs.sample(frac=1.0, random_state=4)
    for table, frame in (("envoy_access", access), ("container_logs", logs)):
        write_with_writer(uri, table, frame.iloc[0::3], seq=1)
        write_with_writer(uri, table, frame.iloc[1::3], seq=2)
    wh = open_warehouse(uri)
    later = max(datetime.now(UTC), end) + timedelta(hours=1)  # every hour closed, every file old
    assert compact_warehouse(wh, now=later, grace=timedelta(0), lookback=None, safe=False) > 0
    for table, frame in (("envoy_access", access), ("container_logs", logs)):
        write_with_writer(uri, table, frame.iloc[2::3], seq=3)
    empty = Path(uri, "envoy_access", "service=pay_svc", "dt=2026-11-20-11", "node-z.parquet")
    pq.write_table(ENVOY_ACCESS.arrow_schema().empty_table(), empty)
    return uri


def stored(uri: str, table: str) -> list[dict[str, Any]]:
    """The rows of ``table`` in range as Python values, read from every Parquet file once."""
    rows = ds.dataset(f"{uri}/{table}", partitioning="hive").to_table().to_pylist()
    return [r for r in rows if SINCE <= r["timestamp"] < UNTIL]


def r2(x: float) -> float:
    """``round(x, 2)`` as Athena and DuckDB round a double: half away from zero."""
    return math.floor(x * 100 + 0.5) / 100


def nearest_rank(values: list[int | None], q: float) -> int | None:
    """The smallest value with at least ``q`` of the non-NULL values at or below it."""
    timed = sorted(v for v in values if v is not None)
    return timed[max(1, math.ceil(q * len(timed) - 1e-9)) - 1] if timed else None


def nulls_last(value: Any) -> tuple[bool, Any]:
    """An ascending sort key that puts NULL last, as both engines' ORDER BY does."""
    return (value is None, "" if value is None else value)


def groups(rows: list[dict[str, Any]], *keys: Any) -> dict[tuple, list[dict[str, Any]]]:
    """``rows`` grouped by the values of ``keys`` (column names or functions of a row)."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(k(row) if callable(k) else row[k] for k in keys)
        out.setdefault(key, []).append(row)
    return out


def answer(logq, uri: str, *args: str) -> list[dict[str, Any]]:
    run = logq(*args, *WINDOW, "--limit", "100000", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    return run.json()


def is_5xx(row: dict[str, Any]) -> bool:
    return row["response_code"] >= 500


def test_errors_over_every_status_edge(logq, edges: str) -> None:
    rows = stored(edges, "envoy_access")
    on_route = {k: len(g) for k, g in groups(rows, "service", lambda r: route(r["path"])).items()}
    want = []
    keys = ("service", lambda r: route(r["path"]), "response_code", "response_flags")
    for (service, path, code, flags), g in groups(rows, *keys).items():
        if code <= 599:  # --status 0-5xx: codes 0 and 1 too
            total = on_route[(service, path)]
            want.append(
                {
                    "service": service,
                    "path": path,
                    "response_code": code,
                    "response_flags": flags,
                    "count": len(g),
                    "path_share_pct": r2(len(g) * 100 / total),
                    "path_requests": total,
                }
            )
    want.sort(
        key=lambda r: (
            -r["count"],
            r["service"],
            nulls_last(r["path"]),
            r["response_code"],
            nulls_last(r["response_flags"]),
        )
    )
    assert answer(logq, edges, "errors", "--status", "0-5xx") == want
    assert {r["response_code"] for r in want} >= {0, 1, 100, 199, 599}


@pytest.mark.parametrize(("by", "name"), [("path", "path"), ("upstream", "upstream_host")])
def test_latency_with_null_and_huge_durations(logq, edges: str, by: str, name: str) -> None:
    rows = stored(edges, "envoy_access")
    key = (lambda r: route(r["path"])) if by == "path" else (lambda r: r["upstream_host"] or "-")
    want = []
    for (service, k), g in groups(rows, "service", key).items():
        durations = [r["duration_ms"] for r in g]
        timed = [d for d in durations if d is not None]
        want.append(
            {
                "service": service,
                name: k,
                "requests": len(g),
                "p50_ms": nearest_rank(durations, 0.5),
                "p90_ms": nearest_rank(durations, 0.9),
                "p99_ms": nearest_rank(durations, 0.99),
                "max_ms": max(timed) if timed else None,
            }
        )
    want.sort(
        key=lambda r: (
            r["p99_ms"] is None,
            -(r["p99_ms"] or 0),
            -r["requests"],
            r["service"],
            nulls_last(r[name]),
        )
    )
    assert answer(logq, edges, "latency", "--by", by) == want
    assert any(r["p99_ms"] == 2**31 - 1 for r in want)


def test_flags_split_with_null_and_empty_parts(logq, edges: str) -> None:
    rows = stored(edges, "envoy_access")
    per_service = {k[0]: len(g) for k, g in groups(rows, "service").items()}
    counts: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        for flag in (row["response_flags"] or "-").split(","):
            if flag not in ("", "-"):
                seen = counts.setdefault((row["service"], flag), [0, 0])
                seen[0] += 1
                seen[1] += is_5xx(row)
    want = [
        {
            "service": s,
            "flag": f,
            "requests": n,
            "errors_5xx": e,
            "request_share_pct": r2(n * 100 / per_service[s]),
        }
        for (s, f), (n, e) in counts.items()
    ]
    want.sort(key=lambda r: (-r["requests"], r["service"], r["flag"]))
    got = answer(logq, edges, "flags")
    assert [{k: r[k] for k in want[0]} for r in got] == want


def test_upstreams_and_top_clients(logq, edges: str) -> None:
    rows = stored(edges, "envoy_access")
    want = []
    for (host,), g in groups(rows, lambda r: r["upstream_host"] or "-").items():
        errors = sum(map(is_5xx, g))
        want.append(
            {
                "upstream_host": host,
                "requests": len(g),
                "errors_5xx": errors,
                "error_pct": r2(errors * 100 / len(g)),
                "p99_ms": nearest_rank([r["duration_ms"] for r in g], 0.99),
            }
        )
    want.sort(key=lambda r: (-r["error_pct"], -r["requests"], r["upstream_host"]))
    assert answer(logq, edges, "upstreams") == want

    def client(row: dict[str, Any]) -> str:
        xff = row["x_forwarded_for"]
        return "-" if xff is None else xff.split(",")[0].strip()

    top = [
        {
            "service": s,
            "client": c,
            "requests": len(g),
            "request_share_pct": r2(len(g) * 100 / len(rows)),
            "errors_5xx": sum(map(is_5xx, g)),
        }
        for (s, c), g in groups(rows, "service", client).items()
    ]
    top.sort(key=lambda r: (-r["requests"], r["service"], r["client"]))
    assert answer(logq, edges, "top", "--by", "client") == top


def test_timeline_counts_each_row_once_at_the_edges(logq, edges: str) -> None:
    rows = stored(edges, "envoy_access")
    by_hour = groups(rows, lambda r: r["timestamp"].replace(minute=0, second=0, microsecond=0))
    want = [
        {
            "bucket": iso(pd.Timestamp(max(hour, SINCE))),
            "requests": len(g),
            "errors_4xx": sum(400 <= r["response_code"] <= 499 for r in g),
            "errors_5xx": sum(map(is_5xx, g)),
            "no_response": sum(r["response_code"] < 100 for r in g),
        }
        for (hour,), g in sorted(by_hour.items())
    ]
    assert answer(logq, edges, "timeline", "--every", "1h") == want


def test_trace_and_tail_read_each_line_once(logq, edges: str) -> None:
    hops = [r for r in stored(edges, "envoy_access") if r["request_id"].lower() == "abc-trace"]
    got = answer(logq, edges, "trace", "Abc-Trace")
    assert [(r["timestamp"], r["service"]) for r in got] == sorted(
        (iso(pd.Timestamp(r["timestamp"])), r["service"]) for r in hops
    )
    assert len(got) == len(SERVICES)
    lines = stored(edges, "container_logs")
    got = answer(logq, edges, "tail", "--stream", "stderr")
    want = sorted(
        (iso(pd.Timestamp(r["timestamp"])), r["service"], r["message"])
        for r in lines
        if r["stream"] == "stderr"
    )
    assert sorted((r["timestamp"], r["service"], r["message"]) for r in got) == want
    assert [r["timestamp"] for r in got] == sorted(r["timestamp"] for r in got)
