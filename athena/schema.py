"""The two tables of the warehouse: the single source of truth for the Parquet writer and the DDL.

Every column is declared once here with its Arrow type, its Athena type and a comment. The
aggregator's writer builds its Arrow tables from :func:`arrow_schema`, ``athena.ddl`` renders
``CREATE EXTERNAL TABLE`` from the same list, so the files and the DDL cannot drift apart.

Layout (DESIGN.md §2): ``<warehouse>/<table>/service=<service>/dt=<YYYY-MM-DD-HH>/<file>.parquet``.
``service`` and ``dt`` are partition columns: they live in the path, not in the files.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from athena.table_names import CONTAINER_LOGS_NAME, ENVOY_ACCESS_NAME, TABLE_NAMES
from athena.timerange import dt_of as dt_of  # the dt value of a time, defined there

#: Partition value format for ``dt``: the UTC hour.
DT_FORMAT = "%Y-%m-%d-%H"
#: Athena projection format matching :data:`DT_FORMAT` (Java DateTimeFormatter pattern).
DT_PROJECTION_FORMAT = "yyyy-MM-dd-HH"

TIMESTAMP = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class Column:
    """One column of a table."""

    name: str
    """Column name, identical in Parquet, Athena and DuckDB."""
    arrow: pa.DataType
    """Arrow type the writer produces."""
    athena: str
    """Athena (Hive DDL) type."""
    comment: str
    """What the column holds; rendered into the DDL."""


@dataclass(frozen=True)
class Table:
    """A warehouse table: its data columns plus the partition columns ``service`` and ``dt``."""

    name: str
    columns: tuple[Column, ...]
    comment: str

    @property
    def data_columns(self) -> tuple[Column, ...]:
        """Columns stored inside the Parquet files (partition columns excluded)."""
        return tuple(c for c in self.columns if c.name not in PARTITION_KEYS)

    def arrow_schema(self) -> pa.Schema:
        """Schema of the Parquet files the writer produces (no partition columns)."""
        return pa.schema([pa.field(c.name, c.arrow) for c in self.data_columns])

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _c(name: str, arrow: pa.DataType, athena: str, comment: str) -> Column:
    return Column(name, arrow, athena, comment)


_COMMON_HEAD = (
    _c("timestamp", TIMESTAMP, "timestamp", "event time, UTC, millisecond precision"),
    _c("service", pa.string(), "string", "service name (partition column)"),
    _c("host", pa.string(), "string", "host the shipper runs on"),
    _c("container_id", pa.string(), "string", "container id (Docker) or pod uid/container (CRI)"),
    _c("container_name", pa.string(), "string", "container name"),
)

ENVOY_ACCESS = Table(
    name=ENVOY_ACCESS_NAME,
    comment="One row per Envoy access-log line",
    columns=(
        *_COMMON_HEAD,
        _c("method", pa.string(), "string", "HTTP method (:method)"),
        _c("path", pa.string(), "string", "request path (x-envoy-original-path or :path)"),
        _c("protocol", pa.string(), "string", "HTTP/1.1, HTTP/2, ..."),
        _c("response_code", pa.int32(), "int", "HTTP status; 0 when downstream went away"),
        _c("response_flags", pa.string(), "string", "Envoy response flags, '-' when none"),
        _c("bytes_received", pa.int64(), "bigint", "request body bytes"),
        _c("bytes_sent", pa.int64(), "bigint", "response body bytes"),
        _c("duration_ms", pa.int32(), "int", "total request duration in ms"),
        _c(
            "upstream_service_time_ms",
            pa.int32(),
            "int",
            "x-envoy-upstream-service-time, NULL for '-'",
        ),
        _c("x_forwarded_for", pa.string(), "string", "x-forwarded-for, NULL for '-'"),
        _c("user_agent", pa.string(), "string", "user-agent"),
        _c("request_id", pa.string(), "string", "x-request-id"),
        _c("authority", pa.string(), "string", ":authority / host header"),
        _c("upstream_host", pa.string(), "string", "upstream host:port, NULL for '-'"),
    ),
)

CONTAINER_LOGS = Table(
    name=CONTAINER_LOGS_NAME,
    comment="One row per container output line that is not an Envoy access-log line",
    columns=(
        *_COMMON_HEAD,
        _c("stream", pa.string(), "string", "stdout or stderr; NULL when the sender named neither"),
        _c("message", pa.string(), "string", "the line, without its trailing newline"),
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (ENVOY_ACCESS, CONTAINER_LOGS)}
assert tuple(TABLES) == TABLE_NAMES, TABLES  # athena/table_names.py: their names, in order
PARTITION_KEYS = ("service", "dt")
#: The name of a compaction output: ``c-`` and 20 hex digits. A flush object is named
#: ``<node id>-<16 digits>-<4 digits>.parquet`` (a node may be called ``c``), so the two never
#: match each other. A compaction output holds rows of the flush files it merged:
#: ``logq tail --follow``, which prints the rows of new objects, must not print them again.
_COMPACTED_NAME = re.compile(r"c-[0-9a-f]{20}\.parquet")


def compacted_object_name(uid: str) -> str:
    """The name of the compaction output with id ``uid`` (20 hex digits)."""
    name = f"c-{uid}.parquet"
    if not is_compacted_object(name):
        raise ValueError(f"a compaction output id is 20 hex digits, got {uid!r}")
    return name


def is_compacted_object(name: str) -> bool:
    """Whether the file name ``name`` is a compaction output (see :func:`compacted_object_name`)."""
    return _COMPACTED_NAME.fullmatch(name) is not None


def table(name: str) -> Table:
    """Look a table up by name, with an error that lists the real ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; the tables are: {', '.join(TABLES)}") from None


