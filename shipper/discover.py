"""Finding log sources on a host: Docker json-file containers, CRI pod logs and plain files.

Each source is one *live* path plus the metadata every record of it carries. The service name
follows DESIGN.md §2: label ``logq.service``; ECS ``com.amazonaws.ecs.task-definition-family``;
``com.docker.compose.service``; the Kubernetes pod's owner (pod name less its generated
suffixes); else the container name.

``container_name`` says which container wrote a line: Docker's name, or on ECS the name the
task definition gives it (label ``com.amazonaws.ecs.container-name``: Docker's own name,
``ecs-recipe-12-app-e8a4c0...``, changes with every task); for a CRI pod log
``<namespace>/<pod>/<container>``, since the service name (the pod's owner) is the same in every
namespace and for every pod of a workload. Pod labels are not read on Kubernetes: the kubelet's
files do not carry them (the API server does), so ``logq.service`` / ``logq.format`` /
``logq.multiline`` apply to Docker containers only (``--multiline``'s service globs select pods).

Kubelet's ``/var/log/containers/<pod>_<namespace>_<container>-<id>.log`` (what Fluent Bit users
point ``Path`` at) are symlinks to ``/var/log/pods``: given as ``--path`` they are followed and
shipped as the CRI sources they are (:func:`kubelet_link_target`); as ``--docker-root`` or
``--cri-root`` they are refused at start-up (:func:`check_roots`).

Sources that ``--exclude`` or the label ``logq.exclude`` keep out (:mod:`shipper.exclude`) are
found like the others, then set aside in :attr:`Scan.excluded`: the daemon reports them and
never reads them. One file found by several routes under different keys (a ``--path`` glob
over the Docker root gives ``file:<path>`` beside ``docker:<id>``) is one source, the first
route's (:meth:`Discoverer._read_once`): its exclusion holds whatever the route. A ``--path``
glob that also matches a file's rotated generations (``*``, ``*.log*``) does not make them
sources of their own: the live file's source reads them (:func:`_generations`).
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import glob
import json
import logging
import os
import re
import stat
import threading
from collections import deque
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeGuard

from shipper import multiline, wire
from shipper.errors import ConfigError, flag_of
from shipper.exclude import Excluder, Exclusion, kubelet_link_paths
from shipper.formats import truncate
from shipper.fsnames import as_text
from shipper.listings import Listings, subfolders
from shipper.presence import Presence
from shipper.regular import NotRegularFile, kind, read_regular

log = logging.getLogger("logq.shipper.discover")

LABEL_SERVICE = "logq.service"
LABEL_FORMAT = "logq.format"
LABEL_MULTILINE = "logq.multiline"
LABEL_ECS_FAMILY = "com.amazonaws.ecs.task-definition-family"
LABEL_COMPOSE_SERVICE = "com.docker.compose.service"
LABEL_ECS_CONTAINER = "com.amazonaws.ecs.container-name"
LABEL_K8S_POD = "io.kubernetes.pod.name"
LABEL_K8S_POD_UID = "io.kubernetes.pod.uid"
COMPRESSED_SUFFIXES = (".gz", ".zst", ".bz2", ".xz", ".zip", ".lz4", ".tmp")
#: What logrotate's ``dateext`` (the default on RHEL, Fedora and Amazon Linux) puts after a
#: file's name when it rotates it: ``-`` and its ``dateformat`` (``-%Y%m%d``: ``app.log-20261206``;
#: ``-%Y%m%d%H``, ``-%Y%m%d-%s``), ``.gz`` with ``compress``. A digit first, then only digits,
#: ``-``, ``_`` and ``.``: ``app.log-old`` or ``app.log-backup.tar`` is another file. At least
#: four digits (a year, ``%m%d``, an epoch): ``worker-1`` or ``worker-12`` beside ``worker`` is
#: a numbered instance's live file, which a ``--path`` glob would otherwise leave out as a
#: generation, its lines never shipped.
DATEEXT = re.compile(r"-(?=(?:[._-]*\d){4})\d[\d._-]*(?:\.gz)?")
#: What logrotate's ``extension .log`` (or ``addextension .log``) puts between a file's name
#: less its extension and that extension, which it keeps at the end: ``app.log`` rotates to
#: ``app.1.log`` (``.N``), with ``dateext`` to ``app-20261206.log`` (a :data:`DATEEXT` date;
#: ``dateformat .%Y-%m-%d``: ``app.2026-12-06.log``, ``.`` and a digit as ``app.log.1`` takes),
#: and ``.gz`` comes after the extension with ``compress``: see :func:`_kept_extension`.
#: A ``-`` date there needs six digits or more (``-%Y%m``, the default ``-%Y%m%d``): a
#: service's instances named by port beside it (``nginx-8080.log``, ``app-12345.log`` beside
#: ``app.log``) are files of their own, which a ``*.log`` glob would leave out, never shipped.
KEPT_EXTENSION_MARK = re.compile(r"\.\d[\d._-]*|-(?=(?:[._-]*\d){6})\d[\d._-]*")


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A live log file and what its records say about where they come from."""

    key: str
    """Stable identity of the source across rotations (``docker:<id>``, ``cri:<dir>/<n>``...)."""
    path: Path
    """The live file; rotated siblings are named as :func:`generation_name` says."""
    format: str
    """Parser: ``docker``, ``cri`` or ``plain``."""
    service: str
    container_id: str = ""
    container_name: str = ""
    image: str = ""
    format_hint: str | None = None
    """Value of the ``logq.format`` label, passed on as the ``format`` record key."""
    multiline: str | None = None
    """Value of the ``logq.multiline`` label (Docker, ECS): the parser grouping its stack
    traces, or ``none``; it wins over ``--multiline`` (see :func:`shipper.multiline.choose`)."""

    @property
    def tag(self) -> str:
        return f"logq.{self.service}"


#: The texts of a :class:`SourceSpec` every record carries, by their record key.
_RECORD_TEXTS = {
    "service": wire.KEY_SERVICE,
    "container_id": wire.KEY_CONTAINER_ID,
    "container_name": wire.KEY_CONTAINER_NAME,
    "image": wire.KEY_IMAGE,
    "format_hint": wire.KEY_FORMAT,
}
_CUT_WARNED: dict[str, None] = {}
"""Sources whose texts were cut, already warned about (once each), the newest
:data:`MAX_CUT_WARNED` only (a host churning through such containers keeps no more)."""
MAX_CUT_WARNED = 1024


_WARNED_LOCK = threading.Lock()
"""Held by :func:`_first_time`: discovery passes run on a thread of their own
(:meth:`shipper.daemon.Shipper._discover`), while the sources, on the event loop, warn through
:func:`skip_not_regular` too; two evictions at once would delete the same oldest key."""


def _first_time(warned: dict[str, None], key: str, limit: int) -> bool:
    """Whether ``key`` is new to ``warned`` (it is added): a warning said once per key. The
    dict keeps the newest ``limit`` keys in the order they came, so that a host that keeps
    starting such containers does not grow it for ever (a key dropped is warned about again
    if it comes back, at worst once per scan)."""
    with _WARNED_LOCK:
        if key in warned:
            return False
        warned[key] = None
        if len(warned) > limit:
            del warned[next(iter(warned))]
        return True


