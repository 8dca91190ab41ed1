"""A source that fails (one broken file) is started again soon, with a backoff.

It waited for the next discovery pass: with inotify covering the folders, the safety-net
rescan, max(``--discover-interval``, 10 s), and its lines were not shipped meanwhile. Now the
pass at its retry time starts it again: 1 s after its first failure, the pause doubling with
each failure in a row up to that full-scan delay, so a file that fails every time does not
spin. Here ``--discover-interval`` is 60 s: a restart at the next full scan fails the waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from shipper import daemon
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.source import SourceRunner
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, stop_runners, until

FIRST = 0.05
"""RETRY_SECONDS in the shipping test: four failures in a row take 0.75 s, not 15 s."""


def append(path: Path, lines: list[str]) -> None:
    with path.open("a") as f:
        f.writelines(f"{line}\n" for line in lines)


def test_a_failing_source_is_retried_with_a_backoff_and_ships_each_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = [f"before-{i}" for i in range(10)]
    during = [f"during-{i}" for i in range(10)]
    after = [f"after-{i}" for i in range(10)]
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    append(log, before)
    receiver = Receiver()
    args = ("--path", str(log), "--poll-interval", "0.02", "--discover-interval", "60")
    cfg = load_config(shipper_args(tmp_path, receiver, *args))
    monkeypatch.setattr(daemon, "RETRY_SECONDS", FIRST)
    broken = False
    failures = 0
    real_deliver = SourceRunner._deliver

    async def deliver(self: SourceRunner, batch):  # type: ignore[no-untyped-def]
        nonlocal failures
        if broken:
            failures += 1
            raise RuntimeError("a broken file")
        return await real_deliver(self, batch)

    pauses: list[float] = []
    real_note = Shipper._note_failure

    def note_failure(self: Shipper, key: str, ran_since: float | None) -> float:
        pauses.append(real_note(self, key, ran_since))
        return pauses[-1]

    monkeypatch.setattr(SourceRunner, "_deliver", deliver)
    monkeypatch.setattr(Shipper, "_note_failure", note_failure)

    async def go() -> tuple[bytes, int]:
        nonlocal broken
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        try:
            await until(lambda: shipper.lines_acked == len(before))
            broken = True
            append(log, during)
            # Each failure is followed by a restart, which reads the same lines and fails.
            await until(lambda: failures >= 4)
            broken = False
            append(log, after)
            total = len(before) + len(during) + len(after)
            await until(lambda: shipper.lines_acked == total)
            await until(lambda: shipper.window.used == 0, timeout=10)
            shipper._update_gauges()
            return generate_latest(shipper.metrics.registry), shipper.window.used
        finally:
            shipper.request_stop()
            await run

    try:
        with caplog.at_level(logging.INFO, logger="logq.shipper"):
            scrape, used = asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        receiver.close()
    # Consecutive failures back off: each pause doubles the one before (the runs in between
    # are far shorter than the 60 s that would start the count over).
    assert len(pauses) == failures >= 4
    assert pauses == pytest.approx([FIRST * 2**i for i in range(failures)])
    assert caplog.text.count("source failed, will retry in") == failures
    # Each failure was followed by exactly one restart, by a discovery pass.
    assert caplog.text.count("source started again after a failure") == failures
    assert caplog.text.count("new source key=") == 1
    # Nothing lost, nothing sent twice: the restarts read from the acknowledged offset.
    shipped = Counter(receiver.lines())
    assert sorted(shipped) == sorted(before + during + after)
    assert set(shipped.values()) == {1}, shipped
    # The gauges follow the restarted source: one file, nothing behind or in flight.
    text = scrape.decode()
    behind = [line for line in text.splitlines() if line.startswith("logq_shipper_bytes_behind{")]
    assert behind == [f'logq_shipper_bytes_behind{{path="{log}"}} 0.0'], behind
    assert "logq_shipper_open_files 1.0" in text
    # Each failure is counted under the source's service, for an alert.
    counted = [
        line for line in text.splitlines() if line.startswith("logq_shipper_source_failures_total")
    ]
    assert [line.rsplit(" ", 1)[1] for line in counted] == [f"{failures}.0"], counted
    assert used == 0
    assert "logq_shipper_inflight_bytes 0.0" in text


def test_the_pause_doubles_up_to_the_full_scan_delay_and_starts_over_after_a_long_run(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_text("one\n")
    receiver = Receiver()
    args = ("--path", str(log), "--discover-interval", "60")
    cfg = load_config(shipper_args(tmp_path, receiver, *args))

    async def go() -> None:
        shipper = Shipper(cfg)
        try:
            pauses = [shipper._note_failure("k", time.monotonic()) for _ in range(8)]
            assert pauses == [1, 2, 4, 8, 16, 32, 60, 60]
            # A source that ran the full-scan delay before it failed ran fine: it starts over.
            assert shipper._note_failure("k", time.monotonic() - 61) == 1
            assert shipper._note_failure("k", time.monotonic()) == 2
        finally:
            await stop_runners(shipper)

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        receiver.close()


def test_the_pass_at_the_retry_time_restarts_only_the_files_still_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "kept.log").write_text("one\n")
    (logs / "gone.log").write_text("one\n")
    receiver = Receiver()
    args = ("--path", str(logs / "*.log"), "--discover-interval", "60")
    cfg = load_config(shipper_args(tmp_path, receiver, *args))

    async def go() -> None:
        shipper = Shipper(cfg)
        try:
            scan = await shipper._discover()
            keys = {spec.path.name: spec.key for spec in scan.specs}
            assert sorted(keys) == ["gone.log", "kept.log"]
            for key in keys.values():  # both failed a moment ago
                assert shipper._note_failure(key, None) == 1
            # A pass before the retry time (an inotify event) starts neither.
            shipper._sync_sources(scan)
            assert not shipper.runners
            # The next pass is due at the retry time, not at the full scan.
            assert 0 < shipper._scan_delay(False, True) <= 1
            for key in keys.values():
                shipper._retry_at[key] -= 1  # the time has come
            (logs / "gone.log").unlink()
            shipper._sync_sources(await shipper._discover())
            assert list(shipper.runners) == [keys["kept.log"]]
            assert "source started again after a failure" in caplog.text
            # The vanished file is not started again, nor waited for.
            assert not shipper._retry_at
            assert keys["gone.log"] not in shipper._failures
            assert shipper._scan_delay(False, True) == 60
        finally:
            await stop_runners(shipper)

    try:
        with caplog.at_level(logging.INFO, logger="logq.shipper"):
            asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        receiver.close()
