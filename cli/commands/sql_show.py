"""``logq sql "SHOW ..."`` on the local engine: the catalog statements Athena answers.

DuckDB has no catalog of the warehouse: the local engine registers a table only when a
statement names it, so DuckDB's ``SHOW TABLES`` listed nothing (and an engineer read "no
tables"), and ``SHOW COLUMNS FROM t``, Athena's (Hive's) form, is no DuckDB syntax at all. So
the two are answered here from :mod:`athena.schema`, the tables' one definition, in Athena's
shape: ``SHOW TABLES [IN db] ['pattern']`` gives ``tab_name``, ``SHOW COLUMNS {FROM|IN}
[db.]table [{FROM|IN} db]`` gives ``field`` (data columns, then the partition columns
``service`` and ``dt``). Any other SHOW is refused with what works instead: DuckDB's own
(``SHOW DATABASES`` is its in-memory ``memory``) would describe DuckDB, not the warehouse.
As for queries, a database qualifier is not checked: the local warehouse is one database.
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
    rf"COLUMNS\s+(?:IN|FROM)\s+(?:{_NAME}\.)?(?P<table>{_NAME})(?:\s+(?:IN|FROM)\s+{_NAME})?\s*",
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
    words = " ".join(rest.split()[:2])
    raise ValueError(
        f"the local engine answers {SHOW_FORMS}, not SHOW {words[:40]}; "
        "other SHOW statements need --engine athena"
    )


def _show_text(statement: str) -> str | None:
    """What follows SHOW in a one-statement ``statement`` (comments and ``;`` gone), or None."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    from athena.queries import quiet_sqlglot

    try:
        with quiet_sqlglot():
            trees = [t for t in sqlglot.parse(statement, read="trino") if t is not None]
    except SqlglotError:
        return None  # not SHOW as sqlglot reads it: the engine reports the error
    if len(trees) != 1 or not isinstance(trees[0], exp.Command):
        return None
    if str(trees[0].this).upper() != "SHOW":
        return None
    return str(trees[0].expression.name).strip()


def _tables(pattern: str | None) -> Any:
    """``tab_name`` rows; Athena's pattern: ``*`` any characters, ``|`` between choices."""
    from athena.engines.result import QueryResult
    from athena.schema import TABLES

    names = sorted(TABLES)
    if pattern is not None:
        choices = "|".join(
            ".*".join(map(re.escape, choice.strip().split("*"))) for choice in pattern.split("|")
        )
        names = [n for n in names if re.fullmatch(choices, n, re.IGNORECASE)]
    return QueryResult(columns=["tab_name"], rows=[(n,) for n in names], engine="local")


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
