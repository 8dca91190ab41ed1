"""Discovery passes run off the event loop: a slow pass does not stop reading and acks."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shipper import daemon as daemon_mod
from shipper.checkpoint import Registry
from shipper.config import Config, load_config
from shipper.daemon import Shipper
from shipper.discover import Scan
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until

#: How long the slow pass waits for the line written meanwhile to arrive (at once when the
#: loop runs during the pass; never when the pass holds it).
WAIT_SECONDS = 5.0


def test_a_slow_discovery_pass_does_not_hold_up_shipping(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A pass that takes long (a slow or hung file system under a root, thousands of
    ``config.v2.json`` parsed at a deploy) ran on the event loop: no line was read, sent or
    acknowledged until it ended. Now a line written during such a pass arrives during it."""
    log = _one_line_log(tmp_path)
    cfg = load_config(_glob_args(tmp_path, receiver))
    arrived: list[bool] = []

    async def go() -> None:
        shipper = Shipper(cfg)
        real_scan = shipper.discoverer.scan
        loop_thread = threading.current_thread()

        def slow_scan() -> Scan:
            scan = real_scan()
            if receiver.lines() == ["one"] and not arrived:
                with log.open("a") as f:
                    f.write("two\n")
                arrived.append(_wait(lambda: "two" in receiver.lines(), WAIT_SECONDS))
                arrived.append(threading.current_thread() is not loop_thread)
            return scan

        shipper.discoverer.scan = slow_scan  # type: ignore[method-assign]
        run = asyncio.create_task(shipper.run())
        await until(lambda: bool(arrived), timeout=30)
        shipper.request_stop()
        assert await run == 0

    asyncio.run(asyncio.wait_for(go(), 60))
    assert arrived == [True, True]  # during the pass, which ran on another thread
    assert receiver.lines() == ["one", "two"]


