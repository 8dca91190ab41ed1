"""A certificate and its private key loaded into a TLS context, the key possibly encrypted
(``--tls-key-password``, as Fluent Bit's ``tls.key_passwd`` and Fluentd's
``private_key_passphrase``), for both daemons.

OpenSSL asks for the passphrase of an encrypted key on the terminal when none is given. A
daemon started from a shell then hung at start on a prompt, and a key rewritten encrypted while
it ran (:mod:`shipper.tls_reload`) would block the event loop on it. So a passphrase is always
given as a function: with none configured it raises, and the error names the flag to pass.

A key file every user of the host can read (a Kubernetes secret mounted with the default mode,
0644) is loaded with a WARNING (:func:`exposed_key`), at start and at each reload.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path


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
    A key that loads but every user can read is said on ``log`` (:func:`exposed_key`)."""

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


#: Mode bits that let every user of the host read (or replace) a file.
_OTHERS = stat.S_IROTH | stat.S_IWOTH


def exposed_key(key: str | Path) -> str | None:
    """What to say of a ``--tls-key`` that users other than its owner and group can read or
    write, None if they cannot. Whoever reads the key can present the certificate as theirs;
    OpenSSH refuses such keys, but a daemon warns only: a refusal would stop every replica at
    its next restart, for a mode it ran with until then. The mode is the linked file's (a
    Kubernetes secret's files are links into ``..data``, whose own mode means nothing); group
    bits are fine (``fsGroup`` makes the kubelet add group read, 0440)."""
    try:
        mode = stat.S_IMODE(os.stat(key).st_mode)
    except OSError:
        return None
    if not mode & _OTHERS:
        return None
    real = os.path.realpath(key)
    shown = str(key) if real == os.path.abspath(key) else f"{key} (a link to {real})"
    can = " and ".join(
        word for bit, word in ((stat.S_IROTH, "read"), (stat.S_IWOTH, "written")) if mode & bit
    )
    return (
        f"--tls-key {shown} can be {can} by every user of this host (mode {mode:04o}): whoever "
        f"reads it can present this certificate as theirs; let only this user read it: "
        f"chmod 600 {real} (in a Kubernetes secret volume: defaultMode: 0400, the pod's fsGroup "
        "if the daemon does not run as root)"
    )
