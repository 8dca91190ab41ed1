"""Files holding secrets that every user of the host can read, said at start by both daemons:
a ``--tls-key`` (:mod:`shipper.tls_keys`) and a ``--config`` file holding a shared key, a
password or a key's passphrase (:func:`exposed_config`).

OpenSSH refuses a private key others can read; a daemon warns only: a refusal would stop every
replica at its next restart, for a mode it ran with until then. The mode is the linked file's
(a Kubernetes secret's or ConfigMap's files are links into ``..data``, whose own mode means
nothing); group bits are fine (``fsGroup`` makes the kubelet add group read, 0440).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shipper.errors import SECRET_KEYS

#: Mode bits that let every user of the host read (or replace) a file.
_OTHERS = stat.S_IROTH | stat.S_IWOTH
#: What to do, after ``chmod 600 <file>``, for a file a Kubernetes volume mounts.
_KUBERNETES = (
    "in a Kubernetes secret volume: defaultMode: 0400, the pod's fsGroup if the daemon does "
    "not run as root"
)


def open_to_all(flag: str, path: str | Path) -> tuple[str, str] | None:
    """``(what, real)`` for a file users other than its owner and group can read or write:
    ``what`` names ``flag``, the file (and the one its link leads to: ``real``) and its mode;
    None when they cannot, or when it cannot be looked at (its loading says why)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if not mode & _OTHERS:
        return None
    real = os.path.realpath(path)
    shown = str(path) if real == os.path.abspath(path) else f"{path} (a link to {real})"
    can = " and ".join(
        word for bit, word in ((stat.S_IROTH, "read"), (stat.S_IWOTH, "written")) if mode & bit
    )
    return f"{flag} {shown} can be {can} by every user of this host (mode {mode:04o})", real


def exposed_key(key: str | Path) -> str | None:
    """What to say of a ``--tls-key`` every user can read, None if they cannot."""
    found = open_to_all("--tls-key", key)
    if found is None:
        return None
    what, real = found
    return (
        f"{what}: whoever reads it can present this certificate as theirs; let only this "
        f"user read it: chmod 600 {real} ({_KUBERNETES})"
    )


def exposed_config(path: str | Path | None) -> str | None:
    """What to say of a ``--config`` file every user can read that holds a secret (its keys
    named, never their values), None otherwise. Every table is looked at: the other daemon's
    secrets are as exposed as this one's."""
    found = None if path is None else open_to_all("--config", path)
    if found is None:
        return None
    try:
        doc = tomllib.loads(Path(path or "").read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return None  # its loading has said what is wrong with it
    secrets = sorted(set(_secret_keys(doc)))
    if not secrets:
        return None
    what, real = found
    return (
        f"{what} and holds secrets ({', '.join(secrets)}): whoever reads them passes the "
        f"Forward handshake as a trusted peer; let only this user read it: chmod 600 {real} "
        f"({_KUBERNETES})"
    )


def _secret_keys(doc: dict[str, Any]) -> Iterator[str]:
    for key, value in doc.items():
        if isinstance(value, dict):
            yield from _secret_keys(value)
        elif key.replace("-", "_") in SECRET_KEYS:
            yield key
