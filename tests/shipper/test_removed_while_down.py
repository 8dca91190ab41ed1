"""A container or pod removed while the shipper is down (A2s18's F2).

Lines the shipper had not shipped when it stopped went with the container's folder (``docker
rm``, the kubelet's pod cleanup; on Kubernetes every pod deleted during a rollout of the
shipper), and nothing said so: the next start's discovery did not find the source, no tailer
looked at its checkpoints, and the 7-day cleanup forgot them. The start now judges them (see
:mod:`shipper.removed`): bytes seen and never shipped are counted ``deleted_unread`` with a
WARNING naming the container or pod. A file shipped to its end as far as the shipper saw may
still have got lines after the shipper stopped (the last words of a pod deleted during the
shipper's rollout): that possible loss is counted ``removed_while_down`` with a WARNING naming
the container or pod and when the shipper stopped (R4s18: an INFO line was all it got).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from shipper.checkpoint import FileState, Registry, file_key
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.removed import count_removed, gone_files, unfound
from tests.shipper.hostgen import cri_line, docker_line, make_container
from tests.shipper.receiver import Receiver, free_port
from tests.shipper.shipping import empty_root, scrape_lost, shipper_args, until

pytestmark = pytest.mark.integration

EXTRA = ("--poll-interval", "0.05", "--discover-interval", "0.2", "--retry-timeout", "1")
POD = "ns_web-7d9f8b6c5d-x2x7k_0b5e6f4e-1d2c-4c3b-9a8f-7e6d5c4b3a21"


def _count(reg: Registry, lost: list[tuple[str, str]]) -> int:
    """The daemon's judgement after a first pass that found no source (``Shipper._count_removed``:
    which files are gone looked at first, then judged)."""
    gone = gone_files(unfound(reg, set()))
    return count_removed(reg, set(), (), lambda *loss: lost.append(loss), gone)


class Host:
    """A Docker root with a container that stays (``stays``: something to wait on after the
    restart) and the container or pod that is removed while the shipper is down."""

    def __init__(self, tmp_path: Path, kind: str) -> None:
        self.docker = tmp_path / "docker"
        self.cri = empty_root(tmp_path, "pods")
        self.kind = kind
        self.stays = make_container(self.docker, "a" * 64, "stays")
        if kind == "docker":
            self.gone = make_container(self.docker, "b" * 64, "gone")
            self.folder = self.gone.parent
            self.service, self.name = "gone", "gone"
        else:
            self.folder = self.cri / POD
            self.gone = self.folder / "c" / "0.log"
            self.gone.parent.mkdir(parents=True)
            self.gone.touch()
            self.service, self.name = "web", f"ns/{POD.split('_')[1]}/c"

    def write(self, text: str, i: int) -> None:
        line = docker_line(text, i) if self.kind == "docker" else cri_line(text, i)
        with open(self.gone, "ab") as f:
            f.write(line)

    def args(self, tmp_path: Path, receiver: Receiver) -> list[str]:
        return shipper_args(tmp_path, receiver, *EXTRA, docker=self.docker, cri=self.cri)


def _seen(shipper: Shipper, path: Path) -> int | None:
    """The size the running shipper last noted for ``path`` (None: not yet)."""
    for _, state in shipper.registry.items():
        if state.path == str(path):
            return state.seen
    return None


async def _first_run(tmp_path: Path, receiver: Receiver, host: Host, unshipped: bool) -> int:
    """Ship ten lines; with ``unshipped``, five more are read and sent but never acknowledged
    before the stop. Returns the bytes left unshipped."""
    shipper = Shipper(load_config(host.args(tmp_path, receiver)))
    run = asyncio.create_task(shipper.run())
    for i in range(10):
        host.write(f"early {i}", i)
    await until(lambda: len(receiver.lines()) == 10)
    shipped = host.gone.stat().st_size
    await until(lambda: _seen(shipper, host.gone) == shipped)
    if unshipped:
        receiver.ack = False
        for i in range(5):
            host.write(f"late {i}", 10 + i)
        await until(lambda: len(receiver.lines()) == 15)
        await until(lambda: _seen(shipper, host.gone) == host.gone.stat().st_size)
    shipper.request_stop()
    assert await run == 0
    return host.gone.stat().st_size - shipped


async def _restart(tmp_path: Path, receiver: Receiver, host: Host) -> Shipper:
    """The start after the removal; returns once the container that stays shipped its line."""
    with open(host.stays, "ab") as f:
        f.write(docker_line("after the restart", 0))
    shipper = Shipper(load_config(host.args(tmp_path, receiver)))
    run = asyncio.create_task(shipper.run())
    await until(lambda: "after the restart" in receiver.lines())
    shipper.request_stop()
    assert await run == 0
    return shipper


@pytest.mark.parametrize("kind", ["docker", "cri"])
@pytest.mark.parametrize("unshipped", [True, False], ids=["unshipped", "shipped"])
def test_a_source_removed_while_the_shipper_was_down_counts_what_it_had_not_shipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, unshipped: bool
) -> None:
    host = Host(tmp_path, kind)
    receiver = Receiver()
    try:
        left = asyncio.run(_first_run(tmp_path, receiver, host, unshipped))
        shutil.rmtree(host.folder)  # docker rm / the kubelet's pod cleanup, while down
        receiver.ack = True
        with caplog.at_level(logging.INFO, logger="logq.shipper"):
            shipper = asyncio.run(_restart(tmp_path, receiver, host))
    finally:
        receiver.close()
    lost = _lost(shipper, host.service)
    said = [r for r in caplog.records if str(host.gone) in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING]
    message = said[0].getMessage()
    assert f"container_name={host.name} " in message and f"service={host.service} " in message
    if unshipped:
        assert lost == {"deleted_unread": 1.0, "removed_while_down": 0.0}
        assert left > 0 and f"({left} bytes seen and never shipped" in message
    else:  # lines written after the stop, if any, cannot be known: a possible loss
        assert lost == {"deleted_unread": 0.0, "removed_while_down": 1.0}
        assert "shipped to its end" in message and "removed_while_down" in message
    # Judged once: the next start does not count it again, nor the 7-day cleanup forget it.
    state = Registry(tmp_path / "state")
    try:
        assert [s.path for _, s in state.items()] == [str(host.stays)]
    finally:
        state.close()


def _lost(shipper: Shipper, service: str) -> dict[str, float]:
    """``service``'s ``files_lost_total`` by the reasons a removed source is counted under."""
    return {
        reason: shipper.metrics.registry.get_sample_value(
            "logq_shipper_files_lost_total", {"service": service, "reason": reason}
        )
        or 0.0
        for reason in ("deleted_unread", "removed_while_down")
    }


