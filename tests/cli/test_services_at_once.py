"""`logq services` on S3 works on a few services at once (``S3_SERVICE_THREADS``): the same
rows in the same order, the same notes and the same first error as one service after the
other, with the footer reads of the services in flight sharing one bound; a local warehouse
goes through them in turn in the calling thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from athena.schema import compacted_object_name
from athena.timerange import iso_utc
from athena.warehouse import open_warehouse
from tests.athena.factory import access_frame, logs_frame, recent_in_one_hour, write_with_writer
from tests.cli.flights import Flights

SERVICES = [f"svc-{i:02d}" for i in range(40)]


def _many_services(uri: str, now: datetime) -> tuple[datetime, datetime]:
    """40 services, their envoy_access rows in three flushes of one writer node (two footers
    per service read: its two newest segments), container_logs of every other service in one
    compaction output, all up to 5 minutes before ``svc-17``'s rows 3 minutes or more before
    ``now`` and in their partition-hour (:func:`recent_in_one_hour`: 6-8 minutes before ``now``, run
    from :06 to :08 the newest hour of many services held their last flush alone, one footer
    read, and the footer count fell short); ``svc-17`` also has rows of a clock 20 minutes
    ahead (a note of its own). Returns svc-17's newest row at or before ``now`` and its
    newest of all."""
    lo, at = recent_in_one_hour(now)
    step = (at - lo) / 6  # the flushes in the first half, in at's hour: see the docstring
    for k in range(3):
        start = lo + step * k
        frame = access_frame(80, start, start + step, SERVICES, seed=k)
        write_with_writer(uri, "envoy_access", frame, seq=10 + k)
    logs = logs_frame(40, lo, lo + step * 3, SERVICES[::2])
    write_with_writer(uri, "container_logs", logs, name=compacted_object_name(f"{1:020x}"))
    ahead = now + timedelta(minutes=20)
    for name, when in ((2, at), (3, ahead)):
        frame = access_frame(2, when, when + timedelta(seconds=1), ["svc-17"], seed=name)
        write_with_writer(uri, "envoy_access", frame, name=compacted_object_name(f"{name:020x}"))
        newest = max(t.to_pydatetime() for t in frame["timestamp"])
        if when == at:
            at = newest
        else:
            ahead = newest
    return at, ahead


def _services(
    logq: Any, uri: str, threads: int, monkeypatch: pytest.MonkeyPatch, *more: str
) -> Any:
    """``logq services -f json`` (and ``more`` options) with ``threads`` services at once (1:
    as before); how long ago or ahead a time is, said in a note, fixed (runs a second apart
    would differ)."""
    import athena.freshness as freshness
    import cli.output

    monkeypatch.setattr(freshness, "S3_SERVICE_THREADS", threads)
    monkeypatch.setattr(cli.output, "since_text", lambda when: "some time ahead")
    return logq("services", "-f", "json", "--warehouse", uri, *more)


@pytest.mark.integration
@pytest.mark.s3
def test_services_on_s3_at_once_answer_as_one_after_the_other(
    logq: Any, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 services on SeaweedFS: the same rows, in the same order, and the same note of rows
    stamped ahead, whether the services are worked on one after the other or at once. And
    they are at once: services overlap (the first waits, up to 10 s, for a second to start,
    which one after the other never does), and the footer reads in flight stay within
    S3_FOOTER_THREADS in all (each service's pool takes its share of the services' 8), not
    8 services x 8 footers."""
    import athena.freshness as freshness

    now = datetime.now(UTC).replace(microsecond=0)
    newest, ahead = _many_services(s3_warehouse, now)
    one_after_the_other = _services(logq, s3_warehouse, 1, monkeypatch)
    assert one_after_the_other.exit_code == 0, one_after_the_other.stderr
    rows = one_after_the_other.json()
    assert [r["service"] for r in rows] == SERVICES
    hours = [(r["access_hours"] > 0, r["log_hours"] > 0) for r in rows[:2]]
    assert hours == [(True, True), (True, False)]  # svc-00 has logs, svc-01 none
    assert rows[17]["newest"] == iso_utc(newest).replace("+00:00", "Z"), rows[17]
    assert f"logq: note: svc-17 also has rows (rows stamped up to {iso_utc(ahead)}" in (
        one_after_the_other.stderr
    )

    services = Flights(freshness.service_hours, first_waits=True)
    footers = Flights(pq.read_metadata, hold=0.005)  # reads of services in flight overlap it
    monkeypatch.setattr(freshness, "service_hours", services)
    monkeypatch.setattr(pq, "read_metadata", footers)
    at_once = _services(logq, s3_warehouse, 8, monkeypatch)
    assert (at_once.exit_code, at_once.stdout, at_once.stderr) == (
        0, one_after_the_other.stdout, one_after_the_other.stderr,
    )  # fmt: skip
    assert services.overlapped == [True], "no second service was started while the first waited"
    assert services.most <= freshness.S3_SERVICE_THREADS, vars(services)
    assert footers.calls >= 2 * len(SERVICES)
    assert footers.most <= freshness.S3_FOOTER_THREADS, vars(footers)


