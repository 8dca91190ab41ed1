"""A ``--service`` the Athena table's ``service`` enum lacks is named, with the fix (moto).

Athena reads only the partitions its projection enumerates; a DDL applied by hand (`logq ddl`)
fixes the enum at that moment, so a later service's data is in S3 but not in Athena's answers.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable

import pytest

from athena import projection
from athena.projection import ServiceEnum, service_enum
from tests.athena.athena_moto import REGION, athena_env, glue_table, queue_result, set_progression

pytestmark = pytest.mark.integration

WAREHOUSE = "s3://logs-bucket/prod"
ERRORS_COLUMNS = [
    ("service", "varchar"), ("path", "varchar"), ("response_code", "integer"),
    ("response_flags", "varchar"), ("count", "bigint"), ("path_share_pct", "double"),
    ("path_requests", "bigint"), ("total_rows", "bigint"),
]  # fmt: skip


def _projection(services: str) -> dict[str, str]:
    """Table properties as `logq ddl` writes them (athena/ddl.py), with this service list."""
    return {
        "projection.enabled": "true",
        "projection.service.type": "enum",
        "projection.service.values": services,
        "projection.dt.type": "date",
        "projection.dt.format": "yyyy-MM-dd-HH",
    }


@pytest.fixture
def moto(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    athena_env(monkeypatch, moto_server)
    set_progression(moto_server, None)
    return moto_server


@pytest.fixture
def database(moto: str) -> str:
    """A fresh Glue database whose envoy_access enum is ``recipe,users`` (the server is shared
    by the session: a name of its own keeps each test's tables apart)."""
    name = f"logs_{uuid.uuid4().hex[:8]}"
    location = WAREHOUSE + "/envoy_access/"
    glue_table(moto, name, "envoy_access", _projection("recipe,users"), location)
    return name


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables whose enum was looked up (the real lookup still runs)."""
    seen: list[str] = []

    def counted(database: str, table: str, region: str | None) -> ServiceEnum | None:
        seen.append(table)
        return service_enum(database, table, region)

    monkeypatch.setattr(projection, "service_enum", counted)
    return seen


def _athena(database: str) -> list[str]:
    return ["--engine", "athena", "--athena-output", "s3://results/", "--athena-database", database]


def test_every_service_outside_the_enum_says_why_and_how_to_fix(
    logq: Callable, moto: str, database: str, lookups: list[str]
) -> None:
    """`-s newsvc` where the enum has recipe,users: not "No results" with a hint to `logq
    services` (which reads the same enum), but the cause and the commands, exit 3."""
    queue_result(moto, ERRORS_COLUMNS, [])
    run = logq("errors", "-s", "newsvc", "--since", "1h", *_athena(database))
    assert run.exit_code == 3, (run.stdout, run.stderr)
    assert "'newsvc' is not in the service list (projection.service.values) of the Athena " \
        f"table {database}.envoy_access" in run.stderr  # fmt: skip
    assert f"`logq ddl --warehouse {WAREHOUSE} --athena-database {database}`" in run.stderr
    assert "aggregator with --athena-database" in run.stderr
    assert f"`--engine local --warehouse {WAREHOUSE}`" in run.stderr
    assert "No results: Athena reads no partition of 'newsvc'" in run.stdout
    assert "logq services" not in run.stdout + run.stderr
    assert lookups == ["envoy_access"]


def test_a_partly_unknown_list_names_the_one_left_out(
    logq: Callable, moto: str, database: str, lookups: list[str]
) -> None:
    queue_result(moto, ERRORS_COLUMNS, [["recipe", "/api", 503, "UH", 4, 50.0, 8, 1]])
    run = logq("errors", "-s", "recipe,newsvc", "--since", "1h", "-f", "json", *_athena(database))
    assert run.exit_code == 0, run.stderr
    assert [r["service"] for r in run.json()] == ["recipe"]
    assert "'newsvc' is not in the service list" in run.stderr
    assert "showing recipe only" in run.stderr
    assert lookups == ["envoy_access"]
    # In a table, one service left: its name is not repeated on every row (as locally).
    queue_result(moto, ERRORS_COLUMNS, [["recipe", "/api", 503, "UH", 4, 50.0, 8, 1]])
    run = logq("errors", "-s", "recipe,newsvc", "--since", "1h", *_athena(database))
    assert run.exit_code == 0, run.stderr
    assert "/api" in run.stdout and "recipe" not in run.stdout


def test_json_empty_answer_with_a_typo_suggests_the_name(
    logq: Callable, moto: str, database: str
) -> None:
    queue_result(moto, ERRORS_COLUMNS, [])
    run = logq("errors", "-s", "recipee", "--since", "1h", "-f", "json", *_athena(database))
    assert run.exit_code == 3 and run.json() == []
    assert "did you mean 'recipe'?" in run.stderr
    assert "logq: no results: Athena reads no partition of 'recipee'" in run.stderr


def test_known_services_and_no_service_add_nothing(
    logq: Callable, moto: str, database: str, lookups: list[str]
) -> None:
    """Services in the enum: no note, the usual hint; no --service: no lookup at all."""
    queue_result(moto, ERRORS_COLUMNS, [])
    run = logq("errors", "-s", "users", "--since", "1h", *_athena(database))
    assert run.exit_code == 0 and "service list" not in run.stderr
    assert "`logq services --engine athena --since 1d`" in run.stdout
    assert lookups == ["envoy_access"]
    queue_result(moto, ERRORS_COLUMNS, [])
    run = logq("errors", "--since", "1h", *_athena(database))
    assert run.exit_code == 0, run.stderr
    assert lookups == ["envoy_access"]  # no second lookup


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreadable_enum_changes_nothing(
    logq: Callable, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No such table in Glue, or Glue unreachable (as with a denied permission): the query
    runs and answers as before, with no note and exit 0."""
    for endpoint in (moto, f"http://127.0.0.1:{_closed_port()}"):
        monkeypatch.setenv("AWS_ENDPOINT_URL_GLUE", endpoint)
        queue_result(moto, ERRORS_COLUMNS, [])
        run = logq("errors", "-s", "newsvc", "--since", "1h", *_athena("no_such_db"))
        assert run.exit_code == 0, run.stderr
        assert "service list" not in run.stderr
        assert "`logq services --engine athena --since 1d`" in run.stdout


def test_enum_read_from_glue(moto: str) -> None:
    """The list and the warehouse come from the table's properties and LOCATION; a table
    without an enum projection gives None (Athena is not limited to a list then)."""
    name = f"db_{uuid.uuid4().hex[:8]}"
    glue_table(moto, name, "envoy_access", _projection("a, b,c"), "s3://bkt/wh/envoy_access/")
    assert service_enum(name, "envoy_access", REGION) == ServiceEnum(("a", "b", "c"), "s3://bkt/wh")
    off = {**_projection("a"), "projection.enabled": "false"}
    glue_table(moto, name, "container_logs", off, "s3://bkt/elsewhere/")
    assert service_enum(name, "container_logs", REGION) is None
    assert service_enum(name, "missing", REGION) is None
    assert projection._warehouse_of("s3://bkt/other/", "envoy_access") is None
    assert projection._warehouse_of("s3://envoy_access/", "envoy_access") is None


def test_a_long_list_outside_the_enum_is_counted_end_to_end(
    logq: Callable, moto: str, database: str, compared: list[str]
) -> None:
    """300 values of 66 characters the enum lacks, with and without one it has: the note and
    the "no results" reason name two and count the rest (they listed all 300: 36 and 21 KB),
    and close names are looked for only for the two named (the exit statuses as before)."""
    from cli.service_names import NOTE_MAX_CHARS

    given = [f"svc-gateway-eu-west-1-canary-cluster-{i:04d}-checkout-service-v2-blue" for i in
             range(300)]  # fmt: skip
    bound = len("logq: note: ") + NOTE_MAX_CHARS
    queue_result(moto, ERRORS_COLUMNS, [["recipe", "/api", 503, "UH", 4, 50.0, 8, 1]])
    run = logq("errors", "-s", ",".join(["recipe", *given]), "--since", "1h", "-f", "json",
               *_athena(database))  # fmt: skip
    assert run.exit_code == 0 and [r["service"] for r in run.json()] == ["recipe"], run.stderr
    (note,) = [n for n in run.stderr.splitlines() if "service list" in n]
    assert note.startswith(
        f"logq: note: {given[0]!r}, {given[1]!r} and 298 more are not in the service list "
        f"(projection.service.values) of the Athena table {database}.envoy_access, so Athena "
        "reads none of their data; showing recipe only. "
    ), note
    assert len(note) <= bound, note
    assert [w for w in compared if w in given] == given[:2]  # click asks for its options too
    queue_result(moto, ERRORS_COLUMNS, [])
    run = logq("errors", "-s", ",".join(given), "--since", "1h", *_athena(database))
    assert run.exit_code == 3, (run.stdout, run.stderr)
    assert run.stdout == (
        f"No results: Athena reads no partition of {given[0]!r}, {given[1]!r} and 298 more: "
        f"not in the service list of {database}.envoy_access (see the note above)\n"
    )
    assert all(len(line) <= bound for line in run.stderr.splitlines()), run.stderr
