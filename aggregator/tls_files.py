"""The Forward server's TLS context: built from ``--tls-cert``, ``--tls-key`` and
``--tls-client-ca``, and built again when those files change.

Certificates are rotated in place: cert-manager rewrites a Kubernetes secret's files (the
volume's ``..data`` link moves to a new folder), an ACME client or a sidecar rewrites them on a
host. The aggregator used to keep the certificate it started with until it was restarted, so
a rotated certificate was served only after the next rollout, and an expired one until then.
Now :meth:`TlsFiles.current`, called for each new TLS connection, reads the files at most
every :data:`RELOAD_CHECK_SECONDS` and, when their bytes changed, loads them into a new
context for the connections that follow; connections already open keep theirs. Files caught
half-written, or a certificate that does not match its key (one file rewritten, not yet the
other), are not taken: the previous context stays, with a WARNING, and the files are tried
again once they change again. ``--tls-client-ca`` is read again the same way.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable

log = logging.getLogger("logq.aggregator.server")

#: Seconds between two looks at the TLS files (a look is a few stat calls).
RELOAD_CHECK_SECONDS = 10.0


class CertificateError(ValueError):
    """``--tls-cert`` / ``--tls-key`` name no usable PEM pair: the command must change (exit
    2, as a bad flag), unlike a failure of the host at run time (exit 1)."""


def tls_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """Server TLS context from PEM files, with a message that says which file is wrong. With
    ``client_ca`` (``--tls-client-ca``), a client must present a certificate that CA signed
    (mutual TLS, as Fluentd's ``client_cert_auth`` and Vector's ``verify_certificate``)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}") from exc
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(
                f"cannot load --tls-client-ca {client_ca}: {exc}; it must be a PEM CA bundle"
            ) from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class TlsFiles:
    """The TLS context of ``cert``, ``key`` and ``client_ca``, as those files now are."""

    def __init__(
        self,
        cert: str,
        key: str,
        client_ca: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = (cert, key, client_ca)
        self._clock = clock
        self._stamp = self._stamps()
        self.context = tls_context(cert, key, client_ca)
        """The context new connections take (raises :class:`CertificateError` at start)."""
        self._checked = clock()
        self._refused: tuple[object, ...] | None = None
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
            context = tls_context(*self.paths)
        except CertificateError as exc:
            self._refused = stamp
            log.warning(
                "TLS files changed but do not load (%s): new connections still get the "
                "previous certificate; they are tried again when they change",
                exc,
            )
            return self.context
        self.context, self._stamp, self._refused = context, stamp, None
        log.info("TLS certificate reloaded from %s (new connections get it)", self.paths[0])
        return context

    def _stamps(self) -> tuple[object, ...]:
        """A digest of each file's bytes (None: unreadable), read through links. Contents, not
        times: a file rewritten in place within the file system's timestamp granularity, at
        the same size, keeps its size, inode and modification time. The files are a few KB
        (a CA bundle a few hundred), read at most every RELOAD_CHECK_SECONDS."""
        stamps: list[object] = []
        for path in self.paths:
            try:
                stamps.append(None if path is None else _digest(path))
            except OSError:
                stamps.append(None)
        return tuple(stamps)


def _digest(path: str) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()
