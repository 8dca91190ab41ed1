"""``logq sql "SHOW ..."`` on the local engine: the catalog statements Athena answers.

DuckDB has no catalog of the warehouse: the local engine registers a table only when a
statement names it, so DuckDB's ``SHOW TABLES`` listed nothing (and an engineer read "no
tables"), and ``SHOW COLUMNS FROM t``, Athena's (Hive's) form, is no DuckDB syntax at all. So
the two are answered here from :mod:`athena.schema`, the tables' one definition, in Athena's
shape: ``SHOW TABLES [IN db] ['pattern']`` gives ``tab_name``, ``SHOW COLUMNS {FROM|IN}
[catalog.][db.]table [{FROM|IN} db]`` gives ``field`` (data columns, then the partition columns
``service`` and ``dt``). Any other SHOW is refused with what works instead: DuckDB's own
(``SHOW DATABASES`` is its in-memory ``memory``) would describe DuckDB, not the warehouse.
As for queries, a catalog or database qualifier is not checked (``SHOW TABLES IN nosuchdb``
lists the tables, where Athena says the database does not exist): the local warehouse is one
database.
"""

from __future__ import annotations

import re
from typing import Any

#: A name as Athena takes it: bare, in back quotes, or (Trino) in double quotes.
_NAME = r"(?:`[^`]+`|\"[^\"]+\"|[A-Za-z_][A-Za-z0-9_]*)"
_SHOW_TABLES = re.compile(
    rf"TABLES(?:\s+(?:IN|FROM)\s+{_NAME})?(?:\s+'(?P<pattern>[^']*)')?\s*", re.IGNORECASE
)
_SHOW_COLUMNS = re.compile(
    rf"COLUMNS\s+(?:IN|FROM)\s+(?:{_NAME}\.){{0,2}}(?P<table>{_NAME})"  # [catalog.][db.]
    rf"(?:\s+(?:IN|FROM)\s+{_NAME})?\s*",
    re.IGNORECASE,
)
#: What the local engine answers about the tables, for the refusal of any other SHOW.
SHOW_FORMS = "SHOW TABLES, SHOW COLUMNS FROM <table>, and DESCRIBE <table> (with the column types)"


def show_answer(statement: str) -> Any | None:
    """The answer to ``statement`` when it is a SHOW (a :class:`QueryResult`), None when it is
    not one; ValueError (exit 2, what works instead) for a SHOW the local engine cannot
    answer as Athena would."""
    rest = _show_text(statement)
    if rest is None:
        return None
    tables = _SHOW_TABLES.fullmatch(rest)
    if tables is not None:
        return _tables(tables.group("pattern"))
    columns = _SHOW_COLUMNS.fullmatch(rest)
    if columns is not None:
        return _columns(_unquoted(columns.group("table")))
    head = " ".join(rest.split())  # the statement as given: two words can read as accepted
    head = head if len(head) <= 60 else head[:57] + "..."
    raise ValueError(
        f"the local engine answers {SHOW_FORMS}, not SHOW {head}; "
        "other SHOW statements need --engine athena"
    )


def _show_text(statement: str) -> str | None:
    """What follows SHOW in a one-statement ``statement`` (comments and ``;`` gone), or None."""
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    from athena.queries import parse_statements

    try:
        trees = parse_statements(statement)
    except SqlglotError:
        return None  # not SHOW as sqlglot reads it: the engine reports the error
    if len(trees) != 1 or not isinstance(trees[0], exp.Command):
        return None
    if str(trees[0].this).upper() != "SHOW":
        return None
    return str(trees[0].expression.name).strip()


def _tables(pattern: str | None) -> Any:
    """``tab_name`` rows, those whose whole name ``pattern`` matches (:func:`table_pattern`)."""
    from athena.engines.result import QueryResult
    from athena.schema import TABLES

    names = sorted(TABLES)
    if pattern is not None:
        wanted = table_pattern(pattern)
        names = [n for n in names if wanted.fullmatch(n)]
    return QueryResult(columns=["tab_name"], rows=[(n,) for n in names], engine="local")


def table_pattern(pattern: str) -> re.Pattern[str]:
    """Athena's (Hive's) SHOW TABLES pattern as a regular expression over a whole name, any
    case: ``*`` and ``.*`` are any characters (Athena's documentation names both: ``.*`` is
    the Hive form, so ``'envoy.*'`` must not read as a literal dot), ``.`` any one character,
    ``|`` separates choices. Anything else is literal, so no pattern is a regex error."""

    def choice(text: str) -> str:
        text = text.strip().replace(".*", "*")
        return "".join({"*": ".*", ".": "."}.get(c) or re.escape(c) for c in text)

    return re.compile("|".join(f"(?:{choice(c)})" for c in pattern.split("|")), re.IGNORECASE)


def _columns(table: str) -> Any:
    """``field`` rows of ``table``: its data columns, then the partition columns."""
    from athena.engines.result import QueryResult
    from athena.schema import PARTITION_KEYS, TABLES
    from athena.schema import table as table_of

    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    names = [c.name for c in table_of(table).data_columns] + list(PARTITION_KEYS)
    return QueryResult(columns=["field"], rows=[(n,) for n in names], engine="local")


def _unquoted(name: str) -> str:
    """A table name without its quotes, lower case (Athena's names are)."""
    if name[:1] in '`"' and name[-1:] == name[:1]:
        name = name[1:-1]
    return name.lower()
