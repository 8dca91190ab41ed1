"""Running short of file descriptors: the soft limit is raised at start-up, and a discovery pass
that cannot list a folder (EMFILE) changes nothing instead of declaring every source gone.

Before the fix: with the systemd default soft limit of 1024, an aggregator outage while
containers rotated left the shipper unable to open anything; discovery then returned no sources
and every container was drained as if removed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from shipper import daemon as daemon_mod
from shipper import discover as discover_mod
from shipper.config import load_config
from shipper.daemon import Shipper, raise_open_files_limit
from shipper.discover import Discoverer, Scan
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root, shipper_args, stop_runners
from tests.shipper.tailing import rotate_docker

REPO = Path(__file__).resolve().parents[2]


def test_soft_open_files_limit_is_raised_to_the_hard_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("hard limit too low to lower the soft one below it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with caplog.at_level(logging.INFO, logger="logq.shipper"):
            now = raise_open_files_limit()
        got = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert now == got > 256
        if hard != resource.RLIM_INFINITY:
            assert got == hard
        assert f"open files limit raised soft={got} was=256" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.integration
def test_the_daemon_raises_its_limit_and_logs_it(tmp_path: Path) -> None:
    """The real program, started with a soft limit of 64 as systemd would start it with 1024."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 64:
        pytest.skip("hard limit too low")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    receiver = Receiver()
    try:
        (tmp_path / "app.log").write_text("one\n")
        res = subprocess.run(
            [
                *(sys.executable, "-m", "shipper.daemon", "--once", "--hostname", "h"),
                *("--aggregator", receiver.address, "--path", str(tmp_path / "*.log")),
                *("--docker-root", str(empty_root(tmp_path))),
                *("--cri-root", str(empty_root(tmp_path))),
                *("--state-dir", str(tmp_path / "state")),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            preexec_fn=low_soft_limit,
        )
    finally:
        receiver.close()
    assert res.returncode == 0, res.stderr[-2000:]
    assert "open files limit raised" in res.stderr and "was=64" in res.stderr, res.stderr


def _emfile(*_: object, **__: object) -> None:
    raise OSError(errno.EMFILE, "Too many open files")


def test_unlistable_roots_make_an_incomplete_scan_not_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "app", {"logq.service": "pay"}, lines=["x"])
    cri = tmp_path / "pods" / "ns_web-0_uid" / "app"
    cri.mkdir(parents=True)
    (cri / "0.log").write_bytes(b"")
    plain = tmp_path / "var"
    plain.mkdir()
    (plain / "a.log").write_bytes(b"")
    d = Discoverer(docker, tmp_path / "pods", (str(plain / "*.log"),))
    first = d.scan()
    assert first.complete and len(first.specs) == 3

    monkeypatch.setattr(discover_mod.os, "scandir", _emfile)
    monkeypatch.setattr(Path, "iterdir", _emfile)
    monkeypatch.setattr(discover_mod.os, "open", _emfile)
    broken = d.scan()
    assert not broken.complete
    assert any("cannot list docker root" in f for f in broken.failures)
    assert any("cannot list CRI root" in f for f in broken.failures)
    assert any(f"cannot list {plain}" in f for f in broken.failures)


