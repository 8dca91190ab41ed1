"""The host of ``bench/e2e.py``: 20 services with Envoy sidecars in Docker's json-file layout.

The containers (folders, ``config.v2.json`` with the ECS agent's labels) come from
:class:`cli.demohost.HostWriter`, so the shipper discovers them exactly as it does the demo host.
The lines are rendered here, not by the demo's traffic model: a million lines through typed
dataclasses and ``json.dumps`` takes longer than shipping them, and a bench should spend its
time on the pipeline. Random values are drawn in bulk with numpy and the JSON is assembled
directly (the only characters needing escapes are ``"`` and ``&``, which dockerd writes as
``\\u0026``).

Every line is unique and we know which table it lands in: an Envoy access line has a random
UUID4 ``x-request-id`` (``envoy_access``); every other line carries ``seq=N`` in its message
(``container_logs``). The bench checks ``count(*)`` and ``count(DISTINCT key)`` of both tables
against :class:`Written`, which is how "every line queryable exactly once" is verified.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from cli.demohost import Container, HostWriter
from cli.demoservices import SERVICES, ServiceSpec

#: 20 services of an online shop; traffic falls off with the position (a few busy services).
SERVICE_NAMES = (
    "gateway", "recipe", "search", "checkout", "cart", "catalog", "auth", "profile",
    "orders", "payments", "inventory", "pricing", "shipping", "reviews", "ratings",
    "media", "notify", "feeds", "accounts", "billing",
)  # fmt: skip

ENVOY_SHARE = 0.75
"""Share of a service's lines that its Envoy sidecar writes (the rest: the app)."""
ENVOY_OWN_SHARE = 0.005
"""Share of the sidecar's lines that are Envoy's own log lines, not access lines."""

METHODS = np.array(["GET"] * 7 + ["POST", "PUT", "DELETE"])
PATHS = np.array(
    [
        "/api/v1/{s}/{id}",
        "/api/v1/{s}?page={p}&size=20",
        "/api/v1/{s}/{id}/items",
        "/api/v2/{s}/search?q=curry&page={p}",
        "/healthz",
        "/static/app.3f9a1c.js",
    ]
)
AGENTS = np.array(
    [
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
        "okhttp/4.12.0",
        "Go-http-client/1.1",
        "python-requests/2.32.3",
        "Envoy/HC",
    ]
)
#: (code, flags, weight): mostly 200s, some client errors, Envoy's failure flags on 5xx.
OUTCOMES = [
    (200, "-", 900),
    (201, "-", 20),
    (304, "-", 15),
    (404, "-", 20),
    (404, "NR", 3),
    (429, "RL", 4),
    (500, "-", 8),
    (502, "-", 4),
    (503, "UF,URX", 8),
    (503, "UH", 6),
    (504, "UT", 8),
    (0, "DC", 4),
]
APP_MESSAGES = (
    '{{"level":"info","logger":"{s}.http","msg":"request handled","seq":{n},"status":200,'
    '"elapsed_ms":{d}}}',
    "INFO [{s}] worker-{w} processed batch seq={n} items={d}",
    '{{"level":"debug","logger":"{s}.db","msg":"query done","seq":{n},"rows":{d}}}',
)
APP_STDERR = "WARNING {s}: slow upstream call seq={n} took {d} ms"


@dataclass
class Written:
    """What the bench wrote: the exact number of rows each table must end up with."""

    access: int = 0
    """Envoy access lines (-> ``envoy_access``)."""
    logs: int = 0
    """Every other line (-> ``container_logs``)."""
    bytes: int = 0
    """Docker json-file bytes (what the runtime writes to disk)."""
    seq: int = 0
    """The next ``seq=`` number: makes every non-access line unique."""

    @property
    def lines(self) -> int:
        return self.access + self.logs


@dataclass
class Host:
    """The generated host: its containers per service and what was written so far."""

    roots: list[Path]
    """One Docker root per shipper (``--docker-root``); services are dealt round-robin."""
    envoy: dict[str, Container] = field(default_factory=dict)
    app: dict[str, Container] = field(default_factory=dict)
    written: Written = field(default_factory=Written)

    @property
    def containers(self) -> list[Container]:
        return [*self.envoy.values(), *self.app.values()]


