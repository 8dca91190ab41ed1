"""The hint a shipper gives when TLS connections close and it presents no client certificate
(an aggregator with ``--tls-client-ca`` refuses it in the TLS handshake, which the client sees
only as its connections closing): only then, and whatever words the close came in. ``--once``
ends its error with it (:meth:`ForwardClient._check_give_up`); follow mode says it once as a
WARNING (tests/shipper/test_sender.py)."""

from __future__ import annotations

import ssl
import time

import pytest

from shipper.config import Endpoint
from shipper.errors import DeliveryError
from shipper.sender import ForwardClient

HINT = "pass --tls-cert and --tls-key"
CLOSED = [
    "aggregator closed the connection",
    "connection closed",
    "connection reset by peer",
    "broken pipe",
    "Connection lost",
    "TLS failed (TLSV13_ALERT_CERTIFICATE_REQUIRED); is the aggregator listening with TLS?",
]
ENDPOINT = Endpoint("127.0.0.1", 24224)


def _client(tls: bool, client_cert: bool) -> ForwardClient:
    """A ``--once`` client whose last delivery failed for good (nothing acked for a minute)."""
    return ForwardClient(
        (ENDPOINT,),
        hostname="test-host",
        tls=ssl.create_default_context() if tls else None,
        client_cert=client_cert,
        give_up_after=30.0,
    )


def _given_up(client: ForwardClient, why: str) -> str:
    """The error ``--once`` gives up with after failures of ``why``."""
    client._health[ENDPOINT].last_error = why
    client._last_success = time.monotonic() - 60
    with pytest.raises(DeliveryError) as failed:
        client._check_give_up()
    return str(failed.value)


@pytest.mark.parametrize("why", CLOSED)
def test_closed_tls_connections_without_a_client_certificate_get_the_hint(why: str) -> None:
    error = _given_up(_client(tls=True, client_cert=False), why)
    assert error.startswith(f"cannot reach aggregator {ENDPOINT} after 30 s: {why}")
    assert HINT in error


@pytest.mark.parametrize(
    ("tls", "client_cert", "why"),
    [
        (True, True, CLOSED[0]),  # a certificate presented
        (False, False, CLOSED[0]),  # no TLS: a client certificate is not the cause
        (True, False, "connection refused"),  # nothing listening: not a refusal in TLS
        (True, False, "TLS certificate not trusted (self-signed); check --tls-ca"),
    ],
)
def test_no_hint_where_a_client_certificate_is_not_the_cause(
    tls: bool, client_cert: bool, why: str
) -> None:
    error = _given_up(_client(tls, client_cert), why)
    assert error == f"cannot reach aggregator {ENDPOINT} after 30 s: {why}"
