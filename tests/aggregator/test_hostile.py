"""Hostile and malformed input closes only its own connection; handshake and TLS work."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import msgpack
import pytest

from shipper import wire
from tests.aggregator.helpers import (
    AggregatorProc,
    read_acks,
    read_table,
    record,
    start_aggregator,
    wait_rows,
)

pytestmark = pytest.mark.integration

NOW = time.time_ns()


def closed_by_server(sock: socket.socket, timeout: float = 15.0) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def good_chunk(agg: AggregatorProc, sock: socket.socket, name: str) -> None:
    frame = wire.encode_packed_forward("logq.good", [(NOW, record(name, service="good"))], name)
    sock.sendall(frame)
    assert read_acks(sock, 1) == [name]


HOSTILE = {
    "junk": b"\xc1\xc1\xc1 this is not msgpack",
    # Fixed random bytes: a truly random buffer can begin like a valid, unfinished array, which
    # no server can tell from a slow client before its idle timeout.
    "random": b"\xc4\x05" + random.Random(20261128).randbytes(4096),
    "str32_header": b"\xdb\x40\x00\x00\x00 announces a 1 GiB string",
    "map_header": msgpack.packb({"tag": "x"})[:1] + b"\xff" * 100,
    "not_array": msgpack.packb({"tag": "x"}),
    "int_tag": msgpack.packb([123, [[1, {"log": "x"}]]]),
    # A record that is not a map is no longer hostile: a bad entry, stored as a marked row
    # beside the good ones (tests/aggregator/test_bad_entries.py).
    "entries_a_map": msgpack.packb(["t", {"a": 1}, {"chunk": "x"}]),
    # A string time is no longer hostile: stamped with the receive time, as Fluentd does
    # (tests/aggregator/test_event_times.py).
    "options_not_map": msgpack.packb(["t", b"", "gzip"]),
    "bad_gzip": msgpack.packb(["t", b"\x1f\x8bnot gzip", {"compressed": "gzip"}]),
    "bad_compression": msgpack.packb(["t", b"", {"compressed": "zstd"}]),
    "bad_packed_entries": msgpack.packb(["t", b"\xc1\xc1", {"chunk": "x"}]),
    "unknown_ext_time": msgpack.packb(["t", msgpack.ExtType(5, b"12345678"), {"log": "x"}]),
}


def test_malformed_input_closes_only_that_connection(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path, extra=["--max-frame-bytes", str(8 * 1024 * 1024)])
    try:
        with agg.connect() as bystander:
            good_chunk(agg, bystander, "before")
            for name, payload in HOSTILE.items():
                with agg.connect() as sock:
                    sock.sendall(payload)
                    assert closed_by_server(sock), f"{name}: connection left open"
                good_chunk(agg, bystander, f"after-{name}")
            # A truncated frame, then the client goes away: nothing acked, nothing breaks.
            with agg.connect() as sock:
                frame = wire.encode_packed_forward("logq.t", [(NOW, record("cut"))], "cut")
                sock.sendall(frame[: len(frame) // 2])
            # A 100 MB message: refused as soon as its header declares more than
            # --max-frame-bytes (tests/aggregator/test_declared_size.py).
            with agg.connect() as sock:
                big = wire.pack(["logq.big", b"x" * (100 * 1024 * 1024), {"chunk": "big"}])
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(big)
                assert closed_by_server(sock)
                del big
            good_chunk(agg, bystander, "last")
        table = wait_rows(agg.warehouse, "container_logs", len(HOSTILE) + 2, agg)
    finally:
        assert agg.stop() == 0
    messages = set(table["message"].to_pylist())
    assert messages == {"before", "last", *(f"after-{n}" for n in HOSTILE)}
    log = agg.log_text()
    assert "not the Forward protocol" in log
    assert "over --max-frame-bytes (8,388,608 bytes): refused from its headers" in log


def _handshake(sock: socket.socket, key: str, hostname: str = "client-1") -> list:
    unpacker = wire.new_unpacker()
    unpacker.feed(sock.recv(65536))
    helo = next(unpacker)
    assert helo[0] == "HELO"
    nonce = helo[1]["nonce"]
    salt = os.urandom(16)
    sock.sendall(wire.encode_ping(hostname, salt, nonce, key))
    data = sock.recv(65536)
    unpacker.feed(data)
    pong = next(unpacker)
    assert pong[0] == "PONG"
    if pong[1]:
        server_host = pong[3]
        assert pong[4] == wire.pong_digest(salt, server_host, nonce, key)
    return pong


def test_shared_key_handshake_success_and_failure(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path, extra=["--shared-key", "s3cr3t"])
    try:
        with agg.connect() as sock:
            pong = _handshake(sock, "s3cr3t")
            assert pong[1] is True
            good_chunk(agg, sock, "authed")
        with agg.connect() as sock:
            pong = _handshake(sock, "wrong-key")
            assert pong[1] is False and "shared_key" in pong[2]
            assert closed_by_server(sock)
        with agg.connect() as sock:  # no PING at all: data first
            sock.recv(65536)
            sock.sendall(wire.encode_packed_forward("logq.x", [(NOW, record("sneaky"))], "s"))
            assert closed_by_server(sock)
        table = wait_rows(agg.warehouse, "container_logs", 1, agg)
    finally:
        assert agg.stop() == 0
    assert table["message"].to_pylist() == ["authed"]
    assert "shared_key mismatch" in agg.log_text()


def test_an_unauthenticated_client_cannot_make_the_server_buffer_a_huge_ping(
    tmp_path: Path,
) -> None:
    """Before its handshake a client could send a PING of up to --max-frame-bytes (a 30 MiB
    hostname): the server kept reading it for up to the handshake timeout, 30 MiB per
    connection outside any authentication. It is closed once a PING's worth of bytes came
    without one, and a good client right behind it is served."""
    agg = start_aggregator(tmp_path, extra=["--shared-key", "s3cr3t"])
    try:
        with agg.connect() as sock:
            sock.recv(65536)  # HELO
            sock.sendall(b"\x92\xa4PING\xc6" + (30 << 20).to_bytes(4, "big"))
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(b"x" * (1 << 20))
            assert closed_by_server(sock)
        with agg.connect() as sock:
            assert _handshake(sock, "s3cr3t")[1] is True
            good_chunk(agg, sock, "authed")
    finally:
        assert agg.stop() == 0
    assert "no complete PING in the first 65536 bytes" in agg.log_text()


def test_a_wrong_user_is_told_to_check_its_user_not_its_shared_key(tmp_path: Path) -> None:
    """Fluentd's ``<security><user>``: the shared key was right, so the warning must point the
    operator at the username and password (``--user``), not at the shared key."""
    agg = start_aggregator(tmp_path, extra=["--shared-key", "s3cr3t", "--user", "alice:wonder"])
    try:
        with agg.connect() as sock:
            unpacker = wire.new_unpacker()
            unpacker.feed(sock.recv(65536))
            helo = next(unpacker)
            nonce, auth = helo[1]["nonce"], helo[1]["auth"]
            sock.sendall(
                wire.encode_ping("fluentd-1", os.urandom(16), nonce, "s3cr3t", "alice", "x", auth)
            )
            unpacker.feed(sock.recv(65536))
            pong = next(unpacker)
            assert pong[1] is False and pong[2] == "username/password mismatch"
            assert closed_by_server(sock)
    finally:
        assert agg.stop() == 0
    warning = next(line for line in agg.log_text().splitlines() if "handshake failed" in line)
    assert "username/password mismatch" in warning
    assert "shared key" not in warning and "--user" in warning


def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    agg = start_aggregator(tmp_path, extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        with agg.connect() as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            good_chunk(agg, sock, "over-tls")
        with agg.connect() as plain:  # a plaintext client is refused, the server carries on
            plain.sendall(wire.encode_packed_forward("logq.x", [(NOW, record("plain"))], "p"))
            assert closed_by_server(plain)
        table = wait_rows(agg.warehouse, "container_logs", 1, agg)
    finally:
        assert agg.stop() == 0
    assert table["message"].to_pylist() == ["over-tls"]
    assert read_table(agg.warehouse, "envoy_access").num_rows == 0
    # A misconfigured client is told apart in the log (it was closed without a word).
    failed = [line for line in agg.log_text().splitlines() if "TLS handshake failed" in line]
    assert len(failed) == 1 and "level=info" in failed[0] and "plaintext" in failed[0], failed


def test_connection_limit_and_idle_timeout(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path, extra=["--max-connections", "2", "--idle-timeout", "2"])
    try:
        with agg.connect() as first, agg.connect() as second:
            good_chunk(agg, first, "one")
            good_chunk(agg, second, "two")
            with agg.connect() as third:
                assert closed_by_server(third), "a third connection is over the limit"
            # Both stay silent past the idle timeout: the server closes them.
            assert closed_by_server(first) and closed_by_server(second)
        with agg.connect() as again:  # slots are free again
            good_chunk(agg, again, "three")
        table = wait_rows(agg.warehouse, "container_logs", 3, agg)
    finally:
        assert agg.stop() == 0
    assert sorted(table["message"].to_pylist()) == ["one", "three", "two"]
    log = agg.log_text()
    assert re.search(r"level=warning [^\n]*over --max-connections", log)
    # A quiet client's idle connection is a normal end: INFO, not a WARNING every idle timeout.
    idle = [line for line in log.splitlines() if "idle for 2s" in line]
    assert len(idle) == 2 and all("level=info " in line for line in idle), idle