def test_metadata_unreadable_for_lack_of_fds_keeps_what_was_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A known container keeps its service; a new one is not shipped under a wrong name (its
    id) but left for a later pass."""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "app", {"logq.service": "pay"}, lines=["x"])
    d = Discoverer(docker, tmp_path / "none", ())
    assert [s.service for s in d.scan().specs] == ["pay"]
    # Same file, a new version (so the cache is not enough), and no fd to open it with.
    config = docker / ("a" * 64) / "config.v2.json"
    config.write_text(config.read_text() + " ")
    make_container(docker, "b" * 64, "new", {"logq.service": "billing"}, lines=["y"])
    real_read = discover_mod.read_regular

    def no_fds(path: str) -> bytes:
        if str(path).endswith("config.v2.json"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_read(path)

    monkeypatch.setattr(discover_mod, "read_regular", no_fds)
    scan = d.scan()
    assert [(s.container_id[:1], s.service) for s in scan.specs] == [("a", "pay")]
    assert not scan.complete and "config.v2.json" in scan.failures[0]
    monkeypatch.undo()
    assert sorted(s.service for s in d.scan().specs) == ["billing", "pay"]


def test_a_failed_pass_drains_nothing_and_a_file_still_there_is_not_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver()
    log = tmp_path / "app.log"
    log.write_text("one\n")
    args = shipper_args(tmp_path, receiver, "--path", str(log), "--poll-interval", "0.05")
    cfg = load_config(args)
    failing = Scan(failures=["cannot list /x: [Errno 24] Too many open files"])

    async def go() -> None:
        shipper = Shipper(cfg)
        # The runner reads and sends while the passes run (off the loop): its first batch
        # waits for a checkpoint write (Shipper.place), which the daemon's loop makes.
        saver = asyncio.create_task(shipper._checkpoint_loop())
        real_scan = shipper.discoverer.scan
        shipper._sync_sources(await shipper._discover())
        (runner,) = shipper.runners.values()
        shipper.discoverer.scan = lambda: failing  # type: ignore[method-assign]
        for _ in range(3):
            shipper._sync_sources(await shipper._discover())
        assert not runner.finishing
        assert caplog.text.count("discovery failed") == 1  # once, not every pass
        assert shipper.metrics.discovery_failures._value.get() == 3
        assert shipper._scan_delay(False, True) > cfg.discover_interval  # backing off
        # A complete pass that misses a file still on disk does not drain it either.
        shipper.discoverer.scan = Scan  # type: ignore[method-assign]
        shipper._sync_sources(await shipper._discover())
        assert not runner.finishing
        # Missing while its folder is there: a rotation between rename and create, not gone.
        log.unlink()
        shipper._sync_sources(await shipper._discover())
        assert not runner.finishing
        shipper._missing[runner.spec.key] -= daemon_mod.GONE_GRACE_SECONDS  # time passes
        shipper._sync_sources(await shipper._discover())
        assert runner.finishing
        shipper.discoverer.scan = real_scan  # type: ignore[method-assign]
        shipper._sync_sources(await shipper._discover())
        assert "discovery works again after 3 failed passes" in caplog.text
        assert shipper._scan_delay(False, True) == 10.0  # inotify covers all: safety net only
        await stop_runners(shipper)
        saver.cancel()

    try:
        with caplog.at_level(logging.INFO, logger="logq.shipper"):
            asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        receiver.close()


def test_fd_check_helper_sees_real_emfile(tmp_path: Path) -> None:
    """The probe used for ``--path`` globs reports a real EMFILE (not only a mocked one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    scan = Scan()
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        discover_mod._probe(str(tmp_path), scan)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not scan.complete and "Too many open files" in scan.failures[0]


def test_rotations_are_pinned_only_while_reading_waits(tmp_path: Path) -> None:
    """The pin check runs while the reader waits for acks (where it prevents losses) and not
    for idle sources at the end of their file (1000 of them cost a tenth of a core): after
    their last read, one check and no more. (Checks while the reader is busy instead:
    tests/shipper/test_fast_rotation.py.)"""
    from shipper.pinning import PIN_CHECK_SECONDS
    from tests.shipper.hostgen import docker_line

    docker = tmp_path / "containers"
    idle_log = make_container(docker, "1" * 64, "idle", lines=["x"])
    receiver = Receiver()
    cfg = load_config(
        shipper_args(
            tmp_path, receiver, "--poll-interval", "0.05", "--batch-lines", "5",
            "--retry-timeout", "1", docker=docker,
        )
    )  # fmt: skip

    async def go() -> None:
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        while len(receiver.records) < 1:
            await asyncio.sleep(0.05)
        (idle,) = shipper.runners.values()
        await asyncio.sleep(2 * PIN_CHECK_SECONDS)  # the one check after its last read
        calls = 0
        real_pin = idle.tailer.pin_new_generation

        def counted() -> None:
            nonlocal calls
            calls += 1
            real_pin()

        idle.tailer.pin_new_generation = counted  # type: ignore[method-assign]
        await asyncio.sleep(8 * PIN_CHECK_SECONDS)
        assert calls == 0 and not idle._waiting.is_set()
        # Now the reader of a new container waits: its acks never come.
        receiver.ack = False
        busy_log = make_container(docker, "2" * 64, "busy", lines=[f"l{i}" for i in range(50)])
        while len(shipper.runners) < 2:
            await asyncio.sleep(0.05)
        busy = shipper.runners[f"docker:{'2' * 64}"]
        while not busy._waiting.is_set():
            await asyncio.sleep(0.05)
        for gen in range(1, 6):
            rotate_docker(busy_log)
            busy_log.write_bytes(b"".join(docker_line(f"g{gen}-{i}", i) for i in range(5)))
            await asyncio.sleep(3 * PIN_CHECK_SECONDS)
        # Every generation is held open, though max-file 3 deleted most of them from disk.
        assert len(busy.tailer.cursors) == 6
        assert len(list(busy_log.parent.glob("*-json.log*"))) == 3
        shipper.request_stop()
        await run
        assert idle_log.exists()

    try:
        asyncio.run(asyncio.wait_for(go(), 90))
    finally:
        receiver.close()


def test_once_with_an_incomplete_discovery_does_not_claim_success(tmp_path: Path) -> None:
    """It ships what it found, then exits 1 naming the folder it could not list."""
    from shipper.errors import ShipperError

    receiver = Receiver()
    log = tmp_path / "app.log"
    log.write_text("one\n")
    cfg = load_config(shipper_args(tmp_path, receiver, "--once", "--path", str(log)))

    async def go() -> None:
        shipper = Shipper(cfg)
        real_scan = shipper.discoverer.scan

        def incomplete() -> Scan:
            scan = real_scan()
            scan.failures.append("cannot list CRI root /var/log/pods: [Errno 13] Permission")
            return scan

        shipper.discoverer.scan = incomplete  # type: ignore[method-assign]
        with pytest.raises(ShipperError, match="discovery was incomplete: cannot list CRI root"):
            await shipper.run()

    try:
        asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        receiver.close()
    assert receiver.lines() == ["one"]
