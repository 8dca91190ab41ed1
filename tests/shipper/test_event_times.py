"""A runtime time an EventTime cannot carry never stops a container's logs.

An EventTime's seconds are unsigned 32-bit: a Docker or CRI line stamped before 1970 or from
2106-02-07T06:28:16Z cannot be sent with its own time (and a time of 0 is replaced by the
aggregator, as Fluentd does). Such a line is shipped like one whose time does not parse: with
the time it was read, its own time text kept in the record's ``time`` key, counted
(``logq_shipper_bad_time_lines_total``) and logged once per source. The lines around it go on.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from shipper import wire
from shipper.formats import CriParser, DockerParser
from shipper.rfc3339 import TimeParser
from tests.shipper.hostgen import T0, cri_line, make_container, ts
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root
from tests.support.procs import console_script

T0_NS = int(T0.timestamp()) * 10**9
#: Times an EventTime cannot carry (or the aggregator would replace), and one that is not a time.
BAD = [
    "1969-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59.5Z",
    "1970-01-01T00:00:00.5Z",  # seconds 0: Fluentd's in_forward would stamp it on receipt
    "2106-02-07T06:28:16Z",
    "2200-01-01T00:00:00.000000001Z",
    "9999-12-31T23:59:59.999999999Z",
    "2024-06-01T12:00:00+99:00",  # not RFC 3339 (as before: the read time)
]
#: The edges an EventTime carries: kept as written.
EDGES = {
    "1970-01-01T00:00:01Z": 10**9,
    "2106-02-07T06:28:15.999999999Z": (2**32 - 1) * 10**9 + 999_999_999,
}


def docker_at(text: str, t: str, nl: bool = True) -> bytes:
    doc = {"log": text + ("\n" if nl else ""), "stream": "stdout", "time": t}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def feed(parser, data: bytes):  # type: ignore[no-untyped-def]
    return parser.feed(data[:-1].split(b"\n"), 0)


def mixed(line) -> tuple[bytes, list[str]]:  # type: ignore[no-untyped-def]
    """Good lines with each bad time between two of them; the texts in file order."""
    data, texts = line("good 0", ts(0)), ["good 0"]
    for i, bad in enumerate(BAD, 1):
        data += line(f"bad {i}", bad) + line(f"good {i}", ts(i))
        texts += [f"bad {i}", f"good {i}"]
    return data, texts


def check(out, texts: list[str], before: int, after: int) -> None:  # type: ignore[no-untyped-def]
    assert out.logs == texts
    assert out.bad_times == len(BAD)
    times = dict(zip(out.logs, out.time_ns, strict=True))
    raw = dict(zip(out.logs, out.times, strict=True))
    for i, bad in enumerate(BAD, 1):
        assert before <= times[f"bad {i}"] <= after  # the read time
        assert raw[f"bad {i}"] == bad  # the runtime's own text is kept
    for i in range(len(BAD) + 1):
        assert times[f"good {i}"] == T0_NS + i * 1_000_000 + 123
    # The batch encodes (the old failure: struct.error from the EventTime head) and decodes.
    body = out.encode({wire.KEY_SERVICE: "svc"})
    msg = wire.decode_message(["logq.svc", bytes(body), {}])
    assert [e.record[wire.KEY_LOG] for e in msg.events] == texts
    assert [e.time_ns for e in msg.events] == out.time_ns


@pytest.mark.parametrize("split", [False, True], ids=["block path", "line path"])
def test_docker_lines_outside_the_event_time_range_ship_with_the_read_time(split: bool) -> None:
    data, texts = mixed(docker_at)
    if split:  # a split line sends the block down the general (line-by-line) path
        data = docker_at("split ", ts(50), nl=False) + docker_at("line", ts(51)) + data
        texts = ["split line", *texts]
    before = time.time_ns()
    out = feed(DockerParser(), data)
    after = time.time_ns()
    if split:
        assert out.time_ns[0] == T0_NS + 50_000_123
        out = out.select(list(range(1, len(out))))
        texts = texts[1:]
    check(out, texts, before, after)


def test_a_split_docker_line_whose_first_part_is_out_of_range_ships_with_the_read_time() -> None:
    data = docker_at("a", BAD[0], nl=False) + docker_at("b", ts(1))
    before = time.time_ns()
    out = feed(DockerParser(), data)
    assert out.logs == ["ab"] and out.times == [BAD[0]] and out.bad_times == 1
    assert before <= out.time_ns[0] <= time.time_ns()
    out.encode({})


def test_cri_lines_outside_the_event_time_range_ship_with_the_read_time() -> None:
    def line(text: str, t: str) -> bytes:
        return f"{t} stdout F {text}\n".encode()

    data, texts = mixed(line)
    before = time.time_ns()
    out = feed(CriParser(), data)
    check(out, texts, before, time.time_ns())
    assert feed(CriParser(), cri_line("fine", 3)).time_ns == [T0_NS + 3_000_123]


@pytest.mark.parametrize("text", sorted(EDGES))
def test_the_edges_of_the_event_time_range_are_kept(text: str) -> None:
    out = feed(DockerParser(), docker_at("edge", text) + docker_at("edge", text))
    assert out.time_ns == [EDGES[text]] * 2 and out.bad_times == 0
    out.encode({})


def test_time_parser_caches_only_times_an_event_time_carries() -> None:
    """The Docker paths read the seconds cache directly: an out-of-range second in it would
    reach the EventTime head."""
    tp = TimeParser()
    for bad in BAD:
        assert tp.to_ns(bad) is None
    for bad in BAD[:-1]:  # the last one's second is fine, its offset is not
        with pytest.raises(ValueError):
            tp.seconds(bad[:19])
    assert all(0 < s < 2**32 for s in tp._cache.values())
    assert tp.to_ns("2026-11-28T12:00:00Z") == T0_NS


def test_a_fraction_of_non_ascii_digits_is_a_bad_time_not_an_error() -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: the fast path must not take it."""
    tp = TimeParser()
    tp.to_ns("2026-11-28T12:00:00Z")  # the second cached: the fast path is taken
    assert tp.to_ns("2026-11-28T12:00:00.\u00b2Z") is None
    out = feed(DockerParser(), docker_at("odd", "2026-11-28T12:00:00.\u00b2Z"))
    assert out.bad_times == 1 and len(out.time_ns) == 1


