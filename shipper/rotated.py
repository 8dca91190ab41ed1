"""What a source's rotated files tell the tailer: where they lie, which changed since a given
time, in which order to read them, and what their gzip-compressed copies show.

Finding the files is :mod:`shipper.discover`'s (:func:`~shipper.discover.rotated_siblings`,
:func:`~shipper.discover.compressed_siblings`), following them :mod:`shipper.tailer`'s; these
stateless helpers sit between. Compressed copies are never read, but their identity (first line
and size, see :func:`shipper.fingerprint.gzip_identity`) tells whether a file that is gone was
read to its end before it was compressed, or lost lines.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from shipper.cursor import Cursor
from shipper.discover import compressed_siblings
from shipper.fingerprint import gzip_identity


def rotation_path(path: Path) -> Path:
    """Where the runtime rotates the file of a source at ``path``: the path itself, or the
    target of a symlink (``/var/log/pods/.../0.log`` -> Docker's ``<id>-json.log`` under
    cri-dockerd), whose rotated copies (``<id>-json.log.1``) lie beside the target, not the
    link."""
    if not path.is_symlink():
        return path
    return Path(os.path.realpath(path))


def modified_since(paths: list[Path], floor_ns: int) -> list[tuple[Path, os.stat_result]]:
    """(path, stat) of those of ``paths`` last modified at ``floor_ns`` or later; files gone
    (or unreadable) meanwhile are left out."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_mtime_ns >= floor_ns:
            out.append((path, st))
    return out


#: A rotated name ending in a logrotate ``dateext`` date of at least a year's four digits
#: (``app.log-20261206``, ``-%Y%m%d.%H``: ``app.log-20261206.13``), or in ``.`` and eight
#: digits or more (``dateformat .%Y%m%d``: ``app.log.20261206``, no counter gets that far):
#: its last part, digits or not, is part of the date, no ``.N`` counter (taken for one,
#: ``.20261206`` sorted before ``.20261205``, as ``.2`` before ``.1``). Such names sort in date
#: order as they are.
_DATED = re.compile(r"(?:-\d{4}[\d._-]*|\.\d{8,})$")
#: A rotated name's ``.N`` counter or date, as it ends before an extension logrotate keeps at
#: the end (``extension .log``: ``app.2.log``, ``app-20261206.log``; see
#: :func:`shipper.discover._kept_extension`).
_MARKED = re.compile(r"(?:\.\d+|-\d{4}[\d._-]*)$")


def age(mtime_ns: int, path: Path) -> tuple[int, int, str]:
    """Where a rotated file sorts among its siblings, oldest first: by modification time, and
    files of the same time (coarse clocks, tiny files) by name: Docker's ``.2`` is older than
    its ``.1``, kubelet's ``0.log.<time>`` and logrotate's ``dateext`` ``app.log-<date>``
    names sort in time order (:data:`_DATED`), and after every ``.N`` (``dateext`` turned on
    later: the counted files are the older ones). A suffix of other digits (``.²``:
    ``str.isdigit`` takes it, ``int`` does not) is no number. With logrotate's ``extension``
    the counter or date comes before the extension kept (:func:`_marked`): ``app.2.log`` is
    older than ``app.1.log`` (by name alone ``app.1.log`` sorted first: read before it)."""
    name = _marked(path.name)
    suffix = name.rsplit(".", 1)[-1]
    counted = _number(suffix) and not _DATED.search(name)
    return mtime_ns, -int(suffix) if counted else 0, path.name


def _number(text: str) -> bool:
    """Whether ``text`` is a ``.N`` counter ``int`` reads (``.²`` is not)."""
    return text.isascii() and text.isdigit()


def _marked(name: str) -> str:
    """``name`` less an extension kept after its ``.N`` counter or date (``app.2.log`` ->
    ``app.2``), else as it is (``x-json.log.1``, ``0.log.20261206-033000``)."""
    base, dot, last = name.rpartition(".")
    if dot and not _number(last) and _MARKED.search(base):
        return base
    return name


def oldest_first(files: list[tuple[int, Cursor]]) -> list[Cursor]:
    """Cursors of rotated files by :func:`age`."""
    return [c for _, c in sorted(files, key=lambda item: age(item[0], item[1].path))]


def compressed_identities(path: Path) -> set[tuple[str | None, int]]:
    """(fingerprint, size mod 2**32) of the gzip-compressed rotated files of the source at
    ``path``."""
    try:
        copies = compressed_siblings(rotation_path(path))
    except OSError:
        return set()
    out: set[tuple[str | None, int]] = set()
    for copy in copies:
        ident = gzip_identity(copy)
        if ident is not None:
            out.add(ident)
    return out
