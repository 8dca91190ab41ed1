"""``logq tail --follow``: poll the warehouse for new container lines and print them once each.

Lines reach the warehouse seconds after they were written (the aggregator flushes on an
interval), and their timestamps are the container's, not the flush time. So each poll looks back
a window before the newest line already shown and drops lines it printed before, instead of
asking only for "after the last timestamp", which would miss late arrivals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cli.options import Common

#: How far back each poll looks for lines that arrived late.
LOOKBACK = timedelta(minutes=2)
#: Shortest poll interval on Athena, where every poll is a billed query.
ATHENA_MIN_INTERVAL = 10.0
#: Most lines one poll fetches.
POLL_LIMIT = 10_000


def follow_lines(
    common: Common,
    prep: Any,
    first: list[tuple[Any, ...]],
    interval: float,
    printer: Callable[..., None],
    polls: int | None = None,
) -> None:
    """Print ``first``, then new lines every ``interval`` seconds until Ctrl-C (or ``polls``)."""
    from athena.timerange import TimeRange
    from cli import runner

    columns = ["timestamp", "service", "container_name", "stream", "message"]
    result = _Rows(columns)
    seen: dict[tuple[Any, ...], datetime] = {}
    printer(common, result, prep, first, stream=True)
    newest = prep.trange.since
    for row in first:
        seen[row] = _aware(row[0])
        newest = max(newest, _aware(row[0]))
    done = 0
    try:
        while polls is None or done < polls:
            time.sleep(interval)
            done += 1
            now = datetime.now(UTC)
            since = min(newest - LOOKBACK, now - LOOKBACK)
            prep.trange = TimeRange(since, now + timedelta(seconds=1))
            prep.params.update(prep.trange.sql_params())
            prep.params["row_limit"] = POLL_LIMIT
            fetched = runner.execute(common, prep)
            rows = sorted(fetched.rows if fetched else [], key=lambda r: r[0])
            fresh = [r for r in rows if r not in seen]
            for row in fresh:
                seen[row] = _aware(row[0])
                newest = max(newest, _aware(row[0]))
            horizon = newest - 2 * LOOKBACK
            for key in [k for k, ts in seen.items() if ts < horizon]:
                del seen[key]
            if fresh:
                printer(common, result, prep, fresh, stream=True)
    except KeyboardInterrupt:
        return


def _aware(ts: datetime) -> datetime:
    """Athena returns naive UTC timestamps, DuckDB aware ones: compare them as aware."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


class _Rows:
    """The bit of a result the printer needs when following (column names)."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns
        self.rows: list[tuple[Any, ...]] = []
        self.engine = "local"
        self.header_done = False
