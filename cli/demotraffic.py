"""The traffic model behind ``logq demo``: requests through Envoy sidecars and what apps print.

A request enters one service at the edge and fans out to the services it depends on; every hop is
one line in the *callee's* Envoy sidecar (its ingress listener), all hops sharing the edge
``x-request-id`` as Envoy propagates it. The app container behind each sidecar prints JSON and
plain lines on stdout, warnings and Python tracebacks on stderr. Failures follow what Envoy really
reports: connection failures (``UF``, ``UF,URX`` after retries), no healthy upstream (``UH``),
circuit-breaker overflow (``UO``), upstream timeouts (``UT``, 504), no route (``NR``, 404),
downstream disconnects (code 0, ``DC``), plus 500/502 produced by the app itself; one service
suffers a short incident so that ``logq errors`` has a story to tell.

Every line is produced from typed values first, so the values double as the expected warehouse
rows (:class:`AccessRow`, :class:`LogRow`) that tests compare the real pipeline against.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cli.demoservices import (
    CUISINES,
    ENVOY_FAILURE_WEIGHTS,
    ENVOY_FAILURES,
    INCIDENT_SECONDS,
    INTERNAL_AGENT,
    QUERIES,
    SERVICES,
    USER_AGENTS,
    Endpoint,
    ServiceSpec,
)


@dataclass(frozen=True)
class AccessRow:
    """An Envoy access line and the ``envoy_access`` row it must become."""

    service: str
    start: datetime
    method: str
    path: str
    protocol: str
    response_code: int
    response_flags: str
    bytes_received: int
    bytes_sent: int
    duration_ms: int
    upstream_service_time_ms: int | None
    x_forwarded_for: str | None
    user_agent: str
    request_id: str
    authority: str
    upstream_host: str | None

    def line(self) -> str:
        """The line in Envoy's default access-log format (unset values print ``-``)."""

        def dash(value: object) -> str:
            return "-" if value is None else str(value)

        start = self.start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.start.microsecond // 1000:03d}Z"
        return (
            f'[{start}] "{self.method} {self.path} {self.protocol}" {self.response_code} '
            f"{self.response_flags} {self.bytes_received} {self.bytes_sent} {self.duration_ms} "
            f'{dash(self.upstream_service_time_ms)} "{dash(self.x_forwarded_for)}" '
            f'"{self.user_agent}" "{self.request_id}" "{self.authority}" '
            f'"{dash(self.upstream_host)}"'
        )


@dataclass(frozen=True)
class LogRow:
    """A line some container printed that must become a ``container_logs`` row."""

    service: str
    time: datetime
    stream: str
    message: str
    sidecar: bool = False
    """Printed by the Envoy sidecar (its own log, or an access line that cannot be parsed)."""


@dataclass(frozen=True)
class Outcome:
    """How a request ended, as its Envoy access line reports it."""

    code: int
    flags: str
    sent: int
    host: str | None
    service_time: int | None
    duration: int
    app_error: bool
    """The app failed (500/502) and printed a traceback."""


@dataclass
class Traffic:
    """Everything the host's containers printed, in no particular order."""

    access: list[AccessRow]
    logs: list[LogRow]


