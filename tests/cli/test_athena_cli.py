"""`logq ... --engine athena` against moto's Athena API."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from athena.schema import TABLES
from tests.athena.athena_moto import (
    athena_env,
    execution,
    execution_count,
    execution_ids,
    executions,
    last_execution,
    moto_env,
    queue_result,
    set_progression,
)
from tests.cli.conftest import Warehouse

pytestmark = pytest.mark.integration

ATHENA = ["--engine", "athena", "--athena-output", "s3://results/", "--athena-database", "logs"]


@pytest.fixture
def moto(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    athena_env(monkeypatch, moto_server)
    set_progression(moto_server, None)
    return moto_server


def test_errors_on_athena_json(logq, moto: str) -> None:
    queue_result(
        moto,
        [("path", "varchar"), ("response_code", "integer"), ("response_flags", "varchar"),
         ("count", "bigint"), ("path_share_pct", "double"), ("path_requests", "bigint")],
        [["/api/recipes", 503, "UH", 12, 2.5, 480]],
    )  # fmt: skip
    run = logq("errors", "-s", "recipe", "--since", "1h", "-f", "json", *ATHENA)
    assert run.exit_code == 0, run.stderr
    assert run.json() == [
        {"path": "/api/recipes", "response_code": 503, "response_flags": "UH", "count": 12,
         "path_share_pct": 2.5, "path_requests": 480}
    ]  # fmt: skip
    assert "Athena scanned" in run.stderr and "USD" in run.stderr
    last = last_execution(moto)["Query"]
    assert "service IN ('recipe')" in last and "dt BETWEEN" in last


def test_hostile_values_on_athena(logq, moto: str) -> None:
    queue_result(moto, [("path", "varchar")], [])
    run = logq("errors", "--path", "x' OR '1'='1", "-f", "json", *ATHENA)
    assert run.exit_code == 0, run.stderr
    assert run.json() == []
    last = last_execution(moto)["Query"]
    assert "starts_with(path, 'x'' OR ''1''=''1')" in last
    run = logq("errors", "-s", "x' OR '1'='1", "-f", "json", *ATHENA)
    assert run.exit_code == 2 and "not a service name" in run.stderr


def test_dry_run_on_athena_prints_final_sql_and_partitions(logq) -> None:
    run = logq(
        "errors", "-s", "recipe", "--since", "2026-11-27T23:30:00Z", "--until",
        "2026-11-28T00:30:00Z", "--dry-run", *ATHENA,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert "envoy_access/service=recipe/dt=2026-11-27-23" in run.stdout
    assert "envoy_access/service=recipe/dt=2026-11-28-00" in run.stdout
    assert "AND \"timestamp\" >= CAST('2026-11-27 23:30:00.000' AS timestamp)" in run.stdout
    assert "service IN ('recipe')" in run.stdout
    long = logq("errors", "-s", "recipe", "--since", "0001-01-01", "--dry-run", *ATHENA)
    assert long.exit_code == 0, long.stderr
    # The listing is of the hours the dt projection holds (2020 to now), as the count above
    # it: it listed 0001-01-01-00.. and 17 million hours under a header of 60,000 (A1s18 #7b).
    header = re.search(r"partitions \(([\d,]+) = ([\d,]+) hours x 1 service", long.stdout)
    span = re.search(r"service=recipe/dt=2020-01-01-00\.\.\S+ \(([\d,]+) hours\)", long.stdout)
    assert header and span, long.stdout
    assert span.group(1) == header.group(2) == header.group(1)
    assert len(long.stdout.splitlines()) < 80  # the statement and one partition line
    before = logq("errors", "-s", "recipe", "--since", "2019-01-01", "--until", "2019-02-01",
                  "--dry-run", *ATHENA)  # fmt: skip
    assert "(0 = 0 hours x 1 service" in before.stdout
    assert "none: the range is outside the dt projection (2020-01-01-00 to now)" in before.stdout


def test_max_scan_bytes_refuses_before_starting(logq, moto: str, warehouse: Warehouse) -> None:
    before = execution_count(moto)
    run = logq(
        "errors", "--since", "2026-11-27T22:00:00Z", "--until", "2026-11-28T02:00:00Z",
        "--max-scan-bytes", "1000", "--warehouse", warehouse.uri, *ATHENA,
    )  # fmt: skip
    assert run.exit_code == 2 and "max-scan-bytes" in run.stderr
    assert execution_count(moto) == before


def test_max_scan_bytes_counts_every_table_the_query_reads(
    logq, moto: str, warehouse: Warehouse
) -> None:
    """``services`` reads envoy_access and container_logs: a budget above the first alone but
    below both must refuse it (only envoy_access was counted)."""
    from athena.partitions import plan
    from athena.timerange import TimeRange
    from athena.warehouse import open_warehouse

    since, until = "2026-11-27T22:00:00Z", "2026-11-28T02:00:00Z"
    wh = open_warehouse(warehouse.uri)
    trange = TimeRange.parse(since, until)
    sizes = {t: sum(p.bytes for p in plan(wh, t, None, trange)) for t in TABLES}
    assert all(sizes.values())
    budget = sizes["envoy_access"] + sizes["container_logs"] // 2
    before = execution_count(moto)
    run = logq(
        "services", "--since", since, "--until", until, "--max-scan-bytes", str(budget),
        "--warehouse", warehouse.uri, *ATHENA,
    )  # fmt: skip
    assert run.exit_code == 2 and "max-scan-bytes" in run.stderr, run.stderr
    assert execution_count(moto) == before


def test_athena_needs_output(logq, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOGQ_ATHENA_OUTPUT", raising=False)
    monkeypatch.delenv("LOGQ_ATHENA_WORKGROUP", raising=False)
    run = logq("errors", "--engine", "athena")
    assert run.exit_code == 1 and "--athena-output" in run.stderr


def test_sql_runs_exactly_as_written(logq, moto: str) -> None:
    statement = (
        "SELECT service, count(*) AS n FROM envoy_access WHERE dt >= '2026-11-28-00' GROUP BY 1"
    )
    queue_result(moto, [("service", "varchar"), ("n", "bigint")], [["recipe", 10], ["users", 3]])
    run = logq("sql", statement, "-f", "json", *ATHENA)
    assert run.exit_code == 0, run.stderr
    assert run.json() == [{"service": "recipe", "n": 10}, {"service": "users", "n": 3}]
    assert last_execution(moto)["Query"] == statement


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_sql_limit_that_cuts_the_answer_says_so_on_athena(logq, moto: str, fmt: str) -> None:
    """One row past --limit is fetched to know that the limit cut the answer, and is not
    shown; a limit the answer fits in says nothing."""
    statement = "SELECT service FROM envoy_access WHERE dt >= '2026-11-28-00'"
    for limit, note in ((2, True), (3, False)):
        queue_result(moto, [("service", "varchar")], [["a"], ["b"], ["c"]])
        run = logq("sql", statement, "-f", fmt, "--limit", str(limit), *ATHENA)
        assert run.exit_code == 0, run.stderr
        assert re.findall(r"\b[abc]\b", run.stdout) == ["a", "b", "c"][:limit], run.stdout
        said = f"logq: showing the first {limit} rows; the result has more (raise --limit)"
        assert (said in run.stderr) is note, run.stderr


def test_timeline_on_athena_fills_intervals(logq, moto: str) -> None:
    queue_result(
        moto,
        [("bucket", "timestamp with time zone"), ("requests", "bigint"), ("errors_4xx", "bigint"),
         ("errors_5xx", "bigint")],
        [["2026-11-28 00:00:00.000 UTC", 5, 1, 2], ["2026-11-28 00:02:00.000 UTC", 7, 0, 0]],
    )  # fmt: skip
    run = logq(
        "timeline", "--since", "2026-11-28T00:00:00Z", "--until", "2026-11-28T00:03:00Z",
        "-f", "json", *ATHENA,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert [(r["bucket"], r["requests"], r["errors_5xx"]) for r in run.json()] == [
        ("2026-11-28T00:00:00.000Z", 5, 2),
        ("2026-11-28T00:01:00.000Z", 0, 0),
        ("2026-11-28T00:02:00.000Z", 7, 0),
    ]


def test_timeline_on_athena_counts_from_since(logq, moto: str) -> None:
    """--since inside an interval: Athena is asked for rows from --since (not from the
    interval's start) and the first row, Athena's naive UTC interval start, is labelled
    --since and said to be partial."""
    queue_result(
        moto,
        [("bucket", "timestamp"), ("requests", "bigint"), ("errors_4xx", "bigint"),
         ("errors_5xx", "bigint"), ("no_response", "bigint")],
        [["2026-11-28 00:00:00.000", 5, 1, 2, 1], ["2026-11-28 00:01:00.000", 7, 0, 0, 0]],
    )  # fmt: skip
    run = logq(
        "timeline", "--since", "2026-11-28T00:00:30Z", "--until", "2026-11-28T00:02:00Z",
        "-f", "json", *ATHENA,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert "2026-11-28 00:00:30.000" in last_execution(moto)["Query"]
    assert [(r["bucket"], r["requests"], r["no_response"]) for r in run.json()] == [
        ("2026-11-28T00:00:30.000Z", 5, 1),
        ("2026-11-28T00:01:00.000Z", 7, 0),
    ]
    assert "the first interval is partial: the range starts at 00:00:30 UTC" in run.stderr


def test_trace_on_athena_finds_a_request_in_the_newest_hour(logq, moto: str) -> None:
    """Athena returns naive UTC timestamps: the first, newest-hour look compared them with an
    aware bound and crashed, the usual case of a trace (the request is recent)."""
    from datetime import UTC, datetime, timedelta

    recent = (datetime.now(UTC) - timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S.000")
    queue_result(
        moto,
        [("timestamp", "timestamp"), ("service", "varchar"), ("container_name", "varchar"),
         ("method", "varchar"), ("path", "varchar"), ("response_code", "integer"),
         ("response_flags", "varchar"), ("duration_ms", "integer"),
         ("upstream_service_time_ms", "integer"), ("upstream_host", "varchar"),
         ("authority", "varchar")],
        [[recent, "recipe", "envoy", "GET", "/r", 200, "-", 5, 4, "10.0.0.1:80", "recipe"]],
    )  # fmt: skip
    before = execution_count(moto)
    run = logq("trace", "abc-123", "-f", "json", *ATHENA)
    assert run.exit_code == 0, run.stderr
    assert [(r["service"], r["path"]) for r in run.json()] == [("recipe", "/r")]
    assert execution_count(moto) == before + 1  # found in the newest hour: the day is not read


def test_tail_and_services_on_athena(logq, moto: str) -> None:
    queue_result(
        moto,
        [("timestamp", "timestamp"), ("service", "varchar"), ("container_name", "varchar"),
         ("stream", "varchar"), ("message", "varchar")],
        [["2026-11-28 00:00:02.000", "recipe", "app", "stderr", "second"],
         ["2026-11-28 00:00:01.000", "recipe", "app", "stdout", "first"]],
    )  # fmt: skip
    run = logq("tail", "-s", "recipe", "--grep", "x' OR '1'='1", "-f", "json", *ATHENA)
    assert run.exit_code == 0, run.stderr
    assert [r["message"] for r in run.json()] == ["first", "second"]
    assert "regexp_like(message, 'x'' OR ''1''=''1')" in last_execution(moto)["Query"]
    queue_result(
        moto,
        [("service", "varchar"), ("access_hours", "bigint"), ("log_hours", "bigint"),
         ("newest", "timestamp"), ("ahead", "timestamp")],
        [["recipe", 10, 4, "2026-11-28 00:00:02.000", None],
         ["search", 3, 0, "2026-11-28 00:00:01.000", "2099-01-01 00:00:00.000"]],
    )  # fmt: skip
    run = logq("services", "-f", "json", *ATHENA)
    assert run.exit_code == 0, run.stderr
    assert run.json() == [
        {"service": "recipe", "access_hours": 10, "log_hours": 4,
         "newest": "2026-11-28T00:00:02.000Z"},
        {"service": "search", "access_hours": 3, "log_hours": 0,
         "newest": "2026-11-28T00:00:01.000Z"},
    ]  # fmt: skip
    # Rows ahead of this clock are named apart, as the local engine does, not as the newest.
    assert "search also has rows (rows stamped up to 2099-01-01T00:00:00.000Z" in run.stderr
    assert "recipe also has rows" not in run.stderr
    sent = last_execution(moto)["Query"]
    assert "FROM container_logs" in sent and "count(DISTINCT dt) AS access_hours" in sent
    now = re.search(r"\"timestamp\" <= CAST\('([0-9: .-]+)' AS timestamp\)", sent)
    assert now is not None, sent
    sent_now = datetime.fromisoformat(now[1] + "+00:00")
    assert abs(sent_now - datetime.now(UTC)) < timedelta(minutes=1)


def test_athena_settings_from_environment(logq, moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGQ_ENGINE", "athena")
    monkeypatch.setenv("LOGQ_ATHENA_OUTPUT", "s3://env-results/q/")
    monkeypatch.setenv("LOGQ_ATHENA_DATABASE", "envdb")
    monkeypatch.setenv("LOGQ_ATHENA_WORKGROUP", "primary")
    queue_result(moto, [("path", "varchar")], [])
    run = logq("errors", "-s", "recipe", "-f", "json")
    assert run.exit_code == 0, run.stderr
    sent = last_execution(moto)
    assert sent["QueryExecutionContext"]["Database"] == "envdb"
    assert sent["ResultConfiguration"]["OutputLocation"].startswith("s3://env-results/q/")
    assert sent["WorkGroup"] == "primary"
    assert "no matching rows" in run.stderr and "logq services --engine athena" in run.stderr


def test_athena_api_error_is_one_line_without_pyathena_traceback(
    moto_server: str, subprocess_env: dict[str, str]
) -> None:
    """pyathena logs a traceback for every failed API call; a real `logq` process (no pytest
    log capture) must show only logq's own one-line error."""
    args = ["top", "--since", "1h", "--engine", "athena", "--athena-workgroup", "no-such-workgroup"]
    proc = _logq_process(moto_server, subprocess_env, args)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "Failed to" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("logq: error:")]
    assert len(errors) == 1 and "WorkGroup" in errors[0], err


