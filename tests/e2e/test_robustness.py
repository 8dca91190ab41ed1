"""Bad peers cannot hurt good ones: junk on the Forward port while a real shipper delivers.

An aggregator listens on a network port; port scanners, health checkers speaking HTTP, and
clients that die mid-message will connect. Each must cost only its own connection: the shipper
shipping at the same time still delivers every line exactly once.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from pathlib import Path

import msgpack
import pytest

from cli.demohost import write_host
from tests.support.expect import assert_tables_match
from tests.support.pipeline import run_shipper_once, start_aggregator
from tests.support.procs import LOCALHOST

pytestmark = pytest.mark.integration


def _junk_payloads() -> list[bytes]:
    rng = random.Random(99)
    truncated = msgpack.packb(["logq.evil", [[1700000000, {"log": "x" * 100}]], {"chunk": "YQ=="}])
    return [
        b"GET /healthz HTTP/1.1\r\nHost: aggregator\r\n\r\n",
        bytes(rng.getrandbits(8) for _ in range(4096)),
        truncated[: len(truncated) // 2],  # a client that died mid-message
        msgpack.packb({"not": "a forward message"}),
        msgpack.packb(["tag-only"]),
        b"\xdd\xff\xff\xff\xff",  # array32 header claiming 4 billion elements
    ]


def _send(port: int, payload: bytes) -> None:
    with contextlib.suppress(OSError), socket.create_connection((LOCALHOST, port), 5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            sock.recv(1024)


def test_junk_connections_do_not_disturb_a_shipper(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    manifest = write_host(tmp_path / "containers", seed=13, requests=200, long_line=False)
    warehouse = str(tmp_path / "warehouse")
    agg = start_aggregator(warehouse, tmp_path, subprocess_env)
    try:
        threads = [
            threading.Thread(target=_send, args=(agg.port, p), daemon=True)
            for p in _junk_payloads() * 3
        ]
        for t in threads:
            t.start()
        done = run_shipper_once(agg.address, manifest.root, tmp_path / "state", subprocess_env)
        for t in threads:
            t.join(30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert agg.proc.poll() is None, f"aggregator died:\n{agg.log.read_text()[-3000:]}"
        assert agg.terminate() == 0, agg.log.read_text()[-3000:]
    finally:
        agg.kill()
    assert_tables_match(manifest, warehouse, subprocess_env, socket.gethostname())