def bounded(spec: SourceSpec) -> SourceSpec:
    """``spec`` with each text its records carry cut to :data:`~shipper.wire.MAX_KEY_BYTES`
    plus the marker of a cut line (a ``config.v2.json`` holding a 2 MB image or label made
    every record of its container pass a message: refused by every aggregator and resent
    forever, the file stuck). The cut depends on the text alone, so a cut service is the same
    name at every pass and restart (its partition and tag do not move). Said once per source."""
    cut: dict[str, str] = {}
    sizes: list[str] = []
    for attr, key in _RECORD_TEXTS.items():
        value = getattr(spec, attr)
        if value is None or len(value) <= wire.MAX_KEY_BYTES // 4:
            continue  # the usual case, without encoding it
        short, was_cut = truncate(value, wire.MAX_KEY_BYTES)
        if was_cut:
            cut[attr] = short
            sizes.append(f"{key}={len(value.encode('utf-8', 'surrogatepass'))}")
    if not cut:
        return spec
    if _first_time(_CUT_WARNED, spec.key, MAX_CUT_WARNED):
        log.warning(
            "container metadata too long for a record: cut to %d bytes with a marker (every "
            "record carries it, and a message over 4 MiB is refused) key=%s bytes=%s",
            wire.MAX_KEY_BYTES,
            spec.key,
            ",".join(sizes),
        )
    return replace(spec, **cut)


# Kubernetes' rand.SafeEncodeString alphabet: generated name suffixes use only these.
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_POD_RANDOM = re.compile(rf"^(.+)-[{_SAFE}]{{5}}$")
_TEMPLATE_HASH = re.compile(rf"^(.+)-[{_SAFE}]{{6,10}}$")
_CRONJOB_TIME = re.compile(r"^(.+)-\d{8,10}$")
_ORDINAL = re.compile(r"^(.+)-\d+$")
#: A name the API server generated from a ``generateName`` over 58 characters: the base cut
#: to 58 (its dash, and maybe part of a template hash or CronJob time, cut off), then the 5
#: random characters with no dash (apiserver's ``names.SimpleNameGenerator``): 63 in all.
_CUT_GENERATED = re.compile(rf"^(.{{57}}[^-])[{_SAFE}]{{5}}$")
#: A pod-template-hash is ``SafeEncodeString`` of a decimal uint32: its digits map to these 10.
_HASH_CHARS = "bcdf456789"
#: What the cut may leave of a template hash (1 to 10 of its characters) or of a CronJob time
#: (5 to 10 digits: the CronJob's name is 52 characters at most) at the end of such a base.
#: Nothing else is taken for a cut: a bare pod of 63 characters (Airflow's ``<task>-<8 random>``)
#: or a workload whose own name is cut looks the same, and keeps the name the rules below give.
_CUT_TAIL = re.compile(rf"^(.+)-(?:[{_HASH_CHARS}]{{1,10}}|\d{{5,10}})$")


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
    A generated name of 63 characters may have been cut (:data:`_CUT_GENERATED`):
    ``<58 characters><5 random>``; what is left of a template hash or CronJob time after the
    last dash is dropped with them (:data:`_CUT_TAIL`), any other such name keeps the rules below.
    A name without such suffixes is its own owner. An Indexed Job's ``train-3-x2x7k`` gives
    ``train-3``: from the name alone, the index cannot be told from a name that ends in a
    number (``migrate-42``, ``gpu-driver-535``), and a wrong cut would merge workloads.
    """
    if _CONFIG_HASH.match(uid):
        for node in nodes:
            if node and pod.endswith("-" + node) and len(pod) > len(node) + 1:
                return pod[: -len(node) - 1]
    m = _CUT_GENERATED.match(pod)
    m2 = _CUT_TAIL.match(m.group(1)) if m else None
    if m2:
        # Each pod of a long-named Deployment or CronJob would be a service of its own, and a
        # new one at each rollout.
        return m2.group(1)
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


def names_service(value: str | None) -> TypeGuard[str]:
    """Whether a label's value names a service: an empty or blank one names nothing (the
    aggregator strips a name to nothing, then stores it as ``svc-<hash>``), so the next rule
    decides. One rule for logq-shipper (:func:`service_name`) and for the ``logq.service``
    label other clients send (:mod:`aggregator.clientmeta`)."""
    return bool(value and not value.isspace())


def service_name(labels: dict[str, str], container_name: str, nodes: tuple[str, ...] = ()) -> str:
    """The service of a container by DESIGN.md §2's order of precedence; a label counts only
    when it :func:`names_service`."""
    for key in (LABEL_SERVICE, LABEL_ECS_FAMILY, LABEL_COMPOSE_SERVICE):
        value = labels.get(key)
        if names_service(value):
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


_BAD_MULTILINE: dict[str, None] = {}
"""Containers whose ``logq.multiline`` label names no parser, already warned about (once each),
in the order they were warned about: the newest :data:`MAX_BAD_MULTILINE` only, so a host
that keeps starting badly labelled containers does not grow it for ever (one dropped is warned
about again if it is still running, at worst once per scan)."""
MAX_BAD_MULTILINE = 1024

#: Docker's own name for the driver whose files logq-shipper reads (``<id>-json.log``).
JSON_FILE_DRIVER = "json-file"

_OTHER_DRIVER: dict[str, None] = {}
"""(service, log driver) pairs already warned about as writing no ``<id>-json.log`` (once
each), the newest :data:`MAX_CUT_WARNED` only: on ECS every task of a family is a new
container, and one line per family says all there is to say."""


def _multiline_label(labels: dict[str, str], cid: str) -> str | None:
    """The container's ``logq.multiline`` label as :func:`shipper.multiline.choose` takes it; a
    value naming no parser is reported once and ignored (the container is read as if it had
    no label: one record per line unless a ``--multiline`` glob selects it)."""
    value = labels.get(LABEL_MULTILINE)
    if value is None:
        return None
    name = value.strip().lower()
    if name in multiline.BUILTIN or name == multiline.NONE:
        return name
    if _first_time(_BAD_MULTILINE, cid, MAX_BAD_MULTILINE):
        log.warning(
            "label %s=%r names no multiline parser; use one of %s or %s (ignored) container=%s",
            LABEL_MULTILINE,
            value,
            multiline.ALLOWED,
            multiline.NONE,
            cid[:12],
        )
    return None


_NOT_REGULAR: dict[str, None] = {}
"""Paths found to be no regular file (a FIFO, a device...), already warned about (once each),
the newest :data:`MAX_CUT_WARNED` only."""


def skip_not_regular(what: str, path: str, mode: int) -> None:
    """Warn (once per path) that ``path``, where a log or metadata file belongs, is a FIFO, a
    device or a folder: opening a FIFO waits for a writer and blocked the whole shipper."""
    if _first_time(_NOT_REGULAR, path, MAX_CUT_WARNED):
        log.warning(
            "%s is not a regular file but %s: it is not read; replace it with a regular file "
            "(or remove it) path=%s",
            what,
            kind(mode),
            path,
        )


def _regular_mode(path: str) -> int | None:
    """The mode of ``path`` (links followed) when it is no regular file, else None (a regular
    file, or one that cannot be looked at: the open that follows says why)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else mode


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
    scan.skipped.append(f"cannot list {what} {path}: {exc.strerror or exc}; {fix_hint(exc)}")
    if path not in _UNLISTABLE:
        _UNLISTABLE.add(path)
        log.warning(
            "cannot list %s, its logs are not shipped: %s path=%s error=%s",
            what,
            fix_hint(exc),
            path,
            exc,
        )