def test_tail_grep_goes_to_athena_unjudged(logq, moto: str) -> None:
    """Athena's regular expressions are not Python's: logq does not refuse a look-ahead or
    ``\\p{L}`` for Athena (Athena itself says if a pattern is bad)."""
    for pattern in ("(?=x)err", r"\p{L}+"):
        queue_result(moto, [("timestamp", "timestamp"), ("message", "varchar")], [])
        run = logq("tail", "-s", "recipe", "--grep", pattern, "-f", "json", *ATHENA)
        assert run.exit_code == 0, run.stderr
        assert f"regexp_like(message, '{pattern}')" in last_execution(moto)["Query"]


def test_services_has_the_same_columns_and_answer_on_both_engines(
    logq, warehouse: Warehouse
) -> None:
    """Before: local gave service, access_hours, log_hours, newest and Athena service, newest,
    access_lines, log_lines. The statement sent to Athena (seen with --dry-run) is run here on
    DuckDB over the same warehouse and must give the local command's rows, column for column."""
    from athena.engines.local import LocalEngine
    from athena.partitions import plan
    from athena.queries import load
    from athena.timerange import TimeRange, sql_timestamp
    from athena.warehouse import open_warehouse
    from cli.commands.tables import split_ahead

    rng = ["--since", "2026-11-27T23:00:00Z", "--until", "2026-11-28T01:00:00Z"]
    local = logq("services", *rng, "-f", "json", "--warehouse", warehouse.uri)
    assert local.exit_code == 0, local.stderr
    dry = logq("services", *rng, "--dry-run", *ATHENA)
    assert "count(DISTINCT dt) AS access_hours" in dry.stdout
    assert "dt BETWEEN '2026-11-27-23' AND '2026-11-28-00'" in dry.stdout

    span = TimeRange.parse(rng[1], rng[3])
    wh = open_warehouse(warehouse.uri)
    scopes = {t: plan(wh, t, None, None) for t in ("envoy_access", "container_logs")}
    params = {**span.sql_params(), "all_services": True, "services": [""]}
    params["now"] = sql_timestamp(datetime.now(UTC))
    result = LocalEngine(warehouse.uri).run(load("services").text, params, scopes)
    assert split_ahead(result) == {}
    assert result.columns == list(local.json()[0])
    assert result.columns == ["service", "access_hours", "log_hours", "newest"]
    on_duckdb = [
        {"service": r[0], "access_hours": r[1], "log_hours": r[2],
         "newest": r[3].strftime("%Y-%m-%dT%H:%M:%S.") + f"{r[3].microsecond // 1000:03d}Z"}
        for r in result.rows
    ]  # fmt: skip
    assert on_duckdb == local.json()
    assert {r["access_hours"] for r in on_duckdb} == {2}


