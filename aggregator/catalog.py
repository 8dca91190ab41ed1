"""Keeps the tables' Athena DDL current as services appear.

The ``service`` partition is an ``enum`` projection (athena/ddl.py), so a new service must be added
to the table properties before Athena can see its rows. The catalog knows the services present
in the warehouse (listed once at start, then extended by every flush) and, whenever a new one
appears:

* writes the full current DDL next to the data, ``<warehouse>/_ddl/<table>.sql`` (the ``_``
  prefix keeps readers away; an operator can run it by hand);
* when ``--athena-database`` is set, applies it through Athena: ``CREATE DATABASE`` and
  ``CREATE EXTERNAL TABLE IF NOT EXISTS`` once per start, ``ALTER TABLE … ADD COLUMNS`` for
  columns the schema gained since the DDL last written next to the data (``_ddl/<table>.
  columns.json``), then ``ALTER TABLE … SET TBLPROPERTIES`` with the new
  ``projection.service.values``.

A catalog failure never blocks the data path: it is logged and retried with the next flush
(and by the periodic resync) until the DDL holds every known service.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs

from aggregator.config import Settings
from aggregator.storage import put_bytes, read_small
from athena import ddl
from athena.named import counted
from athena.schema import TABLES, sanitize_service
from athena.stray_folders import is_service
from athena.warehouse import Warehouse, list_entries

log = logging.getLogger("logq.aggregator.catalog")

DDL_DIR = "_ddl"
_PARTITION_RE = re.compile(r"^service=(.+)$")
#: The enum in a stored DDL file (names are sanitised: no quote, no comma inside one).
_SERVICE_VALUES_RE = re.compile(r"'projection\.service\.values'\s*=\s*'([^']*)'")
ATHENA_POLL_SECONDS = 0.2
ATHENA_TIMEOUT_SECONDS = 120.0
#: How long a DDL statement left to finish (:class:`StillRunning`) may be RUNNING before it is
#: stopped and the DDL sent again: one stuck that long (Athena lets DDL run for hours; a DDL
#: statement takes seconds) would keep every new service out of the enum, so out of every
#: query, until then. A QUEUED one is never stopped: that would only send it to the back of
#: the queue again (a queue that slow would then never run it).
PENDING_LIMIT_SECONDS = 1800.0
#: The DDL written is said again to be too long for Athena (without ``--athena-database``) once
#: its longest statement has grown by this fraction since it was last said: said once per
#: process, a long-running aggregator whose enum kept growing said nothing more, and a steady
#: size is not worth saying at every update.
LENGTH_WARN_GROWTH = 0.10


class CatalogError(RuntimeError):
    """Athena refused or failed a DDL statement; the message holds Athena's reason."""


class StillRunning(CatalogError):
    """A DDL statement not finished after :data:`ATHENA_TIMEOUT_SECONDS` (a slow DDL queue).
    It is left to finish: stopping it would only send it to the back of the queue again (a
    queue that stays that slow would then never apply it), and the next update waits for it
    rather than racing it (an older enum landing after a newer one). Only one RUNNING for
    :data:`PENDING_LIMIT_SECONDS` is stopped (:meth:`Catalog._wait_for_pending`)."""

    def __init__(self, qid: str, state: str) -> None:
        super().__init__(
            f"Athena query {qid} still {state} after {ATHENA_TIMEOUT_SECONDS:.0f}s; the next "
            "DDL update waits for it to finish"
        )
        self.qid = qid


