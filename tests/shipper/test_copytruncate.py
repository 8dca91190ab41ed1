"""logrotate ``copytruncate`` repeated while the shipper is still reading an earlier copy.

The live file opened after one truncation can be truncated again before its first read: its
content must be checked before every read (not only at its end), or new lines are shipped under
the old content's id and the copy holding the old content is taken as already read.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.tailer import Tailer


@pytest.fixture
def reg(tmp_path: Path):
    r = Registry(tmp_path / "state")
    yield r
    r.close()


class Log:
    """A plain log file written with numbered lines, rotated with copytruncate."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0

    def burst(self, k: int) -> None:
        with open(self.path, "ab") as f:
            f.write(b"".join(b"ct line %06d\n" % (self.n + j) for j in range(k)))
        self.n += k

    def copytruncate(self, suffix: int) -> None:
        shutil.copyfile(self.path, f"{self.path}.{suffix}")
        with open(self.path, "r+b") as f:
            f.truncate(0)


def read_some(t: Tailer, out: list[tuple[str, str]], max_lines: int) -> None:
    """One chunk of at most ``max_lines``, noticing rotation on the way like the reader does."""
    chunk = t.read(max_lines=max_lines)
    while chunk is None:
        assert t.poll()
        chunk = t.read(max_lines=max_lines)
    out += [(chunk.cursor.source_id, log) for log in chunk.lines.logs]
    commit(t, chunk)


def commit(t: Tailer, chunk) -> None:
    chunk.cursor.outstanding += 1
    last = chunk.lines.offsets[-1] if chunk.lines.offsets else 0
    t.commit(chunk.cursor, chunk.resume, last)


def drain(t: Tailer, out: list[tuple[str, str]]) -> None:
    while True:
        chunk = t.read(max_lines=100)
        if chunk is None:
            if not t.poll():
                return
            continue
        out += [(chunk.cursor.source_id, log) for log in chunk.lines.logs]
        commit(t, chunk)


def test_truncated_again_before_the_new_file_was_read(tmp_path: Path, reg: Registry) -> None:
    """The auditor's run: behind on a big file, copytruncate to ``.2``, 50 lines, copytruncate
    to ``.3`` before the live file was read, 500 more lines. Every line exactly once."""
    log = Log(tmp_path / "ct.log")
    log.burst(200)
    losses: list[str] = []
    t = Tailer(
        SourceSpec("test:ct", log.path, "plain", "svc"), reg, "h", 65536, on_loss=losses.append
    )
    got: list[tuple[str, str]] = []
    drain(t, got)
    log.burst(2000)
    read_some(t, got, 100)  # behind: most of the 2000 lines are not read yet
    log.copytruncate(2)
    log.burst(50)
    read_some(t, got, 100)  # finds the truncation, goes on in the copy; live file opened
    log.copytruncate(3)  # the live file is truncated again before its first read
    log.burst(500)
    drain(t, got)
    counts = Counter(line for _, line in got)
    expected = [f"ct line {i:06d}" for i in range(log.n)]
    assert [k for k, v in counts.items() if v > 1] == []
    assert sorted(set(expected) - set(counts)) == []
    assert [line for _, line in got] == expected  # in order, too
    assert losses == []
    # Each content went under its own id: the 50 lines of .3 share none with the 500 after.
    ids_50 = {sid for sid, line in got if 2200 <= int(line.split()[-1]) < 2250}
    ids_500 = {sid for sid, line in got if int(line.split()[-1]) >= 2250}
    assert len(ids_50) == 1 and len(ids_500) == 1 and ids_50 != ids_500


def test_copy_smaller_than_what_was_read_is_read_again(tmp_path: Path, reg: Registry) -> None:
    """The truncation landed between the content check and a read: the bytes read past the
    copy's end were new content. The copy is read again from the last checked position under
    a new id, so none of its lines is lost (some may arrive twice)."""
    log = Log(tmp_path / "ct.log")
    log.burst(100)
    t = Tailer(SourceSpec("test:ct", log.path, "plain", "svc"), reg, "h", 65536)
    got: list[tuple[str, str]] = []
    drain(t, got)
    log.burst(20)  # lines 100..119: they end up only in the copy
    log.copytruncate(1)
    log.burst(300)  # new content, longer than what we had read
    live = t.live
    assert live is not None
    # What a read racing with the truncation does: past the content check, the new bytes.
    chunk = live.read(1 << 16, max_lines=150)
    assert chunk is not None
    raced = chunk.lines.logs
    commit(t, chunk)
    drain(t, got)
    lines = [line for _, line in got]
    expected = [f"ct line {i:06d}" for i in range(log.n)]
    assert set(expected) <= set(lines) | set(raced)
    assert all(f"ct line {i:06d}" in lines for i in range(100, 120))  # the copy's tail
    old = {sid for sid, line in got if int(line.split()[-1]) < 100}
    again = {sid for sid, line in got if 100 <= int(line.split()[-1]) < 120}
    assert again and not again & old  # read again under another id
