"""Lines read past a message (kept for the next, see ``Tailer._fit``) count in
``--max-inflight-bytes``: many backlogged sources do not hold a read-ahead each outside it."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from shipper.config import load_config
from shipper.daemon import Shipper
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args

SOURCES = 50
LINES = 120
LIMIT = 16384
BATCH = 2048


def _text(source: int, i: int) -> str:
    return f"{source:02d}-{i:03d} " + "x" * (40 + (i * 53 + source * 11) % 200)


def test_kept_lines_of_many_backlogged_sources_stay_within_the_inflight_limit(
    tmp_path: Path, receiver: Receiver
) -> None:
    """50 files of backlog, a window of 16 KiB and messages of 2 KiB: at every turn of the
    loop the lines the tailers keep past their messages are counted in the window, and the
    window holds its limit; every line arrives exactly once. Before, each source kept up to
    a 64 KiB read's lines beyond the window (about 3 MB here, against 16 KiB)."""
    root = tmp_path / "containers"
    expected = []
    for s in range(SOURCES):
        texts = [_text(s, i) for i in range(LINES)]
        make_container(root, f"{s:02d}" * 32, f"app{s}", lines=texts)
        expected += texts
    args = ("--once", "--compress", "gzip", "--batch-bytes", str(BATCH))
    cfg = load_config(
        shipper_args(tmp_path, receiver, *args, "--max-inflight-bytes", str(LIMIT), docker=root)
    )
    samples: list[tuple[int, int]] = []

    async def go() -> int:
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        while not run.done():
            kept = sum(r.tailer.kept_bytes for r in list(shipper.runners.values()))
            samples.append((kept, shipper.window.used))
            await asyncio.sleep(0)
        return await run

    assert asyncio.run(asyncio.wait_for(go(), 120)) == 0
    assert max(kept for kept, _ in samples) > 0  # lines were kept past messages
    over = [(kept, used) for kept, used in samples if not kept <= used <= LIMIT]
    assert over == [], f"{len(over)} turns with (kept, counted) beyond ({LIMIT}): {over[:3]}"
    assert Counter(receiver.lines()) == Counter(expected)
    assert receiver.duplicates == 0
