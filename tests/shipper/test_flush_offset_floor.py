"""A one-byte damaged line right after a split line flushed as it is keeps an offset of its own.

A split line flushed at its timeout gets the offset one past the read position (the
aggregator keeps a record only when its offset is above the source's highest). The next line
in the file ends at least one byte further on: a one-byte damaged line (``"\\n"``, shipped raw
on the malformed path) ended exactly there, got the flushed line's offset, and the aggregator
dropped it as a resend -- lost without a word. Offsets now stay strictly increasing per file
(:meth:`shipper.cursor.Cursor.number`), and a restart right after such a line numbers the
next ones as the run before would have, from the checkpoint's :attr:`FileState.floor`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from shipper import wire
from shipper.checkpoint import MAX_FLOOR_LEAD, MAX_OFFSET, Registry, parse_entry
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.split_lines import SPLIT_FLUSH_SECONDS
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import (
    aggregator_keeps,
    commit,
    drain_sent,
    fresh_process,
    spec_for,
)


@pytest.mark.parametrize("multiline", [(), ("--multiline", "*=python")], ids=["plain", "multiline"])
def test_a_one_byte_line_after_a_flushed_split_line_is_stored_also_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, multiline: tuple[str, ...]
) -> None:
    import shipper.multiline as multiline_mod
    import shipper.split_lines as split_lines

    monkeypatch.setattr(split_lines, "SPLIT_FLUSH_SECONDS", 0.3)
    monkeypatch.setattr(multiline_mod, "MULTILINE_FLUSH_SECONDS", 0.3)
    docker = tmp_path / "docker"
    log = make_container(docker, "c" * 64, "app", lines=["before"])
    with open(log, "ab") as f:
        f.write(docker_line("X-part ", 1, nl=False))  # its next part never comes
    receiver = Receiver()
    extra = ("--poll-interval", "0.05", "--retry-timeout", "5", *multiline)

    async def run(appended: bytes, want: list[str]) -> None:
        shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *extra, docker=docker)))
        task = asyncio.create_task(shipper.run())
        await until(lambda: receiver.lines()[:2] == ["before", "X-part "])
        with open(log, "ab") as f:
            f.write(appended)
        await until(lambda: receiver.lines() == want)
        shipper.request_stop()
        assert await task == 0

    try:
        # "\n" ends one byte past the flush point: the flushed line's offset until now.
        asyncio.run(run(b"\n", ["before", "X-part ", ""]))
        (entry,) = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())[
            "files"
        ].values()
        # The restart resumes just past it: the next "\n" ends where the first one's offset is.
        asyncio.run(run(b"\n" + docker_line("after", 2), ["before", "X-part ", "", "", "after"]))
    finally:
        receiver.close()
    offsets = [(r[wire.KEY_SOURCE_ID], r[wire.KEY_OFFSET]) for _, _, r in receiver.records]
    assert offsets == sorted(set(offsets)), offsets  # distinct and increasing
    assert receiver.duplicates == 0
    state, problem = parse_entry(entry)
    assert state is not None and not problem
    assert state.floor > state.offset  # what the restart numbered the next line from


def test_an_older_checkpoint_without_a_floor_loads_as_before() -> None:
    entry = {"source": "docker:c", "path": "/x", "source_id": "h:1:f", "offset": 10, "acked": 10}
    state, problem = parse_entry(entry)
    assert state is not None and not problem
    assert state.floor == 0
    state, problem = parse_entry({**entry, "floor": "x"})
    assert state is not None and state.floor == 0 and "floor" in problem


def test_a_floor_far_above_its_offset_is_dropped_as_corrupt() -> None:
    """Legitimately a floor leads its offset by the few records flushed at one place; one far
    ahead (a damaged file) would number every later line of the file from it -- offsets far
    from the bytes, up to past the aggregator's 64-bit column, one Python step per line."""
    entry = {"source": "docker:c", "path": "/x", "source_id": "h:1:f", "offset": 10, "acked": 10}
    state, problem = parse_entry({**entry, "floor": 12})
    assert state is not None and state.floor == 12 and not problem
    for far in (10 + MAX_FLOOR_LEAD + 1, 2**40, MAX_OFFSET):
        state, problem = parse_entry({**entry, "floor": far})
        assert state is not None and state.floor == 0 and "floor" in problem, far
        assert (state.offset, state.acked) == (10, 10)  # the rest of the entry stands


