"""logq against the Fluent project's Node.js Forward client and server (``@fluent-org/logger``).

Every other Forward test here speaks the protocol through logq's own ``shipper.wire`` (or the
Python fluent-logger, Message mode only): a misreading of the spec shared by both ends would
pass them all. This implementation shares no code with logq. Its client sends each of the four
modes with acks, EventTime or integer times, and does the shared-key handshake with a user over
TLS; its server takes ``logq-shipper``'s handshake, gzip chunks and ack requests.

The packages are installed by ``make test`` into ``.venv/node`` (pinned in
``tests/interop/package.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.demohost import write_host
from tests.aggregator.helpers import AggregatorProc, read_table, start_aggregator
from tests.shipper.tlsgen import make_ca_and_server, make_client_cert
from tests.support.pipeline import run_shipper_once

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "fluent_node.js"
NODE_MODULES = HERE.parent.parent / ".venv" / "node" / "node_modules"
MODES = ("Message", "Forward", "PackedForward", "CompressedPackedForward")
KEY = "interop-shared-key-0123456789abcdef"


def _node_env() -> dict[str, str]:
    node = shutil.which("node")
    assert node, "Node.js is not installed: `apt-get install nodejs npm`, then `make test`"
    assert (NODE_MODULES / "@fluent-org" / "logger").is_dir(), (
        f"@fluent-org/logger is not installed in {NODE_MODULES}: run `make test`, which "
        "installs it (npm, tests/interop/package.json)"
    )
    return {**os.environ, "NODE_PATH": str(NODE_MODULES)}


def send(port: int, **options: Any) -> dict[str, Any]:
    """Run the Node client's ``send`` (see fluent_node.js); its summary."""
    done = subprocess.run(
        ["node", str(SCRIPT), "send", json.dumps({"port": port, **options})],
        env=_node_env(),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def node_serving(folder: Path, **options: Any) -> Iterator[tuple[int, Path]]:
    """The Node server's ``serve`` with ``options`` (see fluent_node.js): ``(port, the file
    where it writes each entry it receives)``."""
    entries = folder / "entries.jsonl"
    with entries.open("w") as out:
        proc = subprocess.Popen(
            ["node", str(SCRIPT), "serve", json.dumps(options)],
            env=_node_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while not entries.read_text().strip() and proc.poll() is None:
            assert time.monotonic() < deadline, "the Node server did not start"
            time.sleep(0.05)
        first = entries.read_text().splitlines()[0]
        assert proc.poll() is None, first
        yield json.loads(first)["port"], entries
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def node_server(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """The Node server with a shared key and a user over TLS: ``(port, entries file, CA)``."""
    ca, cert, key = make_ca_and_server(tmp_path)
    users = {"shipper": "pw-9"}
    with node_serving(tmp_path, sharedKey=KEY, users=users, cert=str(cert), key=str(key)) as (
        port,
        entries,
    ):
        yield port, entries, ca


def _stored(agg: AggregatorProc) -> Counter[str]:
    """Each message the (stopped) aggregator stored in container_logs, with its count."""
    return Counter(read_table(agg.warehouse, "container_logs")["message"].to_pylist())


def _received(entries: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in entries.read_text().splitlines()[1:]]


def test_each_mode_with_acks_lands_once_with_its_times(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path)
    base_ms = (time.time_ns() // 1_000_000) - 60_000
    times_ms = [base_ms + 1_000 * i + i % 1000 for i in range(30)]  # odd milliseconds
    try:
        for mode in MODES:
            summary = send(
                agg.port, mode=mode, ack=True, milliseconds=True, count=30, tag="node",
                prefix=mode, service="nodesvc", times=times_ms,
            )  # fmt: skip
            assert summary == {"ok": 30, "failed": 0, "errors": []}, mode
        # Integer times, the client's default: it sends the whole seconds of each time.
        summary = send(
            agg.port, mode="Forward", ack=True, count=10, tag="node", prefix="seconds",
            service="nodesvc", times=times_ms[:10],
        )  # fmt: skip
        assert summary == {"ok": 10, "failed": 0, "errors": []}
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    rows = read_table(agg.warehouse, "container_logs").to_pylist()
    got = Counter(r["message"] for r in rows)
    expected = [f"{m} {i}" for m in MODES for i in range(30)] + [f"seconds {i}" for i in range(10)]
    assert got == Counter(expected)  # every acked record, once
    by_message = {r["message"]: r for r in rows}
    for mode in MODES:
        for i in range(30):
            row = by_message[f"{mode} {i}"]
            assert row["service"] == "nodesvc"
            assert round(row["timestamp"].timestamp() * 1000) == times_ms[i], (mode, i)
    for i in range(10):
        assert by_message[f"seconds {i}"]["timestamp"].timestamp() == times_ms[i] // 1000


def test_events_batched_into_big_messages_each_land_once(tmp_path: Path) -> None:
    """The client's ``flushInterval`` batches thousands of events into one message."""
    agg = start_aggregator(tmp_path)
    try:
        for mode in ("Forward", "CompressedPackedForward"):
            summary = send(
                agg.port, mode=mode, ack=True, milliseconds=True, count=40_000, tag="bulk",
                prefix=mode, service="bulk", flushInterval=50,
            )  # fmt: skip
            assert summary == {"ok": 40_000, "failed": 0, "errors": []}, mode
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    expected = [f"{m} {i}" for m in ("Forward", "CompressedPackedForward") for i in range(40_000)]
    assert _stored(agg) == Counter(expected)
    log = agg.log_text()
    assert "level=warning" not in log and "level=error" not in log, log


def test_handshake_with_user_over_tls_and_refusals(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server(tmp_path)
    agg = start_aggregator(
        tmp_path,
        extra=["--shared-key", KEY, "--user", "alice:pw-1", "--tls-cert", str(cert),
               "--tls-key", str(key)],
    )  # fmt: skip
    secure = {"ack": True, "ca": str(ca), "tag": "node", "service": "secure", "count": 20}
    try:
        wrong_key = send(
            agg.port, mode="PackedForward", sharedKey="not-the-key", username="alice",
            password="pw-1", prefix="wrong key", waitMs=20_000, endOnError=True, **secure,
        )  # fmt: skip
        assert wrong_key["ok"] == 0
        assert any("shared_key mismatch" in e for e in wrong_key["errors"]), wrong_key
        wrong_password = send(
            agg.port, mode="PackedForward", sharedKey=KEY, username="alice", password="pw-2",
            prefix="wrong password", waitMs=20_000, endOnError=True, **secure,
        )  # fmt: skip
        assert wrong_password["ok"] == 0
        assert any("username/password mismatch" in e for e in wrong_password["errors"])
        for mode in ("Message", "CompressedPackedForward"):
            right = send(
                agg.port, mode=mode, sharedKey=KEY, username="alice", password="pw-1",
                milliseconds=True, prefix=mode, **secure,
            )  # fmt: skip
            assert right == {"ok": 20, "failed": 0, "errors": []}, mode
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    assert _stored(agg) == Counter(
        f"{m} {i}" for m in ("Message", "CompressedPackedForward") for i in range(20)
    )
    log = agg.log_text()
    assert "handshake failed from 'node-client': shared_key mismatch" in log


def test_mutual_tls_takes_the_client_with_a_certificate_its_ca_signed(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server(tmp_path)
    client_ca, client_cert, client_key = make_client_cert(tmp_path)
    agg = start_aggregator(
        tmp_path,
        extra=["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(client_ca)],
    )
    common = {"ack": True, "ca": str(ca), "tag": "node", "service": "mtls", "count": 10}
    try:
        # Refused in the TLS handshake, which this client retries quietly: none of its 10
        # records is acked within 2 s (and none lands: checked below).
        without = send(agg.port, mode="PackedForward", prefix="no cert", waitMs=2000, **common)
        assert without["ok"] == 0, without
        summary = send(
            agg.port, mode="PackedForward", prefix="cert", cert=str(client_cert),
            key=str(client_key), **common,
        )  # fmt: skip
        assert summary == {"ok": 10, "failed": 0, "errors": []}
        assert agg.stop() == 0, agg.log_text()
    finally:
        agg.stop()
    assert _stored(agg) == Counter(f"cert {i}" for i in range(10))
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in agg.log_text()


def _docker_lines(root: Path) -> Counter[str]:
    """The ``log`` of every json-file entry under ``root``, as the shipper sends it."""
    lines: Counter[str] = Counter()
    for path in root.glob("*/*-json.log"):
        for raw in path.read_text().splitlines():
            text = json.loads(raw)["log"]
            lines[text.removesuffix("\n")] += 1
    return lines


def test_shipper_to_the_node_server_over_tls_with_a_shared_key_and_user(
    tmp_path: Path, node_server: tuple[int, Path, Path], subprocess_env: dict[str, str]
) -> None:
    port, entries, ca = node_server
    manifest = write_host(tmp_path / "containers", seed=5, requests=60, long_line=False)
    secure = ["--shared-key", KEY, "--tls", "--tls-ca", str(ca), "--username", "shipper"]
    shipped = run_shipper_once(
        f"127.0.0.1:{port}", manifest.root, tmp_path / "state", subprocess_env,
        *secure, "--password", "pw-9", "--compress", "gzip",
    )  # fmt: skip
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    received = _received(entries)
    assert Counter(e["record"]["log"] for e in received) == _docker_lines(manifest.root)
    assert len(received) == manifest.docker_entries
    services = {c.service for c in manifest.containers}
    assert {e["record"]["service"] for e in received} == services
    assert {e["tag"] for e in received} == {f"logq.{s}" for s in services}
    now = time.time()
    assert all(now - 4 * 3600 < e["time"] <= now for e in received)

    wrong_key = run_shipper_once(
        f"127.0.0.1:{port}", manifest.root, tmp_path / "state-2", subprocess_env,
        "--shared-key", "a-different-key-0123456789abcdef", "--tls", "--tls-ca", str(ca),
        "--username", "shipper", "--password", "pw-9",
    )  # fmt: skip
    assert wrong_key.returncode != 0
    assert "rejected the handshake: 'shared key mismatch'" in wrong_key.stderr, wrong_key.stderr
    wrong_password = run_shipper_once(
        f"127.0.0.1:{port}", manifest.root, tmp_path / "state-3", subprocess_env,
        *secure, "--password", "pw-8",
    )  # fmt: skip
    assert wrong_password.returncode != 0
    assert "'username/password mismatch'" in wrong_password.stderr, wrong_password.stderr
    assert "check --shared-key and --username/--password" in wrong_password.stderr
    assert len(_received(entries)) == len(received)  # nothing more arrived


def test_shipper_presents_its_client_certificate_to_the_node_server(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Mutual TLS against another TLS server (Node's, requestCert and rejectUnauthorized): no
    certificate is refused, with the hint; the one its CA signed delivers every line."""
    ca, cert, key = make_ca_and_server(tmp_path)
    client_ca, client_cert, client_key = make_client_cert(tmp_path)
    manifest = write_host(tmp_path / "containers", seed=6, requests=20, long_line=False)
    tls = ["--tls", "--tls-ca", str(ca), "--retry-timeout", "3"]
    with node_serving(tmp_path, cert=str(cert), key=str(key), clientCa=str(client_ca)) as (
        port,
        entries,
    ):
        refused = run_shipper_once(
            f"127.0.0.1:{port}", manifest.root, tmp_path / "no-cert", subprocess_env, *tls
        )
        assert refused.returncode != 0, refused.stderr
        assert "pass --tls-cert and --tls-key" in refused.stderr, refused.stderr
        assert _received(entries) == []
        shipped = run_shipper_once(
            f"127.0.0.1:{port}", manifest.root, tmp_path / "state", subprocess_env, *tls,
            "--tls-cert", str(client_cert), "--tls-key", str(client_key),
        )  # fmt: skip
        assert shipped.returncode == 0, shipped.stdout + shipped.stderr
        received = _received(entries)
    assert Counter(e["record"]["log"] for e in received) == _docker_lines(manifest.root)
