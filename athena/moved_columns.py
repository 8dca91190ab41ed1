"""Where the columns of the tables logq replaces went: a hint for a query written for them.

A Fluent Bit or Fluentd pipeline writes each record to S3 as it was sent (``log``, ``stream``,
``time``, a ``kubernetes`` map, FireLens's ``ecs_*`` keys), and a hand-written Athena table
names those keys as its columns, partitioned by date parts (``year``, ``month``, ``day``, or a
Glue crawler's ``partition_0``). Such a query, run on logq's tables, fails on the first of those
names, and the engines' own messages point elsewhere: DuckDB offers the look-alike ``host`` for
``log``, Athena says only that the column cannot be resolved. :func:`moved_hint` names the
column that holds the value now (docs/operations.md, "Coming from Fluent Bit / Fluentd").
"""

from __future__ import annotations

import re

_DT = "`dt`, the UTC hour as text (`dt >= '2026-12-06-00'`), or --since/--until"
_CONTAINER = (
    "in `container_name`, `<namespace>/<pod>/<container>` on Kubernetes "
    "(`split_part(container_name, '/', 1)` is the namespace, 2 the pod); labels are not stored"
)

#: A column (or map) of the old tables -> where its value is in logq's.
MOVED: dict[str, str] = {
    "log": "`message` in container_logs (an Envoy access line is parsed into envoy_access's "
    "columns instead: `path`, `response_code`...)",
    "time": "`timestamp` (UTC, milliseconds)",
    "date": "`timestamp` (UTC, milliseconds)",
    "@timestamp": "`timestamp` (UTC, milliseconds)",
    "source": "`stream`",
    "kubernetes": _CONTAINER,
    "pod_name": _CONTAINER,
    "namespace_name": _CONTAINER,
    "labels": _CONTAINER,
    "docker_id": "`container_id`",
    "ecs_task_definition": "`service` (the task definition's family)",
    "ecs_cluster": "not stored",
    "ecs_task_arn": "not stored",
    "container_image": "not stored (it tells an Envoy data plane's lines, parsed into "
    "envoy_access)",
    "tag": "`service` (the tag's last part, for a record that names no service)",
    "year": _DT,
    "month": _DT,
    "day": _DT,
    "hour": _DT,
}

#: How DuckDB and Athena name a column, or the map or table it is read from, they cannot find.
_MISSING = re.compile(
    r'Referenced column "(?P<duck_column>[^"]+)" not found'
    r'|Referenced table "(?P<duck_table>[^"]+)" not found'
    r'|does not have a column named "(?P<duck_values>[^"]+)"'
    r"|Column '(?P<athena>[^']+)' cannot be resolved"
)
_GLUE_PARTITION = re.compile(r"partition_[0-9]+")


def moved_hint(message: str) -> str:
    """``"; ..."`` to append to an engine's error ``message`` when the column it cannot find is
    one of the old tables' (:data:`MOVED`), naming where its value is now; else ``""``."""
    m = _MISSING.search(message)
    if m is None:
        return ""
    name = next(group for group in m.groups() if group)
    parts = name.lower().split(".")  # Athena names c.log, kubernetes.pod_name as written
    for part in (parts[-1], parts[0]):
        where = _DT if _GLUE_PARTITION.fullmatch(part) else MOVED.get(part)
        if where is not None:
            return (
                f"; `{part}` is a column of the Fluent Bit / Fluentd tables logq replaces: here "
                f'it is {where} (docs/operations.md, "Coming from Fluent Bit / Fluentd")'
            )
    return ""
