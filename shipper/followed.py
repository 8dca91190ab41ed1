"""Forgetting, at start, the ``followed`` entries of sources removed while the shipper was down.

The registry keeps, per source, when a run last had all its files in hand (``followed`` in
checkpoints.json, see :meth:`shipper.checkpoint.Registry.note_followed`). A tailer that ends
because its container or pod folder is gone forgets its entry
(:meth:`shipper.tailer.Tailer.close`), but a container removed while the shipper was down has
no tailer: its entry stayed until :data:`~shipper.checkpoint.MAX_FOLLOWED` newer ones pushed it
out, rewritten at every save meanwhile (a host running short-lived containers or pods filled
the 4,096 entries, ~400 KB, rewritten at every acknowledgement).

At start, after the first discovery pass, an entry is dropped only when its source's folder is
provably gone: ``ENOENT`` for the container's folder (``<docker root>/<id>`` for
``docker:<id>``; ``<pod root>/<pod folder>/<container>`` for ``cri:...``, under every pod root
the shipper reads), inside a root that is there and not empty, and that is the root the
entries came from: it holds the folder of at least one other entry of the same kind. Container
and pod ids are never used again, so the key cannot come back. Kept:

* a folder that is there: a container excluded now (its exclusion may be lifted), one whose
  log or metadata is not written or readable yet, one the pass could not list;
* a folder that cannot be looked at (``EACCES``, I/O errors): it may be there;
* every entry of a root that is missing, cannot be listed, or is empty (not mounted yet into
  the shipper's container, say): nothing there proves anything gone;
* every entry of a kind none of whose folders is under its roots: ``--docker-root`` (or
  ``--cri-root``) changed since the entries were written (pointed at another folder by
  mistake, and set back later), or the folder seen is not the one mounted later over it. A
  host where every container of the last run was removed while the shipper was down keeps
  them too: they go at the next start, when this run's containers vouch for the root;
* ``file:`` sources (``--path``): a folder deleted may be made again, and its files are
  then new (what :meth:`~shipper.tailer.Tailer.close` does to them at runtime is left alone).

Dropping an entry wrongly costs what its cap did: a source found later without checkpoints has
its rotated files read again, and the aggregator drops the lines it stored by offset.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from shipper.presence import Looking


def _usable(root: Path, looking: Looking | None = None) -> bool:
    """Whether ``root`` is a folder that lists and holds at least one entry."""
    if looking is not None:
        looking.at(root)
    try:
        with os.scandir(root) as it:
            return next(it, None) is not None
    except OSError:
        return False


def _gone(folder: Path, looking: Looking | None = None) -> bool:
    """Whether ``folder`` provably does not exist (ENOENT; any other error: it may)."""
    if looking is not None:
        looking.at(folder)
    try:
        os.stat(folder)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def folders_of(source: str, docker_root: Path | None, pod_roots: Iterable[Path]) -> list[Path]:
    """The folders that hold ``source``'s files, one per root it may be under (the roots
    given: :func:`_usable` ones); empty when that cannot be told from its key (``file:``
    sources) or no root has it."""
    kind, _, rest = source.partition(":")
    if kind == "docker" and rest and "/" not in rest and docker_root is not None:
        return [docker_root / rest]
    if kind == "cri":
        parts = rest.split("/")
        if len(parts) != 3 or not all(parts):
            return []
        return [root / parts[0] / parts[1] for root in pod_roots]
    return []


def _vouched(
    sources: list[str], docker_root: Path | None, roots: list[Path], looking: Looking | None
) -> set[str]:
    """The kinds (``docker``, ``cri``) whose roots hold the folder of at least one of
    ``sources``: the entries came from these roots, so a folder missing there is gone."""
    kinds: set[str] = set()
    for source in sources:
        kind = source.partition(":")[0]
        if kind in kinds:
            continue
        if any(_there(f, looking) for f in folders_of(source, docker_root, roots)):
            kinds.add(kind)
    return kinds


def _there(folder: Path, looking: Looking | None) -> bool:
    """``os.path.isdir(folder)``, the folder kept in ``looking`` first."""
    if looking is not None:
        looking.at(folder)
    return os.path.isdir(folder)


def gone_followed(
    sources: list[str],
    docker_root: Path | None,
    pod_roots: Iterable[Path],
    looking: Looking | None = None,
) -> list[str]:
    """The ``followed`` entries of ``sources`` whose source's folder is gone under every root
    it may be under (see the module's docstring). It lists the roots and stats a folder or
    more per entry: a work for a thread other than the event loop's (the daemon's thread of
    the start's looks), whose registry changes on the loop from what it returns; the folder
    it is at is kept in ``looking``, for the warning about a look that hangs."""
    roots = sorted(root for root in set(pod_roots) if _usable(root, looking))  # once each
    if docker_root is not None and not _usable(docker_root, looking):
        docker_root = None
    vouched = _vouched(sources, docker_root, roots, looking)
    gone = []
    for source in sources:
        if source.partition(":")[0] not in vouched:
            continue
        folders = folders_of(source, docker_root, roots)
        if folders and all(_gone(f, looking) for f in folders):
            gone.append(source)
    return gone
