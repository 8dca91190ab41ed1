"""Helpers for the aggregator tests: run ``logq-aggregator`` as a process, talk Forward to it,
read back what it wrote."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aggregator.metrics import Metrics
from aggregator.server import ForwardServer, ServerLimits
from aggregator.state_files import SEGMENT_SUFFIX
from athena.warehouse import list_entries, open_warehouse
from shipper import wire
from tests.support.procs import console_script, log_tail, start_group, stop_group, wait_until

ENVOY_IMAGE = "envoyproxy/envoy:v1.31.0"


def envoy_line(
    when: str = "2026-11-28T14:00:00.123Z",
    method: str = "GET",
    path: str = "/api/items?id=5&sort=asc",
    code: int = 200,
    flags: str = "-",
    rx: int = 0,
    tx: int = 512,
    duration: int = 12,
    ust: str = "10",
    xff: str = "-",
    ua: str = "curl/8.5.0",
    rid: str = "6f1c1b9a-1d2e-4f00-9c6a-0d1e2f3a4b5c",
    authority: str = "shop.internal",
    upstream: str = "10.0.3.7:8080",
) -> str:
    return (
        f'[{when}] "{method} {path} HTTP/1.1" {code} {flags} {rx} {tx} {duration} {ust} '
        f'"{xff}" "{ua}" "{rid}" "{authority}" "{upstream}"'
    )


#: One request as the other data planes' default formats print it, with what breaks parsers:
#: ``-`` values, an IPv6 upstream, a query string, quotes inside the user agent.
AGENT = 'Mozilla/5.0 (X11; Linux) "Chrome" é'
REQUEST = '"GET /api/items?id=5&q=a%20b HTTP/1.1" 503 UF,URX 17 91 3002 -'
OTHER_PLANES = {
    "emissary": (
        f'ACCESS [2026-11-28T14:00:00.123Z] {REQUEST} "-" "{AGENT}" "rid-e" "shop.example.com" '
        '"[2001:db8::7]:8080"'
    ),
    "kuma": (
        f'[2026-11-28T14:00:00.123Z] default {REQUEST} "-" "{AGENT}" "-" "rid-k" '
        '"shop.example.com" "frontend_kuma-demo_svc_8080" "backend_kuma-demo_svc_3001" '
        '"10.244.0.12" "[2001:db8::7]:8080"'
    ),
    "istio 1.7": (
        '[2026-11-28T14:00:00.123Z] "GET /api/items?id=5&q=a%20b HTTP/1.1" 503 UF,URX "-" "-" '
        f'17 91 3002 - "-" "{AGENT}" "rid-i" "shop.example.com" "[2001:db8::7]:8080" '
        "outbound|8080||shop.default.svc.cluster.local [2001:db8::5]:46374 [2001:db8::7]:8080 "
        "[2001:db8::5]:52350 - default"
    ),
}


def record(log: str, service: str = "recipe", **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        wire.KEY_LOG: log,
        wire.KEY_STREAM: "stdout",
        wire.KEY_SERVICE: service,
        wire.KEY_HOST: "host-1",
        wire.KEY_CONTAINER_ID: "c0ffee",
        wire.KEY_CONTAINER_NAME: f"{service}-app",
    }
    rec.update(extra)
    return rec


@dataclass
class AggregatorProc:
    """A ``logq-aggregator`` process started by a test."""

    proc: subprocess.Popen
    log: Path
    port: int
    warehouse: str
    buffer_dir: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        return stop_group(self.proc, timeout=timeout, sig=sig)

    def kill9(self) -> int:
        return stop_group(self.proc, timeout=5.0, sig=signal.SIGKILL)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=15)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_aggregator(
    tmp: Path,
    warehouse: str | None = None,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    name: str = "agg",
    wrapper: list[str] | None = None,
) -> AggregatorProc:
    """Start the aggregator on a kernel-chosen port; wait for its ``listening on`` line.

    ``wrapper``: a command prefix that execs the rest (e.g. one that sets a resource limit)."""
    warehouse = warehouse or str(tmp / "warehouse")
    buffer_dir = tmp / f"{name}-buffer"
    log = tmp / f"{name}-{time.monotonic_ns()}.log"
    args = [
        *(wrapper or []),
        str(console_script("logq-aggregator")),
        "--listen",
        "127.0.0.1:0",
        "--warehouse",
        warehouse,
        "--buffer-dir",
        str(buffer_dir),
        "--flush-interval",
        "0.5",
        *(extra or []),
    ]
    proc = start_group(args, log, env=env)
    found: list[int] = []

    def listening() -> bool:
        m = re.search(r"listening on [^\s]+:(\d+)", log.read_text(errors="replace"))
        if m:
            found.append(int(m.group(1)))
        return bool(m)

    try:
        wait_until(listening, 30, "logq-aggregator start", proc=proc, log=log)
    except Exception:
        stop_group(proc)
        raise
    return AggregatorProc(proc, log, found[0], warehouse, buffer_dir)


@contextlib.asynccontextmanager
async def serving(
    buffer: Any,
    metrics: Metrics,
    limits: ServerLimits | None = None,
    *,
    grace: float = 5.0,
    **options: Any,
) -> AsyncIterator[tuple[ForwardServer, str, int]]:
    """A :class:`ForwardServer` in the running event loop, listening on a free port of
    127.0.0.1: ``(server, host, port)``. ``buffer`` is a test double of the real buffer (hence
    ``Any``); ``options`` are the server's other keywords (``shared_key``, ``ssl_context``).
    Stopped with ``grace`` on the way out, whether the test's body passed or failed, so that a
    failure is reported as itself and not as a server left running."""
    server = ForwardServer(buffer, metrics, ServerLimits() if limits is None else limits, **options)
    host, port = await server.start("127.0.0.1", 0)
    try:
        yield server, host, port
    finally:
        await server.stop(grace=grace)


def read_acks(sock: socket.socket, count: int, timeout: float = 30.0) -> list[str]:
    """Read ``count`` ack maps from the socket."""
    unpacker = wire.new_unpacker()
    acks: list[str] = []
    deadline = time.monotonic() + timeout
    while len(acks) < count:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed after {len(acks)} of {count} acks")
        unpacker.feed(data)
        for obj in unpacker:
            ack = wire.decode_ack(obj)
            assert ack is not None, f"not an ack: {obj!r}"
            acks.append(ack)
    return acks


def _listed(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    """Everything under ``root`` (nothing if it does not exist), listed as the product lists
    (:func:`athena.warehouse.list_entries`): a running aggregator creating the table's folder
    during the listing made a test fail."""
    return list_entries(fs, pafs.FileSelector(root, recursive=True, allow_not_found=True))


def read_table(warehouse: str, table: str) -> pa.Table:
    """Every visible Parquet file of a table, with ``service`` and ``dt`` from the path."""
    wh = open_warehouse(warehouse)
    parts = []
    for info in _listed(wh.fs, wh.table_root(table)):
        name = info.base_name
        if info.type != pafs.FileType.File or not name.endswith(".parquet"):
            continue
        if name.startswith((".", "_")):
            continue
        t = pq.read_table(info.path, filesystem=wh.fs)
        m = re.search(r"service=([^/]+)/dt=([^/]+)/", info.path)
        assert m, info.path
        t = t.append_column("service", pa.array([m.group(1)] * t.num_rows, pa.string()))
        t = t.append_column("dt", pa.array([m.group(2)] * t.num_rows, pa.string()))
        parts.append(t)
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts)


def parquet_files(warehouse: str, table: str | None = None) -> list[str]:
    wh = open_warehouse(warehouse)
    root = wh.table_root(table) if table else wh.base
    return sorted(
        i.path
        for i in _listed(wh.fs, root)
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
    )


def wait_rows(warehouse: str, table: str, rows: int, proc: AggregatorProc, timeout: float = 30):
    def enough() -> bool:
        t = read_table(warehouse, table)
        return t.num_rows >= rows

    wait_until(enough, timeout, f"{rows} rows in {table}", proc=proc.proc, log=proc.log)
    return read_table(warehouse, table)


__all__ = ["log_tail"]


async def http_get(port: int, path: str) -> tuple[int, str]:
    """``GET path`` on 127.0.0.1:``port`` (the metrics server): its status and body, read from
    the test's own event loop (an aggregator running in it must keep serving meanwhile)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return int(head.split()[1]), body


#: The real system calls, before a test's fault injection replaces them (os.* is patched).
REAL_FSYNC = os.fsync
REAL_FTRUNCATE = os.ftruncate
REAL_WRITE = os.write


def is_segment(fd: int) -> bool:
    """Whether ``fd`` is open on a buffer segment file (fault injection hits only those)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(SEGMENT_SUFFIX)
    except OSError:
        return False


def backdate(path: Path, updated: float) -> None:
    """Date a ledger document written by hand at ``updated`` as the warehouse would: its
    mtime, by which its age is judged (ledger.Dating), and not only its ``updated`` field."""
    os.utime(path, (updated, updated))


class LocalPassThrough(pafs.FileSystemHandler):
    """The local filesystem as a pyarrow ``FileSystemHandler`` (``pafs.PyFileSystem(handler)``):
    tests subclass it to count or tamper with one kind of call and pass the rest through."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def get_type_name(self) -> str:
        return type(self).__name__

    def equals(self, other: object) -> bool:
        return other is self

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise NotImplementedError

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict | None = None) -> pa.NativeFile:
        return self.fs.open_output_stream(path)

    def open_append_stream(self, path: str, metadata: dict | None = None) -> pa.NativeFile:
        return self.fs.open_append_stream(path)
