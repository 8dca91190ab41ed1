"""``logq trace`` looks in the newest hour first, and reads the whole range only when needed.

Every answer is checked complete against the rows written; a spy on ``runner.execute`` (the real
queries still run) shows which ranges were read: on Athena each is billed by the bytes scanned.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from cli import runner
from tests.athena.factory import access_frame, utc, write_frame

UNTIL = utc(2026, 1, 2, 0, 0)
SINCE = UNTIL - timedelta(days=1)


@pytest.fixture
def ranges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[datetime, datetime]]:
    seen: list[tuple[datetime, datetime]] = []
    real = runner.execute

    def spy(common, prep):  # type: ignore[no-untyped-def]
        seen.append((prep.trange.since, prep.trange.until))
        return real(common, prep)

    monkeypatch.setattr(runner, "execute", spy)
    return seen


def _trace(logq, tmp_path, hop_times: list[datetime]) -> list[str]:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "wh")
    frame = access_frame(300, SINCE, UNTIL, ["front", "recipe", "cart"], 5)
    hops = frame.index[: len(hop_times)]
    frame.loc[hops, "request_id"] = "req-42"
    frame.loc[hops, "timestamp"] = hop_times
    write_frame(uri, "envoy_access", frame)
    run = logq(
        "trace", "req-42", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
        "-f", "json", "--warehouse", uri,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    return [r["timestamp"] for r in run.json()]


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def test_a_recent_request_is_found_in_the_newest_hour_alone(logq, tmp_path, ranges) -> None:
    hops = [UNTIL - timedelta(minutes=20, milliseconds=m) for m in (0, 4, 9)]
    assert _trace(logq, tmp_path, hops) == sorted(_iso(t) for t in hops)
    assert ranges == [(UNTIL - timedelta(hours=1), UNTIL)]


def test_an_older_request_is_found_in_the_whole_range(logq, tmp_path, ranges) -> None:
    hops = [SINCE + timedelta(hours=3, milliseconds=m) for m in (0, 7)]
    assert _trace(logq, tmp_path, hops) == sorted(_iso(t) for t in hops)
    assert ranges == [(UNTIL - timedelta(hours=1), UNTIL), (SINCE, UNTIL)]


def test_hops_across_the_start_of_the_newest_hour_all_come_back(logq, tmp_path, ranges) -> None:
    """The first hop found is close to the hour's start: earlier hops may lie before it."""
    start = UNTIL - timedelta(hours=1)
    hops = [start - timedelta(seconds=2), start + timedelta(seconds=1)]
    assert _trace(logq, tmp_path, hops) == sorted(_iso(t) for t in hops)
    assert ranges == [(start, UNTIL), (SINCE, UNTIL)]


def test_a_short_range_is_read_once(logq, tmp_path, ranges) -> None:
    uri = str(tmp_path / "wh")
    write_frame(uri, "envoy_access", access_frame(50, SINCE, UNTIL, ["front"], 2))
    run = logq("trace", "nope", "--since", "30m", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0 and run.json() == []
    assert len(ranges) == 1
