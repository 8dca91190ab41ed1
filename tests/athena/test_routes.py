"""``--path`` as a printed route: the regex matches exactly the paths whose route equals the
value or continues it by whole segments, run through the same Trino -> DuckDB path as the
canned queries; the fold it mirrors is the one the SQL files use."""

from __future__ import annotations

import duckdb
import pytest

from athena import queries
from athena.queries import to_duckdb
from athena.routes import ID_SEGMENT, path_filter, route_regex
from tests.athena.test_queries import _many_paths
from tests.cli.routes import route

#: Paths at the edges of the fold: ids that are not whole segments, ids in the query string,
#: trailing slashes, neighbouring ids, regex characters in literal segments.
EDGES = [
    "/api/v1/items/12x",
    "/api/v1/items/12",
    "/api/v1/items/12/",
    "/api/v1/items/12?next=/api/v1/items/34/lines",
    "/api/v1/items/abc?id=12345",
    "/api/v1/items/12345abc/lines",
    "/api/v1/items/SKU-99880/lines/2",
    "/api/v1/items/deadbeefdeadbeef00/lines",
    "/api/v1/items/1/2/3/4",
    "/api/v1/itemsX/12",
    "/a.b/12",
    "/aXb/12",
    "/it's/(x)/12",
    "/it's/(x)/y",
    "/back\\slash/7",
    "/é漢/2024-05-01",
]

SNIPPET = "SELECT path FROM paths WHERE (:path_route = '' OR regexp_like(path, :path_route))"


def _matched(con: duckdb.DuckDBPyConnection, value: str) -> set[str]:
    sql, bound = to_duckdb(SNIPPET, {"path_route": route_regex(value)})
    return {row[0] for row in con.execute(sql, bound).fetchall()}


def _wanted(paths: list[str], value: str) -> set[str]:
    """The truth: the route (computed segment by segment in Python) equals the value or
    continues it by whole segments (any continuation when the value ends in '/')."""
    out = set()
    for path in paths:
        r = route(path)
        assert r is not None
        boundary = value if value.endswith("/") else value + "/"
        if r == value or r.startswith(boundary):
            out.add(path)
    return out


def test_route_regex_matches_exactly_the_paths_of_the_route() -> None:
    paths = [p for p in _many_paths(3000) if p is not None] + EDGES
    con = duckdb.connect()
    con.execute("CREATE TABLE paths (path VARCHAR)")
    con.executemany("INSERT INTO paths VALUES (?)", [(p,) for p in paths])
    values = {route(p) for p in paths} - {None}
    # Each route's shorter forms, cut at a segment boundary (with and without the slash).
    for value in list(values):
        parts = str(value).split("/")
        for cut in range(2, len(parts)):
            values.add("/".join(parts[:cut]))
            values.add("/".join(parts[:cut]) + "/")
    routed = sorted(v for v in values if v is not None and "{id}" in v)
    assert len(routed) > 30
    for value in routed:
        assert _matched(con, value) == _wanted(paths, value), value
    assert _matched(con, "/api/v1/items/{id}") == {
        "/api/v1/items/12",
        "/api/v1/items/12/",
        "/api/v1/items/12?next=/api/v1/items/34/lines",
        "/api/v1/items/12345abc/lines",
        "/api/v1/items/SKU-99880/lines/2",
        "/api/v1/items/deadbeefdeadbeef00/lines",
        "/api/v1/items/1/2/3/4",
    }
    assert _matched(con, "/a.b/{id}") == {"/a.b/12"}  # '.' is a dot, not any character
    assert _matched(con, "/it's/(x)/{id}") == {"/it's/(x)/12"}  # quote and parentheses
    assert _matched(con, "/back\\slash/{id}") == {"/back\\slash/7"}
    assert _matched(con, "/é漢/{id}") == {"/é漢/2024-05-01"}


def test_the_sql_files_fold_with_the_same_id_segments() -> None:
    """The regex is built from :data:`ID_SEGMENT`: the fold in the SQL must be that text."""
    for name in ("errors", "latency", "top"):
        text = queries.load(name).text
        assert f"'/({ID_SEGMENT})/', '/{{id}}/'" in text, name
        assert f"'/({ID_SEGMENT})$', '/{{id}}'" in text, name
    for name in queries.query_names():
        text = queries.load(name).text
        if ":path_prefix" in text:
            assert "regexp_like(path, :path_route)" in text, name


@pytest.mark.parametrize(
    "value",
    ["/api/v1/items/x{id}", "/api/{id}x/lines", "api/{id}", "{id}", "/api/{id}?page=2"],
)
def test_a_placeholder_that_is_not_a_whole_segment_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="--path"):
        path_filter(value)


def test_raw_prefixes_are_unchanged() -> None:
    assert path_filter("/api/v1/items/") == ("/api/v1/items/", "")
    assert path_filter(None) == ("", "")
    prefix, regex = path_filter("/api/v1/orders/{id}/lines")
    assert prefix == "/api/v1/orders/" and regex.startswith("^/api/v1/orders/(?:")
