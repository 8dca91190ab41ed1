"""``logq trace`` looks in the newest hour first, and reads the whole range only when needed;
an answer from the newest hour alone says so, with the command that searches the rest.

Every answer is checked complete against the rows written; a spy on ``runner.execute`` (the real
queries still run) shows which ranges were read: on Athena each is billed by the bytes scanned.
"""

from __future__ import annotations

import shlex
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


def _run(logq, tmp_path, hop_times: list[datetime], *extra: str):  # type: ignore[no-untyped-def]
    """``logq trace req-42`` over a day in which ``hop_times`` carry that id."""
    uri = str(tmp_path / "wh")
    frame = access_frame(300, SINCE, UNTIL, ["front", "recipe", "cart"], 5)
    hops = frame.index[: len(hop_times)]
    frame.loc[hops, "request_id"] = "req-42"
    frame.loc[hops, "timestamp"] = hop_times
    write_frame(uri, "envoy_access", frame)
    run = logq(
        "trace", "req-42", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
        "-f", "json", "--warehouse", uri, *extra,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    return run


def _trace(logq, tmp_path, hop_times: list[datetime]) -> list[str]:  # type: ignore[no-untyped-def]
    """The hops' timestamps; the answer searched the whole range (it says nothing of a rest)."""
    run = _run(logq, tmp_path, hop_times)
    assert "searched only" not in run.stderr
    return [r["timestamp"] for r in run.json()]


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def test_a_recent_request_is_found_in_the_newest_hour_alone(logq, tmp_path, ranges) -> None:
    hops = [UNTIL - timedelta(minutes=20, milliseconds=m) for m in (0, 4, 9)]
    run = _run(logq, tmp_path, hops)
    assert [r["timestamp"] for r in run.json()] == sorted(_iso(t) for t in hops)
    assert ranges == [(UNTIL - timedelta(hours=1), UNTIL)]
    assert "searched only the newest hour" in run.stderr


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


def test_a_newest_hour_answer_says_what_it_did_not_search(logq, tmp_path, ranges) -> None:
    """The same id 3 hours earlier (a client-supplied id, used again): the newest hour answers
    alone, and says so, with the command that searches the rest; that command finds the rest."""
    old, recent = UNTIL - timedelta(hours=3), UNTIL - timedelta(minutes=10)
    run = _run(logq, tmp_path, [old, recent])
    assert [r["timestamp"] for r in run.json()] == [_iso(recent)]
    assert ranges == [(UNTIL - timedelta(hours=1), UNTIL)]
    start = "2026-01-01T23:00:00Z"
    assert f"searched only the newest hour of the range (from {start})" in run.stderr
    assert "a request whose hops span over 50 minutes" in run.stderr
    command = run.stderr.split("`")[1]
    uri = str(tmp_path / "wh")
    assert command == (
        f"logq trace req-42 --since 2026-01-01T00:00:00Z --until {start} --warehouse {uri}"
    )
    rest = logq(*shlex.split(command)[1:], "-f", "json")
    assert rest.exit_code == 0, rest.stderr
    assert [r["timestamp"] for r in rest.json()] == [_iso(old)]
    assert "searched only" not in rest.stderr  # that range is searched whole


def test_the_command_for_the_rest_ends_where_the_search_began(logq, tmp_path, ranges) -> None:
    """With an ``--until`` between two seconds, the newest hour starts there too: the note and
    its command give that time to the millisecond (rounded up to the next second, the command
    searched a second of the hour already searched, A1s18 #7e)."""
    old, recent = UNTIL - timedelta(hours=3), UNTIL - timedelta(minutes=10)
    until = UNTIL - timedelta(milliseconds=750)
    uri = str(tmp_path / "wh")
    frame = access_frame(300, SINCE, UNTIL, ["front", "recipe", "cart"], 5)
    frame.loc[frame.index[:2], "request_id"] = "req-42"
    frame.loc[frame.index[:2], "timestamp"] = [old, recent]
    write_frame(uri, "envoy_access", frame)
    run = logq("trace", "req-42", "--since", SINCE.isoformat(), "--until", _iso(until),
               "-f", "json", "--warehouse", uri)  # fmt: skip
    assert run.exit_code == 0, run.stderr
    start = until - timedelta(hours=1)
    assert ranges == [(start, until)]
    assert f"(from {_iso(start)})" in run.stderr, run.stderr
    command = run.stderr.split("`")[1]
    assert f"--until {_iso(start)} " in command, command
    rest = logq(*shlex.split(command)[1:], "-f", "json")
    assert [r["timestamp"] for r in rest.json()] == [_iso(old)]
    assert ranges[-1] == (SINCE, start)  # up to the newest hour's start, not a second into it


def test_a_limit_that_cuts_hops_says_so(logq, tmp_path) -> None:
    hops = [UNTIL - timedelta(hours=5, milliseconds=m) for m in (0, 3, 8)]
    cut = _run(logq, tmp_path, hops, "--limit", "2")
    assert [r["timestamp"] for r in cut.json()] == sorted(_iso(t) for t in hops)[:2]
    assert list(cut.json()[0]) == [  # the count drives the note; it is no column of the answer
        "timestamp", "service", "container_name", "method", "path", "response_code",
        "response_flags", "duration_ms", "upstream_service_time_ms", "upstream_host", "authority",
    ]  # fmt: skip
    assert "logq: showing 2 of 3 rows (raise --limit)" in cut.stderr
    whole = _run(logq, tmp_path, hops, "--limit", "3")
    assert len(whole.json()) == 3 and "showing" not in whole.stderr
