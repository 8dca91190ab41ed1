"""The live phase of ``bench/e2e.py``: freshness, measured on probe lines under steady load.

A writer thread appends, at a steady rate, probe lines (``e2e-probe NNNNN``, one per app
container of a few services in turn) and background Envoy access lines to the live log files,
noting the wall-clock time each probe's ``write`` returned: the moment the line is in the file.
The calling thread meanwhile queries the warehouse the way ``logq sql`` does (the same
:class:`athena.engines.local.LocalEngine`, DuckDB over the S3 Parquet files, same AWS settings),
in a loop, and notes when each probe first comes back. Freshness = seen - written; the figure
is an upper bound by up to one poll (each poll's own duration is reported next to it). Running
the engine in-process rather than spawning ``logq sql`` per poll keeps the ~0.3 s interpreter
start-up out of every sample and the poll interval short.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bench.e2e_host import Host, LineMaker, append

PROBE_PREFIX = "e2e-probe "
TICK = 0.1
"""Seconds between background writes (each one appends rate * TICK lines to one container)."""
INTERRUPTED = threading.Event()
"""Set by the bench's SIGINT/SIGTERM handler. DuckDB and pyarrow turn the KeyboardInterrupt that
arrives during a query into their own errors, which a poll would otherwise take for a hiccup."""


@dataclass
class LiveResult:
    """What the live phase measured."""

    probes: int
    rate: float
    background_rate: float
    written_at: dict[int, float] = field(default_factory=dict)
    seen_at: dict[int, float] = field(default_factory=dict)
    poll_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    """Fatal: the writer thread failed."""
    poll_errors: list[str] = field(default_factory=list)
    """Polls that failed (and were retried)."""

    @property
    def latencies(self) -> list[float]:
        return sorted(
            t - self.written_at[i] for i, t in self.seen_at.items() if i in self.written_at
        )

    @property
    def missing(self) -> list[int]:
        return sorted(set(self.written_at) - set(self.seen_at))


def _probe_entry(i: int, maker: LineMaker) -> str:
    ms = int(time.time() * 1000)
    maker.written.logs += 1
    return (
        f'{{"log":"{PROBE_PREFIX}{i:05d}\\n","stream":"stdout",'
        f'"time":"{maker.clock.docker(ms, 555)}"}}\n'
    )


def _write(host: Host, maker: LineMaker, services: list[str], out: LiveResult) -> None:
    """The writer thread: probes at ``out.rate``/s, background lines at ``background_rate``/s."""
    try:
        envoys = list(host.envoy.items())
        start = time.monotonic()
        next_probe, next_tick, tick = start, start, 0
        per_tick = out.background_rate * TICK
        owed = 0.0
        while len(out.written_at) < out.probes and not INTERRUPTED.is_set():
            now = time.monotonic()
            if now >= next_probe:
                i = len(out.written_at)
                app = host.app[services[i % len(services)]]
                host.written.bytes += append(app.log_path, [_probe_entry(i, maker)])
                out.written_at[i] = time.time()
                next_probe += 1 / out.rate
            if per_tick and now >= next_tick:
                owed += per_tick
                n = int(owed)
                owed -= n
                name, envoy = envoys[tick % len(envoys)]
                times = np.full(n, int(time.time() * 1000), dtype=np.int64)
                host.written.bytes += append(envoy.log_path, maker.access(name, times))
                tick += 1
                next_tick += TICK
            time.sleep(max(0.0, min(next_probe, next_tick if per_tick else next_probe) - now))
        out.seconds = time.monotonic() - start
    except Exception as exc:  # surfaced by run(): a bench must not hang on a dead writer
        out.errors.append(f"writer: {exc!r}")


def run(
    host: Host,
    maker: LineMaker,
    warehouse: str,
    services: list[str],
    probes: int,
    rate: float,
    background_rate: float,
    timeout: float,
) -> LiveResult:
    """Write probes and background lines, poll until every probe is seen (or ``timeout`` s
    after the last one was written); returns the written/seen times."""
    from athena.engines.local import LocalEngine

    out = LiveResult(probes, rate, background_rate)
    engine = LocalEngine(warehouse)
    sql = f"SELECT message FROM container_logs WHERE message LIKE '{PROBE_PREFIX}%'"
    writer = threading.Thread(
        target=_write, args=(host, maker, services, out), name="e2e-writer", daemon=True
    )
    writer.start()
    deadline = float("inf")
    while len(out.seen_at) < probes and time.monotonic() < deadline and not out.errors:
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        if not writer.is_alive() and deadline == float("inf"):
            deadline = time.monotonic() + timeout
        started = time.perf_counter()
        try:
            scopes = {"container_logs": engine.plan("container_logs", services, None)}
            rows = engine.run(sql, {}, scopes).rows
        except Exception as exc:  # S3 or DuckDB hiccup: count it, poll again
            if INTERRUPTED.is_set():
                raise KeyboardInterrupt from exc
            out.poll_errors.append(repr(exc))
            time.sleep(0.5)
            continue
        now = time.time()
        out.poll_seconds.append(time.perf_counter() - started)
        for (message,) in rows:
            i = int(str(message)[len(PROBE_PREFIX) :].split()[0])
            out.seen_at.setdefault(i, now)
        time.sleep(0.05)
    writer.join(timeout=30)
    return out
