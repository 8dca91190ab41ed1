"""Checkpoint registry writes per batch while a file is on its first-choice aggregator, and while
it is failed over to another (its placement saved before each batch, see
``shipper.sender.Placements``), at a low and a high line rate, and at a rate the shipper is
behind (a backlog: the next batch is read while one is in flight, and its reach is saved with
that one's acknowledgement, see ``shipper.checkpoint.Registry.reach``).

    .venv/bin/python bench/failover_writes.py [--rates 20,20000,100000] [--seconds 5] [--src DIR]

Runs a shipper in this process (one Docker json-file container, two of the tests' Forward
receivers, which ack every chunk), writes lines at each rate for ``--seconds`` with both
aggregators up, then again with the file's first choice closed (connection refused: every
batch goes to the other), and prints per phase: lines shipped, batches (Forward messages),
registry writes (``Registry.write`` calls), and writes per batch. ``--src`` imports the shipper
of another checkout (e.g. ``git archive HEAD | tar -x -C /tmp/head``) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(src: Path | None) -> None:
    sys.path.insert(0, str(REPO))
    if src is not None:
        sys.path.insert(0, str(src.resolve()))


async def _write_lines(log: Path, rate: int, seconds: float, first: int) -> int:
    """Append ``rate`` lines a second to ``log`` for ``seconds``, in ticks of 50 ms."""
    from tests.shipper.hostgen import docker_line

    per_tick = max(1, rate // 20)
    start, n = time.monotonic(), 0
    with open(log, "ab", buffering=0) as f:
        while time.monotonic() - start < seconds:
            f.write(b"".join(docker_line(f"line {first + n + i}", n) for i in range(per_tick)))
            n += per_tick
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
    return n


async def _run(rate: int, seconds: float, work: Path) -> list[tuple[str, int, int, int]]:
    from shipper.checkpoint import Registry
    from shipper.config import load_config
    from shipper.daemon import Shipper
    from tests.shipper.hostgen import make_container
    from tests.shipper.receiver import Receiver
    from tests.shipper.shipping import shipper_args, until

    writes = 0
    original = Registry.write

    def counted(self: Registry, data: bytes) -> None:
        nonlocal writes
        writes += 1
        original(self, data)

    Registry.write = counted  # type: ignore[method-assign]
    root = work / f"docker-{rate}"
    log = make_container(root, "a" * 64, "app", lines=["first"])
    receivers = Receiver(), Receiver()
    args = shipper_args(work, receivers[0], "--poll-interval", "0.05", docker=root)
    args[args.index(str(work / "state"))] = str(work / f"state-{rate}")
    args += ["--aggregator", receivers[1].address]
    rows = []
    down: list[Receiver] = []
    try:
        shipper = Shipper(load_config(args))
        run = asyncio.create_task(shipper.run())
        await until(lambda: sum(len(r.records) for r in receivers) == 1)
        first, other = sorted(receivers, key=lambda r: not r.records)
        shipped = 1
        for phase in ("first choice", "failed over"):
            if phase == "failed over":
                first.close()  # refused from now on: every batch goes to the other
                down.append(first)
            await asyncio.sleep(0.5)  # the last phase's checkpoints written
            w0, m0 = writes, first.messages + other.messages
            n = await _write_lines(log, rate, seconds, shipped)
            shipped += n
            await until(lambda total=shipped: sum(len(r.records) for r in receivers) == total, 60.0)
            await asyncio.sleep(0.5)
            rows.append((phase, n, first.messages + other.messages - m0, writes - w0))
        shipper.request_stop()
        await run
    finally:
        Registry.write = original  # type: ignore[method-assign]
        for r in receivers:
            if r not in down:
                r.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rates", default="20,20000,100000", help="lines per second, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--src", type=Path, help="the checkout whose shipper runs")
    args = parser.parse_args()
    _imports(args.src)
    logging.disable(logging.WARNING)  # the failed deliveries to the closed aggregator
    import shipper

    print(f"shipper from {Path(shipper.__file__).parent.parent}")
    print(f"{'lines/s':>8} {'phase':<13} {'lines':>7} {'batches':>8} {'writes':>7} {'w/batch':>8}")
    for rate in (int(r) for r in args.rates.split(",")):
        with tempfile.TemporaryDirectory(prefix="logq-failover-writes-") as tmp:
            for phase, lines, batches, writes in asyncio.run(_run(rate, args.seconds, Path(tmp))):
                per = writes / batches if batches else float("nan")
                print(f"{rate:>8} {phase:<13} {lines:>7} {batches:>8} {writes:>7} {per:>8.2f}")


if __name__ == "__main__":
    main()
