"""The canned queries: Athena (Trino) SQL files with ``:name`` parameters, rendered per engine.

Each query is written once, in ``athena/queries/<name>.sql``, in Athena's dialect. Parameters are
written ``:name`` and found with sqlglot's tokenizer, so a ``:`` inside a string literal or a
comment is never mistaken for one. A list value (``service IN (:services)``) expands to one
parameter per element. Then:

* Athena: ``:name`` becomes pyathena's ``%(name)s`` and pyathena quotes each value (Trino
  escaping); the rest of the text goes to Athena exactly as written.
* DuckDB: sqlglot transpiles the text from ``trino`` to ``duckdb`` (``:name`` becomes ``$name``)
  and DuckDB binds the values itself.

Either way no user value is ever pasted into SQL text by this module.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

ParamValue = str | int | float | bool | list[str] | list[int] | None


@contextmanager
def quiet_sqlglot() -> Iterator[None]:
    """Mute sqlglot's "falling back to parsing as a 'Command'" warning: ``SHOW TABLES`` and
    friends are fine as commands, and the warning lands on stderr once per parse."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def parse_statements(sql: str) -> list[Any]:
    """The statements of ``sql`` as sqlglot reads them in Trino's dialect, quietly (see
    :func:`quiet_sqlglot`; its errors propagate). Empty statements are dropped, and so is what
    sqlglot makes of a comment after the last ``;`` (a ``Semicolon`` holding only the comment):
    ``SELECT 1; -- why`` is one statement, as in the Athena console."""
    import sqlglot
    from sqlglot import exp

    with quiet_sqlglot():
        trees = sqlglot.parse(sql, read="trino")
    return [t for t in trees if t is not None and not isinstance(t, exp.Semicolon)]


def one_statement(sql: str) -> Any:
    """The one statement of ``sql`` (:func:`parse_statements`); QueryError when it does not
    parse or holds another number of statements."""
    from sqlglot.errors import ParseError, TokenError

    try:
        statements = parse_statements(sql)
    except (ParseError, TokenError) as exc:
        raise _parse_error(exc) from exc
    if len(statements) != 1:
        raise statement_count_error(len(statements))
    return statements[0]


def statement_count_error(count: int) -> QueryError:
    """``logq sql`` given no statement or several: what to do, not only the count (``expected
    one SQL statement, got 0`` for a blank argument or a comment left the user guessing)."""
    if count == 0:
        todo = (
            "the text is blank or only comments: pass one statement in quotes, e.g. "
            'logq sql "SELECT service, count(*) AS n FROM envoy_access GROUP BY service"'
        )
    else:
        todo = "run them one at a time, one logq sql each"
    return QueryError(f"expected one SQL statement, got {count}; {todo}")


class QueryError(ValueError):
    """A query or its parameters are unusable; the message says what is missing or wrong."""


@dataclass(frozen=True)
class CannedQuery:
    """One ``.sql`` file."""

    name: str
    """File stem, also the CLI command that runs it."""
    text: str
    """The Athena SQL as written, with ``:name`` parameters."""

    @property
    def description(self) -> str:
        """The leading comment's first sentence (what ``--help`` and ``--dry-run`` show)."""
        first = self.text.lstrip().splitlines()[0] if self.text.strip() else ""
        return first.removeprefix("--").strip()

    @property
    def parameters(self) -> list[str]:
        """Distinct parameter names in order of first use."""
        seen: dict[str, None] = {}
        for _, _, name in find_placeholders(self.text):
            seen.setdefault(name, None)
        return list(seen)


def query_names() -> list[str]:
    """Names of every canned query shipped in the package."""
    folder = resources.files("athena") / "queries"
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".sql"))


#: Texts of the canned queries loaded so far: only these are cached on disk (bounded, and no
#: ad-hoc ``logq sql`` statement is ever written to the cache).
_CANNED_TEXTS: set[str] = set()