# --- partition values -------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^a-z0-9_.-]+")
_DOTS = re.compile(r"\.{2,}")
_UNDERSCORES = re.compile(r"_{2,}")
#: The longest partition value a service name becomes, its hash included.
MAX_SERVICE_LEN = 128
UNKNOWN_SERVICE = "unknown"
#: Hex digits of the sha1 that keeps a name apart when sanitising loses part of it (40 bits:
#: among 1,000 such names, two share a hash with odds of about 1 in 2 million).
SERVICE_HASH_CHARS = 10
#: Characters of its own a name keeps when it is hashed: ``-`` and the hash fill the rest of
#: :data:`MAX_SERVICE_LEN`.
_KEPT_CHARS = MAX_SERVICE_LEN - 1 - SERVICE_HASH_CHARS


@dataclass(frozen=True)
class SanitizedService:
    """What :func:`sanitized_service` made of a service name, and what it lost on the way."""

    value: str
    """The partition value (:func:`sanitize_service`)."""
    dropped: tuple[str, ...] = ()
    """The characters dropped for having no ASCII form once accents fold (``З``, ``注``,
    ``ø``, ``ß``, an emoji, U+FFFD, a byte that is not UTF-8), each once, in order."""
    cut_from: int = 0
    """The length of the sanitised name when it was longer than :data:`MAX_SERVICE_LEN`
    (then cut), else 0."""
    hashed: bool = False
    """Whether the value ends in a hash of the name (``api-<hash>``, ``svc-<hash>``): it lost
    characters, was cut, or had nothing printable left. It tells little of the name, so the
    writer says which name it stands for (:mod:`aggregator.stored_names`). False for a name
    stored already (``svc-0123456789`` sanitises to itself)."""

    @property
    def lossy(self) -> bool:
        """Whether the name lost part of itself (characters dropped, or cut): hashed with
        what is left of it, where a name with nothing printable is ``svc-<hash>``."""
        return bool(self.dropped or self.cut_from)