class Catalog:
    """The known services and the DDL rendered from them."""

    def __init__(self, warehouse: Warehouse, settings: Settings):
        self.warehouse = warehouse
        self.settings = settings
        self.services: set[str] = set()
        self._lock = threading.Lock()
        self._loaded = False
        self._created = False
        self._applied: frozenset[str] = frozenset()
        """The services of the last DDL that was written (and applied in Athena) whole: a
        failed update leaves the ones it missed out of it, so the next flush or resync tries
        again even when no service is new to it."""
        self._region_warned = False
        self._length_warned = 0
        """The bytes of the longest DDL statement when it was last said to be too long for
        Athena (0: not said, or short enough since): said again once it has grown by
        :data:`LENGTH_WARN_GROWTH`."""
        self._pending: tuple[str, float] | None = None
        """A DDL statement given up on while still queued or running, and when (monotonic)
        it was: the next update waits for it (:class:`StillRunning`), for up to
        :data:`PENDING_LIMIT_SECONDS`."""

    def load(self) -> set[str]:
        """Add the services that have a partition folder in any table; returns them."""
        found = self.listed()
        self.services |= found
        self._loaded = True
        return found

    def listed(self) -> set[str]:
        """The services that have a partition folder in any table (lists the warehouse). A
        folder no aggregator names so (``service=svc=x``, ``service=Svc``, copied in by hand or
        left by an older sanitiser) is no service: no reader reads it
        (:mod:`athena.stray_folders`), and its sanitised name in the enum named no folder."""
        found: set[str] = set()
        for table in TABLES:
            selector = pafs.FileSelector(
                self.warehouse.table_root(table), recursive=False, allow_not_found=True
            )
            for info in list_entries(self.warehouse.fs, selector):
                m = _PARTITION_RE.match(info.base_name)
                if m and info.type == pafs.FileType.Directory and is_service(m.group(1)):
                    found.add(m.group(1))
        return found

    def add_services(self, services: Iterable[str]) -> bool:
        """Record services seen by a flush; refresh the DDL if any is new (runs in a thread).

        Returns whether the DDL is current (False: the update failed and is retried with the
        next flush's services).
        """
        with self._lock:
            new = set(services) - self.services
            if new or not self._loaded:
                # Other aggregators add services to the same tables: list the warehouse before
                # each rewrite, or the enum written here would drop theirs.
                try:
                    self.load()
                except OSError as exc:
                    log.warning("cannot list services in %s: %s", self.warehouse.uri, exc)
            self.services |= new
            if self._created and self.services <= self._applied:
                return True
            try:
                self.refresh()
            except Exception as exc:
                log.warning("could not update the table DDL (%s); retrying on the next flush", exc)
                return False
            self._created = True
            return True

    def resync(self) -> bool:
        """Rewrite the DDL if the warehouse holds services that the stored DDL lacks; run
        periodically, it closes the race of two simultaneous rewrites.

        The stored DDL (``_ddl/<table>.sql``), not what this process last wrote, is compared
        with the listing: when two aggregators rewrite at once, the one whose listing missed
        the other's new service may write last, and then only the stored DDL shows the gap.
        That writer may be gone for good (scaled in) before its own resync, so every replica's
        resync must be able to repair it.
        """
        try:
            listed = self.listed()
            stored = self.stored_services()
        except OSError as exc:
            log.warning("cannot read services or DDL in %s: %s", self.warehouse.uri, exc)
            return False
        # The enum holds names as sanitised (ddl.service_enum); a folder written under an older
        # sanitiser (``service=foo-``) is there as ``foo``: compared raw, it would be "missing"
        # at every resync, and the DDL rewritten (ALTERed in Athena) every 5 minutes for ever.
        missing = {s for s in listed if sanitize_service(s) not in stored}
        if not missing:
            return True
        log.info(
            "the stored DDL lacks %d services found in the warehouse (%s); rewriting it",
            len(missing),
            counted(sorted(missing)),  # not thousands of names in one line (165 KB)
        )
        with self._lock:  # what the warehouse holds is what counts: rewrite even if we wrote it
            self._applied = frozenset(s for s in self._applied if sanitize_service(s) in stored)
        return self.add_services(missing)

    def stored_services(self) -> set[str]:
        """The services in ``projection.service.values`` of every table's stored DDL (those
        all of them hold; none when a table has no stored DDL yet). OSError: unreadable."""
        held: set[str] | None = None
        for table in TABLES:
            data = self._read(f"{table}.sql")
            if data is None:
                return set()
            match = _SERVICE_VALUES_RE.search(data.decode("utf-8", errors="replace"))
            values = set(match.group(1).split(",")) if match else set()
            held = values if held is None else held & values
        return held or set()

    def statements(self) -> list[str]:
        return ddl.create_all(self.warehouse.uri, sorted(self.services))

    def refresh(self) -> None:
        """Write the DDL files and, if configured, apply the DDL in Athena."""
        services = frozenset(self.services)
        fs = self.warehouse.fs
        fs.create_dir(self.warehouse.path(DDL_DIR), recursive=True)
        grown = self._grown_columns()
        if self.settings.athena_database:
            self.apply_athena(grown)
        statements = self.statements()
        if not self.settings.athena_database:
            self._warn_length(statements)
        for table, statement in zip(TABLES, statements, strict=True):
            self._put(f"{table}.sql", statement + ";\n")
            columns = [c.name for c in TABLES[table].data_columns]
            self._put(f"{table}.columns.json", json.dumps(columns) + "\n")
        self._applied = services

    def _warn_length(self, statements: list[str]) -> None:
        """Say that the ``_ddl/*.sql`` written are too long for Athena, again whenever they
        have grown by :data:`LENGTH_WARN_GROWTH` since. Without ``--athena-database`` nothing
        applies them here (:func:`_check_lengths` refuses them when something does), so an
        operator who runs them by hand learns it first from Athena, with no hint of what to
        do."""
        longest = ddl.longest_bytes(statements)
        if self._length_warned and longest < self._length_warned * (1 + LENGTH_WARN_GROWTH):
            return
        why = ddl.too_long(
            longest,
            len(self.services),
            f"Athena refuses the {DDL_DIR}/*.sql written in {self.warehouse.uri} (and what "
            "`logq ddl` prints)",
        )
        if why is None:
            self._length_warned = 0
            return
        self._length_warned = longest
        log.warning("%s (said again if it grows by %.0f%% more)", why, LENGTH_WARN_GROWTH * 100)

    def _read(self, name: str) -> bytes | None:
        """The file ``_ddl/<name>``, whole; None when there is none. On S3 one GetObject
        (:func:`aggregator.storage.read_small`), where pyarrow's ``open_input_stream`` sent a
        HEAD (for the size) before its GET: two round trips, for each file of each table at
        each resync and each update. :class:`aggregator.storage.StorageError` (an OSError)
        when the warehouse cannot be read: never taken for a missing file."""
        found = read_small(self.warehouse, self.warehouse.path(DDL_DIR, name))
        return None if found is None else found.data

    def _put(self, name: str, text: str) -> None:
        """Write ``_ddl/<name>`` whole (:func:`aggregator.storage.put_bytes`): on a local
        warehouse a stream truncated the file in place, so a reader (``logq``, an operator's
        ``cat``) or a stop cutting the write short met a short or empty statement."""
        put_bytes(self.warehouse, self.warehouse.path(DDL_DIR, name), text.encode("utf-8"))

    def _grown_columns(self) -> dict[str, list[str]]:
        """Columns each table has now that the DDL last written next to the data lacked."""
        grown: dict[str, list[str]] = {}
        for table, spec in TABLES.items():
            try:
                data = self._read(f"{table}.columns.json")
                if data is None:
                    continue
                before = set(json.loads(data.decode("utf-8")))
            except (OSError, ValueError):
                continue
            new = [c.name for c in spec.data_columns if c.name not in before]
            if new:
                grown[table] = new
        return grown

    # --- Athena -----------------------------------------------------------------------------

    def apply_athena(self, grown: dict[str, list[str]] | None = None) -> None:
        import boto3

        from athena.engines.athena import default_region

        # The SDKs' rule (AWS_REGION, AWS_DEFAULT_REGION, the profile), as `logq` resolves it.
        region = default_region()
        if region is None:
            region = "us-east-1"
            if not self._region_warned:
                self._region_warned = True
                log.warning(
                    "no AWS region set (AWS_REGION or the profile): applying the Athena DDL "
                    "in us-east-1; set AWS_REGION to the region logq queries"
                )
        client = boto3.session.Session().client("athena", region_name=region)
        db = self.settings.athena_database
        assert db is not None
        statements: list[tuple[str, str | None]] = []
        if not self._created:
            statements.append((f"CREATE DATABASE IF NOT EXISTS {ddl.quote_ident(db)}", None))
            statements += [(s, db) for s in ddl.create_all(self.warehouse.uri, self.services, db)]
            # One column a statement: Hive refuses the whole statement for one duplicate
            # (:func:`_already_added`), which would leave the others out.
            for table, columns in (grown or {}).items():
                statements += [(ddl.add_columns(TABLES[table], [c], db), db) for c in columns]
        statements += [(ddl.set_service_values(t, self.services, db), db) for t in TABLES.values()]
        _check_lengths(statements, len(self.services))
        if self._pending is not None:  # the last update's statement, still queued or running
            self._wait_for_pending(client, *self._pending)
            self._pending = None  # finished or stopped: this update sends the whole DDL again
        for sql, database in statements:
            try:
                run_athena(client, sql, database, self.settings)
            except StillRunning as slow:
                self._pending = (slow.qid, time.monotonic())
                raise
            except CatalogError as exc:
                if not _already_added(sql, exc):
                    raise
                log.info("the table already has the columns of %r; going on", sql)

    def _wait_for_pending(self, client: Any, qid: str, since: float) -> None:
        """Return once the statement ``qid`` given up on at ``since`` has ended; until then
        raise :class:`CatalogError` (the update is sent at a later try, never racing it). One
        still RUNNING :data:`PENDING_LIMIT_SECONDS` after it was given up on is stopped (its
        enum is older than the one to be sent, so nothing is lost); the update goes out once
        Athena says it has ended, so a stop that takes a while cannot let it land last."""
        state = _state(client, qid)
        if state not in ("QUEUED", "RUNNING"):
            return
        waited = time.monotonic() - since
        if state == "RUNNING" and waited >= PENDING_LIMIT_SECONDS:
            log.warning(
                "the DDL statement %s sent %.0f minutes ago is still RUNNING in Athena: stopping "
                "it; the DDL is sent again once it has ended",
                qid,
                waited / 60,
            )
            try:
                client.stop_query_execution(QueryExecutionId=qid)
            except Exception as exc:
                log.warning("could not stop Athena query %s (%s)", qid, exc)
        raise CatalogError(
            f"the DDL statement {qid} sent earlier is still {state} in Athena; the update is "
            "sent once it has finished"
        )


