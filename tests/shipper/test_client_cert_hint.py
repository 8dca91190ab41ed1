"""The hint ``--once`` adds when TLS connections close on a shipper without a client certificate
(an aggregator with ``--tls-client-ca`` refuses it in the TLS handshake, which the client sees
only as its connections closing): only then, and whatever words the close came in."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipper.config import Config, Endpoint
from shipper.daemon import _with_client_cert_hint
from shipper.errors import DeliveryError

HINT = "pass --tls-cert and --tls-key"
CLOSED = [
    "aggregator closed the connection",
    "connection closed",
    "connection reset by peer",
    "broken pipe",
    "Connection lost",
    "TLS failed (TLSV13_ALERT_CERTIFICATE_REQUIRED); is the aggregator listening with TLS?",
]


def _config(**tls: object) -> Config:
    return Config(aggregators=(Endpoint("127.0.0.1", 24224),), **tls)  # type: ignore[arg-type]


@pytest.mark.parametrize("why", CLOSED)
def test_closed_tls_connections_without_a_client_certificate_get_the_hint(why: str) -> None:
    error = DeliveryError(f"cannot reach aggregator 127.0.0.1:24224 after 30 s: {why}")
    hinted = _with_client_cert_hint(error, _config(tls=True))
    assert str(hinted).startswith(str(error))
    assert HINT in str(hinted)


@pytest.mark.parametrize(
    ("tls", "why"),
    [
        ({"tls": True, "tls_cert": Path("c.pem"), "tls_key": Path("c.key")}, CLOSED[0]),
        ({}, CLOSED[0]),  # no TLS: a client certificate is not the cause
        ({"tls": True}, "connection refused"),  # nothing listening: not a refusal in TLS
        ({"tls": True}, "TLS certificate not trusted (self-signed); check --tls-ca"),
    ],
)
def test_no_hint_where_a_client_certificate_is_not_the_cause(
    tls: dict[str, object], why: str
) -> None:
    error = DeliveryError(f"cannot reach aggregator 127.0.0.1:24224 after 30 s: {why}")
    assert _with_client_cert_hint(error, _config(**tls)) is error
