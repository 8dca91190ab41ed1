"""A copy of a running node's ``--buffer-dir`` is refused at start-up (aggregator/twins.py).

Two processes under one node id write the same object keys and overwrite each other's
acknowledged rows. A copy (a cloned volume, a restored snapshot, ``cp -a``) is told from the
previous run of the same node by the heartbeat ``_ledger/_nodes/<node-id>.json``: it names the
process that wrote it, and a live process keeps rewriting it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from aggregator import twins
from aggregator.buffer import Buffer
from aggregator.config import Settings
from aggregator.ledger import LEDGER_DIR, NODES_DIR, REPLAYING_DIR, Ledger
from aggregator.service import Aggregator
from aggregator.state_files import NODE_ID_NAME
from aggregator.twins import ProcessToken, this_process
from athena.warehouse import open_warehouse
from shipper import wire
from tests.aggregator.helpers import read_acks, read_table, record, start_aggregator
from tests.support.procs import console_script, wait_until

pytestmark = pytest.mark.integration


def _send(agg, chunk: str, lines: list[str]) -> None:
    entries = [(time.time_ns(), record(line, service="twin")) for line in lines]
    with agg.connect() as sock:
        sock.sendall(wire.encode_packed_forward("logq.twin", entries, chunk=chunk))
        assert read_acks(sock, 1) == [chunk]


def _beat(warehouse: str, node: str) -> dict | None:
    wh = open_warehouse(warehouse)
    try:
        with wh.fs.open_input_stream(wh.path(LEDGER_DIR, NODES_DIR, f"{node}.json")) as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def _messages(warehouse: str) -> list[str]:
    table = read_table(warehouse, "container_logs")
    return sorted(table["message"].to_pylist()) if table.num_rows else []


def test_a_copy_of_a_running_nodes_buffer_dir_is_refused(
    tmp_path: Path, s3_warehouse: str, s3_env: dict[str, str], subprocess_env: dict[str, str]
) -> None:
    """``cp -a`` of a live aggregator's buffer dir, started beside it on the same S3
    warehouse: exit 2 with what happened and what to do, before it writes anything under the
    node id (the original's heartbeat and rows are untouched, and it goes on)."""
    env = {**subprocess_env, **s3_env}
    original = start_aggregator(tmp_path, warehouse=s3_warehouse, env=env, name="orig")
    clone_dir = tmp_path / "clone-buffer"
    try:
        node = (original.buffer_dir / NODE_ID_NAME).read_text().strip()
        _send(original, "a1", ["a 1", "a 2"])
        wait_until(lambda: _beat(s3_warehouse, node) is not None, 30, "the original's heartbeat")
        shutil.copytree(original.buffer_dir, clone_dir, symlinks=True)
        clone = subprocess.run(
            [
                str(console_script("logq-aggregator")),
                "--listen=127.0.0.1:0",
                f"--warehouse={s3_warehouse}",
                f"--buffer-dir={clone_dir}",
                "--flush-interval=0.5",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert clone.returncode == 2, clone.stderr[-3000:]
        assert "listening on" not in clone.stderr
        assert f"node id {node} (--buffer-dir {clone_dir}) is in use by another running" in (
            clone.stderr
        )
        assert f"pid {original.proc.pid}" in clone.stderr
        assert "Start this instance with an empty --buffer-dir" in clone.stderr
        beat = _beat(s3_warehouse, node)
        assert beat is not None and beat["process"]["pid"] == original.proc.pid
        wh = open_warehouse(s3_warehouse)
        mark = wh.path(LEDGER_DIR, REPLAYING_DIR, f"{node}.json")
        assert wh.fs.get_file_info(mark).type.name == "NotFound", "no replay mark of the clone"
        drain = subprocess.run(
            [
                str(console_script("logq-aggregator")),
                "drain",
                f"--warehouse={s3_warehouse}",
                f"--buffer-dir={clone_dir}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert drain.returncode == 2, drain.stderr[-3000:]
        assert f"node id {node} (--buffer-dir {clone_dir}) is in use" in drain.stderr
        assert "Do not drain it" in drain.stderr
        _send(original, "a2", ["a 3"])
    finally:
        assert original.stop() == 0
    assert _messages(s3_warehouse) == ["a 1", "a 2", "a 3"]
    assert _beat(s3_warehouse, node) is None, "the original's clean stop removes its heartbeat"


def test_a_restart_after_kill_9_on_the_same_host_starts_at_once(tmp_path: Path) -> None:
    """The previous run's fresh heartbeat names a process of this host that is gone: no wait
    for a rewrite, no refusal, and the replay writes what it had acknowledged."""
    first = start_aggregator(tmp_path, extra=["--flush-interval", "3600"])
    node = (first.buffer_dir / NODE_ID_NAME).read_text().strip()
    wait_until(lambda: _beat(first.warehouse, node) is not None, 30, "the first heartbeat")
    _send(first, "k1", ["before the kill"])
    first.kill9()
    again = start_aggregator(tmp_path)
    try:
        log = again.log_text()
        assert f"heartbeat of node {node} is the previous run's on this host" in log
        assert "waiting up to" not in log
        wait_until(lambda: _messages(again.warehouse) == ["before the kill"], 30, "the replay")
    finally:
        assert again.stop() == 0
    assert _beat(again.warehouse, node) is None


def test_a_fresh_heartbeat_from_another_host_delays_the_start_only_until_it_should_have_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod rescheduled to another host with its volume, after a crash a moment ago: the
    heartbeat names a process elsewhere, which cannot be checked. It is watched for two of its
    flush intervals plus the slack after it was written; not rewritten, the start goes on."""
    monkeypatch.setattr(twins, "NEXT_BEAT_SLACK_S", 1.0)
    buffer_dir, warehouse = tmp_path / "buf", str(tmp_path / "wh")
    buf = Buffer(buffer_dir, 1 << 20, 1 << 30)
    buf.open()
    buf.unlock()
    elsewhere = ProcessToken("aggregator-0", "another-boot", 1, 1234, time.time() - 60)
    ledger = Ledger(open_warehouse(warehouse, create=True), buf.node_id)
    ledger.process = elsewhere
    ledger.heartbeat(time.time(), 0.5)  # written just now, by the crashed run elsewhere

    async def scenario() -> int:
        agg = Aggregator(
            Settings(listen="127.0.0.1:0", warehouse=warehouse, buffer_dir=str(buffer_dir))
        )
        running = asyncio.ensure_future(agg.run())
        while agg.metrics.starting is not None and not running.done():
            await asyncio.sleep(0.02)
        assert agg.port, "it started listening"
        agg.stop()
        return await running

    with caplog.at_level(logging.INFO, logger="logq.aggregator.twins"):
        assert asyncio.run(asyncio.wait_for(scenario(), 60)) == 0
    text = caplog.text
    assert "by another process (host aggregator-0, pid 1" in text and "waiting up to" in text
    assert "was not rewritten: its writer is gone; starting" in text


def test_a_clean_stop_removes_only_a_heartbeat_it_may_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``forget`` (a clean stop, a drain) removes this process's heartbeat and one written
    before it started (its previous run's, a dead node's), never one another process wrote
    since: that is a twin still running under the node id."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    me = Ledger(wh, "n1")
    twin = Ledger(wh, "n1")
    twin.process = dataclasses.replace(this_process(), host="elsewhere", pid=1)
    twin.heartbeat(time.time(), 10.0)  # written after this process started
    with caplog.at_level(logging.WARNING, logger="logq.aggregator.ledger"):
        me.forget()
    assert me.own_heartbeat() is not None and me.own_heartbeat().process == twin.process
    assert "not removing the heartbeat of node n1: another process (host elsewhere" in caplog.text

    previous = Ledger(wh, "n1")
    previous.process = dataclasses.replace(twin.process, started=0.0)
    previous.heartbeat(0.0, 10.0)
    doc = json.loads(Path(previous._beat_path).read_text())
    doc["updated"] = me.process.started - 5  # the previous run's, before this one started
    Path(previous._beat_path).write_text(json.dumps(doc))
    me.forget()
    assert me.own_heartbeat() is None

    # The previous run's, found at start-up and judged gone, from a host whose clock is ahead.
    previous.heartbeat(time.time() + 30, 10.0)
    me.inherited = me.own_heartbeat()
    assert me.inherited is not None and me.inherited.updated >= me.process.started
    me.forget()
    assert me.own_heartbeat() is None

    me.heartbeat(time.time(), 10.0)
    me.forget()
    assert me.own_heartbeat() is None


def test_a_process_is_gone_only_when_this_host_can_tell() -> None:
    here = this_process()
    assert not here.gone_from_this_host()
    ended = subprocess.Popen(["true"])
    wait_until(lambda: twins._start_ticks(ended.pid) is None, 10, "the child's exit")
    assert dataclasses.replace(here, pid=ended.pid).gone_from_this_host(), "a zombie is gone"
    ended.wait()
    assert dataclasses.replace(here, pid=ended.pid).gone_from_this_host()
    assert dataclasses.replace(here, ticks=here.ticks + 1).gone_from_this_host(), "pid reused"
    assert not dataclasses.replace(here, pid=ended.pid, boot="another").gone_from_this_host()
    assert not dataclasses.replace(here, pid=ended.pid, host="other").gone_from_this_host()


def test_own_heartbeat_on_s3(s3_warehouse: str) -> None:
    """A missing heartbeat reads as None on S3 too (not as an error that skips the check)."""
    ledger = Ledger(open_warehouse(s3_warehouse, create=True), "n-s3")
    assert ledger.own_heartbeat() is None
    ledger.heartbeat(time.time(), 10.0)
    beat = ledger.own_heartbeat()
    assert beat is not None and beat.process == this_process()
