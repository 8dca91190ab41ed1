"""The start does not wait for its looks at sources removed while the shipper was down.

At start the checkpoints of sources the first pass did not find are judged (removed while the
shipper was down? see :mod:`shipper.removed`) from a listing of their folders. Those looks ran
before any source started: one hung folder (a stale NFS mount, a checkpoint's folder outside the
log roots) held all shipping until it ended. Now the sources found start at once, and each
verdict is applied when its look comes back -- unless its file is read meanwhile (its source
found again, or the same file found at another path): one source per file, nothing shipped
twice, no loss counted that is none.

So does a source's end: its tailer looks at its folder as it closes (is it there, any file
left?), which on the event loop held every other source while the folder hung.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
from pathlib import Path

import pytest

from shipper import daemon as daemon_mod
from shipper.checkpoint import Registry
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.discover import Scan
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until

#: How long a hung look waits to be released (the tests release it well before).
HANG_SECONDS = 30.0


class HungListing:
    """The first ``os.listdir`` of one folder (the start's look) blocks until :attr:`release`
    is set, then answers as the folder was when it began (``gone``: ENOENT), as a look that
    hung on a mount and came back late; later listings of it (a runner's, once it is back)
    and of other folders are as usual."""

    def __init__(self, folder: Path, gone: bool) -> None:
        self.folder = folder
        self.gone = gone
        self.started = threading.Event()
        self.release = threading.Event()
        self.real = os.listdir

    def __call__(self, path: object = ".") -> list[str]:
        if path != self.folder or self.started.is_set():
            return self.real(path)  # type: ignore[call-overload, no-any-return]
        self.started.set()
        self.release.wait(HANG_SECONDS)
        if self.gone:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return self.real(path)  # type: ignore[call-overload, no-any-return]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(text)


def _args(tmp_path: Path, receiver: Receiver, *paths: str) -> list[str]:
    """A shipper of ``logs/*/app.log`` (and ``paths``), passes every 100 ms."""
    glob = str(tmp_path / "logs" / "*" / "app.log")
    extra = [arg for path in paths for arg in ("--path", path)]
    args = ("--path", glob, *extra, "--poll-interval", "0.05", "--discover-interval", "0.1")
    return shipper_args(tmp_path, receiver, *args)


async def _ship_and_stop(args: list[str], receiver: Receiver, lines: list[str]) -> None:
    """Run a shipper of ``args`` until ``lines`` are received (in any order), then stop it."""
    shipper = Shipper(load_config(args))
    run = asyncio.create_task(shipper.run())
    await until(lambda: sorted(receiver.lines()) == sorted(lines))
    shipper.request_stop()
    assert await run == 0


def _saved(tmp_path: Path) -> dict[str, int]:
    """The checkpoints saved under ``tmp_path/state``: path -> offset."""
    reg = Registry(tmp_path / "state")
    try:
        return {state.path: state.offset for _, state in reg.items()}
    finally:
        reg.close()


def _counted(shipper: Shipper, losses: list[str]) -> Shipper:
    """``shipper``, the reasons of the losses it counts appended to ``losses``."""
    shipper.metrics.count_loss = lambda _, reason: losses.append(reason)  # type: ignore[method-assign]
    return shipper


async def _judged(shipper: Shipper) -> None:
    """Wait until the start's verdicts on removed sources are all applied (or dropped)."""
    await until(lambda: getattr(shipper, "_found_since", None) is None)


def test_sources_ship_while_the_look_at_a_removed_one_hangs(
    tmp_path: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``--path`` source dropped from the configuration whose folder, outside the log roots,
    was removed while the shipper was down and hangs when listed (a stale NFS mount): the
    live source's line written while the shipper was down arrives while the look hangs (it
    waited for the look), the slow look names that folder (it named the log roots), and
    once the look comes back the removed source is counted and its checkpoint forgotten."""
    caplog.set_level(logging.INFO, logger="logq.shipper")
    monkeypatch.setattr(daemon_mod, "SLOW_PASS_SECONDS", 0.1)
    live = tmp_path / "logs" / "app" / "app.log"
    nfs = tmp_path / "nfs" / "app.log"
    _write(live, "one\n")
    _write(nfs, "far\n")
    asyncio.run(_ship_and_stop(_args(tmp_path, receiver, str(nfs)), receiver, ["one", "far"]))
    shutil.rmtree(nfs.parent)  # removed while the shipper is down (and dropped from --path)
    _write(live, "two\n")
    hung = HungListing(nfs.parent, gone=False)
    shipped_meanwhile: list[bool] = []
    losses: list[str] = []

    async def go() -> None:
        shipper = _counted(Shipper(load_config(_args(tmp_path, receiver))), losses)
        monkeypatch.setattr(os, "listdir", hung)
        run = asyncio.create_task(shipper.run())
        await until(hung.started.is_set)
        await until(lambda: "still running after 0.1 s" in caplog.text)
        try:
            await until(lambda: "two" in receiver.lines(), timeout=10)
            shipped_meanwhile.append(True)
        except TimeoutError:
            shipped_meanwhile.append(False)
        assert losses == []  # (not judged before its look came back)
        hung.release.set()
        await _judged(shipper)
        shipper.request_stop()
        assert await run == 0

    asyncio.run(asyncio.wait_for(go(), 60))
    assert shipped_meanwhile == [True]  # before the look came back
    assert sorted(receiver.lines()) == ["far", "one", "two"]
    slow = [r.getMessage() for r in caplog.records if "still running after" in r.getMessage()]
    assert len(slow) == 1 and f"at folder={nfs.parent}" in slow[0], slow
    assert "removed while the shipper was down ended after" in caplog.text
    assert losses == ["removed_while_down"]  # shipped to its end before the stop
    assert _saved(tmp_path) == {str(live): len("one\ntwo\n")}  # judged, and forgotten


def test_a_removed_source_found_again_while_its_look_hangs_keeps_its_checkpoint(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source not found at start (its folder moved away while the shipper was down) whose
    look hangs, then comes back saying "gone", while a later pass has found its folder back
    and its runner resumed from its checkpoint: the verdict is stale and dropped. Applied, it
    counted a loss that is none and forgot the checkpoint under the runner (a restart then
    read the file again from its start: every line sent twice)."""
    live = tmp_path / "logs" / "app" / "app.log"
    back = tmp_path / "logs" / "back" / "app.log"
    _write(live, "one\n")
    _write(back, "b1\n")
    args = _args(tmp_path, receiver)
    asyncio.run(_ship_and_stop(args, receiver, ["one", "b1"]))
    away = tmp_path / "away"
    back.parent.rename(away)  # not there at the next start's first pass
    hung = HungListing(back.parent, gone=True)
    losses: list[str] = []

    async def go() -> None:
        shipper = _counted(Shipper(load_config(args)), losses)
        monkeypatch.setattr(os, "listdir", hung)
        run = asyncio.create_task(shipper.run())
        await until(hung.started.is_set)
        away.rename(back.parent)  # found again by a later pass, its look still hanging
        _write(back, "b2\n")
        await until(lambda: "b2" in receiver.lines())
        hung.release.set()  # "gone", as the folder was when the look began
        await _judged(shipper)
        _write(back, "b3\n")  # its runner goes on, its checkpoint with it
        await until(lambda: "b3" in receiver.lines())
        shipper.request_stop()
        assert await run == 0

    asyncio.run(asyncio.wait_for(go(), 60))
    assert losses == []
    assert sorted(receiver.lines()) == ["b1", "b2", "b3", "one"]  # b1 not read again
    assert _saved(tmp_path) == {str(live): len("one\n"), str(back): len("b1\nb2\nb3\n")}


def test_a_removed_source_s_file_read_at_another_path_is_not_judged_under_its_reader(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder of a source renamed while the shipper was down (``logs/old`` to
    ``logs/new``): its file is a new source's, which resumes from the checkpoint the old
    source left (same device, inode and first line), while the look at the old folder hangs.
    When it comes back ("gone": no file of that inode there), the checkpoint is the runner's
    and stays: one source per file. Judged, it counted a loss that is none and forgot the
    checkpoint under the runner."""
    old = tmp_path / "logs" / "old" / "app.log"
    new = tmp_path / "logs" / "new" / "app.log"
    _write(old, "o1\n")
    args = _args(tmp_path, receiver)
    asyncio.run(_ship_and_stop(args, receiver, ["o1"]))
    old.parent.rename(new.parent)
    _write(new, "o2\n")
    hung = HungListing(old.parent, gone=True)
    losses: list[str] = []

    async def go() -> None:
        shipper = _counted(Shipper(load_config(args)), losses)
        monkeypatch.setattr(os, "listdir", hung)
        run = asyncio.create_task(shipper.run())
        await until(hung.started.is_set)
        await until(lambda: "o2" in receiver.lines())
        hung.release.set()
        await _judged(shipper)
        _write(new, "o3\n")
        await until(lambda: "o3" in receiver.lines())
        shipper.request_stop()
        assert await run == 0

    asyncio.run(asyncio.wait_for(go(), 60))
    assert losses == []
    assert sorted(receiver.lines()) == ["o1", "o2", "o3"]  # o1 not read again
    assert _saved(tmp_path) == {str(new): len("o1\no2\no3\n")}


def test_the_followed_entry_of_a_source_found_again_meanwhile_stays(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start's look says a container's folder is gone (``gone_followed``), but a pass
    found the container since (its folder back while the look hung): its ``followed`` entry,
    which its runner keeps up to date, stays. A source not found again loses it as before."""
    back, gone = "docker:" + "b" * 64, "docker:" + "c" * 64
    monkeypatch.setattr(daemon_mod, "gone_followed", lambda *_: [back, gone])
    shipper = Shipper(load_config(_args(tmp_path, receiver)))
    try:
        for source in (back, gone):
            shipper.registry.note_followed(source, 1.0)
        shipper._found_since = {back}  # found by a pass while the look ran
        asyncio.run(shipper._prune_followed(Scan()))
        assert shipper.registry.followed_sources() == [back]
    finally:
        shipper.registry.close()


def test_a_source_ending_on_a_hung_folder_does_not_hold_the_others(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source whose folder is removed ends, and its tailer looks at that folder as it
    closes (is it there? any file left?) to forget or note when it was last followed. On the
    event loop, that ``stat`` on a hung file system (its container's folder on a stale NFS
    mount) held every other source; now it runs on a thread of its own: a line written to
    another source while it hangs arrives, and the source's ``followed`` entry is forgotten
    once it comes back, as before."""
    live = tmp_path / "logs" / "app" / "app.log"
    going = tmp_path / "logs" / "going" / "app.log"
    _write(live, "one\n")
    _write(going, "g1\n")
    real_isdir = os.path.isdir
    started, release = threading.Event(), threading.Event()

    def hung_isdir(path: object) -> bool:
        # Not the passes' looks (the discovery thread): those find it gone first.
        if path == going.parent and threading.current_thread().name != "logq-discovery":
            started.set()
            release.wait(HANG_SECONDS)
        return real_isdir(path)  # type: ignore[arg-type]

    async def go() -> None:
        shipper = Shipper(load_config(_args(tmp_path, receiver)))
        run = asyncio.create_task(shipper.run())
        await until(lambda: sorted(receiver.lines()) == ["g1", "one"])
        monkeypatch.setattr(os.path, "isdir", hung_isdir)
        shutil.rmtree(going.parent)  # its container removed: the source drains and ends
        await until(started.is_set)
        _write(live, "two\n")
        try:
            await until(lambda: "two" in receiver.lines(), timeout=10)
            arrived.append(True)
        except TimeoutError:
            arrived.append(False)
        release.set()
        key = f"file:{going}"
        await until(lambda: key not in shipper.runners)
        followed.extend(shipper.registry.followed_sources())
        shipper.request_stop()
        assert await run == 0

    arrived: list[bool] = []
    followed: list[str] = []
    asyncio.run(asyncio.wait_for(go(), 60))
    assert arrived == [True]  # while the look at the folder hung
    assert followed == [f"file:{live}"]  # the ended source's entry forgotten, as before


def test_a_stop_does_not_wait_for_an_ending_source_s_hung_look(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while an ending source's look at its folder hangs: the shipper exits 0 with its
    checkpoints saved, the source's files closed, nothing noted of a look that never came
    back (its ``followed`` entry stays: the next start finds its folder gone)."""
    live = tmp_path / "logs" / "app" / "app.log"
    going = tmp_path / "logs" / "going" / "app.log"
    _write(live, "one\n")
    _write(going, "g1\n")
    real_isdir = os.path.isdir
    started, release = threading.Event(), threading.Event()

    def hung_isdir(path: object) -> bool:
        if path == going.parent and threading.current_thread().name != "logq-discovery":
            started.set()
            release.wait(HANG_SECONDS)
        return real_isdir(path)  # type: ignore[arg-type]

    async def go() -> None:
        shipper = Shipper(load_config(_args(tmp_path, receiver)))
        run = asyncio.create_task(shipper.run())
        await until(lambda: sorted(receiver.lines()) == ["g1", "one"])
        monkeypatch.setattr(os.path, "isdir", hung_isdir)
        shutil.rmtree(going.parent)
        await until(started.is_set)
        shipper.request_stop()
        assert await run == 0
        release.set()
        shipper.close_looks.shutdown(wait=True)

    asyncio.run(asyncio.wait_for(go(), 60))
    assert _saved(tmp_path) == {str(live): len("one\n")}
    reg = Registry(tmp_path / "state")
    try:
        assert sorted(reg.followed_sources()) == sorted([f"file:{live}", f"file:{going}"])
    finally:
        reg.close()
