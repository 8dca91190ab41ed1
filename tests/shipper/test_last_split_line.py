"""A container's last line left unfinished by the runtime, and split lines timed per stream.

A container that crashes writes its last message without a newline more often than not: Docker
stores it as a partial json-file entry (no ``\\n`` in ``log``), the CRI as a ``P`` part. When the
container or pod is then removed, or a ``--once`` run reaches its end, there is no next part to
wait for: the parts are shipped as they are (Fluent Bit flushes its pending Docker-mode lines
when a file's ingestion stops), once, and a next run does not send them again. While the
source lives, the wait for a next part is timed per stream from when the part was read, so a
container busy on stderr does not hold a stdout prompt forever.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line, docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import aggregator_keeps, drain, drain_sent, set_clock, spec_for

CID = "9" * 64
PANIC = "panic: runtime error: index out of range"


def _crashed_container(tmp_path: Path, fmt: str) -> tuple[Path, Path, Path]:
    """A container whose last line (stderr) has no newline: (Docker root or CRI root, the
    folder a removal deletes, the log file)."""
    if fmt == "docker":
        root = tmp_path / "docker"
        log = make_container(root, CID, "crash", labels={"logq.service": "crash"})
        log.write_bytes(docker_line("starting", 0) + docker_line(PANIC, 1, "stderr", nl=False))
        return root, log.parent, log
    root = tmp_path / "pods"
    pod = root / "shop_crash-5d8f7c9b6d-x2x7k_0f1e-22"
    (pod / "app").mkdir(parents=True)
    log = pod / "app" / "0.log"
    log.write_bytes(cri_line("starting", 0) + cri_line(PANIC, 1, "stderr", tag="P"))
    return root, pod, log


@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_a_removed_container_ships_its_unfinished_last_line(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The container or pod folder is removed before the 5 s wait for a next part is over
    (here it never would be): the line goes out when the source ends, not never."""
    import shipper.split_lines as split_lines

    monkeypatch.setattr(split_lines, "SPLIT_FLUSH_SECONDS", 3600.0)
    root, folder, _ = _crashed_container(tmp_path, fmt)
    roots = {"docker": root} if fmt == "docker" else {"cri": root}
    fast = ("--poll-interval", "0.05", "--discover-interval", "0.2")
    cfg = load_config(shipper_args(tmp_path, receiver, *fast, **roots))

    async def run() -> None:
        shipper = Shipper(cfg)
        task = asyncio.create_task(shipper.run())
        await until(lambda: receiver.lines() == ["starting"])
        shutil.rmtree(folder)  # docker rm / the kubelet removing the pod
        await until(lambda: len(receiver.lines()) == 2)
        await until(lambda: not shipper.runners)  # the source ended
        shipper.request_stop()
        assert await task == 0

    asyncio.run(run())
    assert [(r["log"], r["stream"]) for _, _, r in receiver.records] == [
        ("starting", "stdout"),
        (PANIC, "stderr"),
    ]
    assert receiver.duplicates == 0
    saved = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
    assert saved["files"] == {}  # the removed file's checkpoint went with its ack


