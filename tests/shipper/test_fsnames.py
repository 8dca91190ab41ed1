"""Files with unusual names (not UTF-8, a rotated suffix of other digits): never a crash."""

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
from tests.shipper.test_replaced_while_down import ship_once

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


def test_a_rotated_copy_whose_suffix_is_no_number_is_no_crash(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A sibling ``app.log.²``: ``'²'.isdigit()`` is True, but ``int('²')`` raises. Taken for
    Docker's ``.1``/``.2`` numbering, it ended the restarted shipper with a ValueError. Such a
    suffix orders the file by its time alone, as any other name that is not a number."""
    log = tmp_path / "app.log"
    log.write_bytes(b"first\n")
    ship_once(tmp_path, receiver, log)
    (tmp_path / "app.log.\u00b2").write_bytes(b"copy line\n")
    with log.open("ab") as f:
        f.write(b"second\n")
    ship_once(tmp_path, receiver, log)
    lines = [r["log"] for _, _, r in receiver.records]
    assert lines.count("first") == 1 and lines.count("second") == 1, lines
    assert lines.count("copy line") == 1, lines  # newer than what was read: a rotated copy
