"""Write a realistic container host to a directory, laid out like Docker's json-file driver.

``<root>/<id>/<id>-json.log`` holds one JSON object per line (``log``, ``stream``, ``time`` in
RFC3339Nano with Go's trailing-zero trimming and HTML escaping, exactly as dockerd writes it) and
``<root>/<id>/config.v2.json`` the container's metadata (``Name``, ``Config.Image``,
``Config.Labels`` with the ECS agent's labels). Each service runs as an ECS task of two
containers: an Envoy sidecar and the app. ``root`` is what ``logq-shipper --docker-root`` reads.
The ``cri`` layout writes the same services as Kubernetes pods for ``--cri-root`` instead.

:func:`write_host` returns a :class:`Manifest`: the rows each line must become in the warehouse,
computed from the typed values the lines were rendered from (not by parsing them back), so tests
can check the whole pipeline against an independent truth.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cli.demoruntime import (
    cri_entry,
    docker_config,
    docker_entry,
    rfc3339nano,
    split_parts,
)
from cli.demoservices import SERVICES, ServiceSpec
from cli.demotraffic import AccessRow, LogRow, TrafficModel

ENVOY_IMAGE = "envoyproxy/envoy:v1.31.2"
ECS_CLUSTER = "prod-eu-west-1"
ACCOUNT = "123456789012"
K8S_NAMESPACE = "shop"
#: ``docker``: what ``logq-shipper --docker-root`` reads; ``cri``: what ``--cri-root`` reads.
LAYOUTS = ("docker", "cri")


@dataclass(frozen=True)
class Container:
    """One container of the demo host."""

    id: str
    name: str
    """Docker name without the leading ``/``; a pod's container name in the ``cri`` layout."""
    service: str
    role: str
    """``envoy`` (the sidecar) or ``app``."""
    image: str
    log_path: Path
    container_name: str
    """What the rows' ``container_name`` holds: the ECS label ``container-name`` (``envoy``,
    ``recipe``), or ``<namespace>/<pod>/<container>`` for a pod."""


@dataclass
class Manifest:
    """What was written: the containers and the rows every line must become."""

    root: Path
    containers: list[Container]
    access: list[dict[str, Any]] = field(default_factory=list)
    """Expected ``envoy_access`` rows (without ``host``), one per access line."""
    logs: list[dict[str, Any]] = field(default_factory=list)
    """Expected ``container_logs`` rows (without ``host``), one per other line."""
    layout: str = "docker"
    docker_entries: int = 0
    """Log file entries written in total (a split long line counts once per part)."""

    @property
    def services(self) -> list[str]:
        return sorted({c.service for c in self.containers})

    def rows(self, table: str) -> list[dict[str, Any]]:
        return {"envoy_access": self.access, "container_logs": self.logs}[table]

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per table and service: ``{"envoy_access": {"recipe": 812, ...}, ...}``."""
        return {
            table: dict(sorted(Counter(r["service"] for r in self.rows(table)).items()))
            for table in ("envoy_access", "container_logs")
        }

    def errors(self, service: str | None = None) -> Counter[tuple[str, int, str]]:
        """5xx responses counted by ``(path, response_code, response_flags)``."""
        return Counter(
            (r["path"], r["response_code"], r["response_flags"])
            for r in self.access
            if 500 <= r["response_code"] <= 599 and (service is None or r["service"] == service)
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest: per-table counts, 5xx per service, code and flags."""
        by_code: Counter[str] = Counter()
        for r in self.access:
            if 500 <= r["response_code"] <= 599:
                by_code[f"{r['service']} {r['response_code']} {r['response_flags']}"] += 1
        return {
            "root": str(self.root),
            "containers": len(self.containers),
            "docker_entries": self.docker_entries,
            "rows": self.counts(),
            "errors_5xx": dict(sorted(by_code.items())),
        }


def _ms(ts: datetime) -> datetime:
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


