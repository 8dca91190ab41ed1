"""``--path`` given as a route the commands print (``/api/v1/items/{id}``), as a regex on paths.

``errors``, ``latency`` and ``top`` print routes: the path without its query string, each
id-like segment folded to ``{id}`` by the canned queries' regular expressions (errors.sql). A
route copied from that output into ``--path`` was taken as a raw prefix, which no logged path
starts with: "no requests", on a route with hundreds. A value holding ``{id}`` is therefore a
route: it matches the requests whose route equals it or continues it by whole segments
(``/orders/{id}`` takes ``/orders/{id}`` and ``/orders/{id}/lines``, not ``/orders/{id}x``).

The match is done on the raw path with one regular expression (``regexp_like``, the same on
Athena and DuckDB), never by folding every row's path in the WHERE clause: each ``{id}`` becomes
the fold's own id alternatives (:data:`ID_SEGMENT`, a test checks the SQL files use the same
text), held inside one segment; the literal parts are escaped. The pattern is a bound value like
any other, never SQL text. ``{id}`` is the only placeholder the fold prints.
"""

from __future__ import annotations

import string
from typing import NamedTuple

#: The placeholder the canned queries print for an id-like path segment.
PLACEHOLDER = "{id}"

#: The fold's id alternatives, exactly as the canned queries write them (errors.sql, latency.sql,
#: top.sql): all digits, a UUID, 16+ hex digits, or any segment with a run of 4+ digits.
ID_SEGMENT = (
    "[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    "|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*"
)

#: :data:`ID_SEGMENT` on a raw path, which still holds its query string: the fold runs on the
#: path before the ``?``, so an id segment cannot take in ``?`` or what follows it.
_ID_ON_PATH = "(?:" + ID_SEGMENT.replace("[^/]*", "[^/?]*") + ")"

#: Where a segment of a raw path ends: a ``/``, the query string, or the end.
_SEGMENT_END = "(?:[/?]|$)"


class PathFilter(NamedTuple):
    """The two parameters the canned queries filter paths with (empty: no such filter)."""

    prefix: str
    """``starts_with(path, prefix)``: the raw prefix (a route's literal start before its first
    ``{id}``, a cheap filter ahead of the regex)."""
    route: str
    """``regexp_like(path, route)`` for a route value; empty for a raw prefix."""


def path_filter(value: str | None) -> PathFilter:
    """The path parameters for a ``--path`` value: a raw prefix, or a route (it holds ``{id}``).

    ValueError (exit 2) for a ``{id}`` that is not a whole segment of a path starting with
    ``/``, or a route with a query string: the printed routes are never so, and a guess would
    answer another question.
    """
    if not value:
        return PathFilter("", "")
    if PLACEHOLDER not in value:
        return PathFilter(value, "")
    check_route(value)
    return PathFilter(value.split(PLACEHOLDER, 1)[0], route_regex(value))


def check_route(value: str) -> None:
    """Refuse a ``{id}`` value that is not a route as the commands print them."""
    example = "e.g. /api/v1/items/{id} or /api/v1/orders/{id}/lines"
    if "?" in value:
        raise ValueError(
            f"--path {value!r}: a route (a path holding {PLACEHOLDER}) has no query string; "
            f"drop the part from '?' on ({example})"
        )
    segments = value.split("/")
    if segments[0] != "" or any(PLACEHOLDER in s and s != PLACEHOLDER for s in segments):
        raise ValueError(
            f"--path {value!r}: {PLACEHOLDER} stands for a whole path segment, as the commands "
            f"print routes ({example}); for a raw prefix leave {PLACEHOLDER} out"
        )


def route_regex(value: str) -> str:
    """The regex a raw path matches when its route equals ``value`` or continues it by whole
    segments: ``^/api/v1/items/(?:<id>)(?:[/?]|$)`` for ``/api/v1/items/{id}``. A value ending
    in ``/`` continues with any segment, as a prefix would."""
    body = "/".join(_ID_ON_PATH if s == PLACEHOLDER else escape(s) for s in value.split("/"))
    return "^" + body + ("" if value.endswith("/") else _SEGMENT_END)


def escape(text: str) -> str:
    """``text`` as a literal in the regex dialects of both engines (Athena's Joni or Java, and
    DuckDB's RE2): each ASCII punctuation mark is backslashed, which all three read as that
    mark; every other character (letters, digits, spaces, non-ASCII) stands for itself.
    (``re.escape`` also backslashes spaces and control characters, which RE2 may refuse.)"""
    return "".join("\\" + c if c in string.punctuation else c for c in text)
