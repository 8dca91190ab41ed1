"""Where the next compaction pass resumes.

A pass looks back ``--lookback-hours`` (48) from now, or, for the periodic task and ``compact``
without ``--lookback-hours``, from that long before the start of the last completed pass over the
whole warehouse (``_compaction/last-pass.json``, at most 30 days), so that the hours of a pause (a
stale heartbeat over a weekend, an outage) are compacted when it ends. A pass that is stopped, or
where every partition failed (an outage), does not move it; one where only some partitions failed
does (they stay in reach 48 hours).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from aggregator.compaction.listing import DEFAULT_LOOKBACK
from aggregator.storage import StorageError, put_bytes
from athena.warehouse import Warehouse

log = logging.getLogger("logq.aggregator.compaction")

#: ``<warehouse>/_compaction/last-pass.json``: hidden from the tables by its ``_`` prefix, like
#: the ledger's heartbeats (``_ledger/_nodes/``), and written the same way (one atomic put).
STATE_DIR = "_compaction"
LAST_PASS = "last-pass.json"
#: A resumed pass looks back at most this far (a pause this long is an incident: the hours
#: before it need ``logq-aggregator compact --all`` or ``--lookback-hours``).
MAX_RESUME_LOOKBACK = timedelta(days=30)


def _last_pass_path(wh: Warehouse) -> str:
    return wh.path(STATE_DIR, LAST_PASS)


def last_pass(wh: Warehouse) -> datetime | None:
    """When the last completed pass over the whole warehouse started (its ``now``: every hour
    closed by then was considered), or None (never, or the record is unreadable)."""
    path = _last_pass_path(wh)
    try:
        with wh.fs.open_input_stream(path) as fh:
            doc = json.loads(fh.read().decode("utf-8"))
        return datetime.fromtimestamp(float(doc["covered_through"]), UTC)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        log.warning("ignoring the unreadable compaction record %s: %s", path, exc)
        return None
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"reading {path} in {wh.uri} failed: {exc}") from exc


def _record_pass(wh: Warehouse, now: datetime) -> None:
    """Note a completed pass (whole or not at all: :func:`put_bytes`). Failing to is only
    logged: the next pass then looks back further than it needs to, which is safe."""
    doc = {"covered_through": now.timestamp(), "finished": time.time()}
    try:
        put_bytes(wh, _last_pass_path(wh), (json.dumps(doc) + "\n").encode("utf-8"))
    except StorageError as exc:
        log.warning("could not record the completed compaction pass: %s", exc)


def resume_lookback(wh: Warehouse, now: datetime, base: timedelta = DEFAULT_LOOKBACK) -> timedelta:
    """``base`` before the last completed pass, counted from ``now`` (``base`` if there was
    none or it is recent), so that the hours of a pause are not skipped; at most
    :data:`MAX_RESUME_LOOKBACK`, with a WARNING naming what is left out."""
    last = last_pass(wh)
    if last is None or last >= now:
        return base
    wanted = now - last + base
    if wanted <= base:
        return base
    if wanted > MAX_RESUME_LOOKBACK:
        log.warning(
            "the last completed compaction pass started at %s; this one looks back only %s: "
            "hours that ended before %s are not compacted (run `logq-aggregator compact --all` "
            "or --lookback-hours for them)",
            last.isoformat(timespec="seconds"),
            MAX_RESUME_LOOKBACK,
            (now - MAX_RESUME_LOOKBACK).isoformat(timespec="seconds"),
        )
        return MAX_RESUME_LOOKBACK
    if now - last > base:
        log.info(
            "the last completed compaction pass started at %s: looking back %.0f hours",
            last.isoformat(timespec="seconds"),
            wanted.total_seconds() / 3600,
        )
    return wanted