@pytest.mark.integration
def test_shipper_once_ships_every_line_around_bad_times(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """The auditor's case: ``--once`` used to exit 1 ("internal error") and a follower retried
    the source for ever, shipping nothing of that container."""
    root = tmp_path / "docker"
    path = make_container(root, "a" * 64, "skew", lines=[])
    data, texts = mixed(docker_at)
    path.write_bytes(data)
    receiver = Receiver()
    try:
        before = time.time_ns()
        done = subprocess.run(
            [
                str(console_script("logq-shipper")),
                *("--aggregator", receiver.address, "--docker-root", str(root)),
                *("--cri-root", str(empty_root(tmp_path))),
                *("--state-dir", str(tmp_path / "state")),
                *("--retry-timeout", "30", "--once"),
            ],
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        after = time.time_ns()
        assert done.returncode == 0, done.stderr[-3000:]
        records = list(receiver.records)
    finally:
        receiver.close()
    assert [r[wire.KEY_LOG] for _, _, r in records] == texts
    for _, t_ns, r in records:
        if r[wire.KEY_LOG].startswith("bad"):
            assert before <= t_ns <= after
            assert r[wire.KEY_TIME] in BAD
    warnings = [line for line in done.stderr.splitlines() if "runtime time does not parse" in line]
    assert len(warnings) == 1, warnings  # once per source
    assert "service=skew" in warnings[0]
