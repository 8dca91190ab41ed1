"""The process-wide file descriptor budget, and starts that run out of descriptors.

Live files count against the same budget as pinned rotated files (:func:`pin_budget`): the
reserve above it is never used by tailers, so sockets, the checkpoint save and the metrics
server always have descriptors. A source that finds the budget spent waits (one warning) and
opens its file when another source ends.

A start that loses an open or a folder listing to EMFILE is undone and tried again: before,
an EMFILE on ``.2`` followed by a successful open of ``.1`` hid the failure (``.2`` never read),
and a listing that failed made a checkpointed ``.1`` look deleted (its lines counted lost).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import shipper.fd_budget as fd_budget
import shipper.opening as opening
import shipper.resume as resume
from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.fd_budget import waiting_sources
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root
from tests.shipper.tailing import append_docker, commit, drain, set_clock
from tests.support import procs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def own_counts(monkeypatch: pytest.MonkeyPatch) -> int:
    """Files other tests left open count in the process; so would their waiting sources."""
    monkeypatch.setattr(fd_budget, "_waiting", set())
    monkeypatch.setattr(fd_budget, "_waiting_logged_at", None)
    return fd_budget.open_files()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A monotonic clock the test moves by hand (backoffs pass instantly)."""
    now = [1000.0]
    set_clock(monkeypatch, now)
    return now


def _source(path: Path) -> SourceSpec:
    return SourceSpec(f"test:{path.parent.name}/{path.name}", path, "docker", "svc")


@pytest.mark.parametrize("failing", ["c-json.log.2", "c-json.log.1"])
def test_an_emfile_on_any_rotated_file_at_start_is_not_hidden_by_a_later_open(
    tmp_path: Path,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    clock: list[float],
    failing: str,
    own_counts: int,
) -> None:
    path = tmp_path / "c-json.log"
    append_docker(f"{path}.2", 0, 10, "old")
    time.sleep(0.02)
    append_docker(f"{path}.1", 10, 10, "mid")
    time.sleep(0.02)
    append_docker(path, 20, 10, "live")
    t = Tailer(_source(path), reg, "h", 65536)
    real_open = os.open
    failed = [False]

    def emfile_once(p, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not failed[0] and str(p).endswith(failing):
            failed[0] = True
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", emfile_once)
    assert t.read() is None  # the start is put off, nothing half-done stays
    assert failed[0] and not t.cursors and fd_budget.open_files() == own_counts
    assert [s for _, s in reg.items()] == []
    monkeypatch.setattr(os, "open", real_open)
    clock[0] += 100
    got = drain(t)
    t.close()
    assert sorted(got) == sorted(
        [f"old {i}" for i in range(10)]
        + [f"mid {i}" for i in range(10, 20)]
        + [f"live {i}" for i in range(20, 30)]
    )
    assert got[:10] == [f"old {i}" for i in range(10)]


def _half_read_then_rotated(tmp_path: Path) -> Path:
    """A source whose file was read to line 30 (acked), then rotated to ``.1`` with 70 lines
    unread while the shipper was down; the new live file holds 10."""
    path = tmp_path / "c-json.log"
    append_docker(path, 0, 100)
    reg = Registry(tmp_path / "state")
    t = Tailer(_source(path), reg, "h", 65536)
    chunk = t.read(max_lines=30)
    assert chunk is not None
    commit(t, chunk)
    os.replace(path, f"{path}.1")
    append_docker(path, 100, 10)
    t.close()
    reg.save()
    reg.close()
    return path


@pytest.mark.parametrize("listing", ["raises", "empty"])
def test_a_failed_listing_at_restart_does_not_make_a_rotated_file_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: list[float], listing: str
) -> None:
    """Whether ``rotated_siblings`` raises the EMFILE or (older behaviour) returns []."""
    path = _half_read_then_rotated(tmp_path)
    real = resume.rotated_siblings
    calls = [0]

    def flaky(p: Path) -> list[Path]:
        calls[0] += 1
        if calls[0] == 1:
            if listing == "raises":
                raise OSError(errno.EMFILE, "Too many open files")
            return []
        return real(p)

    monkeypatch.setattr(resume, "rotated_siblings", flaky)
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(_source(path), reg, "h", 65536, on_loss=losses.append)
    try:
        assert drain(t) == []  # put off, checkpoint kept
        assert len(list(reg.items())) == 1
        clock[0] += 100
        got = drain(t)
    finally:
        t.close()
        reg.close()
    assert losses == []
    assert got == [f"line {i}" for i in range(30, 110)]


def _restart(tmp_path: Path, path: Path) -> tuple[list[str], list[str]]:
    """A new run over ``path`` with the saved checkpoints: (lines read, losses counted)."""
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(_source(path), reg, "h", 65536, on_loss=losses.append)
    try:
        return drain(t), losses
    finally:
        t.close()
        reg.close()


def test_a_rotated_file_really_deleted_is_still_counted_lost(
    tmp_path: Path, clock: list[float]
) -> None:
    """ENOENT proves it gone: the check above does not hide real losses."""
    path = _half_read_then_rotated(tmp_path)
    os.unlink(f"{path}.1")
    got, losses = _restart(tmp_path, path)
    assert losses == ["deleted_unread"]
    assert got == [f"line {i}" for i in range(100, 110)]