def test_athena_output_must_be_s3(logq) -> None:
    """A local path for --athena-output is refused before anything runs (exit 2, one line)."""
    run = logq("errors", "--engine", "athena", "--athena-output", "/tmp/res", "--since", "1h")
    assert run.exit_code == 2
    assert "--athena-output '/tmp/res' is not an S3 location" in run.stderr
    assert "s3://bucket/prefix/" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("flag", ["--athena-database", "--athena-workgroup", "--athena-region"])
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "query"])
def test_an_empty_athena_option_is_refused(logq, flag: str, dry: bool) -> None:
    """An empty value (an unset variable in a script): the dry run printed "(database )" and
    an empty region counted as none given, without a word."""
    more = ["--dry-run"] if dry else []
    run = logq("errors", "--engine", "athena", flag, " ", "--since", "1h", "-s", "web", *more)
    assert run.exit_code == 2, run.stderr
    assert run.stdout == ""
    assert (
        run.stderr
        == f"logq: error: {flag} is empty (an unset variable?); give a value or leave it out\n"
    )


@pytest.mark.parametrize("region", ["'; drop", "us east 1", "-us-east-1", "eu-west-1\n"])
def test_a_malformed_athena_region_names_the_option(logq, region: str) -> None:
    """botocore refused it in words that named no option ("Provided region_name ... doesn't
    match a supported format"); it is refused before anything runs, saying which option."""
    run = logq("errors", "--engine", "athena", "--athena-region", region, "--since", "1h",
               "--athena-output", "s3://results/logq/", "-s", "web")  # fmt: skip
    assert run.exit_code == 2 and run.stdout == "", run.stderr
    assert run.stderr.startswith("logq: error: --athena-region (or LOGQ_ATHENA_REGION) ")
    assert "is not an AWS region name; give one such as us-east-1" in run.stderr, run.stderr
    assert len(run.stderr.splitlines()) == 1 and "Traceback" not in run.stderr


