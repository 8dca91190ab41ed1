"""Every record carries its source's texts (service, container name and id, image, format,
host): container metadata no one bounds (``config.v2.json``, labels) made each record of a
container with a 2 MB image or label pass the 4 MiB every aggregator takes, and the shipper
resent the refused message forever (its file stuck). They are cut to
:data:`~shipper.wire.MAX_KEY_BYTES` with a visible marker, said once per source."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shipper import wire
from shipper.batch import body_room, encode_message, record_constants
from shipper.checkpoint import Registry
from shipper.config import MAX_LINE_BYTES, ConfigError, load_config
from shipper.discover import LABEL_FORMAT, LABEL_SERVICE, Discoverer
from shipper.formats import TRUNCATION_MARKER
from shipper.lines import Lines
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root
from tests.shipper.tailing import spec_for
from tests.shipper.test_once import run_shipper

pytestmark = pytest.mark.integration

CLEF = "\U0001d11e"  # 4 bytes of UTF-8
IMAGE = "registry.example.com/team/app:" + CLEF * 500_000  # 2 MB of UTF-8
SERVICE = "payments-" + "s" * 1_000_000
NAME = "app-" + "n" * 1_000_000
FORMAT = "envoy" + "f" * 10_000
WARNING = "container metadata too long for a record"


def _cut(value: str) -> str:
    """``value`` as it must arrive: its first MAX_KEY_BYTES of UTF-8 and the marker."""
    raw = value.encode()
    kept = raw[: wire.MAX_KEY_BYTES].decode("utf-8", "ignore")
    return kept + TRUNCATION_MARKER.format(dropped=len(raw) - wire.MAX_KEY_BYTES)


def test_absurd_container_metadata_is_cut_and_every_line_arrives(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A container whose ``config.v2.json`` holds a 2 MB image, a 1 MB name and a 1 MB
    ``logq.service`` label: before, each record took over 4 MiB and every message was over the
    cap (refused by any aggregator, resent forever). Now every message is within it, every line
    arrives once, the texts are cut with the marker and one WARNING names them."""
    root = tmp_path / "containers"
    labels = {LABEL_SERVICE: SERVICE, LABEL_FORMAT: FORMAT}
    texts = [f"line {i}" for i in range(200)]
    make_container(root, "e" * 64, NAME, labels, image=IMAGE, lines=texts)
    res = run_shipper(
        *("--aggregator", receiver.address, "--docker-root", str(root)),
        *("--cri-root", str(empty_root(tmp_path)), "--state-dir", str(tmp_path / "state")),
        "--once",
    )
    assert res.returncode == 0, res.stderr
    assert receiver.sizes and max(receiver.sizes) <= wire.MAX_MESSAGE_BYTES, receiver.sizes
    assert receiver.lines() == texts
    assert receiver.duplicates == 0
    want = {
        wire.KEY_SERVICE: _cut(SERVICE),
        wire.KEY_CONTAINER_NAME: _cut(NAME),
        wire.KEY_IMAGE: _cut(IMAGE),
        wire.KEY_FORMAT: _cut(FORMAT),
        wire.KEY_CONTAINER_ID: "e" * 64,
    }
    for tag, _, record in receiver.records:
        assert {k: record[k] for k in want} == want
        assert tag == "logq." + want[wire.KEY_SERVICE]
    warnings = [line for line in res.stderr.splitlines() if WARNING in line]
    assert len(warnings) == 1, res.stderr
    for field, value in (("service", SERVICE), ("container_name", NAME), ("image", IMAGE)):
        assert f"{field}={len(value.encode())}" in warnings[0]


def test_a_cut_service_is_the_same_name_at_every_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cut depends on the text alone: a new ``config.v2.json`` version (Docker rewrites it
    at every start and stop) and a new shipper keep the partition and the tag; the source is
    warned about once. Texts within the bound are kept whole."""
    caplog.set_level(logging.WARNING, logger="logq.shipper.discover")
    path = make_container(tmp_path, "f" * 64, "short", {LABEL_SERVICE: SERVICE}, lines=["x"])
    discoverer = Discoverer(tmp_path, tmp_path / "no-pods", ())
    (first,) = discoverer.scan().specs
    config = path.parent / "config.v2.json"
    config.write_text(config.read_text() + " ")
    (again,) = discoverer.scan().specs
    (fresh,) = Discoverer(tmp_path, tmp_path / "no-pods", ()).scan().specs
    assert first.service == again.service == fresh.service == _cut(SERVICE)
    assert len(first.service.encode()) < wire.MAX_KEY_BYTES + 64
    assert (first.container_name, first.image) == ("short", "app:1")
    assert len([r for r in caplog.records if WARNING in r.getMessage()]) == 1


def test_a_hostname_past_the_bound_is_refused() -> None:
    assert load_config(["--hostname", "h" * wire.MAX_KEY_BYTES]).hostname == "h" * 4096
    with pytest.raises(ConfigError, match=r"^--hostname must be at most 4096 bytes: .* 4097 "):
        load_config(["--hostname", "h" * (wire.MAX_KEY_BYTES + 1)])


def test_the_open_lines_flushed_together_fit_in_a_message(tmp_path: Path) -> None:
    """Open lines flushed in one chunk (:meth:`shipper.tailer.Tailer.read`, never cut) are
    one per stream: a Docker or CRI runtime writes ``stdout`` and ``stderr`` only, so two.
    Each is at most ``--max-line-bytes`` characters (4 bytes each) and a marker, its time and
    stream at most one read block of bytes (one physical line), its keys at most
    :data:`~shipper.wire.MAX_KEY_BYTES` each: two at the worst, encoded, fit in a message with
    the longest tag and gzip's slack (about 3.99 of 4.19 MB)."""
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("x"))
    registry = Registry(tmp_path / "state")
    block = Tailer(spec_for(path), registry, "h", MAX_LINE_BYTES).block_size
    registry.close()
    marker = TRUNCATION_MARKER.format(dropped=10**12)
    key = CLEF * (wire.MAX_KEY_BYTES // 4) + marker
    shared = record_constants(key, key, key, "h" * wire.MAX_KEY_BYTES, key, "x" * 64, key)
    lines = Lines()
    for stream in ("stdout", "stderr"):
        time = "2026" + CLEF * ((block - len(stream)) // 4 - 1)
        assert len((time + stream).encode()) <= block
        lines.add(2**40, time, 10**18, stream, CLEF * MAX_LINE_BYTES + marker)
    body = bytes(lines.encode(shared))
    message = encode_message("logq." + key, body, 2, wire.new_chunk_id(), compress=False)
    assert len(body) <= body_room("logq." + key, compress=True)
    assert len(message) <= wire.MAX_MESSAGE_BYTES - (wire.MAX_MESSAGE_BYTES >> 10)
