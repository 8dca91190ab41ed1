"""The daemon in follow mode as a real process: rotation under load, kill -9, SIGTERM,
new containers, aggregator down then up, wrong key, metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver, free_port
from tests.shipper.shipping import empty_root

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


class ShipperProc:
    """The daemon as a child process; its log goes to a file (a pipe nobody reads would fill
    up and stall the daemon)."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.log_path = tmp / f"shipper-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop/kill9)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shipper.daemon",
                "--state-dir",
                str(tmp / "state"),
                "--cri-root",
                str(empty_root(tmp, "no-pods")),
                "--poll-interval",
                "0.05",
                "--discover-interval",
                "0.2",
                "--log-level",
                "debug",
                *args,
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            text=True,
        )

    def stop(self, timeout: float = 20) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
        return self.proc.returncode, self.log_path.read_text()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-n:])

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


def wait_until(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def docker_rotating_writer(path: Path, total: int, rotate_every: int, max_file: int = 5) -> None:
    """Write ``total`` lines, rotating like Docker's json-file driver every ``rotate_every``."""
    i = 0
    while i < total:
        with open(path, "ab") as f:
            for i in range(i, min(i + rotate_every, total)):  # noqa: B020
                f.write(docker_line(f"line {i}", i))
                if i % 25 == 24:
                    f.flush()
                    time.sleep(0.002)
            i += 1
        if i % rotate_every == 0 and i < total:
            for n in range(max_file - 1, 0, -1):
                older = Path(f"{path}.{n}")
                if older.exists():
                    os.replace(older, f"{path}.{n + 1}")
            os.replace(path, f"{path}.1")


def test_rotation_under_load_exact_lines_and_order(tmp_path: Path, receiver: Receiver) -> None:
    rotations = int(os.environ.get("LOGQ_TEST_ROTATIONS", "100"))
    per_file = 300
    root = tmp_path / "containers"
    log = make_container(root, "a" * 64, "rot")
    sh = ShipperProc(
        tmp_path,
        "--aggregator",
        receiver.address,
        "--docker-root",
        str(root),
        "--batch-lines",
        "100",
    )
    try:
        total = rotations * per_file + 17
        with open(log, "ab") as f:
            f.write(docker_line("started", 0))
        receiver.wait_for(1)  # the shipper follows the file: from here on nothing may be lost
        writer = threading.Thread(target=docker_rotating_writer, args=(log, total, per_file, 20))
        writer.start()
        writer.join()
        try:
            receiver.wait_for(total + 1, timeout=180)  # a loaded machine: slow is not lost
        except AssertionError as exc:
            sh.proc.send_signal(signal.SIGTERM)
            got = set(receiver.lines())
            missing = [i for i in range(total) if f"line {i}" not in got]
            raise AssertionError(
                f"{exc}; {len(missing)} lines missing, first {missing[:5]}; shipper log tail:\n"
                f"{sh.tail()}"
            ) from None
        time.sleep(0.3)
    finally:
        rc, err = sh.stop()
    assert rc == 0, err
    assert receiver.lines() == ["started"] + [f"line {i}" for i in range(total)]
    assert receiver.duplicates == 0
    assert err.count("log file rotated") >= rotations // 2


def test_kill9_restart_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    root = tmp_path / "containers"
    log = make_container(root, "b" * 64, "k9")
    n1, n2 = 20000, 5000
    with open(log, "ab") as f:
        for i in range(n1):
            f.write(docker_line(f"line {i}", i))
    sh = ShipperProc(
        tmp_path,
        "--aggregator",
        receiver.address,
        "--docker-root",
        str(root),
        "--batch-lines",
        "500",
    )
    wait_until(lambda: len(receiver.records) >= 3000, what="first batches")
    sh.kill9()
    got_before = len(receiver.records)
    with open(log, "ab") as f:
        for i in range(n1, n1 + n2):
            f.write(docker_line(f"line {i}", i))
    sh2 = ShipperProc(
        tmp_path,
        "--aggregator",
        receiver.address,
        "--docker-root",
        str(root),
        "--batch-lines",
        "500",
    )
    try:
        receiver.wait_for(n1 + n2, timeout=60)
        time.sleep(0.3)
    finally:
        rc, err = sh2.stop()
    assert rc == 0, err
    assert got_before < n1 + n2
    assert receiver.lines() == [f"line {i}" for i in range(n1 + n2)]
    # At most the batch in flight at the kill was sent again (and dropped as a duplicate).
    assert receiver.duplicates <= 500


def test_new_container_picked_up_and_sigterm_saves(tmp_path: Path, receiver: Receiver) -> None:
    root = tmp_path / "containers"
    root.mkdir()
    sh = ShipperProc(tmp_path, "--aggregator", receiver.address, "--docker-root", str(root))
    try:
        time.sleep(0.5)
        make_container(
            root, "c" * 64, "late", labels={"logq.service": "late"}, lines=["hello", "world"]
        )
        receiver.wait_for(2, timeout=60)
    finally:
        rc, err = sh.stop()
    assert rc == 0, err
    assert receiver.lines() == ["hello", "world"]
    assert (tmp_path / "state" / "checkpoints.json").exists()
    # The stop's last line says it ended saved (a log that stopped at "stop requested" could
    # not be told from a shipper killed during its stop).
    last = sh.log_path.read_text().strip().splitlines()[-1]
    assert "stopped: the checkpoints of every acknowledged line are in " in last, last
    assert str(tmp_path / "state") in last
    # Restart: nothing is sent twice.
    sh = ShipperProc(tmp_path, "--aggregator", receiver.address, "--docker-root", str(root))
    # Stopped once it follows the file again (a SIGTERM before its handlers are installed, as a
    # fixed sleep allowed on a loaded machine, kills it with -15 instead).
    wait_until(lambda: "new source" in sh.log_path.read_text(), 60, "the source followed again")
    rc, err = sh.stop()
    assert rc == 0, err
    assert receiver.messages == 1


def test_inotify_finds_a_new_container_long_before_the_poll_interval(
    tmp_path: Path, receiver: Receiver
) -> None:
    root = tmp_path / "containers"
    root.mkdir()
    sh = ShipperProc(
        tmp_path,
        *("--aggregator", receiver.address, "--docker-root", str(root)),
        *("--discover-interval", "120"),  # polling alone would take two minutes
    )
    try:
        time.sleep(0.5)
        make_container(root, "d" * 64, "fresh", labels={"logq.service": "fresh"}, lines=["hi"])
        # Polling alone would find it after 120 s: within 60 s, only an inotify event did.
        receiver.wait_for(1, timeout=60)
    finally:
        rc, err = sh.stop()
    assert rc == 0, err
    assert receiver.lines() == ["hi"]


def test_aggregator_down_then_up(tmp_path: Path) -> None:
    root = tmp_path / "containers"
    make_container(root, "d" * 64, "web", lines=[f"l{i}" for i in range(1000)])
    port = free_port()
    log_path = tmp_path / "shipper.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shipper.daemon",
                "--aggregator",
                f"127.0.0.1:{port}",
                "--docker-root",
                str(root),
                "--state-dir",
                str(tmp_path / "state"),
                "--cri-root",
                str(empty_root(tmp_path, "x")),
                "--once",
                "--retry-timeout",
                "20",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    r: Receiver | None = None
    try:
        # The aggregator comes up once the shipper has found it down (a fixed sleep let a slow
        # start connect to the receiver first on a loaded machine).
        wait_until(lambda: "connection refused" in log_path.read_text(), 60, "a refused connection")
        r = Receiver(port=port)
        assert proc.wait(timeout=60) == 0, log_path.read_text()
        assert r.lines() == [f"l{i}" for i in range(1000)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if r is not None:
            r.close()


def test_wrong_shared_key_exits_with_clear_error(tmp_path: Path) -> None:
    r = Receiver(shared_key="right")
    try:
        root = tmp_path / "containers"
        make_container(root, "e" * 64, "web", lines=["x"])
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "shipper.daemon",
                "--aggregator",
                r.address,
                "--docker-root",
                str(root),
                "--state-dir",
                str(tmp_path / "state"),
                "--shared-key",
                "wrong",
                "--once",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 1
        last = p.stderr.strip().splitlines()[-1]
        assert "rejected the handshake" in last and "--shared-key" in last
        assert r.records == []
    finally:
        r.close()


def test_metrics_endpoint(tmp_path: Path, receiver: Receiver) -> None:
    root = tmp_path / "containers"
    make_container(
        root, "f" * 64, "m", labels={"logq.service": "metered"}, lines=["a", "b", "c" * 5000]
    )
    port = free_port()
    sh = ShipperProc(
        tmp_path,
        "--aggregator",
        receiver.address,
        "--docker-root",
        str(root),
        "--metrics-listen",
        f"127.0.0.1:{port}",
        "--max-line-bytes",
        "1024",
    )
    try:
        receiver.wait_for(3)
        time.sleep(0.5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = body.decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as health:
            assert (health.status, health.read()) == (200, b"ok\n")
    finally:
        rc, err = sh.stop()
    assert rc == 0, err
    assert 'logq_shipper_lines_read_total{service="metered"} 3.0' in text
    assert 'logq_shipper_lines_acked_total{service="metered"} 3.0' in text
    assert 'logq_shipper_truncated_lines_total{service="metered"} 1.0' in text
    assert 'logq_shipper_bytes_behind{path="' in text
    # Series that have not counted anything yet exist at 0, so increase() alerts see their first.
    from shipper.losses import LOSS_REASONS

    assert "truncated_in_place" in LOSS_REASONS
    for reason in LOSS_REASONS:
        assert f'logq_shipper_files_lost_total{{reason="{reason}",service="metered"}} 0.0' in text
    assert 'logq_shipper_invalid_utf8_lines_total{service="metered"} 0.0' in text
    assert f'logq_shipper_retries_total{{endpoint="{receiver.address}"}} 0.0' in text
    assert "logq_shipper_sources_waiting_for_fd 0.0" in text


def test_removed_container_is_drained_then_released(tmp_path: Path, receiver: Receiver) -> None:
    import shutil

    root = tmp_path / "containers"
    log = make_container(root, "9" * 64, "gone", lines=["before"])
    sh = ShipperProc(tmp_path, "--aggregator", receiver.address, "--docker-root", str(root))
    try:
        receiver.wait_for(1)
        # The container writes its last lines and is removed at once.
        with open(log, "ab") as f:
            for i in range(200):
                f.write(docker_line(f"last {i}", i))
        shutil.rmtree(root / ("9" * 64))
        receiver.wait_for(201)
        time.sleep(0.5)
    finally:
        rc, err = sh.stop()
    assert rc == 0, err
    assert receiver.lines() == ["before"] + [f"last {i}" for i in range(200)]
    assert "source gone" in err or "log file deleted" in err


def test_sigterm_with_aggregator_down_exits_without_advancing(tmp_path: Path) -> None:
    import json

    root = tmp_path / "containers"
    make_container(root, "8" * 64, "web", lines=["never acked"])
    port = free_port()
    sh = ShipperProc(
        tmp_path,
        "--aggregator",
        f"127.0.0.1:{port}",
        "--docker-root",
        str(root),
        "--retry-timeout",
        "1",
    )
    wait_until(lambda: "new source" in sh.log_path.read_text(), 60, "the source followed")
    # --retry-timeout 1 bounds the stop; the default (30 s) would outlast this 20 s wait.
    rc, err = sh.stop(timeout=20)
    assert rc == 0, err
    assert "unacknowledged batches" in err
    doc = json.loads((tmp_path / "state" / "checkpoints.json").read_text())
    assert [f["offset"] for f in doc["files"].values()] == [0]
    # The line is shipped by the next run.
    r = Receiver(port=port)
    try:
        sh = ShipperProc(tmp_path, "--aggregator", r.address, "--docker-root", str(root))
        r.wait_for(1)
        rc, err = sh.stop()
        assert rc == 0, err
        assert r.lines() == ["never acked"]
    finally:
        r.close()


def test_reading_stops_when_nothing_is_acked(tmp_path: Path) -> None:
    """Memory is bounded: with no acks, only the in-flight window is read, the file waits."""
    r = Receiver(ack=False)
    try:
        root = tmp_path / "containers"
        lines = [f"line {i} " + "x" * 200 for i in range(50_000)]
        make_container(root, "7" * 64, "web", labels={"logq.service": "slow"}, lines=lines)
        port = free_port()
        sh = ShipperProc(
            tmp_path,
            "--aggregator",
            r.address,
            "--docker-root",
            str(root),
            "--metrics-listen",
            f"127.0.0.1:{port}",
            "--ack-timeout",
            "60",
            "--retry-timeout",
            "1",
            "--max-inflight-bytes",
            str(1 << 20),
            "--batch-bytes",
            str(256 << 10),
        )
        try:
            wait_until(lambda: r.messages >= 1, what="the first batch")
            time.sleep(1.5)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        finally:
            sh.stop()
        read = next(
            float(line.split()[-1])
            for line in text.decode().splitlines()
            if line.startswith('logq_shipper_lines_read_total{service="slow"}')
        )
        assert 0 < read < 10_000
        assert len(r.records) == read  # everything read was sent, nothing more was read
    finally:
        r.close()


def test_a_root_given_that_appears_later_is_read_once_it_does(tmp_path: Path) -> None:
    """A daemon started before dockerd made its folder (a host booting) is told, and ships the
    folder's logs once it exists; with ``--once`` the same missing root is an error (exit 2)."""
    r = Receiver()
    try:
        root = tmp_path / "docker" / "containers"  # not there yet
        sh = ShipperProc(tmp_path, "--aggregator", r.address, "--docker-root", str(root))
        wait_until(lambda: "does not exist (yet)" in sh.log_path.read_text(), 30, "the warning")
        make_container(root, "8" * 64, "late", lines=["first line"])
        wait_until(lambda: r.lines() == ["first line"], 60, "the line of the new root")
        rc, err = sh.stop()
        assert rc == 0, err
    finally:
        r.close()


def test_sighup_is_a_warning_not_an_exit(tmp_path: Path) -> None:
    """SIGHUP (``systemctl reload``, a closed terminal) killed the shipper without its final
    checkpoint save: every line since the last save was read and sent again. It now says there
    is no reload, as Fluent Bit does without hot reload, and goes on shipping."""
    r = Receiver()
    try:
        root = tmp_path / "containers"
        log_file = make_container(root, "7" * 64, "web", lines=["before"])
        sh = ShipperProc(tmp_path, "--aggregator", r.address, "--docker-root", str(root))
        wait_until(lambda: r.lines() == ["before"], 60, "the first line")
        sh.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP received" in sh.log_path.read_text(), 30, "the warning")
        with open(log_file, "ab") as f:
            f.write(docker_line("after", 1))
        wait_until(lambda: r.lines() == ["before", "after"], 60, "a line after the SIGHUP")
        assert sh.proc.poll() is None
        rc, err = sh.stop()
        assert rc == 0, err
        assert "does not reload its configuration" in err
    finally:
        r.close()


def test_sigterm_waits_for_the_in_flight_ack(tmp_path: Path) -> None:
    r = Receiver(ack_delay=1.5)
    try:
        root = tmp_path / "containers"
        make_container(root, "6" * 64, "web", lines=[f"l{i}" for i in range(10)])
        sh = ShipperProc(tmp_path, "--aggregator", r.address, "--docker-root", str(root))
        wait_until(lambda: r.messages >= 1, what="the batch to be sent")
        rc, err = sh.stop()  # while its ack is still 1.5 s away
        assert rc == 0, err
        # The ack arrived before the exit and was checkpointed: a restart sends nothing.
        sh = ShipperProc(tmp_path, "--aggregator", r.address, "--docker-root", str(root))
        # Stopped once it follows the file (a SIGTERM before its handlers are installed kills
        # it with -15), and has had time to send anything it would send.
        wait_until(lambda: "new source" in sh.log_path.read_text(), 60, "the source followed")
        time.sleep(1.0)
        rc, err = sh.stop()
        assert rc == 0, err
        assert r.messages == 1 and r.lines() == [f"l{i}" for i in range(10)]
    finally:
        r.close()
