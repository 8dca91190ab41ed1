"""Sources removed while the shipper was down: what their checkpoints say was lost.

A container removed (``docker rm``) or a pod deleted (the kubelet removes its log folder) while
the shipper is down -- on Kubernetes, every pod deleted during a rollout of the shipper's
DaemonSet -- is not found by the next start's discovery, so no tailer starts for it and
:meth:`shipper.resume.Resume._count_vanished` never sees its files. Their checkpoints used to
wait for the 7-day cleanup, and the lines they had not shipped were lost without a count.

At start, after a complete discovery pass, each checkpointed file of a source not found whose
file is provably gone (no file with its device and inode in its folder, or no folder) is
judged by what the checkpoint knows: the acknowledged end (``offset``, ``acked_to``) and the
size the shipper last saw (:attr:`~shipper.checkpoint.FileState.seen`).

* ``seen`` past the end: those bytes were never shipped; lost for sure, counted
  ``deleted_unread`` with a WARNING naming the container or pod and the bytes.
* ``seen`` unknown (an entry of an older shipper): counted, the WARNING says the amount is
  unknown.
* read to its end at the last look: counted ``removed_while_down``, a possible loss (a
  ticket, not a page: operations.md pages on ``deleted_unread``, and most containers removed
  after everything was shipped lost nothing), with a WARNING naming the container or pod and
  when the shipper stopped: lines it wrote after that, if any, are lost, and nothing can tell
  whether there were any. Not counting them hid the usual loss of a Kubernetes rollout of the
  shipper, the last lines of pods deleted meanwhile (A2s18's F2, R4s18).

Whether a file is gone takes a listing of its folder and a ``stat`` of each of its files: the
daemon has it done on a thread of its own (:func:`gone_files`, per source) and judges
here, on its event loop, what was found (``gone``): on a slow or hung file system, those calls
held the loop at start-up.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Container, Mapping
from pathlib import Path

from shipper.checkpoint import Described, FileState, Registry
from shipper.discover import pod_owner_name
from shipper.presence import Looking

log = logging.getLogger("logq.shipper")


def unfound(registry: Registry, found: set[str]) -> dict[str, Path]:
    """The checkpointed files of sources not in ``found`` (the keys a complete discovery pass
    found, excluded ones included), by key: those :func:`count_removed` judges if gone."""
    return {key: Path(state.path) for key, state in registry.items() if state.source not in found}


def unfound_by_source(registry: Registry, found: set[str]) -> dict[str, dict[str, Path]]:
    """:func:`unfound`, by source: the daemon judges each removed source as soon as its own
    files were looked at, so that one hung folder holds back no other source's verdict."""
    by_source: dict[str, dict[str, Path]] = {}
    for key, state in registry.items():
        if state.source not in found:
            by_source.setdefault(state.source, {})[key] = Path(state.path)
    return by_source


def gone_files(files: Mapping[str, Path], looking: Looking | None = None) -> set[str]:
    """The keys of ``files`` (:func:`unfound`) that are provably gone (see :func:`_gone`). It
    lists a folder and stats its files for each: a work for a thread other than the loop's
    (the folder it is at is kept in ``looking``, for the warning about a look that hangs)."""
    gone = set()
    for key, path in files.items():
        if looking is not None:
            looking.at(path.parent)
        if _gone(key, path):
            gone.add(key)
    return gone


def count_removed(
    registry: Registry,
    found: set[str],
    nodes: tuple[str, ...],
    on_loss: Callable[[str, str], None],
    gone: Container[str],
) -> int:
    """Judge and forget the checkpoints of files of sources not in ``found`` (the keys a
    complete discovery pass found, excluded ones included) that are gone: those in ``gone``
    (:func:`gone_files` of :func:`unfound`, looked at off the event loop);
    ``on_loss(service, reason)`` is called once per file (``deleted_unread``: lost for sure or
    of unknown amount; ``removed_while_down``: possible). Returns how many were counted."""
    counted = 0
    for key, state in registry.items():
        if state.source in found or key not in gone:
            continue
        registry.remove(key)
        who = registry.described(state.source) or _guessed(state.source, nodes)
        on_loss(who.service, _judge(key, state, who, registry.saved_at))
        counted += 1
    return counted


def _stopped(saved_at: float | None) -> str:
    """When the shipper stopped, as its last checkpoint save tells (UTC), for a warning."""
    if saved_at is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(saved_at))


def _judge(key: str, state: FileState, who: Described, saved_at: float | None) -> str:
    """Log what the gone file's checkpoint says; return the loss reason to count."""
    end = max(state.offset, state.acked_to)
    if state.seen is not None and state.seen <= end:
        log.warning(
            "container or pod removed while the shipper was down; its log file had been "
            "shipped to its end as far as the shipper saw (offset %d), but lines it wrote after "
            "the shipper stopped at %s, if any, are lost: a possible loss, counted "
            "removed_while_down (keep shipper restarts short) service=%s container_name=%s "
            "source=%s path=%s",
            end,
            _stopped(saved_at),
            who.service,
            who.container_name or "-",
            state.source,
            state.path,
        )
        return "removed_while_down"
    unread = "unknown" if state.seen is None else str(state.seen - end)
    log.warning(
        "log file of a container or pod removed while the shipper was down was deleted before "
        "it was read to the end; lines after offset %d are lost (%s bytes%s) service=%s "
        "container_name=%s source=%s path=%s key=%s",
        end,
        unread,
        ": its checkpoint is from an older shipper, which did not save the size it saw"
        if state.seen is None
        else " seen and never shipped, plus any written after the shipper stopped",
        who.service,
        who.container_name or "-",
        state.source,
        state.path,
        key,
    )
    return "deleted_unread"


def _gone(key: str, path: Path) -> bool:
    """Whether no file in ``path``'s folder has the device and inode of checkpoint ``key``
    (ENOENT is the only proof: a folder or file that cannot be looked at may still hold it).
    A file still there is left alone, whatever its name now (rotated while the shipper was
    down) or its source's fate (a ``--path`` dropped from the configuration)."""
    try:
        dev, ino = (int(part) for part in key.split(":", 2)[:2])
    except ValueError:
        return False
    try:
        return inode_in_folder(path.parent, dev, ino) is None
    except OSError:
        return False


def inode_in_folder(folder: Path, dev: int, ino: int) -> Path | None:
    """The file of ``folder`` with device ``dev`` and inode ``ino``; None when there is none
    (or no such folder: ENOENT is the only proof). Raises OSError when the folder or one of
    its files cannot be looked at: it may be there."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return None
    for name in names:
        try:
            st = os.stat(folder / name)
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) == (dev, ino):
            return folder / name
    return None


def _guessed(source: str, nodes: tuple[str, ...]) -> Described:
    """The service and container name of a source an older shipper did not describe: a pod's
    from its key (``cri:<namespace>_<pod>_<uid>/<container>/<n>.log``), as discovery names it;
    a container's cannot be known (its metadata went with its folder)."""
    kind, _, rest = source.partition(":")
    parts = rest.split("/")
    folder = parts[0].split("_")
    if kind == "cri" and len(parts) == 3 and len(folder) >= 3:
        namespace, pod, uid = folder[0], "_".join(folder[1:-1]), folder[-1]
        return Described(pod_owner_name(pod, nodes, uid), f"{namespace}/{pod}/{parts[1]}")
    return Described("unknown", "")