def sanitize_service(name: str | None) -> str:
    """Make a service name safe as a partition value and a path segment.

    Lower-cased, accents folded, anything but ``[a-z0-9_.-]`` replaced by ``_``, runs of dots
    and underscores collapsed and ``._-`` stripped at the ends (no ``.`` / ``..`` segment). A
    name that loses information on the way (characters with no ASCII form dropped, or longer
    than :data:`MAX_SERVICE_LEN` once sanitised) gets ``-<hash>`` of its bytes as sent
    (:func:`_name_bytes`), its own part cut so the whole is at most 128 characters
    (``Заказы-api`` -> ``api-<hash>``, ``注文-api`` -> ``api-<another hash>``). Without it
    both landed in ``api``, the folder of a service really called ``api``, and two long names
    sharing their first 128 characters in one folder, without a word. A name with nothing
    printable left becomes ``svc-<hash>``. Folding case and accents and replacing ``/`` or
    spaces merges names by design and hashes nothing: those folders never moved. The same
    function runs in the writer and in the query engines, so ``--service Recipe`` finds what
    the writer stored; a stored name sanitises to itself.
    """
    return sanitized_service(name).value


def sanitized_service(name: str | None) -> SanitizedService:
    """:func:`sanitize_service`, with what the name lost (the aggregator names it once in its
    log; ``logq --service`` takes a hashed name as its hashed folder)."""
    if not name:
        return SanitizedService(UNKNOWN_SERVICE)
    text = str(name)
    decomposed = unicodedata.normalize("NFKD", text)
    folded = decomposed.encode("ascii", "ignore").decode("ascii")
    dropped = () if len(folded) == len(decomposed) else _no_ascii_form(decomposed)
    cleaned = _UNSAFE.sub("_", folded.strip().lower())
    # No ".." segment, then no "__" noise (in this order: "_.." becomes "__" first). A stored
    # name sanitises to itself, so `--service <stored name>` finds its folder.
    cleaned = _UNDERSCORES.sub("_", _DOTS.sub("_", cleaned)).strip("._-")
    cut_from = len(cleaned) if len(cleaned) > MAX_SERVICE_LEN else 0
    if cleaned and not (dropped or cut_from):
        return SanitizedService(cleaned)
    # Lost part of it, or nothing printable survived (e.g. a name in another script): keep
    # names apart by hash, after what is left of the name when anything is.
    digest = hashlib.sha1(_name_bytes(text)).hexdigest()[:SERVICE_HASH_CHARS]
    kept = cleaned[:_KEPT_CHARS].rstrip("._-") or "svc"
    return SanitizedService(f"{kept}-{digest}", dropped, cut_from, hashed=True)


def _no_ascii_form(decomposed: str) -> tuple[str, ...]:
    """The characters of ``decomposed`` (NFKD) that folding to ASCII drops, other than
    accents (combining marks, which fold ``é`` to ``e`` by design), each once."""
    return tuple(
        dict.fromkeys(c for c in decomposed if ord(c) > 127 and not unicodedata.combining(c))
    )


def _name_bytes(name: str) -> bytes:
    """The bytes a name was sent as, for its hash. A name that is not valid UTF-8 comes with
    each bad byte escaped as a lone surrogate (U+DC80..U+DCFF: ``surrogateescape``, as msgpack,
    the aggregator's decoder and Python's command line hand them over): encoded back, distinct
    byte strings hash apart, and the hash the CLI computes for such a name is the folder its
    records went to (``logq --service`` takes it as that folder). Other lone surrogates (a
    JSON ``\\ud800``) stand for no byte: ``surrogatepass``, as always. A valid name is its
    UTF-8 either way, so its folder never moves."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogatepass")


def parse_dt(value: str) -> datetime:
    """Inverse of :func:`dt_of`: the start of the hour a ``dt`` value names (UTC)."""
    return datetime.strptime(value, DT_FORMAT).replace(tzinfo=UTC)


def partition_path(table_name: str, service: str, dt: str) -> str:
    """Relative folder of one partition: ``<table>/service=<service>/dt=<dt>``."""
    return f"{table_name}/service={sanitize_service(service)}/dt={dt}"