@pytest.mark.parametrize("name", ["AWS_REGION", "AWS_DEFAULT_REGION"])
def test_a_malformed_region_variable_is_named(logq, monkeypatch: pytest.MonkeyPatch, name) -> None:
    """Without --athena-region the region is boto3's, from these variables: a malformed one got
    botocore's words, naming no variable."""
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("LOGQ_ATHENA_REGION", raising=False)
    monkeypatch.setenv(name, "us east 1")
    run = logq("errors", "--engine", "athena", "--since", "1h",
               "--athena-output", "s3://results/logq/", "-s", "web")  # fmt: skip
    assert run.exit_code == 2 and run.stdout == "", run.stderr
    assert run.stderr == (
        f"logq: error: {name} 'us east 1' is not an AWS region name; set it to one such as "
        "us-east-1, or give --athena-region\n"
    )


def test_athena_without_credentials_says_what_to_check(
    logq, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """No credentials anywhere: botocore's words plus the same advice S3 errors get."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never AWS itself
    run = logq("errors", "--since", "1h", *ATHENA)
    assert run.exit_code == 1
    assert "Unable to locate credentials" in run.stderr
    assert "check the credentials (AWS_ACCESS_KEY_ID" in run.stderr
    assert "aws sts get-caller-identity" in run.stderr and len(run.stderr.splitlines()) == 1


def fail_on_athena(monkeypatch: pytest.MonkeyPatch, marker: str, reason: str) -> None:
    """Queries whose text holds ``marker`` end FAILED with ``reason``, as Athena reports it in
    the execution's StateChangeReason. moto runs every query to SUCCEEDED, so the execution
    pyathena reads from moto is changed there; the API calls, pyathena's polling and logq's
    handling of the failure are the real ones."""
    from pyathena.model import AthenaQueryExecution

    real_init = AthenaQueryExecution.__init__

    def init(self: AthenaQueryExecution, response: dict) -> None:
        real_init(self, response)
        if marker in (self.query or "") and self.state == "SUCCEEDED":
            self._state, self._state_change_reason = "FAILED", reason

    monkeypatch.setattr(AthenaQueryExecution, "__init__", init)


COLUMN_NOT_FOUND = (
    "COLUMN_NOT_FOUND: line 1:8: Column 'nosuchcol' cannot be resolved or requester is not "
    "authorized to access requested resources"
)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (COLUMN_NOT_FOUND, 2),
        ("TABLE_NOT_FOUND: line 1:15: Table 'awsdatacatalog.logs.nosuch' does not exist", 2),
        ("SYNTAX_ERROR: line 1:8: Column 'nosuchcol' cannot be resolved", 2),
        ("line 1:1: mismatched input 'SELEC'. Expecting: 'ALTER', 'ANALYZE', 'CALL'", 2),
        ("HIVE_BAD_DATA: Error reading file s3://b/wh/x.parquet", 1),
        ("HIVE_CANNOT_OPEN_SPLIT: Error opening Hive split s3://b/x.parquet: Access Denied", 1),
        ("GENERIC_INTERNAL_ERROR: null", 1),
    ],
)
def test_sql_refused_by_athena_is_bad_input(
    logq, moto: str, monkeypatch: pytest.MonkeyPatch, reason: str, code: int
) -> None:
    """As locally: the statement refused as written exits 2 (running it again cannot help);
    a failure to read the data or of the service exits 1."""
    fail_on_athena(monkeypatch, "nosuchcol", reason)
    run = logq("sql", "SELECT nosuchcol FROM envoy_access", *ATHENA)
    assert run.exit_code == code, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("logq: error:")]
    assert len(errors) == 1 and reason in errors[0], run.stderr


def refuse_on_submit(monkeypatch: pytest.MonkeyPatch, marker: str, message: str) -> None:
    """StartQueryExecution of a query whose text holds ``marker`` is refused with an
    InvalidRequestException, as Athena refuses a statement that does not parse (moto takes
    every query); the other API calls go to moto."""
    from botocore.client import BaseClient
    from botocore.exceptions import ClientError

    real = BaseClient._make_api_call

    def call(self: BaseClient, operation: str, params: dict) -> dict:
        if operation == "StartQueryExecution" and marker in params.get("QueryString", ""):
            error = {"Code": "InvalidRequestException", "Message": message}
            raise ClientError({"Error": error}, operation)
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", call)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("line 1:1: mismatched input 'SELEC'. Expecting: 'ALTER', 'ANALYZE', 'CALL'", 2),
        ("line 1:20: extraneous input ',' expecting {<EOF>, ';'}", 2),
        ("No output location provided. An output location is required", 1),
    ],
)
def test_sql_refused_at_submission_by_athena(
    logq, moto: str, monkeypatch: pytest.MonkeyPatch, message: str, code: int
) -> None:
    """Athena refuses a statement that does not parse when it is submitted, not as a FAILED
    query: exit 2 like any SQL that cannot run as written; another refusal of the request (no
    output location) is no fault of the statement: exit 1."""
    refuse_on_submit(monkeypatch, "nosuchcol", message)
    run = logq("sql", "SELEC nosuchcol FROM envoy_access", *ATHENA)
    assert run.exit_code == code, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("logq: error:")]
    assert len(errors) == 1 and message in errors[0], run.stderr


def test_canned_query_refused_by_athena_is_an_engine_failure(
    logq, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logq's own SQL refused is logq's bug, not the user's input: exit 1."""
    fail_on_athena(monkeypatch, "envoy_access", COLUMN_NOT_FOUND)
    run = logq("errors", "-s", "recipe", "--since", "1h", *ATHENA)
    assert run.exit_code == 1, run.stderr
    assert "COLUMN_NOT_FOUND" in run.stderr


def _logq_process(
    moto_server: str, env: dict[str, str], args: list[str], prelude: str = ""
) -> subprocess.Popen[str]:
    """A real ``logq ARGS`` process against moto, through the console entry (``prelude``:
    Python run before logq). It starts with SIGHUP at its default, as from a terminal's shell:
    a test run under ``nohup`` would pass on SIGHUP ignored, and logq rightly keeps it so."""
    env = {**env, **moto_env(moto_server)}
    env.pop("AWS_ENDPOINT_URL", None)
    env.pop("LOGQ_DEBUG", None)
    code = (
        "import signal\nsignal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
        + prelude
        + "\nimport sys\nfrom cli.launch import main\nsys.argv[0] = 'logq'\nmain()\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_query(moto_server: str, marker: str, proc: subprocess.Popen[str]) -> dict:
    """The execution whose text holds ``marker``, once moto has it (the process is alive).
    Each execution is read once (its text does not change): moto holds the session's every
    query, and this polls every 0.05 s while logq starts."""
    deadline = time.monotonic() + 60
    other: set[str] = set()
    while time.monotonic() < deadline:
        for query_id in execution_ids(moto_server):
            if query_id not in other:
                found = execution(moto_server, query_id)
                if marker in found["Query"]:
                    return found
                other.add(query_id)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no query with {marker!r} reached moto")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_stops_the_athena_query(
    moto_server: str, subprocess_env: dict[str, str], signum: signal.Signals
) -> None:
    """`timeout 30 logq ...`, a CI job's kill, a closed terminal: the query must not go on
    scanning and billing on Athena after logq is gone. Exit 128 + the signal, as shells say."""
    set_progression(moto_server, 30)
    marker = f"/stopped-by-{signum.name}-{uuid.uuid4().hex[:8]}"
    try:
        proc = _logq_process(
            moto_server, subprocess_env, ["errors", "--path", marker, "--since", "1h", *ATHENA]
        )
        running = _wait_for_query(moto_server, marker, proc)
        assert running["Status"]["State"] in ("QUEUED", "RUNNING")
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=60)
    finally:
        set_progression(moto_server, None)
    qid = running["QueryExecutionId"]
    assert proc.returncode == 128 + signum, err
    assert f"athena: cancelling query {qid} ({signum.name})" in err
    assert f"logq: stopped by {signum.name}" in err and "Traceback" not in err
    state = execution(moto_server, qid)
    assert state["Status"]["State"] == "CANCELLED"


