"""A file rotated away before a stop and deleted while the shipper was down (e2's false page).

The shipper keeps a file renamed by a rotation open for its rotate wait (up to 5 s). Stopped
inside that wait, with the file deleted while it was down (``max-file``), the restart counted
``deleted_unread`` -- the reason operations.md pages on -- although the file had been read to
the size it had at the stop and every line of it was stored. Its checkpoint now says it had
been rotated away (``rotated``): a Docker json-file source counts nothing (dockerd writes
nothing to a file once it rotated it), another source a possible loss (``rotated_then_deleted``,
a ticket: its writer may have appended after the stop). Real losses still page.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from shipper.checkpoint import Registry, parse_entry
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.discover import SourceSpec
from shipper.rotate_wait import ROTATE_WAIT_SECONDS
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import append_docker, drain, fresh_process, spec_for

DOCKER_ID = "d" * 64


def _docker_spec(tmp_path: Path) -> SourceSpec:
    path = tmp_path / f"{DOCKER_ID}-json.log"
    return SourceSpec(key=f"docker:{DOCKER_ID}", path=path, format="docker", service="svc")


def _append(spec: SourceSpec, path: Path, start: int, n: int) -> None:
    if spec.format == "docker":
        append_docker(path, start, n)
    else:
        with open(path, "ab") as f:
            f.write(b"".join(f"line {i}\n".encode() for i in range(start, start + n)))


def _stop_in_rotate_wait(tmp_path: Path, spec: SourceSpec, appended_after: int = 0) -> Path:
    """Ship 5 lines, rotate (rename to ``.1``, 3 lines in the new file, shipped too) and stop
    while the renamed file is in its rotate wait, after noting sizes as the daemon's stop does;
    ``appended_after`` lines are appended to the renamed file (a writer that did not reopen)
    before that, never read. The registry is saved and closed; returns the renamed file."""
    path, rotated = spec.path, Path(f"{spec.path}.1")
    _append(spec, path, 0, 5)
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    assert drain(t) == [f"line {i}" for i in range(5)]
    os.rename(path, rotated)
    _append(spec, path, 5, 3)
    assert drain(t) == [f"line {i}" for i in range(5, 8)]
    assert [c.path for c in t._lingering] == [path]  # in its rotate wait at the stop
    _append(spec, rotated, 100, appended_after)
    t.note_sizes()
    t.close()
    reg.save()
    reg.close()
    return rotated


def _entries(tmp_path: Path) -> dict[str, dict[str, object]]:
    """The saved checkpoint entries, keyed by their registry key."""
    files = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())["files"]
    assert isinstance(files, dict)
    return files


def _rotated_entry(tmp_path: Path, spec: SourceSpec) -> tuple[str, dict[str, object]]:
    """The saved entry of the renamed file (not the new live file's)."""
    live = os.stat(spec.path)
    [(key, entry)] = [
        (k, v)
        for k, v in _entries(tmp_path).items()
        if not k.startswith(f"{live.st_dev}:{live.st_ino}:")
    ]
    return key, entry


def _stop_in_rotate_wait_saved_without(tmp_path: Path, spec: SourceSpec, drop: str) -> Path:
    """:func:`_stop_in_rotate_wait`, then the renamed file's saved entry (flagged ``rotated``)
    rewritten without its field ``drop``: as a shipper saved it before it noted any size
    (``seen``), or one from before the flag (``rotated``). Returns the renamed file."""
    rotated = _stop_in_rotate_wait(tmp_path, spec)
    key, entry = _rotated_entry(tmp_path, spec)
    assert entry["rotated"] is True
    path = tmp_path / "state" / "checkpoints.json"
    doc = json.loads(path.read_bytes())
    del doc["files"][key][drop]
    path.write_text(json.dumps(doc))
    return rotated


def _restart(tmp_path: Path, spec: SourceSpec) -> list[str]:
    """Start again on the saved registry; the losses counted."""
    losses: list[str] = []
    reg = Registry(tmp_path / "state")
    try:
        t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
        assert drain(t) == []  # the live file's lines were all shipped
        t.close()
        assert all(s.path == str(spec.path) for _, s in reg.items())  # the gone one forgotten
    finally:
        reg.close()
    return losses


def test_docker_file_rotated_and_read_to_its_end_is_not_counted(tmp_path: Path) -> None:
    spec = _docker_spec(tmp_path)
    rotated = _stop_in_rotate_wait(tmp_path, spec)
    _, entry = _rotated_entry(tmp_path, spec)
    assert entry["rotated"] is True and entry["seen"] == entry["offset"] == rotated.stat().st_size
    rotated.unlink()  # max-file, while the shipper is down
    assert _restart(tmp_path, spec) == []


def test_plain_file_rotated_and_read_to_its_end_is_a_possible_loss(tmp_path: Path) -> None:
    """A ``--path`` file's writer may append to its renamed file after the stop: a ticket."""
    spec = spec_for(tmp_path / "app.log", "plain")
    rotated = _stop_in_rotate_wait(tmp_path, spec)
    rotated.unlink()
    assert _restart(tmp_path, spec) == ["rotated_then_deleted"]


def test_rotated_file_with_bytes_unread_at_the_stop_still_pages(tmp_path: Path) -> None:
    spec = _docker_spec(tmp_path)
    rotated = _stop_in_rotate_wait(tmp_path, spec, appended_after=2)
    _, entry = _rotated_entry(tmp_path, spec)
    assert entry["rotated"] is True
    assert isinstance(entry["seen"], int) and isinstance(entry["offset"], int)
    assert entry["seen"] > entry["offset"]  # the size noted at the stop covers the renamed file
    rotated.unlink()
    assert _restart(tmp_path, spec) == ["deleted_unread"]


def test_rotated_file_of_unknown_size_at_the_stop_still_pages(tmp_path: Path) -> None:
    spec = _docker_spec(tmp_path)
    rotated = _stop_in_rotate_wait_saved_without(tmp_path, spec, "seen")  # no size noted yet
    rotated.unlink()
    assert _restart(tmp_path, spec) == ["deleted_unread"]


def test_an_older_shippers_entry_without_the_flag_pages_as_before(tmp_path: Path) -> None:
    spec = _docker_spec(tmp_path)
    rotated = _stop_in_rotate_wait_saved_without(tmp_path, spec, "rotated")  # an older shipper
    rotated.unlink()
    assert _restart(tmp_path, spec) == ["deleted_unread"]


def test_live_file_deleted_while_down_still_pages(tmp_path: Path) -> None:
    spec = _docker_spec(tmp_path)
    append_docker(spec.path, 0, 5)
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    assert len(drain(t)) == 5
    t.note_sizes()
    t.close()
    reg.save()
    reg.close()
    [entry] = _entries(tmp_path).values()
    assert "rotated" not in entry and entry["seen"] == entry["offset"]  # read to its end
    spec.path.unlink()  # deleted while down: what its writer wrote after the stop is gone
    append_docker(spec.path, 100, 2)  # a new live file
    lines, losses = _restart_reading(tmp_path, spec)
    assert lines == ["line 100", "line 101"]
    assert losses == ["deleted_unread"]


def test_a_file_back_at_the_live_path_is_live_again(tmp_path: Path) -> None:
    """The kubelet renames a file back when the runtime could not reopen its log: its writer
    writes on to it, and a later deletion while the shipper is down may lose lines (a page)."""
    spec = _docker_spec(tmp_path)
    rotated = _stop_in_rotate_wait(tmp_path, spec)
    spec.path.unlink()  # while down: the new file goes, the renamed one comes back
    os.rename(rotated, spec.path)
    losses: list[str] = []
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == []
    assert losses == ["deleted_unread"]  # the new file, live at the stop, deleted unread
    t.note_sizes()
    t.close()
    reg.save()
    reg.close()
    [entry] = _entries(tmp_path).values()
    assert "rotated" not in entry
    spec.path.unlink()
    append_docker(spec.path, 100, 2)
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == ["line 100", "line 101"]
    t.close()
    reg.close()
    assert losses == ["deleted_unread", "deleted_unread"]


def _restart_reading(tmp_path: Path, spec: SourceSpec) -> tuple[list[str], list[str]]:
    """Start again on the saved registry and read to the end: (the lines read, the losses
    counted)."""
    losses: list[str] = []
    reg = Registry(tmp_path / "state")
    try:
        t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
        lines = drain(t)
        t.close()
    finally:
        reg.close()
    return lines, losses


def test_the_flag_is_saved_only_when_set_and_read_strictly() -> None:
    base = {"source": "docker:x", "path": "/x", "source_id": "h:1:f", "offset": 5, "acked": 5}
    for saved, read in (({}, False), ({"rotated": True}, True), ({"rotated": "yes"}, False)):
        state, problem = parse_entry({**base, **saved})
        assert state is not None and problem == ""
        assert state.rotated is read


async def _run_until(shipper: Shipper, done: Callable[[], bool]) -> None:
    """Run ``shipper`` until ``done()`` holds, then stop it as SIGTERM does."""
    run = asyncio.create_task(shipper.run())
    await until(done)
    shipper.request_stop()
    assert await run == 0


def _lost(shipper: Shipper, reason: str) -> float:
    """Service ``web``'s ``files_lost_total`` for ``reason`` (0 when never counted)."""
    value = shipper.metrics.registry.get_sample_value(
        "logq_shipper_files_lost_total", {"service": "web", "reason": reason}
    )
    return value or 0.0


@pytest.mark.integration
def test_a_stop_within_the_rotate_wait_then_max_file_counts_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """e2's repro (/tmp/e2run/rep1.sh) in-process: lines shipped, Docker's rotation (rename,
    lines in the new file, shipped too), a stop within the renamed file's rotate wait, the
    renamed file deleted while the shipper is down. Every line was stored: nothing counted."""
    docker = tmp_path / "docker"
    path = make_container(docker, DOCKER_ID, "web")
    rotated = Path(f"{path}.1")
    args = ("--poll-interval", "0.05", "--discover-interval", "0.2", "--retry-timeout", "1")
    receiver = Receiver()
    try:
        config = load_config(shipper_args(tmp_path, receiver, *args, docker=docker))
        with open(path, "ab") as f:
            f.write(b"".join(docker_line(f"early {i}", i) for i in range(10)))
        renamed: list[bool] = []

        def rotated_and_shipped(shipper: Shipper) -> bool:
            if len(receiver.lines()) < 10:
                return False
            if not renamed:
                os.rename(path, rotated)
                with open(path, "ab") as f:
                    f.write(b"".join(docker_line(f"late {i}", i) for i in range(3)))
                renamed.append(True)
            return len(receiver.lines()) == 13

        first = Shipper(config)
        asyncio.run(_run_until(first, lambda: rotated_and_shipped(first)))
        rotated.unlink()  # max-file, while the shipper is down
        with open(path, "ab") as f:
            f.write(docker_line("after the restart", 3))
        second = Shipper(load_config(shipper_args(tmp_path, receiver, *args, docker=docker)))
        with caplog.at_level(logging.INFO, logger="logq.shipper"):
            asyncio.run(_run_until(second, lambda: "after the restart" in receiver.lines()))
    finally:
        receiver.close()
    assert _lost(second, "deleted_unread") == 0.0
    assert _lost(second, "rotated_then_deleted") == 0.0
    said = [r for r in caplog.records if str(path) in r.getMessage()]
    assert [r.levelno for r in said if "deleted while the shipper was down" in r.getMessage()] == [
        logging.INFO
    ]


def test_a_rename_seen_before_the_last_lines_were_read_still_pages_after_a_kill(
    tmp_path: Path,
) -> None:
    """The size noted a second before the rename missed dockerd's last lines, seen renamed
    while behind (not read yet); a save carried the flag, then a kill (no stop notes sizes):
    the file gone at the restart had those lines unread. The size is taken at the rename."""
    spec = _docker_spec(tmp_path)
    path, rotated = spec.path, Path(f"{spec.path}.1")
    append_docker(path, 0, 5)
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    assert len(drain(t)) == 5
    t.note_sizes()  # the daemon's tick
    append_docker(path, 5, 3)  # dockerd's last lines in this file, then its rotation
    os.rename(path, rotated)
    append_docker(path, 100, 2)
    t.pin_new_generation()  # the rename seen while behind: those 3 lines not read yet
    reg.save()  # the next write, then the process is killed
    reg.close()
    _, entry = _rotated_entry(tmp_path, spec)
    assert entry["rotated"] is True and entry["seen"] == rotated.stat().st_size
    rotated.unlink()
    lines, losses = _restart_reading(tmp_path, spec)
    assert lines == ["line 100", "line 101"]
    assert losses == ["deleted_unread"]


def test_a_rotated_file_let_go_unacknowledged_still_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program's last lines, appended to its renamed file after the daemon's last tick, read
    at the end of the rotate wait and let go with their batch never acknowledged (the stop's
    wait for acks ran out): the size at the release is the one kept, not the tick's."""
    clock = fresh_process(monkeypatch)
    spec = spec_for(tmp_path / "app.log", "plain")
    path, rotated = spec.path, Path(f"{spec.path}.1")
    _append(spec, path, 0, 5)
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    assert len(drain(t)) == 5
    os.rename(path, rotated)  # logrotate's create mode
    _append(spec, path, 100, 1)
    assert drain(t) == ["line 100"]
    assert [c.path for c in t._lingering] == [path]
    t.note_sizes()  # the daemon's tick
    _append(spec, rotated, 5, 3)  # the program had not reopened its log yet
    clock[0] += ROTATE_WAIT_SECONDS
    assert drain(t, ack=False) == ["line 5", "line 6", "line 7"]
    assert t._lingering == []  # let go, its batch in flight
    t.note_sizes()  # the stop
    t.close()
    reg.save()
    reg.close()
    _, entry = _rotated_entry(tmp_path, spec)
    assert entry["rotated"] is True and entry["seen"] == rotated.stat().st_size
    rotated.unlink()
    assert _restart(tmp_path, spec) == ["deleted_unread"]


def test_a_compressed_copy_longer_than_read_is_read_from_it(tmp_path: Path) -> None:
    """Lines appended to the renamed file after the stop, then the file compressed (logrotate
    ``compress``, the kubelet): its copy holds them, and they are read from it, from the
    checkpoint on; nothing is counted. Before, the copy was read only for a split line open
    at its end, and these lines were counted lost for sure (a page) with the copy right
    there."""
    spec = spec_for(tmp_path / "app.log", "plain")
    rotated = _stop_in_rotate_wait(tmp_path, spec)
    _append(spec, rotated, 100, 2)  # after the stop
    Path(f"{rotated}.gz").write_bytes(gzip.compress(rotated.read_bytes()))
    rotated.unlink()
    losses: list[str] = []
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == ["line 100", "line 101"]
    assert losses == []
    t.close()
    reg.close()


@pytest.mark.parametrize("fmt", ["docker", "plain"])
def test_a_file_found_under_its_rotated_name_at_a_start_is_flagged(
    tmp_path: Path, fmt: str
) -> None:
    """The live file at one stop, rotated while the shipper was down: the next start finds it
    only under its rotated name. Stopped again within its rotate wait (or while it held a
    split line's first parts) and deleted while down, it paged ``deleted_unread`` though it
    had been read to its end: nothing had flagged it, as the running shipper never saw the
    rename."""
    spec = _docker_spec(tmp_path) if fmt == "docker" else spec_for(tmp_path / "app.log", "plain")
    path, rotated = spec.path, Path(f"{spec.path}.1")
    _append(spec, path, 0, 5)
    for expected in ([f"line {i}" for i in range(5)], [f"line {i}" for i in range(5, 8)]):
        reg = Registry(tmp_path / "state")
        t = Tailer(spec, reg, "h", 65536)
        assert drain(t) == expected
        t.note_sizes()
        t.close()
        reg.save()
        reg.close()
        if not rotated.exists():  # the first stop: rotated while the shipper is down
            os.rename(path, rotated)
            _append(spec, path, 5, 3)
    _, entry = _rotated_entry(tmp_path, spec)
    size = rotated.stat().st_size
    rotated.unlink()
    assert _restart(tmp_path, spec) == ([] if fmt == "docker" else ["rotated_then_deleted"])
    assert entry.get("rotated") is True and entry["seen"] == entry["offset"] == size
