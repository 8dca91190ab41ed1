"""The per-source offsets' cost (aggregator/dedup.py) as the number of remembered sources grows.

Every rotated log file is a new source and sources are kept 14 days, so an aggregator remembers
~470,000 of them at the documented sizing. For each ``--sources`` count this prints:

* one flush's offsets work (fork, advance 200 sources, adopt, save) and the bytes it writes;
* the longest event-loop gap (an asyncio ticker every 5 ms) while that flush runs in a worker
  thread, as the aggregator runs it: a save that holds the GIL stalls acks and reads;
* the rare snapshot rewrite (when the journal outgrows the snapshot, and at a clean stop): time,
  file size and the longest event-loop gap while it runs;
* loading at restart (snapshot + a journal as large as the snapshot allows), time and peak RSS
  of a fresh process.

With ``--evict`` it prints instead what forgetting the least recently seen sources costs once
:data:`aggregator.dedup.MAX_SOURCES` are remembered (the flush that brings one more source
forgets a tenth of them): the time and the longest event-loop gap, three times in a row.

Usage: ``python bench/offsets.py [--sources 100000,1000000] [--evict]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa

from aggregator.dedup import EVICT_TO, MAX_SOURCES, OffsetState, journal_path

FLUSH_SOURCES = 200
FLUSH_ROWS = 100_000


def source_ids(n: int) -> list[str]:
    """Ids shaped like the shipper's ``host:inode:fingerprint``."""
    return [
        f"ip-10-0-{i % 250}-{i % 199}.ec2.internal:{0x1A2B3C4 + i:x}:{i * 2654435761 % 2**64:016x}"
        for i in range(n)
    ]


def gil_gap(work: Callable[[], object]) -> tuple[float, float]:
    """(seconds ``work`` took in a worker thread, longest event-loop tick gap in seconds)."""

    async def main() -> tuple[float, float]:
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await asyncio.to_thread(work)
        took = time.perf_counter() - started
        await asyncio.sleep(0.05)
        task.cancel()
        return took, max(gaps)

    return asyncio.run(main())


def written(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, journal_path(path)) if p.exists())


def bench(n: int, tmp: Path) -> None:
    path = tmp / f"offsets-{n}.json"
    ids = source_ids(n)
    state = OffsetState(path)
    state.advance(pa.array(ids), pa.array(range(123_456_789, 123_456_789 + n), pa.int64()))
    took, gap = gil_gap(state.snapshot)
    print(
        f"{n:>9,} sources: snapshot {took:6.2f} s, {path.stat().st_size / 1e6:6.1f} MB, "
        f"longest event-loop gap {gap * 1000:5.0f} ms"
    )

    flush_ids = pa.array(ids[:FLUSH_SOURCES] * (FLUSH_ROWS // FLUSH_SOURCES))
    flush_offsets = pa.array(range(10**9, 10**9 + FLUSH_ROWS), pa.int64())

    def flush() -> None:
        marks = state.fork()
        marks.keep_mask(flush_ids, flush_offsets)
        marks.advance(flush_ids, flush_offsets)
        commit(marks)

    def commit(marks: OffsetState) -> None:
        started = time.perf_counter()
        state.adopt(marks)
        state.save()
        commit_seconds.append(time.perf_counter() - started)

    commit_seconds: list[float] = []
    flush()  # the journal file exists from here on
    before = written(path)
    took, gap = gil_gap(flush)
    print(
        f"{'':>18} one flush ({FLUSH_ROWS:,} rows, {FLUSH_SOURCES} sources): offsets work "
        f"{took * 1000:5.1f} ms of which adopt+save {commit_seconds[-1] * 1000:5.1f} ms; "
        f"{(written(path) - before) / 1e3:5.1f} kB written; longest event-loop gap "
        f"{gap * 1000:4.0f} ms"
    )

    # A restart with a journal near its bound: the snapshot plus records of 200 sources each.
    bound = max(state.journal_min_bytes, path.stat().st_size)
    saves = 0
    while journal_path(path).stat().st_size + 20_000 < bound and saves < 2000:
        flush_offsets = pa.array(range(10**9 * (saves + 2), 10**9 * (saves + 2) + 200), pa.int64())
        flush_ids = pa.array(ids[(saves * 200) % n :][:200])
        flush()
        saves += 1
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from aggregator.dedup import OffsetState;"
        "t = time.perf_counter(); s = OffsetState(sys.argv[2]).load();"
        "took = time.perf_counter() - t;"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        "print(f'{took:.2f} {int(hwm) // 1024} {len(s)}')"
    )
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code, root, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    print(
        f"{'':>18} restart: load {float(out[0]):5.2f} s, peak RSS {out[1]} MB "
        f"({int(out[2]):,} sources; journal {journal_path(path).stat().st_size / 1e6:.1f} MB "
        f"of {saves + 2} records)"
    )
    path.unlink()
    journal_path(path).unlink(missing_ok=True)


def bench_evict(tmp: Path) -> None:
    """Forgetting sources for the bound, as a flush thread does it while the event loop runs."""
    logging.getLogger("logq.aggregator.dedup").setLevel(logging.ERROR)  # the WARNING it says
    state = OffsetState(tmp / "offsets-evict.json")
    ids = source_ids(MAX_SOURCES)
    for run in range(3):
        # Up to the bound (the sources a client made up since the last time), then the one
        # source more that tips it over.
        while len(state) < MAX_SOURCES:
            part = ids[: min(100_000, MAX_SOURCES - len(state))]
            ids = ids[len(part) :] or [f"made-up-{run}-{i}" for i in range(MAX_SOURCES)]
            state.advance(pa.array(part), pa.array(range(len(part)), pa.int64()))
        tip = pa.array([f"tip-{run}"])
        took, gap = gil_gap(lambda tip=tip: state.advance(tip, pa.array([1], pa.int64())))
        print(
            f"{MAX_SOURCES:>9,} sources: forgetting {MAX_SOURCES - EVICT_TO + 1:,} took "
            f"{took * 1000:5.1f} ms, longest event-loop gap {gap * 1000:4.0f} ms "
            f"({len(state):,} left)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", default="100000,1000000", help="comma-separated counts")
    parser.add_argument(
        "--evict", action="store_true", help="only the cost of forgetting sources for the bound"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logq-offsets-") as tmp:
        if args.evict:
            bench_evict(Path(tmp))
            return
        for n in (int(x) for x in args.sources.split(",")):
            bench(n, Path(tmp))


if __name__ == "__main__":
    main()
