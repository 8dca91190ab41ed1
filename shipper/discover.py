"""Finding log sources on a host: Docker json-file containers, CRI pod logs and plain files.

Each source is one *live* path plus the metadata every record of it carries. The service name
follows DESIGN.md §2: label ``logq.service``; ECS ``com.amazonaws.ecs.task-definition-family``;
``com.docker.compose.service``; the Kubernetes pod's owner (pod name less its generated
suffixes); else the container name.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("logq.shipper.discover")

LABEL_SERVICE = "logq.service"
LABEL_FORMAT = "logq.format"
LABEL_ECS_FAMILY = "com.amazonaws.ecs.task-definition-family"
LABEL_COMPOSE_SERVICE = "com.docker.compose.service"
LABEL_K8S_POD = "io.kubernetes.pod.name"
LABEL_K8S_POD_UID = "io.kubernetes.pod.uid"
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


#: A static pod's UID: the hex digest of its manifest (kubelet's config hash); API-created pods
#: have dashed UUIDs. Only a static pod's name ends with its node's name.
_CONFIG_HASH = re.compile(r"^[0-9a-f]{32}$")


def pod_owner_name(pod: str, nodes: tuple[str, ...] = (), uid: str = "") -> str:
    """The workload a pod belongs to, from its generated name.

    ``recipe-5d8f7c9b6d-x2x7k`` (Deployment) -> ``recipe``; ``agent-x2x7k`` (DaemonSet, Job)
    -> ``agent``; ``report-28391234-x2x7k`` (CronJob) -> ``report``; ``db-0`` (StatefulSet)
    -> ``db``; ``kube-apiserver-node-1`` (static pod: ``<name>-<node>``) -> ``kube-apiserver``
    when ``node-1`` is one of ``nodes`` (the host's names: the path does not say which node it
    is) *and* ``uid`` is a 32-hex config hash: a regular pod (dashed UUID) named
    ``spark-worker-1`` on node ``worker-1`` stays with its siblings ``spark-worker-0``/``-2``.
    A name without such suffixes is its own owner. An Indexed Job's ``train-3-x2x7k`` gives
    ``train-3``: from the name alone, the index cannot be told from a name that ends in a
    number (``migrate-42``, ``gpu-driver-535``), and a wrong cut would merge workloads.
    """
    if _CONFIG_HASH.match(uid):
        for node in nodes:
            if node and pod.endswith("-" + node) and len(pod) > len(node) + 1:
                return pod[: -len(node) - 1]
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


def node_names(hostname: str) -> tuple[str, ...]:
    """The names a static pod of this host may end with: the host name as given, lower-cased,
    and its first label (``ip-10-0-0-1.ec2.internal`` -> ``ip-10-0-0-1``)."""
    low = hostname.strip().lower()
    names = [low, low.split(".")[0]] if low else []
    return tuple(dict.fromkeys(n for n in names if n))


def service_name(labels: dict[str, str], container_name: str, nodes: tuple[str, ...] = ()) -> str:
    """The service of a container by DESIGN.md §2's order of precedence."""
    for key in (LABEL_SERVICE, LABEL_ECS_FAMILY, LABEL_COMPOSE_SERVICE):
        value = labels.get(key)
        if value:
            return value
    pod = labels.get(LABEL_K8S_POD)
    if pod:
        return pod_owner_name(pod, nodes, labels.get(LABEL_K8S_POD_UID, ""))
    return container_name or "unknown"


#: Errors that say the process is short of a resource, not that a file or folder is gone or
#: bad: a listing that fails with one of these tells nothing about which sources exist.
TRANSIENT_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.EIO}
)

#: Folders (and metadata files) reported as unreadable for good (EACCES...) that still fail:
#: warned once each, then skipped. One that can be read again leaves the set (:func:`_readable`),
#: so a later failure is warned about again, and the set holds only what fails now.
_UNLISTABLE: set[str] = set()


def _readable(path: str) -> None:
    """``path`` was listed or read: it is warned about again if it fails later."""
    if _UNLISTABLE:
        _UNLISTABLE.discard(path)


