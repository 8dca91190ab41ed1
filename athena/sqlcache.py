"""A small on-disk cache of transpiled SQL, so a repeated ``logq`` command skips sqlglot.

Importing sqlglot and transpiling a canned query costs about 0.13 s of a ~0.5 s command; the
answer only changes when the query text, the shape of its list parameters, sqlglot or this
package's transpile code changes, and all four are in the key. Only the shipped canned queries
are cached (so the cache stays small), and parameter values are never part of the key or the
cached text (they are bound at run time): the cache holds no user data.

Location: ``$LOGQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/logq``, else ``~/.cache/logq``; none when
there is no home directory either (``HOME`` unset and a user id without a passwd entry, as in a
container run with an arbitrary ``--user``). The cache is best-effort: a missing location and
unreadable, corrupt or unwritable entries are ignored and the SQL is transpiled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

#: Bump to invalidate every entry (format of the cached value).
FORMAT = 1


def cache_dir() -> Path | None:
    """Where the cache lives, or None without a home directory to put it in."""
    explicit = os.environ.get("LOGQ_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # no $HOME and no passwd entry for this uid
            return None
    return Path(base) / "logq"


#: The modules whose source the transpiled SQL depends on: those that transform the tree, and
#: what they read the types of values from (:mod:`athena.trinotypes`, which reads the tables'
#: column types in :mod:`athena.schema`): a change to one of those changed a canned query's
#: SQL (a ``[]`` on a column typed a map or a row is rewritten) while its cached text stayed.
TRANSPILE_MODULES = (
    "queries.py",
    "trinofuncs.py",
    "trinocalls.py",
    "trinomissing.py",
    "trinotypes.py",
    "schema.py",
)


def _code_fingerprint() -> str:
    """sqlglot's version and the source of the modules that transform the tree."""
    source = b"".join((Path(__file__).parent / name).read_bytes() for name in TRANSPILE_MODULES)
    return _sqlglot_version() + ":" + hashlib.sha256(source).hexdigest()[:16]


def _sqlglot_version() -> str:
    """sqlglot's version, from the ``_version.py`` its wheels carry: found without importing
    sqlglot, and read in well under a millisecond, where ``importlib.metadata.version`` searches
    every folder on the path for the distribution (~10 ms of each warm ``logq`` command)."""
    from importlib.util import find_spec

    spec = find_spec("sqlglot")
    if spec is not None and spec.origin:
        try:
            text = (Path(spec.origin).parent / "_version.py").read_bytes()
        except OSError:  # a source checkout of sqlglot: no generated _version.py
            pass
        else:
            return "file-" + hashlib.sha256(text).hexdigest()[:16]
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sqlglot")
    except PackageNotFoundError:  # pragma: no cover - sqlglot is a dependency
        return "?"


def key(*parts: str) -> str:
    """Cache key of a transpilation."""
    digest = hashlib.sha256()
    for part in (str(FORMAT), _code_fingerprint(), *parts):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def get(name: str) -> dict[str, Any] | None:
    """The cached value for key ``name``, or None."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        value = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def put(name: str, value: dict[str, Any]) -> None:
    """Store ``value`` under ``name`` (atomically: temp file then rename); errors are ignored."""
    folder = cache_dir()
    if folder is None:
        return
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(value), encoding="utf-8")
        os.replace(tmp, folder / f"{name}.json")
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
