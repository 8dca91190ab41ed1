"""Trino functions DuckDB has no namesake of, written with DuckDB's own.

Companion of :mod:`athena.trinocalls` (same contract: each rewrite takes the sqlglot call and
``adapt``, which adapts its arguments, and returns the DuckDB tree). DuckDB said "Scalar
Function with name json_size does not exist", about functions Athena's users write. Each is
Trino's documented meaning ("Functions and operators") and its code's where the page is short:

* ``json_size(json, path)``: the number of members of the object or array at ``path``, 0 for
  a scalar, NULL where there is nothing at ``path`` and, as ``json_extract``, for text that is
  not JSON (``JsonExtract`` returns NULL on a parse error).
* ``any_match(array, x -> p)``, ``all_match``, ``none_match``: SQL's three values, as Trino
  documents them: ``any_match`` is true when ``p`` is true for some element, NULL when it is
  NULL for some and false for all others, else false (so false for an empty array);
  ``all_match`` and ``none_match`` likewise. DuckDB's ``list_bool_or`` skips the NULLs.
* ``regexp_position(s, pattern[, start[, occurrence]])``: the character position (from 1) of
  the ``occurrence``-th match searched from ``start``, -1 without one (``JoniRegexpFunctions``:
  -1 too for a start past the end; a start or occurrence below 1 fails). Each search starts
  where the last match ended (one character further after an empty one), as DuckDB's
  ``regexp_extract_all`` steps, and sees the whole text (``^``, ``\\b``), as Trino's does.
* ``every(boolean)``: Trino's alias of ``bool_and`` (aggregate.html#every), DuckDB's too.
* ``current_timezone()``: the session's zone, UTC on Athena and
  in the local engine, which sets DuckDB's ``TimeZone`` to UTC (:func:`current_timezone`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from athena.queries import QueryError
from athena.trinofuncs import from_template

#: What :func:`rewrite` knows, by lower-case name.
NAMES = frozenset({"json_size", "any_match", "all_match", "none_match", "regexp_position", "every"})

#: ``json_size``: DuckDB's ``json_type`` is NULL where the path finds nothing.
_JSON_SIZE = """
CASE WHEN json_valid(__json__) THEN CASE json_type(__json__, __path__)
  WHEN 'OBJECT' THEN len(json_keys(__json__, __path__))
  WHEN 'ARRAY' THEN json_array_length(__json__, __path__)
  ELSE CASE WHEN json_type(__json__, __path__) IS NOT NULL THEN 0 END
