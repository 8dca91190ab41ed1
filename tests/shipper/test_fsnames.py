"""Files whose names are not UTF-8: shipped under a readable name, never a crash."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from prometheus_client import generate_latest

from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.fsnames import as_text
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args

#: ``résumé.log`` written in Latin-1 (or a UTF-8 ``café.log`` under ``LC_ALL=C PYTHONUTF8=0``,
#: which Python decodes the same way: bytes it cannot decode kept as lone surrogates).
LATIN1_NAME = os.fsdecode(b"r\xe9sum\xe9.log")


def test_as_text_reads_the_bytes_as_utf8() -> None:
    assert as_text(os.fsdecode("café.log".encode())) == "café.log"
    assert as_text(LATIN1_NAME) == "r\ufffdsum\ufffd.log"
    assert as_text(Path("/x") / LATIN1_NAME).encode("utf-8")  # encodable


def test_a_file_whose_name_is_no_utf8_is_shipped(tmp_path: Path) -> None:
    """It stopped the shipper: ``internal error: UnicodeEncodeError(... surrogates not
    allowed)`` with ``--once``, and "source failed, will retry" at every scan as a daemon,
    from the service name in the Forward message; its path also failed every /metrics scrape
    (``logq_shipper_bytes_behind{path=...}``)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / LATIN1_NAME).write_bytes(b"caf\xc3\xa9 line\n")
    (logs / "plain.log").write_bytes(b"other\n")
    receiver = Receiver()
    cfg = load_config(
        shipper_args(tmp_path, receiver, "--path", str(logs / "*.log"), "--poll-interval", "0.05")
    )

    async def go() -> bytes:
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        async with asyncio.timeout(30):
            while len(receiver.records) < 2 and not run.done():
                await asyncio.sleep(0.02)
        shipper._update_gauges()
        scrape = generate_latest(shipper.metrics.registry)
        shipper.request_stop()
        assert await run == 0
        return scrape

    try:
        scrape = asyncio.run(go())
    finally:
        receiver.close()
    got = sorted(
        (tag, r["service"], r["container_name"], r["log"]) for tag, _, r in receiver.records
    )
    assert got == [
        ("logq.plain", "plain", "plain.log", "other"),
        ("logq.r\ufffdsum\ufffd", "r\ufffdsum\ufffd", "r\ufffdsum\ufffd.log", "café line"),
    ]
    assert f'path="{logs}/r\ufffdsum\ufffd.log"'.encode() in scrape