def test_a_two_byte_line_after_two_streams_flushed_keeps_its_own_offset_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both streams' lines flushed at one position take the two offsets past it; ``"x\\n"``
    ended at the second. Read again after a crash (its batch unacknowledged, the checkpoint
    at the flush position), it and the line after it get the offsets they had: the
    aggregator recognises them, and stores each record once."""
    clock = fresh_process(monkeypatch)
    spec = spec_for(tmp_path / "c-json.log")
    spec.path.write_bytes(
        docker_line("a", 0)
        + docker_line("out ", 1, nl=False)
        + docker_line("err ", 1, stream="stderr", nl=False)
    )
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    sent = drain_sent(t)
    clock[0] += SPLIT_FLUSH_SECONDS + 1
    sent += drain_sent(t)  # both flushed, acknowledged
    with open(spec.path, "ab") as f:
        f.write(b"x\n\n")
    resent = drain_sent(t, ack=False)  # sent, never acknowledged: then a kill
    sent += resent
    reg.save()
    t.close()
    reg.close()
    assert [log for log, _, _ in sent] == ["a", "out ", "err ", "x", ""]
    offsets = [off for _, off, _ in sent]
    assert offsets == sorted(set(offsets)), offsets
    reg = Registry(tmp_path / "state")
    try:
        t = Tailer(spec, reg, "h", 65536)
        again = drain_sent(t)
        t.close()
    finally:
        reg.close()
    assert again == resent  # the same records under the same offsets
    assert aggregator_keeps(sent + again) == ["a", "out ", "err ", "x", ""]


def test_a_checkpoint_sent_back_to_where_its_file_was_opened_keeps_that_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file opened at a restart with a floor (a one-byte line right after a flushed split
    line), its checkpoint advanced by an ack, then sent back to where it was opened by a file
    before it that is held (:meth:`~shipper.tailer.Tailer._checkpoint_offset`): the floor
    saved there must still be the one it was opened with. Folded away at the first ack, it
    came back as 0: a kill and restart numbered the tiny lines after it below the offsets
    they had, and one never acknowledged fell at or below ``acked`` and was never sent."""
    clock = fresh_process(monkeypatch)
    spec = spec_for(tmp_path / "c-json.log")
    spec.path.write_bytes(docker_line("a", 0) + docker_line("out ", 1, nl=False))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    drain_sent(t)
    clock[0] += SPLIT_FLUSH_SECONDS + 1
    drain_sent(t)  # "out " flushed at the read position, one past it
    with open(spec.path, "ab") as f:
        f.write(b"\n")
    drain_sent(t)  # numbered above the flushed line: the checkpoint gets a floor
    reg.save()
    t.close()
    reg.close()

    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536)
    with open(spec.path, "ab") as f:
        f.write(b"\n\n\n")
    chunks = [t.read(max_lines=1) for _ in range(3)]
    assert all(c is not None and c.lines.logs == [""] for c in chunks)
    cur = chunks[0].cursor
    opened_at, floor = cur.opened_at, cur.state.floor
    assert floor > opened_at
    commit(t, chunks[0])
    assert cur.state.offset > opened_at
    t._holding.add(object())  # as when a file before it is held for a split line
    commit(t, chunks[1])
    assert cur.state.offset == opened_at and cur.state.floor == floor
    (last,) = chunks[2:]
    in_flight = list(zip(last.lines.logs, last.lines.offsets, strict=True))
    reg.save()  # then a kill: the third line's batch is never acknowledged
    t.close()
    reg.close()

    reg = Registry(tmp_path / "state")
    try:
        t = Tailer(spec, reg, "h", 65536)
        again = [(log, off) for log, off, _ in drain_sent(t, ack=False)]
        t.close()
    finally:
        reg.close()
    assert again == in_flight  # sent again, under the offset it had
