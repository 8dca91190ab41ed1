"""A container rotating its log faster than a busy shipper reads it.

The reader here is CPU-bound (each read is slowed down, as parsing a large backlog is), not
waiting for acks: it waits only for moments. Files the runtime rotates in meanwhile must be
opened (pinned) while they exist, and when the runtime rotated a file in and deleted it between
two checks, the possible loss is counted (``files_lost_total{reason="rotated_unseen"}``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.pinning import PIN_CHECK_SECONDS
from shipper.source import SourceRunner
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args
from tests.shipper.tailing import rotate_docker

BACKLOG = 120
READ_SECONDS = 0.1
"""Each read of the slowed reader blocks the event loop this long (5 lines a batch): the
backlog keeps it busy for about two seconds."""


def _generation(path: Path, gen: int) -> list[str]:
    texts = [f"g{gen}-{i}" for i in range(5)]
    path.write_bytes(b"".join(docker_line(t, i) for i, t in enumerate(texts)))
    return texts


def _slow_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read blocks the event loop for READ_SECONDS, as a CPU-bound parse does."""
    real_read = Tailer.read

    def slow_read(self: Tailer, *args: Any, **kw: Any) -> object:
        time.sleep(READ_SECONDS)  # a CPU-bound parse: the event loop is busy, nothing waits
        return real_read(self, *args, **kw)

    monkeypatch.setattr(Tailer, "read", slow_read)


def _backlog(tmp_path: Path, retry_timeout: float) -> tuple[Path, Receiver, Any]:
    """A container with BACKLOG lines, a receiver, and a shipper config for both."""
    docker = tmp_path / "containers"
    log_path = make_container(
        docker, "7" * 64, "fast", lines=[f"backlog-{i}" for i in range(BACKLOG)]
    )
    receiver = Receiver()
    cfg = load_config(
        shipper_args(
            tmp_path, receiver, "--poll-interval", "0.05", "--batch-lines", "5",
            "--retry-timeout", str(retry_timeout), docker=docker,
        )
    )  # fmt: skip
    return log_path, receiver, cfg


def _drive(
    cfg: Any,
    receiver: Receiver,
    scenario: Callable[[SourceRunner], Awaitable[None]],
    reason: str,
) -> float:
    """Run a shipper; once it has shipped 10 lines, await ``scenario`` with its one source,
    then stop it. Returns ``files_lost_total{reason}`` of that source."""
    lost = 0.0

    async def go() -> None:
        nonlocal lost
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        while len(receiver.records) < 10:
            await asyncio.sleep(0.01)
        (source,) = shipper.runners.values()
        await scenario(source)
        shipper.request_stop()
        await run
        lost = shipper.metrics.registry.get_sample_value(
            "logq_shipper_files_lost_total", {"service": source.spec.service, "reason": reason}
        )

    try:
        asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        receiver.close()
    return lost or 0.0


def _run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rotate: Callable[[Path, Callable[[], bool]], Awaitable[None]],
) -> tuple[Receiver, float]:
    """Ship a backlog with a slowed reader while ``rotate`` rotates the log (its second argument
    tells whether the reader is still on the backlog); returns the receiver (after the shipper
    stopped) and the ``rotated_unseen`` count."""
    _slow_reader(monkeypatch)
    log_path, receiver, cfg = _backlog(tmp_path, 5)

    async def scenario(source: SourceRunner) -> None:
        await rotate(log_path, lambda: len(receiver.records) < BACKLOG)
        while not receiver.records or receiver.lines()[-1] != "g-last":
            await asyncio.sleep(0.05)

    unseen = _drive(cfg, receiver, scenario, "rotated_unseen")
    return receiver, unseen


def _finish(path: Path, max_file: int) -> None:
    rotate_docker(path, max_file)
    path.write_bytes(docker_line("g-last"))


def test_a_busy_reader_opens_every_rotated_file_before_it_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max-file 2, a rotation every 0.4 s while the reader is still on its backlog: each
    rotated file is deleted 0.8 s after it appeared, long before the reader reaches it. All
    are pinned by the check that runs every 0.25 s; nothing is lost, nothing counted."""
    written: list[str] = []

    async def rotate(path: Path, busy: Callable[[], bool]) -> None:
        for gen in range(1, 4):
            rotate_docker(path, max_file=2)
            written.extend(_generation(path, gen))
            await asyncio.sleep(0.4)
            assert busy(), "the reader caught up: the test proves nothing"
        _finish(path, max_file=2)

    receiver, unseen = _run(tmp_path, monkeypatch, rotate)
    lines = receiver.lines()
    assert lines == [f"backlog-{i}" for i in range(BACKLOG)] + written + ["g-last"]
    assert unseen == 0


def test_files_rotated_in_and_deleted_between_two_checks_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three rotations with max-file 2 between two checks: the file being read is held open and
    read whole, the generation rotated in and deleted at once is lost, and that is counted."""
    written: list[str] = []

    async def rotate(path: Path, busy: Callable[[], bool]) -> None:
        await asyncio.sleep(2 * PIN_CHECK_SECONDS)  # the backlog file was checked as live
        for gen in range(1, 4):  # no await in between: no check can fall between them
            rotate_docker(path, max_file=2)
            texts = _generation(path, gen)
            if gen != 1:
                written.extend(texts)
        await asyncio.sleep(3 * PIN_CHECK_SECONDS)
        assert busy(), "the reader caught up: the test proves nothing"
        _finish(path, max_file=2)

    receiver, unseen = _run(tmp_path, monkeypatch, rotate)
    lines = receiver.lines()
    assert lines == [f"backlog-{i}" for i in range(BACKLOG)] + written + ["g-last"]
    assert unseen == 1


