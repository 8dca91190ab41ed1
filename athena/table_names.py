"""The names of the warehouse's two tables, apart from their columns (:mod:`athena.schema`).

Standard library only: ``logq-aggregator compact --help`` offers them as ``--table``'s choices,
and the aggregator's metrics count rows per table, without importing pyarrow (the columns'
Arrow types) for it.
"""

from __future__ import annotations

#: One row per Envoy access-log line.
ENVOY_ACCESS_NAME = "envoy_access"
#: One row per other line (application output, Envoy's own lines, access lines that did not parse).
CONTAINER_LOGS_NAME = "container_logs"
#: Both, in the order of :data:`athena.schema.TABLES`.
TABLE_NAMES = (ENVOY_ACCESS_NAME, CONTAINER_LOGS_NAME)