class HostWriter:
    """Lays the containers out on disk and records the expected rows."""

    def __init__(self, root: Path, rng: random.Random, layout: str = "docker") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
        self.root = root
        self.rng = rng
        self.layout = layout
        self.manifest = Manifest(root=root, containers=[], layout=layout)
        self._pods: dict[str, tuple[str, str]] = {}

    def container(
        self, spec: ServiceSpec, role: str, revision: int, started: datetime
    ) -> Container:
        if self.layout == "cri":
            return self._pod_container(spec, role)
        return self._docker_container(spec, role, revision, started)

    def _pod_container(self, spec: ServiceSpec, role: str) -> Container:
        """``<root>/<namespace>_<pod>_<uid>/<container>/0.log``, as the kubelet lays it out."""
        if spec.name not in self._pods:
            alphabet = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generated-name alphabet
            rs_hash = "".join(self.rng.choice(alphabet) for _ in range(10))
            suffix = "".join(self.rng.choice(alphabet) for _ in range(5))
            uid = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            self._pods[spec.name] = (f"{spec.name}-{rs_hash}-{suffix}", uid)
        pod, uid = self._pods[spec.name]
        name = "envoy" if role == "envoy" else spec.name
        folder = self.root / f"{K8S_NAMESPACE}_{pod}_{uid}" / name
        folder.mkdir(parents=True)
        image = ENVOY_IMAGE if role == "envoy" else spec.app_image
        container = Container(
            f"{uid}/{name}", name, spec.name, role, image, folder / "0.log",
            container_name=f"{K8S_NAMESPACE}/{pod}/{name}",
        )  # fmt: skip
        self.manifest.containers.append(container)
        return container

    def _docker_container(
        self, spec: ServiceSpec, role: str, revision: int, started: datetime
    ) -> Container:
        cid = f"{self.rng.getrandbits(256):064x}"
        task = f"{self.rng.getrandbits(128):032x}"
        ecs_name = "envoy" if role == "envoy" else spec.name
        name = f"ecs-{spec.name}-{revision}-{ecs_name}-{self.rng.getrandbits(64):016x}"[:63]
        image = ENVOY_IMAGE if role == "envoy" else spec.app_image
        folder = self.root / cid
        folder.mkdir(parents=True)
        labels = {
            "com.amazonaws.ecs.cluster": ECS_CLUSTER,
            "com.amazonaws.ecs.container-name": ecs_name,
            "com.amazonaws.ecs.task-arn": (
                f"arn:aws:ecs:eu-west-1:{ACCOUNT}:task/{ECS_CLUSTER}/{task}"
            ),
            "com.amazonaws.ecs.task-definition-family": spec.name,
            "com.amazonaws.ecs.task-definition-version": str(revision),
        }
        config = docker_config(
            cid=cid,
            name=name,
            image=image,
            role=role,
            labels=labels,
            started=started,
            log_path=folder / f"{cid}-json.log",
            pid=self.rng.randrange(1000, 60000),
            image_id=f"sha256:{self.rng.getrandbits(256):064x}",
            env=[f"SERVICE_NAME={spec.name}", "AWS_REGION=eu-west-1"],
        )
        (folder / "config.v2.json").write_text(json.dumps(config))
        container = Container(
            cid, name, spec.name, role, image, folder / f"{cid}-json.log", container_name=ecs_name
        )
        self.manifest.containers.append(container)
        return container

    @classmethod
    def resume(cls, manifest: Manifest, seed: int = 0) -> HostWriter:
        """A writer that adds to an existing host (tests: live appends, rotation, new files)."""
        writer = cls(manifest.root, random.Random(seed), manifest.layout)
        writer.manifest = manifest
        return writer

    def rotate(self, container: Container) -> Path:
        """Rotate like dockerd's json-file driver: ``.1`` -> ``.2`` ..., live -> ``.1``, new
        empty live file. Returns the path the old live file now has."""
        if self.layout != "docker":
            raise NotImplementedError("rotation is only modelled for the docker layout")
        path = container.log_path
        n = 1
        while path.with_name(f"{path.name}.{n}").exists():
            n += 1
        for i in range(n - 1, 0, -1):
            path.with_name(f"{path.name}.{i}").rename(path.with_name(f"{path.name}.{i + 1}"))
        rotated = path.with_name(f"{path.name}.1")
        path.rename(rotated)
        path.touch()
        return rotated

    def write_log(
        self,
        container: Container,
        access: list[AccessRow],
        logs: list[LogRow],
        append: bool = False,
    ) -> None:
        """Write the container's lines in time order and record the row each must become."""
        items: list[tuple[datetime, int, str, str, dict[str, Any], str]] = []
        base = {
            "service": container.service,
            "container_id": container.id,
            "container_name": container.container_name,
        }
        for row in access:
            expected = {"timestamp": _ms(row.start), **base, **_access_values(row)}
            items.append((row.start, len(items), "stdout", row.line(), expected, "envoy_access"))
        for row in logs:
            expected = {
                "timestamp": _ms(row.time),
                **base,
                "stream": row.stream,
                "message": row.message,
            }
            items.append(
                (row.time, len(items), row.stream, row.message, expected, "container_logs")
            )
        items.sort(key=lambda item: (item[0], item[1]))
        entries = 0
        with open(container.log_path, "a" if append else "w", encoding="utf-8") as out:
            for when, _, stream, text, expected, table in items:
                # Sub-millisecond nanoseconds: the runtime's clock is finer than Envoy's.
                time = rfc3339nano(when, self.rng.randrange(0, 1000))
                parts = split_parts(text)
                for i, part in enumerate(parts):
                    if self.layout == "cri":
                        out.write(cri_entry(part, stream, time, last=i == len(parts) - 1))
                    else:
                        out.write(docker_entry(part, stream, time))
                    entries += 1
                self.manifest.rows(table).append(expected)
        self.manifest.docker_entries += entries


