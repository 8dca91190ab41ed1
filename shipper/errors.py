"""Errors of logq-shipper, translated from OS / network / TLS errors at one boundary each.

::

    ShipperError                  anything the daemon reports to the user and exits on
    ├── ConfigError               bad flags or config file (exit 2)
    ├── StartError                the host refused what a start needs (exit 1)
    └── DeliveryError             batches could not be delivered within the retry budget
        └── HandshakeError        the aggregator refused the shared key or demanded one

and the helpers that keep a value quoted in an error message short (:func:`preview`) and that
say why a directory cannot be used (:func:`unusable_dir_message`) or an address cannot be
listened on (:func:`listen_error`), both also the aggregator's.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any


class ShipperError(Exception):
    """A failure the daemon reports as one line and exits non-zero on."""


class ConfigError(ShipperError):
    """Invalid flags or configuration file; the message says which setting and why."""


class StartError(ShipperError):
    """The host refused what the shipper needs to start (its ``--state-dir``, its
    ``--metrics-listen`` port): exit 1, a failure at run time. Exit 2 (:class:`ConfigError`)
    says the command must change; these may pass once the other process stops or the volume
    is fixed, with the same command."""


class DeliveryError(ShipperError):
    """Batches could not be acknowledged by any aggregator within the retry budget."""


class HandshakeError(DeliveryError):
    """The shared-key handshake failed: retrying will not help until the key is fixed."""


#: What to do when TLS connections close on a shipper without a client certificate.
CLIENT_CERT_HINT = (
    "an aggregator that requires client certificates, --tls-client-ca, closes TLS connections "
    "without one: if so, pass --tls-cert and --tls-key"
)
#: How a connection closed by the peer reads in a delivery error (whichever write or read
#: met the close first), or a TLS error other than the aggregator's certificate.
_CLOSED_SIGNS = (
    "closed the connection",
    "connection closed",
    "reset by peer",
    "broken pipe",
    "connection lost",
    "tls failed",
)


def closed_by_peer(why: str) -> bool:
    """Whether a delivery error's text says the aggregator closed the connection: how an
    aggregator with ``--tls-client-ca`` refusing a client without a certificate looks from
    the client (TLS 1.3 ends the client's side of the handshake before the server checks it)."""
    return any(sign in why.lower() for sign in _CLOSED_SIGNS)


def flag_of(key: str) -> str:
    """The command-line flag of setting ``key``: ``--batch-lines`` of ``batch_lines``."""
    return "--" + key.replace("_", "-")


def clipped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks the cut), for error messages."""
    return text if len(text) <= limit else text[:limit] + "..."


def preview(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut at ``limit`` characters."""
    return clipped(repr(value), limit)


#: ``--config`` keys (as fields, as flags) whose values are secrets: errors show only their type.
SECRET_KEYS = frozenset({"shared_key", "password", "user", "users", "tls_key_password"})


def shown_value(key: str, value: Any) -> str:
    """``value`` for an error about the ``--config`` key ``key``: :func:`preview`, or only its
    type for a secret (stderr ends up in the journal and the pod's logs)."""
    if key.replace("-", "_") not in SECRET_KEYS:
        return preview(value)
    kinds = sorted({type(v).__name__ for v in value}) if isinstance(value, list) else []
    what = f"a list of {', '.join(kinds)}" if kinds else f"a value of type {type(value).__name__}"
    return f"{what} (the value is a secret, not shown)"


def unusable_dir_message(flag: str, directory: Path, exc: OSError, what: str, todo: str) -> str:
    """One line for a directory a program cannot use (``--state-dir``, ``--buffer-dir``): the
    flag and directory, ``what`` is wrong, the cause, the uid/gid this process runs as, and
    ``todo`` (which may name ``{uid}``, ``{gid}`` and ``{dir}``)."""
    uid, gid = os.getuid(), os.getgid()
    cause = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    return f"{flag} {directory} {what} ({cause}; running as uid {uid}, gid {gid}): " + todo.format(
        uid=uid, gid=gid, dir=directory
    )


def listen_error(flag: str, address: str, exc: OSError) -> OSError:
    """A failed bind as one line naming the flag, the address and what to do (the bare error
    named neither the flag nor a remedy). Shared by both daemons: the shipper's
    ``--metrics-listen`` told "stop the process that listens there" also for a host name that
    does not resolve or an address this host does not have."""
    hints = {
        errno.EADDRINUSE: "another process listens there: stop it or pick another port",
        errno.EACCES: "ports below 1024 need root (or CAP_NET_BIND_SERVICE): pick one above 1023",
        errno.EADDRNOTAVAIL: "this host has no such address: use 127.0.0.1, :PORT (every "
        "address) or one of its own addresses",
    }
    code = exc.errno or 0
    reason = os.strerror(code).lower() if code > 0 else (exc.strerror or str(exc))
    hint = hints.get(code, "check the address")
    if isinstance(exc, socket.gaierror):
        hint = "the host name does not resolve: use an IP address or a name this host knows"
    error = OSError(f"cannot listen on {address} ({flag}): {reason}; {hint}")
    error.errno = exc.errno
    return error
