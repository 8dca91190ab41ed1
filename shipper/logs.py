"""Structured (logfmt) logs on stderr: ``ts=... level=info logger=... msg="..." key=value``.

The shipper's messages are written as ``"what happened key=%s key=%s"``; the formatter keeps the
``key=value`` pairs as they are and quotes the free text, so both people and log pipelines (Loki,
Vector's logfmt parser) can read them.

Where a daemon listens is said apart from the logs (:func:`announce`), whatever the log level.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable

from shipper.config import Endpoint

_FIRST_PAIR = re.compile(r"(?:^|\s)[a-z_]+=")


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        # Split the free text from the key=value pairs that follow it.
        m = _FIRST_PAIR.search(text)
        msg, pairs = (text[: m.start()], text[m.start() :].strip()) if m else (text, "")
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out = (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f'logger={record.name} msg="{msg.replace(chr(34), chr(39))}"'
        )
        if pairs:
            out += " " + pairs
        if record.exc_info:
            out += ' exc="' + self.formatException(record.exc_info).replace('"', "'") + '"'
        return out.replace("\n", "\\n")


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("logq.shipper")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def announce(line: str) -> None:
    """Say ``line`` on stderr whatever ``--log-level``: where a daemon listens (``listening
    on ...``, ``metrics on ...``), which operators and scripts read the port from when they
    asked for port 0. A plain line, as ``logq-aggregator`` has always printed it: a log record
    would be hidden by ``--log-level error``. Both daemons say it here."""
    print(line, file=sys.stderr, flush=True)


def announce_metrics(addresses: Iterable[tuple[str, int]]) -> None:
    """``metrics on http://127.0.0.1:9110/metrics``: every (host, port) a ``--metrics-listen``
    listens on, in the order given (IPv4 first), an IPv6 host in brackets."""
    urls = " and ".join(f"http://{Endpoint(host, port)}/metrics" for host, port in addresses)
    announce(f"metrics on {urls}")