class TrafficModel:
    """Generates :class:`Traffic` for a window of time, deterministically from a seed."""

    def __init__(self, rng: random.Random, services: tuple[ServiceSpec, ...] = SERVICES) -> None:
        self.rng = rng
        self.services = {s.name: s for s in services}
        self.upstreams = {s.name: self._upstream_addrs(s) for s in services}

    def _upstream_addrs(self, spec: ServiceSpec) -> list[str]:
        port = spec.authority.rsplit(":", 1)[1]
        if spec.ipv6:
            return [
                f"[2600:1f18:4a3:6901::{self.rng.randrange(16, 255):x}]:{port}" for _ in range(3)
            ]
        return [
            f"10.0.{self.rng.randrange(1, 8)}.{self.rng.randrange(2, 250)}:{port}" for _ in range(3)
        ]

    def generate(
        self, start: datetime, end: datetime, requests: int, incident: tuple[str, datetime] | None
    ) -> Traffic:
        """``requests`` edge requests spread over ``[start, end)``, with their fan-out hops."""
        traffic = Traffic(access=[], logs=[])
        edge = [s for s in self.services.values() if s.name not in ("auth", "catalog")]
        span = (end - start).total_seconds()
        storm = requests // 8 if incident and incident[0] in self.services else 0
        for n in range(requests + storm):
            if n < requests:
                at = start + timedelta(seconds=self.rng.random() * span)
                entry = self.rng.choice(edge or list(self.services.values()))
            else:  # clients retrying into the incident
                assert incident is not None
                at = incident[1] + timedelta(seconds=self.rng.random() * INCIDENT_SECONDS)
                entry = self.services[incident[0]]
            at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # Envoy logs milliseconds
            request_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            client = self._client()
            self._hop(traffic, entry, at, request_id, client, incident, retry=n >= requests)
            for i, callee in enumerate(entry.calls):
                if callee in self.services:
                    hop_at = at + timedelta(milliseconds=2 + 3 * i)
                    self._hop(traffic, self.services[callee], hop_at, request_id, None, incident)
        return traffic

    def _client(self) -> tuple[str | None, str]:
        """The edge client's x-forwarded-for (None when absent) and user agent."""
        roll = self.rng.random()
        if roll < 0.15:
            xff = None
        elif roll < 0.35:
            xff = f"198.51.100.{self.rng.randrange(1, 255)}, 10.0.0.{self.rng.randrange(2, 250)}"
        else:
            xff = f"203.0.113.{self.rng.randrange(1, 255)}"
        return xff, self.rng.choice(USER_AGENTS)

    def _fill(self, template: str) -> str:
        rng = self.rng
        values = {
            "id": str(rng.randrange(1000, 99999)),
            "sku": f"SKU-{rng.randrange(10000, 99999)}",
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "cuisine": rng.choice(CUISINES),
            "page": str(rng.randrange(1, 6)),
            "q": rng.choice(QUERIES),
            "prefix": rng.choice(("chi", "pa", "tir", "gl")),
            "ids": ",".join(str(rng.randrange(100, 999)) for _ in range(3)),
        }
        return template.format(**values)

    def _hop(
        self,
        traffic: Traffic,
        spec: ServiceSpec,
        at: datetime,
        request_id: str,
        client: tuple[str | None, str] | None,
        incident: tuple[str, datetime] | None,
        retry: bool = False,
    ) -> None:
        rng = self.rng
        routes = [e for e in spec.endpoints if e.error_prone or not retry] or list(spec.endpoints)
        ep = rng.choices(routes, weights=[e.weight for e in routes])[0]
        path = self._fill(ep.path)
        xff, agent = client if client else (None, INTERNAL_AGENT)
        upstream = rng.choice(self.upstreams[spec.name])
        service_time = max(1, int(rng.lognormvariate(0, 0.6) * ep.latency_ms))
        in_incident = (
            incident is not None
            and incident[0] == spec.name
            and incident[1] <= at < incident[1] + timedelta(seconds=INCIDENT_SECONDS)
        )
        out = self._outcome(ep, upstream, service_time, in_incident)
        if out.app_error:
            self._traceback(traffic, spec, at, request_id, path)
        traffic.access.append(
            AccessRow(
                service=spec.name,
                start=at,
                method=ep.method,
                path=path,
                protocol="HTTP/2" if client and "Mobile" in agent else "HTTP/1.1",
                response_code=out.code,
                response_flags=out.flags,
                bytes_received=ep.req_bytes,
                bytes_sent=out.sent,
                duration_ms=out.duration,
                upstream_service_time_ms=out.service_time,
                x_forwarded_for=xff,
                user_agent=agent,
                request_id=request_id,
                authority=spec.authority,
                upstream_host=out.host,
            )
        )
        if out.code and out.flags == "-" and rng.random() < 0.6:
            self._app_line(traffic, spec, at, request_id, ep.method, path, out.code, service_time)

    def _outcome(
        self, ep: Endpoint, upstream: str, service_time: int, in_incident: bool
    ) -> Outcome:
        """How one request ended: success, an Envoy-made failure, an app 5xx, a 4xx, or the
        client going away (code 0, ``DC``)."""
        rng = self.rng
        code, flags, sent = 200 if ep.method == "GET" else 201, "-", ep.resp_bytes
        sent = max(0, int(sent * rng.uniform(0.7, 1.3)))
        host: str | None = upstream
        ust: int | None = service_time
        duration = service_time + rng.randrange(0, 3)
        app_error = False
        if in_incident:
            fail_rate = 0.75 if ep.error_prone else 0.06
        else:
            fail_rate = 0.08 if ep.error_prone else 0.0
        roll = rng.random()
        if roll < fail_rate:
            if rng.random() < 0.6 or in_incident:
                code, flags, sent, has_host, _ = rng.choices(
                    ENVOY_FAILURES, weights=ENVOY_FAILURE_WEIGHTS
                )[0]
                host, ust = (upstream if has_host else None), None
                if flags == "UT":
                    duration = 15000 + rng.randrange(0, 40)
                elif flags in ("UF", "UF,URX"):
                    duration = rng.randrange(1, 250) + (50 if "URX" in flags else 0)
                else:
                    duration = rng.randrange(0, 3)
            else:
                code = rng.choice((500, 502))
                flags, sent, app_error = "-", rng.randrange(40, 180), True
        elif roll < fail_rate + 0.004:
            code, flags, sent, host, ust = 0, "DC", 0, upstream, None
        elif roll > 0.985:
            code, flags, sent, host, ust, duration = 404, "NR", 0, None, None, 0
        elif roll > 0.96:
            code, sent = rng.choice((400, 401, 404, 429)), rng.randrange(20, 120)
        return Outcome(code, flags, sent, host, ust, duration, app_error)

    def _app_line(
        self,
        traffic: Traffic,
        spec: ServiceSpec,
        at: datetime,
        request_id: str,
        method: str,
        path: str,
        code: int,
        took: int,
    ) -> None:
        rng = self.rng
        when = at + timedelta(milliseconds=max(0, took - 1), microseconds=rng.randrange(0, 999))
        if rng.random() < 0.7:
            doc = {
                "level": "info" if code < 400 else "warning",
                "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "logger": f"{spec.name}.http",
                "msg": "request finished",
                "method": method,
                "path": path.split("?", 1)[0],
                "status": code,
                "duration_ms": took,
                "request_id": request_id,
            }
            traffic.logs.append(LogRow(spec.name, when, "stdout", json.dumps(doc)))
        else:
            stamp = when.strftime("%Y-%m-%d %H:%M:%S,") + f"{when.microsecond // 1000:03d}"
            msg = f"{stamp} INFO [{spec.name}.handlers] {method} {path} -> {code} in {took}ms"
            traffic.logs.append(LogRow(spec.name, when, "stdout", msg))
        if took > 4 * max(1, self._typical(spec)) and rng.random() < 0.5:
            warn = f"WARNING: slow request {request_id}: {took} ms (db pool 9/10 busy)"
            traffic.logs.append(LogRow(spec.name, when, "stderr", warn))

    def _typical(self, spec: ServiceSpec) -> int:
        return min(e.latency_ms for e in spec.endpoints)

    def _traceback(
        self, traffic: Traffic, spec: ServiceSpec, at: datetime, request_id: str, path: str
    ) -> None:
        when = at + timedelta(milliseconds=self.rng.randrange(1, 20))
        host = f"10.0.9.{self.rng.randrange(2, 250)}"
        lines = (
            f"ERROR [{spec.name}.handlers] unhandled error in {path} request_id={request_id}",
            "Traceback (most recent call last):",
            f'  File "/app/{spec.name}/handlers.py", line 88, in handle',
            "    row = await db.fetch_one(query, values)",
            '  File "/usr/local/lib/python3.11/site-packages/databases/core.py", line 179, '
            "in fetch_one",
            "    return await connection.fetch_one(query, values)",
            f'asyncpg.exceptions.ConnectionDoesNotExistError: connection to "{host}:5432" '
            "was closed in the middle of operation",
        )
        for i, text in enumerate(lines):
            traffic.logs.append(LogRow(spec.name, when + timedelta(microseconds=i), "stderr", text))

    def envoy_own_lines(self, spec: ServiceSpec, start: datetime, end: datetime) -> list[LogRow]:
        """Envoy's own log (stderr): start-up lines and xDS reconnects, not access lines."""
        rng = self.rng
        rows = []
        lines = (
            "[info][main] [source/server/server.cc:430] initializing epoch 0 (base id=0, "
            "hot restart version=11.104)",
            "[info][main] [source/server/server.cc:932] starting main dispatch loop",
            "[info][upstream] [source/common/upstream/cluster_manager_impl.cc:222] "
            "cm init: all clusters initialized",
        )
        for i, text in enumerate(lines):
            when = start - timedelta(minutes=5) + timedelta(milliseconds=37 * i)
            rows.append(LogRow(spec.name, when, "stderr", _envoy_log_prefix(when) + text, True))
        for _ in range(rng.randrange(1, 4)):
            when = start + timedelta(seconds=rng.random() * (end - start).total_seconds())
            text = (
                "[warning][config] [source/extensions/config_subscription/grpc/"
                "grpc_stream.h:193] StreamAggregatedResources gRPC config stream to xds_cluster "
                "closed since 42s ago: 14, upstream connect error or disconnect/reset before "
                "headers. reset reason: connection termination"
            )
            rows.append(LogRow(spec.name, when, "stderr", _envoy_log_prefix(when) + text, True))
        return rows


def _envoy_log_prefix(when: datetime) -> str:
    stamp = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"
    return f"[{stamp}][14]"
