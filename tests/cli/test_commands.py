"""latency, flags, upstreams, top, timeline, trace, tail: exact answers computed with pandas."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.athena.factory import access_frame, logs_frame, utc, write_frame
from tests.cli.conftest import END, START, Warehouse
from tests.cli.routes import route

SINCE = "2026-11-27T22:45:00Z"
UNTIL = "2026-11-28T00:20:00Z"
WIDE = ["--since", SINCE, "--until", UNTIL, "--limit", "10000", "-f", "json"]


def scoped(df: pd.DataFrame, services: list[str] | None = None) -> pd.DataFrame:
    out = df[(df["timestamp"] >= pd.Timestamp(SINCE)) & (df["timestamp"] < pd.Timestamp(UNTIL))]
    return out[out["service"].isin(services)] if services else out


def pct(values: pd.Series, q: float) -> int:
    return int(np.quantile(values.to_numpy(), q, method="inverted_cdf"))


def iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


@pytest.mark.parametrize(
    ("by", "column", "name"),
    [("path", "path", "path"), ("upstream", "upstream_host", "upstream_host"),
     ("method", "method", "method")],
)  # fmt: skip
def test_latency(logq, warehouse: Warehouse, by: str, column: str, name: str) -> None:
    run = logq("latency", "-s", "recipe", "--by", by, "--warehouse", warehouse.uri, *WIDE)
    assert run.exit_code == 0, run.stderr
    df = scoped(warehouse.access, ["recipe"]).copy()
    df[column] = df[column].fillna("-").map(route) if by == "path" else df[column].fillna("-")
    want = [
        {
            "service": "recipe",  # json keeps the column with one --service
            name: key,
            "requests": len(g),
            "p50_ms": pct(g["duration_ms"], 0.5),
            "p90_ms": pct(g["duration_ms"], 0.9),
            "p99_ms": pct(g["duration_ms"], 0.99),
            "max_ms": int(g["duration_ms"].max()),
        }
        for key, g in df.groupby(column)
    ]
    want.sort(key=lambda r: (-r["p99_ms"], -r["requests"], r[name]))
    assert run.json() == want


def test_flags_counted_individually_and_explained(logq, warehouse: Warehouse) -> None:
    run = logq("flags", "--warehouse", warehouse.uri, *WIDE)
    assert run.exit_code == 0, run.stderr
    df = scoped(warehouse.access)
    total = df.groupby("service").size()  # the share is of the service's own requests
    exploded = (
        df[df["response_flags"] != "-"]
        .assign(flag=lambda d: d["response_flags"].str.split(","))
        .explode("flag")
    )
    want = [
        {
            "service": service,
            "flag": flag,
            "requests": len(g),
            "request_share_pct": round(len(g) * 100 / total[service], 2),
            "errors_5xx": int((g["response_code"] >= 500).sum()),
        }
        for (service, flag), g in exploded.groupby(["service", "flag"])
    ]
    want.sort(key=lambda r: (-r["requests"], r["service"], r["flag"]))
    got = run.json()
    assert [{k: r[k] for k in want[0]} for r in got] == want
    meanings = {r["flag"]: r["meaning"] for r in got}
    assert meanings["UH"] == "no healthy upstream host in the cluster"
    assert meanings["URX"] == "upstream retry limit exceeded"


def test_upstreams(logq, warehouse: Warehouse) -> None:
    run = logq("upstreams", "-s", "users", "--warehouse", warehouse.uri, *WIDE)
    df = scoped(warehouse.access, ["users"]).copy()
    df["upstream_host"] = df["upstream_host"].fillna("-")
    want = []
    for host, g in df.groupby("upstream_host"):
        errors = int((g["response_code"] >= 500).sum())
        want.append(
            {
                "upstream_host": host,
                "requests": len(g),
                "errors_5xx": errors,
                "error_pct": round(errors * 100 / len(g), 2),
                "p99_ms": pct(g["duration_ms"], 0.99),
            }
        )
    want.sort(key=lambda r: (-r["error_pct"], -r["requests"], r["upstream_host"]))
    assert run.json() == want


@pytest.mark.parametrize("by", ["path", "user_agent", "client"])
def test_top(logq, warehouse: Warehouse, by: str) -> None:
    run = logq("top", "--by", by, "--warehouse", warehouse.uri, *WIDE)
    df = scoped(warehouse.access).copy()
    if by == "client":
        df["k"] = df["x_forwarded_for"].map(
            lambda v: "-" if not isinstance(v, str) else v.split(",")[0].strip()
        )
    elif by == "path":
        df["k"] = df["path"].map(route)
    else:
        df["k"] = df[by].fillna("-")
    want = [
        {
            "service": service,
            by: key,
            "requests": len(g),
            "request_share_pct": round(len(g) * 100 / len(df), 2),
            "errors_5xx": int((g["response_code"] >= 500).sum()),
        }
        for (service, key), g in df.groupby(["service", "k"])
    ]
    want.sort(key=lambda r: (-r["requests"], r["service"], r[by]))
    assert run.json() == want


def test_timeline_rows_fill_empty_intervals(logq, warehouse: Warehouse) -> None:
    """--since 22:45 with --every 10m: intervals stay on 10-minute boundaries, but only rows
    from 22:45 count, and the first row is labelled 22:45 (an 22:40 row that counted from
    22:40 answered for five minutes nobody asked about); stderr says it is partial."""
    run = logq("timeline", "-s", "billing", "--every", "10m", "--warehouse", warehouse.uri, *WIDE)
    assert run.exit_code == 0, run.stderr
    df = scoped(warehouse.access, ["billing"])
    assert (df["timestamp"] >= pd.Timestamp(SINCE)).all()
    early = warehouse.access[warehouse.access["service"] == "billing"]["timestamp"]
    assert early.between(pd.Timestamp("2026-11-27T22:40Z"), pd.Timestamp(SINCE)).any()
    buckets = pd.date_range("2026-11-27T22:40Z", "2026-11-28T00:10Z", freq="10min")
    floor = df["timestamp"].dt.floor("10min")
    want = [
        {
            "bucket": iso(max(b, pd.Timestamp(SINCE))),
            "requests": int((floor == b).sum()),
            "errors_4xx": int(((floor == b) & df["response_code"].between(400, 499)).sum()),
            "errors_5xx": int(((floor == b) & (df["response_code"] >= 500)).sum()),
            "no_response": int(((floor == b) & (df["response_code"] < 100)).sum()),
        }
        for b in buckets
    ]
    assert run.json() == want
    assert want[0]["requests"] > 0 and want[0]["bucket"] == "2026-11-27T22:45:00.000Z"
    assert (  # the range spans two days: the note dates its times
        "the first interval is partial: the range starts at 2026-11-27T22:45:00Z, inside the "
        "interval from 2026-11-27T22:40:00Z" in run.stderr
    )
    assert "last interval" not in run.stderr  # 00:20 ends an interval
    chart = logq("timeline", "-s", "billing", "--every", "10m", "--warehouse", warehouse.uri,
                 *WIDE[:-2])  # fmt: skip
    assert f"{sum(r['requests'] for r in want):,} total" in chart.stdout
    first = next(ln for ln in chart.stdout.splitlines() if ln.strip().startswith("11-27"))
    assert first.split()[:3] == ["11-27", "22:45", str(want[0]["requests"])]  # the day changes
    assert "the first interval is partial" in chart.stdout


def test_timeline_default_every_fits_a_long_range(logq, warehouse: Warehouse) -> None:
    """Without --every, 30 days (43,200 one-minute intervals, over the 5,000 a timeline
    draws) get 15-minute intervals, said on stderr and in the chart's header; an explicit
    --every 1m over the same range is still refused."""
    month = ["--since", "2026-10-29T00:20:00Z", "--until", UNTIL, "--warehouse", warehouse.uri]
    run = logq("timeline", *month, "-f", "json", "--limit", "10000")
    assert run.exit_code == 0, run.stderr
    assert "--every 15m (the default 1m would make over 5,000 intervals)" in run.stderr
    rows = run.json()
    assert len(rows) == 30 * 24 * 4 + 1  # both ends fall inside an interval (00:15-00:30)
    assert rows[-1]["bucket"] == "2026-11-28T00:15:00.000Z"
    ts = warehouse.access["timestamp"]
    in_range = (ts >= pd.Timestamp("2026-10-29T00:20:00Z")) & (ts < pd.Timestamp(UNTIL))
    assert sum(r["requests"] for r in rows) == int(in_range.sum()) > 0
    chart = logq("timeline", *month)
    assert chart.exit_code == 0 and "requests per 15m" in chart.stdout
    fine = logq("timeline", *month, "--every", "1m")
    assert fine.exit_code == 2 and "43,200 intervals (max 5,000)" in fine.stderr
    short = logq("timeline", "--since", SINCE, "--until", UNTIL, "--warehouse", warehouse.uri)
    assert "requests per 1m" in short.stdout and "--every" not in short.stderr


def test_timeline_default_every_over_years_is_a_step_every_accepts(logq, warehouse) -> None:
    """Over 5,000 days the default step is 7d (--every takes no weeks: "1w" was refused as
    an --every the user never gave); a range too long even for that is refused as a range.
    Both ranges are fixed: a relative --since before a fixed --until shrinks as the clock moves
    (``5000w`` back from 2026-12-03 on fell within 5,000 7-day intervals of UNTIL)."""
    years = ["--until", UNTIL, "--warehouse", warehouse.uri, "-f", "json"]
    run = logq("timeline", "--since", "2000-01-01T00:00:00Z", *years)  # 9,828 days
    assert run.exit_code == 0, run.stderr
    assert "logq: --every 7d (the default 1m" in run.stderr
    before = int((warehouse.access["timestamp"] < pd.Timestamp(UNTIL)).sum())
    assert sum(r["requests"] for r in run.json()) == before > 0
    ages = logq("timeline", "--since", "1900-01-01T00:00:00Z", *years)  # 6,622 intervals of 7d
    assert ages.exit_code == 2 and "not an interval" not in ages.stderr
    assert "intervals (max 5,000) even 7d wide; use a shorter range" in ages.stderr
    assert "--every 7d (the default" not in ages.stderr


def test_timeline_since_is_not_moved_on_athena(logq, warehouse: Warehouse) -> None:
    """The Athena SQL (--dry-run prints it with its values) keeps --since as given: the
    interval boundary it falls in used to replace it there too."""
    run = logq(
        "timeline", "--every", "1h", "--since", "2026-11-28T00:30:00Z", "--until",
        "2026-11-28T01:00:00Z", "--engine", "athena", "--athena-output", "s3://results/",
        "--warehouse", "s3://bucket/wh", "--dry-run",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert "2026-11-28 00:30:00.000" in run.stdout and "2026-11-28 00:00:00.000" not in run.stdout


def test_timeline_limit_keeps_the_newest_intervals(logq, warehouse: Warehouse) -> None:
    args = ("timeline", "-s", "billing", "--every", "10m", "--warehouse", warehouse.uri, *WIDE)
    every = logq(*args).json()
    newest = logq(*args, "--limit", "2")
    assert len(every) > 2
    assert newest.json() == every[-2:]
    assert f"showing the newest 2 of {len(every)} intervals (raise --limit)" in newest.stderr
    assert "intervals" not in logq(*args, "--limit", str(len(every))).stderr


def test_timeline_zero_buckets_and_chart(logq, tmp_path) -> None:
    uri = str(tmp_path / "wh")
    frame = pd.concat(
        [
            access_frame(40, utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 1), ["s"], seed=1),
            access_frame(10, utc(2026, 1, 1, 10, 3), utc(2026, 1, 1, 10, 4), ["s"], seed=2),
        ]
    )
    write_frame(uri, "envoy_access", frame)
    args = [
        "--since",
        "2026-01-01T10:00:00Z",
        "--until",
        "2026-01-01T10:05:00Z",
        "--warehouse",
        uri,
    ]
    rows = logq("timeline", "-f", "json", *args).json()
    assert [r["requests"] for r in rows] == [40, 0, 0, 10, 0]
    chart = logq("timeline", *args)
    assert "requests per 1m: 50 total" in chart.stdout
    assert "partial" not in chart.stdout  # 10:05 ends an interval
    cut = logq("timeline", *args[:2], "--until", "2026-01-01T10:04:30Z", *args[4:])
    assert "the last interval is partial: the range ends at 10:04:30 UTC" in cut.stdout
    # Below a second the note keeps the milliseconds that make the interval partial (R2s18 #4).
    ms = logq("timeline", "-f", "json", "--since", "2026-01-01T10:00:00.500Z", "--until",
              "2026-01-01T10:04:59.999Z", *args[4:])  # fmt: skip
    assert "starts at 10:00:00.500 UTC, inside the interval from 10:00:00 UTC" in ms.stderr
    assert "the last interval is partial: the range ends at 10:04:59.999 UTC" in ms.stderr
    day = logq("timeline", "-f", "json", "--every", "1d", "--since", "2026-01-01T10:00Z",
               "--until", "2026-01-01T10:05Z", *args[4:])  # fmt: skip
    assert (
        "the range starts at 2026-01-01T10:00:00Z, inside the interval from 2026-01-01T00:00:00Z"
        in day.stderr
    ), day.stderr
    assert chart.stdout.count("█") > 10 and "10:02" in chart.stdout
    csv_rows = list(csv.DictReader(io.StringIO(logq("timeline", "-f", "csv", *args).stdout)))
    assert [int(r["requests"]) for r in csv_rows] == [40, 0, 0, 10, 0]
    bad = logq("timeline", "--every", "1s", "--since", "1w", "--warehouse", uri)
    assert bad.exit_code == 2 and "larger --every" in bad.stderr


def test_timeline_draws_code_0_apart_from_ok(logq, tmp_path) -> None:
    """Response code 0 (the client went away first) is neither ok nor a 4xx/5xx: the chart
    gives it its own cells and says how many; json and csv carry it as no_response."""
    uri = str(tmp_path / "wh")
    frame = access_frame(40, utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 1), ["s"], seed=1)
    frame["response_code"] = [0] * 30 + [200] * 10
    write_frame(uri, "envoy_access", frame)
    args = ["--since", "2026-01-01T10:00:00Z", "--until", "2026-01-01T10:01:00Z"]
    chart = logq("timeline", *args, "--warehouse", uri)
    assert chart.exit_code == 0, chart.stderr
    assert "40 total, 0 5xx, 30 code 0 (client went away)" in chart.stdout
    bar = next(ln for ln in chart.stdout.splitlines() if ln.strip().startswith("10:00"))
    cells = bar.split()[-1]
    assert cells.count("0") >= 3 * cells.count("█") > 0, bar  # 30 gone, 10 ok: not 40 ok
    rows = logq("timeline", *args, "--warehouse", uri, "-f", "json").json()
    assert rows == [
        {"bucket": "2026-01-01T10:00:00.000Z", "requests": 40, "errors_4xx": 0, "errors_5xx": 0,
         "no_response": 30}
    ]  # fmt: skip
    csv_rows = logq("timeline", *args, "--warehouse", uri, "-f", "csv").stdout.splitlines()
    assert csv_rows == [
        "bucket,requests,errors_4xx,errors_5xx,no_response",
        "2026-01-01T10:00:00.000Z,40,0,0,30",
    ]


def test_trace_across_services_in_time_order(logq, tmp_path) -> None:
    uri = str(tmp_path / "wh")
    frame = access_frame(60, utc(2026, 1, 1, 9, 59), utc(2026, 1, 1, 10, 1), ["front", "recipe"], 3)
    hops = frame.iloc[[3, 10, 17]].copy()
    frame.loc[hops.index, "request_id"] = "abc-123"
    write_frame(uri, "envoy_access", frame)
    day = ["--since", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z"]
    run = logq("trace", "abc-123", *day, "-f", "json", "--warehouse", uri)
    hops = frame[frame["request_id"] == "abc-123"].sort_values(["timestamp", "service"])
    got = run.json()
    assert [(r["timestamp"], r["service"], r["path"]) for r in got] == [
        (iso(t), s, p)
        for t, s, p in zip(hops["timestamp"], hops["service"], hops["path"], strict=True)
    ]
    # Over the day that holds the rows (--since 1w held none of them after 2026-01-08, so an
    # injected OR would have returned nothing either).
    hostile = logq("trace", "abc-123' OR '1'='1", *day, "-f", "json", "--warehouse", uri)
    assert hostile.exit_code == 0 and hostile.json() == []


def test_tail_stream_grep_limit_oldest_first(logq, warehouse: Warehouse) -> None:
    run = logq(
        "tail", "-s", "recipe", "--stream", "stderr", "--grep", "user=(?:1|2)[0-9]$",
        "--warehouse", warehouse.uri, *WIDE[:-4], "--limit", "7", "-f", "json",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    df = scoped(warehouse.logs, ["recipe"])
    df = df[(df["stream"] == "stderr") & df["message"].str.contains(r"user=(?:1|2)[0-9]$")]
    want = df.sort_values("timestamp").tail(7)
    got = run.json()
    assert [r["message"] for r in got] == list(want["message"])
    assert [r["timestamp"] for r in got] == sorted(r["timestamp"] for r in got)
    text = logq("tail", "-s", "recipe", "--stream", "stderr", "--warehouse", warehouse.uri,
                "--since", SINCE, "--until", UNTIL, "--limit", "2")  # fmt: skip
    lines = text.stdout.splitlines()
    assert len(lines) == 2 and all(" recipe app!| ERROR" in ln for ln in lines)


def test_tail_says_when_limit_cut_older_lines(logq, warehouse: Warehouse) -> None:
    """tail printed the newest --limit lines and said nothing: output starting hours after
    --since read as a quiet service. One line more than --limit is fetched to know."""
    df = scoped(warehouse.logs, ["recipe"])
    args = ("tail", "-s", "recipe", "--since", SINCE, "--until", UNTIL, "--warehouse",
            warehouse.uri)  # fmt: skip
    cut = logq(*args, "--limit", "5", "-f", "json")
    assert cut.exit_code == 0, cut.stderr
    newest = df.sort_values("timestamp").tail(5)
    assert [r["message"] for r in cut.json()] == list(newest["message"])
    assert (
        f"logq: showing the newest 5 lines, from {iso(newest['timestamp'].iloc[0])}; older lines "
        "from 2026-11-27T22:45:00.000Z on match too (raise --limit, or narrow --since)"
    ) in cut.stderr
    text = logq(*args, "--limit", "5")
    assert len(text.stdout.splitlines()) == 5 and "showing the newest 5 lines" in text.stderr
    whole = logq(*args, "--limit", str(len(df)), "-f", "csv")
    assert len(whole.stdout.splitlines()) == len(df) + 1 and "showing" not in whole.stderr
    # The extra line is the real run's: --dry-run shows the SQL asked for, to copy (R2s18 #5).
    dry = logq(*args, "--limit", "5", "--dry-run")
    assert dry.exit_code == 0 and '"row_limit": 5' in dry.stdout, dry.stdout[-400:]


def test_tail_bad_regex_is_clear(logq, warehouse: Warehouse) -> None:
    run = logq("tail", "--grep", "(unclosed", "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and "not a regular expression" in run.stderr


def test_tail_grep_is_checked_as_re2_not_python_re(logq, warehouse: Warehouse) -> None:
    """The local engine runs RE2: what RE2 takes passes (``\\p{L}``), Python-only syntax
    (look-arounds, back-references, ``\\Z``, possessive ``*+``) gets one clear line, exit 2."""
    wide = ["--warehouse", warehouse.uri, "--since", SINCE, "--until", UNTIL, "-f", "json"]
    run = logq("tail", "-s", "recipe", "--grep", r"^\p{Lu}+ line \d+", "--limit", "3", *wide)
    assert run.exit_code == 0, run.stderr
    assert len(run.json()) == 3
    run = logq("tail", "--grep", "[[:alpha:]]", "--limit", "1", *wide)
    assert run.exit_code == 0, run.stderr
    for bad in ("(?=a)", r"(a)\1", r"(?P<n>a)(?P=n)", r"\Z", "a*+", "(x{1000}){1000}"):
        run = logq("tail", "--grep", bad, *wide)
        assert run.exit_code == 2, (bad, run.stdout)
        assert "not a regular expression the local engine (RE2) accepts" in run.stderr, bad
        assert repr(bad) in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["latency", "--path", "' OR 1=1 --"],
        ["flags", "--path", "x'); DROP TABLE envoy_access; --"],
        ["upstreams", "--path", "\\' OR '1'='1"],
        ["top", "--path", "%' OR path LIKE '%"],
        ["timeline", "--path", "' UNION SELECT 1,2,3,4 --"],
        ["tail", "--grep", "' OR '1'='1"],
        ["errors", "--path", "$path_prefix"],
    ],
)
def test_hostile_values_match_nothing(logq, warehouse: Warehouse, args: list[str]) -> None:
    run = logq(*args, "--warehouse", warehouse.uri, *WIDE)
    assert run.exit_code == 0, run.stderr
    assert run.json() == []


@pytest.mark.parametrize("cmd", ["latency", "flags", "upstreams", "top", "timeline", "tail"])
def test_hostile_service_refused_everywhere(logq, warehouse: Warehouse, cmd: str) -> None:
    run = logq(cmd, "-s", "x' OR '1'='1", "--warehouse", warehouse.uri, "-f", "json")
    assert run.exit_code == 2 and "not a service name" in run.stderr and run.stdout == ""


@pytest.mark.parametrize(
    "cmd", ["latency", "flags", "upstreams", "top", "timeline", "tail", "trace"]
)
def test_empty_warehouse_every_command(logq, empty_warehouse: str, cmd: str) -> None:
    args = [cmd, "rid"] if cmd == "trace" else [cmd]
    run = logq(*args, "-f", "json", "--warehouse", empty_warehouse)
    assert run.exit_code == 3, run.stderr  # no data at all: not an empty answer (exit 0)
    assert run.json() == [] and "no results" in run.stderr
    assert "has no" in run.stderr and "data at all" in run.stderr


def test_markdown_every_command_parses(logq, warehouse: Warehouse) -> None:
    for cmd in ("latency", "flags", "upstreams", "top"):
        run = logq(
            cmd, "--warehouse", warehouse.uri, "--since", SINCE, "--until", UNTIL, "-f", "markdown"
        )
        lines = run.stdout.splitlines()
        assert lines[0].startswith("| ") and set(lines[1]) <= set("|-: ")
        width = lines[0].count(" | ")
        assert all(ln.count(" | ") == width for ln in lines[2:]), cmd


def test_tail_text_shows_a_missing_container_name_as_a_dash(logq, tmp_path: Path) -> None:
    """Rows from fluent-logger or Fluent Bit may have no container name: ``-``, not ``None``."""
    frame = logs_frame(3, START, END, ["recipe"], seed=3)
    frame["container_name"] = None
    write_frame(str(tmp_path / "wh"), "container_logs", frame)
    wide = ["--since", "2026-11-27T22:00:00Z", "--until", "2026-11-28T02:00:00Z"]
    run = logq("tail", "--warehouse", tmp_path / "wh", *wide)
    assert run.exit_code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 3 and all(" recipe -" in ln and "None" not in ln for ln in lines)
