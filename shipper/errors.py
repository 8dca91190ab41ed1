"""Errors of logq-shipper, translated from OS / network / TLS errors at one boundary each.

::

    ShipperError                  anything the daemon reports to the user and exits on
    ├── ConfigError               bad flags or config file (exit 2)
    └── DeliveryError             batches could not be delivered within the retry budget
        └── HandshakeError        the aggregator refused the shared key or demanded one
"""

from __future__ import annotations


class ShipperError(Exception):
    """A failure the daemon reports as one line and exits non-zero on."""


class ConfigError(ShipperError):
    """Invalid flags or configuration file; the message says which setting and why."""


class DeliveryError(ShipperError):
    """Batches could not be acknowledged by any aggregator within the retry budget."""


class HandshakeError(DeliveryError):
    """The shared-key handshake failed: retrying will not help until the key is fixed."""
