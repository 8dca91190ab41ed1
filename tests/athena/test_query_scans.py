"""Each canned query reads each warehouse table once on Athena, which bills every read.

Athena (Trino) inlines a WITH query wherever it is named ("the SQL for the WITH clause will be
inlined anywhere the named relation is used", trino.io/docs/current/sql/select.html, WITH
clause): a CTE over ``envoy_access`` used twice scans, and bills, its columns twice. So the
reads are counted here as Trino runs them, after inlining every WITH query.
"""

from __future__ import annotations

from collections import Counter

import pytest
import sqlglot
from sqlglot import exp

from athena import queries
from athena.schema import TABLES
from tests.athena.test_queries import COMMON


def table_reads(sql: str) -> Counter[str]:
    """How many times ``sql`` (Trino) reads each table once its WITH queries are inlined."""
    return _reads(sqlglot.parse_one(sql, read="trino"), {})


def _reads(node: exp.Expression, named: dict[str, Counter[str]]) -> Counter[str]:
    """Reads of ``node``: a table counts once per mention, a WITH query as often as it is
    named (each later WITH query sees the earlier ones, as in SQL)."""
    named = dict(named)
    with_ = node.args.get("with_")
    body = node
    if with_ is not None:
        for cte in with_.expressions:
            named[cte.alias_or_name.lower()] = _reads(cte.this, named)
        body = node.copy()
        body.set("with_", None)
    nested = [q for q in body.find_all(exp.Query) if q is not body and q.args.get("with_")]
    assert not nested, "a nested WITH: count it with its own scope"
    total: Counter[str] = Counter()
    for table in body.find_all(exp.Table):
        name = table.name.lower()
        total += named[name] if name in named and not table.db else Counter({name: 1})
    return total


def test_the_count_sees_a_with_query_named_twice() -> None:
    """The counter inlines as Trino does: a CTE named twice is two reads of its table."""
    twice = "WITH s AS (SELECT * FROM envoy_access) SELECT * FROM s JOIN s AS t ON true"
    assert table_reads(twice) == Counter({"envoy_access": 2})
    chained = (
        "WITH a AS (SELECT * FROM envoy_access), b AS (SELECT * FROM a), c AS (SELECT * FROM a) "
        "SELECT * FROM b, c, container_logs"
    )
    assert table_reads(chained) == Counter({"envoy_access": 2, "container_logs": 1})
    assert table_reads("SELECT * FROM logs.envoy_access") == Counter({"envoy_access": 1})


@pytest.mark.parametrize("name", queries.query_names())
def test_each_canned_query_reads_each_table_once(name: str) -> None:
    """The statement Athena receives (parameters quoted in) reads every table it uses once."""
    text = queries.athena_literal_sql(queries.load(name).text, COMMON)
    reads = table_reads(text)
    assert reads and set(reads) <= set(TABLES), (name, reads)
    assert all(n == 1 for n in reads.values()), (name, reads)
