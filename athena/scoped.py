"""Ad-hoc Athena SQL narrowed by ``--service``/``--since``/``--until``, as the local engine does.

Locally, ``logq sql --since 1h -s recipe`` lists only recipe's partitions of the last hour and
the tables show only rows whose ``timestamp`` is in the range (:mod:`athena.engines.local`).
Athena gets the same answer from the same flags: every reference to a warehouse table
(``envoy_access``, ``logs.envoy_access``, ``"Envoy_Access" AS e``; not a CTE of that name,
which shadows it) becomes a subquery of that table with the conditions::

    (SELECT * FROM envoy_access
     WHERE dt BETWEEN '2026-11-28-00' AND '2026-11-28-01' AND service IN ('recipe')
       AND "timestamp" >= CAST('2026-11-28 00:15:00.000' AS timestamp)
       AND "timestamp" < CAST('2026-11-28 01:15:00.000' AS timestamp)) AS envoy_access

Trino pushes the ``dt``/``service`` conditions into the scan, so partition projection enumerates
only those hours of those services: without them a statement makes Athena consider every hour
since :data:`athena.ddl.PROJECTION_START` of every service (over a million partitions, Athena's
limit, from 17 services up).

Athena's hidden columns (:data:`athena.queries.HIDDEN_COLUMNS`, e.g. ``"$path"``, a row's object)
are not part of ``*`` in Trino, so a subquery ``SELECT *`` would hide them from the statement:
those the statement names are added to the subquery's select list (``SELECT *, "$path"``).
(The local engine has no such columns and refuses them: :func:`athena.queries._for_duckdb`.)

A statement that is no query (``PREPARE``, ``SHOW STATS FOR``, ``CREATE TABLE AS``, ...) is
refused with the flags when it names a warehouse table: its tables are not references logq
can wrap (sqlglot parses many of them as an opaque ``Command``), and sending it unscoped would
answer another question than the one asked.

sqlglot finds the references (its scope analysis tells a CTE from a table) and where they are in
the text; only those spans are replaced, so the rest of the statement reaches Athena exactly as
typed (a round trip through sqlglot's generator could change what it does not model). The
values in the conditions are service names already checked by the CLI and times logq formats,
written as SQL literals by sqlglot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from athena.queries import (
    HIDDEN_COLUMNS,
    LOCAL_TABLES,
    QueryError,
    parse_statements,
    statement_count_error,
    table_references,
)
from athena.timerange import iso_utc

if TYPE_CHECKING:
    from athena.timerange import TimeRange


@dataclass(frozen=True)
class Scope:
    """What ``--service``/``--since``/``--until`` let the tables show (as the local engine)."""

    services: list[str] | None
    """Stored service names (None: every service)."""
    rows: TimeRange | None
    """Rows whose ``timestamp`` is in this range, and its ``dt`` hours (None: every row)."""

    @property
    def empty(self) -> bool:
        """Whether the flags restrict nothing (the statement is then sent as written)."""
        return self.services is None and self.rows is None

    def condition(self) -> str:
        """The Trino ``WHERE`` condition: ``dt`` and ``service`` first, for partition pruning,
        as the canned queries write them (:mod:`athena.timerange` formats the bounds)."""
        from sqlglot import exp

        from athena.timerange import sql_timestamp

        def lit(value: str) -> str:
            return exp.Literal.string(value).sql(dialect="trino")

        parts: list[str] = []
        if self.rows is not None:
            parts.append(f"dt BETWEEN {lit(self.rows.dt_from)} AND {lit(self.rows.dt_to)}")
        if self.services is not None:
            parts.append(f"service IN ({', '.join(lit(s) for s in self.services)})")
        if self.rows is not None:
            since, until = sql_timestamp(self.rows.since), sql_timestamp(self.rows.until)
            parts.append(f'"timestamp" >= CAST({lit(since)} AS timestamp)')
            parts.append(f'"timestamp" < CAST({lit(until)} AS timestamp)')
        return " AND ".join(parts)

    def describe(self) -> str:
        """The scope in words, for ``--dry-run``."""
        words = [f"service IN ({', '.join(self.services)})"] if self.services else []
        if self.rows is not None:
            words.append(
                f"dt {self.rows.dt_from}..{self.rows.dt_to}, rows with "
                f"{iso_utc(self.rows.since)} <= timestamp < {iso_utc(self.rows.until)}"
            )
        return "; ".join(words) or "every row (no --service/--since/--until: sent as typed)"


@dataclass(frozen=True)
class ScopedStatement:
    """A statement as it will be sent to Athena, and what it reads."""

    sql: str
    """The text for Athena: the statement with each warehouse table reference scoped."""
    tables: frozenset[str]
    """The warehouse tables the statement reads (lower case; CTEs of the same name excluded)."""
    dt_condition: bool
    """Whether the statement, as typed, names ``dt`` in a WHERE, ON or HAVING clause (which
    may bound the partitions Athena considers)."""


def scope_statement(statement: str, scope: Scope) -> ScopedStatement:
    """``statement`` with every warehouse table reference replaced by its scoped subquery.

    With an empty ``scope`` the text is returned unchanged. A statement sqlglot cannot parse
    is returned unchanged when there is nothing to scope (Athena reports its error) and
    refused otherwise (QueryError: the flags would be ignored without a word).
    """
    tree = _parse(statement, required=not scope.empty)
    if tree is None:
        return ScopedStatement(statement, frozenset(), False)
    if not scope.empty:
        _check_scopable(tree, statement)
    refs = _warehouse_references(tree)
    tables = frozenset(ref.name.lower() for ref in refs)
    if scope.empty:
        return ScopedStatement(statement, tables, _names_dt(tree))
    select = ", ".join(["*", *(f'"{c}"' for c in hidden_columns(tree))])
    sql = _splice(statement, refs, tree, select, scope.condition())
    return ScopedStatement(sql, tables, _names_dt(tree))


def hidden_columns(tree: Any) -> list[str]:
    """The :data:`~athena.queries.HIDDEN_COLUMNS` the statement names (in that order; Trino
    folds the case of identifiers, quoted or not)."""
    from sqlglot import exp

    named = {column.name.lower() for column in tree.find_all(exp.Column)}
    return [c for c in HIDDEN_COLUMNS if c in named]


def _parse(statement: str, required: bool) -> Any:
    """The statement's one sqlglot tree (Trino), or None when it does not parse and nothing
    requires it to; QueryError when ``required``."""
    from sqlglot.errors import SqlglotError

    from athena.queries import _parse_error

    try:
        trees = parse_statements(statement)
    except SqlglotError as exc:
        if not required:
            return None
        error = _parse_error(exc)
        raise QueryError(
            f"{error}; --service/--since/--until need a statement logq can parse"
        ) from exc
    if len(trees) != 1:
        if not required:
            return None
        raise statement_count_error(len(trees))
    return trees[0]


def _check_scopable(tree: Any, statement: str) -> None:
    """Refuse a statement that is no query (nor DESCRIBE) but names a warehouse table: ``CREATE
    TABLE ... AS SELECT``, ``INSERT ... SELECT`` (an INSERT's target is written, not read),
    ``PREPARE p FROM SELECT``, ``SHOW STATS FOR (SELECT ...)`` (sqlglot parses these last two,
    and others, as an opaque ``Command`` whose tables it does not see). The flags cannot be
    applied by wrapping references there, and ignoring them would answer another question
    than the one asked. The words of the text are checked, so a ``Command`` is caught too."""
    from sqlglot import exp

    if isinstance(tree, exp.Query | exp.Describe) or not _names_warehouse_table(statement):
        return
    kind = str(tree.this) if isinstance(tree, exp.Command) else type(tree).__name__
    raise QueryError(
        "--service/--since/--until apply to queries (SELECT, WITH, VALUES), not to a "
        f"{kind.upper()} statement; put the conditions on dt, service and timestamp in the "
        "statement itself (its query's WHERE clause) and leave the flags out"
    )


def _names_warehouse_table(statement: str) -> bool:
    """Whether a word (a name, quoted or not; not a string or a comment) of the statement is
    a warehouse table's name."""
    return any(word.lower() in LOCAL_TABLES for word in _names(statement))


def _names(text: str) -> list[str]:
    """The names (identifiers) in ``text`` by Trino's tokenizer. The tokenizer keeps the rest
    of a statement that starts with a command word (``PREPARE``, ``SHOW``, ...) as one string
    token, not quoted in the text: that text is tokenized in turn."""
    from sqlglot.dialects.dialect import Dialect
    from sqlglot.tokens import TokenType

    out: list[str] = []
    for token in Dialect.get_or_raise("trino").tokenize(text):
        if token.token_type in (TokenType.VAR, TokenType.IDENTIFIER):
            out.append(token.text)
        elif token.token_type is TokenType.STRING and text[token.start] != "'":
            out += _names(token.text)
    return out


def _warehouse_references(tree: Any) -> list[Any]:
    """The ``exp.Table`` nodes that read a warehouse table: by name, with any database or
    catalog qualifier (as the local engine reads ``logs.envoy_access``), not a CTE in scope
    that shadows it (:func:`athena.queries.table_references`). Only a query reads rows:
    ``DESCRIBE envoy_access`` names the table and scans nothing."""
    from sqlglot import exp

    if not isinstance(tree, exp.Query):
        return []
    return [t for t in table_references(tree) if t.name.lower() in LOCAL_TABLES]


def _span(*parts: Any) -> tuple[int, int]:
    """``[start, end)`` in the statement text of the identifiers ``parts`` (None skipped)."""
    metas = [p.meta for p in parts if p is not None]
    if not metas or any("start" not in m or "end" not in m for m in metas):
        raise QueryError("cannot locate a table reference in the statement (sqlglot gave none)")
    return min(m["start"] for m in metas), max(m["end"] for m in metas) + 1


def _splice(statement: str, refs: list[Any], tree: Any, select: str, condition: str) -> str:
    """The text with each reference in ``refs`` replaced by its scoped subquery (``SELECT
    <select> ... WHERE <condition>``, keeping its alias, or aliased by its own name so that
    ``envoy_access.path`` still resolves), and
    ``logs.envoy_access.path`` column qualifiers shortened to ``envoy_access.path`` (the
    subquery's alias is the table's name alone)."""
    from sqlglot import exp

    edits: list[tuple[int, int, str]] = []
    for ref in refs:
        start, end = _span(ref.args.get("catalog"), ref.args.get("db"), ref.this)
        name = statement[start:end]
        alias = "" if ref.args.get("alias") else " AS " + statement[_span(ref.this)[0] : end]
        edits.append((start, end, f"(SELECT {select} FROM {name} WHERE {condition}){alias}"))
    for column in tree.find_all(exp.Column):
        qualifier = column.args.get("db")
        table = column.args.get("table")
        if qualifier is not None and table is not None and table.name.lower() in LOCAL_TABLES:
            start = _span(column.args.get("catalog"), qualifier)[0]
            edits.append((start, _span(table)[0], ""))
    out, pos = [], 0
    for start, end, text in sorted(edits):
        out += [statement[pos:start], text]
        pos = end
    return "".join(out) + statement[pos:]


def _names_dt(tree: Any) -> bool:
    """Whether a WHERE, JOIN ... ON or HAVING clause names a ``dt`` column."""
    from sqlglot import exp

    clauses = [*tree.find_all(exp.Where, exp.Having)]
    clauses += [j.args["on"] for j in tree.find_all(exp.Join) if j.args.get("on") is not None]
    return any(
        column.name.lower() == "dt" for clause in clauses for column in clause.find_all(exp.Column)
    )
