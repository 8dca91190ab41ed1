"""The Forward server's TLS context: built from ``--tls-cert``, ``--tls-key`` and
``--tls-client-ca``, and built again for new connections when those files change (a
certificate rotated in place: :mod:`shipper.tls_reload`)."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable

from aggregator.flag_values import TLS_KEY_PASSWORD_ENV
from shipper.tls_keys import KeyPairError, load_key_pair
from shipper.tls_reload import ReloadingTls

log = logging.getLogger("logq.aggregator.server")


#: Where the passphrase of an encrypted ``--tls-key`` comes from, for errors.
PASSPHRASE_FROM = f"--tls-key-password or ${TLS_KEY_PASSWORD_ENV}"


class CertificateError(ValueError):
    """``--tls-cert`` / ``--tls-key`` name no usable PEM pair: the command must change (exit
    2, as a bad flag), unlike a failure of the host at run time (exit 1)."""


def tls_context(
    cert: str, key: str, client_ca: str | None = None, key_password: str | None = None
) -> ssl.SSLContext:
    """Server TLS context from PEM files, with a message that says which file is wrong; an
    encrypted key opened with ``key_password`` (:mod:`shipper.tls_keys`). With ``client_ca``
    (``--tls-client-ca``), a client must present a certificate that CA signed (mutual TLS, as
    Fluentd's ``client_cert_auth`` and Vector's ``verify_certificate``)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        load_key_pair(ctx, cert, key, key_password, PASSPHRASE_FROM, log)
    except KeyPairError as exc:
        raise CertificateError(str(exc)) from exc
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(
                f"cannot load --tls-client-ca {client_ca}: {exc}; it must be a PEM CA bundle"
            ) from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class TlsFiles(ReloadingTls):
    """The server context of ``cert``, ``key`` and ``client_ca``, as those files now are
    (:class:`shipper.tls_reload.ReloadingTls`; raises :class:`CertificateError` at start)."""

    def __init__(
        self,
        cert: str,
        key: str,
        client_ca: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        key_password: str | None = None,
    ) -> None:
        super().__init__(
            (cert, key, client_ca),
            lambda: tls_context(cert, key, client_ca, key_password),
            (CertificateError,),
            log,
            clock,
        )
