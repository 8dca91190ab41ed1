"""The local engine: DuckDB over the warehouse's Parquet files, with our own partition pruning.

The canned Athena SQL is transpiled by sqlglot (:func:`athena.queries.to_duckdb`). Each table the
statement reads becomes a DuckDB view over exactly the files :func:`athena.partitions.plan` chose:

* a local warehouse: DuckDB's own Parquet reader over the file list (column pruning, row-group
  statistics, parallel scan);
* an S3 warehouse: a ``pyarrow.dataset`` over the same list through pyarrow's S3 filesystem
  (DuckDB's httpfs extension is not available offline); DuckDB scans it with projection and filter
  pushdown, so only the needed columns are fetched.

``service`` and ``dt`` come from the Hive-style folder names, as they do on Athena.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from athena.engines.result import EngineError, QueryResult, ScanBudgetError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from athena.partitions import Partition
    from athena.timerange import TimeRange
    from athena.warehouse import Warehouse


def _sql_str(value: str) -> str:
    """A DuckDB string literal (quotes doubled); used only for file paths we listed ourselves."""
    return "'" + value.replace("'", "''") + "'"


def full_schema(table: str) -> pa.Schema:
    """The table as queries see it: the file columns plus ``service`` and ``dt``."""
    import pyarrow as pa

    from athena.schema import table as schema_table

    base = schema_table(table).arrow_schema()
    return base.append(pa.field("service", pa.string())).append(pa.field("dt", pa.string()))


def _integral_decimals_to_int(table: pa.Table) -> pa.Table:
    """DuckDB sums and counts as HUGEINT (DECIMAL(38,0) in Arrow); Athena returns bigint."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type) and f.type.scale == 0:
            table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
    return table


class LocalEngine:
    """Runs Athena SQL on DuckDB over one warehouse."""

    name = "local"

    def __init__(self, warehouse: str | None = None, max_scan_bytes: int | None = None) -> None:
        from athena.warehouse import open_warehouse

        self.warehouse: Warehouse = open_warehouse(warehouse)
        self.max_scan_bytes = max_scan_bytes

    def plan(self, table: str, services: list[str] | None, trange: Any | None) -> list[Partition]:
        """The partitions a query over ``table`` will read (see :func:`athena.partitions.plan`)."""
        from athena.partitions import plan

        return plan(self.warehouse, table, services, trange)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        con = duckdb.connect(":memory:")
        # date_trunc, casts and printing of TIMESTAMPTZ follow the session zone: make it UTC.
        con.execute("SET TimeZone = 'UTC'")
        return con

    def _register(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        parts: list[Partition],
        rows: TimeRange | None = None,
    ) -> None:
        """``table`` as a view of ``parts``; with ``rows``, only rows with a ``timestamp`` in it
        (partitions are whole hours, ``logq sql --since 15m`` means the last 15 minutes)."""
        import pyarrow as pa

        schema = full_schema(table)
        files = [f.path for p in parts for f in p.files]
        if not files:
            con.register(table, pa.Table.from_batches([], schema=schema))
            return
        where = ""
        if rows is not None:
            where = (
                f' WHERE "timestamp" >= TIMESTAMPTZ {_sql_str(rows.since.isoformat())}'
                f' AND "timestamp" < TIMESTAMPTZ {_sql_str(rows.until.isoformat())}'
            )
        if not self.warehouse.is_s3:
            listing = ", ".join(_sql_str(f) for f in files)
            con.execute(
                f'CREATE OR REPLACE TEMP VIEW "{table}" AS SELECT * FROM read_parquet('
                f"[{listing}], hive_partitioning = true, union_by_name = true, "
                "hive_types = {'service': VARCHAR, 'dt': VARCHAR})" + where
            )
            return
        import pyarrow.dataset as ds

        dataset = ds.dataset(
            files,
            schema=schema,
            format="parquet",
            filesystem=self.warehouse.fs,
            partitioning=ds.partitioning(
                pa.schema([("service", pa.string()), ("dt", pa.string())]), flavor="hive"
            ),
            partition_base_dir=self.warehouse.table_root(table),
        )
        if not where:
            con.register(table, dataset)
            return
        con.register(f"_logq_{table}_files", dataset)
        con.execute(
            f'CREATE OR REPLACE TEMP VIEW "{table}" AS SELECT * FROM "_logq_{table}_files"{where}'
        )

    def prepare(
        self, sql: str, params: dict[str, Any], scopes: dict[str, list[Partition]]
    ) -> tuple[str, dict[str, Any]]:
        """The DuckDB statement and bound values for Athena ``sql`` (what --dry-run prints)."""
        from athena.queries import to_duckdb

        return to_duckdb(sql, params)

    def run(
        self,
        sql: str,
        params: dict[str, Any],
        scopes: dict[str, list[Partition]] | None = None,
        rows: TimeRange | None = None,
    ) -> QueryResult:
        """Run Athena ``sql`` with ``params`` over the partitions in ``scopes``.

        ``scopes`` None: every table the statement reads is read in full (found by parsing it).
        Given, it must name every warehouse table the statement reads (canned queries know).
        ``rows``: the tables show only rows whose ``timestamp`` falls in it (``logq sql``; the
        canned queries filter in their own SQL).
        """
        import duckdb

        if scopes is None:
            from athena.queries import tables_of
            from athena.schema import TABLES

            scopes = {name: self.plan(name, None, None) for name in tables_of(sql) & set(TABLES)}
        duck_sql, bound = self.prepare(sql, params, scopes)
        total = sum(p.bytes for parts in scopes.values() for p in parts)
        if self.max_scan_bytes is not None and total > self.max_scan_bytes:
            raise ScanBudgetError(
                f"the query would read {total:,} bytes of Parquet, over --max-scan-bytes "
                f"{self.max_scan_bytes:,}; narrow --since/--until or --service"
            )
        con = self._connect()
        try:
            for name, parts in scopes.items():
                self._register(con, name, parts, rows)
            started = time.perf_counter()
            try:
                table = con.sql(duck_sql, params=bound).to_arrow_table()
            except duckdb.Error as exc:
                raise EngineError(f"DuckDB could not run the query: {exc}") from exc
            elapsed = time.perf_counter() - started
        finally:
            con.close()
        table = _integral_decimals_to_int(table)
        return QueryResult(
            columns=table.column_names,
            rows=[tuple(r.values()) for r in table.to_pylist()],
            engine=self.name,
            elapsed_s=elapsed,
            scanned_bytes=total,
            partitions=[p.relative for parts in scopes.values() for p in parts],
            files=sum(len(p.files) for parts in scopes.values() for p in parts),
            sql=duck_sql,
        )
