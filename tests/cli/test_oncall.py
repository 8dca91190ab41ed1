"""What an on-call engineer reads at 3 a.m.: stale data, route grouping, cut lists, exit codes.

Each test builds the small warehouse its story needs (a stalled pipeline is "now"-relative, so
its rows are written minutes before the test runs) and checks the words and exit status a
person or a script acts on, against answers computed here with pandas.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.athena.factory import access_frame, logs_frame, utc, write_frame, write_with_writer
from tests.cli.conftest import Warehouse
from tests.cli.routes import route

UUIDS = [f"{i:08x}-1c2d-4e5f-8a9b-{i * 7919:012x}" for i in range(1, 41)]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def stalled(
    tmp_path: Path | str, minutes_ago: int = 9, in_window: int = 13
) -> tuple[str, datetime]:
    """A checkout warehouse whose data ends ``minutes_ago`` minutes before now: healthy 200s,
    ``in_window`` of them in the last 30 s before the end. Returns (uri, newest timestamp).
    An ``s3://`` location is used as the warehouse itself."""
    end = _now() - timedelta(minutes=minutes_ago)
    older = access_frame(40, end - timedelta(minutes=50), end - timedelta(minutes=2), ["checkout"])
    recent = access_frame(in_window, end - timedelta(seconds=30), end, ["checkout"], seed=5)
    frame = pd.concat([older, recent], ignore_index=True)
    frame["response_code"] = 200
    frame["response_flags"] = "-"
    uri = tmp_path if isinstance(tmp_path, str) else str(tmp_path / "wh")
    write_frame(uri, "envoy_access", frame)
    return uri, frame["timestamp"].max().to_pydatetime()


