"""A running aggregator's Prometheus samples, read from the metrics port its log names."""

from __future__ import annotations

import re
import urllib.request

#: The aggregator's start-up line naming its metrics port (``--metrics-listen``).
METRICS_LINE = re.compile(r"metrics on (http://[^/\s]+)/metrics")

_ABSENT = object()


def metrics_base(log_text: str) -> str:
    """``http://host:port`` of the metrics port the aggregator's log names."""
    found = METRICS_LINE.search(log_text)
    assert found is not None, log_text
    return found.group(1)


def metrics_text(base: str) -> str:
    """The exposition text at ``base``/metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        return response.read().decode()


def by_label(base: str, name: str, label: str) -> dict[str, float]:
    """The samples of ``name`` whose one label is ``label``, by that label's value (e.g.
    ``logq_aggregator_bad_entries_total`` by ``reason``)."""
    pattern = rf'^{re.escape(name)}\{{{re.escape(label)}="([^"]+)"\}} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, metrics_text(base), re.M)}


def sample(base: str, series: str, default: float | object = _ABSENT) -> float:
    """The value of ``series`` (its name and labels as exposed, e.g.
    ``logq_aggregator_connections_closed_total{reason="not_allowed"}``) at ``base``/metrics;
    ``default`` when it is not exposed (none given: an AssertionError)."""
    text = metrics_text(base)
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    if default is _ABSENT:
        raise AssertionError(f"{series} not in {base}/metrics:\n{text}")
    assert isinstance(default, float)
    return default
