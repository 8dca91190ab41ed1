"""The shipper's own state files (``--state-dir``) matched by a ``--path`` glob: warned about
at start.

With ``--path '/var/log/app/*' --state-dir /var/log/app`` the shipper followed its ``lock`` and
``checkpoints.json`` as logs. Nothing of them was shipped (``checkpoints.json`` holds no line
break and is replaced whole, never appended to), but each checkpoint write replaced a followed
file: the shipper took about twice the CPU under load. Nothing breaks, so the start says so
and goes on, the state files checked by name (``checkpoints.json`` does not exist before the
first save), not by walking the glob.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from shipper.exclude import Excluder

#: The files a shipper keeps in ``--state-dir`` (:class:`shipper.checkpoint.Registry`).
STATE_FILES = ("lock", "checkpoints.json")


def warn_state_in_paths(
    patterns: Iterable[str], state_dir: Path, excludes: Iterable[str], log: logging.Logger
) -> None:
    """One WARNING per ``--path`` glob that matches state files ``--exclude`` does not keep
    out, naming them and what to do."""
    excluder = Excluder(excludes)
    folders = {os.path.abspath(state_dir), os.path.realpath(state_dir)}
    files = [os.path.join(folder, name) for folder in sorted(folders) for name in STATE_FILES]
    for pattern in patterns:
        matched = [path for path in files if glob_matches(pattern, path)]
        kept = [path for path in matched if not _excluded(excluder, path)]
        if kept:
            log.warning(
                "--path %s matches the shipper's own state files %s (--state-dir %s): they "
                "are followed as logs; nothing of them is shipped (lock is empty, "
                "checkpoints.json holds no line break and is replaced whole), but each "
                "checkpoint save replaces a followed file and the shipper works about twice "
                "as hard; give --state-dir a folder no --path glob matches "
                "(/var/lib/logq-shipper), a narrower glob ('*.log'), or --exclude '%s'",
                pattern,
                " and ".join(kept),
                state_dir,
                ",".join(kept),
            )


def _excluded(excluder: Excluder, path: str) -> bool:
    """Whether ``--exclude`` keeps ``path`` out, as a ``--path`` file's source (its service is
    the file name up to its first dot, its container name the file name)."""
    name = os.path.basename(path)
    fields = {"service": name.split(".", 1)[0], "container_name": name}
    return excluder.check(path, fields, [path]) is not None


def glob_matches(pattern: str, path: str) -> bool:
    """Whether discovery's walk of ``pattern`` (:func:`shipper.discover.expand_glob`) would
    yield ``path`` (both made absolute): ``*`` and ``**`` pass over names starting with a dot
    (unless the pattern's part starts with one), ``**`` spans any number of folders, none too,
    and ``x/**`` is every file under ``x``."""
    wanted = [p for p in os.path.abspath(os.path.expanduser(pattern)).split("/") if p]
    names = [p for p in os.path.abspath(path).split("/") if p]
    if wanted and wanted[-1] == "**":
        wanted.append("*")
    return _match(wanted, names)


def _match(wanted: list[str], names: list[str]) -> bool:
    if not wanted:
        return not names
    part, rest = wanted[0], wanted[1:]
    if part == "**":
        # Zero folders, or one more (not hidden) and ``**`` again.
        if _match(rest, names):
            return True
        return bool(names) and not names[0].startswith(".") and _match(wanted, names[1:])
    if not names:
        return False
    name = names[0]
    if name.startswith(".") and not part.startswith(".") and part != name:
        return False  # a wildcard passes over a hidden name (a literal one is fine)
    return fnmatch.fnmatchcase(name, part) and _match(rest, names[1:])
