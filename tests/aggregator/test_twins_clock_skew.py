"""The twin check's start-up wait under clock skew between hosts (R4s19)."""

from __future__ import annotations

import json
import time
import types
from pathlib import Path

import pytest

from aggregator import twins
from aggregator.ledger import Ledger
from aggregator.storage import StorageError
from aggregator.twins import ProcessToken, live_twin
from athena.warehouse import open_warehouse


class _VirtualWait:
    """A stop event whose waits advance a virtual clock instead of sleeping."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.waited = 0.0

    def wait(self, seconds: float | None = None) -> bool:
        assert seconds is not None
        self.clock[0] += seconds
        self.waited += seconds
        return False


@pytest.mark.parametrize("ahead", [0.0, 3600.0])
def test_a_crashed_node_whose_clock_was_ahead_does_not_hold_the_start_for_the_skew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ahead: float
) -> None:
    """A pod rescheduled to another host with its volume after a crash: the dead host's clock
    was ``ahead`` seconds ahead, so its last heartbeat's ``updated`` is in this host's future.
    The heartbeat is never rewritten (its writer is dead); the wait for a rewrite must stay
    within two flush intervals plus the slack of this host's time, not grow by the skew
    (3630 s of /healthz 503 "starting" for a one-hour skew)."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    dead = Ledger(wh, "n1")
    dead.process = ProcessToken("aggregator-0", "another-boot", 1, 1234, time.time() - 60)
    dead.heartbeat(time.time(), 10.0)
    beat = Path(dead._beat_path)
    doc = json.loads(beat.read_text())
    doc["updated"] = time.time() + ahead
    beat.write_text(json.dumps(doc))

    clock = [time.time()]
    fake_time = types.SimpleNamespace(
        time=lambda: clock[0], strftime=time.strftime, gmtime=time.gmtime
    )
    monkeypatch.setattr(twins, "time", fake_time)
    stop = _VirtualWait(clock)
    assert live_twin(Ledger(wh, "n1"), stop) is None  # type: ignore[arg-type]
    assert stop.waited <= 2 * 10.0 + twins.NEXT_BEAT_SLACK_S + 1.0, stop.waited


def test_a_running_twin_whose_clock_is_behind_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original runs on a host whose clock is 60 s behind this one's (within the 160 s
    after which its heartbeat counts as stale) and rewrites its heartbeat every flush
    interval. Watched for two of its flush intervals, the rewrite is seen: a twin. The wait's
    end is taken from the original's clock (``updated`` + 30 s, already past here), so the
    copy starts without watching at all and both write the same object keys."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    original = Ledger(wh, "n1")
    original.process = ProcessToken("aggregator-0", "another-boot", 7, 1234, time.time() - 600)
    clock = [time.time()]
    behind = 60.0

    def beat() -> None:
        original.heartbeat(clock[0], 10.0)
        path = Path(original._beat_path)
        doc = json.loads(path.read_text())
        doc["updated"] = clock[0] - behind
        path.write_text(json.dumps(doc))

    beat()

    class _TwinBeats(_VirtualWait):
        def wait(self, seconds: float | None = None) -> bool:
            before = self.clock[0]
            super().wait(seconds)
            if int(before // 10) != int(self.clock[0] // 10):  # a flush pass every 10 s
                beat()
            return False

    fake_time = types.SimpleNamespace(
        time=lambda: clock[0], strftime=time.strftime, gmtime=time.gmtime
    )
    monkeypatch.setattr(twins, "time", fake_time)
    assert live_twin(Ledger(wh, "n1"), _TwinBeats(clock)) is not None  # type: ignore[arg-type]


def test_a_heartbeat_read_the_warehouse_refuses_does_not_end_the_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read refused while the heartbeat is watched (a 503) says nothing of its writer: the
    watch goes on and sees the twin's next rewrite, where the error used to end the check and
    the copy started beside the original (R3s20)."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    original = Ledger(wh, "n1")
    original.process = ProcessToken("aggregator-0", "another-boot", 7, 1234, time.time() - 600)
    original.heartbeat(time.time(), 10.0)
    copy = Ledger(wh, "n1")
    real_read = copy.own_heartbeat
    reads = [0]

    def flaky_read() -> object:
        reads[0] += 1
        if reads[0] == 2:  # the first read of the watch
            original.heartbeat(time.time(), 10.0)  # the original's next flush pass
            raise StorageError("reading n1.json failed: 503 SlowDown")
        return real_read()

    monkeypatch.setattr(copy, "own_heartbeat", flaky_read)
    clock = [time.time()]
    fake_time = types.SimpleNamespace(
        time=lambda: clock[0], strftime=time.strftime, gmtime=time.gmtime
    )
    monkeypatch.setattr(twins, "time", fake_time)
    assert live_twin(copy, _VirtualWait(clock)) is not None  # type: ignore[arg-type]
    assert reads[0] >= 3
