"""Query engines: ``local`` (DuckDB over the warehouse files) and ``athena`` (pyathena).

Both take the same Athena SQL and parameters and return a
:class:`~athena.engines.result.QueryResult`.
"""

from __future__ import annotations

from athena.engines.result import EngineError, QueryResult, ScanBudgetError, StatementError

__all__ = ["EngineError", "QueryResult", "ScanBudgetError", "StatementError"]
