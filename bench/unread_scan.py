"""How long the shipper's event loop stalls while a restart reads compressed files.

    .venv/bin/python bench/unread_scan.py [--mib 100] [--case unread|held|both]

A restart reads a rotated file again from its ``.gz`` copy (a split line was open in it); the
line is still open at its end, and the next file was written, rotated and compressed while the
shipper was down. Whether that unread file holds the line's stream decides whether the line is
cut (see :meth:`shipper.split_lines.SplitLines._next_parts_unseen`); a file holding only the
other stream is parsed whole. This builds that case with an unread file of ``--mib`` MiB of
Docker json-file lines, then drives the tailer on an event loop as the source's reader does,
with a probe task that wakes every 10 ms, and prints the largest gap between its wake-ups:

* ``on the loop``: :meth:`Tailer.poll` called directly, the start left to the first
  :meth:`Tailer.read` (what the reader did before);
* ``worker thread``: :meth:`Tailer.prepare_off_loop` before the start and
  :meth:`Tailer.poll_off_loop` (what it does now).

``--case held`` builds instead a held file of ``--mib`` MiB: the rotated file a split line was
open in, compressed while the shipper was down, whose ``.gz`` the start decompresses to read the
line again (see :mod:`shipper.held_gz`).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line
from tests.shipper.tailing import commit, drain_sent, rotate_docker, spec_for


def _stopped_in_a_split_line(root: Path) -> Path:
    """A stderr line's first part ends the file, Docker rotates it with ``compress`` and the
    shipper stops (its registry saved) with the line open. Returns the live path (no file
    there yet: the next one is the caller's)."""
    path = root / "c-json.log"
    path.write_bytes(docker_line("before", 0) + docker_line("err-", 1, "stderr", nl=False))
    reg = Registry(root / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    drain_sent(t)
    rotate_docker(path, max_file=5, compress=True)
    drain_sent(t, ack=False)
    reg.save()
    t.close()
    reg.close()
    return path


def _block() -> bytes:
    """20000 Docker json-file lines of an access log: what the ``--mib`` MiB repeat."""
    return b"".join(docker_line(f"GET /api/v1/things/{i} 200 ok", i) for i in range(20000))


def build(root: Path, mib: int) -> Path:
    """The files and registry a restart finds (see the module's docstring)."""
    path = _stopped_in_a_split_line(root)
    block = _block()
    os.replace(f"{path}.1.gz", f"{path}.2.gz")
    with gzip.open(f"{path}.1.gz", "wb", compresslevel=1) as f:
        for _ in range(-(-(mib << 20) // len(block))):
            f.write(block)
    path.write_bytes(docker_line("errtail", 5, "stderr") + docker_line("live", 6))
    return path


def build_held(root: Path, mib: int) -> Path:
    """The files and registry of a restart that reads a held file of ``mib`` MiB again from
    its ``.gz`` (see ``--case held``): its first line and the bytes before the checkpoint are
    the held file's, then ``mib`` MiB of lines, then the split line's first part."""
    path = _stopped_in_a_split_line(root)
    block = _block()
    with gzip.open(f"{path}.1.gz", "wb", compresslevel=1) as f:
        f.write(docker_line("before", 0))
        for _ in range(-(-(mib << 20) // len(block))):
            f.write(block)
        f.write(docker_line("err-", 1, "stderr", nl=False))
    path.write_bytes(docker_line("errtail", 5, "stderr") + docker_line("live", 6))
    return path


async def drive(path: Path, off_loop: bool) -> tuple[float, float]:
    """(seconds to read the files to their end, largest gap between the probe's wake-ups)."""
    reg = Registry(path.parent / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    gap = 0.0
    done = False

    async def probe() -> None:
        nonlocal gap
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gap, last = max(gap, now - last), now

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    while True:
        if off_loop:
            await t.prepare_off_loop()  # as the source's reader does before every read
        chunk = t.read()
        if chunk is not None:
            commit(t, chunk)
        elif not (await t.poll_off_loop() if off_loop else t.poll()):
            break
        await asyncio.sleep(0)
    took = time.perf_counter() - start
    done = True
    await task
    t.close()
    reg.close()
    return took, gap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=100, help="size of the compressed file (MiB)")
    ap.add_argument(
        "--case",
        choices=("unread", "held", "both"),
        default="both",
        help="an unread .gz scanned (unread), a held .gz decompressed at the start (held)",
    )
    args = ap.parse_args()
    cases = [("unread", build), ("held", build_held)]
    for case, make in cases:
        if args.case not in (case, "both"):
            continue
        for label, off_loop in (("on the loop", False), ("worker thread", True)):
            with tempfile.TemporaryDirectory(prefix="logq-bench-") as tmp:
                path = make(Path(tmp), args.mib)
                took, gap = asyncio.run(drive(path, off_loop))
            print(
                f"{case:>6} {label:>13}: read in {took:.2f} s, "
                f"largest loop stall {gap * 1000:.0f} ms"
            )


if __name__ == "__main__":
    main()
