"""A new file on the inode of a file the shipper let go, starting with the same first line.

A file's ``source_id`` was ``host:inode:fingerprint`` (the fingerprint hashes the first line),
and the aggregator drops a record at or below the highest offset it stored for its
``source_id``. ext4 hands a freed inode to the next file created, so logrotate's ``create``
mode (``rotate 1``: delete ``app.log.1``, rename ``app.log`` to it, create ``app.log``) gives the
new ``app.log`` the inode of the file it just deleted. When every file starts with the same line
(a CSV header, W3C's ``#Version: 1.0``, a banner), the new file got the old file's
``source_id``, and its lines up to the old file's size were dropped as resends: lost without a
word at every rotation. A file's life is now told by its inode's birth time too.

The :class:`~tests.shipper.receiver.Receiver` drops records at or below the highest offset stored
for their ``source_id``, as the aggregator does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

import shipper.birth as birth
import shipper.rotate_wait as rotate_wait
from shipper.birth import birth_time
from shipper.checkpoint import FileState, Registry, file_key
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.fingerprint import fingerprint
from shipper.tailer import Tailer
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import (
    aggregator_keeps,
    create_on_inode,
    drain,
    drain_sent,
    on_a_freed_inode,
    spec_for,
)

pytestmark = pytest.mark.integration

HEADER = "time,level,message"
ROUNDS = 4
LINES = 50
WAIT = 30.0


def _open_inodes() -> set[tuple[int, int]]:
    """(device, inode) of every file this process (the in-process shipper) holds open."""
    out: set[tuple[int, int]] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile (or the listing's own descriptor)
        out.add((st.st_dev, st.st_ino))
    return out


def _csv(n: int) -> bytes:
    """A log file of round ``n``: the fixed header, then lines as long as every round's."""
    rows = (f"2026-01-01T00:00:{i:02d},INFO,round {n} row {i:03d}\n" for i in range(LINES))
    return (HEADER + "\n" + "".join(rows)).encode()


def _logrotate_create(path: Path, n: int) -> None:
    """logrotate ``create``, ``rotate 1``: the oldest rotated file deleted, the live file
    renamed to it, a new live file created (and filled at once by the program) on the inode
    just freed, as ext4 does when nothing else takes it first (:func:`create_on_inode`)."""
    rotated = path.with_name(path.name + ".1")
    if not rotated.exists():
        os.rename(path, rotated)
        path.write_bytes(_csv(n))
        return
    freed = rotated.stat().st_ino
    rotated.unlink()
    os.rename(path, rotated)
    create_on_inode(path, _csv(n), freed)


def test_a_new_file_on_a_reused_inode_with_the_same_first_line_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receivers: list[Receiver] = []

    def scenario(tmp_path: Path) -> None:
        monkeypatch.setattr(rotate_wait, "ROTATE_WAIT_SECONDS", 0.1)
        receiver = Receiver()
        receivers.append(receiver)
        logs = tmp_path / "logs"
        logs.mkdir()
        path = logs / "app.csv"
        path.write_bytes(_csv(0))
        inodes = [path.stat().st_ino]
        args = ("--path", str(path), "--poll-interval", "0.05", "--discover-interval", "0.2")
        shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *args)))

        def seen() -> int:
            """Records the receiver got, stored or dropped as resends."""
            return len(receiver.records) + receiver.duplicates

        async def shipping() -> None:
            run = asyncio.create_task(shipper.run())
            try:
                for n in range(1, ROUNDS + 1):
                    await until(lambda n=n: seen() >= n * (LINES + 1), WAIT)
                    _logrotate_create(path, n)
                    inodes.append(path.stat().st_ino)
                    st = path.with_name(path.name + ".1").stat()
                    # The renamed file read to its end and let go after its rotate wait: its
                    # inode is free to be reused by the next rotation's new file.
                    await until(lambda st=st: (st.st_dev, st.st_ino) not in _open_inodes(), WAIT)
                await until(lambda: seen() >= (ROUNDS + 1) * (LINES + 1), WAIT)
            finally:
                shipper.request_stop()
                assert await asyncio.wait_for(run, WAIT) == 0

        asyncio.run(shipping())
        assert len(set(inodes)) < len(inodes), f"no inode was reused: {inodes} (not ext4?)"
        expected = [line for n in range(ROUNDS + 1) for line in _csv(n).decode().splitlines()]
        got = receiver.lines()
        missing = sorted(set(expected) - set(got))
        assert not missing and receiver.duplicates == 0, (
            f"{receiver.duplicates} records dropped as resends; {len(missing)} lines missing, "
            f"e.g. {missing[:2]}; inodes {inodes}"
        )
        assert sorted(got) == sorted(expected)

    try:
        on_a_freed_inode(scenario, tmp_path)
    finally:
        for receiver in receivers:
            receiver.close()


def _write(path: Path, lines: list[str]) -> None:
    path.write_bytes("".join(f"{line}\n" for line in lines).encode())


