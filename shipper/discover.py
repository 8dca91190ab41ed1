"""Finding log sources on a host: Docker json-file containers, CRI pod logs and plain files.

Each source is one *live* path plus the metadata every record of it carries. The service name
follows DESIGN.md §2: label ``logq.service``; ECS ``com.amazonaws.ecs.task-definition-family``;
``com.docker.compose.service``; the Kubernetes pod's owner (pod name less its generated
suffixes); else the container name.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("logq.shipper.discover")

LABEL_SERVICE = "logq.service"
LABEL_FORMAT = "logq.format"
LABEL_ECS_FAMILY = "com.amazonaws.ecs.task-definition-family"
LABEL_COMPOSE_SERVICE = "com.docker.compose.service"
LABEL_K8S_POD = "io.kubernetes.pod.name"
COMPRESSED_SUFFIXES = (".gz", ".zst", ".bz2", ".xz", ".zip", ".lz4", ".tmp")


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A live log file and what its records say about where they come from."""

    key: str
    """Stable identity of the source across rotations (``docker:<id>``, ``cri:<dir>/<n>``...)."""
    path: Path
    """The live file; rotated siblings are ``<path>.<suffix>``."""
    format: str
    """Parser: ``docker``, ``cri`` or ``plain``."""
    service: str
    container_id: str = ""
    container_name: str = ""
    image: str = ""
    format_hint: str | None = None
    """Value of the ``logq.format`` label, passed on as the ``format`` record key."""

    @property
    def tag(self) -> str:
        return f"logq.{self.service}"


# Kubernetes' rand.SafeEncodeString alphabet: generated name suffixes use only these.
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_POD_RANDOM = re.compile(rf"^(.+)-[{_SAFE}]{{5}}$")
_TEMPLATE_HASH = re.compile(rf"^(.+)-[{_SAFE}]{{6,10}}$")
_CRONJOB_TIME = re.compile(r"^(.+)-\d{8,10}$")
_ORDINAL = re.compile(r"^(.+)-\d+$")


def pod_owner_name(pod: str) -> str:
    """The workload a pod belongs to, from its generated name.

    ``recipe-5d8f7c9b6d-x2x7k`` (Deployment) -> ``recipe``; ``agent-x2x7k`` (DaemonSet, Job)
    -> ``agent``; ``report-28391234-x2x7k`` (CronJob) -> ``report``; ``db-0`` (StatefulSet)
    -> ``db``. A name without such suffixes is its own owner.
    """
    m = _POD_RANDOM.match(pod)
    if m:
        base = m.group(1)
        for pattern in (_TEMPLATE_HASH, _CRONJOB_TIME):
            m2 = pattern.match(base)
            if m2:
                return m2.group(1)
        return base
    m = _ORDINAL.match(pod)
    return m.group(1) if m else pod


def service_name(labels: dict[str, str], container_name: str) -> str:
    """The service of a container by DESIGN.md §2's order of precedence."""
    for key in (LABEL_SERVICE, LABEL_ECS_FAMILY, LABEL_COMPOSE_SERVICE):
        value = labels.get(key)
        if value:
            return value
    pod = labels.get(LABEL_K8S_POD)
    if pod:
        return pod_owner_name(pod)
    return container_name or "unknown"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read container metadata path=%s error=%s", path, exc)
        return None
    return doc if isinstance(doc, dict) else None


def docker_source(container_dir: Path) -> SourceSpec | None:
    """The source of one ``<docker-root>/<id>`` directory, or None if it has no json-file log."""
    cid = container_dir.name
    path = container_dir / f"{cid}-json.log"
    if not path.exists():
        return None
    doc = _read_json(container_dir / "config.v2.json") or {}
    config = doc.get("Config") if isinstance(doc.get("Config"), dict) else {}
    labels = config.get("Labels") if isinstance(config.get("Labels"), dict) else {}
    labels = {str(k): str(v) for k, v in (labels or {}).items()}
    name = str(doc.get("Name") or cid[:12]).lstrip("/")
    return SourceSpec(
        key=f"docker:{cid}",
        path=path,
        format="docker",
        service=service_name(labels, name),
        container_id=cid,
        container_name=name,
        image=str(config.get("Image") or ""),
        format_hint=labels.get(LABEL_FORMAT) or None,
    )


