"""A ``--buffer-limit-bytes`` larger than its volume can hold is warned about at start, with both
figures (aggregator/diskguard.py). Tried by hand: 1 TiB on a volume with 84 GB free started
without a word; the disk guard then withholds acks once the volume is nearly full, not at the
limit the operator set, and every other file on that volume is left without room."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from aggregator import diskguard as diskguard_mod
from aggregator.diskguard import GuardedBuffer
from tests.aggregator.helpers import start_aggregator

MiB = 1024 * 1024
TiB = 1024**4


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in caplog.messages if "--buffer-limit-bytes" in m]


@pytest.mark.parametrize(
    ("free", "held", "warned"),
    [(10 * MiB, 0, True), (10 * MiB, 95 * MiB, False), (200 * MiB, 0, False)],
)
def test_a_limit_over_what_the_volume_can_hold_is_warned_about(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    free: int,
    held: int,
    warned: bool,
) -> None:
    """What the buffer already holds (segments left by the last run) counts as room: they are
    on that volume, within the limit."""
    monkeypatch.setattr(diskguard_mod, "disk_space", lambda _: (free, 1024 * MiB))
    buffer = GuardedBuffer(tmp_path / "buffer", 4 * MiB, 100 * MiB)
    monkeypatch.setattr(GuardedBuffer, "total_bytes", property(lambda _: held))
    with caplog.at_level(logging.WARNING, logger="logq.aggregator"):
        buffer.check_limit_fits()
    if not warned:
        assert not _warnings(caplog)
        return
    (text,) = _warnings(caplog)
    assert text.startswith(
        f"--buffer-limit-bytes 104,857,600 is more than --buffer-dir {buffer.dir}"
    )
    assert "10,485,760 bytes free" in text and "lower --buffer-limit-bytes" in text


def test_the_aggregator_warns_of_a_limit_over_its_volume_at_start(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free > TiB // 2:
        pytest.skip("the test folder's volume has more than 512 GiB free")
    proc = start_aggregator(tmp_path, extra=["--buffer-limit-bytes", str(TiB)])
    assert proc.stop() == 0
    text = proc.log_text()
    said = 'level=warning logger=logq.aggregator msg="--buffer-limit-bytes 1,099,511,627,776 is'
    assert said in text, text


def test_the_default_limit_says_nothing_on_a_roomy_volume(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free < 2 * 1024 * MiB:
        pytest.skip("the test folder's volume has less than 2 GiB free")
    proc = start_aggregator(tmp_path)
    assert proc.stop() == 0
    assert "--buffer-limit-bytes" not in proc.log_text()