#: Python run in the logq process first: SIGTERM arrives while StartQueryExecution is in flight
#: (sent from inside the request, before Athena answered with the query's id).
SIGTERM_DURING_START = """
import os, signal
from botocore.client import BaseClient
_real = BaseClient._make_api_call
def _call(self, operation, params):
    if operation == "StartQueryExecution":
        os.kill(os.getpid(), signal.SIGTERM)
    return _real(self, operation, params)
BaseClient._make_api_call = _call
"""


def test_a_signal_while_the_query_starts_stops_it_once_it_has_an_id(
    moto_server: str, subprocess_env: dict[str, str]
) -> None:
    """Before, a signal that landed while StartQueryExecution was in flight left the query
    that request started running, with no id to stop it by."""
    set_progression(moto_server, 30)
    marker = f"/stopped-while-starting-{uuid.uuid4().hex[:8]}"
    try:
        proc = _logq_process(
            moto_server,
            subprocess_env,
            ["errors", "--path", marker, "--since", "1h", *ATHENA],
            prelude=SIGTERM_DURING_START,
        )
        _out, err = proc.communicate(timeout=60)
    finally:
        set_progression(moto_server, None)
    assert proc.returncode == 143, err
    started = [e for e in executions(moto_server) if marker in e["Query"]]
    assert len(started) == 1 and started[0]["Status"]["State"] == "CANCELLED", started
    assert f"cancelling query {started[0]['QueryExecutionId']} (SIGTERM)" in err