def _once(tmp_path: Path, receiver: Receiver, docker: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "shipper.daemon",
            *shipper_args(tmp_path, receiver, "--once", docker=docker),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.integration
def test_once_ships_an_unfinished_last_line_once(tmp_path: Path, receiver: Receiver) -> None:
    """``logq-shipper --once`` ships a trailing partial entry at the end of its run (it used to
    leave it to a next run, which left it again, for ever); the next run sends nothing again,
    and a next part written later is a line of its own."""
    docker, _, log = _crashed_container(tmp_path, "docker")
    res = _once(tmp_path, receiver, docker)
    assert res.returncode == 0, res.stderr
    assert receiver.lines() == ["starting", PANIC]
    assert "the --once run ends here" in res.stderr  # the INFO line that says what happened

    res = _once(tmp_path, receiver, docker)
    assert res.returncode == 0, res.stderr
    assert receiver.lines() == ["starting", PANIC]
    assert receiver.duplicates == 0  # not even sent again

    with open(log, "ab") as f:
        f.write(docker_line(" (continued)", 2, "stderr") + docker_line("after", 3))
    res = _once(tmp_path, receiver, docker)
    assert res.returncode == 0, res.stderr
    assert receiver.lines() == ["starting", PANIC, " (continued)", "after"]
    assert receiver.duplicates == 0


def test_a_busy_stream_does_not_hold_the_other_streams_unfinished_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stdout prompt without a newline while stderr gets a line every few seconds: it goes
    out once SPLIT_FLUSH_SECONDS passed since it was read, though the file never went quiet
    that long (it was held for as long as the file got lines); a stderr part read just before
    is not cut with it."""
    import shipper.split_lines as split_lines

    clock = [1000.0]
    set_clock(monkeypatch, clock)
    wait = split_lines.SPLIT_FLUSH_SECONDS
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("Enter choice: ", 0, nl=False))
    t = Tailer(spec_for(path), Registry(tmp_path / "state"), "h", 65536)
    assert drain(t) == []
    for i in (1, 2):
        clock[0] += wait * 0.6
        with open(path, "ab") as f:
            f.write(docker_line(f"tick {i}", i, "stderr"))
        if i == 2:
            with open(path, "ab") as f:
                f.write(docker_line("E-part ", 3, "stderr", nl=False))
        expected = ["tick 1"] if i == 1 else ["tick 2", "Enter choice: "]
        assert drain(t) == expected
    with open(path, "ab") as f:
        f.write(docker_line("E-rest", 4, "stderr"))
    assert drain(t) == ["E-part E-rest"]


def test_a_restart_cuts_again_only_the_stream_that_was_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stdout line was shipped unfinished while a stderr line was still open; the ack was
    lost, then a restart reads both again: stdout is cut where it was, as the same record under
    the same offset (the aggregator drops it), and the stderr line is joined whole, as the first
    run shipped it."""
    import shipper.split_lines as split_lines

    clock = [1000.0]
    set_clock(monkeypatch, clock)
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    path.write_bytes(docker_line("before", 0) + docker_line("O-part ", 1, nl=False))
    reg = Registry(state)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == ["before"]
    clock[0] += split_lines.SPLIT_FLUSH_SECONDS * 0.6
    with open(path, "ab") as f:
        f.write(docker_line("E-part ", 2, "stderr", nl=False))
    assert drain(t) == []
    clock[0] += split_lines.SPLIT_FLUSH_SECONDS * 0.6
    first = drain_sent(t, ack=False)
    assert [log for log, _, _ in first] == ["O-part "]
    with open(path, "ab") as f:
        f.write(docker_line("E-rest", 3, "stderr") + docker_line("O-rest", 4))
    first += drain_sent(t, ack=False)
    assert [log for log, _, _ in first] == ["O-part ", "E-part E-rest", "O-rest"]
    t.close()
    reg.save()  # the cut was saved with the flush; nothing after "before" was acked
    reg.close()

    reg = Registry(state)
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain_sent(t) == first
    reg.close()


def test_once_does_not_cut_a_split_line_whose_next_part_is_already_in_the_file(
    tmp_path: Path,
) -> None:
    """--once takes its bound when it starts; a 16 KiB line whose parts straddle the bound
    (the runtime was writing them just then) is cut at the end of the run although its next
    part is already in the file, and the next run ships the rest as a line of its own: one
    log line stored as two records (R1). It is left whole to the next run."""
    path = tmp_path / "c-json.log"
    state = tmp_path / "state"
    path.write_bytes(docker_line("before", 0) + docker_line("A" * 16384, 1, nl=False))
    reg = Registry(state)
    t = Tailer(spec_for(path), reg, "h", 65536, once=True)
    t.read()  # the run starts: its bound is the size now
    with open(path, "ab") as f:
        f.write(docker_line("tail", 2))  # the line's last part, written a moment later
    first = drain(t)
    t.close()
    reg.save()
    reg.close()
    reg = Registry(state)
    t = Tailer(spec_for(path), reg, "h", 65536, once=True)
    second = drain(t)
    reg.close()
    shipped = [line for line in [*first, *second] if line.startswith(("A", "tail"))]
    assert shipped == ["A" * 16384 + "tail"], [s[:12] for s in shipped]


def test_two_streams_flushed_one_after_the_other_get_distinct_offsets(
    tmp_path: Path, monkeypatch
) -> None:
    """The split-line wait is timed per stream, so one stream's line may be flushed and
    another's later with nothing read in between: both got offset read_pos + 1, and the
    aggregator (which keeps a record only when its offset is above the source's highest)
    dropped the second (R1).
    E.g. a container that writes a prompt on stdout, then a crash message on stderr, both
    without a newline, and hangs or dies without being removed: the crash message is lost."""
    import shipper.split_lines as split_lines

    clock = [1000.0]
    set_clock(monkeypatch, clock)
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("started", 0))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    sent: list[tuple[str, int, str]] = []

    def ship_all() -> None:
        while (chunk := t.read()) is not None or t.poll():
            if chunk is None:
                continue
            sid = chunk.cursor.source_id
            sent.extend(
                (log, off, sid)
                for log, off in zip(chunk.lines.logs, chunk.lines.offsets, strict=False)
            )
            chunk.cursor.outstanding += 1
            t.commit(chunk.cursor, chunk.resume, chunk.lines.offsets[-1] if len(chunk.lines) else 0)

    ship_all()
    with open(path, "ab") as f:
        f.write(docker_line("password: ", 1, "stdout", nl=False))
    ship_all()
    clock[0] += 2.0
    with open(path, "ab") as f:
        f.write(docker_line("fatal: out of memory", 2, "stderr", nl=False))
    ship_all()
    clock[0] += split_lines.SPLIT_FLUSH_SECONDS - 1.5  # stdout overdue (5.5 s), stderr not (3.5 s)
    ship_all()
    clock[0] += 2.0  # now stderr too (5.5 s); nothing was written in between
    ship_all()
    reg.close()
    kept = aggregator_keeps(sent)
    assert [log for log, _, _ in sent] == ["started", "password: ", "fatal: out of memory"]
    assert kept == ["started", "password: ", "fatal: out of memory"], sent