END END
"""

#: The three ``*_match`` over the predicate's values ``r`` (computed once, through the lambda):
#: the value that decides, else NULL if one is NULL, else the value for none deciding.
_MATCH = """
list_extract(list_transform([list_transform(__array__, __predicate__)], r -> CASE
  WHEN r IS NULL THEN NULL
  WHEN list_contains(r, __decides__) THEN __decided__
  WHEN len(list_filter(r, e -> e IS NULL)) > 0 THEN NULL
  ELSE NOT __decided__
END), 1)
"""
#: Per function: the predicate value that decides, and the answer it gives.
_MATCH_RULES = {"any_match": ("true", "true"), "all_match": ("false", "false"),
                "none_match": ("true", "false")}  # fmt: skip

#: ``regexp_position``. The arguments reach the lambdas in a struct (``q``), so that no lambda
#: parameter can stand for a column of that name in them (its fields are read ``q['s']``:
#: DuckDB reads ``q.s`` as a column ``s`` of a table ``q`` first). ``skip``, any characters,
#: then the pattern (``p``) is what the search runs as, matched over and over by
#: ``regexp_extract_all``: the first match skips ``start - 1`` characters from the beginning
#: (``^`` there is the text's start, so later matches cannot take that branch), then each takes
#: the text up to the next match of the pattern, group 1 (the pattern's own groups follow it).
#: The position of the n-th is the length of the first n of those, less the n-th's match, plus
#: one character skipped after each empty match before it. A first match from ``start`` is
#: checked apart: without one the optional skip is not taken.
_POSITION = """
CASE
  WHEN __start__ < 1 THEN error('regexp_position: start position cannot be smaller than 1')
  WHEN __n__ < 1 THEN error('regexp_position: occurrence cannot be smaller than 1')
  WHEN __start__ > length(__s__) THEN -1
  ELSE list_extract(list_transform([struct_pack(
      s := __s__,
      n := __n__,
      skip := '^(?s:' || repeat('.{1000}', (__start__ - 1) // 1000) || '.{'
        || CAST((__start__ - 1) % 1000 AS VARCHAR) || '})',
      p := '(' || __p__ || ')')], q -> CASE
    WHEN NOT regexp_matches(q['s'], q['skip'] || '(?s:.*?)' || q['p']) THEN -1
    ELSE list_extract(list_transform([struct_pack(
        whole := regexp_extract_all(q['s'], '(?:' || q['skip'] || ')?(?s:.*?)' || q['p'], 0),
        found := regexp_extract_all(q['s'], '(?:' || q['skip'] || ')?(?s:.*?)' || q['p'], 1)
      )], m ->
      CASE WHEN len(m['whole']) < q['n'] THEN -1 ELSE
        list_sum(list_transform(list_slice(m['whole'], 1, q['n']), w -> length(w)))
        + len(list_filter(list_slice(m['whole'], 1, q['n'] - 1), w -> w = ''))
        - length(list_extract(m['found'], q['n'])) + 1
      END), 1)
  END), 1)
END
"""


def rewrite(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.Anonymous named in :data:`NAMES`) in DuckDB's functions (module docs)."""
    from sqlglot import exp

    name = str(node.this).lower()
    args = [adapt(a) for a in node.expressions]
    if name == "json_size":
        _arity(name, args, 2, 2, "json_size(json, json_path)")
        return from_template(_JSON_SIZE, json=args[0], path=args[1])
    if name == "every":
        _arity(name, args, 1, 1, "every(boolean)")
        return exp.Anonymous(this="bool_and", expressions=args)
    if name == "regexp_position":
        _arity(name, args, 2, 4, "regexp_position(string, pattern[, start[, occurrence]])")
        return _regexp_position(args)
    _arity(name, args, 2, 2, f"{name}(array, x -> predicate)")
    if not isinstance(args[1], exp.Lambda):
        raise QueryError(f"{name}(array, x -> predicate): the second argument is a lambda")
    decides, decided = _MATCH_RULES[name]
    return from_template(
        _MATCH.replace("__decides__", decides).replace("__decided__", decided),
        array=args[0],
        predicate=args[1],
    )


def _arity(name: str, args: list[Any], least: int, most: int, usage: str) -> None:
    """Refuse a call with another number of arguments than Trino takes, saying its form."""
    if not least <= len(args) <= most:
        raise QueryError(f"{name}() takes {usage}; it was given {len(args)} arguments")


def _regexp_position(args: list[Any]) -> Any:
    """``regexp_position`` (module docs) over its adapted arguments; a literal pattern has
    Java's spelling made RE2's, as for the other ``regexp_*`` calls."""
    from sqlglot import exp

    from athena.trinocalls import re2_pattern

    s, pattern = args[0], re2_pattern(args[1], "regexp_position")
    start = args[2] if len(args) > 2 else exp.Literal.number(1)
    occurrence = args[3] if len(args) > 3 else exp.Literal.number(1)
    return from_template(_POSITION, s=s, p=pattern, start=start, n=occurrence)


def current_timezone() -> Any:
    """Trino's ``current_timezone()``: the session's zone, which is UTC on Athena and in the
    local engine (its DuckDB connections set ``TimeZone`` to UTC); DuckDB has no such
    function ("Scalar Function with name current_timezone does not exist")."""
    from sqlglot import exp

    return exp.Literal.string("UTC")
