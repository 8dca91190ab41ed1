"""An aggregator address that answers bytes that are not the Forward protocol.

A wrong port, another service or a broken peer may answer garbage (``0xc1`` is never valid
msgpack) or valid msgpack that is no ack map. The shipper must treat it like a connection error:
drop the connection, back that endpoint off and fail over to the healthy one -- in ``--once``
mode without "internal error", in follow mode without a source crash-looping with tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
from pathlib import Path

import msgpack
import pyarrow.parquet as pq
import pytest

from shipper.config import Endpoint, parse_endpoint
from shipper.sender import ForwardClient, rendezvous_order
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root
from tests.shipper.tailing import new_source_id
from tests.shipper.test_sender import message
from tests.support.pipeline import start_aggregator
from tests.support.procs import console_script, start_group, stop_group, wait_until

#: What the bad peer answers to anything it receives.
ANSWERS = {"not-msgpack": b"\xc1", "not-an-ack": msgpack.packb([1, 2, 3])}


class BadPeer:
    """A TCP server on 127.0.0.1 that answers every read with ``answer``, counting connections;
    with ``greet`` it also sends ``answer`` first (where a Forward server sends HELO)."""

    def __init__(self, answer: bytes, greet: bool = False) -> None:
        self.answer = answer
        self.greet = greet
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                if self.greet:
                    conn.sendall(self.answer)
                while conn.recv(65536):
                    conn.sendall(self.answer)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def affinity_preferring(ep: Endpoint, endpoints: tuple[Endpoint, ...]) -> str:
    """A source id that ranks ``ep`` first (so its batches try ``ep`` before the others)."""
    for i in range(1000):
        if rendezvous_order(f"src-{i}", endpoints)[0] == ep:
            return f"src-{i}"
    raise AssertionError("no affinity prefers the endpoint")


@pytest.mark.parametrize("answer", sorted(ANSWERS))
@pytest.mark.parametrize("once", [True, False], ids=["once", "follow"])
def test_client_fails_over_from_a_peer_answering_garbage(answer: str, once: bool) -> None:
    bad = BadPeer(ANSWERS[answer])
    good = Receiver()
    try:
        endpoints = (parse_endpoint(bad.address), parse_endpoint(good.address))
        affinity = affinity_preferring(endpoints[0], endpoints)

        async def go() -> None:
            c = ForwardClient(
                endpoints,
                hostname="h",
                backoff_base=0.01,
                backoff_cap=0.1,
                ack_timeout=30,
                give_up_after=10 if once else None,
            )
            for i in range(3):
                payload, chunk = message(4, first=i * 4)
                assert await c.deliver(payload, chunk, affinity=affinity) == endpoints[1]
            assert "answered" in c._health[endpoints[0]].last_error
            await c.close()

        asyncio.run(go())
        assert good.lines() == [f"l{i}" for i in range(12)]
        assert good.duplicates == 0
        assert bad.connections >= 1
    finally:
        bad.close()
        good.close()


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_garbage_instead_of_helo_fails_over(answer: str) -> None:
    """With a shared key the server speaks first; garbage there is a connection error too."""
    bad = BadPeer(ANSWERS[answer], greet=True)
    good = Receiver(shared_key="k")
    try:
        endpoints = (parse_endpoint(bad.address), parse_endpoint(good.address))
        affinity = affinity_preferring(endpoints[0], endpoints)

        async def go() -> None:
            c = ForwardClient(
                endpoints, hostname="h", shared_key="k", backoff_base=0.01, give_up_after=10
            )
            payload, chunk = message(3)
            assert await c.deliver(payload, chunk, affinity=affinity) == endpoints[1]
            assert str(endpoints[0]) in c._health[endpoints[0]].last_error
            await c.close()

        asyncio.run(go())
        assert good.lines() == ["l0", "l1", "l2"] and bad.connections >= 1
    finally:
        bad.close()
        good.close()


def write_files(plain: Path, bad: Endpoint, good: Endpoint, hostname: str) -> list[str]:
    """Log files, at least one of whose sources prefers the bad endpoint; returns the lines."""
    plain.mkdir()
    lines: list[str] = []
    for n in range(64):
        body = [f"f{n}-line-{i}" for i in range(20)]
        path = plain / f"app-{n}.log"
        path.write_text("".join(f"{line}\n" for line in body))
        lines += body
        if n >= 2 and rendezvous_order(new_source_id(hostname, path), (bad, good))[0] == bad:
            return lines
    raise AssertionError("no source prefers the bad endpoint")


def landed(warehouse: Path) -> list[str]:
    out: list[str] = []
    for f in sorted(warehouse.glob("container_logs/**/*.parquet")):
        out += pq.read_table(f, columns=["message"]).column("message").to_pylist()
    return out


def assert_clean_failover(log: str, bad: BadPeer, expect: str) -> None:
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    assert "source failed" not in log, log[-3000:]
    failed = [line for line in log.splitlines() if bad.address in line and expect in line]
    assert failed, f"no line says what the bad peer did:\n{log[-3000:]}"


@pytest.mark.integration
@pytest.mark.parametrize("answer", sorted(ANSWERS))
@pytest.mark.parametrize("once", [True, False], ids=["once", "follow"])
def test_shipper_delivers_everything_once_through_the_healthy_aggregator(
    tmp_path: Path, subprocess_env: dict[str, str], answer: str, once: bool
) -> None:
    bad = BadPeer(ANSWERS[answer])
    agg = start_aggregator(str(tmp_path / "warehouse"), tmp_path, subprocess_env)
    shipper: subprocess.Popen | None = None
    try:
        expected = write_files(
            tmp_path / "plain", parse_endpoint(bad.address), parse_endpoint(agg.address), "h"
        )
        state = tmp_path / "state"
        cmd = [
            str(console_script("logq-shipper")),
            *("--aggregator", bad.address, "--aggregator", agg.address),
            *("--docker-root", str(empty_root(tmp_path))),
            *("--cri-root", str(empty_root(tmp_path))),
            *("--path", str(tmp_path / "plain" / "*.log"), "--state-dir", str(state)),
            *("--hostname", "h", "--retry-timeout", "60", "--ack-timeout", "30"),
        ]
        log = tmp_path / "shipper.log"
        if once:
            done = subprocess.run(
                [*cmd, "--once"], env=subprocess_env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stderr[-3000:]
            log.write_text(done.stderr)
        else:
            shipper = start_group(cmd, log, env=subprocess_env)
            total = sum(p.stat().st_size for p in (tmp_path / "plain").glob("*.log"))

            def all_acked() -> bool:
                try:
                    doc = json.loads((state / "checkpoints.json").read_bytes())
                except (OSError, ValueError):
                    return False
                return sum(v["offset"] for v in doc["files"].values()) == total

            wait_until(all_acked, 120, "logq-shipper acks", proc=shipper, log=log)
            shipper.send_signal(signal.SIGTERM)
            assert shipper.wait(60) == 0
        assert agg.terminate() == 0
        assert_clean_failover(
            log.read_text(), bad, "not msgpack" if answer == "not-msgpack" else "ack map"
        )
        assert bad.connections >= 1
        got = landed(tmp_path / "warehouse")
        assert sorted(got) == sorted(expected), f"{len(got)} rows for {len(expected)} lines"
    finally:
        if shipper is not None:
            stop_group(shipper)
        agg.kill()
        bad.close()


def test_preview_of_wire_answers_is_short() -> None:
    """The one log line stays one readable line even when the peer sends a huge object."""
    from shipper.sender import _protocol_error

    text = _protocol_error(parse_endpoint("a:1"), obj=["x" * 10_000])
    assert len(text) < 200 and "a:1" in text
