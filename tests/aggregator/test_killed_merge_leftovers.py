"""What a killed compactor (or a network blip) left behind, cleaned up by the next pass
(M1s23): an incomplete multipart upload of a merge output on S3 (parts billed for ever), a
``.tmp`` file in ``_compaction/`` or ``_ddl/`` on a local warehouse, and merges moved to
pyarrow's stream (which cannot abort) by one boto3 request that got no answer."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

import aggregator.compaction.merge as merge_mod
import aggregator.compaction.partition as partition_mod
import aggregator.compaction.uploads as uploads_mod
import aggregator.storage as storage_mod
from aggregator.compaction import store_clock
from aggregator.compaction.passes import compact_warehouse
from athena.schema import partition_path
from athena.warehouse import Warehouse, open_warehouse, s3_client

DT = (datetime.now(UTC) - timedelta(hours=3)).strftime("%Y-%m-%d-%H")


def _dated(path: Path, age: timedelta) -> None:
    when = (datetime.now(UTC) - age).timestamp()
    os.utime(path, (when, when))


def test_a_pass_sweeps_killed_writes_tmp_files_in_its_state_and_ddl_folders(
    tmp_path: Path,
) -> None:
    """A ``kill -9`` in the milliseconds of a state or DDL write (tmp-then-rename) leaves
    ``.<name>.<8 hex>.tmp``: a pass deletes those dated before the stale-intent cutoff (15
    minutes by the store's clock) and leaves a fresh one (a write under way) and any file not
    named as such a temporary."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    state, ddl = Path(wh.path("_compaction")), Path(wh.path("_ddl"))
    state.mkdir(parents=True, exist_ok=True)
    ddl.mkdir(parents=True, exist_ok=True)
    killed = [state / ".last-pass.json.0123abcd.tmp", ddl / ".envoy_access.sql.89abcdef.tmp"]
    writing = ddl / ".container_logs.sql.fedcba98.tmp"
    other = ddl / "notes.tmp"
    for path in [*killed, writing, other]:
        path.write_bytes(b"{}")
    for path in [*killed, other]:
        _dated(path, timedelta(minutes=20))
    compact_warehouse(wh, lookback=None)
    assert not [p for p in killed if p.exists()], "a killed write's .tmp file was left"
    assert writing.exists(), "a write under way had its .tmp file deleted"
    assert other.exists()


def _start_upload(client: Any, bucket: str, key: str) -> str:
    """A multipart upload with one part, never completed (a merge killed mid-way)."""
    upload_id = str(client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 64)
    return upload_id


def _open_keys(client: Any, bucket: str) -> set[str]:
    answer = client.list_multipart_uploads(Bucket=bucket)
    return {str(u["Key"]) for u in answer.get("Uploads", [])}


def _output(wh: Warehouse) -> str:
    """The key (in its bucket) of a compaction output in a partition of ``wh``."""
    path = wh.path(partition_path("container_logs", "recipe", DT), f"c-{secrets.token_hex(10)}")
    return path.partition("/")[2] + ".parquet"


@pytest.mark.s3
@pytest.mark.integration
def test_a_pass_aborts_a_killed_merge_s_upload_and_nothing_else(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incomplete upload of a compaction output under the warehouse prefix is aborted by a
    pass once it was started before the stale-intent cutoff (15 minutes by the store's
    clock: a younger one may be another compactor's live merge, and stays), and counted.
    Uploads outside the prefix, or of keys that are not compaction outputs, are never
    touched."""
    wh = open_warehouse(s3_warehouse, create=True)
    assert wh.s3 is not None
    client = s3_client(wh.s3)
    bucket = wh.path().partition("/")[0]
    killed = _output(wh)
    outside = "elsewhere/" + killed.partition("/")[2]
    not_output = killed.rpartition("/")[0] + "/upload-of-someone-else.parquet"
    for key in (killed, outside, not_output):
        _start_upload(client, bucket, key)
    counted: list[int] = []
    compact_warehouse(wh, lookback=None, uploads_aborted=counted.append)
    assert _open_keys(client, bucket) == {killed, outside, not_output}, "a young upload aborted"
    assert counted == []
    # The same uploads 15 minutes later (the cutoff moved past their start instead).
    monkeypatch.setattr(partition_mod, "INTENT_STALE_AFTER", timedelta(minutes=-2))
    compact_warehouse(wh, lookback=None, uploads_aborted=counted.append)
    assert _open_keys(client, bucket) == {outside, not_output}
    assert counted == [1]


class _RefusingUploadListing:
    """The shared client, but ListMultipartUploads is refused (a policy without
    s3:ListBucketMultipartUploads)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_paginator(self, name: str) -> Any:
        if name != "list_multipart_uploads":
            return self._client.get_paginator(name)
        refusing = self

        class _Pages:
            def paginate(self, **_: Any) -> Any:
                refusing.refused += 1
                error = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}
                raise ClientError(error, "ListMultipartUploads")  # type: ignore[arg-type]

        return _Pages()


@pytest.mark.s3
@pytest.mark.integration
def test_a_refused_upload_listing_is_logged_once_and_does_not_fail_the_pass(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """AccessDenied on ListMultipartUploads: the passes complete; one WARNING (not one a pass)
    names the lifecycle rule and the permission to add."""
    wh = open_warehouse(s3_warehouse, create=True)
    assert wh.s3 is not None
    refusing = _RefusingUploadListing(s3_client(wh.s3))
    monkeypatch.setattr(uploads_mod, "s3_client", lambda _settings: refusing)
    monkeypatch.setattr(uploads_mod, "_REFUSED_SEEN", set())
    with caplog.at_level(logging.INFO, logger="logq.aggregator.compaction"):
        assert compact_warehouse(wh, lookback=None) == 0
        assert compact_warehouse(wh, lookback=None) == 0
    assert refusing.refused == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "AbortIncompleteMultipartUpload" in warnings[0]
    assert "s3:ListBucketMultipartUploads" in warnings[0]


@pytest.mark.s3
@pytest.mark.integration
def test_merges_go_back_to_the_multipart_upload_once_boto3_is_answered_again(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One boto3 request that got no answer (a network blip) moves merges to pyarrow's stream
    (which cannot abort); the next pass, once a boto3 request was answered again (the GET of
    its clock marker), moves them back before its first merge (not in the middle of a pass:
    a merge's memory reservation counts the writer it uses), and a later blip is a WARNING
    again (not DEBUG)."""
    monkeypatch.setattr(storage_mod, "_FELL_BACK", set())
    monkeypatch.setattr(storage_mod, "_UNANSWERED", set())
    monkeypatch.setattr(storage_mod, "_ANSWERED_AGAIN", set())
    wh = open_warehouse(s3_warehouse, create=True)
    blip = EndpointConnectionError(endpoint_url="https://s3.invalid")
    storage_mod._boto3_failed(wh, "reading x", blip)
    assert not merge_mod._multipart(wh)
    store_clock.measure(wh)  # an answered GET, as in the middle of a pass: no switch yet
    assert not merge_mod._multipart(wh)
    storage_mod._boto3_failed(wh, "reading y", blip)  # (a blip after it: that answer is old)
    storage_mod.retry_multipart(wh)
    assert not merge_mod._multipart(wh)
    compact_warehouse(wh, lookback=None)
    assert merge_mod._multipart(wh), "merges stayed on pyarrow's stream after boto3 answered"
    with caplog.at_level(logging.WARNING, logger=storage_mod.log.name):
        storage_mod._boto3_failed(wh, "reading z", blip)
    assert not merge_mod._multipart(wh)
    assert any("reading z" in r.getMessage() for r in caplog.records)


@pytest.mark.s3
@pytest.mark.integration
def test_the_periodic_pass_counts_the_uploads_it_aborts(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--compact-interval``: the uploads a pass aborted are counted in
    ``logq_aggregator_compaction_uploads_aborted_total``."""
    import asyncio

    from aggregator.compact_loop import PeriodicCompaction
    from aggregator.config import Settings
    from aggregator.ledger import Ledger
    from aggregator.metrics import Metrics

    wh = open_warehouse(s3_warehouse, create=True)
    assert wh.s3 is not None
    client = s3_client(wh.s3)
    bucket = wh.path().partition("/")[0]
    for key in (_output(wh), _output(wh)):
        _start_upload(client, bucket, key)
    monkeypatch.setattr(partition_mod, "INTENT_STALE_AFTER", timedelta(minutes=-2))
    metrics = Metrics()
    loop = PeriodicCompaction(
        wh, Settings(compact_interval=0.05), metrics, Ledger(wh, "node-a", compacts=True)
    )

    def aborted() -> float | None:
        return metrics.registry.get_sample_value("logq_aggregator_compaction_uploads_aborted_total")

    async def until_counted() -> None:
        task = asyncio.create_task(loop.forever())
        try:
            async with asyncio.timeout(30):
                while not aborted():
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()

    asyncio.run(until_counted())
    assert aborted() == 2
    assert _open_keys(client, bucket) == set()


def test_a_pass_sweeps_killed_writes_tmp_files_of_heartbeats_and_replay_marks(
    tmp_path: Path,
) -> None:
    """Heartbeats (``_ledger/_nodes/``) and replay marks (``_ledger/_replaying/``) are written
    tmp-then-rename on a local warehouse too, every flush pass: a ``kill -9`` in those
    milliseconds leaves a ``.tmp`` file that nothing else removes (a ledger hour's go with
    its hour). A pass deletes the old ones and leaves a fresh one (a write under way)."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    nodes, replaying = Path(wh.path("_ledger", "_nodes")), Path(wh.path("_ledger", "_replaying"))
    nodes.mkdir(parents=True)
    replaying.mkdir(parents=True)
    killed = [nodes / ".node-a.json.0123abcd.tmp", replaying / ".node-b.json.89abcdef.tmp"]
    writing = nodes / ".node-c.json.fedcba98.tmp"
    for path in [*killed, writing]:
        path.write_bytes(b"{}")
    for path in killed:
        _dated(path, timedelta(minutes=20))
    compact_warehouse(wh, lookback=None)
    assert not [p for p in killed if p.exists()], "a killed ledger write's .tmp file was left"
    assert writing.exists(), "a heartbeat under way had its .tmp file deleted"


class _StartedEarlier:
    """The shared client, but the incomplete uploads it lists were started 20 minutes earlier
    than the store says (S3 cannot date an upload in the past: a merge that has run for 20
    minutes, or one killed 20 minutes ago)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_paginator(self, name: str) -> Any:
        pages = self._client.get_paginator(name)
        if name != "list_multipart_uploads":
            return pages

        class _Pages:
            def paginate(self, **kwargs: Any) -> Any:
                for page in pages.paginate(**kwargs):
                    for upload in page.get("Uploads", []):
                        upload["Initiated"] -= timedelta(minutes=20)
                    yield page

        return _Pages()


@pytest.mark.s3
@pytest.mark.integration
def test_a_live_merge_slower_than_the_cutoff_keeps_its_upload(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of merge outputs started 20 minutes ago (past the stale-intent cutoff): the
    one whose intent ``_compact-<same id>.json`` is fresh is a live merge (another compactor's,
    rewriting its intent every minute) and keeps its upload; the one without an intent (its
    merge was killed) is aborted."""
    wh = open_warehouse(s3_warehouse, create=True)
    assert wh.s3 is not None
    client = s3_client(wh.s3)
    monkeypatch.setattr(uploads_mod, "s3_client", lambda _settings: _StartedEarlier(client))
    bucket = wh.path().partition("/")[0]
    live, killed = _output(wh), _output(wh)
    for key in (live, killed):
        _start_upload(client, bucket, key)
    folder, _, name = live.rpartition("/")
    intent = {"inputs": ["a.parquet", "b.parquet"], "output": name, "rows": 2}
    uid = name.removeprefix("c-").removesuffix(".parquet")
    storage_mod.put_bytes(
        wh, f"{bucket}/{folder}/_compact-{uid}.json", json.dumps(intent).encode("utf-8")
    )
    counted: list[int] = []
    compact_warehouse(wh, lookback=None, uploads_aborted=counted.append)
    assert _open_keys(client, bucket) == {live}, "a live merge's upload was aborted"
    assert counted == [1]


@pytest.mark.s3
@pytest.mark.integration
def test_passes_send_no_upload_listing_while_boto3_gets_no_answer(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Settings whose boto3 requests get no answer at all (a TLS setting only pyarrow's client
    has; here: boto3 pointed at a closed port) read and write through pyarrow: no pass sends
    the upload listing (it would fail the same way, each pass) or logs a WARNING about it;
    the one WARNING is storage's fallback notice, once."""
    import boto3
    from botocore.config import Config

    import athena.warehouse as warehouse_mod

    monkeypatch.setattr(storage_mod, "_FELL_BACK", set())
    monkeypatch.setattr(storage_mod, "_UNANSWERED", set())
    monkeypatch.setattr(storage_mod, "_ANSWERED_AGAIN", set())
    wh = open_warehouse(s3_warehouse, create=True)
    assert wh.s3 is not None
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unanswered = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1),
    )
    for timeout in (warehouse_mod.S3_READ_TIMEOUT, warehouse_mod.S3_SMALL_READ_TIMEOUT):
        monkeypatch.setitem(warehouse_mod._CLIENTS, (wh.s3, timeout), unanswered)
    listed: list[str] = []
    real_paginator = unanswered.get_paginator
    monkeypatch.setattr(
        unanswered, "get_paginator", lambda name: listed.append(name) or real_paginator(name)
    )
    with caplog.at_level(logging.INFO):
        assert compact_warehouse(wh, lookback=None) == 0
        assert compact_warehouse(wh, lookback=None) == 0
    assert listed == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "through boto3 failed" in warnings[0], warnings