def discover_docker(root: Path) -> list[SourceSpec]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("cannot list docker root path=%s error=%s", root, exc)
        return []
    out = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            spec = docker_source(Path(entry.path))
            if spec is not None:
                out.append(spec)
    return out


_CRI_LOG = re.compile(r"^\d+\.log$")
#: Folders under the CRI root already reported as not pod folders (warned once each).
_NOT_PODS: set[str] = set()


def discover_cri(root: Path) -> list[SourceSpec]:
    """``<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`` files."""
    out: list[SourceSpec] = []
    try:
        pod_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("cannot list CRI root path=%s error=%s", root, exc)
        return []
    for pod_dir in pod_dirs:
        parts = pod_dir.name.split("_")
        if len(parts) < 3:
            if pod_dir.name not in _NOT_PODS:
                _NOT_PODS.add(pod_dir.name)
                log.warning(
                    "not a pod folder (<namespace>_<pod>_<uid>), its files are not shipped path=%s",
                    pod_dir,
                )
            continue
        # Namespaces and uids hold no "_" (DNS labels, UUIDs): the rest is the pod name.
        pod, uid = "_".join(parts[1:-1]), parts[-1]
        try:
            containers = sorted(c for c in pod_dir.iterdir() if c.is_dir())
        except OSError:
            continue
        for cdir in containers:
            try:
                logs = sorted(f for f in cdir.iterdir() if _CRI_LOG.match(f.name))
            except OSError:
                continue
            for f in logs:
                fmt = _pod_log_format(f)
                if fmt is None:
                    continue
                out.append(
                    SourceSpec(
                        key=f"cri:{pod_dir.name}/{cdir.name}/{f.name}",
                        path=f,
                        format=fmt,
                        service=pod_owner_name(pod),
                        container_id=f"{uid}/{cdir.name}",
                        container_name=cdir.name,
                        format_hint=None,
                    )
                )
    return out


#: Pod log symlinks already reported as dangling (once each, not every discovery pass).
_DANGLING: set[str] = set()


def _pod_log_format(path: Path) -> str | None:
    """``cri``, or ``docker`` for a symlink into Docker's json-file logs (dockershim and
    cri-dockerd link ``/var/log/pods`` files to ``<id>-json.log``); None (skip, reported once)
    for a symlink whose target is not there: the folder it points into is not mounted."""
    if not path.is_symlink():
        return "cri"
    target = Path(os.path.realpath(path))
    if not target.exists():
        if str(path) not in _DANGLING:
            _DANGLING.add(str(path))
            log.warning(
                "pod log is a symlink to a file the shipper cannot see: mount %s into the "
                "shipper (read-only is enough) path=%s target=%s",
                target.parent.parent,
                path,
                target,
            )
        return None
    return "docker" if target.name.endswith("-json.log") else "cri"


def discover_paths(patterns: tuple[str, ...]) -> list[SourceSpec]:
    """Plain-text files matching ``--path`` globs (``**`` allowed); service = file name stem."""
    out: dict[str, SourceSpec] = {}
    for pattern in patterns:
        for name in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
            path = Path(name).absolute()
            if not path.is_file() or path.name.endswith(COMPRESSED_SUFFIXES):
                continue
            stem = path.name.split(".")[0] or path.name
            out.setdefault(
                str(path),
                SourceSpec(
                    key=f"file:{path}",
                    path=path,
                    format="plain",
                    service=stem,
                    container_name=path.name,
                ),
            )
    return list(out.values())


def discover_all(docker_root: Path, cri_root: Path, patterns: tuple[str, ...]) -> list[SourceSpec]:
    """Every source on the host right now, deduplicated by key."""
    found: dict[str, SourceSpec] = {}
    for spec in (*discover_docker(docker_root), *discover_cri(cri_root), *discover_paths(patterns)):
        found.setdefault(spec.key, spec)
    return list(found.values())


def rotated_siblings(path: Path) -> list[Path]:
    """Uncompressed rotated copies of ``path`` (``x-json.log.1``, ``0.log.20240101-120000``)."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    prefix = path.name + "."
    return [
        path.parent / n
        for n in names
        if n.startswith(prefix) and not n.endswith(COMPRESSED_SUFFIXES)
    ]
