"""Whether the files of sources a discovery pass did not find are still there.

A source missing from a complete pass is not drained at once (see
:meth:`shipper.daemon.Shipper._gone`): its file may be there all the same (the listing raced
a rotation), or gone while its folder stays (a rotation between rename and create, drained
only after :data:`~shipper.daemon.GONE_GRACE_SECONDS`). Telling which takes a ``stat`` of the
file and of its folder, per source, at every pass while it is missing. Those ran on the event
loop: on a slow or hung file system (a stale NFS mount under a root) each one held every read
and every ack, 2 ms a ``stat`` making 0.4 s a pass for 100 files gone. They are looked at
here instead, on the discovery thread, right after the pass that missed them
(:meth:`shipper.daemon.Shipper._pass`), and handed to the loop with the pass's
:class:`~shipper.discover.Scan`; only the loop decides, and changes its state, from them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple


class Looking:
    """The folder a look on another thread is at now (None: not started), for the warning
    about a look that takes long (:meth:`shipper.daemon.Shipper._off_loop`): the folder that
    hangs may be a checkpoint's or a source's outside the log roots (a ``--path`` dropped
    from the configuration, its NFS mount gone stale), and naming the roots sent the operator
    to look at the wrong mount. Set by the looking thread, read by the loop: one attribute,
    replaced whole."""

    __slots__ = ("folder",)

    def __init__(self) -> None:
        self.folder: Path | None = None

    def at(self, folder: Path) -> None:
        """The look goes on at ``folder`` (a call that may block follows)."""
        self.folder = folder


class Presence(NamedTuple):
    """What a look at a missing source's live file found."""

    file: bool
    """Its live file is there (a file, links followed: what the runner reads)."""
    folder: bool
    """The folder of its live file is there (False: its container or pod was removed)."""


def look(paths: Mapping[str, Path], looking: Looking | None = None) -> dict[str, Presence]:
    """The presence of each live file of ``paths`` (by source key), by the rules of
    ``os.path.isfile`` and ``os.path.isdir`` (those the loop applied); the folder of a file
    there is not looked at. A work for the discovery thread: each look may block on a slow
    file system (the folder it is at is kept in ``looking``)."""
    looked = {}
    for key, path in paths.items():
        if looking is not None:
            looking.at(path.parent)
        if os.path.isfile(path):
            looked[key] = Presence(file=True, folder=True)
        else:
            looked[key] = Presence(file=False, folder=os.path.isdir(path.parent))
    return looked