@pytest.mark.parametrize(
    ("reason", "advice"),
    [
        (
            "TABLE_NOT_FOUND: line 5:6: Table 'awsdatacatalog.logs.envoy_access' does not exist",
            "logq ddl --warehouse s3://BUCKET/PREFIX --athena-database logs`, or run "
            "logq-aggregator with --athena-database logs",
        ),
        (
            "SCHEMA_NOT_FOUND: line 5:6: Schema 'logs' does not exist",
            "no logq tables in database 'logs'",
        ),
        (
            "HIVE_EXCEEDED_PARTITION_LIMIT: Query over table 'logs.envoy_access' can potentially "
            "read more than 1000000 partitions",
            "narrow --since/--until or add --service",
        ),
        (
            "Query exceeded the maximum number of projected partitions",
            "narrow --since/--until or add --service",
        ),
    ],
)
def test_athena_failures_say_what_to_do_next(
    logq, moto: str, monkeypatch: pytest.MonkeyPatch, reason: str, advice: str
) -> None:
    """Missing tables: how to create them; too many partitions: how to narrow the query. On
    the one error line, whole (the line is cut in the middle past 400 characters)."""
    fail_on_athena(monkeypatch, "envoy_access", reason)
    run = logq("errors", "--since", "100d", *ATHENA)
    assert run.exit_code == 1, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("logq: error:")]
    assert len(errors) == 1 and reason in errors[0] and advice in errors[0], run.stderr
    assert "characters ...]" not in errors[0]


@pytest.fixture
def table_enum(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int | None], list[dict]]]:
    """``table_enum(n)``: Glue's GetTable (the catalog Athena projects from) answers that the
    table's ``projection.service.values`` holds ``n`` services (None: the table is not
    found); the other API calls go to moto. Returns the requests it answered."""
    from botocore.client import BaseClient
    from botocore.exceptions import ClientError

    from athena.projection import forget_enums

    real = BaseClient._make_api_call
    asked: list[dict] = []

    def answer(services: int | None) -> list[dict]:
        def call(self: BaseClient, operation: str, params: dict) -> dict:
            if operation != "GetTable":
                return real(self, operation, params)
            asked.append(params)
            if services is None:
                error = {"Code": "EntityNotFoundException", "Message": "Table not found"}
                raise ClientError({"Error": error}, operation)
            values = ",".join(f"svc{i}" for i in range(services))
            parameters = {
                "projection.enabled": "true",
                "projection.service.type": "enum",
                "projection.service.values": values,
            }
            return {"Table": {"Name": params["Name"], "Parameters": parameters}}

        forget_enums()
        monkeypatch.setattr(BaseClient, "_make_api_call", call)
        return asked

    yield answer
    forget_enums()