def test_a_hung_pass_is_said_and_turns_healthz_503_while_it_lasts(
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pass hung on a dead file system (a stale NFS mount under a root) stalled the loop,
    which ``/livez`` reported; off the loop, the shipper goes on without finding anything new,
    which is said instead: a WARNING and ``/healthz`` 503 while it lasts, until it ends."""
    caplog.set_level(logging.INFO, logger="logq.shipper")
    monkeypatch.setattr(daemon_mod, "SLOW_PASS_SECONDS", 0.1)
    _one_line_log(tmp_path)
    cfg = load_config(_glob_args(tmp_path, receiver))
    release = threading.Event()
    health: list[tuple[int, str]] = []

    async def go() -> None:
        shipper = Shipper(cfg)
        real_scan = shipper.discoverer.scan

        def hung_scan() -> Scan:
            scan = real_scan()
            if receiver.lines() == ["one"]:
                release.wait(WAIT_SECONDS)
            return scan

        shipper.discoverer.scan = hung_scan  # type: ignore[method-assign]
        run = asyncio.create_task(shipper.run())
        await until(lambda: "discovery pass still running" in caplog.text, timeout=WAIT_SECONDS)
        health.append(shipper.metrics.health())
        release.set()
        await until(lambda: "discovery pass ended" in caplog.text)
        health.append(shipper.metrics.health())
        shipper.request_stop()
        assert await run == 0

    asyncio.run(asyncio.wait_for(go(), 60))
    assert health[0][0] == 503 and "a discovery pass has been running" in health[0][1]
    assert health[1] == (200, "ok\n")
    assert caplog.text.count("discovery pass still running after 0.1 s") == 1
    assert "look for a slow or hung file system" in caplog.text


def test_a_hung_look_at_a_missing_file_does_not_hold_up_shipping(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source missing from a pass is looked at (its file, its folder) at every pass until
    it is known gone; on a slow or hung file system (a stale NFS mount) those ``stat`` calls,
    made on the event loop, held every read and ack. Now they run on the discovery thread:
    a line written while one hangs arrives meanwhile."""
    live = _one_line_log(tmp_path)
    going = tmp_path / "logs" / "going" / "app.log"
    going.parent.mkdir()
    going.write_text("x\n")
    cfg = load_config(_glob_args(tmp_path, receiver))
    real_isfile = os.path.isfile
    loop_thread = threading.current_thread()
    arrived: list[bool] = []

    def hung_isfile(path: object) -> bool:
        if path == going and not arrived:  # (the one look that hangs)
            with live.open("a") as f:
                f.write("two\n")
            arrived.append(_wait(lambda: "two" in receiver.lines(), WAIT_SECONDS))
            arrived.append(threading.current_thread() is not loop_thread)
        return real_isfile(path)  # type: ignore[arg-type]

    async def go() -> None:
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        await until(lambda: sorted(receiver.lines()) == ["one", "x"])
        monkeypatch.setattr(os.path, "isfile", hung_isfile)
        going.unlink()  # its folder stays: looked at by every pass until the grace is over
        await until(lambda: bool(arrived), timeout=30)
        shipper.request_stop()
        assert await run == 0

    asyncio.run(asyncio.wait_for(go(), 60))
    assert arrived == [True, True]  # during the look, which ran on another thread
    assert sorted(receiver.lines()) == ["one", "two", "x"]


def test_the_start_s_looks_at_removed_sources_do_not_hold_the_loop(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start, the checkpoints of sources not found are judged (removed while the shipper
    was down?) by listing their folders: on the event loop, a hung listing held it (no stop,
    no ``/livez``) until it ended. Now it runs on the discovery thread: the loop runs, a stop
    meanwhile ends the shipper, and the checkpoint waits for the next start to be judged."""
    log = _one_line_log(tmp_path)
    cfg = load_config(_glob_args(tmp_path, receiver))
    asyncio.run(asyncio.wait_for(_ship_and_stop(cfg, receiver), 60))
    shutil.rmtree(log.parent)  # removed while the shipper is down
    real_listdir = os.listdir
    loop_thread = threading.current_thread()
    beats: list[float] = []
    ran: list[bool] = []
    release = threading.Event()

    def hung_listdir(path: object = ".") -> list[str]:
        if path == log.parent and not ran:
            seen = len(beats)
            ran.append(_wait(lambda: len(beats) > seen + 2, WAIT_SECONDS))  # the loop runs
            ran.append(threading.current_thread() is not loop_thread)
            ran.append(release.wait(WAIT_SECONDS))  # True: released after the stop
        return real_listdir(path)  # type: ignore[call-overload, no-any-return]

    async def go() -> None:
        shipper = Shipper(cfg)
        monkeypatch.setattr(os, "listdir", hung_listdir)
        run = asyncio.create_task(shipper.run())
        while len(ran) < 2:
            beats.append(time.monotonic())
            await asyncio.sleep(0.01)
        shipper.request_stop()
        assert await run == 0
        release.set()
        shipper.looks.shutdown(wait=True)

    asyncio.run(asyncio.wait_for(go(), 60))
    assert ran == [True, True, True]
    saved = Registry(tmp_path / "state")
    try:
        assert [state.path for _, state in saved.items()] == [str(log)]  # judged next time
    finally:
        saved.close()


async def _ship_and_stop(cfg: Config, receiver: Receiver) -> None:
    """Run a shipper of ``cfg`` until ``one`` is shipped, then stop it."""
    shipper = Shipper(cfg)
    run = asyncio.create_task(shipper.run())
    await until(lambda: receiver.lines() == ["one"])
    shipper.request_stop()
    assert await run == 0


#: The calls on the discovery thread, by what they do: (where it is, its name).
_THREAD_CALLS = {
    "pass": ("discoverer", "scan"),
    "listing of the folders to watch": ("", "_watch_dirs"),
}


@pytest.mark.parametrize("hung_call", sorted(_THREAD_CALLS))
def test_a_stop_does_not_wait_for_a_hung_call_on_the_discovery_thread(
    tmp_path: Path, receiver: Receiver, hung_call: str
) -> None:
    """SIGTERM during a pass hung on a dead file system stops the shipper, its checkpoints
    saved, without waiting for the pass: on the loop, the pass held the stop (and every ack)
    until it ended, and a shipper killed meanwhile sent its lines again at the next start.
    So does one during the listing of the folders inotify watches, done on the discovery
    thread after each pass (a stop waited for that one)."""
    _one_line_log(tmp_path)
    cfg = load_config(_glob_args(tmp_path, receiver))
    hung, release = threading.Event(), threading.Event()
    released: list[bool] = []

    async def go() -> None:
        shipper = Shipper(cfg)
        where, name = _THREAD_CALLS[hung_call]
        owner = getattr(shipper, where) if where else shipper
        real_call = getattr(owner, name)

        def hung_one() -> object:
            answer = real_call()
            if receiver.lines() == ["one"] and not hung.is_set():
                hung.set()
                released.append(release.wait(WAIT_SECONDS))  # True: released after the stop
            return answer

        setattr(owner, name, hung_one)
        run = asyncio.create_task(shipper.run())
        await until(hung.is_set)
        shipper.request_stop()
        assert await run == 0
        release.set()
        shipper._discovery.shutdown(wait=True)

    asyncio.run(asyncio.wait_for(go(), 60))
    assert released == [True]
    saved = Registry(tmp_path / "state")
    try:
        (state,) = saved.items()
        assert state[1].offset == len("one\n")
    finally:
        saved.close()


#: A shipper whose discovery pass number ``argv[2]`` (or the first after it once a line was
#: acknowledged, if ``argv[2]`` is not 1) hangs for ``argv[1]`` seconds; says ``hung`` then.
_HUNG_PASS_SCRIPT = """
import asyncio, sys, threading
from shipper.config import load_config
from shipper.daemon import Shipper

async def go() -> int:
    shipper = Shipper(load_config(sys.argv[3:]))
    real_scan, passes, hung = shipper.discoverer.scan, [], threading.Event()

    def hung_scan():
        passes.append(1)
        due = len(passes) == 1 if sys.argv[2] == "1" else len(passes) >= int(sys.argv[2])
        if due and not hung.is_set() and (sys.argv[2] == "1" or shipper.lines_acked):
            hung.set()
            print("hung", flush=True)
            threading.Event().wait(float(sys.argv[1]))
        return real_scan()

    shipper.discoverer.scan = hung_scan
    return await shipper.run()

sys.exit(asyncio.run(go()))
"""
#: How long the script's pass hangs: far longer than the test waits for the process to end.
HUNG_SECONDS = 120.0


@pytest.mark.parametrize("hung_pass", [2, 1], ids=["a-later-pass", "the-first-pass"])
def test_the_process_ends_after_a_stop_during_a_hung_pass(
    tmp_path: Path, receiver: Receiver, hung_pass: int
) -> None:
    """The discovery thread is a daemon thread: a ThreadPoolExecutor's is joined at the
    interpreter's exit, so the process of a shipper stopped (SIGTERM) during a pass hung on a
    dead file system did not end (its pod not either) until the pass did, or SIGKILL came.
    The first pass, at start-up, held the stop itself: nothing but SIGKILL ended that
    shipper. Its checkpoints are saved all the same: the line shipped before the hang is not
    read and sent again at the next start."""
    _one_line_log(tmp_path)
    argv = [str(HUNG_SECONDS), str(hung_pass), *_glob_args(tmp_path, receiver)]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    with subprocess.Popen(
        [sys.executable, "-c", _HUNG_PASS_SCRIPT, *argv],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "hung\n"
            proc.send_signal(signal.SIGTERM)
            # (the process of the old code lived HUNG_SECONDS)
            _, stderr = proc.communicate(timeout=WAIT_SECONDS * 6)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr
    saved = Registry(tmp_path / "state")
    try:
        offsets = [state.offset for _, state in saved.items()]
    finally:
        saved.close()
    # The first pass hung before any source started: nothing was read, nothing is saved.
    assert offsets == ([len("one\n")] if hung_pass > 1 else [])


def _one_line_log(tmp_path: Path) -> Path:
    """``logs/app/app.log`` holding the line ``one``."""
    log = tmp_path / "logs" / "app" / "app.log"
    log.parent.mkdir(parents=True)
    log.write_text("one\n")
    return log


def _glob_args(tmp_path: Path, receiver: Receiver) -> list[str]:
    """A shipper of ``logs/*/app.log``: a wildcard in a folder part, which inotify cannot
    cover, so passes run every 100 ms."""
    glob = str(tmp_path / "logs" / "*" / "app.log")
    args = ("--path", glob, "--poll-interval", "0.05", "--discover-interval", "0.1")
    return shipper_args(tmp_path, receiver, *args)


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    """Block this thread until ``check()`` holds; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
