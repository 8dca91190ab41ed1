"""Folders discovery cannot list: one such folder must not stall discovery of the whole host.

Before the fix, any listing error (EACCES included) made the pass "incomplete": with the
shipper running as a user that could not list one pod folder, every pass was incomplete for
ever, no removed pod was ever drained (its descriptors held), inotify was ignored and passes
backed off to 30 s, so a pod created and removed within that time was never shipped.

Now a permanent error (EACCES, ENOTDIR, ELOOP) skips the folder with one warning; a transient
one (out of fds, EIO) holds back draining only for sources under the folder that failed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipper import discover as discover_mod
from shipper import opening as opening_mod
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.discover import Discoverer, Scan, rotated_siblings
from shipper.errors import ShipperError
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, stop_runners


def _pod(root: Path, name: str, uid: str) -> Path:
    cdir = root / f"default_{name}_{uid}" / "app"
    cdir.mkdir(parents=True)
    (cdir / "0.log").write_bytes(b"")
    return cdir


def _failing_scandir(bad: Path, err: int) -> Callable[..., Any]:
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if str(path) == str(bad):
            raise OSError(err, os.strerror(err), str(path))
        return real(path)

    return scandir


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discover_mod, "_UNLISTABLE", set())


@pytest.mark.parametrize("err", [errno.EACCES, errno.ENOTDIR, errno.ELOOP])
def test_a_folder_never_listable_is_skipped_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, err: int
) -> None:
    pods = tmp_path / "pods"
    _pod(pods, "alpha-0", "0b2c9f3e-1111-2222-3333-4444555566aa")
    beta = _pod(pods, "beta-0", "0b2c9f3e-1111-2222-3333-4444555566bb")
    monkeypatch.setattr(discover_mod.os, "scandir", _failing_scandir(beta.parent, err))
    d = Discoverer(tmp_path / "none", pods, ())
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        scans = [d.scan() for _ in range(3)]
    for scan in scans:
        assert scan.complete and not scan.blind
        assert [s.service for s in scan.specs] == ["alpha"]
        assert len(scan.skipped) == 1 and str(beta.parent) in scan.skipped[0]  # for --once
    warnings = [r.getMessage() for r in caplog.records if "cannot list" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per folder, not every pass
    assert str(beta.parent) in warnings[0]
    hint = {
        errno.EACCES: f"give the shipper (uid={os.geteuid()}) read access",
        errno.ENOTDIR: "not a directory: fix the path",
        errno.ELOOP: "loop of symbolic links: point the link (or the flag) at the real folder",
    }[err]
    assert hint in warnings[0] and (err != errno.ELOOP or "read access" not in warnings[0])


def test_a_folder_failing_again_after_it_recovered_is_warned_about_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pods = tmp_path / "pods"
    _pod(pods, "alpha-0", "0b2c9f3e-1111-2222-3333-4444555566aa")
    beta = _pod(pods, "beta-0", "0b2c9f3e-1111-2222-3333-4444555566bb")
    real = discover_mod.os.scandir
    d = Discoverer(tmp_path / "none", pods, ())
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        for failing in (True, True, False, False, True):
            scandir = _failing_scandir(beta.parent, errno.EACCES) if failing else real
            monkeypatch.setattr(discover_mod.os, "scandir", scandir)
            services = sorted(s.service for s in d.scan().specs)
            assert services == (["alpha"] if failing else ["alpha", "beta"])
    warnings = [r.getMessage() for r in caplog.records if "cannot list" in r.getMessage()]
    assert len(warnings) == 2, warnings  # the first failure and the one after the recovery
    assert not discover_mod._UNLISTABLE - {str(beta.parent)}


def _deny_stat(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``os.stat`` of anything under ``folder`` fails as for a user who may not enter it (the
    tests may run as root, who can)."""
    real = discover_mod.os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).startswith(str(folder)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(discover_mod.os, "stat", stat)


def test_a_docker_container_folder_the_shipper_cannot_enter_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Docker keeps container folders root's (0700/0710): a shipper running as another user
    used to skip them in silence. (Simulated: the tests may run as root, who can enter.)"""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "alpha", lines=["x"])
    hidden = make_container(docker, "b" * 64, "beta", lines=["y"])
    _deny_stat(monkeypatch, hidden.parent)
    d = Discoverer(docker, tmp_path / "none", ())
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        scans = [d.scan() for _ in range(3)]
    for scan in scans:
        assert scan.complete
        assert [s.service for s in scan.specs] == ["alpha"]
    warnings = [r.getMessage() for r in caplog.records if "cannot list" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert str(hidden.parent) in warnings[0] and f"uid={os.geteuid()}" in warnings[0]


def test_a_transient_failure_is_scoped_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pods = tmp_path / "pods"
    alpha = _pod(pods, "alpha-0", "0b2c9f3e-1111-2222-3333-4444555566aa")
    beta = _pod(pods, "beta-0", "0b2c9f3e-1111-2222-3333-4444555566bb")
    monkeypatch.setattr(discover_mod.os, "scandir", _failing_scandir(beta.parent, errno.EMFILE))
    scan = Discoverer(tmp_path / "none", pods, ()).scan()
    assert not scan.complete and not scan.blind
    assert "Too many open files" in scan.failures[0]
    assert scan.may_have_missed(beta / "0.log")
    assert not scan.may_have_missed(alpha / "0.log")
    assert not scan.may_have_missed(pods / "default_alpha-0-gone_x" / "app" / "0.log")
    # A root that cannot be listed: anything under it may have been missed.
    monkeypatch.setattr(discover_mod.os, "scandir", _failing_scandir(pods, errno.EMFILE))
    blind = Discoverer(tmp_path / "none", pods, ()).scan()
    assert blind.blind and blind.may_have_missed(alpha / "0.log")


def test_a_failing_folder_does_not_stop_draining_or_back_off_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pod alpha is deleted while pod beta's folder cannot be listed (out of fds): alpha is
    drained, beta is kept, and the next pass neither backs off nor ignores inotify."""
    receiver = Receiver()
    pods = tmp_path / "pods"
    alpha = _pod(pods, "alpha-0", "0b2c9f3e-1111-2222-3333-4444555566aa")
    beta = _pod(pods, "beta-0", "0b2c9f3e-1111-2222-3333-4444555566bb")
    cfg = load_config(shipper_args(tmp_path, receiver, "--poll-interval", "0.05", cri=pods))

    async def go() -> None:
        shipper = Shipper(cfg)
        shipper._sync_sources(await shipper._discover())
        runners = {r.spec.service: r for r in shipper.runners.values()}
        assert sorted(runners) == ["alpha", "beta"]
        for path in (alpha / "0.log", alpha):
            path.unlink() if path.is_file() else path.rmdir()
        alpha.parent.rmdir()
        monkeypatch.setattr(discover_mod.os, "scandir", _failing_scandir(beta.parent, errno.EMFILE))
        scan = await shipper._discover()
        assert not scan.complete
        shipper._sync_sources(scan)
        assert runners["alpha"].finishing  # its pod is gone
        assert not runners["beta"].finishing  # only unlisted
        assert shipper._blind_passes == 0
        assert shipper._scan_delay(False, True) == cfg.discover_interval  # no back-off
        monkeypatch.undo()
        await stop_runners(shipper)

    try:
        asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        receiver.close()


def test_rotated_siblings_raises_on_a_transient_listing_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = tmp_path / "0.log"
    live.write_bytes(b"")
    (tmp_path / "0.log.1").write_bytes(b"")
    assert rotated_siblings(live) == [tmp_path / "0.log.1"]
    assert rotated_siblings(tmp_path / "gone" / "0.log") == []  # no folder: no rotated files

    def listdir(path: Any) -> list[str]:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(discover_mod.os, "listdir", listdir)
    with pytest.raises(OSError, match="Too many open files"):
        rotated_siblings(live)  # "none" would be a lie: the caller must look again later


def test_scan_without_scope_is_blind() -> None:
    """A failure recorded without its folder is taken to concern everything (conservative)."""
    scan = Scan(failures=["cannot list /x: [Errno 24] Too many open files"])
    assert scan.blind and scan.may_have_missed(Path("/anything"))
    assert not Scan().may_have_missed(Path("/anything"))


def test_container_metadata_never_readable_ships_under_the_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EACCES on ``config.v2.json`` is permanent: the container is shipped under its id (as
    for a bad file, warned once) instead of making every pass incomplete."""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "app", {"logq.service": "pay"}, lines=["x"])
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kw: Any) -> Any:
        if str(path).endswith("config.v2.json"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *args, **kw)

    monkeypatch.setattr(discover_mod.os, "stat", stat)
    d = Discoverer(docker, tmp_path / "none", ())
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        scans = [d.scan() for _ in range(2)]
    for scan in scans:
        assert scan.complete
        assert [s.service for s in scan.specs] == ["a" * 12]
    assert caplog.text.count("cannot read container metadata") == 1


# --- --once must not say it succeeded when it skipped logs -------------------------------------


def _once(tmp_path: Path, receiver: Receiver, *extra: str, docker: Path) -> Shipper:
    args = ("--once", "--retry-timeout", "5", "--poll-interval", "0.05", *extra)
    return Shipper(load_config(shipper_args(tmp_path, receiver, *args, docker=docker)))


def test_once_exits_1_when_a_container_folder_cannot_be_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """``--help`` says ``--once`` exits 1 when a log folder could not be listed; a folder the
    shipper may not enter (Docker's are root's, 0700) only got a warning and exit 0."""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "good", lines=["shipped"])
    hidden = make_container(docker, "b" * 64, "hidden", lines=["skipped"])
    _deny_stat(monkeypatch, hidden.parent)
    with pytest.raises(ShipperError) as failed:
        asyncio.run(asyncio.wait_for(_once(tmp_path, receiver, docker=docker).run(), 60))
    said = str(failed.value)
    assert said.startswith("shipped the files found, but logs were skipped: cannot list"), said
    assert str(hidden.parent) in said and "read access" in said, said
    assert receiver.lines() == ["shipped"]


def test_once_exits_1_when_a_log_file_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """An unreadable log file (0600 root, the shipper another user) is data skipped too."""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "good", lines=["shipped"])
    unreadable = make_container(docker, "b" * 64, "locked", lines=["skipped"])
    real = opening_mod.open_regular

    def open_regular(path: Any) -> int:
        if str(path) == str(unreadable):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(opening_mod, "open_regular", open_regular)
    with pytest.raises(ShipperError) as failed:
        asyncio.run(asyncio.wait_for(_once(tmp_path, receiver, docker=docker).run(), 60))
    said = str(failed.value)
    assert said.startswith(
        f"shipped the files found, but logs were skipped: cannot read log "
        f"file {unreadable}: Permission denied; give the shipper"
    ), said
    assert receiver.lines() == ["shipped"]


def test_once_with_a_docker_root_that_is_a_link_loop_says_so(
    tmp_path: Path, receiver: Receiver
) -> None:
    """ELOOP was told "give the shipper read access", and --once exited 0."""
    loop = tmp_path / "containers"
    os.symlink(loop.name, loop)
    with pytest.raises(ShipperError, match="loop of symbolic links") as failed:
        asyncio.run(asyncio.wait_for(_once(tmp_path, receiver, docker=loop).run(), 60))
    assert "read access" not in str(failed.value)


def test_once_with_every_folder_readable_exits_0(tmp_path: Path, receiver: Receiver) -> None:
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "good", lines=["shipped"])
    assert asyncio.run(asyncio.wait_for(_once(tmp_path, receiver, docker=docker).run(), 60)) == 0
    assert receiver.lines() == ["shipped"]


def test_a_path_glob_folder_never_listable_is_warned_about_and_fails_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``--path`` globs passed over a folder they could not list in silence (as ``glob`` does):
    a shipper not allowed to read /var/log/app shipped nothing and said nothing."""
    logs = tmp_path / "logs"
    for app in ("open", "locked"):
        (logs / app).mkdir(parents=True)
        (logs / app / f"{app}.log").write_text("x\n")
    locked = logs / "locked"
    monkeypatch.setattr(discover_mod.os, "scandir", _failing_scandir(locked, errno.EACCES))
    d = Discoverer(tmp_path / "none", tmp_path / "none", (f"{logs}/*/*.log",))
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        scans = [d.scan() for _ in range(3)]
    for scan in scans:
        assert scan.complete
        assert [s.service for s in scan.specs] == ["open"]
        assert len(scan.skipped) == 1 and str(locked) in scan.skipped[0]  # --once exits 1
    warnings = [r.getMessage() for r in caplog.records if "cannot list" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert (
        f"--path folder, its logs are not shipped: give the shipper (uid={os.geteuid()})"
        in (warnings[0])
    )
    assert f"path={locked}" in warnings[0]


def test_a_path_glob_folder_failing_for_now_keeps_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors while listing a folder under a ``--path`` glob: the pass is unsure of
    that folder (its files are not taken for deleted), not of the others."""
    logs = tmp_path / "logs"
    for app in ("steady", "flaky"):
        (logs / app).mkdir(parents=True)
        (logs / app / f"{app}.log").write_text("x\n")
    monkeypatch.setattr(discover_mod.os, "scandir", _failing_scandir(logs / "flaky", errno.EMFILE))
    scan = Discoverer(tmp_path / "none", tmp_path / "none", (f"{logs}/*/*.log",)).scan()
    assert [s.service for s in scan.specs] == ["steady"]
    assert scan.unsure == [str(logs / "flaky")] and not scan.skipped


def test_a_path_glob_under_a_folder_not_made_yet_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        scan = Discoverer(tmp_path / "none", tmp_path / "none", (f"{tmp_path}/later/*.log",)).scan()
    assert scan.complete and not scan.specs and not scan.skipped and not scan.failures
    assert not caplog.records