def _access_values(row: AccessRow) -> dict[str, Any]:
    return {
        "method": row.method,
        "path": row.path,
        "protocol": row.protocol,
        "response_code": row.response_code,
        "response_flags": row.response_flags,
        "bytes_received": row.bytes_received,
        "bytes_sent": row.bytes_sent,
        "duration_ms": row.duration_ms,
        "upstream_service_time_ms": row.upstream_service_time_ms,
        "x_forwarded_for": row.x_forwarded_for,
        "user_agent": row.user_agent,
        "request_id": row.request_id,
        "authority": row.authority,
        "upstream_host": row.upstream_host,
    }


def _long_line(service: str, when: datetime, rng: random.Random) -> LogRow:
    """An app dumping a big JSON document in one line (Docker splits it at 16 KiB)."""
    items = [
        {
            "sku": f"SKU-{rng.randrange(10000, 99999)}",
            "name": f"Produit n°{i} — édition",
            "price_cents": rng.randrange(99, 99999),
        }
        for i in range(500)
    ]
    doc = {"level": "debug", "logger": f"{service}.cache", "msg": "cache snapshot", "items": items}
    return LogRow(service, when, "stdout", json.dumps(doc, ensure_ascii=False))


def write_host(
    root: Path,
    seed: int = 7,
    now: datetime | None = None,
    requests: int = 600,
    hours: float = 2.0,
    services: tuple[ServiceSpec, ...] = SERVICES,
    incident_service: str | None = "recipe",
    long_line: bool = True,
    layout: str = "docker",
) -> Manifest:
    """Write the demo host under ``root`` (created if missing) and return its :class:`Manifest`.

    ``requests`` edge requests (plus their fan-out hops) spread over the ``hours`` before
    ``now`` (default: the current time), reproducible for a given ``seed`` and ``now``.
    ``incident_service`` has eight bad minutes about 45 minutes ago; ``long_line`` adds one
    line over 16 KiB that the runtime splits into parts. ``layout="cri"`` writes the same
    services as Kubernetes pods (``<ns>_<pod>_<uid>/<container>/0.log``, CRI format) instead
    of Docker json-file containers with ECS labels.
    """
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; give write_host an empty or new directory")
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    end = now - timedelta(seconds=30)
    start = now - timedelta(hours=hours)
    incident = None
    if incident_service:
        incident = (incident_service, now - timedelta(minutes=45))
    model = TrafficModel(rng, services)
    traffic = model.generate(start, end, requests, incident)

    writer = HostWriter(root, rng, layout)
    for i, spec in enumerate(services):
        revision = 10 + i * 3
        started = start - timedelta(minutes=5)
        envoy = writer.container(spec, "envoy", revision, started)
        app = writer.container(spec, "app", revision, started)
        access = [r for r in traffic.access if r.service == spec.name]
        own = model.envoy_own_lines(spec, start, end)
        app_logs = [r for r in traffic.logs if r.service == spec.name and not r.sidecar]
        app_logs.insert(
            0,
            LogRow(
                spec.name,
                started + timedelta(seconds=1),
                "stdout",
                f"Starting {spec.name} 4.2.{revision} on 0.0.0.0 (workers=4)",
            ),
        )
        if long_line and i == len(services) - 1:
            app_logs.append(_long_line(spec.name, start + (end - start) / 2, rng))
        if i == 0 and access:
            # A line cut short (e.g. the sidecar killed mid-write): not an access line any more,
            # so it must land in container_logs rather than be dropped.
            cut = access[len(access) // 2]
            own.append(LogRow(spec.name, cut.start, "stdout", cut.line()[:72], True))
            access.remove(cut)
        writer.write_log(envoy, access, own)
        writer.write_log(app, [], app_logs)
    return writer.manifest


def main() -> None:  # pragma: no cover - a debugging aid: python -m cli.demohost DIR
    import sys

    manifest = write_host(Path(sys.argv[1]))
    print(json.dumps(manifest.summary(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