def _cannot_list(scan: Scan, what: str, path: str, exc: OSError, *, root: bool = False) -> None:
    """Record a failed listing of ``path``.

    A transient error (out of fds, EIO) makes the pass incomplete *for that folder only*: its
    sources may still exist, so they are not drained. A permanent one (EACCES, ENOTDIR, ELOOP)
    would fail at every pass: the folder is warned about once and skipped, so that one folder
    the shipper may never read does not stall discovery of the whole host.
    """
    if exc.errno in TRANSIENT_ERRNOS:
        scan.failures.append(f"cannot list {what} {path}: {exc}")
        scan.unsure.append(path)
        scan.roots_failed = scan.roots_failed or root
        return
    if path not in _UNLISTABLE:
        _UNLISTABLE.add(path)
        log.warning(
            "cannot list %s, its logs are not shipped: give the shipper (uid=%d) read access "
            "path=%s error=%s",
            what,
            os.geteuid(),
            path,
            exc,
        )


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    """What ``config.v2.json`` says about a container (empty when it is missing or bad)."""

    name: str = ""
    image: str = ""
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Scan:
    """The result of one discovery pass."""

    specs: list[SourceSpec] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """Listings or reads that failed for a transient reason (:data:`TRANSIENT_ERRNOS`): a
    source missing from :attr:`specs` may still exist. Permanent errors (EACCES...) are
    warned about once and their folder skipped: they are not failures."""
    unsure: list[str] = field(default_factory=list)
    """The folders those failures concern: only sources under them may be missing wrongly."""
    roots_failed: bool = False
    """A root (``--docker-root``, ``--cri-root``, a ``--path`` base) could not be listed."""

    @property
    def complete(self) -> bool:
        return not self.failures

    @property
    def blind(self) -> bool:
        """Whether nothing narrower than "everything" is known to be uncertain."""
        return bool(self.failures) and (self.roots_failed or not self.unsure)

    def may_have_missed(self, path: Path) -> bool:
        """Whether ``path`` may exist although this pass did not report it."""
        if not self.failures:
            return False
        if self.blind:
            return True
        p = str(path)
        return any(p == d or p.startswith(d.rstrip("/") + "/") for d in self.unsure)


_NO_META = ContainerMeta()
"""Metadata of a container without ``config.v2.json`` (not cached: it may appear)."""


