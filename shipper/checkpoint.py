"""The checkpoint registry: how far each log file has been acknowledged, surviving restarts.

One JSON document under ``--state-dir`` maps *file identity* -> position. A file's identity is
``<device>:<inode>:<fingerprint>`` where the fingerprint hashes the file's first line (at most
1 KiB): a recycled inode holding a new file gets a new fingerprint, so it is never resumed at the
old file's offset. Entries advance only after the aggregator acknowledged the batch, and the
document is replaced atomically (write tmp, fsync, rename, fsync the directory), so after a
crash -- also ``kill -9`` -- the shipper resumes at the last acknowledged line.

A lock file keeps two shippers from sharing one state directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shipper.errors import ConfigError

log = logging.getLogger("logq.shipper.checkpoint")

FORMAT_VERSION = 1


@dataclass(slots=True)
class FileState:
    """The acknowledged position of one file."""

    source: str
    """Key of the source (``docker:<id>``...) the file belongs to."""
    path: str
    """Where the file was last seen (informational; identity is the registry key)."""
    source_id: str
    """``source_id`` put into its records; kept across restarts and renames."""
    offset: int
    """Where reading resumes: just past the last acknowledged complete line (or the start of a
    split line that was not complete yet)."""
    acked: int
    """Highest acknowledged record offset; re-read lines at or below it are not sent again."""
    epoch: int = 0
    """Bumped when the file was truncated in place (copytruncate): keeps source ids distinct."""
    updated: float = 0.0


def file_key(dev: int, ino: int, fingerprint: str) -> str:
    return f"{dev}:{ino}:{fingerprint}"


class Registry:
    """Checkpoints of every file, persisted in ``<state-dir>/checkpoints.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "checkpoints.json"
        self._files: dict[str, FileState] = {}
        self.dirty = False
        self._lock_fd: int | None = None
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create --state-dir {state_dir}: {exc}") from None
        self._lock()
        self._load()

    def _lock(self) -> None:
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"--state-dir {self.state_dir} is in use by another logq-shipper; "
                "give each shipper its own state directory"
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Losing the registry means re-reading files from the start: duplicates, which the
            # aggregator drops by offset, never loss. Keep the bad file for inspection.
            bad = self.path.with_suffix(f".bad-{int(time.time())}")
            log.error(
                "checkpoint registry unreadable, starting fresh path=%s error=%s moved_to=%s",
                self.path,
                exc,
                bad,
            )
            os.replace(self.path, bad)
            return
        for key, value in (doc.get("files") or {}).items():
            try:
                self._files[key] = FileState(**value)
            except TypeError:
                log.warning("ignoring malformed checkpoint entry key=%s", key)

    def get(self, key: str) -> FileState | None:
        return self._files.get(key)

    def put(self, key: str, state: FileState) -> None:
        state.updated = time.time()
        self._files[key] = state
        self.dirty = True

    def remove(self, key: str) -> None:
        if self._files.pop(key, None) is not None:
            self.dirty = True

    def items(self) -> list[tuple[str, FileState]]:
        return list(self._files.items())

    def snapshot(self) -> bytes:
        """The document to persist, taken in the event loop (cheap) before writing elsewhere."""
        doc = {"version": FORMAT_VERSION, "files": {k: asdict(v) for k, v in self._files.items()}}
        self.dirty = False
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def write(self, data: bytes) -> None:
        """Atomically replace the registry file with ``data``: tmp -> fsync -> rename."""
        tmp = self.state_dir / ".checkpoints.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def save(self) -> None:
        self.write(self.snapshot())