def run_athena(client: Any, sql: str, database: str | None, settings: Settings) -> str:
    """Run one statement and wait for it; raise :class:`CatalogError` with Athena's reason, or
    :class:`StillRunning` when it has not finished after :data:`ATHENA_TIMEOUT_SECONDS`."""
    kwargs: dict[str, Any] = {"QueryString": sql}
    if database:
        kwargs["QueryExecutionContext"] = {"Database": database}
    if settings.athena_workgroup:
        kwargs["WorkGroup"] = settings.athena_workgroup
    if settings.athena_output:
        kwargs["ResultConfiguration"] = {"OutputLocation": settings.athena_output}
    qid = client.start_query_execution(**kwargs)["QueryExecutionId"]
    deadline = time.monotonic() + ATHENA_TIMEOUT_SECONDS
    while True:
        status = client.get_query_execution(QueryExecutionId=qid)["QueryExecution"]["Status"]
        state = status.get("State")
        if state == "SUCCEEDED":
            return qid
        if state in ("FAILED", "CANCELLED"):
            reason = status.get("StateChangeReason", "no reason given")
            raise CatalogError(
                f"Athena {state} for {sql.splitlines()[0]!r}: {reason}{_hint(settings)}"
            )
        if time.monotonic() > deadline:
            raise StillRunning(qid, str(state))
        time.sleep(ATHENA_POLL_SECONDS)


