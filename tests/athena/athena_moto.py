"""Helpers to drive moto's Athena API emulation: queued results, state progression, history,
and the Glue catalog tables (their properties) that Athena reads."""

from __future__ import annotations

import contextlib
import functools
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3

REGION = "us-east-1"


def _post(endpoint: str, path: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        endpoint + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5):
        pass


def queue_result(endpoint: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> None:
    """The next query moto runs returns ``rows`` (with a header row, as Athena does)."""
    header = {"Data": [{"VarCharValue": name} for name, _ in columns]}
    data = [{"Data": [{} if v is None else {"VarCharValue": str(v)} for v in row]} for row in rows]
    info = [
        {
            "Name": n,
            "Label": n,
            "Type": t,
            "Precision": 0,
            "Scale": 0,
            "Nullable": "UNKNOWN",
            "CaseSensitive": False,
        }
        for n, t in columns
    ]
    _post(
        endpoint,
        "/moto-api/static/athena/query-results",
        {"region": REGION, "results": [{"rows": [header, *data], "column_info": info}]},
    )


def set_progression(endpoint: str, seconds: float | None) -> None:
    """QUEUED → RUNNING → SUCCEEDED one step per ``seconds`` (None: immediate, the default)."""
    if seconds is None:
        _post(
            endpoint,
            "/moto-api/state-manager/unset-transition",
            {"model_name": "athena::execution"},
        )
        return
    _post(
        endpoint,
        "/moto-api/state-manager/set-transition",
        {
            "model_name": "athena::execution",
            "transition": {"progression": "time", "seconds": seconds},
        },
    )


def executions(endpoint: str) -> list[dict[str, Any]]:
    """Every query execution moto has seen (query text, state), via the real Athena API."""
    return [execution(endpoint, i) for i in execution_ids(endpoint)]


# moto's server keeps the executions of the whole test session (every module's), in the order
# they started: a test that needs only their number, the newest or one of them asks for no
# more, where ``executions`` sends one GetQueryExecution for each.


def execution_ids(endpoint: str) -> list[str]:
    """The ids of every query execution moto has seen, oldest first."""
    return _client("athena", endpoint).list_query_executions()["QueryExecutionIds"]


def execution(endpoint: str, query_id: str) -> dict[str, Any]:
    """The query execution ``query_id`` (query text, state), via the real Athena API."""
    client = _client("athena", endpoint)
    return client.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]


def execution_count(endpoint: str) -> int:
    """How many query executions moto has seen (``len(executions(endpoint))``)."""
    return len(execution_ids(endpoint))


def last_execution(endpoint: str) -> dict[str, Any]:
    """The newest query execution moto has seen (``executions(endpoint)[-1]``)."""
    return execution(endpoint, execution_ids(endpoint)[-1])


def glue_table(
    endpoint: str, database: str, table: str, parameters: dict[str, str], location: str
) -> None:
    """Create ``database.table`` in moto's Glue catalog (where Athena keeps its tables), with
    these table properties (``projection.service.values`` ...) and LOCATION."""
    glue = _client("glue", endpoint)
    with contextlib.suppress(glue.exceptions.AlreadyExistsException):
        glue.create_database(DatabaseInput={"Name": database})
    glue.create_table(
        DatabaseName=database,
        TableInput={
            "Name": table,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": parameters,
            "StorageDescriptor": {"Location": location, "Columns": []},
            "PartitionKeys": [{"Name": "service", "Type": "string"}],
        },
    )


def moto_env(endpoint: str) -> dict[str, str]:
    """Environment that points boto3/pyathena's Athena and Glue clients at moto (and only
    those: the Glue catalog holds the tables' properties, which ``logq`` reads for the service
    enum), for this process or a real ``logq`` child."""
    return {
        "AWS_ENDPOINT_URL_ATHENA": endpoint,
        "AWS_ENDPOINT_URL_GLUE": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": REGION,
    }


@functools.cache
def _client(service: str, endpoint: str) -> Any:
    """One client per service and endpoint for the test process (boto3 clients are thread-safe;
    making one reads and builds the service's model, ~50 ms)."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def athena_env(monkeypatch: Any, endpoint: str) -> dict[str, str]:
    """Point this process's Athena and Glue clients at moto (:func:`moto_env`)."""
    env = moto_env(endpoint)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@contextlib.contextmanager
def shared_botocore_loader() -> Iterator[None]:
    """Every botocore session made meanwhile in this process shares one model loader.

    A ``logq --engine athena`` run makes its own sessions (pyathena's, the Glue lookup's), and
    each new session's loader parses AWS's model files again: endpoints, partitions and the
    service's API, ~0.2 CPU-s a run, most of an in-process command's cost. The loader only
    reads and caches files of the installed botocore (``Loader`` caches them per instance
    already): sharing it between the commands a test module runs in-process changes no
    request and no answer.
    """
    import botocore.session

    real = botocore.session.create_loader
    botocore.session.create_loader = functools.cache(real)
    try:
        yield
    finally:
        botocore.session.create_loader = real