def _esc(text: str) -> str:
    """JSON string body as dockerd writes it (our lines hold no ``\\``, ``<``, ``>``, controls)."""
    return text.replace('"', '\\"').replace("&", "\\u0026")


class Clock:
    """Formats epoch milliseconds the way Envoy and dockerd do, caching the per-second part."""

    def __init__(self) -> None:
        self._sec: dict[int, str] = {}

    def second(self, sec: int) -> str:
        text = self._sec.get(sec)
        if text is None:
            text = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._sec[sec] = text
        return text

    def envoy(self, ms: int) -> str:
        return f"{self.second(ms // 1000)}.{ms % 1000:03d}Z"

    def docker(self, ms: int, nanos: int) -> str:
        frac = f"{ms % 1000:03d}{nanos:06d}".rstrip("0")
        return f"{self.second(ms // 1000)}.{frac}Z" if frac else f"{self.second(ms // 1000)}Z"


class LineMaker:
    """Renders access, Envoy and app lines as Docker json-file entries, from bulk random draws."""

    def __init__(self, seed: int, written: Written) -> None:
        self.rng = np.random.default_rng(seed)
        self.clock = Clock()
        self.written = written
        codes = np.array([o[2] for o in OUTCOMES], dtype=float)
        self._outcome_p = codes / codes.sum()

    def access(self, service: str, times_ms: np.ndarray) -> list[str]:
        """Docker entries of Envoy access lines (default format) at ``times_ms``."""
        n = len(times_ms)
        rng = self.rng
        methods = METHODS[rng.integers(0, len(METHODS), n)]
        paths = PATHS[rng.integers(0, len(PATHS), n)]
        ids = rng.integers(1, 99999, n)
        outcomes = rng.choice(len(OUTCOMES), n, p=self._outcome_p)
        received = np.where(rng.random(n) < 0.8, 0, rng.integers(10, 4000, n))
        sent = rng.integers(100, 40000, n)
        duration = rng.exponential(25, n).astype(np.int64) + 1
        xff = rng.integers(0, 1 << 16, n)
        agents = AGENTS[rng.integers(0, len(AGENTS), n)]
        uuids = rng.integers(0, 1 << 63, (n, 2), dtype=np.int64)
        nanos = rng.integers(1, 999, n)
        upstream = rng.integers(2, 40, n)
        authority = f"{service}.internal:8080"
        clock = self.clock
        out = []
        for i in range(n):
            code, flags, _ = OUTCOMES[outcomes[i]]
            ms = int(times_ms[i])
            path = paths[i].replace("{s}", service).replace("{id}", str(ids[i]))
            path = path.replace("{p}", str(ids[i] % 9 + 1))
            dur = int(duration[i])
            ust = "-" if flags != "-" else str(max(0, dur - 1))
            xf = "-" if xff[i] & 3 else f"10.1.{xff[i] >> 8}.{xff[i] & 255}"
            hi, lo = int(uuids[i, 0]), int(uuids[i, 1])
            rid = (
                f"{hi >> 31:08x}-{(hi >> 15) & 0xFFFF:04x}-4{hi & 0xFFF:03x}-"
                f"{0x8000 | (lo >> 48) & 0x3FFF:04x}-{lo & 0xFFFFFFFFFFFF:012x}"
            )
            up = "-" if flags in ("UH", "NR") else f"10.0.{upstream[i]}.17:8080"
            line = (
                f'[{clock.envoy(ms)}] "{methods[i]} {path} HTTP/1.1" {code} {flags} '
                f"{received[i]} {sent[i]} {dur} {ust} "
                f'"{xf}" "{agents[i]}" "{rid}" "{authority}" "{up}"'
            )
            out.append(
                f'{{"log":"{_esc(line)}\\n","stream":"stdout",'
                f'"time":"{clock.docker(ms, int(nanos[i]))}"}}\n'
            )
        self.written.access += n
        return out

    def plain(self, service: str, times_ms: np.ndarray, envoy: bool) -> list[str]:
        """Docker entries of non-access lines: Envoy's own lines or the app's output."""
        n = len(times_ms)
        kinds = self.rng.integers(0, 10, n)
        values = self.rng.integers(1, 900, n)
        clock = self.clock
        out = []
        for i in range(n):
            ms = int(times_ms[i])
            seq = self.written.seq
            self.written.seq += 1
            stream = "stdout"
            if envoy:
                text = (
                    f"[{clock.second(ms // 1000).replace('T', ' ')}.{ms % 1000:03d}]"
                    f"[1][info][upstream] cds: add/update cluster '{service}_{seq}' done"
                )
            elif kinds[i] == 9:
                stream = "stderr"
                text = APP_STDERR.format(s=service, n=seq, d=values[i])
            else:
                text = APP_MESSAGES[kinds[i] % 3].format(s=service, n=seq, d=values[i], w=i % 4)
            out.append(
                f'{{"log":"{_esc(text)}\\n","stream":"{stream}",'
                f'"time":"{clock.docker(ms, 100 + values[i])}"}}\n'
            )
        self.written.logs += n
        return out


