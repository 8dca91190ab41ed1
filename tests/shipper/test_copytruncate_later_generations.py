"""R2s19: when the copy of what was read is not modified after the open, a later copy wins.

:func:`shipper.copytruncate.copies_in_order` puts the copies modified after the live file was
opened first, oldest first, then the rest newest first. Our copy is not "modified after" the
open when its time ties the live file's time at the open (a 1 s file system: the open and
logrotate's copy in the second of the last write) or when the copy keeps the original's time
(``cp -p``, ``shutil.copy2``, ``rsync -t``: rotation scripts) and nothing was written since
the open. A second rotation before the shipper looks then leaves a later copy that *is*
modified after the open: it is taken for ours, "finished" from our position, and the lines
before our position in it, and our own copy's unread rest, are never read (lost, uncounted).
In ``os.listdir`` order (before 12cd119) the older copy listed first was right.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import shipper.copytruncate
from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.tailing import aggregator_keeps, drain_sent, fresh_process, spec_for

HEADER = "timestamp,level,message"


def _append(path: Path, *lines: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line.encode() + b"\n" for line in lines))


def _listed(order: str) -> Callable[[Path], list[Path]]:
    real = shipper.copytruncate.rotated_siblings

    def siblings(path: Path) -> list[Path]:
        return sorted(real(path), key=lambda p: p.name, reverse=order == "older-first")

    return siblings


def _copytruncate(path: Path, keep_time: bool) -> None:
    """``.1`` -> ``.2`` (rename keeps its time), copy to ``.1``, truncate in place."""
    if Path(f"{path}.1").exists():
        os.replace(f"{path}.1", f"{path}.2")
    (shutil.copy2 if keep_time else shutil.copyfile)(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)


@pytest.mark.parametrize("cause", ["one-second-fs", "copy-keeps-mtime"])
@pytest.mark.parametrize("order", ["older-first", "newer-first"])
def test_double_rotation_when_our_copy_is_not_newer_than_the_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str, cause: str
) -> None:
    fresh_process(monkeypatch)
    monkeypatch.setattr(shipper.copytruncate, "rotated_siblings", _listed(order))
    path = tmp_path / "app.log"
    _append(path, HEADER, "alpha 1")
    second = int(path.stat().st_mtime) - 7200  # whole second: a 1 s file system's time
    os.utime(path, ns=(second * 10**9, second * 10**9))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)  # opened: mtime_at_open == second
    sent = drain_sent(t)
    # First rotation, in the same second as the open (one-second-fs), or by a copy that keeps
    # the original's time with nothing written since the open (copy-keeps-mtime).
    _copytruncate(path, keep_time=cause == "copy-keeps-mtime")
    if cause == "one-second-fs":
        os.utime(f"{path}.1", ns=(second * 10**9, second * 10**9))
    assert os.stat(f"{path}.1").st_mtime_ns == second * 10**9
    # The writer goes on; a second rotation before the shipper looks (it was stalled).
    _append(path, HEADER, "beta 1", "beta 2")
    _copytruncate(path, keep_time=cause == "copy-keeps-mtime")
    _append(path, HEADER)  # shorter than our position: the truncation shows
    sent += drain_sent(t)
    _append(path, "gamma 1")
    sent += drain_sent(t)
    t.close()
    reg.close()

    want = [HEADER] * 3 + ["alpha 1", "beta 1", "beta 2", "gamma 1"]
    assert Counter(aggregator_keeps(sent)) == Counter(want), sent


def test_double_rotation_with_delaycompress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logrotate ``compress`` + ``delaycompress`` ran twice before the shipper looked: our copy
    is ``.2.gz`` now, the only uncompressed copy (``.1``) is the next generation's. Taken for
    ours (same first line, not shorter than our position), it is read from our position: its
    lines before it are lost, the line at it is cut, and our unread rest in ``.2.gz`` is lost,
    all uncounted (not introduced by 12cd119: one candidate, any order)."""
    import gzip

    fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    _append(path, HEADER, "alpha 1")
    reg = Registry(tmp_path / "state")
    losses: list[str] = []
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, on_loss=losses.append)
    sent = drain_sent(t)
    _append(path, "alpha 2")
    _copytruncate(path, keep_time=False)  # .1 = header, alpha 1, alpha 2
    _append(path, HEADER, "beta 1", "beta 2")
    with open(f"{path}.1", "rb") as src, gzip.open(f"{path}.2.gz", "wb") as dst:
        dst.write(src.read())  # delaycompress: the previous .1 is compressed at this run
    os.remove(f"{path}.1")
    _copytruncate(path, keep_time=False)  # .1 = header, beta 1, beta 2
    _append(path, HEADER)
    sent += drain_sent(t)
    _append(path, "gamma 1")
    sent += drain_sent(t)
    t.close()
    reg.close()

    got = Counter(aggregator_keeps(sent))
    if got != Counter([HEADER] * 3 + ["alpha 1", "alpha 2", "beta 1", "beta 2", "gamma 1"]):
        # At least: nothing stored that was never written, and the loss counted.
        assert set(got) <= {HEADER, "alpha 1", "alpha 2", "beta 1", "beta 2", "gamma 1"}, sent
        assert losses, sent
