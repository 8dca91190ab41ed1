"""`logq errors`: exact answers against pandas, pruning, formats, hostile values, empty cases."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from tests.cli.conftest import Warehouse
from tests.cli.routes import route

SINCE = "2026-11-27T23:15:00Z"
UNTIL = "2026-11-28T00:45:00Z"


def expected_errors(
    access: pd.DataFrame,
    services: list[str] | None,
    since: str,
    until: str,
    lo: int = 500,
    hi: int = 599,
    path_prefix: str = "",
    method: str = "",
    raw: bool = False,
) -> list[dict]:
    """The rows of ``errors --format json`` as pandas computes them: by service (json keeps the
    column even for one ``--service``) and route (the path as logged with ``raw``)."""
    df = access[
        (access["timestamp"] >= pd.Timestamp(since)) & (access["timestamp"] < pd.Timestamp(until))
    ]
    if services:
        df = df[df["service"].isin(services)]
    if path_prefix:
        df = df[df["path"].str.startswith(path_prefix)]
    if method:
        df = df[df["method"] == method]
    df = df.assign(path=df["path"] if raw else df["path"].map(route))
    per_path = df.groupby(["service", "path"]).size()
    err = df[(df["response_code"] >= lo) & (df["response_code"] <= hi)]
    keys = ["service", "path", "response_code", "response_flags"]
    grouped = err.groupby(keys).size().reset_index(name="count")
    grouped["path_share_pct"] = [
        round(c * 100 / per_path[(s, p)], 2)
        for s, p, c in zip(grouped["service"], grouped["path"], grouped["count"], strict=True)
    ]
    grouped = grouped.sort_values(["count", *keys], ascending=[False, True, True, True, True])
    return [
        {
            "service": r.service,
            "path": r.path,
            "response_code": int(r.response_code),
            "response_flags": r.response_flags,
            "count": int(r.count),
            "path_share_pct": r.path_share_pct,
        }
        for r in grouped.itertuples()
    ]


def _strip(rows: list[dict]) -> list[dict]:
    keys = ("service", "path", "response_code", "response_flags", "count", "path_share_pct")
    return [{k: r[k] for k in keys if k in r} for r in rows]


def test_errors_json_matches_pandas_across_day_boundary(logq, warehouse: Warehouse) -> None:
    run = logq(
        "errors", "--service", "recipe", "--since", SINCE, "--until", UNTIL,
        "--format", "json", "--warehouse", warehouse.uri, "--limit", "1000",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    rows = run.json()
    want = expected_errors(warehouse.access, ["recipe"], SINCE, UNTIL)
    assert len(want) > 5
    assert _strip(rows) == want
    counts = [r["count"] for r in rows]
    assert counts == sorted(counts, reverse=True)


def test_errors_all_services_status_4xx_path_and_method(logq, warehouse: Warehouse) -> None:
    run = logq(
        "errors", "--status", "4xx", "--path", "/api/recipes", "--method", "get",
        "--since", SINCE, "--until", UNTIL, "-f", "json", "--warehouse", warehouse.uri,
        "--limit", "1000",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    want = expected_errors(warehouse.access, None, SINCE, UNTIL, 400, 499, "/api/recipes", "GET")
    assert want and _strip(run.json()) == want


def test_errors_single_code_and_repeated_service(logq, warehouse: Warehouse) -> None:
    run = logq(
        "errors", "--status", "503", "-s", "recipe", "-s", "billing", "--since", SINCE,
        "--until", UNTIL, "-f", "json", "--warehouse", warehouse.uri,
    )  # fmt: skip
    want = expected_errors(warehouse.access, ["recipe", "billing"], SINCE, UNTIL, 503, 503)
    assert want and _strip(run.json()) == want


def test_errors_limit(logq, warehouse: Warehouse) -> None:
    run = logq(
        "errors", "--since", SINCE, "--until", UNTIL, "-f", "json", "--warehouse",
        warehouse.uri, "--limit", "3",
    )  # fmt: skip
    assert _strip(run.json()) == expected_errors(warehouse.access, None, SINCE, UNTIL)[:3]


def test_errors_csv_parses_back(logq, warehouse: Warehouse) -> None:
    run = logq(
        "errors", "-s", "users", "--since", SINCE, "--until", UNTIL, "-f", "csv",
        "--warehouse", warehouse.uri, "--limit", "1000",
    )  # fmt: skip
    assert run.exit_code == 0
    parsed = list(csv.DictReader(io.StringIO(run.stdout)))
    want = expected_errors(warehouse.access, ["users"], SINCE, UNTIL)
    assert [
        (r["path"], int(r["response_code"]), r["response_flags"], int(r["count"])) for r in parsed
    ] == [(w["path"], w["response_code"], w["response_flags"], w["count"]) for w in want]
    assert "\x1b[" not in run.stdout


def test_errors_table_and_markdown(logq, warehouse: Warehouse) -> None:
    table = logq(
        "errors", "-s", "recipe", "--since", SINCE, "--until", UNTIL, "--warehouse", warehouse.uri
    )
    assert table.exit_code == 0
    top = expected_errors(warehouse.access, ["recipe"], SINCE, UNTIL)[0]
    assert top["path"] in table.stdout and "response code" in table.stdout
    md = logq(
        "errors", "-s", "recipe", "--since", SINCE, "--until", UNTIL, "-f", "markdown",
        "--warehouse", warehouse.uri,
    )  # fmt: skip
    lines = [
        [cell.strip() for cell in ln.strip("| ").split(" | ")] for ln in md.stdout.splitlines()
    ]
    assert lines[0][:2] == ["path", "response_code"]
    assert set(lines[1][0]) == {"-"} and set(lines[1][1][:-1]) == {"-"} and lines[1][1][-1] == ":"
    assert [top["path"], str(top["response_code"])] in [ln[:2] for ln in lines[2:]]


def test_dry_run_shows_only_partitions_in_range(logq, warehouse: Warehouse) -> None:
    run = logq(
        "errors", "-s", "recipe", "--since", SINCE, "--until", UNTIL, "--dry-run",
        "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0
    listed = [ln.split()[1] for ln in run.stdout.splitlines() if ln.startswith("--   ")]
    assert listed == [
        "envoy_access/service=recipe/dt=2026-11-27-23",
        "envoy_access/service=recipe/dt=2026-11-28-00",
    ]
    assert "read_parquet" not in run.stdout  # the statement itself, not our view plumbing
    assert "STARTS_WITH" in run.stdout and "$dt_from" in run.stdout


def test_hostile_service_matches_nothing(logq, warehouse: Warehouse) -> None:
    for hostile in (
        "x' OR '1'='1",
        "recipe' --",
        "../users",
        "recipe'); DROP TABLE envoy_access; --",
    ):
        run = logq(
            "errors", "--service", hostile, "--since", SINCE, "--until", UNTIL, "-f", "json",
            "--warehouse", warehouse.uri,
        )  # fmt: skip
        assert run.exit_code == 2, run.stderr
        assert run.stdout == ""
        assert "is not a service name" in run.stderr
        # Suggested only when the warehouse has a close name (never the rewritten form).
        assert ("did you mean 'recipe'?" in run.stderr) == (hostile == "recipe' --")


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("recip_", "it ends with '_'"),
        ("_recipe", "it starts with '_'"),
        ("-recipe.", "it starts with '-' and ends with '.'"),
        ("recip$", "the character '$' is not accepted"),
        ("x' OR '1'='1", "the characters \"'\", ' ', '=' are not accepted"),
        (
            "café漢/",
            "the character '/' is not accepted (letters with no ASCII form are: the "
            "writer stores such a name under a hash)",
        ),  # 漢 alone is taken (hashed)
        ("re__cipe", "it holds '__'"),
        ("_" + "a" * 128, "it starts with '_'"),  # 129 characters, 128 once stripped
        ("!@#$%^&*()" * 30, "the characters '!', '@', '#', '$' and 6 more are not accepted"),
        ("\x01" * 40, "the character '\\x01' is not accepted"),  # echoed escaped: 4 each
        ("\u0301", "nothing is left of it once accents fold"),  # a combining accent alone
    ],
)
def test_a_refused_service_name_says_what_is_wrong(
    logq, warehouse: Warehouse, value: str, fault: str
) -> None:
    """`-s recip_` was refused with "stored as lower-case letters, digits, '_', '.', '-'": a
    rule it seemed to follow. The message names what is wrong (the characters refused, an end,
    a run) and the whole rule the stored names follow."""
    run = logq("tail", "-s", value, "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and run.stdout == "", run.stderr
    assert f"is not a service name: {fault}; a name is lower-case letters, digits" in run.stderr
    assert "'_', '.', '-' (never first or last, never '__' or '..')" in run.stderr
    assert "up to 128 characters" in run.stderr and "`logq services` lists them" in run.stderr
    assert len(run.stderr.splitlines()) == 1 and "[..." not in run.stderr  # not cut


def test_a_refused_service_name_suggests_long_names_within_the_cut(logq, tmp_path) -> None:
    """Three close names of 36 to 128 characters made the refusal longer than the error cut
    (MAX_MESSAGE_CHARS), which took out its middle: the rule and the names with it. The
    closest names that fit are named, the others counted, with the command listing them all;
    when not even one fits, the count and the command are said."""
    from datetime import UTC, datetime, timedelta

    from cli.errors import MAX_MESSAGE_CHARS
    from tests.athena.factory import access_frame, write_frame

    canaries = [f"payments-gateway-eu-west-1-canary-{i:02d}" for i in range(12)]
    longest = [f"{'ledger-' * 17}{i:02d}"[-128:] for i in range(12)]
    uri, now = str(tmp_path / "wh"), datetime.now(UTC)
    write_frame(uri, "envoy_access", access_frame(48, now - timedelta(hours=1), now, canaries))
    write_frame(uri, "envoy_access", access_frame(48, now - timedelta(hours=1), now, longest))
    lines = {}
    for value in (f"{canaries[1]}/", f"{longest[1][:-1]}/"):
        run = logq("errors", "-s", value, "--warehouse", uri)
        assert run.exit_code == 2 and run.stdout == "", run.stderr
        assert len(run.stderr.splitlines()) == 1 and "[..." not in run.stderr  # not cut
        assert len(run.stderr) <= len("logq: error: \n") + MAX_MESSAGE_CHARS, run.stderr
        assert "case and accents fold ('Café' is 'cafe')" in run.stderr  # the rule is whole
        lines[value[:8]] = run.stderr
    assert lines["payments"].endswith(
        f"; did you mean '{canaries[1]}'? 11 more are close; `logq services` lists them all\n"
    )
    assert lines["ledger-l"].endswith(
        "; 12 known names are close; `logq services` lists them all\n"
    ), lines["ledger-l"]


def test_a_refusal_counts_the_close_names_it_leaves_out() -> None:
    """Up to three close names are named, closest first; one left out is "1 more is close",
    and the names that do not fit the room left on the line are dropped, last first."""
    from cli.service_names import suggestion

    four = ["aa", "ab", "ac", "ad"]
    assert suggestion(four, 400) == (
        "; did you mean 'aa' or 'ab' or 'ac'? 1 more is close; `logq services` lists them all"
    )
    wide = ["a" * 60, "b" * 60, "c" * 60]
    assert suggestion(wide, 150) == (
        f"; did you mean '{wide[0]}'? 2 more are close; `logq services` lists them all"
    )
    assert suggestion(wide[:1], 400) == f"; `logq services` lists them; did you mean '{wide[0]}'?"
    assert suggestion([], 0) == "; `logq services` lists them"


def test_service_names_match_as_stored(logq, warehouse: Warehouse) -> None:
    """Names are matched after the writer's sanitising: case folds, a path cannot escape."""
    want = expected_errors(warehouse.access, ["users"], SINCE, UNTIL)
    run = logq(
        "errors", "-s", "USERS", "--since", SINCE, "--until", UNTIL, "-f", "json",
        "--warehouse", warehouse.uri, "--limit", "1000",
    )  # fmt: skip
    assert _strip(run.json()) == want
    run = logq("errors", "-s", "../users", "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and "did you mean 'users'" in run.stderr
    run = logq("errors", "-s", "no-such.svc", "-f", "json", "--warehouse", warehouse.uri)
    assert run.exit_code == 3 and run.json() == []  # nothing to ask: not "no errors"
    assert "unknown service 'no-such.svc'" in run.stderr
    assert "known: billing, recipe, users" in run.stderr  # no name is close: all are listed


def test_hostile_path_and_method(logq, warehouse: Warehouse) -> None:
    run = logq(
        "errors", "--path", "/' OR '1'='1", "--since", SINCE, "--until", UNTIL, "-f", "json",
        "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert run.exit_code == 0 and run.json() == []
    bad = logq("errors", "--method", "GET' OR 1=1 --", "--warehouse", warehouse.uri)
    assert bad.exit_code == 2 and "not an HTTP method" in bad.stderr


def test_unknown_service_table_lists_known(logq, warehouse: Warehouse) -> None:
    run = logq(
        "errors", "-s", "nope", "--since", SINCE, "--until", UNTIL, "--warehouse", warehouse.uri
    )
    assert run.exit_code == 3
    assert "unknown service 'nope'" in run.stdout
    assert "billing, recipe, users" in run.stdout


def test_unknown_service_suggests_the_closest_name(logq, warehouse: Warehouse) -> None:
    """A typo gets the closest known name, not a list; every name unknown exits 3."""
    wide = ["--since", SINCE, "--until", UNTIL, "--warehouse", warehouse.uri]
    run = logq("errors", "-s", "recipee", "-f", "json", *wide)
    assert run.exit_code == 3 and run.json() == []
    assert run.stderr.rstrip().endswith(
        "unknown service 'recipee' in envoy_access; known: billing, recipe, users; "
        "did you mean 'recipe'?"
    )
    some = logq("errors", "-s", "recipe,bilinng", "-f", "json", *wide)
    assert some.exit_code == 0 and some.json()  # one known name: an answer, and a note
    assert "showing recipe only; did you mean 'billing'?" in some.stderr
    assert {r["service"] for r in some.json()} == {"recipe"}  # json always has the column


def test_a_service_with_container_logs_only_is_not_called_unknown(logq, tmp_path) -> None:
    """`errors -s app` for an app without an Envoy sidecar: not "unknown service 'app' ... did
    you mean 'api'?", but what it has and how to read it. Still exit 3: the question about
    access logs has no answer (0 would read as "no errors"). `tail` says the same the other
    way round."""
    from datetime import UTC, datetime, timedelta

    from tests.athena.factory import access_frame, logs_frame, write_frame

    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    write_frame(uri, "envoy_access", access_frame(20, now - timedelta(minutes=30), now, ["api"]))
    write_frame(uri, "container_logs", logs_frame(20, now - timedelta(minutes=30), now, ["app"]))
    run = logq("errors", "-s", "app", "--warehouse", uri)
    assert run.exit_code == 3, run.stderr
    assert run.stdout == (
        "No results: service 'app' has no Envoy access logs (it has container logs: "
        "logq tail -s app)\n"
    )
    both = logq("errors", "-s", "app,apx", "-f", "json", "--warehouse", uri)
    assert both.exit_code == 3 and both.json() == []
    assert both.stderr.rstrip().endswith(
        "service 'app' has no Envoy access logs (it has container logs: logq tail -s app); "
        "unknown service 'apx' in envoy_access; known: api; did you mean 'api'?"
    )
    some = logq("errors", "-s", "api,app", "-f", "json", "--warehouse", uri)
    assert some.exit_code == 0, some.stderr
    assert "service 'app' has no Envoy access logs (it has container logs: logq tail -s app); " \
        "showing api only" in some.stderr  # fmt: skip
    tail = logq("tail", "-s", "api", "--warehouse", uri)
    assert tail.exit_code == 3
    assert "service 'api' has no container logs (it has Envoy access logs: logq errors -s api)" in (
        tail.stdout
    )


def test_a_warehouse_with_container_logs_only_says_so(logq, tmp_path) -> None:
    """A pipeline whose apps have no Envoy sidecar (or Fluent Bit sending plain lines) fills
    container_logs only: `errors` must say that and point to `tail`, not "check --warehouse,
    or run `logq demo`", which sends the user looking for a wrong path. A --service the logs
    have gets the same words as when envoy_access holds other services; still exit 3."""
    from datetime import UTC, datetime, timedelta

    from tests.athena.factory import logs_frame, write_frame

    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    write_frame(uri, "container_logs", logs_frame(20, now - timedelta(minutes=30), now, ["app"]))
    run = logq("errors", "--warehouse", uri)
    assert run.exit_code == 3, run.stderr
    assert run.stdout.startswith(
        f"No results: the warehouse {uri} has no envoy_access data at all, only container "
        "logs (app): logq tail reads them; a line is stored as an access line when its "
        "container is recognised as Envoy"
    )
    one = logq("errors", "-s", "app", "--warehouse", uri)
    assert one.exit_code == 3
    assert one.stdout == (
        "No results: service 'app' has no Envoy access logs (it has container logs: "
        "logq tail -s app)\n"
    )
    typo = logq("latency", "-s", "apq", "-f", "json", "--warehouse", uri)
    assert typo.exit_code == 3 and typo.json() == []
    assert typo.stderr.rstrip().endswith(
        "only container logs; unknown service 'apq' in container_logs; known: app; "
        "did you mean 'app'?"
    )


def test_unknown_service_among_many_names_only_the_closest() -> None:
    """With 60 services, the 30 first names would hide the one meant: only the closest."""
    from cli.explain import unknown_services_text

    known = sorted([f"svc-{i:02d}" for i in range(59)] + ["checkout"])
    text = unknown_services_text("envoy_access", ["chekout"], known)
    assert text == (
        "unknown service 'chekout' in envoy_access (60 known services; `logq services` lists "
        "them); did you mean 'checkout'?"
    )
    far = unknown_services_text("envoy_access", ["zzz"], known)
    assert far.startswith("unknown service 'zzz' in envoy_access; known: checkout, svc-00")
    assert far.endswith("... (60 in all; `logq services` lists them)"), far
    assert "svc-08 ... (60 in all" in far, far  # LIST_KNOWN_MAX names, not the first 30


def _long_names() -> tuple[list[str], list[str]]:
    """200 stored service names of 67 characters, and 80 unknown values each close to one of
    them: comma-joined, a ``--service`` value of 5,439 characters."""
    known = [
        f"payments-gateway-eu-west-1-canary-cluster-{i:03d}-checkout-service-v2" for i in range(200)
    ]
    return known, [f"{name}x" for name in known[:80]]


def test_unknown_services_text_stays_bounded_with_many_long_names() -> None:
    """Every unknown value, every close known name and up to 30 known names were named in
    full: kilobytes. The values given are cut and counted, the close names counted past the
    room, and `logq services` named for the rest (UNKNOWN_TEXT_MAX_CHARS)."""
    from cli.explain import UNKNOWN_TEXT_MAX_CHARS, showing_text, unknown_services_text

    known, unknown = _long_names()
    text = unknown_services_text("envoy_access", unknown, known, showing_text(known[100:180]))
    assert len(text) <= UNKNOWN_TEXT_MAX_CHARS, (len(text), text)
    assert text.startswith(f"unknown service {unknown[0]!r}, {unknown[1]!r} and 78 more in ")
    assert f"; showing {known[100]}, {known[101]} and 78 more only" in text, text
    assert text.endswith("more are close; `logq services` lists them all"), text
    hostile = unknown_services_text("envoy_access", ["q" * 5000], known[:10])
    assert f"'{'q' * 80}'... (5,000 characters) in envoy_access; known: {known[0]}, " in hostile
    assert hostile.endswith(" ... (10 in all; `logq services` lists them)"), hostile
    assert len(hostile) < 400, hostile


def test_close_names_are_looked_for_only_for_the_values_the_text_names(compared: list[str]) -> None:
    """difflib compares a value with every known name: run for each of 80 values of 67
    characters against 200 names, it took 4.6 s before `logq errors` answered, to suggest names
    for values the text only counts. Now only the values named are compared."""
    from cli.explain import unknown_services_text

    known, unknown = _long_names()
    text = unknown_services_text("envoy_access", unknown, known)
    assert text.startswith(f"unknown service {unknown[0]!r}, {unknown[1]!r} and 78 more in ")
    assert compared == unknown[:2]  # before: all 80
    assert f"did you mean {known[0]!r}" in text, text  # the suggestion is still made


def test_unknown_services_note_with_long_names_keeps_its_exit_status(logq, tmp_path) -> None:
    """A --service list of 5,000 characters over 200 services of 67: the "no results" reason
    (table and json: keys and rows unchanged) and the note beside an answer stay within
    UNKNOWN_TEXT_MAX_CHARS, name `logq services`, and exit as before (3: no possible answer)."""
    from datetime import UTC, datetime, timedelta

    from cli.explain import UNKNOWN_TEXT_MAX_CHARS
    from tests.athena.factory import access_frame, write_frame

    known, unknown = _long_names()
    uri, now = str(tmp_path / "wh"), datetime.now(UTC)
    # A row a service (they take turns), one file each: 200 files, not one per service-hour.
    write_frame(uri, "envoy_access", access_frame(200, now - timedelta(hours=1), now, known))
    value = ",".join(unknown)
    assert len(value) > 5000
    bound = len("No results: \n") + UNKNOWN_TEXT_MAX_CHARS
    table = logq("errors", "-s", value, "--warehouse", uri)
    assert table.exit_code == 3, table.stderr
    assert table.stdout.startswith(f"No results: unknown service {unknown[0]!r}, ")
    assert len(table.stdout) <= bound and "`logq services`" in table.stdout, table.stdout
    as_json = logq("errors", "-s", value, "-f", "json", "--warehouse", uri)
    assert (as_json.exit_code, as_json.json()) == (3, [])
    reason = as_json.stderr.splitlines()[-1]
    assert reason.startswith("logq: no results: unknown service ")
    assert len(reason) <= bound and "`logq services`" in reason, reason
    services = logq("services", "-s", value, "-f", "json", "--warehouse", uri)
    assert services.exit_code == 3 and len(services.stderr) <= bound, services.stderr
    mixed = logq("errors", "-s", f"{value},{','.join(known[100:180])}", "--warehouse", uri)
    assert mixed.exit_code == 0, mixed.stderr
    (line,) = [n for n in mixed.stderr.splitlines() if "unknown service" in n]
    assert len(line) <= len("logq: note: ") + UNKNOWN_TEXT_MAX_CHARS, line
    assert f"; showing {known[100]}, {known[101]} and 78 more only" in line, line


def test_no_data_in_range_says_newest_time(logq, warehouse: Warehouse) -> None:
    run = logq(
        "errors", "-s", "recipe", "--since", "2026-11-29T00:00:00Z", "--until",
        "2026-11-29T01:00:00Z", "--warehouse", warehouse.uri,
    )  # fmt: skip
    newest = warehouse.access[warehouse.access["service"] == "recipe"]["timestamp"].max()
    assert "no envoy_access data" in run.stdout
    assert newest.strftime("%Y-%m-%dT%H:%M:%S") in run.stdout


def test_the_last_hours_of_the_calendar_are_an_empty_answer(logq, warehouse: Warehouse) -> None:
    """Times up to 9999-12-31 are accepted; listing the range's hours stepped past the last
    one, an OverflowError traceback out of every canned query (exit 1)."""
    for command in ("errors", "timeline", "tail"):
        run = logq(
            command, "--since", "9999-12-31T22:00:00Z", "--until", "9999-12-31T23:59:59.999Z",
            "--warehouse", warehouse.uri,
        )  # fmt: skip
        assert run.exit_code == 0, (command, run.stdout, run.stderr)
        assert "data between 9999-12-31T22:00:00.000Z and" in run.stdout
        assert "Traceback" not in run.stdout + run.stderr


def test_empty_warehouse(logq, empty_warehouse: str) -> None:
    run = logq("errors", "--since", "1h", "-f", "json", "--warehouse", empty_warehouse)
    assert run.exit_code == 3 and run.json() == []
    assert "no envoy_access data at all" in run.stderr


def test_bad_time_and_status_are_clear_errors(logq, warehouse: Warehouse) -> None:
    run = logq("errors", "--since", "yesterday", "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and "15m, 1h" in run.stderr
    run = logq("errors", "--since", "1h", "--until", "2h", "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and "must be before" in run.stderr
    run = logq("errors", "--since", "1M", "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and "M is ambiguous: use 30d for a month" in run.stderr
    run = logq("errors", "--status", "6xx", "--warehouse", warehouse.uri)
    assert run.exit_code == 2 and "5xx" in run.stderr
    for code in ("999", "42"):  # a code, but none HTTP has: the error says which ones are
        run = logq("errors", "--status", code, "--warehouse", warehouse.uri)
        assert run.exit_code == 2 and "a code from 100 to 599 such as 503" in run.stderr


@pytest.mark.parametrize(
    ("typed", "title"), [("5XX", "5xx"), (" 4Xx-5XX ", "4xx-5xx"), ("0503", "503"), ("000", "0")]
)
def test_the_errors_title_names_the_status_as_read(
    logq, warehouse: Warehouse, typed: str, title: str
) -> None:
    """The title echoed --status as typed ("5XX responses", " 0503 responses")."""
    run = logq("errors", "--status", typed, "--since", SINCE, "--until", UNTIL, "-f", "table",
               "--warehouse", warehouse.uri)  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert run.stdout.splitlines()[0].strip() == f"{title} responses", run.stdout


def test_backward_and_half_status_ranges_are_refused(logq, warehouse: Warehouse) -> None:
    """A range that matches nothing is refused (not "no results"); errors quote the value typed."""
    for value in ("5xx-1xx", "503-500", "5xx-4xx"):
        run = logq("errors", "--status", value, "--warehouse", warehouse.uri)
        assert run.exit_code == 2, (value, run.stdout)
        assert "backwards" in run.stderr and repr(value) in run.stderr
        assert "Traceback" not in run.stderr
    for value in ("5xx-", "-", "-5xx", "5xx-6xx"):
        run = logq("errors", "--status", value, "--warehouse", warehouse.uri)
        assert run.exit_code == 2 and f"--status {value!r}:" in run.stderr, (value, run.stderr)
    run = logq("errors", "--status", "500-503", "--since", SINCE, "--until", UNTIL, "-f", "json",
               "--warehouse", warehouse.uri)  # fmt: skip
    assert run.exit_code == 0
    assert {r["response_code"] for r in run.json()} <= {500, 501, 502, 503}


def test_env_var_warehouse(logq, warehouse: Warehouse, monkeypatch) -> None:
    monkeypatch.setenv("LOGQ_WAREHOUSE", warehouse.uri)
    run = logq(
        "errors",
        "-s",
        "recipe",
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "-f",
        "json",
        "--limit",
        "1000",
    )
    assert _strip(run.json()) == expected_errors(warehouse.access, ["recipe"], SINCE, UNTIL)


@pytest.mark.parametrize(
    "args",
    [
        ["timeline", "--since", "١h"],
        ["timeline", "--until", "１h"],
        ["timeline", "--since", ""],
        ["services", "--since", ""],
        ["services", "--until", " "],
        ["sql", "SELECT 1 AS one", "--since", ""],
        ["sql", "SELECT 1 AS one", "--until", ""],
        ["timeline", "--every", ""],
        ["timeline", "--every", " "],
        ["timeline", "--every", "１m"],
        ["timeline", "--since", "0"],
        ["timeline", "--since", "-1h"],
        ["timeline", "--since", "99999999999d"],
        ["timeline", "--since", "nan"],
        ["timeline", "--since", "inf"],
        ["errors", "--limit", "-1"],
        ["errors", "--limit", "99999999999999999999"],
        ["tail", "-F", "--interval", "inf"],
        ["tail", "-F", "--interval", "1e999"],
    ],
)
def test_hostile_ranges_and_sizes_are_usage_errors(logq, warehouse: Warehouse, args) -> None:
    """Each is refused up front (exit 2, a message naming the value, no traceback): Unicode
    digits, an empty value (not taken for the default, by any command: `services` and `sql`
    read their range without TimeRange.parse's defaults), zero, negative, huge, NaN, inf."""
    run = logq(*args, "-f", "csv", "--warehouse", warehouse.uri)
    assert run.exit_code == 2, (run.exit_code, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and run.stdout == ""
    if args[-2] in ("--since", "--until", "--every") and not args[-1].strip():
        # the option is named, in the one wording every empty option has (cli.notes)
        assert f"logq: error: {args[-2]} " in run.stderr and "is empty" in run.stderr
        assert f"leave {args[-2]} out to" in run.stderr