def _version(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Discoverer:
    """Scans the roots; keeps what does not change between passes.

    ``config.v2.json`` is parsed again only when its (inode, mtime, size) changed: a host with
    1000 idle containers otherwise re-parsed 1000 files of several KB on every pass. A bad file
    is warned about once per version of it, and its fixed version is read at the next pass.
    """

    def __init__(
        self,
        docker_root: Path,
        cri_root: Path,
        patterns: tuple[str, ...],
        nodes: tuple[str, ...] = (),
    ) -> None:
        self.docker_root = docker_root
        self.cri_root = cri_root
        self.patterns = patterns
        self.nodes = nodes
        """Names of this node, stripped from static pod names (see :func:`pod_owner_name`)."""
        self._meta: dict[str, tuple[tuple[int, int, int], ContainerMeta]] = {}
        self._specs: dict[str, tuple[ContainerMeta, SourceSpec]] = {}
        """By ``config.v2.json`` path: the spec made from that metadata object."""
        self._cri: dict[str, SourceSpec] = {}

    def scan(self) -> Scan:
        """Every source on the host right now, deduplicated by key."""
        scan = Scan()
        found: dict[str, SourceSpec] = {}
        for spec in (
            *self._docker(scan),
            *_discover_cri(self.cri_root, scan, self.nodes, self._cri),
            *discover_paths(self.patterns, scan),
        ):
            found.setdefault(spec.key, spec)
        scan.specs = list(found.values())
        return scan

    # -- docker -----------------------------------------------------------------------------

    def _docker(self, scan: Scan) -> list[SourceSpec]:
        root = self.docker_root
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            self._meta.clear()
            return []
        except OSError as exc:
            _cannot_list(scan, "docker root", str(root), exc, root=True)
            return []
        _readable(str(root))
        out = []
        seen: set[str] = set()
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                spec = self._container(entry.path, entry.name, scan, seen)
                if spec is not None:
                    out.append(spec)
        for gone in set(self._meta) - seen:
            del self._meta[gone]
        for gone in set(self._specs) - seen:
            del self._specs[gone]
        return out

    def _container(self, cdir: str, cid: str, scan: Scan, seen: set[str]) -> SourceSpec | None:
        # Plain strings and a spec reused while the metadata is the same object: this runs for
        # every container on every pass.
        path = f"{cdir}/{cid}-json.log"
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            # EACCES: Docker's folders are root's (0700 or 0710); a shipper that is not root
            # must be told why nothing of this container arrives, not skip it in silence.
            _cannot_list(scan, "container folder", cdir, exc)
            return None
        _readable(cdir)
        config = f"{cdir}/config.v2.json"
        meta = self._metadata(config, scan, seen)
        if meta is None:
            return None  # cannot tell its service now; the next pass can
        known = self._specs.get(config)
        if known is not None and known[0] is meta:
            return known[1]
        spec = self._spec(Path(path), cid, meta)
        if meta is not _NO_META:
            self._specs[config] = (meta, spec)
        return spec

    def _spec(self, path: Path, cid: str, meta: ContainerMeta) -> SourceSpec:
        labels = dict(meta.labels)
        name = (meta.name or cid[:12]).lstrip("/")
        return SourceSpec(
            key=f"docker:{cid}",
            path=path,
            format="docker",
            service=service_name(labels, name, self.nodes),
            container_id=cid,
            container_name=name,
            image=meta.image,
            format_hint=labels.get(LABEL_FORMAT) or None,
        )

    def _metadata(self, path: str, scan: Scan, seen: set[str]) -> ContainerMeta | None:
        """The container's metadata; None when it cannot be read for now (out of fds...)."""
        key = path
        cached = self._meta.get(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return _NO_META
        except OSError as exc:
            if exc.errno in TRANSIENT_ERRNOS:
                return self._unreadable(path, exc, cached, scan, seen)
            if path not in _UNLISTABLE:  # EACCES...: shipped under the container's id
                _UNLISTABLE.add(path)
                log.warning(
                    "cannot read container metadata (uid=%d) path=%s error=%s",
                    os.geteuid(),
                    path,
                    exc,
                )
            return _NO_META
        _readable(path)
        version = _version(st)
        seen.add(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return _NO_META
        except (OSError, ValueError, RecursionError) as exc:
            if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
                return self._unreadable(path, exc, cached, scan, seen)
            # Shipped under the container's id until the file is fixed (warned once per version).
            log.warning("cannot read container metadata path=%s error=%s", path, exc)
            doc = {}
        meta = _parse_meta(doc)
        self._meta[key] = (version, meta)
        return meta

    @staticmethod
    def _unreadable(
        path: str,
        exc: OSError,
        cached: tuple[tuple[int, int, int], ContainerMeta] | None,
        scan: Scan,
        seen: set[str],
    ) -> ContainerMeta | None:
        if cached is not None:
            seen.add(path)
            return cached[1]  # what we knew is better than nothing
        scan.failures.append(f"cannot read container metadata {path}: {exc}")
        scan.unsure.append(os.path.dirname(path))
        return None


def _parse_meta(doc: object) -> ContainerMeta:
    if not isinstance(doc, dict):
        return ContainerMeta()
    config = doc.get("Config") if isinstance(doc.get("Config"), dict) else {}
    labels = config.get("Labels") if isinstance(config.get("Labels"), dict) else {}
    return ContainerMeta(
        name=str(doc.get("Name") or ""),
        image=str(config.get("Image") or ""),
        labels=tuple((str(k), str(v)) for k, v in (labels or {}).items()),
    )


def docker_source(container_dir: Path) -> SourceSpec | None:
    """The source of one ``<docker-root>/<id>`` directory, or None if it has no json-file log."""
    d = Discoverer(container_dir.parent, Path(), ())
    return d._container(str(container_dir), container_dir.name, Scan(), set())


def discover_docker(root: Path) -> list[SourceSpec]:
    return Discoverer(root, Path(), ())._docker(Scan())


_CRI_LOG = re.compile(r"^\d+\.log$")
#: Folders under the CRI root already reported as not pod folders (warned once each).
_NOT_PODS: set[str] = set()


def discover_cri(root: Path) -> list[SourceSpec]:
    """``<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`` files."""
    return _discover_cri(root, Scan())


def _dirs(path: str) -> list[os.DirEntry[str]]:
    """Sub-folders of ``path``, by name (``os.scandir``: no stat per entry)."""
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_dir(follow_symlinks=False)), key=lambda e: e.name)


def _discover_cri(
    root: Path,
    scan: Scan,
    nodes: tuple[str, ...] = (),
    cache: dict[str, SourceSpec] | None = None,
) -> list[SourceSpec]:
    """The CRI sources; ``cache`` (key -> spec, pruned here) spares re-making unchanged ones."""
    out: list[SourceSpec] = []
    known = cache if cache is not None else {}
    try:
        pod_dirs = _dirs(str(root))
    except (FileNotFoundError, NotADirectoryError):
        known.clear()
        return []
    except OSError as exc:
        _cannot_list(scan, "CRI root", str(root), exc, root=True)
        return []
    _readable(str(root))
    seen: set[str] = set()
    for pod_dir in pod_dirs:
        parts = pod_dir.name.split("_")
        if len(parts) < 3:
            if pod_dir.name not in _NOT_PODS:
                _NOT_PODS.add(pod_dir.name)
                log.warning(
                    "not a pod folder (<namespace>_<pod>_<uid>), its files are not shipped path=%s",
                    pod_dir.path,
                )
            continue
        # Namespaces and uids hold no "_" (DNS labels, UUIDs): the rest is the pod name.
        pod, uid = "_".join(parts[1:-1]), parts[-1]
        try:
            containers = _dirs(pod_dir.path)
        except FileNotFoundError:
            continue  # the pod was removed while we looked
        except OSError as exc:
            _cannot_list(scan, "pod folder", pod_dir.path, exc)
            continue
        _readable(pod_dir.path)
        for cdir in containers:
            try:
                with os.scandir(cdir.path) as it:
                    logs = sorted((f for f in it if _CRI_LOG.match(f.name)), key=lambda f: f.name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                _cannot_list(scan, "container folder", cdir.path, exc)
                continue
            _readable(cdir.path)
            for f in logs:
                fmt = _pod_log_format(Path(f.path)) if f.is_symlink() else "cri"
                if fmt is None:
                    continue
                key = f"cri:{pod_dir.name}/{cdir.name}/{f.name}"
                seen.add(key)
                spec = known.get(key)
                if spec is None or spec.format != fmt:
                    spec = known[key] = SourceSpec(
                        key=key,
                        path=Path(f.path),
                        format=fmt,
                        service=pod_owner_name(pod, nodes, uid),
                        container_id=f"{uid}/{cdir.name}",
                        container_name=cdir.name,
                        format_hint=None,
                    )
                out.append(spec)
    for gone in set(known) - seen:
        del known[gone]
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


def discover_paths(patterns: tuple[str, ...], scan: Scan | None = None) -> list[SourceSpec]:
    """Plain-text files matching ``--path`` globs (``**`` allowed); service = the file name up
    to its first dot.

    ``glob`` ignores folders it cannot list; a failure to open one (out of fds) is noted in
    ``scan`` by probing the glob's fixed leading folder, so that its files are not taken for
    deleted."""
    out: dict[str, SourceSpec] = {}
    for pattern in patterns:
        if scan is not None:
            _probe(_glob_base(os.path.expanduser(pattern)), scan)
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


def _glob_base(pattern: str) -> str:
    parts: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def _probe(folder: str, scan: Scan) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:
            scan.failures.append(f"cannot list {folder}: {exc}")
            scan.unsure.append(folder)
            scan.roots_failed = True
        return
    os.close(fd)


def discover_all(docker_root: Path, cri_root: Path, patterns: tuple[str, ...]) -> list[SourceSpec]:
    """Every source on the host right now, deduplicated by key (one pass, nothing cached)."""
    return Discoverer(docker_root, cri_root, patterns).scan().specs


def rotated_siblings(path: Path) -> list[Path]:
    """Uncompressed rotated copies of ``path`` (``x-json.log.1``, ``0.log.20240101-120000``).

    Raises the :class:`OSError` of a transient listing failure (out of fds, EIO): "no rotated
    files" would then be a lie, and the caller must look again later. A folder that is gone or
    unreadable for good has none."""
    return [p for p in _siblings(path) if not p.name.endswith(COMPRESSED_SUFFIXES)]


def compressed_siblings(path: Path) -> list[Path]:
    """gzip-compressed rotated copies of ``path`` (``x-json.log.1.gz``, Docker ``compress``,
    kubelet); listing errors as for :func:`rotated_siblings`."""
    return [p for p in _siblings(path) if p.name.endswith(".gz")]


def _siblings(path: Path) -> list[Path]:
    """Files named ``<path's name>.<anything>`` beside it (see :func:`rotated_siblings`)."""
    try:
        names = os.listdir(path.parent)
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:
            raise
        return []
    prefix = path.name + "."
    return [path.parent / n for n in names if n.startswith(prefix)]