def _create_on_inode(path: Path, lines: list[str], ino: int) -> None:
    create_on_inode(path, "".join(f"{line}\n" for line in lines).encode(), ino)


def rotated_and_let_go(t: Tailer, path: Path, one: Path) -> int:
    """Rotate ``path`` (read by ``t``) to ``one`` under a new live file ``[HEADER, "b 1"]``,
    past the rotate wait: the inode of ``one``, which the tailer has let go."""
    os.rename(path, one)
    _write(path, [HEADER, "b 1"])
    assert drain(t) == [HEADER, "b 1"]
    t._lingering[0].rotated_at -= rotate_wait.ROTATE_WAIT_SECONDS
    assert drain(t) == []
    return one.stat().st_ino


def test_a_missed_rotation_on_the_inode_of_a_file_let_go_is_read(tmp_path: Path) -> None:
    """A file the tailer let go is remembered by identity (:attr:`Tailer._released`) so that
    the search for missed rotations does not read it again. A new file on its inode with the
    same first line, rotated away before the tailer saw it at the live path, had that identity
    and was never read."""

    def scenario(tmp_path: Path) -> None:
        reg = Registry(tmp_path / "state")
        try:
            path, one, two = tmp_path / "app.csv", tmp_path / "app.csv.1", tmp_path / "app.csv.2"
            _write(path, [HEADER, "a 1"])
            t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
            assert drain(t) == [HEADER, "a 1"]
            freed = rotated_and_let_go(t, path, one)
            assert freed not in {c.ino for c in (*t.cursors, *t._lingering)}  # let go
            # logrotate create, rotate 2, twice before the tailer looks again: the file let go is
            # deleted, and the next live file, created on its inode, is rotated away at once.
            one.unlink()
            os.rename(path, one)
            _create_on_inode(path, [HEADER, "c 1"], freed)
            os.rename(one, two)
            os.rename(path, one)
            _write(path, [HEADER, "d 1"])
            assert drain(t) == [HEADER, "c 1", HEADER, "d 1"]
        finally:
            reg.close()

    on_a_freed_inode(scenario, tmp_path)


def test_a_checkpoint_of_an_older_shipper_resumes_under_its_stored_source_id(
    tmp_path: Path, reg: Registry
) -> None:
    """Entries written before the birth time joined the ``source_id`` keep theirs: the
    aggregator stored the file's lines under it, and re-read lines must be recognised as
    resends (not stored twice), new ones go on above its highest offset."""
    path = tmp_path / "app.csv"
    _write(path, [HEADER, "a 1", "a 2"])
    fd = os.open(path, os.O_RDONLY)
    try:
        fp, st, born = fingerprint(fd), os.fstat(fd), birth_time(fd)
    finally:
        os.close(fd)
    assert fp is not None
    old_sid = f"h:{st.st_ino:x}:{fp}"
    offset = len(f"{HEADER}\na 1\n")
    state = FileState(f"test:{path.name}", str(path), old_sid, offset, offset)
    reg.put(file_key(st.st_dev, st.st_ino, fp), state)
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    assert drain_sent(t) == [("a 2", st.st_size, old_sid)]
    # A file first seen now gets the birth time in its id (where the file system has one).
    other = tmp_path / "other.csv"
    _write(other, [HEADER, "x"])
    t2 = Tailer(spec_for(other, "plain"), reg, "h", 65536)
    sent = drain_sent(t2)
    assert aggregator_keeps(sent) == [HEADER, "x"]
    if born is not None:
        fd = os.open(other, os.O_RDONLY)
        try:
            new_sid = f"h:{os.fstat(fd).st_ino:x}:{fp}@{birth_time(fd) or 0:x}"
        finally:
            os.close(fd)
        assert {sid for _, _, sid in sent} == {new_sid}


def test_without_a_birth_time_the_source_id_is_as_before(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the birth time is unknown (no ``statx`` in libc or the kernel, a file system that
    does not record it: NFS), a file's id is ``host:inode:fingerprint``, as it always was, and
    one WARNING says the protection is off."""
    monkeypatch.setattr(birth, "_statx", None)
    monkeypatch.setattr(birth, "_told", False)
    caplog.set_level(logging.WARNING, logger="logq.shipper.birth")
    path = tmp_path / "app.csv"
    _write(path, [HEADER, "a 1"])
    fd = os.open(path, os.O_RDONLY)
    try:
        assert birth.birth_time(fd) is None
        expected = f"h:{os.fstat(fd).st_ino:x}:{fingerprint(fd)}"
    finally:
        os.close(fd)
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    assert {sid for _, _, sid in drain_sent(t)} == {expected}
    warned = [r.getMessage() for r in caplog.records if r.name == "logq.shipper.birth"]
    assert len(warned) == 1 and "no statx()" in warned[0], warned


def test_a_file_system_that_records_no_birth_time_gives_none() -> None:
    fd = os.open("/proc/self/status", os.O_RDONLY)
    try:
        assert birth.birth_time(fd) is None
    finally:
        os.close(fd)