def test_one_of_a_kind_is_said_in_the_singular(logq, tmp_path: Path) -> None:
    """A count of one was said in the plural: "(1 partitions, 1 files read)", "1 requests",
    "showing the first 1 rows", and the dry run's "1 partitions, 1 files"."""
    start = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    frame = access_frame(1, start, start + timedelta(minutes=30), ["checkout"])
    frame["response_code"] = 200
    uri = str(tmp_path / "wh")
    write_frame(uri, "envoy_access", frame)
    hour = ["--since", start.isoformat(), "--until", (start + timedelta(hours=1)).isoformat()]
    run = logq("errors", "-s", "checkout", *hour, "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert re.search(r"No results: 1 request between \S+ and \S+ for checkout, none matched "
                     r"\(1 partition, 1 file read\)", run.stdout), run.stdout  # fmt: skip
    dry = logq("errors", "-s", "checkout", *hour, "--dry-run", "--warehouse", uri)
    assert dry.exit_code == 0, dry.stderr
    assert "-- envoy_access: 1 partition, 1 file, " in dry.stdout, dry.stdout
    assert re.search(r"--   \S+dt=2026-01-01-10 \(1 file, [\d,]+ bytes\)", dry.stdout)
    cut = logq("sql", "SELECT 1 AS n UNION ALL SELECT 2", "--limit", "1", "--warehouse", uri)
    assert cut.exit_code == 0, cut.stderr
    assert cut.stderr == "logq: showing the first row; the result has more (raise --limit)\n"
    logs = logs_frame(2, start, start + timedelta(minutes=30), ["checkout"])
    write_frame(uri, "container_logs", logs)
    tail = logq("tail", "-s", "checkout", *hour, "--limit", "1", "--warehouse", uri)
    assert tail.exit_code == 0, tail.stderr
    assert "logq: showing the newest line, from " in tail.stderr, tail.stderr  # was "1 lines"


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def test_stalled_pipeline_is_not_read_as_no_errors(logq, tmp_path: Path) -> None:
    """Data ends 9 minutes ago: the empty answer says how many requests the window had, and a
    note on stderr says the newest data is old (not flushed yet, or the pipeline stalled)."""
    uri, newest = stalled(tmp_path)
    run = logq("errors", "-s", "checkout", "--since", "10m", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    count = re.search(r"No results: ([\d,]+) requests between \S+ and \S+ for checkout, none "
                      r"matched \(\d+ partitions?, \d+ files? read\)", run.stdout)  # fmt: skip
    assert count, run.stdout
    assert int(count.group(1)) >= 13  # the window holds the last 13 and maybe a few older ones
    note = re.search(r"newest data for checkout: (\S+) \((\d+)m(?: \d+s)? ago\): rows after it "
                     r"may not be flushed yet or the pipeline is stalled", run.stderr)  # fmt: skip
    assert note, run.stderr
    assert note.group(1) == _iso(newest) and note.group(2) in ("9", "10")
    # json: the same words on stderr, [] on stdout
    js = logq("errors", "-s", "checkout", "--since", "10m", "-f", "json", "--warehouse", uri)
    assert js.exit_code == 0 and js.json() == []
    assert "none matched" in js.stderr and "newest data for checkout" in js.stderr


def test_window_with_no_requests_names_the_newest_data(logq, tmp_path: Path) -> None:
    uri, newest = stalled(tmp_path)
    run = logq("errors", "-s", "checkout", "--since", "5m", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert run.stdout.startswith("No results: no ")
    assert f"newest data for checkout: {_iso(newest)}" in run.stdout
    assert "none matched" not in run.stdout


def test_a_path_without_its_slash_is_said_to_need_one(logq, tmp_path: Path) -> None:
    """`--path api/v1` matches no request (Envoy logs paths from their `/`): the empty answer
    said only "no requests ... matching --path api/v1", read as "no errors on that route"; it
    now says what to type. A `/` path that matches nothing gets no such hint."""
    uri, _ = stalled(tmp_path, minutes_ago=1)
    args = ("-s", "checkout", "--since", "1h", "--warehouse", uri)
    run = logq("latency", "--path", "api/v1", *args)
    assert run.exit_code == 0, run.stderr
    assert (
        run.stdout.startswith("No results: no requests ") and "matching --path api/v1" in run.stdout
    )
    assert run.stdout.rstrip().endswith(
        "; a path as Envoy logs it starts with '/': try --path /api/v1"
    ), run.stdout
    js = logq("errors", "--path", "api/v1", "-f", "json", *args)
    assert js.json() == [] and "try --path /api/v1" in js.stderr, js.stderr
    right = logq("latency", "--path", "/api/v9", *args)
    assert right.stdout.startswith("No results: no requests ") and "try" not in right.stdout


def test_rows_stamped_ahead_of_the_clock_do_not_read_as_fresh(logq, tmp_path: Path) -> None:
    """A host whose clock is 2 h ahead: its rows are not "0s ago" data. The newest data an
    empty answer names and the stale note's are the same time (the newest row not in the
    future), and the rows ahead are named as such. (Before: "0s ago" in `services`; stdout
    named the future row, stderr the 9-minute-old one.)"""
    uri, newest = stalled(tmp_path)
    ahead = access_frame(3, _now() + timedelta(hours=2), _now() + timedelta(hours=2, seconds=5),
                         ["checkout"], seed=9)  # fmt: skip
    write_frame(str(tmp_path / "ahead"), "envoy_access", ahead)
    for src in (tmp_path / "ahead").rglob("*.parquet"):
        dest = Path(uri) / src.relative_to(tmp_path / "ahead")
        dest.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dest.with_name("skewed-" + dest.name))
    future = _iso(ahead["timestamp"].max().to_pydatetime())
    run = logq("errors", "-s", "checkout", "--since", "30s", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    said = re.search(r"newest data for checkout: (\S+) \(rows stamped up to (\S+): in [12]h[^,]*, "
                     r"ahead of this clock: a source clock is wrong\?\)", run.stdout)  # fmt: skip
    assert said and said.groups() == (_iso(newest), future), run.stdout
    # stderr: the rows ahead are out of this answer (how many, and the --until that takes
    # them in); no stale note, whose age a clock ahead makes meaningless.
    noted = re.search(r"3 rows for checkout \(counted before --status\) are stamped after now, "
                      r"up to (\S+) \(a clock ahead of this one by up to [12]h",
                      run.stderr)  # fmt: skip
    assert noted and noted.group(1) == future, run.stderr
    assert "newest data for checkout" not in run.stderr
    services = logq("services", "-s", "checkout", "-f", "json", "--warehouse", uri)
    [row] = json.loads(services.stdout)
    assert row["newest"] == _iso(newest), row  # the newest row not in the future (R2)
    ahead_note = rf"checkout also has rows \(rows stamped up to {re.escape(future)}: in [12]h"
    assert re.search(ahead_note, services.stderr), services.stderr
    table = logq("services", "-s", "checkout", "--warehouse", uri)
    assert "(9m" in table.stdout and "ahead" not in table.stdout, table.stdout


def test_rows_from_a_clock_ahead_are_said_to_be_out_of_the_answer(logq, tmp_path: Path) -> None:
    """One source logs fine with a clock a few minutes fast (A1s18 #2): four 503s stamped 10
    and 5 minutes ago and 2 and 4 minutes ahead, and one in a later hour folder (2 h ahead).
    The answer ends now, so the three ahead are not in it: the note says so, counts them (the
    later hour too), and gives an ``--until`` that, run as printed, counts all five. No "the
    pipeline is stalled" note: the service is writing. Written by the aggregator's writer."""
    now = _now()
    offsets = [-600, -300, 120, 240, 7200]
    frame = pd.concat(
        [access_frame(1, now + timedelta(seconds=s), now + timedelta(seconds=s, milliseconds=1),
                      ["skew"], seed=i) for i, s in enumerate(offsets)],
        ignore_index=True,
    )  # fmt: skip
    frame["response_code"] = 503
    uri = str(tmp_path / "wh")
    write_with_writer(uri, "envoy_access", frame)
    run = logq("errors", "-s", "skew", "--since", "15m", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert sum(r["count"] for r in run.json()) == 2  # the answer itself: [now-15m, now)
    future = _iso(frame["timestamp"].max().to_pydatetime())
    said = re.search(r"logq: note: 3 rows for skew \(counted before --status\) are stamped "
                     r"after now, up to (\S+) \(a clock ahead of this one by up to "
                     r"(1h 5\dm|2h)\); this answer ends now and leaves them out, whether they "
                     r"match or not: to read them, add --until (\S+)\n",
                     run.stderr)  # fmt: skip
    assert said and said.group(1) == future, run.stderr
    assert "stalled" not in run.stderr and "newest data" not in run.stderr
    again = logq("errors", "-s", "skew", "--since", "15m", "--until", said.group(3), "-f", "json",
                 "--warehouse", uri)  # fmt: skip
    assert again.exit_code == 0 and sum(r["count"] for r in again.json()) == 5, again.stderr
    # Without --since the default span ends at --until: the hint keeps the answer's start.
    bare = logq("errors", "-s", "skew", "-f", "json", "--warehouse", uri)
    hint = re.search(r"add --since (\S+) --until (\S+)\n", bare.stderr)
    assert hint, bare.stderr
    rerun = logq("errors", "-s", "skew", "--since", hint.group(1), "--until", hint.group(2),
                 "-f", "json", "--warehouse", uri)  # fmt: skip
    assert sum(r["count"] for r in rerun.json()) == 5, rerun.stderr
    # Without a row filter the count is the rows the --until would add (R2s18 #3).
    plain = logq("latency", "-s", "skew", "--since", "15m", "--warehouse", uri)
    assert re.search(
        r"3 rows for skew are stamped after now, .*this answer ends now and holds "
        r"none of them: to include them, add --until",
        plain.stderr,
    ), plain.stderr


def test_the_ahead_count_says_it_is_before_the_querys_filters(logq, tmp_path: Path) -> None:
    """R2s18 #3: rows ahead of now are counted from footers and timestamps, before --path,
    --status, --method: the note must not promise that its --until brings them into this
    answer (here none of them matches --path /nothing)."""
    now = _now()
    frame = access_frame(2, now + timedelta(seconds=180), now + timedelta(seconds=240),
                         ["recipe"], seed=3)  # fmt: skip
    frame["response_code"] = 404
    uri = str(tmp_path / "wh")
    write_with_writer(uri, "envoy_access", frame)
    run = logq("errors", "-s", "recipe", "--status", "404", "--path", "/nothing", "--method",
               "GET", "--since", "6h", "--warehouse", uri)  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert "2 rows for recipe (counted before --path/--method/--status) are stamped after now" in (
        run.stderr
    ), run.stderr
    assert "to include them" not in run.stderr


def test_no_stale_note_for_fresh_data_or_a_closed_window(logq, tmp_path: Path) -> None:
    uri, _ = stalled(tmp_path, minutes_ago=0)
    fresh = logq("latency", "-s", "checkout", "--since", "10m", "--warehouse", uri)
    assert fresh.exit_code == 0 and "newest data" not in fresh.stderr
    old_uri, old_newest = stalled(tmp_path / "old")
    until = (old_newest + timedelta(seconds=1)).isoformat()
    closed = logq("latency", "-s", "checkout", "--since", "1h", "--until", until,
                  "--warehouse", old_uri)  # fmt: skip
    assert closed.exit_code == 0 and "newest data" not in closed.stderr
    anyone = logq("latency", "--since", "1h", "--warehouse", old_uri)  # no --service: the table
    assert "newest data in envoy_access:" in anyone.stderr


def shop(tmp_path: Path) -> tuple[str, pd.DataFrame]:
    """Paths as real traffic has them: query strings, cart UUIDs, numeric ids, hex assets, and
    one slow route spread over 40 carts (each cart path seen once)."""
    start, end = utc(2026, 3, 1, 10), utc(2026, 3, 1, 11)
    frame = access_frame(400, start, end, ["shop", "recipe"], seed=11)
    paths = []
    for i in range(len(frame)):
        kind = i % 5
        if kind == 0:
            paths.append(f"/api/v1/products?ids={i},{i + 1}")
        elif kind == 1:
            paths.append(f"/api/v1/carts/{UUIDS[i % 40]}/items/{i % 9}")
        elif kind == 2:
            paths.append(f"/static/{i:020x}/app.js")
        elif kind == 3:
            paths.append(f"/api/v1/orders/{i}/{i + 3}")
        else:
            paths.append(f"/api/v1/search?q=term{i}")
    frame["path"] = paths
    slow = frame["path"].str.startswith("/api/v1/carts/")
    frame.loc[slow, "duration_ms"] = frame.loc[slow, "duration_ms"] + 5000
    uri = str(tmp_path / "shop")
    write_frame(uri, "envoy_access", frame)
    return uri, frame


WIDE = ["--since", "2026-03-01T10:00:00Z", "--until", "2026-03-01T11:00:00Z"]


def test_latency_groups_by_route_so_a_spike_ranks_first(logq, tmp_path: Path) -> None:
    uri, frame = shop(tmp_path)
    run = logq("latency", "-s", "shop", *WIDE, "-f", "json", "--limit", "1000", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    rows = run.json()
    df = frame[frame["service"] == "shop"].assign(r=frame["path"].map(route))
    assert sorted(r["path"] for r in rows) == sorted(df["r"].unique())
    assert {r["path"] for r in rows} == {
        "/api/v1/products", "/api/v1/carts/{id}/items/{id}", "/static/{id}/app.js",
        "/api/v1/orders/{id}/{id}", "/api/v1/search",
    }  # fmt: skip
    assert rows[0]["path"] == "/api/v1/carts/{id}/items/{id}"  # the spike, on top
    assert {r["path"]: r["requests"] for r in rows} == df.groupby("r").size().to_dict()
    assert {r["service"] for r in rows} == {"shop"}  # json keeps the column with one --service
    raw = logq("latency", "-s", "shop", *WIDE, "-f", "json", "--limit", "1000", "--raw-paths",
               "--warehouse", uri)  # fmt: skip
    assert len(raw.json()) == df["path"].nunique() > 150


def test_errors_and_top_group_by_route_and_service(logq, tmp_path: Path) -> None:
    uri, frame = shop(tmp_path)
    errors = logq("errors", *WIDE, "-f", "json", "--limit", "1000", "--warehouse", uri).json()
    err = frame[frame["response_code"] >= 500].assign(r=frame["path"].map(route))
    want = err.groupby(["service", "r", "response_code", "response_flags"]).size()
    got = {(e["service"], e["path"], e["response_code"], e["response_flags"]): e["count"]
           for e in errors}  # fmt: skip
    assert got == want.to_dict()
    top = logq("top", *WIDE, "-f", "json", "--limit", "1000", "--warehouse", uri).json()
    routes = frame.assign(r=frame["path"].map(route)).groupby(["service", "r"]).size()
    assert {(t["service"], t["path"]): t["requests"] for t in top} == routes.to_dict()
    raw_top = logq("top", "-s", "recipe", *WIDE, "-f", "json", "--limit", "5", "--raw-paths",
                   "--warehouse", uri)  # fmt: skip
    assert all("?" in t["path"] or re.search(r"/\d", t["path"]) for t in raw_top.json())


def test_limit_cut_is_said(logq, tmp_path: Path) -> None:
    uri, _ = shop(tmp_path)
    every = logq("errors", *WIDE, "-f", "json", "--limit", "1000", "--warehouse", uri)
    total = len(every.json())
    assert total > 3 and "showing" not in every.stderr
    cut = logq("errors", *WIDE, "-f", "json", "--limit", "3", "--warehouse", uri)
    assert cut.json() == every.json()[:3]
    assert f"showing 3 of {total} rows (raise --limit)" in cut.stderr
    table = logq("flags", *WIDE, "--limit", "1", "--warehouse", uri)
    assert "showing 1 of " in table.stderr and "showing" not in table.stdout


def test_same_route_in_two_services_is_two_rows(logq, warehouse: Warehouse) -> None:
    """Without --service the services are not merged: /healthz 4xx shows per service."""
    args = ["--status", "4xx", "--path", "/healthz", "--since", "2026-11-27T22:00:00Z",
            "--until", "2026-11-28T02:00:00Z", "-f", "json",
            "--warehouse", warehouse.uri]  # fmt: skip
    rows = logq("errors", *args, "--limit", "1000").json()
    df = warehouse.access
    df = df[(df["path"] == "/healthz") & df["response_code"].between(400, 499)]
    want = df.groupby(["service", "response_code", "response_flags"]).size().to_dict()
    got = {(r["service"], r["response_code"], r["response_flags"]): r["count"] for r in rows}
    assert got == want and len({r["service"] for r in rows}) > 1
    two = logq("errors", *args, "-s", "recipe,users").json()
    assert {r["service"] for r in two} == {"recipe", "users"}


@pytest.mark.parametrize("depth", ["parent", "table", "partition"])
def test_warehouse_one_level_off_is_named(logq, warehouse: Warehouse, tmp_path: Path,
                                          depth: str) -> None:  # fmt: skip
    root = Path(warehouse.uri)
    if depth == "parent":
        given, want = root.parent, root
    elif depth == "table":
        given, want = root / "envoy_access", root
    else:
        given, want = root / "envoy_access" / "service=recipe", root
    run = logq("errors", "--since", "1h", "-f", "json", "--warehouse", given)
    assert run.exit_code == 3, run.stderr
    assert f"did you mean --warehouse {want}?" in run.stderr
    assert run.json() == []


def test_trace_strips_blanks_folds_case_and_hints_at_tail(logq, tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    start, end = utc(2026, 1, 1, 9, 59), utc(2026, 1, 1, 10, 1)
    frame = access_frame(20, start, end, ["front", "recipe"], seed=3)
    rid = "9f1c6a2e-77b1-4c1e-9a7f-1d2b3c4d5e6f"
    frame.loc[[2, 9], "request_id"] = rid
    write_frame(uri, "envoy_access", frame)
    logs = logs_frame(5, start, end, ["recipe"], seed=4)
    logs.loc[3, "message"] = "ERROR payment failed request_id=only-in-logs-42 amount=3"
    write_frame(uri, "container_logs", logs)
    wide = ["--since", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z",
            "--warehouse", uri]  # fmt: skip
    for given in (f"  {rid} ", rid.upper()):
        run = logq("trace", given, "-f", "json", *wide)
        assert run.exit_code == 0, run.stderr
        assert len(run.json()) == 2, given
    missing = logq("trace", "only-in-logs-42", *wide)
    assert missing.exit_code == 0 and missing.stdout.startswith("No results:")
    hint = re.search(r"try `(logq tail [^`]+)`", missing.stdout)
    assert hint, missing.stdout
    follow = [*shlex.split(hint.group(1))[1:], "-f", "json"]  # names the warehouse it read
    assert (
        "--grep" in follow
        and "--until" in follow
        and follow[follow.index("--warehouse") + 1] == uri
    )
    found = logq(*follow)  # the hint, run as printed, finds the line
    assert found.exit_code == 0, found.stderr
    assert [r["message"] for r in found.json()] == [logs.loc[3, "message"]]


def test_window_before_the_data_says_where_it_starts(logq, warehouse: Warehouse) -> None:
    run = logq("errors", "-s", "recipe", "--since", "2026-11-20T00:00:00Z", "--until",
               "2026-11-21T00:00:00Z", "--warehouse", warehouse.uri)  # fmt: skip
    oldest = warehouse.access[warehouse.access["service"] == "recipe"]["timestamp"].min()
    assert run.exit_code == 0
    assert "the data for recipe starts at " + oldest.strftime("%Y-%m-%dT%H:%M:%S") in run.stdout
    assert "move --since/--until later" in run.stdout and "widen --since" not in run.stdout


def test_choices_are_case_insensitive(logq, warehouse: Warehouse, monkeypatch) -> None:
    wide = ["--since", "2026-11-27T23:00:00Z", "--until", "2026-11-28T00:00:00Z"]
    run = logq("errors", "-s", "recipe", *wide, "-f", "JSON", "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr
    assert isinstance(run.json(), list) and run.json()
    monkeypatch.setenv("LOGQ_ENGINE", "Athena")
    dry = logq("errors", "-s", "recipe", *wide, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "-- engine: athena" in dry.stdout


def test_service_completion_reads_the_warehouse_on_the_line(
    warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``logq errors --warehouse W -s re<TAB>`` completes from W, not from ./logq-warehouse."""
    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.delenv("LOGQ_WAREHOUSE", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./logq-warehouse here
    env = {
        "_LOGQ_COMPLETE": "complete_bash",
        "COMP_WORDS": f"logq errors --warehouse {warehouse.uri} -s re",
        "COMP_CWORD": "5",
    }
    result = CliRunner().invoke(app, [], env=env, prog_name="logq")
    assert result.stdout.split() == ["recipe"]


@pytest.mark.integration
@pytest.mark.s3
def test_stale_note_and_warehouse_off_by_one_on_s3(logq, s3_warehouse: str) -> None:
    """The same footer-based check over S3 (pyarrow's filesystem, real SeaweedFS)."""
    uri, newest = stalled(s3_warehouse)
    run = logq("errors", "-s", "checkout", "--since", "10m", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0 and run.json() == [], run.stderr
    assert f"newest data for checkout: {_iso(newest)}" in run.stderr
    assert "none matched" in run.stderr
    bucket = uri.rsplit("/", 1)[0]
    up = logq("errors", "--since", "1h", "-f", "json", "--warehouse", bucket)
    assert up.exit_code == 3 and f"did you mean --warehouse {uri}?" in up.stderr
    inside = logq("errors", "--since", "1h", "-f", "json", "--warehouse", f"{uri}/envoy_access")
    assert inside.exit_code == 3 and f"did you mean --warehouse {uri}?" in inside.stderr


def test_services_with_nothing_to_list_exits_3(
    logq, warehouse: Warehouse, empty_warehouse: str
) -> None:
    unknown = logq("services", "-s", "recipee", "-f", "json", "--warehouse", warehouse.uri)
    assert unknown.exit_code == 3 and unknown.json() == []
    assert "unknown service 'recipee' in the warehouse" in unknown.stderr
    assert "did you mean 'recipe'?" in unknown.stderr
    empty = logq("services", "-f", "json", "--warehouse", empty_warehouse)
    assert empty.exit_code == 3 and "holds no data yet" in empty.stderr
    up = logq("services", "-f", "json", "--warehouse", Path(warehouse.uri).parent)
    assert up.exit_code == 3 and f"did you mean --warehouse {warehouse.uri}?" in up.stderr
    some = logq("services", "-s", "recipe,nope", "-f", "json", "--warehouse", warehouse.uri)
    assert some.exit_code == 0 and [r["service"] for r in some.json()] == ["recipe"]