def test_inode_reused_by_the_new_live_file_is_not_taken_for_the_old_one(
    tmp_path: Path, clock: list[float]
) -> None:
    """The deleted ``.1``'s inode number may come back as another file of the source: a
    different first line means the old file is gone (no retries, the loss is counted)."""
    path = _half_read_then_rotated(tmp_path)
    old = os.stat(f"{path}.1")
    os.unlink(f"{path}.1")
    os.unlink(path)
    append_docker(path, 200, 5, "other")  # likely the same inode number, never our content
    got, losses = _restart(tmp_path, path)
    assert losses == ["deleted_unread"], (old.st_ino, os.stat(path).st_ino)
    assert got == [f"other {i}" for i in range(200, 205)]


def test_live_files_count_against_the_budget_and_waiters_get_freed_descriptors(
    tmp_path: Path,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    own_counts: int,
) -> None:
    monkeypatch.setattr(fd_budget, "pin_budget", lambda: own_counts + 3)
    tailers = []
    for i in range(5):
        d = tmp_path / f"c{i}"
        d.mkdir()
        append_docker(d / "c-json.log", 0, 4, f"c{i}")
        tailers.append(Tailer(_source(d / "c-json.log"), reg, "h", 65536))
    caplog.set_level(logging.INFO, logger="logq.shipper.tailer")
    try:
        got = [drain(t) for t in tailers]
        assert [len(g) for g in got] == [4, 4, 4, 0, 0]
        assert fd_budget.open_files() == own_counts + 3 and waiting_sources() == 2
        assert [t.waiting for t in tailers] == [False, False, False, True, True]
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "log sources wait for a file descriptor" in warnings[0]
        assert (
            f"budget of {own_counts + 3} log files" in warnings[0]
            and "waiting_sources=1" in warnings[0]
        )
        assert "LimitNOFILE" in warnings[0] and "ulimit -n" in warnings[0]
        for _ in range(3):  # retries cost nothing and log nothing more
            assert drain(tailers[3]) == [] and not tailers[4].poll()
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1

        tailers[0].close()  # its container was removed: the freed descriptor goes on
        assert drain(tailers[3]) == [f"c3 {i}" for i in range(4)]
        assert drain(tailers[4]) == [] and waiting_sources() == 1
        tailers[1].close()
        assert drain(tailers[4]) == [f"c4 {i}" for i in range(4)]
        assert waiting_sources() == 0
        assert "no source waits for a file descriptor any more" in caplog.text
    finally:
        for t in tailers:
            t.close()
    assert fd_budget.open_files() == own_counts and waiting_sources() == 0


def test_idle_live_files_make_room_for_waiting_sources_and_reopen_on_growth_or_rotation(
    tmp_path: Path,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    clock: list[float],
    own_counts: int,
) -> None:
    """More sources than descriptors: idle sources close their live files in turn, and lines
    written while closed -- also across a rotation -- are all read, once."""
    monkeypatch.setattr(fd_budget, "pin_budget", lambda: own_counts + 2)
    paths = []
    for i in range(3):
        d = tmp_path / f"c{i}"
        d.mkdir()
        paths.append(d / "c-json.log")
        append_docker(paths[-1], 0, 3, f"c{i}")
    tailers = [Tailer(_source(p), reg, "h", 65536) for p in paths]
    try:
        assert [len(drain(t)) for t in tailers] == [3, 3, 0]
        assert waiting_sources() == 1
        for t in tailers[:2]:
            assert not t.poll()
        assert fd_budget.open_files() == own_counts + 2  # not idle long enough yet
        clock[0] += opening.PARK_IDLE_SECONDS
        for t in tailers[:2]:
            assert not t.poll()
        assert fd_budget.open_files() == own_counts
        assert drain(tailers[2]) == [f"c2 {i}" for i in range(3)]
        assert waiting_sources() == 0

        for t in tailers[:2]:
            assert not t.poll()  # nothing changed: stays closed
        assert fd_budget.open_files() == own_counts + 1
        append_docker(paths[0], 3, 2, "c0")
        append_docker(paths[1], 3, 2, "c1")  # written while closed, then rotated away
        os.replace(paths[1], f"{paths[1]}.1")
        append_docker(paths[1], 5, 2, "c1")
        assert drain(tailers[0]) == ["c0 3", "c0 4"]
        assert drain(tailers[1]) == []  # no room: tailers 0 and 2 hold the budget
        assert waiting_sources() == 1 and tailers[1].waiting
        clock[0] += opening.PARK_IDLE_SECONDS
        for t in (tailers[0], tailers[2]):
            t.poll()
        assert drain(tailers[1]) == [f"c1 {i}" for i in range(3, 7)]
        assert waiting_sources() == 0
    finally:
        for t in tailers:
            t.close()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.integration