def _projected(stdout: str) -> tuple[int, int, int]:
    found = re.search(r"-- partitions \(([\d,]+) = ([\d,]+) hours x ([\d,]+) services?", stdout)
    assert found, stdout
    count, hours, services = (int(g.replace(",", "")) for g in found.groups())
    return count, hours, services


def test_dry_run_counts_every_service_of_the_enum(logq, moto: str, table_enum) -> None:
    """Athena projects hours x every service in projection.service.values when no --service
    is given: the count said 2,401 for 100 days however many services there were."""
    asked = table_enum(120)
    run = logq("errors", "--since", "100d", "--dry-run", *ATHENA)
    assert run.exit_code == 0, run.stderr
    count, hours, services = _projected(run.stdout)
    assert hours in (2400, 2401) and services == 120 and count == hours * 120
    assert asked == [{"DatabaseName": "logs", "Name": "envoy_access"}]
    one = logq("errors", "-s", "recipe", "--since", "100d", "--dry-run", *ATHENA)
    assert _projected(one.stdout)[2] == 1 and len(asked) == 1  # named: no lookup


def test_over_athenas_partition_limit_is_refused_before_running(
    logq, moto: str, table_enum
) -> None:
    """2,401 hours x 500 services = 1.2 million partitions: Athena would queue, plan and fail
    the query (HIVE_EXCEEDED_PARTITION_LIMIT); refused before anything is sent (exit 2)."""
    table_enum(500)
    before = execution_count(moto)
    for dry in ([], ["--dry-run"]):
        run = logq("errors", "--since", "100d", *dry, *ATHENA)
        assert run.exit_code == 2, run.stderr
        assert "over its limit of 1,000,000" in run.stderr and "x 500 services" in run.stderr
        assert "narrow --since/--until (at most 2,000 hours" in run.stderr
        assert "or add --service" in run.stderr and run.stdout == ""
    assert execution_count(moto) == before
    queue_result(moto, [("path", "varchar")], [])
    named = logq("errors", "-s", "svc1", "--since", "100d", "-f", "json", *ATHENA)
    assert named.exit_code == 0, named.stderr
    assert execution_count(moto) == before + 1


def test_many_projected_partitions_warn_and_an_unknown_enum_refuses_nothing(
    logq, moto: str, table_enum
) -> None:
    table_enum(200)  # 2,401 x 200 = 480,200: under the limit, over the warning
    queue_result(moto, [("path", "varchar")], [])
    run = logq("errors", "--since", "100d", "-f", "json", *ATHENA)
    assert run.exit_code == 0, run.stderr
    assert "logq: warning: Athena projects" in run.stderr and "x 200 services" in run.stderr
    table_enum(None)  # the enum cannot be read: the count is unknown, said, not guessed
    dry = logq("errors", "--since", "100d", "--dry-run", *ATHENA)
    assert dry.exit_code == 0, dry.stderr
    assert re.search(r"-- partitions \(2,40[01] hours x \? services", dry.stdout), dry.stdout
    assert "-- services not counted: table logs.envoy_access not read" in dry.stdout


def test_projected_hours_are_those_of_the_dt_projection() -> None:
    """The dt projection runs from 2020 to the current hour: Athena projects no hour outside."""
    from datetime import UTC, datetime

    from athena.projection import projected_hours
    from athena.timerange import TimeRange

    now = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
    assert projected_hours(TimeRange.parse("100d", None, now=now), now) == 2401
    ancient = TimeRange.parse("0001-01-01T00:00:00Z", "2020-01-01T02:00:00Z", now=now)
    assert projected_hours(ancient, now) == 2  # 2020-01-01-00 and -01
    ahead = TimeRange.parse("2026-11-28T11:00:00Z", "2026-12-01T00:00:00Z", now=now)
    assert projected_hours(ahead, now) == 2  # 11:00 and the current hour, 12:00
    assert projected_hours(TimeRange.parse("2019-01-01", "2019-02-01", now=now), now) == 0


