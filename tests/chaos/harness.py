"""Chaos harness: a host that keeps writing logs while a test breaks the pipeline around it.

The scenarios in ``tests/chaos`` all have the same shape: containers write lines at a steady rate
(a background thread), a long-running ``logq-shipper`` follows them into one or more
``logq-aggregator`` processes, the test injects faults (``kill -9``, an S3 outage, rotations...),
then writing stops, everything drains, and the warehouse must hold *exactly* what was written:
same row count through ``logq sql`` and the same rows, every column of each compared as a
multiset, no line lost, none twice. Every line is recorded as the row it must become (a
:class:`cli.demohost.Manifest`, built by :class:`cli.demohost.HostWriter` from typed values, not
by parsing the files back), so the final check needs no tolerance.

API
---
A scenario, in short (``env``: the ``subprocess_env`` fixture, plus ``SeaweedFS.env()`` for S3)::

    host = LiveHost(tmp_path / "containers", seed=rng.randrange(10**6), services=3)
    aggs = start_aggregators(2, warehouse, tmp_path, env, flush_interval=1)
    shipper = ShipperNode([a.address for a in aggs], host.root, tmp_path / "shipper", env)
    try:
        shipper.start()
        host.start()
        ...                        # faults: aggs[0].kill(), shipper.restart(), host.rotate(c)...
        drain(host, shipper, aggs)   # only the aggregators still alive
    finally:
        stop_all(host, shipper, aggs)   # also after a failure: nothing keeps running
    assert_exact(warehouse, env, host)

:class:`LiveHost` -- Docker json-file containers (``<root>/<id>/<id>-json.log`` plus
``config.v2.json`` with ECS labels, as :mod:`cli.demohost` writes them) and the writer thread.

* ``LiveHost(root, seed=1, services=3, rate=250.0)``: one Envoy sidecar (access lines that land
  in ``envoy_access``, plus its own lines) and one app (JSON, plain, unicode, stderr, now and then
  a line over 16 KiB that Docker splits) per service; ``rate`` is lines per second overall
  (an attribute: a test may change it while the writer runs).
* ``start()`` / ``stop()``: run the writer thread; ``stop()`` joins it and writes one last batch
  to every active container (so every live file ends non-empty, which :func:`wait_caught_up`
  relies on); ``halt()`` stops it without that batch (for ``finally`` blocks).
  ``with host.paused():`` holds the writer still.
* ``write(container, count)``: append lines now, from the calling thread.
* ``add_task(service) -> list[Container]``: a new sidecar + app pair appears mid-run.
* ``retire(container)``: last batch, then no more writes; ``remove(container)``: delete its
  directory (call it only once :func:`wait_caught_up` saw the container fully acknowledged).
* ``rotate(container, max_file=5)``: dockerd's json-file rotation (``log`` -> ``.1`` ->
  ``.2``..., new empty ``log``, files beyond ``max_file`` deleted). ``copytruncate(container)``:
  logrotate's copy-then-truncate, done while the writer is held (see the method for why). Both
  return False and do nothing on an empty live file (dockerd rotates at ``max-size`` only).
  ``with host.holding(container):`` stops writes to one container (see its docstring for why a
  copytruncate test needs it).
* ``manifest`` (every expected row), ``active`` (containers being written), ``containers``
  (all ever created), ``lines_written``, ``bytes_written``.

Processes (real console scripts, each in its own process group that dies with the test runner;
``kill()`` them in ``finally``):

* :class:`AggregatorNode`: ``start()``, ``kill()`` (``kill -9`` the group), ``restart()`` (same
  ``--listen`` port, ``--buffer-dir`` and ``--metrics-listen``), ``terminate()`` (SIGTERM: flush
  everything, exit 0; returns the status), ``scrape()`` (Prometheus ``/metrics`` as
  ``{name: value}``; needs ``metrics=True``), ``peak_rss()``; ``address``, ``pid``, ``log``
  (all starts append to one log), ``starts``.
* :func:`start_aggregators(n, warehouse, work, env, *extra, flush_interval=1, metrics=False)`:
  ``n`` started nodes, node ``i`` working in ``work/agg-<i>``; ``extra`` are more flags.
* :class:`ShipperNode(aggregators, docker_root, work, env, extra=())`: a follow-mode shipper
  with one ``--aggregator`` per address, a fixed ``--hostname`` (:data:`HOSTNAME`) and
  ``--state-dir`` ``work/state`` kept across restarts: ``start()``, ``kill()``, ``restart()``,
  ``terminate()``, ``freeze()``/``thaw()`` (SIGSTOP/SIGCONT), ``alive()``,
  ``caught_up(containers)``, ``lagging(containers)``, ``noticed_truncation(container, times)``.
* :func:`wait_caught_up(shipper, containers, timeout=120)`: until the shipper's checkpoint
  registry says the newest file of every container is acknowledged to its last byte (the error
  lists the files that are not).
* :func:`drain(host, shipper, aggregators)`: stop writing, wait until everything is acknowledged,
  SIGTERM the shipper then every given aggregator (asserting exit 0 each).
* :func:`assert_exact(warehouse, env, written)`: ``logq sql`` ``count(*)`` per table equals the
  manifest's, and the rows of each table (every column of :data:`tests.support.expect.COLUMNS`,
  read with ``logq sql --format json`` run in the test's process, see
  :func:`tests.support.expect.select_tables`) equal the manifest's as a multiset; on failure the
  message counts the rows missing, duplicated and unexpected, with samples of each
  (:func:`explain`). ``written`` is a :class:`LiveHost` or a :class:`~cli.demohost.Manifest`.
  Returns a :class:`TableCheck` per table.
* :func:`stop_seaweedfs(server)` / :func:`start_seaweedfs_again(server)` (same data dir and
  ports) and :func:`restart_seaweedfs(server, down_seconds)`, for a private server from
  ``tests.support.seaweedfs.start_seaweedfs()`` -- never the session's, others use it.
* :func:`peak_rss(pid)` (``VmHWM``), :func:`scrape(port)`, :func:`sleep_random(rng, lo, hi)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import string
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.request import urlopen

from cli.demohost import Container, HostWriter, Manifest
from cli.demoservices import SERVICES
from cli.demotraffic import AccessRow, LogRow
from shipper.checkpoint import file_key
from shipper.fingerprint import fingerprint
from tests.support.expect import COLUMNS, as_counter, expected_rows, select_tables
from tests.support.pipeline import Aggregator, Daemon
from tests.support.procs import (
    LOCALHOST,
    console_script,
    free_port,
    log_tail,
    port_open,
    start_group,
    stop_group,
    wait_until,
)
from tests.support.seaweedfs import STARTUP_TIMEOUT, SeaweedFS
from tests.support.seaweedfs import _answers as weed_answers
from tests.support.seaweedfs import _command as weed_command
from tests.support.seaweedfs import _weed_env as weed_env

HOSTNAME = "chaos-host"
"""``--hostname`` of every shipper the harness starts (the ``host`` column of every row)."""

TICK_SECONDS = 0.05
"""The writer wakes this often and writes ``rate * TICK_SECONDS`` lines (at least one)."""

LONG_LINE_EVERY = 400
"""About one app line in this many is over 16 KiB (Docker splits it into several entries)."""

_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
_CODES = (200, 200, 200, 200, 201, 204, 301, 404, 500, 503, 504)


# --------------------------------------------------------------------------------------- host


class LiveHost:
    """Containers on disk plus a thread appending lines to them; see the module docstring."""

    def __init__(self, root: Path, seed: int = 1, services: int = 3, rate: float = 250.0) -> None:
        if not 1 <= services <= len(SERVICES):
            raise ValueError(f"services must be 1..{len(SERVICES)}, not {services}")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.rate = rate
        self.rng = random.Random(seed)
        self.writer = HostWriter(root, random.Random(seed + 1))
        self.lock = threading.RLock()
        self.specs = {s.name: s for s in SERVICES[:services]}
        self.active: list[Container] = []
        self.held: set[str] = set()
        """Ids of containers the writer thread skips for now (see :meth:`holding`)."""
        self.lines_written = 0
        self.bytes_written = 0
        self._seq = 0
        self._revision = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        for name in self.specs:
            self.add_task(name)

    # -- what was written

    @property
    def manifest(self) -> Manifest:
        return self.writer.manifest

    @property
    def containers(self) -> list[Container]:
        """Every container ever created (also retired and removed ones)."""
        return list(self.manifest.containers)

    # -- containers appearing and disappearing

    def add_task(self, service: str) -> list[Container]:
        """A new ECS task of ``service`` (sidecar + app) that the writer starts writing to."""
        spec = self.specs[service]
        with self.lock:
            self._revision += 1
            started = datetime.now(UTC) - timedelta(seconds=5)
            pair = [
                self.writer.container(spec, role, self._revision, started)
                for role in ("envoy", "app")
            ]
            for c in pair:
                self._write(c, 3)
            self.active.extend(pair)
        return pair

    def retire(self, container: Container) -> None:
        """Write a last batch to ``container`` and never write to it again."""
        with self.lock:
            self._write(container, 2)
            self.active.remove(container)

    def remove(self, container: Container) -> None:
        """Delete a retired container's directory (the runtime removing a stopped container)."""
        with self.lock:
            if container in self.active:
                raise ValueError(f"retire {container.name} before removing it")
            shutil.rmtree(container.log_path.parent)

    # -- rotation

    def rotate(self, container: Container, max_file: int = 5) -> bool:
        """dockerd's json-file rotation (``max-size`` reached): ``.1`` -> ``.2``..., live ->
        ``.1``, a new empty live file, and files beyond ``max_file`` (live included) deleted.

        Like dockerd, never rotates an empty file: returns False (and does nothing) then.
        """
        with self.lock:
            if _size(container.log_path) == 0:
                return False
            self.writer.rotate(container)
            path = container.log_path
            for sib in path.parent.glob(path.name + ".*"):
                suffix = sib.name.removeprefix(path.name + ".")
                if suffix.isdigit() and int(suffix) >= max_file:
                    sib.unlink()
            return True

    def copytruncate(self, container: Container) -> bool:
        """logrotate's ``copytruncate``: shift ``.N``, copy the live file to ``.1``, truncate it
        in place.

        Lines written between the copy and the truncation are in neither file: every tailer
        loses them, and logrotate documents it ("some logging data might be lost"). Those who
        use copytruncate accept that window; the test cannot, since it checks every line, so the
        writer is held for the copy + truncate, which closes the window. See
        :meth:`holding` for what else a test may have to hold.
        """
        with self.lock:
            path = container.log_path
            if _size(path) == 0:
                return False
            n = 1
            while path.with_name(f"{path.name}.{n}").exists():
                n += 1
            for i in range(n - 1, 0, -1):
                path.with_name(f"{path.name}.{i}").rename(path.with_name(f"{path.name}.{i + 1}"))
            shutil.copyfile(path, path.with_name(f"{path.name}.1"))
            with open(path, "r+b") as f:
                f.truncate(0)
            return True

    @contextlib.contextmanager
    def holding(self, container: Container) -> Iterator[None]:
        """No writes to ``container`` inside (the others keep being written).

        Around a copytruncate: logq-shipper notices a truncation only when it reaches the end of
        the file, so a file that grows past the old read position first is read from the middle
        (see the xfail test in ``test_rotation.py``); and content written and truncated away
        before the shipper reopened the live file is never found. Holding the container from
        "shipper caught up" to "shipper noticed the truncation" keeps both out of a test.
        """
        with self.lock:
            self.held.add(container.id)
        try:
            yield
        finally:
            with self.lock:
                self.held.discard(container.id)

    # -- the writer thread

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the writer is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="chaos-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then write a last batch to every active container."""
        self.halt()
        if self._error is not None:
            raise RuntimeError(f"the log writer failed: {self._error!r}") from self._error
        with self.lock:
            for c in self.active:
                self._write(c, 1)

    def halt(self) -> None:
        """Stop the thread without a last batch (cleanup in ``finally``; safe to repeat)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the writer still (nothing is written while inside)."""
        with self.lock:
            yield

    def _run(self) -> None:
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                per_tick = max(1, round(self.rate * TICK_SECONDS))  # a test may change rate
                with self.lock:
                    writable = [c for c in self.active if c.id not in self.held]
                    if writable:
                        self._write(self.rng.choice(writable), per_tick)
                next_tick += TICK_SECONDS
                delay = next_tick - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:  # fell behind (a busy machine): do not try to catch up in a burst
                    next_tick = time.monotonic()
        except BaseException as exc:  # reported by stop(); the test must not hang on it
            self._error = exc

    def write(self, container: Container, count: int) -> None:
        """Append ``count`` lines to ``container`` now (besides the writer thread)."""
        with self.lock:
            self._write(container, count)

    def _write(self, container: Container, count: int) -> None:
        """Append ``count`` lines to ``container`` (caller holds the lock)."""
        now = datetime.now(UTC)
        access: list[AccessRow] = []
        logs: list[LogRow] = []
        for _ in range(count):
            self._seq += 1
            if container.role == "envoy" and self.rng.random() < 0.85:
                access.append(self._access(container.service, now))
            else:
                logs.append(self._log(container, now))
        before = container.log_path.stat().st_size if container.log_path.exists() else 0
        self.writer.write_log(container, access, logs, append=True)
        self.lines_written += count
        self.bytes_written += container.log_path.stat().st_size - before

    def _access(self, service: str, now: datetime) -> AccessRow:
        rng = self.rng
        code = rng.choice(_CODES)
        duration = rng.randrange(1, 900)
        return AccessRow(
            service=service,
            start=now - timedelta(milliseconds=duration),
            method=rng.choice(_METHODS),
            path=f"/api/v1/items/{rng.randrange(1, 10**6)}?seq={self._seq}",
            protocol="HTTP/1.1",
            response_code=code,
            response_flags="-" if code < 500 else rng.choice(("-", "UF", "UT", "UH")),
            bytes_received=rng.randrange(0, 4000),
            bytes_sent=rng.randrange(0, 200_000),
            duration_ms=duration,
            upstream_service_time_ms=None if code >= 503 else max(0, duration - 1),
            x_forwarded_for=None if rng.random() < 0.3 else f"10.0.{rng.randrange(256)}.7",
            user_agent=rng.choice(("curl/8.5.0", "Mozilla/5.0 (X11; Linux)", "okhttp/4.12")),
            request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            authority=f"{service}.internal:8080",
            upstream_host=None if code == 503 else "127.0.0.1:8080",
        )

    def _log(self, container: Container, now: datetime) -> LogRow:
        rng = self.rng
        seq = self._seq
        when = now - timedelta(microseconds=rng.randrange(0, 50_000))
        if container.role == "envoy":
            text = f"[info][upstream] cds: seq={seq} added/updated {rng.randrange(9)} cluster(s)"
            return LogRow(container.service, when, "stderr", text, True)
        kind = rng.random()
        if rng.randrange(LONG_LINE_EVERY) == 0:
            body = "".join(rng.choices(string.ascii_letters + "é—€ ", k=20_000))
            text = json.dumps({"seq": seq, "msg": "snapshot", "blob": body}, ensure_ascii=False)
        elif kind < 0.4:
            doc = {
                "level": "info",
                "seq": seq,
                "msg": "request handled",
                "user": rng.randrange(9999),
            }
            text = json.dumps(doc)
        elif kind < 0.6:
            text = f"Traceback seq={seq}: KeyError: 'sku' <in handler> & retrying"
            return LogRow(container.service, when, "stderr", text)
        elif kind < 0.75:
            text = f'commande n°{seq} expédiée — ✓ 日本語 \\ "quoted" \t tab'
        else:
            text = f"plain line seq={seq} from {container.name}"
        return LogRow(container.service, when, "stdout", text)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------------------------- processes


