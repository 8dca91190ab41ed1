"""A new file that takes a finished file's inode and first line is read, not passed over.

A plain log (``--path``) often starts with a fixed banner, and ext4 gives a file created
after a deletion the inode just freed: the new file then has the finished file's key
(device, inode, first line). The registry keeps a finished file for a moment (see
:meth:`shipper.checkpoint.Registry.finish`) so that a restart does not read it again; a file
opened after that moment must be read as new content. The process's own finished files were
only dropped by the next save, which a quiet host may never make: a new file whose bytes
could not be checked was passed over for as long (R2, session 15).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipper.checkpoint import FINISHED_SAVE_SECONDS, Registry
from shipper.cursor import Chunk
from shipper.tailer import Tailer
from tests.shipper.tailing import create_on_inode, fresh_process, on_a_freed_inode, spec_for


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    return fresh_process(monkeypatch)


def _drain(t: Tailer, ack: bool = True) -> tuple[list[str], list[Chunk]]:
    """Read until nothing changes; the lines, and the chunks not acknowledged (``ack`` False)."""
    out: list[str] = []
    unacked: list[Chunk] = []
    while (chunk := t.read()) is not None or t.poll():
        if chunk is None:
            continue
        out += list(chunk.lines.logs)
        chunk.cursor.outstanding += 1
        if ack:
            _ack(t, chunk)
        else:
            unacked.append(chunk)
    return out, unacked


def _ack(t: Tailer, chunk: Chunk) -> None:
    t.commit(chunk.cursor, chunk.resume, chunk.lines.offsets[-1])


def _deleted_and_created_again(tmp_path: Path, acked_late: bool) -> tuple[Tailer, Registry]:
    """A followed plain file read to its end, deleted, and a new one with the same first line
    created on its inode; its last batch acknowledged before (or, ``acked_late``, after) the
    deletion was seen. Returns the tailer and registry, nothing of the new file read yet."""
    path = tmp_path / "app.log"
    path.write_bytes(b"app v1 starting\nold 1\nold 2\n")
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    lines, unacked = _drain(t, ack=not acked_late)
    assert lines == ["app v1 starting", "old 1", "old 2"]
    ino = os.stat(path).st_ino
    path.unlink()  # the program deletes its log and starts a new one
    assert _drain(t) == ([], [])  # the deletion is seen: the file is let go
    for chunk in unacked:
        _ack(t, chunk)
    assert reg.items() == []
    try:
        create_on_inode(path, b"app v1 starting\nnew 1\nnew 2\nnew 3\n", ino)
    except BaseException:  # (the inode taken by another file: the scenario runs again)
        t.close()
        reg.close()
        raise
    return t, reg


@pytest.mark.parametrize("acked_late", [False, True])
def test_a_new_file_on_a_finished_files_inode_is_read_once_the_moment_is_over(
    tmp_path: Path, acked_late: bool
) -> None:
    """Acknowledged before the deletion was seen, the file was finished with a check of its
    last bytes, which tells the new content apart; acknowledged after (``acked_late``: its
    descriptor closed by then), without: only the size was compared, and the new file, as
    long, was passed over at every look until a save that nothing else asked for."""

    def scenario(d: Path) -> None:
        t, reg = _deleted_and_created_again(d, acked_late)
        for state in reg._finished.values():  # the moment is over; nothing else was saved since
            state.updated -= FINISHED_SAVE_SECONDS + 1
        assert _drain(t)[0] == ["app v1 starting", "new 1", "new 2", "new 3"]
        t.close()
        reg.close()

    on_a_freed_inode(scenario, tmp_path)
