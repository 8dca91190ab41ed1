"""A TLS context built again when the files it was built from change: both daemons' certificates
rotate in place without a restart.

cert-manager rewrites a Kubernetes secret's files (the volume's ``..data`` link moves to a new
folder), an ACME client or a sidecar rewrites them on a host. A daemon that kept the context it
started with served, or presented, the old certificate until its next restart, an expired one
included: an aggregator's clients then refused it, a shipper with an expired client certificate
(``--tls-cert``) was refused by every aggregator. :meth:`ReloadingTls.current`, called for each
new connection, reads the files at most every :data:`RELOAD_CHECK_SECONDS` and, when their bytes
changed, builds a new context for the connections that follow; connections already open keep
theirs. Files caught half-written, or a certificate that does not match its key (one file
rewritten, not yet the other), are not taken: the previous context stays, with a WARNING, and
the files are tried again once they change again.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: Seconds between two looks at the files (a look reads a few KB).
RELOAD_CHECK_SECONDS = 10.0


class ReloadingTls:
    """The context ``build`` makes from ``paths``, built again when their bytes change.
    ``build`` raises one of ``refusals`` for files it cannot use (at start: to the caller)."""

    def __init__(
        self,
        paths: Sequence[str | Path | None],
        build: Callable[[], ssl.SSLContext],
        refusals: tuple[type[Exception], ...],
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = tuple(paths)
        self._build = build
        self._refusals = refusals
        self._log = log
        self._clock = clock
        self._stamp = self._stamps()
        self.context = build()
        """The context new connections take."""
        self._checked = clock()
        self._refused: tuple[bytes | None, ...] | None = None
        """The files' stamp when they last failed to load: not tried again until they change."""

    def current(self) -> ssl.SSLContext:
        """The context for a new connection: the files loaded again if they changed."""
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return self.context
        self._checked = now
        stamp = self._stamps()
        if stamp in (self._stamp, self._refused):
            return self.context
        try:
            context = self._build()
        except self._refusals as exc:
            self._refused = stamp
            self._log.warning(
                "TLS files changed but do not load (%s): new connections still use the "
                "previous certificate; the files are tried again when they change",
                exc,
            )
            return self.context
        self.context, self._stamp, self._refused = context, stamp, None
        named = ", ".join(str(p) for p in self.paths if p is not None)
        self._log.info("TLS files reloaded (%s): new connections use them", named)
        return context

    def _stamps(self) -> tuple[bytes | None, ...]:
        """A digest of each file's bytes (None: none or unreadable), read through links.
        Contents, not times: a file rewritten in place within the file system's timestamp
        granularity, at the same size, keeps its size, inode and modification time."""
        return tuple(None if path is None else _digest(path) for path in self.paths)


def _digest(path: str | Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError:
        return None
