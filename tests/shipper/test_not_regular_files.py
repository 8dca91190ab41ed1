"""A FIFO (or a device, a folder) where a log, metadata or checkpoint file belongs.

Before the fix, ``open()`` of a FIFO waited for a writer inside the event loop: a
``<id>-json.log``, a rotated ``<id>-json.log.1``, a pod's ``0.log`` or a ``config.v2.json``
made a FIFO stopped the whole shipper (the good containers beside it never shipped, SIGTERM
was not handled, ``--once`` never ended), and so did ``<state-dir>/checkpoints.json`` at start.
Now such files are skipped with a warning naming them, and a FIFO as the registry is a start
error. The end-to-end tests run the program with a timeout: a regression fails, never hangs.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shipper import discover as discover_mod
from shipper.discover import Discoverer, rotated_siblings
from shipper.regular import NotRegularFile, open_regular, read_regular
from tests.shipper.hostgen import cri_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args

REPO = Path(__file__).resolve().parents[2]
UID = "0b2c9f3e-1111-2222-3333-4444555566aa"


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discover_mod, "_NOT_REGULAR", {}, raising=False)


def _run(args: list[str], timeout: float = 45) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipper.daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _pods_with_a_fifo(tmp_path: Path, line: str) -> Path:
    """A CRI root of two pods: ``good-0``, whose ``0.log`` holds ``line``, and ``bad-0``,
    whose ``0.log`` is a FIFO."""
    pods = tmp_path / "pods"
    for name, fifo in (("good-0", False), ("bad-0", True)):
        log = pods / f"prod_{name}_{UID}" / "app" / "0.log"
        log.parent.mkdir(parents=True)
        if fifo:
            os.mkfifo(log)
        else:
            log.write_bytes(cri_line(line))
    return pods


def test_open_regular_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "x.log"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="FIFO"):
        open_regular(fifo)  # a plain open() would wait here for ever
    with pytest.raises(NotRegularFile, match="directory"):
        read_regular(tmp_path)
    (tmp_path / "ok.log").write_bytes(b"line\n")
    assert read_regular(tmp_path / "ok.log") == b"line\n"


def test_discovery_skips_a_fifo_container_log_and_pod_log_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "good", lines=["x"])
    bad = make_container(docker, "b" * 64, "bad")
    bad.unlink()
    os.mkfifo(bad)
    pods = _pods_with_a_fifo(tmp_path, "y")
    d = Discoverer(docker, pods, ())
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        scans = [d.scan() for _ in range(3)]
    for scan in scans:
        assert scan.complete
        assert sorted(s.service for s in scan.specs) == ["good", "good"]
    warned = [r.getMessage() for r in caplog.records if "not a regular file" in r.getMessage()]
    assert len(warned) == 2, warned  # once each, not every pass
    assert any(str(bad) in w and "FIFO" in w for w in warned), warned
    assert any("bad-0" in w and "pod log" in w for w in warned), warned


def test_a_fifo_rotated_sibling_is_left_out(tmp_path: Path) -> None:
    live = tmp_path / "x-json.log"
    live.write_bytes(b"")
    (tmp_path / "x-json.log.2").write_bytes(b"")
    os.mkfifo(tmp_path / "x-json.log.1")
    (tmp_path / "x-json.log.3").mkdir()
    assert rotated_siblings(live) == [tmp_path / "x-json.log.2"]


@pytest.mark.integration
def test_once_ships_the_good_sources_beside_fifos_and_ends(
    tmp_path: Path, receiver: Receiver
) -> None:
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "good", lines=["good docker"])
    fifo_log = make_container(docker, "b" * 64, "fifolog")
    fifo_log.unlink()
    os.mkfifo(fifo_log)
    fifo_cfg = make_container(docker, "c" * 64, "fifocfg", lines=["under its id"])
    (fifo_cfg.parent / "config.v2.json").unlink()
    os.mkfifo(fifo_cfg.parent / "config.v2.json")
    rotated = make_container(docker, "d" * 64, "rotated", lines=["live of rotated"])
    os.mkfifo(f"{rotated}.1")
    pods = _pods_with_a_fifo(tmp_path, "good cri")
    args = shipper_args(tmp_path, receiver, "--once", "--retry-timeout", "5", docker=docker)
    args[args.index("--cri-root") + 1] = str(pods)
    done = _run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(receiver.lines()) == [
        "good cri",
        "good docker",
        "live of rotated",
        "under its id",
    ]
    for path in (fifo_log, fifo_cfg.parent / "config.v2.json", f"{rotated}.1", "bad-0"):
        assert any(
            "not a regular file" in line and str(path) in line for line in done.stderr.splitlines()
        ), (path, done.stderr[-3000:])


@pytest.mark.integration
def test_a_fifo_as_the_checkpoint_registry_is_a_start_error(
    tmp_path: Path, receiver: Receiver
) -> None:
    (tmp_path / "state").mkdir()
    os.mkfifo(tmp_path / "state" / "checkpoints.json")
    done = _run(shipper_args(tmp_path, receiver, "--once", "--retry-timeout", "5"), timeout=30)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "checkpoints.json is a FIFO (named pipe), not a regular file: remove it" in last, last
    assert "Traceback" not in done.stderr


def _within(seconds: float, call: Callable[[], object]) -> object:
    """``call()``'s result, failing (not hanging the suite) when it blocks past ``seconds``."""
    import threading

    out: list[object] = []
    worker = threading.Thread(target=lambda: out.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "blocked opening a FIFO"
    return out[0]


def test_a_file_that_became_a_fifo_since_its_checkpoint_is_not_waited_on(tmp_path: Path) -> None:
    """The checks a restart makes of a checkpoint's file (is its inode still there?) and of a
    vanished file's compressed copy opened them with a plain ``open``: a FIFO there since
    (or one named like a ``.gz`` copy) stopped the shipper as at discovery."""
    from shipper.checkpoint import FileState
    from shipper.fingerprint import gzip_identity
    from shipper.resume import _inode_stays

    fifo = tmp_path / "app.log"
    os.mkfifo(fifo)
    st = fifo.stat()
    state = FileState(source="file:app", path=str(fifo), source_id="s", offset=10, acked=9)
    key = f"{st.st_dev}:{st.st_ino}:0123456789abcdef"
    assert _within(5, lambda: _inode_stays(key, state)) == (False, False)
    gz = tmp_path / "app.log.1.gz"
    os.mkfifo(gz)
    assert _within(5, lambda: gzip_identity(gz)) is None