@pytest.mark.integration
@pytest.mark.s3
def test_services_on_s3_at_once_raise_the_first_services_error(
    logq: Any, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files of another tool (times past year 9999: a ForeignFile naming the file) in the
    newest hour of svc-05 and of svc-30: at once, ``logq services`` exits 1 naming svc-05's,
    as one service after the other does, also when svc-30's fails first (svc-05's read is
    held back here until it has)."""
    import athena.freshness as freshness
    from athena.foreign import ForeignFile

    now = datetime.now(UTC).replace(microsecond=0)
    _many_services(s3_warehouse, now)
    wh = open_warehouse(s3_warehouse)
    foreign = {}
    for svc in ("svc-05", "svc-30"):
        folder = pafs.FileSelector(wh.path("envoy_access", f"service={svc}"), recursive=True)
        path = max(f.path for f in wh.fs.get_file_info(folder) if f.is_file)  # newest hour
        rows = pq.read_table(path, filesystem=wh.fs)
        far = pa.array([253402300800000 * 3] * len(rows), pa.int64()).cast(rows["timestamp"].type)
        changed = rows.set_column(rows.schema.get_field_index("timestamp"), "timestamp", far)
        foreign[svc] = f"{path.rsplit('/', 1)[0]}/0-foreign.parquet"
        pq.write_table(changed, foreign[svc], filesystem=wh.fs)
    first, other = foreign["svc-05"], foreign["svc-30"]
    other_failed = threading.Event()
    real = freshness.footer_bound

    def held(wh: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        if path == first and freshness.S3_SERVICE_THREADS > 1:
            assert other_failed.wait(10), "svc-30's foreign file was never read"
        try:
            return real(wh, path, *args, **kwargs)
        except ForeignFile:
            if path == other:
                other_failed.set()
            raise

    monkeypatch.setattr(freshness, "footer_bound", held)
    one_after_the_other = _services(logq, s3_warehouse, 1, monkeypatch)
    assert one_after_the_other.exit_code == 1, one_after_the_other.stdout
    errors = [ln for ln in one_after_the_other.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("logq: error: "), errors
    assert f"the Parquet file {first} holds times past year 9999" in errors[0], errors
    at_once = _services(logq, s3_warehouse, 8, monkeypatch)
    assert other_failed.is_set(), "svc-30's file had not failed before svc-05's was read"
    assert (at_once.exit_code, at_once.stdout, at_once.stderr) == (
        1, one_after_the_other.stdout, one_after_the_other.stderr,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.s3
def test_services_dry_run_on_s3_lists_services_at_once(
    logq: Any, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``logq services --dry-run`` lists each service's hours of each table, a round trip each
    on S3: a few at once (S3_SERVICE_THREADS), the lines as one after the other prints them.
    Overlap is shown, not timed: the first listing waits (up to 10 s) for a second to start,
    which one after the other never does."""
    import athena.freshness as freshness
    import athena.partitions as partitions

    _many_services(s3_warehouse, datetime.now(UTC).replace(microsecond=0))
    one_after_the_other = _services(logq, s3_warehouse, 1, monkeypatch, "--dry-run")
    assert one_after_the_other.exit_code == 0, one_after_the_other.stderr
    lines = one_after_the_other.stdout.splitlines()
    assert lines[1].startswith("--   envoy_access/service=svc-00: "), lines
    assert len(lines) == 1 + len(SERVICES) + len(SERVICES[::2]), lines  # logs: every other

    listings = Flights(partitions.hours_with_data, first_waits=True)
    monkeypatch.setattr(partitions, "hours_with_data", listings)
    at_once = _services(logq, s3_warehouse, 8, monkeypatch, "--dry-run")
    assert (at_once.exit_code, at_once.stdout, at_once.stderr) == (
        0, one_after_the_other.stdout, one_after_the_other.stderr,
    )  # fmt: skip
    assert listings.overlapped == [True], "no second listing started while the first waited"
    assert listings.calls == 2 * len(SERVICES)  # each service in each table
    assert listings.most <= freshness.S3_SERVICE_THREADS, vars(listings)


def test_services_on_a_local_warehouse_use_no_pool(
    logq: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local folder's listings and footers cost tens of microseconds: its services are
    worked on in turn, every footer read (and --dry-run's every listing) in the calling
    thread, with no thread started."""
    import athena.partitions as partitions

    uri = str(tmp_path / "wh")
    now = datetime.now(UTC).replace(microsecond=0)
    _many_services(uri, now)
    footers = Flights(pq.read_metadata)
    monkeypatch.setattr(pq, "read_metadata", footers)
    before = threading.active_count()
    run = _services(logq, uri, 8, monkeypatch)
    assert run.exit_code == 0, run.stderr
    assert [r["service"] for r in run.json()] == SERVICES
    assert footers.calls and footers.threads == {threading.get_ident()}
    assert threading.active_count() == before
    listings = Flights(partitions.hours_with_data)  # --dry-run's listings too
    monkeypatch.setattr(partitions, "hours_with_data", listings)
    dry = _services(logq, uri, 8, monkeypatch, "--dry-run")
    assert dry.exit_code == 0 and f"envoy_access/service={SERVICES[-1]}:" in dry.stdout
    assert listings.calls == 2 * len(SERVICES)
    assert listings.threads == {threading.get_ident()}