def test_sql_numbers_on_athena_are_json_numbers_as_on_duckdb(
    logq, moto: str, warehouse: Warehouse
) -> None:
    """Athena sends every value as text; its column types (the result metadata) make the
    numbers and booleans JSON numbers and booleans, as the local engine's are."""
    sql = (
        "SELECT CAST(1 AS tinyint) AS t, CAST(2 AS smallint) AS s, 3 AS i, "
        "CAST(9007199254740993 AS bigint) AS b, CAST(1.5 AS real) AS r, 2.25E0 AS d, "
        "CAST(12.50 AS decimal(10, 2)) AS dec, CAST(7 AS decimal(10, 0)) AS whole, true AS ok"
    )
    local = logq("sql", sql, "-f", "json", "--warehouse", warehouse.uri)
    assert local.exit_code == 0, local.stderr
    queue_result(
        moto,
        [("t", "tinyint"), ("s", "smallint"), ("i", "integer"), ("b", "bigint"),
         ("r", "real"), ("d", "double"), ("dec", "decimal"), ("whole", "decimal"),
         ("ok", "boolean")],
        [["1", "2", "3", "9007199254740993", "1.5", "2.25", "12.50", "7", "true"]],
    )  # fmt: skip
    remote = logq("sql", sql, "-f", "json", *ATHENA)
    assert remote.exit_code == 0, remote.stderr
    assert remote.json() == local.json()
    assert remote.json()[0]["b"] == 9007199254740993 and remote.json()[0]["whole"] == 7


def test_sql_nested_values_on_athena_are_typed_as_the_statement_declares(
    logq, moto: str, warehouse: Warehouse
) -> None:
    """Athena's metadata types a nested column only as array/map/row and pyathena guessed the
    rest: a map's and a row's numbers came out as text ({"a": "1"}), a VARCHAR array's digits
    as numbers. The statement's own types (sqlglot's inference) make the JSON the local
    engine's; Athena's text of each value is what moto sends, as Athena would."""
    sql = (
        "SELECT map(ARRAY['a', 'b'], ARRAY[1, 2]) AS m, ROW(1, 'x', true) AS r, "
        "ARRAY['1', '22'] AS texts, ARRAY[1.5E0, 2E0] AS doubles, "
        "array_agg(response_code) AS codes FROM envoy_access WHERE response_code = 503 "
        "AND service = 'nothing-here'"
    )
    local = logq("sql", sql, "-f", "json", "--warehouse", warehouse.uri)
    assert local.exit_code == 0, local.stderr
    want = {
        "m": {"a": 1, "b": 2},
        "r": {"field0": 1, "field1": "x", "field2": True},
        "texts": ["1", "22"],
        "doubles": [1.5, 2.0],
        "codes": None,
    }
    assert local.json() == [want]
    queue_result(
        moto,
        [("m", "map"), ("r", "row"), ("texts", "array"), ("doubles", "array"),
         ("codes", "array")],
        [["{a=1, b=2}", "{field0=1, field1=x, field2=true}", "[1, 22]", "[1.5, 2.0]", None]],
    )  # fmt: skip
    remote = logq("sql", sql, "-f", "json", *ATHENA)
    assert remote.exit_code == 0, remote.stderr
    assert remote.json() == [want]
    queue_result(moto, [("codes", "array")], [["[503, 502]"]])
    codes = logq("sql", "SELECT array_agg(response_code) AS codes FROM envoy_access", "-f",
                 "csv", *ATHENA)  # fmt: skip
    assert codes.stdout.splitlines() == ["codes", '"[503, 502]"']


def test_an_athena_answer_in_a_logq_process_loads_neither_pandas_nor_numpy(
    logq, moto: str, subprocess_env: dict[str, str]
) -> None:
    """The console entry keeps numpy out of ``logq`` (athena/unused_imports.py), which never
    uses it: pyathena's rows and their typed values (a timestamp, an array, a map) need neither
    numpy nor pandas, and the answer is the in-process one."""
    columns = [("t", "timestamp"), ("codes", "array(integer)"), ("m", "map(varchar,integer)")]
    row = ["2026-11-28 00:00:00.123", "[1, 2]", "{a=1}"]
    sql = "SELECT t, codes, m FROM envoy_access"
    said_at_exit = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('loaded:', [m for m in ('pandas', 'numpy')\n"
        "                                          if m in sys.modules], file=sys.stderr))\n"
    )
    queue_result(moto, columns, [row])
    proc = _logq_process(moto, subprocess_env, ["sql", sql, "-f", "json", *ATHENA], said_at_exit)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err.splitlines()[-1] == "loaded: []", err
    queue_result(moto, columns, [row])
    assert json.loads(out) == logq("sql", sql, "-f", "json", *ATHENA).json()


def test_a_local_query_over_max_scan_bytes_exits_2_as_bad_input(logq, warehouse: Warehouse) -> None:
    """Over budget, the same query scans the same bytes however often it runs: exit 2, which a
    script does not retry (1 is an engine failure that retrying may mend)."""
    run = logq(
        "errors", "--since", "2026-11-27T22:00:00Z", "--until", "2026-11-28T02:00:00Z",
        "--max-scan-bytes", "10", "--warehouse", warehouse.uri, "--engine", "local",
    )  # fmt: skip
    assert run.exit_code == 2, run.stderr
    assert "max-scan-bytes" in run.stderr


def test_the_help_says_a_query_over_max_scan_bytes_exits_2(logq) -> None:
    """The exit status paragraph of every query command's help said 2 for bad input and 1 for
    engine failures: a refusal over --max-scan-bytes (exit 2) read as an engine failure, one
    that a retry may mend."""
    text = " ".join(logq("errors", "--help").stdout.split())
    assert "2 for bad input (a query over --max-scan-bytes too" in text, text