def fix_hint(exc: OSError) -> str:
    """What to do about a folder or file the shipper cannot read for good, by its errno
    (telling the user to grant read access to a loop of links helped no one)."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"give the shipper (uid={os.geteuid()}) read access"
    if exc.errno == errno.ELOOP:
        return "it is a loop of symbolic links: point the link (or the flag) at the real folder"
    if exc.errno == errno.ENOTDIR:
        return "a part of its path is not a directory: fix the path"
    if exc.errno == errno.ENAMETOOLONG:
        return "its path is longer than the system allows: give a shorter one"
    return "check the path and its file system"


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    """What ``config.v2.json`` says about a container (empty when it is missing or bad)."""

    name: str = ""
    image: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    read: bool = True
    """False when ``config.v2.json`` is missing, unreadable or not JSON: the labels are
    unknown then, not absent (``docker rm`` deletes the folder's files one by one), and an
    excluded container keeps its verdict meanwhile (see :meth:`Discoverer._excluded`)."""


@dataclass(slots=True)
class Scan:
    """The result of one discovery pass."""

    specs: list[SourceSpec] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """Listings or reads that failed for a transient reason (:data:`TRANSIENT_ERRNOS`): a
    source missing from :attr:`specs` may still exist. Permanent errors (EACCES...) are
    warned about once and their folder skipped: they are not failures."""
    skipped: list[str] = field(default_factory=list)
    """Folders skipped for a permanent error (EACCES, ELOOP...), at every pass: their logs
    are not shipped, which ``--once`` must not call a success."""
    unsure: list[str] = field(default_factory=list)
    """The folders those failures concern: only sources under them may be missing wrongly."""
    roots_failed: bool = False
    """A root (``--docker-root``, ``--cri-root``, a ``--path`` base) could not be listed."""
    excluded: dict[str, tuple[SourceSpec, Exclusion]] = field(default_factory=dict)
    """Sources found but kept out (``--exclude``, label ``logq.exclude``), by key: not in
    :attr:`specs`, never to be read (see :mod:`shipper.exclude`)."""
    read_as: set[str] = field(default_factory=set)
    """Keys of sources whose file another source (another route) reads: not in :attr:`specs`
    (see :meth:`Discoverer._read_once`)."""
    looked: dict[str, Presence] = field(default_factory=dict)
    """The sources the daemon runs (or keeps excluded) that this pass did not find, by key:
    whether their file and its folder were there, looked at on the discovery thread right
    after the pass (:mod:`shipper.presence`). A source not in it is not judged gone by this
    pass."""

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


_NO_META = ContainerMeta(read=False)
"""Metadata of a container without ``config.v2.json`` (not cached: it may appear)."""

#: Where kubelet makes its ``<pod>_<namespace>_<container>-<id>.log`` symlinks on a node.
KUBELET_LINKS = "/var/log/containers"

#: What :meth:`Discoverer._excluded` matched for a source: service, container name, live path,
#: symlink paths, Docker labels (None elsewhere). Equal again, the verdict is reused.
_Subject = tuple[str, str, str, tuple[str, ...], tuple[tuple[str, str], ...] | None]
#: By key: a source as first found, its container's metadata (Docker), the kubelet symlinks
#: ``--path`` found it through.
_Found = dict[str, tuple[SourceSpec, ContainerMeta | None, tuple[str, ...]]]


def _version(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Discoverer:
    """Scans the roots; keeps what does not change between passes.

    ``config.v2.json`` is parsed again only when its (inode, mtime, size) changed: a host with
    1000 idle containers otherwise re-parsed 1000 files of several KB on every pass. A bad file
    is warned about once per version of it, and its fixed version is read at the next pass.

    One pass at a time, and its caches are its own: the daemon runs every pass on one thread
    of its own (:meth:`shipper.daemon.Shipper._discover`), off the event loop.
    """

    def __init__(
        self,
        docker_root: Path,
        cri_root: Path,
        patterns: tuple[str, ...],
        nodes: tuple[str, ...] = (),
        excluder: Excluder | None = None,
    ) -> None:
        self.docker_root = docker_root
        self.cri_root = cri_root
        self.patterns = patterns
        self.nodes = nodes
        """Names of this node, stripped from static pod names (see :func:`pod_owner_name`)."""
        self.excluder = excluder if excluder is not None else Excluder()
        """``--exclude`` patterns; the label ``logq.exclude`` is honoured without any."""
        self._meta: dict[str, tuple[tuple[int, int, int], ContainerMeta]] = {}
        self._specs: dict[str, tuple[ContainerMeta, SourceSpec]] = {}
        """By ``config.v2.json`` path: the spec made from that metadata object."""
        self._cri: dict[str, SourceSpec] = {}
        self.listings = Listings()
        """The folders under the CRI root as last listed (see :mod:`shipper.listings`); the
        inotify watch list, made on the same thread after each pass, reads them too (and
        keeps the Docker root's there)."""
        self._verdicts: dict[str, tuple[_Subject, Exclusion | None]] = {}
        """By key: the strings last matched and the verdict on them. Keyed by what is matched,
        not by spec object: ``--path`` sources and kubelet links are new objects at every
        pass, and 1000 sources are not matched against every pattern again at every pass
        (about 4 ms with 3 patterns)."""
        self._link_folders: set[str] = {
            KUBELET_LINKS,
            *(os.path.abspath(_glob_base(os.path.expanduser(p))) for p in patterns),
        }
        """Where kubelet's symlinks are (or may be) seen: its own folder, the fixed part of
        each ``--path`` glob, and every folder a ``--path`` glob found one in."""
        self._future: dict[str, tuple[int, tuple[str, ...]]] = {}
        """By CRI key: (how many link folders were known, :meth:`_future_links` then); the
        folders only grow, so their number tells whether the links are still complete."""
        self._drivers: dict[str, str] = {}
        """By container id: the log driver of a container without ``<id>-json.log``, read once
        from its ``hostconfig.json`` (:meth:`_other_driver`; a container's driver never
        changes), so that a host of such containers is not read again at every pass; "" once
        there is nothing (more) to say about it."""
        self._read_as: set[str] = set()
        """Keys of the sources that were another's file at the last pass (see
        :meth:`_read_once`), warned about when they first were."""
        self._lives: set[Path] = set()
        """The ``--path`` files whose rotated generations the last pass left out (see
        :func:`_generations`)."""

    def scan(self) -> Scan:
        """Every source on the host right now, deduplicated by key; those excluded (by any of
        the ways the same file was found) in :attr:`Scan.excluded`, not in :attr:`Scan.specs`."""
        scan = Scan()
        # By key: the source as first found (Docker, CRI, then --path), its container's
        # metadata, and the kubelet symlinks --path found it through.
        found: _Found = {}
        docker = self._docker(scan)
        for spec, meta in docker:
            found[spec.key] = (spec, meta, ())
        self.listings.begin_pass()
        cri = _discover_cri(self.cri_root, scan, self.nodes, self._cri, self.listings)
        self.listings.end_pass()
        for spec in cri:
            found.setdefault(spec.key, (spec, None, ()))
        paths = _path_sources(self.patterns, scan, self.nodes, self._lives)
        for spec, links in paths:
            first = found.setdefault(spec.key, (spec, None, ()))
            if links:
                named = tuple(map(os.fspath, links))
                self._link_folders.update(name.rpartition("/")[0] for name in named)
                found[spec.key] = (first[0], first[1], (*first[2], *named))
        if sum(map(bool, (docker, cri, paths))) > 1 or len(self.patterns) > 1:
            scan.read_as |= self._read_once(found)
        for key, (spec, meta, links) in found.items():
            future = self._future_links(key)
            exclusion = self._excluded(spec, (*links, *future) if links else future, meta)
            if exclusion is not None:
                scan.excluded[key] = (spec, exclusion)
        scan.specs = [entry[0] for key, entry in found.items() if key not in scan.excluded]
        if scan.complete:  # a folder not listed now still holds its sources and verdicts
            for cache in (self._verdicts, self._future):
                for gone in cache.keys() - found.keys():
                    del cache[gone]
        self.excluder.retain(found.keys())
        return scan

    def _read_once(self, found: _Found) -> set[str]:
        """Keep one source a file: the first route that found it (Docker, then CRI, then
        ``--path``). A Fluent Bit user's ``Path /var/lib/docker/containers/*/*.log`` given as
        ``--path`` finds Docker's json logs a second time, as plain text: two readers of one
        file under one checkpoint, whichever sent first won at the aggregator, and the row could
        be the raw JSON framing under a service named ``<id>-json``; another aggregator stored
        both. Dockershim's ``/var/log/pods`` links into Docker's folder are the same case.
        Two ``--path`` globs reaching one file by two paths (a symlinked folder) are the same
        case. Same file: same absolute path, or same (device, inode); one stat a source, and
        only when two routes (or globs) found files. Warned about once while it lasts. Returns
        the keys left out."""
        owner: dict[object, str] = {}
        dropped: set[str] = set()
        for key in list(found):
            identities = _identities(found[key][0].path)
            first = next((owner[i] for i in identities if i in owner), None)
            if first is None:
                owner.update((i, key) for i in identities)
                continue
            del found[key]
            dropped.add(key)
            if key not in self._read_as:
                log.warning(
                    "the same log file is found twice; it is read once, as the first source "
                    "(remove the --path glob that reaches it) key=%s read_as=%s path=%s",
                    key,
                    first,
                    found[first][0].path,
                )
        self._read_as = dropped
        return dropped

    def _future_links(self, key: str) -> tuple[str, ...]:
        """For a pod log, the paths of kubelet's symlink to it in each of
        :attr:`_link_folders`, also before kubelet made it: it does so only once the container
        started (and at every restart), and ``Exclude_Path /var/log/containers/*_kube-system_*``
        must keep out the first lines too, written before the link exists
        (:func:`kubelet_link_paths`). Made once a source (and again when a folder is added)."""
        if not self.excluder or not key.startswith("cri:"):
            return ()
        folders = len(self._link_folders)
        known = self._future.get(key)
        if known is not None and known[0] == folders:
            return known[1]
        pod_folder, container, _ = key[4:].split("/")  # see _cri_key
        namespace, pod, _ = _pod_folder(pod_folder) or ("", "", "")
        links = tuple(kubelet_link_paths(sorted(self._link_folders), namespace, pod, container))
        self._future[key] = (folders, links)
        return links

    def _excluded(
        self, spec: SourceSpec, links: tuple[str, ...] = (), meta: ContainerMeta | None = None
    ) -> Exclusion | None:
        """Why ``spec`` is kept out (None: it is not); ``meta`` holds a Docker container's
        labels, ``links`` the paths of kubelet's symlinks to a pod log.

        While a container's metadata cannot be read (``docker rm`` deleting its files, a bad
        write, EACCES) its last verdict stands: taken as "no labels", a container excluded
        by its label or name was read whole from its first line."""
        known = self._verdicts.get(spec.key)
        if known is not None and meta is not None and not meta.read:
            return known[1]
        subject: _Subject = (
            spec.service,
            spec.container_name,
            os.fspath(spec.path),
            links,
            None if meta is None else meta.labels,
        )
        if known is not None and known[0] == subject:
            return known[1]
        labels = None if meta is None else dict(meta.labels)
        names = {"service": spec.service, "container_name": spec.container_name}
        verdict = self.excluder.check(spec.key, names, (subject[2], *links), labels)
        self._verdicts[spec.key] = (subject, verdict)
        return verdict

    # -- docker -----------------------------------------------------------------------------

    def _docker(self, scan: Scan) -> list[tuple[SourceSpec, ContainerMeta]]:
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
        dirs: set[str] = set()
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                dirs.add(entry.name)
                found = self._container(entry.path, entry.name, scan, seen)
                if found is not None:
                    out.append(found)
        for gone in set(self._meta) - seen:
            del self._meta[gone]
        for gone in set(self._specs) - seen:
            del self._specs[gone]
        for gone in set(self._drivers) - dirs:
            del self._drivers[gone]
        return out

    def _container(
        self, cdir: str, cid: str, scan: Scan, seen: set[str]
    ) -> tuple[SourceSpec, ContainerMeta] | None:
        """The container's source and the metadata it was made from (its labels say whether it
        is excluded), or None: no json-file log, or its metadata cannot be read for now."""
        # Plain strings and a spec reused while the metadata is the same object: this runs for
        # every container on every pass.
        path = f"{cdir}/{cid}-json.log"
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._other_driver(cdir, cid, path, scan, seen)
            return None
        except OSError as exc:
            # EACCES: Docker's folders are root's (0700 or 0710); a shipper that is not root
            # must be told why nothing of this container arrives, not skip it in silence.
            _cannot_list(scan, "container folder", cdir, exc)
            return None
        _readable(cdir)
        if not stat.S_ISREG(st.st_mode):
            skip_not_regular("container log", path, st.st_mode)
            return None
        config = f"{cdir}/config.v2.json"
        meta = self._metadata(config, scan, seen)
        if meta is None:
            return None  # cannot tell its service now; the next pass can
        known = self._specs.get(config)
        if known is not None and known[0] is meta:
            return known[1], meta
        spec = self._spec(Path(path), cid, meta)
        if meta is not _NO_META:
            self._specs[config] = (meta, spec)
        return spec, meta

    def _other_driver(self, cdir: str, cid: str, path: str, scan: Scan, seen: set[str]) -> None:
        """Say why a container without ``<id>-json.log`` is not shipped when its log driver
        is another than json-file (``awslogs``, ECS's default in its console, ``fluentd``,
        ``journald``, ``local``...): its output never reaches a file the shipper reads, and
        nothing told the user so (WARNING once per service and driver). A json-file
        container not started yet has no file either: its log comes when it starts."""
        driver = self._drivers.get(cid)
        if driver is None:
            driver = _log_driver(f"{cdir}/hostconfig.json")
            if driver is None:
                return  # no hostconfig.json (not a container's folder, or not yet): ask again
            self._drivers[cid] = driver
        if driver in (JSON_FILE_DRIVER, ""):
            return
        meta = self._metadata(f"{cdir}/config.v2.json", scan, seen) or _NO_META
        spec = self._spec(Path(path), cid, meta)
        if meta.read:
            # Judged for good (its labels and driver do not change): not made again at each
            # pass. Without its metadata the service is its id for now: judged again later.
            self._drivers[cid] = ""
        names = {"service": spec.service, "container_name": spec.container_name}
        if self.excluder.check(spec.key, names, (path,), dict(meta.labels)) is not None:
            return  # kept out on purpose (--exclude, logq.exclude): nothing to say
        if _first_time(_OTHER_DRIVER, f"{spec.service}\0{driver}", MAX_CUT_WARNED):
            log.warning(
                "a container logs through Docker's %r log driver, not json-file: it writes no "
                "<id>-json.log, so logq-shipper cannot read its output (said once per service "
                "and driver); set its log driver to json-file (ECS: the task definition's "
                "logConfiguration.logDriver; Docker: --log-driver, or log-driver in "
                "daemon.json for new containers) service=%s container_name=%s path=%s",
                driver,
                spec.service,
                spec.container_name,
                cdir,
            )

    def _spec(self, path: Path, cid: str, meta: ContainerMeta) -> SourceSpec:
        labels = dict(meta.labels)
        # ECS: the task definition's container name (``app``), not Docker's generated one.
        name = labels.get(LABEL_ECS_CONTAINER) or (meta.name or as_text(cid[:12])).lstrip("/")
        spec = SourceSpec(
            key=f"docker:{cid}",
            path=path,
            format="docker",
            service=service_name(labels, name, self.nodes),
            container_id=as_text(cid),
            container_name=name,
            image=meta.image,
            format_hint=labels.get(LABEL_FORMAT) or None,
            multiline=_multiline_label(labels, cid),
        )
        return bounded(spec)

    def _metadata(self, path: str, scan: Scan, seen: set[str]) -> ContainerMeta | None:
        """The container's metadata; None when it cannot be read for now (out of fds...)."""
        key = path
        cached = self._meta.get(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return self._removed(key, cached, seen)
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
        if not stat.S_ISREG(st.st_mode):  # a FIFO blocked the shipper in open()
            skip_not_regular("container metadata", path, st.st_mode)
            return _NO_META
        version = _version(st)
        seen.add(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            # Docker writes UTF-8 only; a stray byte costs that character, not the labels
            # (a BOM, which ``json.load`` of bytes skipped, is skipped too).
            doc = json.loads(read_regular(path).decode("utf-8-sig", "replace"))
        except FileNotFoundError:  # removed since the stat above
            return self._removed(key, cached, seen)
        except NotRegularFile:  # replaced since the stat above
            return _NO_META
        except (OSError, ValueError, RecursionError) as exc:
            if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
                return self._unreadable(path, exc, cached, scan, seen)
            # The last good version's metadata, else shipped under the container's id, until
            # the file is fixed (warned once per version).
            log.warning("cannot read container metadata path=%s error=%s", path, exc)
            doc = None
        if doc is not None:
            meta = _parse_meta(doc)
        elif cached is not None and cached[1].read:
            meta = cached[1]
        else:
            meta = ContainerMeta(read=False)
        self._meta[key] = (version, meta)
        return meta

    @staticmethod
    def _removed(
        key: str, cached: tuple[tuple[int, int, int], ContainerMeta] | None, seen: set[str]
    ) -> ContainerMeta:
        """The metadata of a container whose ``config.v2.json`` is gone: ``docker rm`` deletes
        the folder's files one by one, this one maybe first, and the log's last lines are
        still the container's, not its id's. Never read: none (it may appear)."""
        if cached is not None and cached[1].read:
            seen.add(key)
            return cached[1]
        return _NO_META

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


def _log_driver(path: str) -> str | None:
    """The log driver ``hostconfig.json`` at ``path`` names (``LogConfig.Type``; "" when it
    names none: Docker's default, json-file unless daemon.json says otherwise), or None when
    the file cannot be read or parsed now (missing, being rewritten, not a regular file)."""
    try:
        doc = json.loads(read_regular(path).decode("utf-8-sig", "replace"))
    except (OSError, ValueError, RecursionError):  # NotRegularFile is an OSError
        return None
    config = doc.get("LogConfig") if isinstance(doc, dict) else None
    driver = config.get("Type") if isinstance(config, dict) else None
    return as_text(driver) if isinstance(driver, str) else ""


def _identities(path: Path) -> list[object]:
    """The absolute path of a file as found, and its (device, inode) when it exists (for
    symlinks, ``..`` in a root, bind mounts)."""
    name = os.fspath(path)
    out: list[object] = [name if name.startswith("/") else os.path.abspath(name)]
    try:
        st = os.stat(name)
    except OSError:
        return out
    out.append((st.st_dev, st.st_ino))
    return out


def _parse_meta(doc: object) -> ContainerMeta:
    if not isinstance(doc, dict):
        return ContainerMeta()
    config = doc.get("Config") if isinstance(doc.get("Config"), dict) else {}
    labels = config.get("Labels") if isinstance(config.get("Labels"), dict) else {}
    # Every string as text msgpack can send (a ``\\ud800`` escape stopped the shipper); a label
    # that is no string (``null``) is none of Docker's, whose labels are strings: not a label.
    return ContainerMeta(
        name=as_text(str(doc.get("Name") or "")),
        image=as_text(str(config.get("Image") or "")),
        labels=tuple((as_text(k), as_text(v)) for k, v in labels.items() if isinstance(v, str)),
    )


def docker_source(container_dir: Path) -> SourceSpec | None:
    """The source of one ``<docker-root>/<id>`` directory, or None if it has no json-file log."""
    d = Discoverer(container_dir.parent, Path(), ())
    found = d._container(str(container_dir), container_dir.name, Scan(), set())
    return None if found is None else found[0]


def discover_docker(root: Path) -> list[SourceSpec]:
    return [spec for spec, _ in Discoverer(root, Path(), ())._docker(Scan())]


_CRI_LOG = re.compile(r"^\d+\.log$")
#: Folders under the CRI root already reported as not pod folders (warned once each).
_NOT_PODS: set[str] = set()


def discover_cri(root: Path) -> list[SourceSpec]:
    """``<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`` files."""
    return _discover_cri(root, Scan())


def _discover_cri(
    root: Path,
    scan: Scan,
    nodes: tuple[str, ...] = (),
    cache: dict[str, SourceSpec] | None = None,
    listings: Listings | None = None,
) -> list[SourceSpec]:
    """The CRI sources; ``cache`` (key -> spec, pruned here) spares re-making unchanged ones,
    ``listings`` listing again the folders that did not change since the last pass (it keeps
    their last listings: :mod:`shipper.listings`)."""
    out: list[SourceSpec] = []
    known = cache if cache is not None else {}
    folders = listings if listings is not None else Listings()
    try:
        pod_dirs = folders.get(str(root), functools.partial(subfolders, str(root)))
    except (FileNotFoundError, NotADirectoryError):
        known.clear()
        return []
    except OSError as exc:
        _cannot_list(scan, "CRI root", str(root), exc, root=True)
        return []
    _readable(str(root))
    seen: set[str] = set()
    for pod_dir in pod_dirs:
        if _pod_folder(pod_dir.name) is None:
            if pod_dir.name not in _NOT_PODS:
                _NOT_PODS.add(pod_dir.name)
                log.warning(
                    "not a pod folder (<namespace>_<pod>_<uid>), its files are not shipped path=%s",
                    pod_dir.path,
                )
            continue
        try:
            containers = folders.get(pod_dir.path, functools.partial(subfolders, pod_dir.path))
        except FileNotFoundError:
            continue  # the pod was removed while we looked
        except OSError as exc:
            _cannot_list(scan, "pod folder", pod_dir.path, exc)
            continue
        _readable(pod_dir.path)
        for cdir in containers:
            try:
                logs = folders.get(cdir.path, functools.partial(_pod_logs, cdir.path, folders))
            except FileNotFoundError:
                continue
            except OSError as exc:
                _cannot_list(scan, "container folder", cdir.path, exc)
                continue
            _readable(cdir.path)
            for name, path, fmt in logs:
                key = _cri_key(pod_dir.name, cdir.name, name)
                seen.add(key)
                spec = known.get(key)
                if spec is None or spec.format != fmt:
                    spec = known[key] = _cri_spec(Path(path), fmt, nodes)
                out.append(spec)
    for gone in set(known) - seen:
        del known[gone]
    return out


def _pod_logs(folder: str, listings: Listings) -> list[tuple[str, str, str]]:
    """(name, path, format) of the log files of a container's folder under the CRI root, by
    name; the others (no regular file, a link whose target is not there) are said once and
    left out. Only the folder's entries tell: kept while it does not change, unless a link
    is among them (where it points may change without the folder knowing)."""
    with os.scandir(folder) as it:
        files = sorted((f for f in it if _CRI_LOG.match(f.name)), key=lambda f: f.name)
    logs = []
    for f in files:
        link = f.is_symlink()
        if link:
            listings.forget(folder)
        fmt = _pod_log_format(Path(f.path)) if link else "cri"
        if fmt is None:
            continue
        mode = _regular_mode(f.path)
        if mode is not None:
            skip_not_regular("pod log", f.path, mode)
            continue
        logs.append((f.name, f.path, fmt))
    return logs


def _pod_folder(name: str) -> tuple[str, str, str] | None:
    """(namespace, pod, uid) of a ``<namespace>_<pod>_<uid>`` pod log folder name, else None.

    Namespaces and uids hold no ``_`` (DNS labels, UUIDs): the rest is the pod name."""
    parts = name.split("_")
    if len(parts) < 3:
        return None
    return parts[0], "_".join(parts[1:-1]), parts[-1]


def _cri_key(pod_folder: str, container: str, log_name: str) -> str:
    return f"cri:{pod_folder}/{container}/{log_name}"


def _cri_spec(path: Path, fmt: str, nodes: tuple[str, ...]) -> SourceSpec:
    """The source of pod log ``<root>/<namespace>_<pod>_<uid>/<container>/<n>.log``.

    ``container_name`` is ``<namespace>/<pod>/<container>``: what Fluent Bit's kubernetes
    filter gives as ``namespace_name``/``pod_name``/``container_name`` (dockershim's container
    names held the same), since the service (the pod's owner) does not tell namespaces or
    pods apart."""
    # Folder names as text (a name that is no UTF-8 stopped the shipper); the key keeps them.
    container = as_text(path.parent.name)
    namespace, pod, uid = _pod_folder(as_text(path.parent.parent.name)) or ("", "", "")
    # Bounded as the others, though folder names cannot pass it: three of at most 255 bytes
    # (NAME_MAX), 765 with each byte an invalid one become U+FFFD.
    spec = SourceSpec(
        key=_cri_key(path.parent.parent.name, path.parent.name, path.name),
        path=path,
        format=fmt,
        service=pod_owner_name(pod, nodes, uid),
        container_id=f"{uid}/{container}",
        container_name=f"{namespace}/{pod}/{container}",
        format_hint=None,
    )
    return bounded(spec)


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


def discover_paths(
    patterns: tuple[str, ...], scan: Scan | None = None, nodes: tuple[str, ...] = ()
) -> list[SourceSpec]:
    """Plain-text files matching ``--path`` globs (``**`` allowed); service = the file name up
    to its first dot. A kubelet ``/var/log/containers`` symlink is the CRI pod log it points to
    (:func:`_linked_pod_log`), under the same key as from ``--cri-root``: given both, each file
    is shipped once. A matched file that is a rotated generation of another matched file is
    not a source (:func:`_generations`): that file's source reads it.

    ``glob`` ignores folders it cannot list; a failure to open one (out of fds) is noted in
    ``scan`` by probing the glob's fixed leading folder, so that its files are not taken for
    deleted."""
    return [spec for spec, _ in _path_sources(patterns, scan, nodes)]


def _path_sources(
    patterns: tuple[str, ...],
    scan: Scan | None,
    nodes: tuple[str, ...],
    remembered: set[Path] | None = None,
) -> list[tuple[SourceSpec, tuple[Path, ...]]]:
    """:func:`discover_paths`, each source with the kubelet symlinks it was found through
    (``--exclude`` matches their paths too: Fluent Bit's ``Exclude_Path`` patterns name them)."""
    out: dict[str, tuple[SourceSpec, tuple[Path, ...]]] = {}
    matched_by: dict[str, str] = {}  # plain file's key: the first glob that matched it
    for pattern in patterns:
        if scan is not None:
            _probe(_glob_base(os.path.expanduser(pattern)), scan)
        unlisted = None if scan is None else _glob_failure(scan)
        for name in _one_name_a_file(expand_glob(os.path.expanduser(pattern), unlisted)):
            path = Path(name).absolute()
            target = kubelet_link_target(path) if KUBELET_LINK.match(path.name) else None
            if target is not None:
                spec = _linked_pod_log(pattern, path, target, nodes)
                if spec is not None:
                    first, links = out.get(spec.key, (spec, ()))
                    out[spec.key] = (first, links if path in links else (*links, path))
                continue
            if not path.is_file() or path.name.endswith(COMPRESSED_SUFFIXES):
                continue
            stem = path.name.split(".")[0] or path.name
            key = f"file:{path}"
            if key not in out:
                spec = SourceSpec(
                    key=key,
                    path=path,
                    format="plain",
                    service=as_text(stem),
                    container_name=as_text(path.name),
                )
                # Bounded as the others, though a file name (255 bytes) cannot pass it.
                spec = bounded(spec)
                out[key] = (spec, ())
                matched_by[key] = pattern
    left_out = _generations({out[key][0].path for key in matched_by}, remembered)
    for path, live in sorted(left_out.items()):
        key = f"file:{path}"
        del out[key]
        if scan is not None:
            scan.read_as.add(key)
        _note_generations(matched_by[key], path, live)
    if remembered is not None:
        if scan is None or scan.complete:  # else a folder not listed now still holds them
            remembered.clear()
        remembered.update(left_out.values())
    return list(out.values())


def _generations(paths: set[Path], remembered: set[Path] | None = None) -> dict[Path, Path]:
    """The ``paths`` that are rotated generations of another of ``paths``, each with its live
    file, the shortest such name (``app.log`` for ``app.log.1.old``): ``<live>.`` and a digit
    (``app.log.1``, ``app.log.2026-12-06``), ``<live>`` and a :data:`DATEEXT` date, or the live
    file's name with logrotate's ``extension`` kept at the end (``app.1.log``,
    ``app-20261206.log``: :func:`_kept_extension`).

    Fewer names than :func:`_siblings` takes for generations (``<live>.<anything>``): a file
    left out here is shipped only if its live file's source reads it, so a live file of its
    own with such a name (``app`` beside ``app.log``, ``app.log.json``) would be lost in
    silence; such a name is at worst read twice, as before.

    Why: the live file's source reads its generations itself when it needs them (a rotation
    while running or while down, a new source already rotated, copytruncate). A glob that
    also matches them (``*``, ``*.log*``: common in Fluent Bit configs written before
    ``Exclude_Path``; ``*.log`` with ``extension .log``) made each a source of its own, its
    lines shipped again under another source, and followed by path: each rotation put the
    next generation at that path, to be read again from its start. A generation whose live
    file is not matched stays a source.

    ``remembered`` are the live files that had generations at the last pass: one missing now
    (between a rotation's rename and the new file) still has them, so a pass in that moment
    does not start its generations as sources."""
    known = remembered or set()
    out: dict[Path, Path] = {}
    for path in paths:
        for name in _live_names(path.name):
            live = path.parent / name
            if (live in paths or live in known) and _rotated_name(name, path.name):
                out[path] = live
                break
    return out


def _live_names(name: str) -> Iterator[str]:
    """The names of which a file named ``name`` may be a rotated generation, shortest first:
    its beginnings up to a ``.`` or ``-`` (``app.log`` of ``app.log.1``), then those with its
    last extension put back (``app.log`` of ``app-20261206.log`` and ``app.1.log.gz``)."""
    for i in range(1, len(name)):
        if name[i] in ".-":
            yield name[:i]
    body, _, ext = name.removesuffix(".gz").rpartition(".")
    if body and ext:
        for i in range(1, len(body)):
            if body[i] in ".-":
                yield f"{body[:i]}.{ext}"


def _rotated_name(live: str, name: str) -> bool:
    """Whether ``name`` is named as a rotated generation of ``live`` by the strict rules of
    :func:`_generations` (not ``<live>.<anything>``)."""
    if name.startswith(live):
        rest = name[len(live) :]
        if rest[:2] in _DOT_DIGITS or DATEEXT.fullmatch(rest):
            return True
    return _kept_extension(live, name)


def _kept_extension(live: str, name: str) -> bool:
    """Whether ``name`` is a name logrotate's ``extension`` gives a rotated ``live``: the live
    name less its last extension, a :data:`KEPT_EXTENSION_MARK` (``.`` and a digit, or ``-``
    and a date of at least six digits), the extension, ``.gz`` with ``compress``.
    ``app-backup.log``, ``app-v2.log``, ``app-8080.log`` (a port) or ``worker-1.log`` beside
    ``worker.log`` are files of their own, and a name without an extension (``app``) or a dot
    file's (``.log``) has none to keep."""
    stem, _, ext = live.rpartition(".")
    if not stem or not ext:
        return False
    core = name.removesuffix(".gz")
    tail = f".{ext}"
    if len(core) <= len(stem) + len(tail):
        return False
    if not core.startswith(stem) or not core.endswith(tail):
        return False
    return KEPT_EXTENSION_MARK.fullmatch(core, len(stem), len(core) - len(tail)) is not None


#: How a rotated generation's name goes on after its live file's: ``.`` and a digit.
_DOT_DIGITS = frozenset(f".{d}" for d in range(10))
#: ``--path`` globs already reported as matching rotated generations (once each, not every
#: discovery pass).
_GENERATIONS_NOTED: set[str] = set()


def _note_generations(pattern: str, path: Path, live: Path) -> None:
    """Say once per glob that it matches rotated generations, which are not sources."""
    if pattern in _GENERATIONS_NOTED:
        return
    _GENERATIONS_NOTED.add(pattern)
    log.info(
        "--path glob also matches rotated generations of the files it follows: each is read "
        "as its live file's generation (when that file rotates), not shipped as a source of "
        "its own; to say so in the config, give a glob that matches the live files only "
        "(e.g. '*.log', not '*' or '*.log*') glob=%s example=%s live=%s",
        pattern,
        as_text(os.fspath(path)),
        as_text(os.fspath(live)),
    )


def _glob_failure(scan: Scan) -> Callable[[str, OSError], None]:
    """What :func:`expand_glob` does with a folder it cannot list: :func:`_cannot_list` (warned
    once, ``--once`` fails; a transient error keeps the files under it from being taken for
    deleted). ``glob`` passed over such folders in silence: a ``--path`` under a folder the
    shipper may not read shipped nothing, with nothing said."""

    def failed(folder: str, exc: OSError) -> None:
        _cannot_list(scan, "--path folder", folder or ".", exc)

    return failed


def expand_glob(
    pattern: str, on_error: Callable[[str, OSError], None] | None = None
) -> Iterator[str]:
    """The paths matching ``pattern`` as ``glob.glob(pattern, recursive=True)`` gives them
    (``*`` and ``**`` pass over names starting with a dot, links to folders are followed),
    walked without recursion and entering each folder once per part of the pattern, by its
    (device, inode).

    ``glob`` recursed once per folder level: a tree 1200 levels deep raised RecursionError,
    which stopped the shipper. It also followed links to folders again and again: two links
    ``a -> .`` and ``b -> .`` made it fan out exponentially (discovery never ended, on the
    event loop), one gave each file 41 times. Fluent Bit's tail and Vector's file source
    likewise know a folder by its device and inode. A folder that cannot be listed is passed
    over; ``on_error`` hears of it (one missing, ENOENT, may just not exist yet: not an error),
    else one too deep for a path (ENAMETOOLONG) is warned about once."""
    if not glob.has_magic(pattern):
        if os.path.lexists(pattern):
            yield pattern
        return
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = "/".join(parts[:first]) if first else ""
    if first == 1 and not parts[0]:
        base = "/"
    wanted = [part for part in parts[first:] if part]
    if wanted[-1] == "**":
        wanted.append("*")  # ``x/**``: every file under x (folders are no sources)
    entered: set[tuple[int, int, int]] = set()
    todo: deque[tuple[str, int]] = deque([(base, 0)])
    while todo:
        folder, i = todo.popleft()
        try:
            st = os.stat(folder or ".")
        except OSError as exc:
            _unlisted(folder, exc, on_error)
            continue
        mark = (st.st_dev, st.st_ino, i)
        if mark in entered:
            continue  # reached again through a link: already walked from here
        entered.add(mark)
        part, last = wanted[i], i == len(wanted) - 1
        if part == "**":
            todo.append((folder, i + 1))
            todo.extend((_join(folder, name), i) for name in _subfolders(folder, "*", on_error))
        elif not glob.has_magic(part):
            path = _join(folder, part)
            if last and os.path.lexists(path):
                yield path
            elif not last and os.path.isdir(path):
                todo.append((path, i + 1))
        elif last:
            yield from (_join(folder, name) for name in _names(folder, part, on_error))
        else:
            todo.extend(
                (_join(folder, name), i + 1) for name in _subfolders(folder, part, on_error)
            )


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if folder else name


def _names(
    folder: str, part: str, on_error: Callable[[str, OSError], None] | None = None
) -> list[str]:
    """The names in ``folder`` that ``part`` matches (``glob``'s rules for hidden names), by
    name; none when it cannot be listed (said to ``on_error``: :func:`expand_glob`)."""
    try:
        with os.scandir(folder or ".") as it:
            names = [e.name for e in it]
    except OSError as exc:
        _unlisted(folder, exc, on_error)
        return []
    _readable(folder or ".")
    if part.startswith("."):
        return sorted(fnmatch.filter(names, part))
    return sorted(n for n in fnmatch.filter(names, part) if not n.startswith("."))


def _subfolders(
    folder: str, part: str, on_error: Callable[[str, OSError], None] | None = None
) -> list[str]:
    """:func:`_names` that are folders or links to folders."""
    return [n for n in _names(folder, part, on_error) if os.path.isdir(_join(folder, n))]


def _unlisted(folder: str, exc: OSError, on_error: Callable[[str, OSError], None] | None) -> None:
    """A folder :func:`expand_glob` could not list or enter: ``on_error`` unless it is
    missing (not created yet, or removed meanwhile), else :func:`_too_deep`."""
    if on_error is None:
        _too_deep(folder, exc)
    elif exc.errno != errno.ENOENT:
        on_error(folder, exc)


_TOO_DEEP: dict[str, None] = {}
"""Folders warned about as too deep to list (once each, the newest :data:`MAX_CUT_WARNED`)."""


def _too_deep(folder: str, exc: OSError) -> None:
    if exc.errno == errno.ENAMETOOLONG and _first_time(_TOO_DEEP, folder[:256], MAX_CUT_WARNED):
        log.warning(
            "--path glob reaches a folder too deep to be listed (its path is longer than the "
            "system allows): its files are not shipped; give a glob that does not reach it "
            "path=%s...",
            folder[:256],
        )


def _one_name_a_file(names: Iterator[str]) -> list[str]:
    """``names`` by name, each file once: of the names of one file (a link to it, a folder
    reached through a link), the one with the fewest parts, then the first by name. Names
    that are not files now (gone, dangling links) are kept: the caller sorts them out."""
    best: dict[object, str] = {}
    for name in sorted(names, key=lambda n: (n.count("/"), n)):
        try:
            st = os.stat(name)
            identity: object = (st.st_dev, st.st_ino)
        except OSError:
            identity = name
        if KUBELET_LINK.match(os.path.basename(name)):
            identity = name  # kubelet's links are kept each: --exclude matches their names
        best.setdefault(identity, name)
    return sorted(best.values())


#: Kubelet's ``/var/log/containers`` names: ``<pod>_<namespace>_<container>-<container id>.log``
#: (pod, namespace and container names hold no ``_``; the id is 64 hex digits).
KUBELET_LINK = re.compile(r"^[^_/]+_[^_/]+_[^_/]+-[0-9a-f]{64}\.log$")
_MAX_HOPS = 8
#: ``--path`` patterns already reported as matching kubelet symlinks, and pod log folders
#: already reported as not visible (once each, not every discovery pass).
_LINKS_NOTED: set[str] = set()
_UNSEEN_PODS: set[str] = set()


def _is_pod_log(path: Path) -> bool:
    """Whether ``path`` is laid out as ``<root>/<namespace>_<pod>_<uid>/<container>/<n>.log``."""
    return bool(_CRI_LOG.match(path.name)) and _pod_folder(path.parent.parent.name) is not None


def kubelet_link_target(path: Path) -> Path | None:
    """The pod log (``/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log``) that the
    symlink ``path`` leads to, followed one link at a time (under dockershim the pod log is
    itself a link into Docker's folder); None when ``path`` is no such link.

    Only the links are read: the pod log itself may be out of the shipper's sight (its folder
    not mounted), which the caller reports."""
    current = path
    for _ in range(_MAX_HOPS):
        try:
            target = os.readlink(current)
        except OSError:  # not a link (any more)
            return None
        current = Path(os.path.normpath(current.parent / target))
        if _is_pod_log(current):
            return current
    return None


def _linked_pod_log(
    pattern: str, link: Path, target: Path, nodes: tuple[str, ...]
) -> SourceSpec | None:
    """The CRI source behind kubelet symlink ``link`` (a ``--path`` match), or None: the pod
    log is gone (its pod was just removed; the kubelet removes the link next), or the folder
    of pod logs is not visible at all (not mounted into the shipper: reported once).

    Shipped as plain text, the link would carry the runtime's framing (``<time> stdout F``) in
    every line and the container id in the service name; read as the pod log, it gets the
    same records as with ``--cri-root``, and rotated siblings (``0.log.<time>``) are found
    beside the real file."""
    if pattern not in _LINKS_NOTED:
        _LINKS_NOTED.add(pattern)
        log.info(
            "--path matches kubelet's symlinks: shipping the pod logs they point to as CRI "
            "sources, as --cri-root %s would pattern=%s",
            target.parent.parent.parent,
            pattern,
        )
    if not os.path.lexists(target):
        pods = str(target.parent.parent.parent)
        if os.path.isdir(pods):
            return None  # a pod removed between the kubelet's two deletions
        if pods not in _UNSEEN_PODS:
            _UNSEEN_PODS.add(pods)
            log.warning(
                "kubelet's symlinks point into %s, which the shipper cannot see: mount it into "
                "the shipper (read-only is enough) link=%s target=%s",
                pods,
                link,
                target,
            )
        return None
    fmt = _pod_log_format(target)
    mode = None if fmt is None else _regular_mode(str(target))
    if mode is not None:
        skip_not_regular("pod log", str(target), mode)
        return None
    return None if fmt is None else _cri_spec(target, fmt, nodes)


def check_roots(
    docker_root: Path, cri_root: Path, given: Container[str], once: bool = True
) -> None:
    """Refuse at start-up a ``--docker-root`` / ``--cri-root`` that cannot be what was meant,
    with a :class:`ConfigError` (exit 2) that says what to pass instead.

    A root that was given (a flag or ``--config`` key: ``given`` holds the setting names) and
    is missing: with ``--once`` an error (a typo in a cron job shipped nothing and exited 0);
    as a daemon a WARNING, and it is read once it appears (as Fluent Bit's tail does with a
    ``Path`` that matches nothing yet: a host booting may start the shipper before dockerd
    makes its folder, and the README's example gives both roots, one of which a host lacks).
    A default root may be missing (a Kubernetes node has no Docker root). A given root that is
    a file is an error. Either must not be kubelet's ``/var/log/containers``, whose symlinks no
    root scan reads: ``--cri-root /var/log/pods`` is the folder they point into."""
    for key, root in (("docker_root", docker_root), ("cri_root", cri_root)):
        flag = flag_of(key)
        if key in given:
            _check_given_root(flag, root, once)
        pods = _kubelet_links_folder(root)
        if pods is not None:
            raise ConfigError(
                f"{flag} {root} holds kubelet's symlinks (<pod>_<namespace>_<container>-<id>.log)"
                f", not {'containers' if key == 'docker_root' else 'pod folders'}: "
                f"use --cri-root {pods}, the folder they point into (mount it read-only into "
                "the shipper's container)"
            )


def _check_given_root(flag: str, root: Path, once: bool) -> None:
    try:
        st = os.stat(root)
    except (FileNotFoundError, NotADirectoryError):
        if not once:
            log.warning(
                "%s %s does not exist (yet): its logs are read once it does; if it is a typo, "
                "fix the path",
                flag,
                root,
            )
            return
        raise ConfigError(
            f"{flag} {root} does not exist: fix the path, or leave {flag} out to use its "
            "default (which may be missing)"
        ) from None
    except OSError:
        return  # EACCES...: discovery says so, naming what to do
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{flag} {root} is not a directory: give the folder that holds the logs")


def _kubelet_links_folder(root: Path) -> str | None:
    """If ``root`` is kubelet's ``/var/log/containers`` (by its path, or by holding kubelet's
    symlinks and no pod folder), the folder to use instead: where the links point, else
    ``/var/log/pods``."""
    try:
        with os.scandir(root) as it:
            entries = list(it)
    except OSError:
        return None  # missing (a default root) or unreadable: discovery reports it
    links = [e for e in entries if KUBELET_LINK.match(e.name)]
    by_path = os.path.normpath(root) == "/var/log/containers"
    if not by_path and (not links or any(e.is_dir(follow_symlinks=False) for e in entries)):
        return None
    target = kubelet_link_target(Path(links[0].path)) if links else None
    return str(target.parent.parent.parent) if target is not None else "/var/log/pods"


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
    """Uncompressed rotated copies of ``path`` (``x-json.log.1``, ``0.log.20240101-120000``,
    logrotate's ``app.log.1``, with ``dateext`` ``app.log-20261206``, with ``extension .log``
    ``app.1.log`` or ``app-20261206.log``).

    Raises the :class:`OSError` of a transient listing failure (out of fds, EIO): "no rotated
    files" would then be a lie, and the caller must look again later. A folder that is gone or
    unreadable for good has none."""
    return [p for p in _siblings(path) if not p.name.endswith(COMPRESSED_SUFFIXES)]


def compressed_siblings(path: Path) -> list[Path]:
    """gzip-compressed rotated copies of ``path`` (``x-json.log.1.gz``, Docker ``compress``,
    kubelet, logrotate ``compress``: ``app.log.1.gz``, ``app.log-20261206.gz``,
    ``app.1.log.gz``, ``app-20261206.log.gz``); listing errors as for
    :func:`rotated_siblings`."""
    return [p for p in _siblings(path) if p.name.endswith(".gz")]


def generation_name(live: str, name: str) -> bool:
    """Whether a file named ``name`` beside the file named ``live`` is named as one of its
    rotated generations: ``<live>.<anything>``, ``<live>`` and a :data:`DATEEXT` date, or
    logrotate's ``extension`` kept at the end (``app.1.log``, ``app-20261206.log.gz``:
    :func:`_kept_extension`)."""
    return (
        name.startswith(live + ".")
        or (name.startswith(live) and DATEEXT.fullmatch(name, len(live)) is not None)
        or _kept_extension(live, name)
    )


def _siblings(path: Path) -> list[Path]:
    """Regular files beside ``path`` named as its generations (:func:`generation_name`:
    ``<path's name>.<anything>``, ``<path's name>`` and a :data:`DATEEXT` date, or logrotate's
    ``extension`` kept at the end; see :func:`rotated_siblings`); a FIFO (whose open waits for
    a writer), a device or a folder of such a name is left out with a warning.

    Without the dateext names, a ``--path`` file logrotate renamed to ``app.log-20261206``
    while the shipper was down was taken for deleted: its unread rest counted lost
    (``deleted_unread``, a page) though it lay right there, and a ``copytruncate`` copy of that
    name was not found to finish the file from."""
    try:
        names = os.listdir(path.parent)
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:
            raise
        return []
    out = []
    for name in names:
        if generation_name(path.name, name):
            sib = path.parent / name
            mode = _regular_mode(os.fspath(sib))
            if mode is None:
                out.append(sib)
            else:
                skip_not_regular("rotated log file", os.fspath(sib), mode)
    return out