async def _ship_and_stop(tmp_path: Path, receiver: Receiver, host: Host) -> None:
    """Ship ten lines, all acknowledged and all the shipper saw, then stop."""
    shipper = Shipper(load_config(host.args(tmp_path, receiver)))
    run = asyncio.create_task(shipper.run())
    for i in range(10):
        host.write(f"early {i}", i)
    await until(lambda: len(receiver.lines()) == 10)
    await until(lambda: _seen(shipper, host.gone) == host.gone.stat().st_size)
    shipper.request_stop()
    assert await run == 0


@pytest.mark.parametrize("kind", ["docker", "cri"])
def test_lines_written_while_down_then_removed_are_a_counted_possible_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A2s18's F2 as reported: the container writes its last lines while the shipper is down
    and is removed before it starts again. The shipper cannot know they were written; it
    counts a possible loss (a ticket, not the deleted_unread page) and says when it stopped."""
    host = Host(tmp_path, kind)
    receiver = Receiver()
    try:
        asyncio.run(_ship_and_stop(tmp_path, receiver, host))
        stopped = (tmp_path / "state" / "checkpoints.json").stat().st_mtime
        for i in range(5):  # the container's last words, while the shipper is down
            host.write(f"last words {i}", 10 + i)
        shutil.rmtree(host.folder)  # docker rm / pod deleted, still while the shipper is down
        with caplog.at_level(logging.INFO, logger="logq.shipper"):
            shipper = asyncio.run(_restart(tmp_path, receiver, host))
    finally:
        receiver.close()
    assert not [line for line in receiver.lines() if line.startswith("last words")]  # lost
    assert _lost(shipper, host.service) == {"deleted_unread": 0.0, "removed_while_down": 1.0}
    warned = [
        r.getMessage()
        for r in caplog.records
        if str(host.gone) in r.getMessage() and r.levelno == logging.WARNING
    ]
    assert len(warned) == 1, warned
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stopped))
    assert f"after the shipper stopped at {at}" in warned[0]
    assert f"container_name={host.name} " in warned[0]


async def _scraped_restart(tmp_path: Path, receiver: Receiver, host: Host) -> list[float]:
    """The start after the removal, its metrics scraped until the loss shows: the values of
    the ``removed_while_down`` series in the order the scrapes saw them."""
    port = free_port()
    args = [*host.args(tmp_path, receiver), "--metrics-listen", f"127.0.0.1:{port}"]
    shipper = Shipper(load_config(args))
    run = asyncio.create_task(shipper.run())
    seen: list[float] = []
    while not seen or seen[-1] < 1.0:
        value = await asyncio.wait_for(
            asyncio.to_thread(scrape_lost, port, host.service, "removed_while_down"), 30
        )
        if value is not None:
            seen.append(value)
        assert len(seen) < 1000, seen
    shipper.request_stop()
    assert await run == 0
    return seen


def test_a_new_scraper_sees_the_removed_while_down_series_at_0_before_the_loss(
    tmp_path: Path,
) -> None:
    """A shipper rolled out on Kubernetes is a new target: a series whose first sample is
    already 1 shows no ``increase()``, and operations.md's ticket never fired for the pods
    deleted during the rollout. The first scrape that has the series must see it at 0."""
    host = Host(tmp_path, "docker")
    receiver = Receiver()
    try:
        asyncio.run(_ship_and_stop(tmp_path, receiver, host))
        shutil.rmtree(host.folder)  # docker rm while the shipper is down
        seen = asyncio.run(_scraped_restart(tmp_path, receiver, host))
    finally:
        receiver.close()
    assert seen[0] == 0.0 and seen[-1] == 1.0, seen


def _entry(reg: Registry, path: Path, offset: int, seen: int | None) -> str:
    st = path.stat()
    key = file_key(st.st_dev, st.st_ino, "f" * 16)
    reg.put(key, FileState("docker:x", str(path), "sid", offset, offset, seen=seen))
    return key


def test_an_older_shippers_entry_is_counted_with_its_size_unknown(
    tmp_path: Path, reg: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry written before the size seen was saved: gone, it counts (nothing says it was
    shipped to its end), and the warning says how much is unknown."""
    path = tmp_path / "c" / "c-json.log"
    path.parent.mkdir()
    path.write_bytes(b"x" * 100)
    _entry(reg, path, 40, None)
    shutil.rmtree(path.parent)
    lost: list[tuple[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        assert _count(reg, lost) == 1
    assert lost == [("unknown", "deleted_unread")]
    assert "lines after offset 40 are lost (unknown bytes: its checkpoint is from an older" in (
        caplog.records[0].getMessage()
    )
    assert reg.items() == []


def test_a_file_still_there_under_another_name_is_not_judged(tmp_path: Path, reg: Registry) -> None:
    """A source not found whose file is still there (rotated while the shipper was down, its
    live file not created yet; a ``--path`` dropped from the configuration) lost nothing for
    sure: its checkpoint stays."""
    path = tmp_path / "c" / "c-json.log"
    path.parent.mkdir()
    path.write_bytes(b"x" * 100)
    key = _entry(reg, path, 40, 100)
    os.rename(path, f"{path}.1")
    lost: list[tuple[str, str]] = []
    assert _count(reg, lost) == 0
    assert lost == [] and reg.get(key) is not None
