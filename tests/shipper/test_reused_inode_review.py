"""Review of the birth time in source ids (6d780e5): paths where a new file on a reused inode
with the same first line is still taken for the old one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipper.birth import birth_time
from shipper.checkpoint import Registry
from shipper.opening import another_life
from shipper.tailer import Tailer
from tests.shipper.tailing import aggregator_keeps, drain, drain_sent, on_a_freed_inode, spec_for
from tests.shipper.test_reused_inode import HEADER, _create_on_inode, _write, rotated_and_let_go


@pytest.fixture(autouse=True)
def _records_birth_times(tmp_path: Path) -> None:
    """Without birth times (NFS, a kernel before 4.11) the two lives of an inode cannot be
    told apart: these cases are lost there as before."""
    probe = tmp_path / ".probe"
    probe.write_bytes(b"x\n")
    fd = os.open(probe, os.O_RDONLY)
    try:
        if birth_time(fd) is None:
            pytest.skip("this file system records no birth time")
    finally:
        os.close(fd)
        probe.unlink()


def test_a_checkpoint_at_0_of_a_deleted_file_does_not_give_its_id_to_a_new_file_on_its_inode(
    tmp_path: Path,
) -> None:
    """Killed after the aggregator stored a new file's lines and before their ack moved its
    checkpoint (saved at 0 when the file was opened), then, while down, the file deleted and a
    new one created on its inode with the same first line: the new file resumed under the old
    file's ``source_id`` from 0, and the aggregator dropped its lines as resends."""

    def scenario(tmp_path: Path) -> None:
        reg = Registry(tmp_path / "state")
        try:
            path = tmp_path / "app.csv"
            _write(path, [HEADER, "a 1", "a 2"])
            t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
            stored = drain_sent(t, ack=False)  # stored by the aggregator; the ack never came back
            assert [log for log, _, _ in stored] == [HEADER, "a 1", "a 2"]
            for c in (*t.cursors, *t._lingering):
                c.close()  # killed
            freed = path.stat().st_ino
            path.unlink()
            _create_on_inode(path, [HEADER, "b 1", "b 2"], freed)
            t2 = Tailer(spec_for(path, "plain"), reg, "h", 65536)
            kept = aggregator_keeps(stored + drain_sent(t2))
            assert kept[3:] == [HEADER, "b 1", "b 2"], kept
        finally:
            reg.close()

    on_a_freed_inode(scenario, tmp_path)


def test_a_new_file_on_the_inode_of_a_header_only_file_let_go_is_read(tmp_path: Path) -> None:
    """A file let go (finished) while it held only its header: a new file on its inode with
    the same header holds the finished file's bytes before its end, and was passed over as
    that file (:meth:`~shipper.opening.Opening._finished_before`); rotated away before the
    finished entry expired, it stayed passed over by identity, never read nor counted."""

    def scenario(tmp_path: Path) -> None:
        reg = Registry(tmp_path / "state")
        try:
            path, one, two = tmp_path / "app.csv", tmp_path / "app.csv.1", tmp_path / "app.csv.2"
            _write(path, [HEADER])
            t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
            assert drain(t) == [HEADER]
            freed = rotated_and_let_go(t, path, one)
            # logrotate create, rotate 2: the header-only file let go is deleted, the next live file
            # is created on its inode; then the next rotation.
            one.unlink()
            os.rename(path, one)
            _create_on_inode(path, [HEADER, "c 1"], freed)
            got = drain(t)
            os.rename(one, two)
            os.rename(path, one)
            _write(path, [HEADER, "d 1"])
            got += drain(t)
            assert got == [HEADER, "c 1", HEADER, "d 1"]
        finally:
            reg.close()

    on_a_freed_inode(scenario, tmp_path)


def test_only_an_id_of_this_inode_with_another_birth_time_is_another_life(tmp_path: Path) -> None:
    """A copy's checkpoint carries the id of the file it copies (another inode), and an older
    shipper's ids have no birth time: neither may be taken for a deleted file's, or the copy
    or the file is read again from 0 under a new id (every line stored twice)."""
    path = tmp_path / "app.csv"
    _write(path, [HEADER])
    st = path.stat()
    ino, other = f"{st.st_ino:x}", f"{st.st_ino + 1:x}"
    assert another_life(f"h:{ino}:fp@10", st, 0x11)
    assert another_life(f"[::1]:{ino}:fp@10+2", st, 0x11)  # a host with colons, an epoch
    assert not another_life(f"h:{ino}:fp@11+2", st, 0x11)  # this life, truncated in place
    assert not another_life(f"h:{other}:fp@10", st, 0x11)  # a copy's (copytruncate)
    assert not another_life(f"h:{ino}:fp", st, 0x11)  # an older shipper's
    assert not another_life(f"h:{ino}:fp@10", st, None)  # no birth time now
    assert not another_life("garbage", st, 0x11)  # a damaged registry entry