def test_a_rotated_file_compressed_at_once_is_no_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker's ``compress``: the rotated file becomes ``.1.gz`` and the plain copy is deleted
    right after the rotation. The file being read is held open and read whole, so nothing is
    lost and nothing may be counted."""
    written: list[str] = []

    async def rotate(path: Path, busy: Callable[[], bool]) -> None:
        await asyncio.sleep(2 * PIN_CHECK_SECONDS)
        rotate_docker(path, max_file=2, compress=True)
        written.extend(_generation(path, 1))
        await asyncio.sleep(3 * PIN_CHECK_SECONDS)
        assert busy(), "the reader caught up: the test proves nothing"
        Path(f"{path}.1.gz").unlink()
        rotate_docker(path, max_file=2)
        path.write_bytes(docker_line("g-last"))

    receiver, unseen = _run(tmp_path, monkeypatch, rotate)
    lines = receiver.lines()
    assert lines == [f"backlog-{i}" for i in range(BACKLOG)] + written + ["g-last"]
    assert unseen == 0


def test_files_compressed_before_they_were_read_are_counted_one_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compress, max-file 4, three rotations between two checks: the file being read is held
    open and read whole; the two generations rotated in and compressed before any check are
    lost (compressed files are not shipped), and each counts once."""
    written: list[str] = []

    async def rotate(path: Path, busy: Callable[[], bool]) -> None:
        await asyncio.sleep(2 * PIN_CHECK_SECONDS)
        for gen in range(1, 4):  # no await in between: no check can fall between them
            rotate_docker(path, max_file=4, compress=True)
            texts = _generation(path, gen)
            if gen == 3:
                written.extend(texts)
        await asyncio.sleep(3 * PIN_CHECK_SECONDS)
        assert busy(), "the reader caught up: the test proves nothing"
        rotate_docker(path, max_file=4, compress=True)
        path.write_bytes(docker_line("g-last"))

    receiver, unseen = _run(tmp_path, monkeypatch, rotate)
    lines = receiver.lines()
    assert lines == [f"backlog-{i}" for i in range(BACKLOG)] + written + ["g-last"]
    assert unseen == 2


def test_a_source_that_rotated_is_looked_at_more_often(tmp_path: Path) -> None:
    """After two quick rotations, checks come every PIN_CHECK_FAST_SECONDS for a while (with
    compressed rotations a file is readable only while it is live: at one rotation every
    0.19 s, a look every 0.25 s lost 10 of 137 files in the rotation auditor's run, and 1 with
    this); a source rotating now and then keeps the slower pace (a sixth of a core for 200)."""
    from shipper.checkpoint import Registry
    from shipper.pinning import FAST_ROTATION_WINDOW, PIN_CHECK_FAST_SECONDS
    from tests.shipper.tailing import append_docker, drain, spec_for

    path = tmp_path / "c-json.log"
    append_docker(path, 0, 3)
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert len(drain(t)) == 3
    assert t.pin_check_seconds() == PIN_CHECK_SECONDS  # idle sources cost no more than before
    rotate_docker(path, max_file=2)
    append_docker(path, 3, 3)
    assert len(drain(t)) == 3
    assert t.pin_check_seconds() == PIN_CHECK_SECONDS  # one rotation: not a fast rotator
    rotate_docker(path, max_file=2)
    append_docker(path, 6, 3)
    assert len(drain(t)) == 3
    assert t.pin_check_seconds() == PIN_CHECK_FAST_SECONDS  # two within FAST_ROTATION_GAP
    t.last_rotation -= FAST_ROTATION_WINDOW
    assert t.pin_check_seconds() == PIN_CHECK_SECONDS
    reg.close()


def test_a_stop_reads_deleted_files_it_holds_to_their_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while the reader is on a file the runtime deleted (held open): the file is read
    to its end before the shipper exits, since a restart could not read it. Before, its unread
    lines were lost and blamed on downtime (deleted_unread at the next start)."""
    _slow_reader(monkeypatch)
    log_path, receiver, cfg = _backlog(tmp_path, 30)

    async def scenario(source: SourceRunner) -> None:
        await _delete_the_backlog_file(log_path)
        assert source.tailer.holds_deleted() and len(receiver.records) < BACKLOG

    _drive(cfg, receiver, scenario, "deleted_unread")
    assert receiver.lines()[:BACKLOG] == [f"backlog-{i}" for i in range(BACKLOG)]


async def _delete_the_backlog_file(log_path: Path) -> None:
    """Two rotations with max-file 2: the backlog file is deleted (still held open)."""
    for gen in (1, 2):
        rotate_docker(log_path, max_file=2)
        _generation(log_path, gen)
        await asyncio.sleep(2 * PIN_CHECK_SECONDS)


def test_a_stop_cut_short_counts_the_deleted_files_it_could_not_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No acks come (the aggregator is down), so the deleted file held open cannot be read to
    its end within --retry-timeout: it is counted as lost at the stop and its checkpoint
    dropped (a restart would otherwise blame the downtime and count it again)."""
    log_path, receiver, cfg = _backlog(tmp_path, 1)

    async def scenario(source: SourceRunner) -> None:
        receiver.ack = False  # from now on nothing is acknowledged
        await _delete_the_backlog_file(log_path)
        assert source.tailer.holds_deleted()

    assert _drive(cfg, receiver, scenario, "deleted_unread") == 1
    saved = (tmp_path / "state" / "checkpoints.json").read_text()
    assert '"offset"' in saved and saved.count('"path"') == 2  # generations 1 and 2 only
