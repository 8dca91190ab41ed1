"""Unparsed Envoy access lines are shown to the on-call: one WARNING per service every ten
minutes, naming the service, the count of that flush and one sample line, escaped and cut so
that a hostile line (newlines, terminal escapes, a megabyte) stays one bounded log line."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pytest

from aggregator.batch import SAMPLE_CHARS, UnparsedSample, records_table, route
from aggregator.decode import records_batch, to_ipc
from aggregator.logs import LogfmtFormatter
from aggregator.parse_warnings import PARSE_WARNING_SECONDS, SHOWN_CHARS, ParseFailureWarnings
from shipper import wire
from tests.aggregator.helpers import ENVOY_IMAGE, envoy_line, read_acks, record, start_aggregator
from tests.support.metrics import metrics_base, sample
from tests.support.procs import wait_until

T0 = 1_795_860_000_000_000_000  # 2026-11-28T10:00:00Z in ns
#: A client's line meant to forge log lines and repaint a terminal, a megabyte long.
HOSTILE = (
    'GET /x\n ts=2026-01-01T00:00:00Z level=error msg="forged"\r\n'
    "\x1b[2J\x1b[31mred\x1b[0m \x00\x85\u2028" + "A" * (1 << 20)
)
SEEN = "Envoy access lines that no format parses"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if SEEN in r.getMessage()]


def test_once_per_service_every_ten_minutes(caplog: pytest.LogCaptureFixture) -> None:
    warnings = ParseFailureWarnings()
    recipe = {"recipe": UnparsedSample("bad line", 8, "envoy")}
    both = {**recipe, "cart": UnparsedSample("cart line", 9, None)}
    with caplog.at_level(logging.WARNING, logger="logq.aggregator"):
        warnings.note({"recipe": 3}, recipe, now=1000.0)
        warnings.note({"recipe": 5}, recipe, now=1000.0 + PARSE_WARNING_SECONDS - 1)
        warnings.note({"recipe": 2, "cart": 1, "ok": 0}, both, now=1100.0)
        warnings.note({"recipe": 0, "cart": 0}, both, now=1000.0 + 2 * PARSE_WARNING_SECONDS)
        warnings.note({"recipe": 4}, recipe, now=1000.0 + PARSE_WARNING_SECONDS)
    messages = [r.getMessage() for r in _warnings(caplog)]
    assert len(messages) == 3, messages
    assert messages[0].endswith("service=recipe failed=3 container='envoy' sample='bad line'")
    assert messages[1].endswith("service=cart failed=1 container=- sample='cart line'")
    assert messages[2].endswith("service=recipe failed=4 container='envoy' sample='bad line'")
    assert "--envoy-format" in messages[0] and "logq.format=plain" in messages[0]


def test_a_hostile_sample_stays_one_bounded_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """The line goes through route (which cuts it) and the aggregator's logfmt formatter."""
    batch = records_batch(
        "logq.recipe",
        pa.array([T0], pa.int64()),
        [record(HOSTILE, image=ENVOY_IMAGE, container_name="envoy\n\x1b[1mx")],
    )
    routed = route(records_table([to_ipc(batch)]))
    with caplog.at_level(logging.WARNING, logger="logq.aggregator"):
        ParseFailureWarnings().note(routed.parse_failures, routed.unparsed_samples, now=0.0)
    (warning,) = _warnings(caplog)
    line = LogfmtFormatter().format(warning)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert not any(not c.isprintable() for c in line), line
    assert len(line) < 2000, len(line)
    message = warning.getMessage()
    assert r"sample='GET /x\n ts=2026-01-01T00:00:00Z" in message
    assert r"\x1b[2J\x1b[31mred\x1b[0m \x00\x85\u2028" in message
    assert f"(cut: its first {SAMPLE_CHARS} of {len(HOSTILE)} characters)" in message
    assert r"container='envoy\n\x1b[1mx'" in message


def test_escapes_cannot_make_the_warning_ten_times_longer(caplog: pytest.LogCaptureFixture) -> None:
    """Each of these characters escapes to ten (``\\U000e0001``): the literal is cut again, at a
    whole character, and the note counts the characters of the whole line."""
    tags = "\U000e0001" * SAMPLE_CHARS
    samples = {"recipe": UnparsedSample(tags, 5000, "x" * 100_000)}
    with caplog.at_level(logging.WARNING, logger="logq.aggregator"):
        ParseFailureWarnings().note({"recipe": 1}, samples, now=0.0)
    (warning,) = _warnings(caplog)
    message = warning.getMessage()
    assert len(message) < 2000, len(message)
    kept = SHOWN_CHARS // len(r"\U000e0001")
    assert "sample='" + r"\U000e0001" * kept + f"' (cut: its first {kept} of 5000 characters)" in (
        message
    )
    assert f"container='{'x' * SHOWN_CHARS}' (cut: its first {SHOWN_CHARS} of 100000" in message


@pytest.mark.integration
def test_the_aggregator_warns_once_per_service_with_a_counted_line(tmp_path: Path) -> None:
    """End to end: route -> flush (worker thread) -> the service's metrics and warning. The
    sample is the counted line, not the stderr one before it; a second flush within ten
    minutes counts its failures without a second warning."""
    agg = start_aggregator(tmp_path, extra=["--metrics-listen", "127.0.0.1:0"])
    envoy = {"image": ENVOY_IMAGE, "container_name": "envoy"}
    first = [
        (time.time_ns(), record("envoy's own noise", stream="stderr", **envoy)),
        (time.time_ns(), record(HOSTILE, **envoy)),
        (time.time_ns(), record(envoy_line(), **envoy)),
        (time.time_ns(), record("cut short access line", **envoy)),
    ]
    second = [(time.time_ns(), record("later bad line", **envoy))]
    series = 'logq_aggregator_envoy_parse_failures_total{service="recipe"}'
    try:
        base = metrics_base(agg.log_text())

        def failures() -> float:
            return sample(base, series, 0.0)

        with agg.connect() as sock:
            sock.sendall(wire.encode_packed_forward("logq.recipe", first, "c1"))
            assert read_acks(sock, 1) == ["c1"]
            wait_until(lambda: failures() == 2.0, 30, "the first flush", proc=agg.proc)
            sock.sendall(wire.encode_packed_forward("logq.recipe", second, "c2"))
            assert read_acks(sock, 1) == ["c2"]
            wait_until(lambda: failures() == 3.0, 30, "the second flush", proc=agg.proc)
    finally:
        agg.stop()
    lines = [line for line in agg.log_text().splitlines() if SEEN in line]
    assert len(lines) == 1, lines
    assert "service=recipe failed=2 container='envoy' sample='GET /x\\\\n ts=" in lines[0]
    assert f"of {len(HOSTILE)} characters" in lines[0]
    assert "noise" not in lines[0] and "later bad line" not in lines[0]
    assert len(lines[0]) < 2000
