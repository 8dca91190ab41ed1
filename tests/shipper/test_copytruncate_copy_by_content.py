"""copytruncate: the copy of what was read is told by the bytes read before our position.

A first line shared by every generation (a CSV header) and file times that tie or are kept
(1 s file systems; ``cp -p``) leave a later generation's copy looking like ours. R2s19's tests
(``test_copytruncate_later_generations.py``) take a later copy as long as ours; these take the
cases around it: a later copy shorter than our position, a truncation between the check and a read
(the bytes read after the check are the new content's), and ``compress`` + ``delaycompress``
(ours is ``.2.gz``, the plain ``.1`` the next generation's).
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import shipper.copytruncate
from shipper.checkpoint import Registry
from shipper.cursor import Cursor
from shipper.tailer import Tailer
from tests.shipper.tailing import aggregator_keeps, drain_sent, fresh_process, spec_for

HEADER = "timestamp,level,message"


def _append(path: Path | str, *lines: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line.encode() + b"\n" for line in lines))


def _copytruncate(path: Path) -> None:
    """logrotate ``copytruncate``: ``.1`` moves to ``.2`` (its time kept), the live file is
    copied to ``.1`` and truncated in place."""
    if Path(f"{path}.1").exists():
        os.replace(f"{path}.1", f"{path}.2")
    shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)


def _listed(order: str) -> Callable[[Path], list[Path]]:
    """``rotated_siblings`` as a directory listing may give it: ``.1`` or ``.2`` first."""
    real = shipper.copytruncate.rotated_siblings

    def siblings(path: Path) -> list[Path]:
        return sorted(real(path), key=lambda p: p.name, reverse=order == "older-first")

    return siblings


def _set_mtime(path: Path | str, second: int) -> None:
    os.utime(path, ns=(second * 10**9, second * 10**9))


@pytest.mark.parametrize("order", ["older-first", "newer-first"])
def test_a_later_copy_shorter_than_our_position_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """Our copy ties the open's time (a 1 s file system); logrotate ran again before we looked
    and the next generation is shorter than what we read. Taken for an earlier generation's
    copy (shorter than our position, same first line), it was marked read: never read, its
    lines lost and nothing counted. Made after the open, it is a later one's: read whole."""
    fresh_process(monkeypatch)
    monkeypatch.setattr(shipper.copytruncate, "rotated_siblings", _listed(order))
    path = tmp_path / "app.log"
    _append(path, HEADER, "alpha 1 with a line long enough to pass the next generation")
    second = int(path.stat().st_mtime) - 7200
    _set_mtime(path, second)
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    sent = drain_sent(t)
    _copytruncate(path)
    _set_mtime(f"{path}.1", second)  # the copy in the second of the open
    _append(path, HEADER, "beta 1")
    _copytruncate(path)  # .1: header, beta 1 (now: after the open)
    _append(path, HEADER)
    sent += drain_sent(t)
    _append(path, "gamma 1")
    sent += drain_sent(t)
    t.close()
    reg.close()

    want = [HEADER] * 3 + [
        "alpha 1 with a line long enough to pass the next generation",
        "beta 1",
        "gamma 1",
    ]
    assert Counter(aggregator_keeps(sent)) == Counter(want), sent
    assert losses == [], sent


def test_a_copy_without_the_bytes_read_after_the_check_is_read_again_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The truncation falls between the check before a read and the read, and the writer
    wrote the new content past our position at once: the read takes the new content's bytes.
    Our copy is longer than where that read ended, so its size said "finish from there": the
    old content's lines in between were never read (lost, uncounted). Its bytes before that
    position are not the ones read: it is read again from the check, under a new id."""
    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    old = [f"old line {i:03d}" for i in range(60)]
    new = [f"new line {i:03d}" for i in range(40)]
    _append(path, "old first line", *old[:10])
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    sent = drain_sent(t)
    _append(path, *old[10:])
    real = Tailer._rewritten
    armed = [True]

    def rewritten(cur: Cursor) -> bool:
        """The real check, then logrotate's copytruncate and a burst of the new content."""
        found = real(cur)
        if armed[0] and not found:
            armed[0] = False
            _copytruncate(path)
            _append(path, "new first line", *new)
        return found

    monkeypatch.setattr(Tailer, "_rewritten", staticmethod(rewritten))
    sent += drain_sent(t)
    t.close()
    reg.close()

    assert not armed[0], "the truncation was not made between a check and a read"
    kept = Counter(aggregator_keeps(sent))
    missing = [line for line in ["old first line", *old, "new first line", *new] if not kept[line]]
    assert missing == [], sent


def test_double_rotation_with_delaycompress_reads_the_next_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logrotate ``compress`` + ``delaycompress`` ran twice before the shipper looked: ours is
    ``.2.gz`` (with a line we never read), the plain ``.1`` the next generation's. The ``.1``
    is not taken for ours (its bytes before our position are not ours): the unread line is
    counted lost, and the ``.1`` is read whole as the missed rotation it is."""
    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    _append(path, HEADER, "alpha 1")
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    sent = drain_sent(t)
    _append(path, "alpha 2")
    _copytruncate(path)  # .1 = header, alpha 1, alpha 2
    _append(path, HEADER, "beta 1", "beta 2")
    with open(f"{path}.1", "rb") as src, gzip.open(f"{path}.2.gz", "wb") as dst:
        dst.write(src.read())
    shutil.copystat(f"{path}.1", f"{path}.2.gz")  # logrotate gives the .gz its source's time
    os.remove(f"{path}.1")
    _copytruncate(path)  # .1 = header, beta 1, beta 2
    _append(path, HEADER)
    sent += drain_sent(t)
    _append(path, "gamma 1")
    sent += drain_sent(t)
    t.close()
    reg.close()

    want = [HEADER] * 3 + ["alpha 1", "beta 1", "beta 2", "gamma 1"]
    assert Counter(aggregator_keeps(sent)) == Counter(want), sent
    assert losses == ["truncated_without_copy"], sent


def test_a_later_generation_compressed_unread_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``compress`` without ``delaycompress``, logrotate ran twice before the shipper looked,
    the generations with first lines of their own: ours (``.2.gz``) was read to its end, the
    next one (``.1.gz``) never. Its lines are lost: counted ``rotated_unseen``, where nothing
    looked for it before."""
    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    _append(path, "first generation", "alpha 1")
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    sent = drain_sent(t)
    for name in ("beta", "gamma"):
        gz = Path(f"{path}.1.gz")
        if gz.exists():
            os.replace(gz, f"{path}.2.gz")
        gz.write_bytes(gzip.compress(path.read_bytes()))
        with open(path, "r+b") as f:
            f.truncate(0)
        _append(path, f"{name} generation", f"{name} 1")
    sent += drain_sent(t)
    t.close()
    reg.close()

    kept = Counter(aggregator_keeps(sent))
    assert kept == Counter(["first generation", "alpha 1", "gamma generation", "gamma 1"]), sent
    assert losses == ["rotated_unseen"], sent
