"""A file rotated and compressed while the shipper was down, with lines it had not read yet.

Stopped (a DaemonSet or ECS agent update), the shipper's checkpoint is at line 10 of a file;
the container writes on, the runtime rotates the file and gzips it (the kubelet: ``0.log`` to
``0.log.<time>``, compressed to ``.tmp`` then renamed to ``.gz``; Docker ``compress: true``:
``-json.log.1.gz`` at once; logrotate ``compress``: ``app.log.1.gz``). The lines written after
the checkpoint exist only in the ``.gz``. The start reads them from it (see
:mod:`shipper.held_gz`), from the checkpoint on, once, before the newer files, and counts
nothing lost. Before, only the new file's lines arrived ("10 of 40") and the rest was counted
``deleted_unread``, a page.
"""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.tailer import Tailer
from tests.shipper.hostgen import cri_line, docker_line
from tests.shipper.tailing import drain, drain_sent, rotate_docker


def _plain_line(text: str, i: int = 0) -> bytes:
    return f"{text}\n".encode()


Rotate = Callable[[Path], None]


def _kubelet(path: Path) -> None:
    """The kubelet's rotation: ``0.log`` renamed to ``0.log.<time>``, then compressed to a
    ``.tmp`` and renamed to ``.gz``, the plain copy removed."""
    rotated = path.parent / "0.log.20261206-033000"
    os.rename(path, rotated)
    tmp = Path(f"{rotated}.tmp")
    with open(rotated, "rb") as src, gzip.open(tmp, "wb") as dst:
        dst.write(src.read())
    os.rename(tmp, f"{rotated}.gz")
    rotated.unlink()


def _docker(path: Path) -> None:
    rotate_docker(path, max_file=3, compress=True)


def _logrotate(path: Path) -> None:
    """logrotate ``create`` + ``compress``: ``app.log`` to ``app.log.1``, gzipped to
    ``app.log.1.gz``."""
    os.rename(path, f"{path}.1")
    with open(f"{path}.1", "rb") as src, gzip.open(f"{path}.1.gz", "wb") as dst:
        dst.write(src.read())
    os.unlink(f"{path}.1")


CASES = {
    "cri": ("ns_pod_0123/c/0.log", "cri", cri_line, _kubelet),
    "docker": ("c/c-json.log", "docker", docker_line, _docker),
    "plain": ("app/app.log", "plain", _plain_line, _logrotate),
}


def _write(path: Path, line: Callable[[str, int], bytes], first: int, n: int) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line(f"line {i}", i) for i in range(first, first + n)))


def _stopped_behind_then_rotated(tmp_path: Path, case: str) -> tuple[SourceSpec, Registry]:
    """The scenario: 10 lines shipped, the shipper stopped (its registry saved), 30 more
    written, the file rotated and compressed, a new one with 10 lines; the state of a new
    start (its registry opened again)."""
    name, fmt, line, rotate = CASES[case]
    path = tmp_path / "pods" / name
    path.parent.mkdir(parents=True)
    spec = SourceSpec(f"{fmt}:test", path, fmt, "svc")
    reg = Registry(tmp_path / "state")
    _write(path, line, 0, 10)
    t = Tailer(spec, reg, "h", 65536)
    assert drain(t) == [f"line {i}" for i in range(10)]
    reg.save()
    t.close()
    reg.close()
    _write(path, line, 10, 30)  # written while the shipper was down
    rotate(path)
    _write(path, line, 40, 10)
    return spec, Registry(tmp_path / "state")


@pytest.mark.parametrize("case", sorted(CASES))
def test_unread_lines_of_a_file_compressed_while_down_are_read_from_its_copy(
    tmp_path: Path, case: str
) -> None:
    spec, reg = _stopped_behind_then_rotated(tmp_path, case)
    losses: list[str] = []
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    asyncio.run(t.prepare_off_loop())  # what the source's reader does before the start
    sent = drain_sent(t)
    assert [log for log, _, _ in sent] == [f"line {i}" for i in range(10, 50)]
    assert losses == []
    t.close()
    reg.save()
    reg.close()
    # Read once: a restart after it sends nothing again, and counts nothing.
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    assert drain(t) == []
    assert losses == []
    t.close()
    reg.close()


def test_the_copy_is_read_before_a_file_rotated_after_it_while_down(tmp_path: Path) -> None:
    """The kubelet rotated twice while the shipper was down: the file it had a checkpoint in
    is compressed (``0.log.<t1>.gz``), the next one kept as it is (``0.log.<t2>``, the newest
    rotated file is not compressed). The copy's unread rest comes first, then that file, then
    the live one: every line once, in order."""
    spec, reg = _stopped_behind_then_rotated(tmp_path, "cri")
    path = spec.path
    os.rename(path, path.parent / "0.log.20261206-034000")
    _write(path, cri_line, 50, 10)
    losses: list[str] = []
    t = Tailer(spec, reg, "h", 65536, on_loss=losses.append)
    asyncio.run(t.prepare_off_loop())
    assert drain(t) == [f"line {i}" for i in range(10, 60)]
    assert losses == []
    t.close()
    reg.close()


def test_an_older_generation_with_the_live_files_banner_is_not_taken_for_it(
    tmp_path: Path,
) -> None:
    """A plain file whose generations start with the same banner, its live file read just
    past it, an older generation compressed beside it (logrotate ``compress``). A start had
    not opened the live file yet when it looked for files gone but for a copy: the live file's
    checkpoint was among them, the old generation matched it (same first line, same bytes
    before the offset) and was read from there under the live file's ``source_id`` -- its
    lines shipped again, and the live file's next line, at the same offset, dropped by the
    aggregator as a resend. With ``--multiline`` before; now that every source's copies are
    read, any plain file's. Only a file not found in its folder is looked for in a copy."""
    path = tmp_path / "app.log"
    spec = SourceSpec("plain:test", path, "plain", "svc")
    banner = b"=== app starting ===\n"
    Path(f"{path}.1.gz").write_bytes(gzip.compress(banner + b"old 1\nold 2\n"))
    path.write_bytes(banner)
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536, multiline="java")
    assert drain(t) == ["=== app starting ==="]
    reg.save()
    t.close()
    reg.close()
    with open(path, "ab") as f:
        f.write(b"new 1\n")
    reg = Registry(tmp_path / "state")
    t = Tailer(spec, reg, "h", 65536, multiline="java")
    asyncio.run(t.prepare_off_loop())
    assert drain(t) == ["new 1"]
    t.close()
    reg.close()