def scrape(port: int) -> dict[str, float]:
    """A Prometheus ``/metrics`` page as ``{"name{labels}": value}`` (comments skipped)."""
    with urlopen(f"http://{LOCALHOST}:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def peak_rss(pid: int) -> int:
    """Peak resident set size of a live process in bytes (``VmHWM`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def sleep_random(rng: random.Random, low: float, high: float) -> float:
    """Sleep a random time in ``[low, high]`` seconds; returns it (for the test's log)."""
    seconds = rng.uniform(low, high)
    time.sleep(seconds)
    return seconds


@dataclass
class AggregatorNode:
    """A ``logq-aggregator`` that can be killed and restarted on the same port and buffer."""

    warehouse: str
    work: Path
    env: dict[str, str]
    extra: tuple[str, ...] = ()
    flush_interval: float = 1
    metrics: bool = False
    port: int = field(default_factory=free_port)
    metrics_port: int = 0
    proc: Aggregator | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if self.metrics and not self.metrics_port:
            self.metrics_port = free_port()

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def buffer_dir(self) -> Path:
        return self.work / "buffer"

    @property
    def log(self) -> Path:
        return self.work / "aggregator.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "aggregator not started"
        return self.proc.proc.pid

    def start(self) -> AggregatorNode:
        cmd = [
            str(console_script("logq-aggregator")),
            "--listen", self.address,
            "--warehouse", self.warehouse,
            "--buffer-dir", str(self.buffer_dir),
            "--flush-interval", str(self.flush_interval),
            *(["--metrics-listen", f"{LOCALHOST}:{self.metrics_port}"] if self.metrics else []),
            *self.extra,
        ]  # fmt: skip
        with open(self.log, "a") as out:
            out.write(f"\n=== start #{self.starts + 1} at {datetime.now(UTC).isoformat()} ===\n")
        proc = start_group(cmd, self.log, env=self.env)
        self.proc = Aggregator(proc, self.log, self.port)
        self.starts += 1
        try:
            # A restart right after kill -9 may find the port briefly held: the process exits
            # with an error then, which wait_until reports with the log tail.
            wait_until(
                lambda: port_open(LOCALHOST, self.port), 60, "logq-aggregator", proc, self.log
            )
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """``kill -9`` the aggregator's process group (no flush, no goodbye)."""
        if self.proc is not None:
            self.proc.kill()

    def restart(self) -> AggregatorNode:
        self.kill()
        return self.start()

    def terminate(self, timeout: float = 120) -> int:
        assert self.proc is not None, "aggregator not started"
        return self.proc.terminate(timeout)

    def scrape(self) -> dict[str, float]:
        if not self.metrics:
            raise RuntimeError("start the aggregator with metrics=True to scrape it")
        return scrape(self.metrics_port)

    def peak_rss(self) -> int:
        return peak_rss(self.pid)


def start_aggregators(
    n: int,
    warehouse: str,
    work: Path,
    env: dict[str, str],
    *extra: str,
    flush_interval: float = 1,
    metrics: bool = False,
) -> list[AggregatorNode]:
    """``n`` running aggregators writing to ``warehouse``, each with its own ``work/agg-<i>``."""
    nodes: list[AggregatorNode] = []
    try:
        for i in range(n):
            node = AggregatorNode(warehouse, work / f"agg-{i}", env, extra, flush_interval, metrics)
            nodes.append(node.start())
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


@dataclass
class ShipperNode:
    """A follow-mode ``logq-shipper`` over ``aggregators`` that can be killed and restarted."""

    aggregators: Sequence[str]
    docker_root: Path
    work: Path
    env: dict[str, str]
    extra: tuple[str, ...] = ()
    proc: Daemon | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        # An empty --cri-root: a root given that does not exist is an error.
        (self.work / "no-cri").mkdir(parents=True, exist_ok=True)

    @property
    def state_dir(self) -> Path:
        return self.work / "state"

    @property
    def log(self) -> Path:
        return self.work / "shipper.log"

    def start(self) -> ShipperNode:
        cmd = [str(console_script("logq-shipper"))]
        for address in self.aggregators:
            cmd += ["--aggregator", address]
        cmd += [
            "--docker-root", str(self.docker_root),
            "--cri-root", str(self.work / "no-cri"),
            "--state-dir", str(self.state_dir),
            "--hostname", HOSTNAME,
            *self.extra,
        ]  # fmt: skip
        with open(self.log, "a") as out:
            out.write(f"\n=== start #{self.starts + 1} at {datetime.now(UTC).isoformat()} ===\n")
        self.proc = Daemon(start_group(cmd, self.log, env=self.env), self.log)
        self.starts += 1
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def restart(self) -> ShipperNode:
        self.kill()
        return self.start()

    def terminate(self, timeout: float = 120) -> int:
        assert self.proc is not None, "shipper not started"
        return self.proc.terminate(timeout)

    def noticed_truncation(self, container: Container, times: int) -> bool:
        """Whether the shipper has logged ``times`` in-place truncations of the container's
        live file since it was first started (its ``log file truncated in place...`` line,
        with or without a copy to finish from)."""
        path = f"path={container.log_path}"
        seen = 0
        for line in self.log.read_text(errors="replace").splitlines():
            if "log file truncated in place" in line and (
                f"{path} " in line or line.endswith(path)
            ):
                seen += 1
        return seen >= times

    def freeze(self) -> None:
        """SIGSTOP the shipper (a process descheduled on a busy host); :meth:`thaw` resumes."""
        assert self.proc is not None, "shipper not started"
        os.killpg(self.proc.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None, "shipper not started"
        os.killpg(self.proc.proc.pid, signal.SIGCONT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def caught_up(self, containers: Sequence[Container]) -> bool:
        """Whether the newest non-empty file of every container is acknowledged to its end.

        Reads the shipper's checkpoint registry (``<state-dir>/checkpoints.json``, keyed by
        ``<dev>:<inode>:<fingerprint of the first line>``, see :mod:`shipper.checkpoint`). The
        tailer reads a container's files oldest first, so its newest file being acknowledged to
        the end means everything before it was too. Not for a container whose live file was
        copytruncated and is still empty: the copy it finished may have no entry of its own.
        """
        return not self.lagging(containers)

    def lagging(self, containers: Sequence[Container]) -> list[str]:
        """The containers :meth:`caught_up` waits for, described (file, size, checkpoint)."""
        try:
            doc = json.loads((self.state_dir / "checkpoints.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return ["no checkpoint registry yet"]
        files = doc.get("files") or {}
        out = []
        for c in containers:
            newest = _newest_nonempty(c.log_path)
            if newest is None:
                continue
            path, key, size = newest
            state = files.get(key)
            if state is None or state["offset"] < size:
                offset = None if state is None else state["offset"]
                out.append(f"{path.name}: {size} bytes, checkpoint {offset} ({c.service})")
        return out


def _newest_nonempty(live: Path) -> tuple[Path, str, int] | None:
    """Registry key and size of the newest file of a container holding data (None: none)."""
    candidates = [live]
    n = 1
    while live.with_name(f"{live.name}.{n}").exists():
        candidates.append(live.with_name(f"{live.name}.{n}"))
        n += 1
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            st = os.fstat(fd)
            fp = fingerprint(fd) if st.st_size else None
        finally:
            os.close(fd)
        if fp is not None:
            return path, file_key(st.st_dev, st.st_ino, fp), st.st_size
    return None


def wait_caught_up(
    shipper: ShipperNode, containers: Sequence[Container], timeout: float = 120
) -> None:
    """Wait until the shipper acknowledged every byte of ``containers`` (see ``caught_up``)."""
    assert shipper.proc is not None, "shipper not started"
    try:
        wait_until(
            lambda: shipper.caught_up(containers),
            timeout,
            "logq-shipper catching up with the log files",
            proc=shipper.proc.proc,
            log=shipper.log,
            interval=0.1,
        )
    except TimeoutError as exc:
        behind = "\n".join(shipper.lagging(containers))
        raise TimeoutError(f"{exc}\n--- not acknowledged to the end ---\n{behind}") from None


def drain(host: LiveHost, shipper: ShipperNode, aggregators: Sequence[AggregatorNode]) -> None:
    """Stop writing, wait until the shipper acknowledged everything, then SIGTERM the shipper
    and every aggregator (which flushes its buffer to the warehouse and exits 0)."""
    host.stop()
    live = [c for c in host.containers if c.log_path.parent.exists()]
    wait_caught_up(shipper, live)
    assert shipper.terminate() == 0, f"logq-shipper exit status{log_tail(shipper.log)}"
    for node in aggregators:
        status = node.terminate()
        assert status == 0, f"logq-aggregator exited {status}{log_tail(node.log)}"


def stop_all(host: LiveHost, shipper: ShipperNode, aggregators: Sequence[AggregatorNode]) -> None:
    """The end of every scenario, whatever happened: stop the writers, kill the shipper and
    every aggregator (the ``finally`` of each test, so that nothing outlives it)."""
    host.halt()
    shipper.kill()
    for node in aggregators:
        node.kill()


def restart_seaweedfs(server: SeaweedFS, down_seconds: float = 0.0) -> None:
    """Stop ``server`` (SIGTERM, SIGKILL after 2 s), wait ``down_seconds``, start it again on
    the same data directory and ports, and wait until its S3 gateway answers.

    ``tests.support.seaweedfs`` has no restart; this reuses its command line, so the restarted
    server serves the same buckets and objects at the same endpoint.
    """
    stop_seaweedfs(server)
    time.sleep(down_seconds)
    start_seaweedfs_again(server)


def stop_seaweedfs(server: SeaweedFS) -> None:
    """The first half of :func:`restart_seaweedfs`: the server is down, its files kept."""
    stop_group(server.proc, timeout=2)


def start_seaweedfs_again(server: SeaweedFS) -> None:
    """Start a stopped ``server`` again on its data directory and ports; wait for S3."""
    for sock in (server.data_dir / "filer.sock", server.data_dir / "s3.sock"):
        sock.unlink(missing_ok=True)
    for sock in server.data_dir.glob("seaweedfs-*-grpc-*.sock"):
        sock.unlink(missing_ok=True)
    log = server.data_dir / "weed.log"
    cmd = weed_command(console_script("weed"), server.data_dir, server.ports)
    server.proc = start_group(cmd, log, env=weed_env(server.data_dir))
    wait_until(
        lambda: weed_answers(server), STARTUP_TIMEOUT, "SeaweedFS restart", server.proc, log, 0.2
    )


# --------------------------------------------------------------------------------- exactness


@dataclass
class TableCheck:
    """What :func:`assert_exact` found for one table."""

    table: str
    expected: int
    counted: int
    same_rows: bool


def _short(value: object, limit: int = 200) -> object:
    """A value cut for an assertion message (a 20 KiB line would drown the diff)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}...<{len(value)} chars>"
    return value


def explain(table: str, want: Counter, got: Counter, samples: int = 3) -> str:
    """Missing, duplicated and unexpected rows of ``table`` with a few samples of each."""
    missing = want - got
    extra = got - want
    duplicated = Counter({row: n for row, n in extra.items() if row in want})
    unexpected = Counter({row: n for row, n in extra.items() if row not in want})
    parts = [
        f"{table}: expected {sum(want.values())} rows, got {sum(got.values())}: "
        f"{sum(missing.values())} missing, {sum(duplicated.values())} duplicated, "
        f"{sum(unexpected.values())} unexpected"
    ]
    for label, bag in (
        ("missing", missing),
        ("duplicated", duplicated),
        ("unexpected", unexpected),
    ):
        for row, n in list(bag.items())[:samples]:
            shown = {c: _short(v) for c, v in zip(COLUMNS[table], row, strict=True)}
            parts.append(f"  {label} x{n}: {shown}")
    return "\n".join(parts)


def assert_exact(
    warehouse: str, env: dict[str, str], written: LiveHost | Manifest, host: str = HOSTNAME
) -> dict[str, TableCheck]:
    """The warehouse holds exactly the rows ``written`` recorded: ``count(*)`` and every row
    (a multiset of whole rows: a lost, doubled or altered row all differ)."""
    manifest = written.manifest if isinstance(written, LiveHost) else written
    checks: dict[str, TableCheck] = {}
    problems: list[str] = []
    rows, counts = select_tables(warehouse, env)
    for table in COLUMNS:
        want = as_counter(expected_rows(manifest, table, host), table)
        counted = counts[table]
        got = as_counter(rows[table], table)
        check = TableCheck(table, sum(want.values()), counted, want == got)
        checks[table] = check
        if counted != check.expected or not check.same_rows:
            problems.append(
                f"count(*) {counted} vs {check.expected} written\n" + explain(table, want, got)
            )
    assert not problems, "warehouse differs from what was written:\n" + "\n".join(problems)
    return checks
