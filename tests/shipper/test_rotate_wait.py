"""A file renamed away and still written to during its rotate wait, while the next file is read.

logrotate's ``create`` mode renames ``app.log`` and creates a new one; a writer that has not
reopened yet (or a second process) appends to the renamed file. That file is watched for
:data:`~shipper.rotate_wait.ROTATE_WAIT_SECONDS` ("lingers"), and what it gets is read before
the new file's next lines. Two things must hold meanwhile:

* a Forward message is one file's: it carries that file's ``source_id`` and its ack advances
  that file's checkpoint, also when the lingering file grows between two reads that fill one
  message (two reads of 256 KiB make the default 512 KiB message). Both files' lines in one
  message went out under the renamed file's id, and the new file's lines, at their own (lower)
  offsets, were dropped by the aggregator as resends: lost without a word (a run of the real
  programs lost 1,298 of 60,000 lines);
* a lingering file is followed by one cursor: a second rotation within the wait made the
  missed-rotation search open it again (it was modified after the file just rotated), so lines
  not acknowledged yet were read twice, and the second cursor, released at its end, dropped the
  file's checkpoint while the first still followed it.

The :class:`~tests.shipper.receiver.Receiver` drops records at or below the highest offset stored
for their ``source_id``, as the aggregator does.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import shipper.rotate_wait as rotate_wait
from shipper.checkpoint import Registry
from shipper.config import load_config
from shipper.cursor import Chunk
from shipper.daemon import Shipper
from shipper.tailer import Tailer
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import drain, spec_for

PAD = "x" * 400
"""Lines of ~410 bytes: 2,048 of them (a message's line limit) are more than its 512 KiB, so a
message takes two reads."""
WAIT = 60.0


def _write(path: Path, texts: list[str]) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(t.encode() + b"\n" for t in texts))


def test_lines_the_renamed_file_gets_between_two_reads_of_one_message_lose_nothing(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rotate_wait, "ROTATE_WAIT_SECONDS", WAIT)  # the wait spans the test
    logs = tmp_path / "logs"
    logs.mkdir()
    path, renamed = logs / "app.log", logs / "app.log.1"
    old = [f"old {i} {PAD}" for i in range(1500)]  # its offsets pass the new file's first read
    new = [f"new {i} {PAD}" for i in range(3000)]
    _write(path, old)
    real_read = Tailer.read
    appended: list[Chunk] = []

    def read_then_the_old_writer_appends(self: Tailer, *args: Any, **kw: Any) -> Chunk | None:
        """The writer that has not reopened appends to the renamed file right after the
        first read of the new file: between two reads of one message."""
        chunk = real_read(self, *args, **kw)
        if chunk is not None and not appended and self._lingering and chunk.cursor is self.live:
            _write(renamed, ["late"])
            appended.append(chunk)
        return chunk

    monkeypatch.setattr(Tailer, "read", read_then_the_old_writer_appends)
    args = ("--path", str(path), "--poll-interval", "0.05", "--discover-interval", "0.2")
    shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *args)))

    async def scenario() -> None:
        run = asyncio.create_task(shipper.run())
        try:
            await until(lambda: len(receiver.lines()) == len(old), WAIT)
            os.rename(path, renamed)  # logrotate create: renamed, then a new file...
            staged = logs / "staged"
            _write(staged, new)
            os.rename(staged, path)  # ... that the reopened program fills at once
            await until(lambda: {new[-1], "late"} <= set(receiver.lines()), WAIT)
        finally:
            shipper.request_stop()
            assert await asyncio.wait_for(run, WAIT) == 0

    asyncio.run(scenario())
    assert appended, "the renamed file was never watched while the new file was read"
    got = receiver.lines()
    missing = Counter([*old, *new, "late"]) - Counter(got)
    assert not missing, f"{sum(missing.values())} lines lost, e.g. {next(iter(missing))[:12]}"
    assert len(got) == len(old) + len(new) + 1 and receiver.duplicates == 0
    assert [line for line in got if line.startswith("new ")] == new  # in order


def test_a_read_for_one_file_ends_where_the_grown_renamed_file_comes_first(
    tmp_path: Path, reg: Registry
) -> None:
    path, renamed = tmp_path / "app.log", tmp_path / "app.log.1"
    _write(path, ["a0"])
    t = Tailer(spec_for(path, "plain"), reg, "h", 4096, block_size=8192)
    assert drain(t) == ["a0"]
    os.rename(path, renamed)
    _write(path, [f"b{i} {PAD}" for i in range(100)])  # several blocks
    while t.poll():  # the rotation seen, the renamed file set aside to linger
        pass
    assert [c.path for c in t._lingering] == [path]  # (its name when it was opened)
    first = t.read()
    assert first is not None and first.cursor is t.live
    _write(renamed, ["late"])  # the old writer, between two reads of one message
    assert t.read(of=first.cursor) is None  # the message ends: the next lines are another file's
    late = t.read()
    assert late is not None and late.lines.logs == ["late"] and late.cursor is not first.cursor
    assert t.read(of=late.cursor) is None  # read to its end
    assert t.poll()  # set aside again
    after = t.read(of=first.cursor)
    assert after is not None and after.lines.logs[0].startswith(f"b{len(first.lines)} ")


@pytest.mark.parametrize("acked", [True, False], ids=["acked", "in-flight"])
def test_a_lingering_file_is_not_opened_again_as_a_missed_rotation(
    tmp_path: Path, reg: Registry, acked: bool
) -> None:
    """Two logrotate ``create`` rotations within the rotate wait; the oldest writer still
    appends to the first renamed file, ``app.log.2`` by then: newer than ``app.log.1``, the file
    whose rotation was just seen, so the missed-rotation search found it."""
    logs = tmp_path / "logs"
    logs.mkdir()
    path, one, two = logs / "app.log", logs / "app.log.1", logs / "app.log.2"
    _write(path, ["a0"])
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    assert drain(t) == ["a0"]
    os.rename(path, one)
    _write(path, ["b0"])
    assert drain(t) == ["b0"]
    (first,) = t._lingering
    os.rename(one, two)  # logrotate again, within the rotate wait
    os.rename(path, one)
    _write(path, ["c0"])
    _write(two, ["a-late"])  # the oldest writer has not reopened yet
    assert drain(t, ack=acked) == ["a-late", "c0"]  # each once
    followed = [c for c in (*t.cursors, *t._lingering) if c.ino == first.ino]
    assert followed == [first], "one cursor per file"
    assert reg.get(first.key) is not None, "its checkpoint is kept while it is followed"
    _write(two, ["a-later"])
    assert drain(t, ack=acked) == ["a-later"]