def _spec(name: str, i: int) -> ServiceSpec:
    base = SERVICES[i % len(SERVICES)]
    return dataclasses.replace(base, name=name, authority=f"{name}.internal:8080")


def _spread(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` by ``weights`` into integers that add up to ``total`` exactly."""
    scale = total / sum(weights)
    parts = [int(w * scale) for w in weights]
    parts[0] += total - sum(parts)
    return parts


def write_host(
    roots: list[Path], lines: int, minutes: float, seed: int = 42
) -> tuple[Host, LineMaker]:
    """Write ``lines`` lines over the ``minutes`` before now (Docker layout), services dealt
    round-robin over ``roots`` (one per shipper).

    Traffic per service falls off as 1/(1 + 0.25 i), so a few services are busy and most are
    quiet, as on a real host. Returns the host and the line maker (to append more later).
    """
    host = Host(roots)
    maker = LineMaker(seed, host.written)
    rng = random.Random(seed)
    writers = []
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
        writers.append(HostWriter(root, rng))
    end_ms = int(time.time() * 1000) - 5000
    start_ms = end_ms - int(minutes * 60_000)
    started = datetime.fromtimestamp(start_ms / 1000, UTC) - timedelta(minutes=5)
    per_service = _spread(lines, [1 / (1 + 0.25 * i) for i in range(len(SERVICE_NAMES))])
    for i, (name, n) in enumerate(zip(SERVICE_NAMES, per_service, strict=True)):
        spec = _spec(name, i)
        writer = writers[i % len(writers)]
        host.envoy[name] = envoy = writer.container(spec, "envoy", 10 + i, started)
        host.app[name] = app = writer.container(spec, "app", 10 + i, started)
        n_envoy = round(n * ENVOY_SHARE)
        n_own = max(1, round(n_envoy * ENVOY_OWN_SHARE))
        envoy_times = np.sort(maker.rng.integers(start_ms, end_ms, n_envoy))
        own_at = np.zeros(n_envoy, dtype=bool)
        own_at[maker.rng.choice(n_envoy, n_own, replace=False)] = True
        access = iter(maker.access(name, envoy_times[~own_at]))
        own = iter(maker.plain(name, envoy_times[own_at], envoy=True))
        with open(envoy.log_path, "w", encoding="utf-8", buffering=1 << 20) as out:
            out.writelines(next(own) if flag else next(access) for flag in own_at)
        app_times = np.sort(maker.rng.integers(start_ms, end_ms, n - n_envoy))
        with open(app.log_path, "w", encoding="utf-8", buffering=1 << 20) as out:
            out.writelines(maker.plain(name, app_times, envoy=False))
    host.written.bytes = sum(c.log_path.stat().st_size for c in host.containers)
    return host, maker


def append(path: Path, entries: list[str]) -> int:
    """Append entries in one ``write`` (O_APPEND, as dockerd does); returns the bytes written."""
    data = "".join(entries).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return len(data)
