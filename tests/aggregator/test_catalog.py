"""The DDL is kept current in Athena (moto's server for the API) and metrics are served."""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from aggregator.catalog import Catalog, CatalogError
from aggregator.config import Settings
from athena.schema import TABLES, partition_path, sanitize_service
from athena.warehouse import open_warehouse
from shipper import wire
from tests.aggregator.helpers import read_acks, record, start_aggregator, wait_rows
from tests.aggregator.s3_hook_proxy import S3HookProxy
from tests.support.metrics import metrics_base
from tests.support.procs import wait_until
from tests.support.seaweedfs import SeaweedFS

pytestmark = pytest.mark.integration


def _athena(endpoint: str):
    return boto3.client(
        "athena",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _queries(client, workgroup: str) -> list[str]:
    ids = client.list_query_executions(WorkGroup=workgroup)["QueryExecutionIds"]
    return [client.get_query_execution(QueryExecutionId=i)["QueryExecution"]["Query"] for i in ids]


def _send(agg, service: str, chunk: str, **extra: str) -> None:
    with agg.connect() as sock:
        frame = wire.encode_packed_forward(
            f"logq.{service}",
            [(time.time_ns(), record(f"hello from {service}", service=service, **extra))],
            chunk,
        )
        sock.sendall(frame)
        assert read_acks(sock, 1) == [chunk]


def test_ddl_applied_through_athena_and_metrics(
    tmp_path: Path, moto_server: str, subprocess_env: dict[str, str]
) -> None:
    client = _athena(moto_server)
    workgroup = f"logq-{uuid.uuid4().hex[:8]}"
    client.create_work_group(Name=workgroup)
    env = {
        **subprocess_env,
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    agg = start_aggregator(
        tmp_path,
        env=env,
        extra=[
            "--athena-database", "logs",
            "--athena-workgroup", workgroup,
            "--athena-output", "s3://athena-results/logq/",
            "--metrics-listen", "127.0.0.1:0",
        ],
    )  # fmt: skip
    try:
        _send(agg, "recipe", "a")
        _send(agg, "checkout", "b")
        wait_rows(agg.warehouse, "container_logs", 2, agg)
        _send(agg, "New Service", "c")
        wait_rows(agg.warehouse, "container_logs", 3, agg)
        _send(agg, "recipe", "d", image="envoyproxy/envoy:v1.31")  # not an access line
        base = metrics_base(agg.log_text())
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
            assert resp.status == 200
        # Rows per table and service: the denominator of a service's parse-failure ratio.
        rows_line = (
            'logq_aggregator_rows_written_total{service="recipe",table="container_logs"} 2.0'
        )
        metrics = ""

        def scraped() -> bool:
            nonlocal metrics
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
                metrics = resp.read().decode()
            return rows_line in metrics

        wait_until(scraped, 15, "rows_written metric", proc=agg.proc, log=agg.log)
    finally:
        assert agg.stop() == 0
    assert "logq_aggregator_records_received_total 4.0" in metrics
    assert "logq_aggregator_acks_total 4.0" in metrics
    assert 'logq_aggregator_envoy_parse_failures_total{service="recipe"} 1.0' in metrics
    assert 'logq_aggregator_envoy_parse_failures_total{service="checkout"} 0.0' in metrics
    rows = 'logq_aggregator_rows_written_total{service="checkout",table="%s"} %s'
    assert rows % ("container_logs", "1.0") in metrics
    assert rows % ("envoy_access", "0.0") in metrics
    queries = _queries(client, workgroup)
    assert any(q.startswith("CREATE DATABASE IF NOT EXISTS `logs`") for q in queries)
    creates = [q for q in queries if q.startswith("CREATE EXTERNAL TABLE IF NOT EXISTS")]
    assert {re.search(r"`logs`\.`(\w+)`", q).group(1) for q in creates} == {
        "envoy_access",
        "container_logs",
    }
    alters = [q for q in queries if "SET TBLPROPERTIES ('projection.service.values'" in q]
    everyone = ",".join(sorted(["checkout", "recipe", sanitize_service("New Service")]))
    assert any(everyone in q for q in alters), alters


def test_two_aggregators_never_drop_each_others_services_from_the_enum(tmp_path: Path) -> None:
    """A and B share a warehouse; each rewrites the DDL when it sees a new service. The enum
    must hold every service with data, whoever wrote it."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    a, b = Catalog(wh, Settings()), Catalog(wh, Settings())

    def data_of(service: str) -> None:  # a flush writes the partition before the catalog runs
        folder = Path(wh.path(partition_path("container_logs", service, "2026-11-28-10")))
        folder.mkdir(parents=True)
        (folder / "x.parquet").write_bytes(b"")

    for s in ("a", "b"):
        data_of(s)
    assert a.add_services({"a", "b"})
    data_of("c")
    assert b.add_services({"c"})
    data_of("d")
    assert a.add_services({"d"})  # A last listed before c existed
    ddl_text = (tmp_path / "wh" / "_ddl" / "container_logs.sql").read_text()
    assert "'projection.service.values' = 'a,b,c,d'," in ddl_text

    # The crossing case: B rewrote after A's listing; A's periodic resync repairs the enum.
    data_of("e")
    b.services.add("e")
    b.refresh()
    data_of("f")
    a.services.add("f")
    a.refresh()  # as if A had listed before e existed: e is dropped for now
    assert "'a,b,c,d,f'," in (tmp_path / "wh" / "_ddl" / "container_logs.sql").read_text()
    assert a.resync()
    assert "'a,b,c,d,e,f'," in (tmp_path / "wh" / "_ddl" / "container_logs.sql").read_text()


def test_a_ddl_file_is_replaced_whole_never_rewritten_in_place(tmp_path: Path) -> None:
    """A reader that opened ``_ddl/<table>.sql`` before a rewrite reads the old statement
    whole: the new one replaces the file, it does not truncate and refill it in place."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    catalog = Catalog(wh, Settings())
    folder = Path(wh.path(partition_path("container_logs", "a", "2026-11-28-10")))
    folder.mkdir(parents=True)
    (folder / "x.parquet").write_bytes(b"")
    assert catalog.add_services({"a"})
    sql = tmp_path / "wh" / "_ddl" / "container_logs.sql"
    before = sql.read_text()
    with sql.open() as reading:
        folder = Path(wh.path(partition_path("container_logs", "b", "2026-11-28-10")))
        folder.mkdir(parents=True)
        (folder / "x.parquet").write_bytes(b"")
        assert catalog.add_services({"b"})
        assert reading.read() == before
    assert "'projection.service.values' = 'a,b'," in sql.read_text()


def test_a_crossing_is_repaired_by_the_resync_of_the_replica_that_did_not_write_last(
    tmp_path: Path,
) -> None:
    """A lists the warehouse, B lands a new service and writes the DDL with it, A writes its
    DDL (listed before that service existed) last and is scaled in: B's resync must repair the
    stored DDL, though B's own last rewrite held every service."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    a, b = Catalog(wh, Settings()), Catalog(wh, Settings())
    stored = tmp_path / "wh" / "_ddl" / "container_logs.sql"

    def data_of(service: str) -> None:
        folder = Path(wh.path(partition_path("envoy_access", service, "2026-11-28-10")))
        folder.mkdir(parents=True)
        (folder / "x.parquet").write_bytes(b"")

    data_of("alpha")
    assert a.add_services({"alpha"}) and b.add_services({"alpha"})
    data_of("zeta")
    refresh_of_a = a.refresh

    def a_writes_last() -> None:  # A has listed (alpha, zeta); B's rewrite lands meanwhile
        data_of("beta")
        assert b.add_services({"beta"})
        assert "'projection.service.values' = 'alpha,beta,zeta'," in stored.read_text()
        refresh_of_a()

    a.refresh = a_writes_last  # type: ignore[method-assign]
    assert a.add_services({"zeta"})
    assert "'projection.service.values' = 'alpha,zeta'," in stored.read_text()
    del a  # scaled in: its own resync never runs

    assert b.stored_services() == {"alpha", "zeta"}
    assert b.resync()
    for table in ("container_logs", "envoy_access"):
        text = (tmp_path / "wh" / "_ddl" / f"{table}.sql").read_text()
        assert "'projection.service.values' = 'alpha,beta,zeta'," in text
    assert b.stored_services() == {"alpha", "beta", "zeta"}
    assert b.resync()  # current now: nothing to rewrite


@pytest.mark.parametrize("legacy", ["legacy-", "a__b", "Upper", "svc=x", "%2F.."])
def test_resync_leaves_the_ddl_alone_for_a_folder_named_before_sanitising_changed(
    tmp_path: Path, legacy: str
) -> None:
    """A service folder whose name is not its own sanitised form (an older sanitiser kept a
    trailing ``-`` or a ``__``; a folder copied in by hand) is no service: no reader reads it
    (athena.stray_folders), so the enum does not name it (its sanitised name, there before,
    named no folder); and the periodic resync must find nothing missing, not rewrite the DDL
    (and ALTER every table in Athena) at each run, on every replica, for ever."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    for service in ("checkout", legacy):
        folder = tmp_path / "wh" / "container_logs" / f"service={service}" / "dt=2026-11-28-10"
        folder.mkdir(parents=True)
        (folder / "x.parquet").write_bytes(b"")
    catalog = Catalog(wh, Settings())
    assert catalog.add_services({"checkout"})
    assert catalog.stored_services() == {"checkout"}
    rewrites: list[frozenset[str]] = []
    refresh = catalog.refresh

    def counted() -> None:
        rewrites.append(frozenset(catalog.services))
        refresh()

    catalog.refresh = counted  # type: ignore[method-assign]
    for _ in range(3):
        assert catalog.resync()
    assert rewrites == []
    assert catalog.add_services({"checkout"})  # the next flush: current, nothing to write
    assert rewrites == []


def test_a_failed_enum_update_is_retried_until_athena_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Athena refused one ALTER (throttling, a concurrent Glue update): the service it added
    must reach the enum at the next flush or resync, not only when another service appears."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    catalog = Catalog(wh, Settings(athena_database="logq"))
    applied: list[list[str]] = []
    refuse = {"next": False}

    def apply_athena(grown: object = None) -> None:  # stands in for Athena's API
        if refuse["next"]:
            refuse["next"] = False
            raise CatalogError("TooManyRequestsException: Rate exceeded")
        applied.append(sorted(catalog.services))

    monkeypatch.setattr(catalog, "apply_athena", apply_athena)
    assert catalog.add_services({"recipe"})
    refuse["next"] = True
    assert not catalog.add_services({"checkout"})
    assert applied == [["recipe"]]
    assert catalog.add_services({"checkout"})  # the next flush of the same service
    assert applied[-1] == ["checkout", "recipe"]
    ddl_text = (tmp_path / "wh" / "_ddl" / "envoy_access.sql").read_text()
    assert "'projection.service.values' = 'checkout,recipe'," in ddl_text
    assert catalog.add_services({"checkout"}) and len(applied) == 2  # current: nothing to do

    # Refused again, then no flush brings the service back: the periodic resync does it.
    folder = Path(wh.path(partition_path("envoy_access", "search", "2026-11-28-10")))
    folder.mkdir(parents=True)
    refuse["next"] = True
    assert not catalog.add_services({"search"})
    assert catalog.resync()
    assert applied[-1] == ["checkout", "recipe", "search"]


def _impatient_catalog(
    tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Catalog, Callable[[], list[dict]]]:
    """A catalog of one service on moto's Athena that gives a statement up after 0.2 s, and
    the executions of its own database (other tests share the server)."""
    from aggregator import catalog as catalog_mod
    from tests.athena.athena_moto import athena_env, executions

    athena_env(monkeypatch, moto_server)
    monkeypatch.setattr(catalog_mod, "ATHENA_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(catalog_mod, "ATHENA_POLL_SECONDS", 0.05)
    db = f"logs_{uuid.uuid4().hex[:8]}"
    catalog = Catalog(
        open_warehouse(str(tmp_path / "wh"), create=True),
        Settings(athena_database=db, athena_output="s3://athena-results/"),
    )
    catalog.services = {"recipe"}

    def mine() -> list[dict]:
        return [e for e in executions(moto_server) if db in e["Query"]]

    return catalog, mine


def test_a_ddl_statement_given_up_on_is_waited_for_not_raced(
    tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement still queued after the timeout is left to finish (stopping it sent it to
    the back of a slow queue on every retry: R2), and the next update sends nothing until it
    has finished (a newer enum must not race an older one)."""
    from aggregator import catalog as catalog_mod
    from tests.athena.athena_moto import set_progression

    catalog, mine = _impatient_catalog(tmp_path, moto_server, monkeypatch)

    # QUEUED, RUNNING, SUCCEEDED: a step every 3 s, so the statement is still QUEUED or
    # RUNNING at the second update on a loaded machine too (with a step a second, 2 s between
    # the two calls let it end first and the second update sent the next statement).
    set_progression(moto_server, 3.0)
    try:
        with pytest.raises(catalog_mod.StillRunning):
            catalog.apply_athena()
        [first] = mine()
        with pytest.raises(CatalogError, match=r"sent earlier is still (QUEUED|RUNNING)"):
            catalog.apply_athena()
        assert [e["QueryExecutionId"] for e in mine()] == [first["QueryExecutionId"]]
        wait_until(
            lambda: mine()[0]["Status"]["State"] == "SUCCEEDED", 30, "the slow statement to end"
        )
    finally:
        set_progression(moto_server, None)
    catalog.apply_athena()  # the earlier statement finished: the whole DDL goes out again
    runs = mine()
    assert len(runs) > 1 and all(r["Status"]["State"] == "SUCCEEDED" for r in runs)
    assert not any(r["Status"]["State"] == "CANCELLED" for r in runs)


def test_a_queued_ddl_statement_is_never_stopped_however_long_it_waits(
    tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping a QUEUED statement sends it to the back of the queue: done at every update, a
    queue slower than the limit would never run the DDL (R2). It is waited for, however long."""
    from aggregator import catalog as catalog_mod
    from tests.athena.athena_moto import set_progression

    catalog, mine = _impatient_catalog(tmp_path, moto_server, monkeypatch)
    monkeypatch.setattr(catalog_mod, "PENDING_LIMIT_SECONDS", 0.0)  # as if 30 min had passed
    set_progression(moto_server, 600.0)  # stays QUEUED for the whole test
    try:
        with pytest.raises(catalog_mod.StillRunning):
            catalog.apply_athena()
        for _ in range(2):
            with pytest.raises(CatalogError, match="sent earlier is still QUEUED"):
                catalog.apply_athena()
        [queued] = mine()
        assert queued["Status"]["State"] == "QUEUED"
    finally:
        set_progression(moto_server, None)


class _Stuck:
    """Athena with one DDL statement RUNNING, which a stop ends only a poll later (Athena
    stops a query asynchronously)."""

    def __init__(self) -> None:
        self.states = ["RUNNING"]
        self.stops = 0

    def get_query_execution(self, QueryExecutionId: str) -> dict:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"QueryExecution": {"Status": {"State": state}}}

    def stop_query_execution(self, QueryExecutionId: str) -> dict:
        if not self.stops:
            self.states = ["RUNNING", "CANCELLED"]
        self.stops += 1
        return {}


def test_a_ddl_statement_running_past_the_limit_is_stopped_and_waited_for(
    tmp_path: Path,
) -> None:
    """One RUNNING past PENDING_LIMIT_SECONDS (Athena lets DDL run for hours) is stopped rather
    than keeping new services out of the enum; the update goes out only once Athena says it has
    ended, so a slow stop cannot let the older enum land last."""
    from aggregator import catalog as catalog_mod

    catalog = Catalog(open_warehouse(str(tmp_path / "wh"), create=True), Settings())
    athena = _Stuck()
    now = time.monotonic()
    with pytest.raises(CatalogError, match="still RUNNING"):
        catalog._wait_for_pending(athena, "q1", now)  # within the limit
    assert athena.stops == 0
    long_ago = now - catalog_mod.PENDING_LIMIT_SECONDS
    with pytest.raises(CatalogError, match="still RUNNING"):
        catalog._wait_for_pending(athena, "q1", long_ago)  # stopped, not ended yet
    assert athena.stops == 1
    with pytest.raises(CatalogError, match="still RUNNING"):
        catalog._wait_for_pending(athena, "q1", long_ago)  # the stop is still under way
    catalog._wait_for_pending(athena, "q1", long_ago)  # ended: the update may go out


class _Refusing:
    """An Athena client whose every statement fails as Athena fails one without a result
    location (moto's server runs every query it is given)."""

    def start_query_execution(self, **kwargs: object) -> dict:
        self.kwargs = kwargs
        return {"QueryExecutionId": "q1"}

    def get_query_execution(self, QueryExecutionId: str) -> dict:
        reason = "No output location provided. An output location is required."
        return {"QueryExecution": {"Status": {"State": "FAILED", "StateChangeReason": reason}}}


@pytest.mark.parametrize(
    ("settings", "hinted"),
    [
        (Settings(athena_database="logs"), True),
        (Settings(athena_database="logs", athena_workgroup="etl"), False),
        (Settings(athena_database="logs", athena_output="s3://r/"), False),
    ],
)
def test_a_ddl_refused_without_a_result_location_says_which_flag_to_add(
    settings: Settings, hinted: bool
) -> None:
    from aggregator.catalog import run_athena

    client = _Refusing()
    with pytest.raises(CatalogError) as refused:
        run_athena(client, "CREATE DATABASE IF NOT EXISTS `logs`", None, settings)
    assert "No output location provided" in str(refused.value)
    assert (
        "pass --athena-output s3://BUCKET/PREFIX/ or --athena-workgroup" in str(refused.value)
    ) is hinted
    assert ("WorkGroup" in client.kwargs) is (settings.athena_workgroup is not None)


@pytest.mark.s3
def test_the_stored_ddl_is_read_in_one_request_a_file_and_as_before(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_ddl/<table>.sql`` and ``.columns.json`` are read in one GetObject each (pyarrow's
    ``open_input_stream`` sent a HEAD first: two round trips a file, at each resync and each
    DDL update); a missing file, a present one and a refused read mean what they meant."""
    proxy = S3HookProxy(int(seaweedfs.endpoint.rsplit(":", 1)[1]))
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        catalog = Catalog(open_warehouse(s3_warehouse), Settings(warehouse=s3_warehouse))
        assert catalog.stored_services() == set()  # no DDL stored yet
        assert catalog._grown_columns() == {}
        assert catalog.add_services({"alpha"})  # writes it
        proxy.seen.clear()
        assert catalog.stored_services() == {"alpha"}
        assert catalog._grown_columns() == {}
        assert proxy.requests_to("/_ddl/") == ["GET"] * (2 * len(TABLES)), proxy.seen

        # A read S3 refuses is no missing DDL (which would rewrite it as if none were there).
        proxy.refused = re.compile("/_ddl/")
        with pytest.raises(OSError, match="AccessDenied"):
            catalog.stored_services()
        assert catalog.resync() is False
    finally:
        proxy.close()


class _HasColumns:
    """An Athena client over tables that have every column but ``message``: it refuses an
    ``ADD COLUMNS`` of any other one as Hive does, the whole statement for one duplicate
    (moto's server runs every statement it is given), and runs the rest."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}
        self.missing = "ALTER TABLE `logq`.`container_logs` ADD COLUMNS (`message` string)"

    def start_query_execution(self, QueryString: str, **kwargs: object) -> dict:
        qid = f"q{len(self.sent)}"
        self.sent[qid] = QueryString
        return {"QueryExecutionId": qid}

    def get_query_execution(self, QueryExecutionId: str) -> dict:
        sql = self.sent[QueryExecutionId]
        if " ADD COLUMNS (" in sql and sql != self.missing:
            reason = "FAILED: SemanticException [Error 10036]: Duplicate column name: stream"
            return {"QueryExecution": {"Status": {"State": "FAILED", "StateChangeReason": reason}}}
        return {"QueryExecution": {"Status": {"State": "SUCCEEDED"}}}


def test_columns_the_table_has_already_do_not_block_the_enum_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored column list predates a column (DDL written before Athena was configured, or
    by an older version), so the start's DDL holds ``CREATE … IF NOT EXISTS`` (which creates
    the table whole) then ``ADD COLUMNS``, which Athena refuses as a duplicate: the enum update
    must go on, not fail at every flush."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    catalog = Catalog(wh, Settings(athena_database="logq", athena_output="s3://r/"))
    new_columns = ("stream", "message")
    older = [c.name for c in TABLES["container_logs"].data_columns if c.name not in new_columns]
    catalog._put("container_logs.columns.json", json.dumps(older) + "\n")
    client = _HasColumns()
    monkeypatch.setattr(boto3.session.Session, "client", lambda self, *a, **k: client)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    assert catalog.add_services({"recipe"})
    sent = list(client.sent.values())
    adds = [q for q in sent if " ADD COLUMNS (" in q]
    # Refused for `stream` (the table has it); `message`, which it lacks, is added all the same.
    assert adds == [client.missing.replace("message", "stream"), client.missing], sent
    alters = [q for q in sent if "SET TBLPROPERTIES ('projection.service.values' = 'recipe')" in q]
    assert len(alters) == len(TABLES), sent
    stored = json.loads((tmp_path / "wh" / "_ddl" / "container_logs.columns.json").read_text())
    assert set(new_columns) <= set(stored)


def test_an_enum_over_athenas_query_limit_is_refused_before_it_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """2,100 service names of 128 characters make an ``ALTER`` over Athena's 262,144-byte
    limit: Athena refused it at every flush, saying only that the query was too long. Now
    nothing is sent, and the warning says what is too long and what to do."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    catalog = Catalog(wh, Settings(athena_database="logq", athena_output="s3://r/"))
    client = _HasColumns()
    monkeypatch.setattr(boto3.session.Session, "client", lambda self, *a, **k: client)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    assert catalog.add_services({"recipe"})  # a short enum goes through
    sent = len(client.sent)
    many = {f"{i:04d}" + "s" * 124 for i in range(2100)}
    with caplog.at_level(logging.WARNING, logger="logq.aggregator.catalog"):
        assert not catalog.add_services(many)
    assert len(client.sent) == sent  # nothing sent Athena would refuse
    assert "over Athena's 262,144-byte query limit" in caplog.text
    assert "2,101 names" in caplog.text and "logq.service" in caplog.text


def test_the_resync_line_names_a_few_missing_services_and_counts_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: the resync's INFO line named every service the stored DDL lacked: 165 KB in one
    line with thousands. Now it names a few and counts the others."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    catalog = Catalog(wh, Settings())
    assert catalog.add_services(set())
    names = [f"svc-{i:05d}-" + "x" * 40 for i in range(3000)]
    for service in names:
        folder = Path(wh.path(partition_path("container_logs", service, "2026-11-28-10")))
        folder.mkdir(parents=True)
        (folder / "x.parquet").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="logq.aggregator.catalog"):
        assert catalog.resync()
    said = [r.getMessage() for r in caplog.records if "stored DDL lacks" in r.message]
    assert len(said) == 1 and len(said[0]) < 400, said
    assert said[0].startswith(
        f"the stored DDL lacks 3000 services found in the warehouse ({names[0]}"
    )
    assert "more); rewriting it" in said[0]
    assert catalog.stored_services() == set(names)


def test_ddl_files_over_athenas_query_limit_are_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: without --athena-database the _ddl/*.sql written could pass Athena's
    262,144-byte limit (441 KB at 20,000 long names) without a word: only the catalog that
    applies them checked. Now the aggregator says so once, with the size and what to do."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    catalog = Catalog(wh, Settings())
    with caplog.at_level(logging.WARNING, logger="logq.aggregator.catalog"):
        assert catalog.add_services({"recipe"})  # short: nothing to say
        assert not caplog.records
        assert catalog.add_services({f"{i:04d}" + "s" * 124 for i in range(2100)})
        assert catalog.add_services({"one-more"})
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said
    assert "service enum of 2,101 names makes a DDL statement of 27" in said[0]
    assert "over Athena's 262,144-byte query limit: Athena refuses the _ddl/*.sql" in said[0]
    assert "logq.service" in said[0]
    assert (tmp_path / "wh" / "_ddl" / "container_logs.sql").stat().st_size > 262_144


def test_ddl_files_over_athenas_query_limit_are_warned_about_again_as_they_grow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect: the too-long warning was said once per process: an aggregator whose enum kept
    growing for weeks said nothing more. Now it is said again once the DDL has grown by a tenth
    since it was last said (not at every new service)."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    catalog = Catalog(wh, Settings())
    with caplog.at_level(logging.WARNING, logger="logq.aggregator.catalog"):
        assert catalog.add_services({f"{i:04d}" + "s" * 124 for i in range(2100)})
        assert catalog.add_services({f"{i:04d}" + "t" * 124 for i in range(100)})  # under 10%
        assert catalog.add_services({f"{i:04d}" + "u" * 124 for i in range(200)})  # 300 since
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert "service enum of 2,100 names" in said[0]
    assert "service enum of 2,400 names" in said[1]
    assert said[1].endswith("(said again if it grows by 10% more)")


class _CountedText(str):
    """A DDL statement that counts its encodings (a few hundred KB each with many services)."""

    encoded = 0

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        _CountedText.encoded += 1
        return super().encode(encoding, errors)


def test_an_update_encodes_each_ddl_statement_once_to_size_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The length check encoded every statement twice (its longest, then again for the
    warning's text): 2 x 270 KB at each update of 2,100 long names. The size is taken once."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    catalog = Catalog(wh, Settings())
    statements = Catalog.statements
    monkeypatch.setattr(
        Catalog, "statements", lambda self: [_CountedText(s) for s in statements(self)]
    )
    for services in ({"recipe"}, {f"{i:04d}" + "s" * 124 for i in range(2100)}):
        _CountedText.encoded = 0
        assert catalog.add_services(services)
        assert _CountedText.encoded == len(TABLES)
