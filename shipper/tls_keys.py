"""A certificate and its private key loaded into a TLS context, the key possibly encrypted
(``--tls-key-password``, as Fluent Bit's ``tls.key_passwd`` and Fluentd's
``private_key_passphrase``), for both daemons.

OpenSSL asks for the passphrase of an encrypted key on the terminal when none is given. A
daemon started from a shell then hung at start on a prompt, and a key rewritten encrypted while
it ran (:mod:`shipper.tls_reload`) would block the event loop on it. So a passphrase is always
given as a function: with none configured it raises, and the error names the flag to pass.

A key file every user of the host can read (a Kubernetes secret mounted with the default mode,
0644) is loaded with a WARNING (:func:`shipper.file_modes.exposed_key`), at start and at each
reload.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from shipper.file_modes import exposed_key


class KeyPairError(ValueError):
    """The certificate and key do not load; the message says which files and what to pass."""


class _NoPassphrase(Exception):
    """The key is encrypted and no passphrase was configured."""


def load_key_pair(
    ctx: ssl.SSLContext,
    cert: str | Path,
    key: str | Path,
    password: str | None,
    passphrase_from: str,
    log: logging.Logger,
) -> None:
    """``ctx.load_cert_chain(cert, key)``, an encrypted key opened with ``password``;
    ``passphrase_from`` names where a passphrase comes from (``--tls-key-password or $…``).
    A key that loads but every user can read is said on ``log``."""

    def passphrase() -> str:
        if password is None:
            raise _NoPassphrase
        return password

    try:
        ctx.load_cert_chain(str(cert), str(key), password=passphrase)
    except _NoPassphrase:
        raise KeyPairError(
            f"--tls-key {key} is encrypted: give its passphrase with {passphrase_from}"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        unread = _unreadable(cert, "--tls-cert", "certificate") or _unreadable(
            key, "--tls-key", "private key"
        )
        if unread:
            raise KeyPairError(unread) from exc
        check = f" (is the passphrase, {passphrase_from}, the key's?)" if password else ""
        raise KeyPairError(
            f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}; they must be a PEM "
            f"certificate and its private key{check}"
        ) from exc
    exposed = exposed_key(key)
    if exposed:
        log.warning("%s", exposed)


def _unreadable(path: str | Path, flag: str, what: str) -> str | None:
    """Why ``path`` cannot be read, naming ``flag`` and what to do; None if it can. OpenSSL's
    error (``[Errno 13] Permission denied``, ``[Errno 2] No such file or directory``) named
    neither file, and the certificate and the key were both suspects."""
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        ids = f"running as uid {os.geteuid()}, gid {os.getegid()}"
        return (
            f"{flag} {path} cannot be read ({exc.strerror or exc}; {ids}): point it at the PEM "
            f"{what}, a file this user can read"
        )