@cache
def load(name: str) -> CannedQuery:
    """Read ``athena/queries/<name>.sql``."""
    if not _IDENT.match(name):
        raise QueryError(f"bad query name {name!r}")
    path = resources.files("athena") / "queries" / f"{name}.sql"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QueryError(
            f"no canned query {name!r}; the queries are: {', '.join(query_names())}"
        ) from None
    _CANNED_TEXTS.add(text)
    return CannedQuery(name=name, text=text)


def find_placeholders(sql: str) -> list[tuple[int, int, str]]:
    """``(start, end_exclusive, name)`` of every ``:name`` parameter, by sqlglot's tokenizer."""
    from sqlglot.dialects.trino import Trino
    from sqlglot.tokens import TokenType

    tokens = Trino().tokenize(sql)
    found = []
    for prev, tok in itertools.pairwise(tokens):
        if (
            prev.token_type == TokenType.COLON
            and tok.start == prev.end + 1
            and _IDENT.match(tok.text)
        ):
            found.append((prev.start, tok.end + 1, tok.text))
    return found


def _flatten(sql: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Expand list parameters to ``:name__0, :name__1``; check every parameter has a value."""
    out: list[str] = []
    flat: dict[str, Any] = {}
    pos = 0
    for start, end, name in find_placeholders(sql):
        if name not in params:
            raise QueryError(f"the query needs a value for parameter :{name}")
        value = params[name]
        out.append(sql[pos:start])
        if isinstance(value, list | tuple):
            if not value:
                raise QueryError(f"parameter :{name} is an empty list; SQL IN () cannot be empty")
            names = [f"{name}__{i}" for i in range(len(value))]
            out.append(", ".join(f":{n}" for n in names))
            flat.update(zip(names, value, strict=True))
        else:
            out.append(f":{name}")
            flat[name] = value
        pos = end
    out.append(sql[pos:])
    return "".join(out), flat


#: Comments and blank lines before a statement's first keyword.
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)+", re.DOTALL)


def to_athena(sql: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """SQL and parameters in pyathena's ``pyformat`` style: ``%(name)s``, literal ``%`` doubled.

    The leading comments of the query files are dropped: pyathena picks how it escapes values
    (Trino or Hive style) from the statement's first word, and releases before 3.35.4 read a
    comment there, escaping ``'`` and ``\\`` the Hive way inside a Trino query."""
    flat_sql, flat = _flatten(_LEADING_COMMENTS.sub("", sql), params)
    out: list[str] = []
    pos = 0
    for start, end, name in find_placeholders(flat_sql):
        out.append(flat_sql[pos:start].replace("%", "%%"))
        out.append(f"%({name})s")
        pos = end
    out.append(flat_sql[pos:].replace("%", "%%"))
    return "".join(out), flat


def athena_literal_sql(sql: str, params: dict[str, Any]) -> str:
    """The statement exactly as Athena will receive it (pyathena's own quoting): for --dry-run."""
    from pyathena.formatter import DefaultParameterFormatter

    text, flat = to_athena(sql, params)
    return DefaultParameterFormatter().format(text, flat) if flat else sql


#: The warehouse tables, as the local engine names its views.
LOCAL_TABLES = ("envoy_access", "container_logs")
#: Columns Athena's Hive tables have beyond their schema, left out of ``SELECT *`` (Trino's Hive
#: connector, ``HiveColumnHandle``; the Athena guide shows ``"$path"``, ``"$file_size"`` and
#: ``"$file_modified_time"``). ``"$bucket"`` exists only on bucketed tables (ours are not). The
#: local engine's tables have none of them (:func:`_for_duckdb` refuses them).
HIDDEN_COLUMNS = ("$path", "$file_size", "$file_modified_time", "$partition", "$bucket")
#: The hidden column canned queries may name on the local engine too (``tail.sql`` orders a
#: millisecond's lines by it): there it is the Parquet file a row was read from, and ordering
#: by it orders each file's rows as they stand in it (:data:`FILE_ROW_COLUMN`, see
#: :func:`written_order`). Ad-hoc statements are refused it, as every hidden column: the
#: views have it only for the canned queries that name it, so ``SELECT *`` never shows it.
PATH_COLUMN = "$path"
#: The local engine's position of a row in its file (DuckDB's ``file_row_number``): no Athena
#: column, so no SQL file names it; the local engine adds it after ``"$path"`` in ORDER BY.
FILE_ROW_COLUMN = "$file_row_number"
#: DuckDB table functions that are a statement in disguise, and that statement: they act on
#: the database rather than read the warehouse, so the local engine refuses them as ``logq
#: sql`` refuses the statement (``force_checkpoint()`` failed in DuckDB, exit 1 as if the
#: engine broke; ``checkpoint()`` ran). Those that change a setting (``enable_logging()``,
#: ``enable_profiling()``) are refused by the sandbox (:mod:`athena.engines.local`).
STATEMENT_FUNCTIONS = {"checkpoint": "CHECKPOINT", "force_checkpoint": "FORCE CHECKPOINT"}


def _for_duckdb(node: Any) -> Any:
    """Adapt an Athena tree to the local engine.

    * ``approx_percentile`` becomes ``quantile_disc``: DuckDB's ``approx_quantile`` is a t-digest,
      and locally the exact answer costs nothing.
    * ``logs.envoy_access`` (database-qualified, as written for Athena) reads the local view.
    * ``date_diff(unit, a, b)`` counts whole units, as Trino does (DuckDB's ``date_diff``
      counts unit boundaries crossed; its ``date_sub`` is Trino's meaning): 23:45 to 03:56 the
      next day is 0 days, not 1; with a value of ``AT TIME ZONE`` it counts as Trino's
      (:func:`athena.trinocalls.date_diff`). ``from_iso8601_timestamp`` of a literal keeps
      the text's offset, as Trino's does.
    * ``regexp_extract`` is NULL when the pattern does not match or the group is unset, as in
      Trino (DuckDB gives ''), ``array[i]`` fails outside the array and ``map[key]`` for a
      missing key, as in Trino, ``row[i]`` reads a ROW's field, and ``date_parse`` reads
      Trino's specifiers (:mod:`athena.trinocalls`).
    * ``regexp_replace``, ``split_part`` and ``format`` keep Trino's meaning, and functions only
      Athena has are refused with what to use instead (:mod:`athena.trinofuncs`);
      ``approx_distinct`` is exact locally (``count(DISTINCT x)``), in ad-hoc statements.
    * ``json_extract[_scalar]``, ``split`` with a limit, ``substr``, ``AT TIME ZONE``,
      ``EXTRACT``'s fields, ``url_encode``/``url_decode``, ``date_format``'s specifiers and, in
      ad-hoc statements, casts of a DOUBLE to an integer or to text or of a zoned timestamp to
      text, a DOUBLE divided by zero and ``upper`` keep Trino's meaning, a weighted
      ``approx_percentile`` is refused, and ``regexp_*`` patterns have Java's named groups
      spelled for RE2 and their lookarounds refused (:mod:`athena.trinocalls`).
    * ``json_size``, ``any_match``/``all_match``/``none_match`` and ``regexp_position``, which
      DuckDB lacks, are written with its functions (:mod:`athena.trinomissing`).
    * Athena's hidden columns (:data:`HIDDEN_COLUMNS`) are refused: the local views have no
      such column, and DuckDB's "not found" listed ``path`` as the likely one. A canned query
      may name ``"$path"`` (:data:`PATH_COLUMN`); an ORDER BY key on it is followed by the
      row's place in its file, in the same direction (:func:`written_order`).
    * DuckDB's statements written as functions (:data:`STATEMENT_FUNCTIONS`) are refused.
    Integer division truncates as in Trino through the connection's ``integer_division``
    setting (see :mod:`athena.engines.local`).
    """
    from sqlglot import exp

    from athena import trinocalls, trinofuncs, trinomissing, trinotypes

    if not _ADHOC.get(False) and isinstance(node, exp.Order):
        return written_order(node)
    if not _ADHOC.get(False) and isinstance(node, exp.Column) and node.name == PATH_COLUMN:
        return node  # a canned query's: the local views that read it have it
    if isinstance(node, exp.Column) and node.name.lower() in HIDDEN_COLUMNS:
        raise QueryError(
            f'"{node.name.lower()}" is a hidden column of the Athena tables (which S3 object, '
            "of what size and age, or which partition a row came from); the local engine's "
            "tables have no such column: run the statement with --engine athena"
        )
    if isinstance(node, exp.Anonymous) and str(node.name).lower() in STATEMENT_FUNCTIONS:
        name = str(node.name).lower()
        raise QueryError(
            f"{name}() is DuckDB's {STATEMENT_FUNCTIONS[name]} statement written as a function, "
            "which acts on DuckDB's own database, not the warehouse tables: the local engine "
            "runs queries only and refuses it as it refuses the statement; leave it out"
        )
    if isinstance(node, exp.Table) and node.name.lower() in LOCAL_TABLES and node.args.get("db"):
        node = node.copy()
        node.set("db", None)
        node.set("catalog", None)
        return node
    if trinocalls.printed_projection(node):
        zone = trinotypes.zone_given(node)
        if zone is not None:
            instant = trinocalls.zoned_instant(node, zone, _adapted)
            if isinstance(node, exp.Column) and isinstance(node.parent, exp.Select):
                return exp.alias_(instant, node.output_name, quoted=True)  # Athena's name
            return instant
    zoned = trinocalls.zoned_comparison(node, _adapted)
    if zoned is not None:
        return zoned
    if type(node).__name__ in trinocalls.REGEX_CALLS:
        node = trinocalls.java_regex(node)  # then rewritten below as any such call
    if isinstance(node, exp.ApproxQuantile):
        weighted = trinocalls.weighted_percentile(node)
        if weighted is not None:
            raise weighted
        return exp.Anonymous(
            this="quantile_disc", expressions=[_adapted(node.this), _adapted(node.args["quantile"])]
        )
    if isinstance(node, exp.DateDiff) and node.args.get("unit") is not None:
        return trinocalls.date_diff(node, _adapted)
    if isinstance(node, exp.FromISO8601Timestamp):
        return trinocalls.from_iso8601_timestamp(node, _adapted)
    if isinstance(node, exp.RegexpReplace):
        return trinofuncs.regexp_replace(node, _adapted)
    if isinstance(node, exp.SplitPart):
        return trinofuncs.split_part(node, _adapted)
    if isinstance(node, exp.Format):
        return trinofuncs.format_call(node, _adapted)
    if isinstance(node, exp.JSONExtract | exp.JSONExtractScalar):
        return trinocalls.json_extract(node, _adapted)
    if isinstance(node, exp.Split):
        return trinocalls.split(node, _adapted)
    if isinstance(node, exp.Substring):
        return trinocalls.substr(node, _adapted)
    if isinstance(node, exp.AtTimeZone):
        return trinocalls.at_time_zone(node, _adapted)
    if isinstance(node, exp.Extract):
        return trinocalls.extract(node, _adapted)
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in ("url_encode", "url_decode"):
        return trinocalls.url_coding(node, _adapted)
    if _ADHOC.get(False) and isinstance(node, exp.Upper):
        return trinocalls.upper(node, _adapted)
    if _ADHOC.get(False) and isinstance(node, exp.Div):
        return trinocalls.divide(node, _adapted)
    if _ADHOC.get(False) and isinstance(node, exp.Cast):
        rewritten = trinocalls.cast(node, _adapted)
        if rewritten is not None:
            return rewritten
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in trinomissing.NAMES:
        return trinomissing.rewrite(node, _adapted)
    if isinstance(node, exp.CurrentTimezone):
        return trinomissing.current_timezone()
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in trinofuncs.ATHENA_ONLY:
        raise trinofuncs.athena_only(str(node.this))
    typed = trinofuncs.typed_athena_only(node)
    if typed is not None:  # width_bucket(x, ARRAY[...]) is not what its advice spells
        bins = not isinstance(node, exp.WidthBucket) or node.args.get("num_buckets") is not None
        raise trinofuncs.athena_only(typed, advice_fits=bins)
    if isinstance(node, exp.Normalize):
        return trinofuncs.normalize(node, _adapted)
    if _ADHOC.get(False) and isinstance(node, exp.ApproxDistinct):
        return trinofuncs.approx_distinct(node, _adapted)
    if isinstance(node, exp.RegexpExtract):
        return trinocalls.regexp_extract(node, _adapted)
    if isinstance(node, exp.Bracket):
        return trinocalls.subscript(node, _adapted)
    if isinstance(node, exp.TimeToStr):
        return trinocalls.date_format(node, _adapted)
    if isinstance(node, exp.StrToTime):
        return trinocalls.date_parse(node, _adapted)
    return node


def written_order(order: Any) -> Any:
    """``order`` (an ORDER BY, changed in place) with each key on ``"$path"`` followed by
    ``"$file_row_number"`` in the same direction: the rows of one file in the order they
    stand in it, which is the order they were written (the writer and compaction sort each
    file by time, stably). On Athena a file's rows among themselves come in any order;
    locally they come as written, one of the orders Athena could give."""
    from sqlglot import exp

    keys: list[Any] = []
    for key in order.expressions:
        keys.append(key)
        column = key.this if isinstance(key, exp.Ordered) else None
        if isinstance(column, exp.Column) and column.name == PATH_COLUMN and not column.table:
            row = key.copy()
            row.set("this", exp.column(FILE_ROW_COLUMN, quoted=True))
            keys.append(row)
    order.set("expressions", keys)
    return order


def reads_file_rows(sql: str) -> bool:
    """Whether ``sql`` is a canned query that names ``"$path"``: the local engine's views of
    its tables then carry ``"$path"`` and ``"$file_row_number"`` (ad-hoc statements are refused
    them, and views without them keep ``SELECT *`` to the table's own columns)."""
    return sql in _CANNED_TEXTS and f'"{PATH_COLUMN}"' in sql


def canned_variant(text: str) -> str:
    """``text``, a canned query changed by logq itself (``tail --follow`` adds columns to
    ``tail.sql``), counted as canned: transpiled as one (cached, ``"$path"`` allowed)."""
    _CANNED_TEXTS.add(text)
    return text


#: Whether the statement being transpiled is ad-hoc (``logq sql``): rewrites that would change
#: the canned queries' SQL apply to those only (no canned query asks for approx_distinct).
_ADHOC: ContextVar[bool] = ContextVar("logq_adhoc_sql")


def _adapted(node: Any) -> Any:
    """A copy of ``node`` adapted by :func:`_for_duckdb`: the arguments of a call it rewrites.
    (``transform`` does not visit what a rewrite returns, so without this a call nested in a
    rewritten one would keep DuckDB's meaning.)"""
    copy = node.copy()
    copy.parent = node.parent
    return copy.transform(_for_duckdb)


def to_duckdb(sql: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """DuckDB SQL (transpiled by sqlglot) with ``$name`` parameters, and the values to bind.

    Transpilations of canned queries are cached on disk (:mod:`athena.sqlcache`); a hit needs no
    sqlglot at all. Ad-hoc statements are always transpiled afresh.
    """
    from athena import sqlcache

    if sql not in _CANNED_TEXTS:
        return _transpile(sql, params, adhoc=True)

    shape = json.dumps(
        sorted((k, len(v)) for k, v in params.items() if isinstance(v, list | tuple))
    )
    cache_key = sqlcache.key(sql, shape)
    cached = sqlcache.get(cache_key)
    if cached is not None and isinstance(cached.get("sql"), str):
        flat = _flat_values(params)
        used = cached.get("used", [])
        if all(name in flat for name in used):
            return cached["sql"], {name: flat[name] for name in used}
    duck_sql, bound = _transpile(sql, params)
    sqlcache.put(cache_key, {"sql": duck_sql, "used": sorted(bound)})
    return duck_sql, bound


def _flat_values(params: dict[str, Any]) -> dict[str, Any]:
    """Parameter values as :func:`_flatten` names them (lists become ``name__0``, ...)."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, list | tuple):
            flat.update({f"{name}__{i}": v for i, v in enumerate(value)})
        else:
            flat[name] = value
    return flat


def _transpile(sql: str, params: dict[str, Any], adhoc: bool = False) -> tuple[str, dict[str, Any]]:
    """Expand, parse as Trino, adapt for DuckDB (:func:`_for_duckdb`) and generate."""
    import sqlglot

    flat_sql, flat = _flatten(sql, params)
    tree = one_statement(flat_sql)
    adhoc_token = _ADHOC.set(adhoc)
    try:
        tree = tree.transform(_for_duckdb, copy=False)
    finally:
        _ADHOC.reset(adhoc_token)
    if adhoc:
        tree = _values_as_select(tree)
        athena_column_names(tree, unnamed_marker(sql))
    used = {p.name for p in tree.find_all(sqlglot.exp.Placeholder)}
    return tree.sql(dialect="duckdb", pretty=True), {k: v for k, v in flat.items() if k in used}


#: The alias the local engine gives a column Athena names by a position only known once the
#: statement runs: one after a ``*`` in the select list, or one a ``*`` reads from a subquery or
#: a ``WITH`` query (DuckDB makes repeats unique: ``_col?_1``). :func:`athena_column_name` turns
#: it into ``_col`` and the result position. A statement that itself says ``_col?`` gets a
#: longer marker (:func:`unnamed_marker`), so a name the user wrote is never taken for it.
UNNAMED = "_col?"


def unnamed_marker(sql: str) -> str:
    """The marker for the unnamed columns of ``sql``: :data:`UNNAMED` with as many more ``?``
    as it takes not to occur anywhere in the statement (any case: DuckDB compares names
    without case when it makes repeats unique), so no alias, column or literal can match it."""
    marker = UNNAMED
    while marker.lower() in sql.lower():
        marker += "?"
    return marker


def athena_column_name(name: str, position: int, marker: str = UNNAMED) -> str:
    """A result column's name as Athena gives it: ``name``, or ``_col<position>`` for a column
    :func:`athena_column_names` marked with ``marker`` (:func:`unnamed_marker` of the same
    statement; a repeat DuckDB made unique carries ``_<n>`` after it, once per level of
    subquery that repeated it: ``_col?_1_1``)."""
    return f"_col{position}" if re.fullmatch(_marked(marker), name) else name


def _marked(marker: str) -> str:
    """The pattern of a name marked with ``marker``: DuckDB adds ``_<n>`` to repeats."""
    return re.escape(marker) + r"(?:_\d+)*"


def unnamed_in_message(message: str, marker: str) -> str:
    """DuckDB's ``message`` with the names the local engine gave columns that have none
    (``"_col?_0"``: ``marker`` of the statement, :func:`unnamed_marker`) shown as ``(no name)``,
    and how to give them one: the statement cannot refer to them, on Athena either (Trino:
    "Column 'col0' cannot be resolved"), and the markers are no names a user could write."""
    named = re.compile(f'"{_marked(marker)}"')
    if not named.search(message):
        return message
    return (
        named.sub("(no name)", message) + "; a column of a VALUES list, or an expression "
        "with no alias in a subquery, has no name to refer to (on Athena either): name it, "
        "(VALUES (1, 2)) AS t(a, b) or SELECT ... AS a"
    )


def athena_column_names(tree: Any, marker: str = UNNAMED) -> None:
    """Name the unnamed result columns of a query as Athena (Trino) does, in place: ``_col``
    and the column's position from 0, counting every column, a ``*``'s too (Trino's
    ``LogicalPlanner.createOutputPlan``: a field with no name is ``"_col" + columnNumber``),
    where DuckDB would name them after the expression (``count_star()``). A bare column keeps
    its name and an alias wins, on both engines. A set operation's names are its first
    query's. Where the position depends on the tables' columns (after a ``*``), or a ``*``
    reads a subquery's unnamed column (which has no name on Trino either), the alias is
    ``marker`` (:func:`unnamed_marker`) and the local engine names the column by its position
    in the result."""
    from sqlglot import exp

    _name_values_columns(tree, marker)
    _name_row_fields(tree)
    top = _first_query(tree)
    if top is None:
        return
    after_star = False
    for position, item in enumerate(list(top.expressions)):
        if isinstance(item, exp.Star) or (
            isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
        ):
            after_star = True
        elif not _named(item):
            name = marker if after_star else f"_col{position}"
            item.replace(exp.alias_(item.copy(), name, quoted=True))
    for select in list(tree.find_all(exp.Select)):
        if select is top:
            continue
        for item in list(select.expressions):
            star = isinstance(item, exp.Star) or (
                isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
            )
            if not star and not _named(item):
                item.replace(exp.alias_(item.copy(), marker, quoted=True))


def _name_values_columns(tree: Any, marker: str) -> None:
    """Mark the columns of a ``VALUES`` list read as a table without column names (``FROM
    (VALUES (1, 2)) [AS t]``): Trino's fields have no name there, so a ``*`` gives ``_col`` and
    the position, where DuckDB says ``col0``, ``col1``. Each gets ``marker`` and its index, and
    a list with no alias gets one from ``marker`` too (DuckDB needs it to name columns; Trino
    cannot refer to such a list by name, so no statement can clash with it)."""
    from sqlglot import exp

    for n, (values, holder) in enumerate(_values_tables(tree)):
        alias = holder.args.get("alias")
        first = values.expressions[0] if values.expressions else None
        if (alias is not None and alias.columns) or first is None:
            continue
        width = len(first.expressions) if isinstance(first, exp.Tuple) else 1
        name = alias.this if alias is not None else exp.to_identifier(f"{marker}v{n}", quoted=True)
        columns = [exp.to_identifier(f"{marker}_{i}", quoted=True) for i in range(width)]
        holder.set("alias", exp.TableAlias(this=name, columns=columns))


def _values_tables(tree: Any) -> list[tuple[Any, Any]]:
    """The ``VALUES`` lists read as tables, each with the node that holds its alias: the list
    itself in ``FROM``/``JOIN``, the ``LATERAL`` around it in ``LATERAL (VALUES ...) AS t``
    (sqlglot hangs that alias on the LATERAL, and DuckDB names those columns ``col0`` too)."""
    from sqlglot import exp

    found = []
    for values in tree.find_all(exp.Values):
        if isinstance(values.parent, exp.From | exp.Join):
            found.append((values, values))
            continue
        inner = values  # LATERAL ((VALUES ...)) too: climb the parentheses
        while isinstance(inner.parent, exp.Subquery | exp.Paren):
            inner = inner.parent
        if isinstance(inner.parent, exp.Lateral):
            found.append((values, inner.parent))
    return found


def _values_as_select(tree: Any) -> Any:
    """A statement that is a bare ``VALUES`` list as ``SELECT * FROM (VALUES ...)``, its ORDER
    BY, LIMIT and OFFSET moved to the SELECT: its columns then get Athena's names
    (:func:`_name_values_columns`: ``_col0``, ``_col1``), where DuckDB's are ``col0``,
    ``col1``. Any other statement as it is."""
    from sqlglot import exp

    if not isinstance(tree, exp.Values):
        return tree
    select = exp.Select(expressions=[exp.Star()])
    for clause in ("order", "limit", "offset"):
        select.set(clause, tree.args.get(clause))
        tree.set(clause, None)
    return select.from_(tree, copy=False)


def _name_row_fields(tree: Any) -> None:
    """Name the fields of a ``ROW(...)`` value as Athena shows them: ``field0``, ``field1``
    (``{field0=1, field1=2}``), where sqlglot's DuckDB struct says ``_0``, ``_1``. A ROW
    inside a CAST (in the same SELECT: nested in another ROW, an ARRAY, a MAP, a CASE) is left
    alone: the cast names its fields, and sqlglot writes such a ROW as DuckDB's unnamed
    ``ROW(...)``, which casts by position; named fields would have to match the target's names
    (DuckDB: "STRUCT to STRUCT cast must have at least one matching member")."""
    from sqlglot import exp

    for row in list(tree.find_all(exp.Struct)):
        if isinstance(row.find_ancestor(exp.Cast, exp.Select), exp.Cast) or any(
            isinstance(e, exp.PropertyEQ | exp.Alias | exp.Slice) for e in row.expressions
        ):
            continue
        named = [
            exp.PropertyEQ(this=exp.to_identifier(f"field{i}"), expression=e)
            for i, e in enumerate(row.expressions)
        ]
        row.set("expressions", named)


def _first_query(tree: Any) -> Any:
    """The SELECT that names a statement's columns (a set operation's first), or None."""
    from sqlglot import exp

    query = tree
    while isinstance(query, exp.SetOperation | exp.Subquery):
        query = query.this
    return query if isinstance(query, exp.Select) else None


def _named(item: Any) -> bool:
    """Whether a select item has a name on Trino: an alias, or a column (in parentheses too)."""
    from sqlglot import exp

    inner = item.unnest() if isinstance(item, exp.Paren) else item
    return isinstance(inner, exp.Alias | exp.Column)


def _parse_error(exc: Exception) -> QueryError:
    """sqlglot's error as a reason on one line (:func:`athena.parse_errors.parse_error_text`:
    no class or token reprs, no colour codes), with the position and the statement around it."""
    from athena.parse_errors import parse_error_text

    return QueryError(f"cannot parse the SQL as Athena (Trino) SQL: {parse_error_text(exc)}")


def tables_of(sql: str) -> set[str]:
    """Names of the tables a statement reads (CTEs that shadow them excluded), lower-cased.
    Its statements as :func:`parse_statements` reads them, so ``...; -- note`` is the one query
    it is everywhere else, not a ``Block`` whose CTEs go unseen (``WITH envoy_access AS (...)``
    left the table out: no view, and DuckDB's "circular reference")."""
    return {t.name.lower() for t in table_references(one_statement(sql))}


def table_references(tree: Any) -> list[Any]:
    """The ``exp.Table`` nodes of a parsed statement that read a stored table: a name that is
    database-qualified, or not a CTE its part of the statement sees. So in
    ``WITH envoy_access AS (SELECT ... FROM envoy_access WHERE ...) SELECT ... FROM
    envoy_access`` only the first reference is the table (Trino's WITH is not recursive unless
    it says so). sqlglot's scope analysis knows which CTEs each part sees; statements it does
    not analyse (DESCRIBE, SHOW) count every name that is no CTE at all."""
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    from sqlglot.optimizer.scope import traverse_scope

    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    fallback = [t for t in tree.find_all(exp.Table) if t.name.lower() not in ctes]
    if not isinstance(tree, exp.Query):
        return fallback
    try:
        scopes = traverse_scope(tree)
    except SqlglotError:  # a statement it cannot analyse: the names that are no CTE at all
        return fallback
    refs = []
    for scope in scopes:
        seen = {name.lower() for name in scope.cte_sources}
        refs += [t for t in scope.tables if t.args.get("db") or t.name.lower() not in seen]
    return refs