def test_more_containers_than_descriptors_all_ship_and_the_daemon_stays_reachable(
    tmp_path: Path,
) -> None:
    """The real daemon under a hard open-files limit of 160 (a budget of 96 log files) with
    200 containers: every line arrives, also lines written later to every container, /livez
    answers throughout, and no open ever fails with EMFILE (the reserve stays free)."""
    limit, n = 160, 200
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip("hard open-files limit too low")
    root = tmp_path / "docker"
    paths = [
        make_container(root, f"{i + 1:064x}", f"c{i}", lines=[f"c{i} {j}" for j in range(3)])
        for i in range(n)
    ]
    expected = [f"c{i} {j}" for i in range(n) for j in range(3)]

    def small_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    receiver = Receiver()
    port = procs.free_port()
    log_path = tmp_path / "shipper.log"
    cmd = [
        *(sys.executable, "-m", "shipper.daemon", "--hostname", "h"),
        *("--aggregator", receiver.address, "--docker-root", str(root)),
        *("--cri-root", str(empty_root(tmp_path))),
        *("--state-dir", str(tmp_path / "state")),
        *("--metrics-listen", f"127.0.0.1:{port}", "--poll-interval", "0.1"),
    ]
    proc = procs.start_group(cmd, log_path, cwd=REPO, before_exec=small_limit)
    most_fds = 0

    def shipped(count: int) -> bool:
        nonlocal most_fds
        assert proc.poll() is None, log_path.read_text()[-3000:]
        most_fds = max(most_fds, len(os.listdir(f"/proc/{proc.pid}/fd")))
        assert _get(f"http://127.0.0.1:{port}/livez") == 200
        return len(receiver.lines()) >= count

    def serving() -> bool:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            return _get(f"http://127.0.0.1:{port}/livez") == 200
        except urllib.error.URLError:
            return False  # not listening yet

    try:
        procs.wait_until(serving, 60, "the metrics server")
        procs.wait_until(lambda: shipped(len(expected)), 120, "every first line shipped")
        for i, p in enumerate(paths):
            append_docker(p, 3, 2, f"c{i}")
        expected += [f"c{i} {j}" for i in range(n) for j in (3, 4)]
        procs.wait_until(lambda: shipped(len(expected)), 120, "every later line shipped")
        assert _get(f"http://127.0.0.1:{port}/healthz") == 200
    finally:
        procs.stop_group(proc, timeout=30)
        receiver.close()
    text = log_path.read_text()
    assert sorted(receiver.lines()) == sorted(expected)
    assert "log sources wait for a file descriptor" in text
    assert "Too many open files" not in text, text[-3000:]
    assert most_fds <= limit


def test_a_restart_near_the_budget_opens_the_rotated_and_the_live_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: list[float], own_counts: int
) -> None:
    """Room for one file: a known source's start still opens its live file after its rotated
    one (the start was let in; a live file left closed would look gone and put it off)."""
    path = _half_read_then_rotated(tmp_path)
    monkeypatch.setattr(fd_budget, "pin_budget", lambda: own_counts + 1)
    got, losses = _restart(tmp_path, path)
    assert losses == [] and waiting_sources() == 0
    assert got == [f"line {i}" for i in range(30, 110)]


def test_budget_right_after_boot() -> None:
    """A shipper started within 5 s of boot (monotonic clock below the cache's 5 s) read its
    budget from the never-filled cache: 0, no room for any file. A fresh interpreter, for the
    module's first state."""
    script = (
        "import time\n"
        "time.monotonic = lambda: 3.0\n"
        "from shipper import fd_budget\n"
        "print(fd_budget.pin_budget(), fd_budget.room())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[0]) > 0 and out[1] == "True"


def test_a_parked_file_truncated_and_written_again_to_the_same_size_is_read(
    tmp_path: Path,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    clock: list[float],
    own_counts: int,
) -> None:
    """An idle live file closed for a waiting source, then copytruncated and written again to
    the very size it had (a line of the same length): its inode and size are as they were
    when it was closed, its times are not. It is opened again and the new line read, not
    left closed until the file's size next changes."""
    budget = [own_counts + 1]
    monkeypatch.setattr(fd_budget, "pin_budget", lambda: budget[0])
    paths = []
    for i in range(2):
        d = tmp_path / f"c{i}"
        d.mkdir()
        paths.append(d / "c-json.log")
        append_docker(paths[-1], 0, 1, f"c{i}")
    tailers = [Tailer(_source(p), reg, "h", 65536) for p in paths]
    try:
        assert drain(tailers[0]) == ["c0 0"]
        assert drain(tailers[1]) == [] and waiting_sources() == 1
        clock[0] += opening.PARK_IDLE_SECONDS
        assert not tailers[0].poll()  # closed for the waiting source
        assert drain(tailers[1]) == ["c1 0"]
        budget[0] = own_counts + 2
        size = paths[0].stat().st_size
        with open(paths[0], "r+b") as f:
            f.truncate(0)
            f.write(docker_line("c0 X", 0))  # the same length as "c0 0"
        assert paths[0].stat().st_size == size
        assert drain(tailers[0]) == ["c0 X"]
    finally:
        for t in tailers:
            t.close()
