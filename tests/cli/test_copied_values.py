"""Values an engineer copies from the output or a script passes in (A1s18 #3, #5, #7a): a
printed route in ``--path``, an empty ``--service``, a name the writer would have rewritten.
The warehouses are written by the aggregator's own writer; answers are checked with pandas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.athena.factory import access_frame, logs_frame, utc, write_with_writer
from tests.cli.routes import route

START, END = utc(2026, 3, 1, 10), utc(2026, 3, 1, 12)
WIDE = ["--since", "2026-03-01T10:00:00Z", "--until", "2026-03-01T12:00:00Z"]


def items(tmp_path: Path) -> tuple[str, pd.DataFrame]:
    """Items and orders routes with numeric, hex and SKU ids, query strings, and paths one
    character away from a route (``/api/v1/items/12x``, ``/api/v1/itemsX/12``)."""
    frame = access_frame(900, START, END, ["recipe", "checkout"], seed=31)
    kinds = [
        "/api/v1/items/{i}",
        "/api/v1/items/{i}?page=2",
        "/api/v1/items/{i}/lines",
        "/api/v1/items/SKU-{i:05d}/lines",
        "/api/v1/items/{i}x",
        "/api/v1/itemsX/{i}",
        "/api/v1/orders/{i:020x}/lines",
        "/api/v1/orders/{i}",
    ]
    frame["path"] = [kinds[i % len(kinds)].format(i=i) for i in range(len(frame))]
    uri = str(tmp_path / "wh")
    write_with_writer(uri, "envoy_access", frame)
    write_with_writer(uri, "container_logs", logs_frame(30, START, END, ["café-ü"]), seq=2)
    return uri, frame.assign(route=frame["path"].map(route))


def _of_route(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """The rows whose route equals ``value`` or continues it by whole segments (any
    continuation when ``value`` ends in '/')."""
    if value.endswith("/"):
        return frame[frame["route"].str.startswith(value)]
    return frame[(frame["route"] == value) | frame["route"].str.startswith(value + "/")]


def test_a_printed_route_in_path_finds_its_requests(logq, tmp_path: Path) -> None:
    """`--path '/api/v1/items/{id}'`, copied from `errors`/`latency`/`top`, answered "No
    results" (a raw prefix no logged path starts with): it now takes the route and those
    under it, on every command that filters paths, and the answers match pandas."""
    uri, frame = items(tmp_path)
    common = [*WIDE, "-f", "json", "--limit", "1000", "--warehouse", uri]
    for value in ("/api/v1/items/{id}", "/api/v1/orders/{id}/lines", "/api/v1/items/{id}/"):
        want = _of_route(frame, value)
        assert len(want) > 50, value
        top = logq("top", "--path", value, *common)
        assert top.exit_code == 0, top.stderr
        got = {(r["service"], r["path"]): r["requests"] for r in top.json()}
        assert got == want.groupby(["service", "route"]).size().to_dict(), value
        latency = logq("latency", "--path", value, *common)
        assert sum(r["requests"] for r in latency.json()) == len(want), value
        errors = logq("errors", "--path", value, *common)
        assert sum(r["count"] for r in errors.json()) == int(
            (want["response_code"] >= 500).sum()
        ), value
        upstreams = logq("upstreams", "--path", value, *common)
        assert sum(r["requests"] for r in upstreams.json()) == len(want), value
    # The printed route itself in a table, as a person copies it from there.
    table = logq("errors", "--path", "/api/v1/items/{id}", *WIDE, "--warehouse", uri)
    assert table.exit_code == 0 and "/api/v1/items/{id}" in table.stdout, table.stderr
    assert "/api/v1/items/{id}x" not in table.stdout and "itemsX" not in table.stdout
    # A raw prefix keeps its meaning.
    raw = logq("top", "--path", "/api/v1/items/1", "--raw-paths", *common).json()
    assert raw and all(r["path"].startswith("/api/v1/items/1") for r in raw)


def test_a_route_is_a_bound_value_on_athena_too(logq) -> None:
    """On Athena the regex goes as a quoted literal (pyathena's escaping): a quote in the
    route cannot end the string."""
    run = logq("errors", "--path", "/x'; DROP TABLE t; --/{id}", "--engine", "athena",
               "-s", "recipe", "--dry-run", *WIDE)  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert "regexp_like(path, '^/x\\''\\; DROP TABLE t\\; \\-\\-/(?:[0-9]+|" in run.stdout


def test_a_placeholder_inside_a_segment_is_refused(logq, tmp_path: Path) -> None:
    uri, _ = items(tmp_path)
    run = logq("latency", "--path", "/api/v1/items/x{id}", *WIDE, "--warehouse", uri)
    assert run.exit_code == 2 and "{id} stands for a whole path segment" in run.stderr


@pytest.mark.parametrize("value", ["", " ", ",", "recipe,", "recipe,,checkout"])
@pytest.mark.parametrize("command", ["errors", "sql", "services"])
def test_an_empty_service_is_refused(logq, tmp_path: Path, value: str, command: str) -> None:
    """`-s "$SVC"` with SVC unset answered for every service, exit 0; an empty item of a
    list quietly dropped a name. Both are exit 2 saying what to do."""
    uri, _ = items(tmp_path)
    args = {"errors": ["errors"], "sql": ["sql", "SELECT count(*) AS n FROM envoy_access"],
            "services": ["services"]}[command]  # fmt: skip
    run = logq(*args, "-s", value, *WIDE, "--warehouse", uri)
    assert run.exit_code == 2, (run.stdout, run.stderr)
    assert run.stdout == ""
    assert "give a service name" in run.stderr and "leave --service out" in run.stderr


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("errors", "--path"),
        ("top", "--method"),
        ("latency", "--path"),
        ("tail", "--grep"),
        ("errors", "--since"),
        ("timeline", "--until"),
        ("sql", "--since"),
        ("sql", "--until"),
        ("services", "--since"),
    ],
)
def test_an_empty_filter_is_refused_as_an_empty_service_is(
    logq, tmp_path: Path, command: str, option: str
) -> None:
    """`--path "$P"` with P unset took every path (exit 0), `--since "$START"` the default
    range (every row for `sql`), while `-s ""` was refused: all are exit 2 saying what to do."""
    uri, _ = items(tmp_path)
    args = {"sql": ["sql", "SELECT count(*) AS n FROM envoy_access"]}.get(command, [command])
    window = [] if option in ("--since", "--until") else WIDE
    run = logq(*args, option, "", *window, "--warehouse", uri)
    assert run.exit_code == 2, (run.stdout, run.stderr)
    assert run.stdout == ""
    assert f"logq: error: {option} '' is empty; give " in run.stderr
    assert f"or leave {option} out to " in run.stderr


def test_did_you_mean_names_only_services_that_exist(logq, tmp_path: Path) -> None:
    """The suggestion was the rewritten name (`*` -> a hashed name, `recipe/../checkout` ->
    'recipe_checkout'), which no service has; and `café-ü`, stored as `cafe-u`, was refused
    while `CAFE-U` was taken."""
    uri, _ = items(tmp_path)
    star = logq("errors", "-s", "*", *WIDE, "--warehouse", uri)
    assert star.exit_code == 2 and "is not a service name" in star.stderr
    assert "did you mean" not in star.stderr and "svc-" not in star.stderr
    assert "`logq services` lists them" in star.stderr
    path = logq("errors", "-s", "recipe/../checkout", *WIDE, "--warehouse", uri)
    assert path.exit_code == 2 and "recipe_checkout" not in path.stderr
    assert "did you mean 'checkout'?" in path.stderr
    typo = logq("errors", "-s", "recipe'", *WIDE, "--warehouse", uri)
    assert typo.exit_code == 2 and "did you mean 'recipe'?" in typo.stderr
    for spelling in ("café-ü", "CAFÉ-Ü", "CAFE-U", "cafe-u"):
        tail = logq("tail", "-s", spelling, *WIDE, "-f", "json", "--limit", "100",
                    "--warehouse", uri)  # fmt: skip
        assert tail.exit_code == 0 and len(tail.json()) == 30, (spelling, tail.stderr)
    # 漢 has no ASCII form: the name is stored under a hash (cafe-<hash>), not as café-ü's
    # cafe-u nor as a service called café (test_hashed_service_names.py); named as typed.
    other = logq("tail", "-s", "café漢", *WIDE, "--warehouse", uri)
    assert other.exit_code == 3, other.stderr
    assert "unknown service 'café漢' in container_logs; known: cafe-u" in other.stdout
