"""What an engine hands back: rows plus what it cost to get them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from athena.partitions import Partition

#: What to do about a warehouse file or folder logq may not read (the local engine's error
#: for a Parquet file, the CLI's for any other ``PermissionError``).
READ_ACCESS_HINT = "let the user running logq read it (chmod/chown)"


class EngineError(RuntimeError):
    """A query failed in an engine; the message says what to change."""


class StatementError(EngineError):
    """The engine refused the statement itself: a column, table or function that does not
    exist, a syntax or type error, a value its SQL cannot convert, a file or setting the local
    sandbox does not allow. Running it again cannot help; the SQL has to change.

    Whose fault that is depends on who wrote the SQL, which only the caller knows: for
    ``logq sql`` it is bad input (exit 2, :func:`cli.errors.friendly` with ``user_sql``); for
    a canned query it is logq's own bug, an engine failure like any other (exit 1)."""


class ScanBudgetError(EngineError):
    """The query would scan (or scanned) more than ``--max-scan-bytes`` allows."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while an Athena query ran (``timeout``, a CI job's kill, a
    closed terminal or ssh session).

    A :class:`KeyboardInterrupt`, so that everything that stops a query on Ctrl-C stops it on
    these too (pyathena's cancel of a query whose start was in flight included); the program
    then exits :attr:`exit_status`, 128 + the signal's number, the status shells and
    ``timeout --preserve-status`` report for a program the signal ended (143 for SIGTERM).
    Not Ctrl-C's 130: a script or CI log then tells a user's Ctrl-C from a kill."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class EngineStuck(KeyboardInterrupt):
    """Ctrl-C asked DuckDB to stop the query, and it had not stopped when logq stopped waiting
    (a read that does not answer, a statement that does not check for interruptions).

    A :class:`KeyboardInterrupt`: the program ends as on any Ctrl-C (status 130, ``logq:
    interrupted``), then says this in one more line. The statement still runs in its thread:
    its connection cannot be closed (DuckDB refuses, "connection is busy"), and is left to the
    end of the process."""

    def __init__(self, waited: float) -> None:
        self.waited = waited
        super().__init__(
            f"the local engine (DuckDB) did not stop the query within {waited:g} s of the "
            "Ctrl-C; exiting without waiting for it"
        )


#: Rows a streamed result hands over at a time: what the output holds at once (a few MB of
#: Python values for Envoy rows, ~3.6 KiB each as JSON text and values together).
STREAM_BATCH_ROWS = 5_000
#: Rows an engine fetches before a streamed result starts to be printed: a result up to this
#: size is whole before the first byte goes out (so the local engine can still run it again
#: unseen, for a table of mixed schema versions or a file compaction replaced); only larger
#: ones stream. The table format shows at most this many rows (``cli.output.TABLE_MAX_ROWS``).
STREAM_WINDOW_ROWS = 10_000


class RowBatches(Protocol):
    """The rows of a streamed result after its first window, a batch (a list of row tuples) at a
    time, fetched from the engine as they are read: one pass, then closed. Closing early (the
    table's cap, a closed pipe, Ctrl-C) stops the query and lets go of the engine's connection.
    Errors while reading are the engine's own (:class:`EngineError`, ``KeyboardInterrupt``)."""

    def __iter__(self) -> Iterator[list[tuple[Any, ...]]]: ...

    def close(self, interrupted: bool = False) -> None:
        """Stop the query and let go of the connection. ``interrupted``: the program is ending
        on a Ctrl-C; the query must still be stopped, but what takes long to free may be left
        to the end of the process."""
        ...


#: Athena's price per byte scanned (USD 5 per TB) and its per-query minimum (10 MB).
USD_PER_BYTE = 5.0 / 1024**4
MIN_BILLED_BYTES = 10 * 1024**2


def human_bytes(n: float) -> str:
    """1536 → ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TiB"


def athena_cost_usd(scanned_bytes: int) -> float:
    """Athena's charge for one query: per MB rounded up, 10 MB minimum, USD 5 per TB."""
    mb = 1024**2
    billed = max(MIN_BILLED_BYTES, -(-scanned_bytes // mb) * mb)
    return billed * USD_PER_BYTE


@dataclass
class QueryResult:
    """Rows of one query and its statistics."""

    columns: list[str]
    """Column names, in order."""
    rows: list[tuple[Any, ...]]
    """Row values (datetimes aware UTC, ints, floats, strings, None). For a streamed result
    (:attr:`more` set) only its first rows: at least one if the answer has any."""
    engine: str
    """``local`` or ``athena``."""
    elapsed_s: float = 0.0
    """Wall time of the query itself (not listing or Python start-up)."""
    scanned_bytes: int | None = None
    """Athena: bytes scanned as billed. Local: total size of the files given to DuckDB."""
    partitions: list[str] = field(default_factory=list)
    """Partitions read (``table/service=…/dt=…``), local engine."""
    files: int = 0
    """Number of data files opened, local engine."""
    scopes: dict[str, list[Partition]] = field(default_factory=dict)
    """Local engine: the files each table was read from in the end. Not always those it was
    given: a file that vanished under the query (compaction) sent it back to a fresh listing.
    ``tail --follow`` counts these as printed history."""
    query_id: str | None = None
    """Athena query execution id."""
    sql: str = ""
    """The final SQL the engine ran."""
    more: RowBatches | None = None
    """A streamed result's rows after :attr:`rows`, not fetched yet (None: :attr:`rows` is the
    whole answer). Asked for with ``stream=True`` by callers that write rows as they come."""

    def close(self, interrupted: bool = False) -> None:
        """Stop a streamed result that is not read to its end (no-op otherwise); see
        :meth:`RowBatches.close` for ``interrupted``."""
        if self.more is not None:
            self.more.close(interrupted)

    @property
    def cost_usd(self) -> float | None:
        """Athena's price for this query, when it ran on Athena."""
        if self.engine != "athena" or self.scanned_bytes is None:
            return None
        return athena_cost_usd(self.scanned_bytes)

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]
