"""A WARNING that shows what a service's unparsed Envoy access lines look like.

``logq_aggregator_envoy_parse_failures_total{service}`` says how many candidate lines no format
parsed (they are kept in ``container_logs``), not what they are: an access-log format logq does
not know (fixed with ``--envoy-format``), or an app's output taken for Envoy's (fixed with the
container label ``logq.format=plain``). So when a flush counts failures for a service, one of
its lines (:class:`aggregator.batch.UnparsedSample`) is logged, at most every
:data:`PARSE_WARNING_SECONDS` per service, as Vector's rate-limited parse-error events do.

The line is a client's data: cut to :data:`aggregator.batch.SAMPLE_CHARS` characters and
printed as a Python string literal, so newlines, terminal escapes (ANSI ``ESC[...``) and every
other non-printable character are escaped and the warning stays one bounded log line. Escapes
take up to ten characters each (``\U000e0001``), so the literal is cut again, to
:data:`SHOWN_CHARS`, at a whole character.
"""

from __future__ import annotations

import logging

from aggregator.batch import UnparsedSample
from aggregator.throttle import Throttle

log = logging.getLogger("logq.aggregator")

#: Unparsed lines of a service are shown at most this often (the counter counts them all).
PARSE_WARNING_SECONDS = 600.0
#: A shown value's string literal is at most this long (plus its quotes and the cut note).
SHOWN_CHARS = 600


def shown(text: str | None, chars: int | None = None) -> str:
    """``text`` safe for one log line: a string literal (``repr``), which escapes newlines and
    control characters, at most :data:`SHOWN_CHARS` long, with a note when it was cut (``chars``
    is the whole value's length, when ``text`` is already a cut of it)."""
    if text is None:
        return "-"
    whole = len(text) if chars is None else max(chars, len(text))
    kept = _fitting(text)
    literal = repr(text[:kept])
    if whole > kept:
        literal += f" (cut: its first {kept} of {whole} characters)"
    return literal


def _fitting(text: str) -> int:
    """How many of ``text``'s first characters fit in :data:`SHOWN_CHARS` once escaped: a
    binary search, as each character escapes to 1-10 characters."""
    if len(text) <= SHOWN_CHARS and len(repr(text)) <= SHOWN_CHARS + 2:  # + its quotes
        return len(text)
    low, high = 0, min(len(text), SHOWN_CHARS)  # the answer lies in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if len(repr(text[:middle])) <= SHOWN_CHARS + 2:
            low = middle
        else:
            high = middle - 1
    return low


class ParseFailureWarnings:
    """Logs, per service, one unparsed line when its count rises (module docstring)."""

    def __init__(self) -> None:
        self._throttle = Throttle(
            PARSE_WARNING_SECONDS, what="services with unparsed Envoy lines", logger=log
        )

    def note(
        self, failures: dict[str, int], samples: dict[str, UnparsedSample], now: float
    ) -> None:
        """One flush's counts and samples (FlushResult): warn for each service that failed and
        was not warned about in the last :data:`PARSE_WARNING_SECONDS`."""
        for service, count in failures.items():
            sample = samples.get(service)
            if not count or sample is None or not self._throttle.due(service, now):
                continue
            log.warning(
                "Envoy access lines that no format parses: stored in container_logs and counted "
                "in logq_aggregator_envoy_parse_failures_total (one shown per service every "
                "%d minutes). If they are access lines, configure their format with "
                "--envoy-format (README: --envoy-format); if they are not (an app's output), "
                "label the container logq.format=plain (README: logq.format; on Kubernetes, "
                "where pods carry no labels for logq-shipper, rename it) service=%s "
                "failed=%d container=%s sample=%s",
                PARSE_WARNING_SECONDS // 60,
                service,
                count,
                shown(sample.container_name),
                shown(sample.line, sample.chars),
            )
