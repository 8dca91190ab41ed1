"""Partition folders no writer of logq makes: left unread, and named once in a note.

The aggregator names every ``service=`` folder with :func:`athena.schema.sanitize_service` and
every ``dt=`` folder with :func:`athena.timerange.dt_of`; Athena's partition projection reads
only the services of its enum and the hours of its range, so it never reads a folder named
otherwise (a hand copy's ``service=svc=x``, ``service=%2F..``, ``service=Svc``, ``dt=not-a-date``,
``dt=2026-12-01-24``). The local engine reads what Athena reads: such a folder is left out of
every listing (:mod:`athena.partitions`), whatever the command or the range. It was read by some
commands and not others: a ``dt=`` that is no hour by long ranges and ``logq sql`` but not by
short ranges or ``logq services``; ``service=svc=x`` failed every query without ``--service``
(DuckDB's "Hive partition mismatch"); ``service=%2F..`` was answered as service ``/..``
(DuckDB decodes ``%``), ``service=svc `` as a second ``svc`` no ``--service`` could select.

Each listing that meets such folders says so on stderr, one line per folder listed (the first
few named, the rest counted), once per command (:func:`forget_strays`: a new command): the
rows in them are not lost from sight without a word. A short range looks its hours up by name
(:data:`athena.partitions.PROBE_MAX_HOURS`) without listing a service's ``dt=`` folders, so it
leaves them out without noting them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

#: Folders a note names one by one; the others of the same listing are counted.
NAMED_AT_MOST = 3

_lock = threading.Lock()
#: Notes written since the last :func:`forget_strays` (S3 listings run in threads).
_noted: set[str] = set()
#: :func:`unnoted` blocks running: while above 0, nothing is written.
_quiet = 0


@lru_cache(maxsize=1 << 12)
def is_service(value: str) -> bool:
    """``value`` is a ``service`` partition value the aggregator writes: a name
    :func:`athena.schema.sanitize_service` leaves as it is (``svc``, ``svc-0a1b2c3d4e``,
    ``api-0a1b2c3d4e``: a name stored under a hash; not
    ``Svc``, ``svc ``, ``svc=x``, ``%2F..``, ``a'b``, nor the empty name)."""
    from athena.schema import sanitize_service

    return sanitize_service(value) == value


#: What each kind of folder must be named, for the note.
_RULE = {
    "service": "not a service name the aggregator writes (lower-case letters, digits and "
    "'_', '.', '-', as `logq services` lists them)",
    "dt": "not an hour the aggregator writes (dt=YYYY-MM-DD-HH, a real UTC hour)",
}


def note_strays(parent: str, key: str, names: list[str]) -> None:
    """Say on stderr that the ``key=`` folders ``names`` in ``parent`` (a path as the user
    knows it: ``s3://...`` on S3) are not read, and what to do: one line, once per command."""
    if not names:
        return
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:NAMED_AT_MOST])
    if len(names) > NAMED_AT_MOST:
        shown += f" and {len(names) - NAMED_AT_MOST:,} more"
    if len(names) == 1:
        what, them = f"the folder {shown} in {parent}", "it"
    else:
        what, them = f"{len(names):,} folders in {parent} ({shown})", "them"
    line = (
        f"logq: note: skipped {what}: {_RULE[key]}, so neither logq nor Athena reads {them}; "
        f"move {them} out of the warehouse"
    )
    with _lock:
        if _quiet or line in _noted:
            return
        _noted.add(line)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def forget_strays() -> None:
    """Start a new command with no folder noted (tests run many commands in one process)."""
    with _lock:
        _noted.clear()


@contextmanager
def unnoted() -> Iterator[None]:
    """Listings within leave the stray folders out without a note (shell completion, whose
    stderr lands amid the command line being typed)."""
    global _quiet
    with _lock:
        _quiet += 1
    try:
        yield
    finally:
        with _lock:
            _quiet -= 1
