"""copytruncate of a file whose every generation starts with the same line (A3s18).

An empty first line, a fixed banner or a CSV header: the copy the truncation made and an
older generation's copy (``app.log.2``) share the first line and the bytes up to our position,
so neither tells which copy to finish from. Taken in ``os.listdir`` order, the older copy was
finished from our position when listed first, and lines read from it long before went out
again under the new epoch's id: stored twice, without any restart. Ours is the first copy
modified after the live file was opened (see :func:`shipper.copytruncate.copies_in_order`);
the tests list the copies in both orders.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import shipper.copytruncate
from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.tailing import aggregator_keeps, drain_sent, fresh_process, spec_for


def _append(path: Path, *lines: str) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line.encode() + b"\n" for line in lines))


def _copytruncate(path: Path) -> None:
    """logrotate ``copytruncate``: ``.1`` moves to ``.2``, the live file is copied to ``.1``
    and truncated in place."""
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


@pytest.mark.parametrize("apart", [True, False], ids=["hours-apart", "one-jiffy"])
@pytest.mark.parametrize("first", ["", "timestamp,level,message"], ids=["empty", "header"])
@pytest.mark.parametrize("order", ["older-first", "newer-first"])
def test_the_copy_of_what_was_read_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, order: str, apart: bool
) -> None:
    """Hours apart, the copy modified since the live file was opened is ours; within one
    jiffy (file times tie) the newest is."""
    fresh_process(monkeypatch)
    monkeypatch.setattr(shipper.copytruncate, "rotated_siblings", _listed(order))
    path = tmp_path / "app.log"
    _append(path, first, "alpha")
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    sent = drain_sent(t)
    _copytruncate(path)  # app.log.1 holds first + alpha
    if apart:
        _aged(Path(f"{path}.1"), 3)
    sent += drain_sent(t)
    _append(path, first)
    if apart:
        _aged(path, 2)  # when the live file is opened again
    sent += drain_sent(t)
    _copytruncate(path)  # app.log.2 holds first + alpha, app.log.1 first alone
    if apart:
        _aged(Path(f"{path}.1"), 1)
    sent += drain_sent(t)
    _append(path, "beta")
    sent += drain_sent(t)
    t.close()
    reg.close()

    assert Counter(aggregator_keeps(sent)) == Counter([first, "alpha", first, "beta"]), sent


def _aged(path: Path, hours_ago: float) -> None:
    """Set ``path``'s modification time ``hours_ago`` hours back: logrotate runs an hour or
    a day apart, a test within one jiffy (file times would tie)."""
    at = time.time() - hours_ago * 3600
    os.utime(path, (at, at))


@pytest.mark.parametrize("order", ["older-first", "newer-first"])
def test_copies_made_after_ours_are_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """logrotate ran twice before the shipper looked (it was busy elsewhere): both copies start
    with the header. The first made since the file was opened is ours, finished from our
    position; the later one holds lines never read, read whole after it. Taking the newest
    for ours skipped its lines up to our position and never read ours: lost, uncounted."""
    fresh_process(monkeypatch)
    monkeypatch.setattr(shipper.copytruncate, "rotated_siblings", _listed(order))
    path = tmp_path / "app.log"
    header = "timestamp,level,message"
    _append(path, header, "alpha 1")
    _aged(path, 3)
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536)
    sent = drain_sent(t)
    _append(path, "alpha 2")
    _copytruncate(path)
    _aged(Path(f"{path}.1"), 2)
    _append(path, header, "beta 1")
    _copytruncate(path)
    _aged(Path(f"{path}.1"), 1)
    _append(path, header)  # shorter than our position: the truncation shows
    sent += drain_sent(t)
    _append(path, "gamma 1")
    sent += drain_sent(t)
    t.close()
    reg.close()

    want = [header] * 3 + ["alpha 1", "alpha 2", "beta 1", "gamma 1"]
    assert Counter(aggregator_keeps(sent)) == Counter(want), sent