def _check_lengths(statements: list[tuple[str, str | None]], services: int) -> None:
    """Refuse, before sending any, DDL that Athena would refuse at every flush for its length
    (:func:`athena.ddl.too_long`): no new service would reach the Athena table again."""
    why = ddl.too_long(
        ddl.longest_bytes(sql for sql, _ in statements),
        services,
        "new services do not reach the Athena table (`logq --engine local` still reads them)",
    )
    if why is not None:
        raise CatalogError(why)


def _already_added(sql: str, exc: CatalogError) -> bool:
    """Whether ``sql`` is an ``ADD COLUMNS`` that Athena refused because the table has the
    columns already (Hive: "Duplicate column name"). That is the goal reached, not a failure:
    the ``CREATE … IF NOT EXISTS`` just before it creates a missing table with every column, and
    another replica or an operator may have added them first. Taken for a failure, the update
    failed at every retry (``_ddl/*.columns.json`` is only rewritten after a whole update), so
    no new service ever reached the enum."""
    return " ADD COLUMNS (" in sql and "duplicate column" in str(exc).lower()


def _state(client: Any, qid: str) -> str:
    """The state of an earlier DDL statement; one that cannot be read counts as finished (the
    update then goes ahead, as before it was given up on)."""
    try:
        execution = client.get_query_execution(QueryExecutionId=qid)["QueryExecution"]
    except Exception as exc:
        log.warning("could not read the state of Athena query %s (%s)", qid, exc)
        return "UNKNOWN"
    return str(execution["Status"].get("State"))


def _hint(settings: Settings) -> str:
    """What to add when Athena had no result location of ours: the request then went to the
    ``primary`` workgroup, which may have none (the usual cause of such a failure)."""
    if settings.athena_output or settings.athena_workgroup:
        return ""
    return (
        " (no --athena-output or --athena-workgroup was given: Athena used the primary "
        "workgroup, which needs a query result location; pass --athena-output "
        "s3://BUCKET/PREFIX/ or --athena-workgroup NAME)"
    )
