"""What compaction costs in S3 requests, counted by the real server (SeaweedFS's request
metrics): a small input is fetched in one GET; a merge's inputs are deleted in batches
(DeleteObjects, 1,000 keys a request), its other deletes one request each, and a key the server
refuses keeps the merge's guarantees (no row lost, the intent kept, the next pass finishing it);
a service's window is listed in one request, not one per hour."""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import aggregator.compaction.inputs as inputs_mod
import aggregator.storage as storage
import athena.warehouse as warehouse_mod
from aggregator.compaction.partition import compact_partition
from aggregator.compaction.passes import CompactionFailed, compact_warehouse
from aggregator.storage import DELETE_BATCH, StorageError, delete_objects, put_bytes, put_table
from athena.intents import INTENT_PREFIX
from athena.schema import CONTAINER_LOGS, DT_FORMAT, partition_path
from athena.warehouse import S3Settings, Warehouse, open_warehouse, s3_client, s3_filesystem
from tests.aggregator.test_compaction import (
    DT,
    HOUR,
    LATER,
    NEXT_DT,
    flush_files,
    patch_merge,
    service_rows,
)
from tests.support.procs import wait_until
from tests.support.seaweedfs import SeaweedFS


def bucket_of(wh: Warehouse) -> str:
    return wh.base.split("/", 1)[0]


def requests_after(
    server: SeaweedFS, wh: Warehouse, before: Counter[str], kind: str | None, expected: int
) -> int:
    """Requests (of ``kind``, None: of any kind) the server counted for the warehouse's bucket
    since ``before``, once at least ``expected`` have arrived (it counts each just after
    answering it)."""

    def since() -> int:
        now = server.requests(bucket_of(wh))
        return sum((now - before).values()) if kind is None else now[kind] - before[kind]

    wait_until(lambda: since() >= expected, 30, f"{expected} {kind or 'S3'} requests counted")
    return since()


def settled(server: SeaweedFS, wh: Warehouse) -> Counter[str]:
    """The server's counts for the warehouse's bucket once every request sent so far is
    counted: it counts each just after answering it, so a count taken right after a set-up
    may miss the set-up's last request. A DeleteObject of a key that is not there is sent,
    then waited for (the requests before it were answered before it was sent); the set-up
    must have no DELETE of its own left uncounted."""
    assert wh.s3 is not None
    bucket = bucket_of(wh)
    deletes = server.requests(bucket)["DELETE"]
    s3_client(wh.s3).delete_object(Bucket=bucket, Key="logq-tests/not-there")
    wait_until(lambda: server.requests(bucket)["DELETE"] > deletes, 30, "the marker DELETE counted")
    return server.requests(bucket)


#: Seconds the clients of a :func:`counted_warehouse` wait for an answer before sending the
#: request again: pyarrow's SDK waits 3 s, the small-document boto3 client 4 s.
PATIENCE = 120.0


def counted_warehouse(uri: str, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """The S3 warehouse at ``uri`` for a test that counts its requests: both its clients wait
    for a slow answer rather than send the request again, so each request the code sends is
    counted once. Under load SeaweedFS took over 3 s to answer a LIST once: pyarrow's client
    sent it again, the server answered both, and a pass's 127 LISTs were counted as 128."""
    wh = open_warehouse(uri)
    assert wh.s3 is not None
    patient = _patient_client(wh.s3)
    for timeout in (warehouse_mod.S3_READ_TIMEOUT, warehouse_mod.S3_SMALL_READ_TIMEOUT):
        monkeypatch.setitem(warehouse_mod._CLIENTS, (wh.s3, timeout), patient)
    return replace(wh, fs=s3_filesystem(wh.s3, request_timeout=PATIENCE))


@functools.cache
def _patient_client(settings: S3Settings) -> Any:
    """One patient boto3 client per settings for the whole module, in both roles (the same
    settings): each new one is a boto3 session loading the S3 service model anew, about half a
    CPU-second; two per test were most of this module's own CPU."""
    return warehouse_mod._new_s3_client(settings, PATIENCE)


def one_row(message: str) -> pa.Table:
    """A merged file's content, one row of ``container_logs`` (less its partition columns)."""
    return pa.Table.from_pylist(
        [
            {
                "timestamp": HOUR,
                "host": "h",
                "container_id": "c",
                "container_name": "old",
                "stream": "stdout",
                "message": message,
            }
        ],
        schema=CONTAINER_LOGS.arrow_schema(),
    )


def put_history(
    wh: Warehouse, service: str, hours_ago: Iterable[int], message: Callable[[int], str]
) -> None:
    """One compacted file (``c-x.parquet``, one row: ``message(ago)``) in each of ``service``'s
    hours ``ago`` hours before ``HOUR``, uploaded eight at a time: a hundred one-by-one round
    trips to SeaweedFS were a third of these tests' time. The objects are independent and
    every upload is done on return, before any request count is taken."""

    def put(ago: int) -> None:
        dt = (HOUR - timedelta(hours=ago)).strftime(DT_FORMAT)
        path = wh.path(partition_path("container_logs", service, dt), "c-x.parquet")
        put_table(wh, path, one_row(message(ago)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, hours_ago))


@contextmanager
def stalled(server: SeaweedFS, seconds: float) -> Iterator[None]:
    """``server`` stopped (SIGSTOP), as a loaded machine can hold it back, until ``seconds``
    have passed (resumed earlier if the block fails first)."""
    resume = threading.Timer(seconds, os.killpg, (server.proc.pid, signal.SIGCONT))
    os.killpg(server.proc.pid, signal.SIGSTOP)
    resume.start()
    try:
        yield
    finally:
        resume.cancel()
        os.killpg(server.proc.pid, signal.SIGCONT)


@pytest.mark.s3
@pytest.mark.integration
def test_a_counted_warehouse_sends_a_slow_request_once(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts below are exact even on a loaded machine: a LIST the server answers only
    after pyarrow's 3 s (SeaweedFS stopped for 5 s) is sent, and counted, once."""
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    put_bytes(wh, f"{wh.base}/t/f.parquet", b"x")
    before = settled(seaweedfs, wh)
    with stalled(seaweedfs, 5.0):
        assert [i.base_name for i in storage.list_folder(wh, f"{wh.base}/t")] == ["f.parquet"]
    assert settled(seaweedfs, wh)["LIST"] - before["LIST"] == 1


def entries(wh: Warehouse, folder: str) -> list[str]:
    infos = wh.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


@pytest.mark.s3
@pytest.mark.integration
def test_deleting_n_objects_costs_one_request_per_1000(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,001 keys (a few written, the rest never were: S3 deletes a missing key as a success)
    cost 3 requests in all, not 2,001 deletes (each was a HEAD, then a DELETE if found, through
    pyarrow); the written ones are gone."""
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    written = [f"{wh.base}/t/f-{i}.parquet" for i in range(5)]
    for path in written:
        put_bytes(wh, path, b"x")
    paths = written + [f"{wh.base}/t/never-{i}.parquet" for i in range(1996)]
    before = settled(seaweedfs, wh)
    delete_objects(wh, paths)
    assert requests_after(seaweedfs, wh, before, "DELETE", 3) == 3
    # Nothing else either (no HEAD, GET or folder-marker PUT): PUTs are left out, as the count
    # of a write above may land after ``before`` was taken (the server counts after answering).
    since = seaweedfs.requests(bucket_of(wh)) - before
    assert {kind: n for kind, n in since.items() if kind != "PUT"} == {"DELETE": 3}
    assert math.ceil(len(paths) / DELETE_BATCH) == 3
    assert entries(wh, f"{wh.base}/t") == []


@pytest.mark.s3
@pytest.mark.integration
def test_a_merge_deletes_its_inputs_in_one_request(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass over two partitions of 12 flush files each: per partition one DeleteObjects for
    the inputs and one DELETE for the intent (was 12 + 1), and every row exactly once."""
    flush_files(s3_warehouse, files=12, rows_per_file=10, service="svc")
    rows = service_rows(s3_warehouse)
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    before = settled(seaweedfs, wh)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 2 * 12
    assert requests_after(seaweedfs, wh, before, "DELETE", 4) == 2 * (1 + 1)
    assert service_rows(s3_warehouse) == rows
    for dt in (DT, NEXT_DT):
        names = entries(wh, wh.path(partition_path("container_logs", "svc", dt)))
        assert len(names) == 1 and names[0].startswith("c-"), names


#: Requests of the GET kind (SeaweedFS counts a HEAD as a GET) a merge sends besides reading
#: its inputs: its output's footer read back for the row count (a HEAD and a GET: pyarrow opens
#: it by name) and the check that its intent is still there (a HEAD).
MERGE_CHECK_GETS = 3
#: A pass writes its store-clock marker and reads it back, once (compaction/store_clock.py).
PASS_CLOCK_PUTS = PASS_CLOCK_GETS = 1
#: A pass lists the incomplete multipart uploads under the warehouse prefix, once
#: (compaction/uploads.py: those of merges killed mid-way are aborted); a GET to SeaweedFS.
PASS_UPLOADS_GETS = 1


@pytest.mark.s3
@pytest.mark.integration
def test_a_merge_fetches_each_small_input_in_one_get(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two partitions of 12 flush files: each input is fetched whole, with its footer, in one
    GET (pyarrow sent a HEAD before each GET: 2 per input, 56 GET-kind requests here in all,
    the intent's delete adding a HEAD per merge), and every row is there exactly once."""
    flush_files(s3_warehouse, files=12, rows_per_file=10, service="svc")
    rows = service_rows(s3_warehouse)
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    before = settled(seaweedfs, wh)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 2 * 12
    expected = 2 * 12 + 2 * MERGE_CHECK_GETS + PASS_CLOCK_GETS + PASS_UPLOADS_GETS
    assert requests_after(seaweedfs, wh, before, "GET", expected) == expected
    assert service_rows(s3_warehouse) == rows


@pytest.mark.s3
@pytest.mark.integration
def test_a_small_input_not_kept_is_fetched_whole_in_one_get_when_merged(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no room to keep inputs between their footer reads and the merge (as for the inputs
    past a partition's first 64 MiB), a small input's footer is read first (pyarrow: a HEAD and
    a GET) and its rows with one more GET, the whole file (was a HEAD and a GET again)."""
    monkeypatch.setattr(inputs_mod, "PREFETCH_BYTES", 0)
    flush_files(s3_warehouse, files=12, rows_per_file=10, service="svc")
    rows = service_rows(s3_warehouse)
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    before = settled(seaweedfs, wh)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 2 * 12
    expected = 2 * 12 * (2 + 1) + 2 * MERGE_CHECK_GETS + PASS_CLOCK_GETS + PASS_UPLOADS_GETS
    assert requests_after(seaweedfs, wh, before, "GET", expected) == expected
    assert service_rows(s3_warehouse) == rows


@pytest.mark.s3
@pytest.mark.integration
def test_a_merge_deletes_its_intent_without_recreating_a_folder_marker(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge's PUTs are the objects it writes, one each (pyarrow uploads a small object in
    one part): its intent and its output, and the pass its record and its store-clock marker;
    deleting the intent sends
    one DELETE and no PUT (pyarrow's delete re-created the folder marker: 7 PUTs here)."""
    flush_files(s3_warehouse, files=3, rows_per_file=10, service="svc")
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    before = settled(seaweedfs, wh)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 2 * 3
    assert requests_after(seaweedfs, wh, before, "DELETE", 4) == 2 * (1 + 1)
    assert requests_after(seaweedfs, wh, before, "PUT", 6) == 2 * (1 + 1) + 1 + PASS_CLOCK_PUTS


@pytest.mark.s3
@pytest.mark.integration
def test_a_rolled_back_merge_costs_one_delete_per_object(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge that fails before its output is written deletes the output's key and its
    intent: one DELETE each (one already gone costs no more), no PUT but the intent's (was a
    HEAD for each, a DELETE for the intent and a folder marker PUT after it); its inputs stay,
    no intent is left."""

    def fail(output: str, merge: Any) -> int:
        raise StorageError(f"writing {output} failed: injected")

    patch_merge(monkeypatch, fail)
    flush_files(s3_warehouse, files=3, rows_per_file=10, service="svc")
    rows = service_rows(s3_warehouse)
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    before = settled(seaweedfs, wh)
    with pytest.raises(CompactionFailed):
        compact_warehouse(wh, now=LATER, lookback=None)
    # The two intents (and the pass's store-clock marker).
    assert requests_after(seaweedfs, wh, before, "PUT", 3) == 2 + PASS_CLOCK_PUTS
    assert requests_after(seaweedfs, wh, before, "DELETE", 4) == 2 * 2
    assert service_rows(s3_warehouse) == rows
    for dt in (DT, NEXT_DT):
        names = entries(wh, wh.path(partition_path("container_logs", "svc", dt)))
        assert len(names) == 3 and all(n.endswith(".parquet") for n in names), names


@pytest.mark.s3
@pytest.mark.integration
def test_unreadable_and_vanished_inputs_on_s3_are_left_with_an_error(
    s3_warehouse: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As on a local disk: a stray ``.parquet`` that is not Parquet, an empty one, and an input
    deleted between the listing and its read are each named in an ERROR and left out; the
    other inputs are merged, their rows exactly once."""
    flush_files(s3_warehouse, files=4, rows_per_file=10, service="svc")
    wh = open_warehouse(s3_warehouse)
    folder = wh.path(partition_path("container_logs", "svc", DT))
    vanished = f"{folder}/{entries(wh, folder)[0]}"
    messages = pq.read_table(vanished, filesystem=wh.fs)["message"].to_pylist()
    gone = Counter(("svc", m) for m in messages)
    assert len(gone) == 10
    rows = service_rows(s3_warehouse) - gone
    put_bytes(wh, f"{folder}/junk.parquet", b"junk\n")
    put_bytes(wh, f"{folder}/empty.parquet", b"")
    listing = wh.fs.get_file_info(pafs.FileSelector(folder))
    wh.fs.delete_file(vanished)
    assert compact_partition(wh, CONTAINER_LOGS, folder, 128 << 20, infos=listing) == 3
    names = entries(wh, folder)
    assert sorted(n for n in names if not n.startswith("c-")) == ["empty.parquet", "junk.parquet"]
    for name in ("junk.parquet", "empty.parquet", vanished.rsplit("/", 1)[1]):
        assert f"{name}: it is not a readable Parquet file" in caplog.text
    delete_objects(wh, [f"{folder}/junk.parquet", f"{folder}/empty.parquet"])
    assert service_rows(s3_warehouse) == rows


class Unreachable:
    """boto3's client where its GETs and single DELETEs cannot reach the store (a TLS setting
    only pyarrow's client has, a network error); its other requests are the real ones."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def _fail(self, **_: Any) -> dict:
        from botocore.exceptions import EndpointConnectionError

        self.calls += 1
        raise EndpointConnectionError(endpoint_url="https://s3.unreachable.invalid")

    get_object = delete_object = _fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.s3
@pytest.mark.integration
def test_gets_and_deletes_boto3_cannot_send_are_left_to_pyarrow(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """boto3's GetObject and DeleteObject failing: pyarrow reads the inputs and deletes the
    intents, as before; both partitions are merged, every row once; one WARNING says so."""
    monkeypatch.setattr(storage, "_FELL_BACK", set())
    flush_files(s3_warehouse, files=3, rows_per_file=10, service="svc")
    rows = service_rows(s3_warehouse)
    wh = open_warehouse(s3_warehouse)
    assert wh.s3 is not None
    client = Unreachable(s3_client(wh.s3))
    monkeypatch.setattr(storage, "s3_client", lambda settings: client)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 2 * 3
    assert client.calls == 2 * (3 + 1)  # per partition its three inputs and its intent
    assert service_rows(s3_warehouse) == rows
    for dt in (DT, NEXT_DT):
        left = entries(wh, wh.path(partition_path("container_logs", "svc", dt)))
        assert len(left) == 1 and left[0].startswith("c-"), left
    warned = [r for r in caplog.records if "through boto3 failed" in r.getMessage()]
    assert [r.levelname for r in warned if r.levelname == "WARNING"] == ["WARNING"]
    assert "pyarrow sends it" in warned[0].getMessage()


class Refusing:
    """The warehouse's S3 client, in front of which the server refuses to delete the object
    at ``path``: it is left out of the request and reported in the answer's ``Errors``, as S3
    reports a key a policy denies (the request itself succeeds)."""

    def __init__(self, real: Any, path: str) -> None:
        self.real = real
        self.key = path.split("/", 1)[1]  # bucket/key
        self.refused: list[str] = []

    def __getattr__(self, name: str) -> Any:  # its other requests (GET, DELETE) are the real ones
        return getattr(self.real, name)

    def delete_objects(self, Bucket: str, Delete: dict) -> dict:
        keep = [o for o in Delete["Objects"] if o["Key"] != self.key]
        refused = [o["Key"] for o in Delete["Objects"] if o["Key"] == self.key]
        self.refused += refused
        answer = self.real.delete_objects(Bucket=Bucket, Delete={**Delete, "Objects": keep})
        errors = [{"Key": k, "Code": "AccessDenied", "Message": "Access Denied"} for k in refused]
        return {**answer, "Errors": [*answer.get("Errors", []), *errors]}


@pytest.mark.s3
@pytest.mark.integration
def test_a_key_the_server_refuses_keeps_the_intent_and_the_next_pass_finishes_the_merge(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One input of a merge refused by DeleteObjects (the others deleted): the pass names the
    partition as failed, the other partition is merged, no row is missing (the refused file's
    rows show twice, the documented window), the intent stays; the next pass finishes the
    merge: every row exactly once, one file, no intent."""
    flush_files(s3_warehouse, files=6, rows_per_file=10, service="svc")
    rows = service_rows(s3_warehouse)
    wh = open_warehouse(s3_warehouse)
    hour = wh.path(partition_path("container_logs", "svc", DT))
    inputs = entries(wh, hour)
    assert wh.s3 is not None
    client = Refusing(s3_client(wh.s3), f"{hour}/{inputs[2]}")
    with monkeypatch.context() as patch, pytest.raises(CompactionFailed) as failed:
        patch.setattr(storage, "s3_client", lambda settings: client)
        compact_warehouse(wh, now=LATER, lookback=None)
    assert failed.value.failed == [hour] and failed.value.merged == 6  # the next hour's six
    assert client.refused == [f"{hour.split('/', 1)[1]}/{inputs[2]}"]
    left = entries(wh, hour)
    assert [n for n in left if n in inputs] == [inputs[2]]  # the others were deleted
    assert len([n for n in left if n.startswith(INTENT_PREFIX)]) == 1
    assert len([n for n in left if n.startswith("c-")]) == 1
    twice = service_rows(s3_warehouse)
    assert set(twice) == set(rows) and +(twice - rows) == Counter(
        {r: 1 for r in rows if r[1].startswith("f2-")}  # the refused file: flush 2's rows
    )

    assert compact_warehouse(wh, now=LATER, lookback=None) == 0  # finished, nothing to merge
    assert service_rows(s3_warehouse) == rows
    left = entries(wh, hour)
    assert len(left) == 1 and left[0].startswith("c-"), left


@pytest.mark.s3
@pytest.mark.integration
def test_a_refused_key_fails_the_call_after_every_batch_was_sent(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a failed single delete: the other keys, in its batch and the next, are deleted;
    the error names the refused key and how many were refused."""
    monkeypatch.setattr(storage, "DELETE_BATCH", 3)
    wh = open_warehouse(s3_warehouse)
    paths = [f"{wh.base}/t/f-{i}.parquet" for i in range(7)]
    for path in paths:
        put_bytes(wh, path, b"x")
    assert wh.s3 is not None
    client = Refusing(s3_client(wh.s3), paths[1])
    monkeypatch.setattr(storage, "s3_client", lambda settings: client)
    with pytest.raises(StorageError, match=r"refused to delete 1 of 7 objects .*f-1\.parquet"):
        delete_objects(wh, paths)
    assert entries(wh, f"{wh.base}/t") == ["f-1.parquet"]


def test_the_batch_client_is_built_from_the_warehouse_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same endpoint, path-style addressing and region as pyarrow's filesystem; keys from the
    environment; nothing for a local warehouse."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLOGQ")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    wh = open_warehouse("s3://bucket/wh")
    assert wh.s3 == S3Settings("eu-west-3", "127.0.0.1:9", "http", "AKIDLOGQ", "secret")
    client = s3_client(wh.s3)
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client._request_signer._credentials.access_key == "AKIDLOGQ"
    assert s3_client(wh.s3) is client  # one per settings
    assert isinstance(wh.fs, pafs.S3FileSystem) and wh.fs.region == "eu-west-3"
    assert open_warehouse("/tmp/logq-not-s3").s3 is None


def test_without_a_region_in_the_environment_the_profile_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the SDKs and the Athena engine read it (the README says so): ``~/.aws/config``'s
    region, then us-east-1 when no profile names one."""
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-3\n")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    wh = open_warehouse("s3://bucket/wh")
    assert wh.s3 is not None and wh.s3.region == "eu-west-3"
    assert isinstance(wh.fs, pafs.S3FileSystem) and wh.fs.region == "eu-west-3"
    config.write_text("[default]\n")
    assert S3Settings.from_env().region == "us-east-1"


def test_without_a_config_file_the_region_lookup_imports_no_botocore(tmp_path: Path) -> None:
    """The CLI's start-up on an S3 warehouse does not pay ~0.3 s for botocore to learn that
    there is no profile."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    code = (
        "import sys; from athena.warehouse import open_warehouse; "
        "wh = open_warehouse('s3://bucket/wh'); "
        "print(wh.s3.region, 'botocore' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["us-east-1", "False"]


@pytest.mark.s3
@pytest.mark.integration
def test_a_service_with_a_long_history_is_listed_in_one_request_per_pass(
    seaweedfs: SeaweedFS, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service with 100 compacted hours before the 48-hour window and 20 within it, and two
    to merge: the pass lists its hour folders, then the window from its first hour on in one
    request (was one per hour in the window: 22 here), merges both hours and leaves the
    history alone."""
    flush_files(s3_warehouse, files=3, rows_per_file=10, service="old")
    wh = counted_warehouse(s3_warehouse, monkeypatch)
    # 20 hours in the window, 100 before it
    put_history(wh, "old", [*range(8, 28), *range(60, 160)], lambda ago: f"hour {ago} ago")
    rows = service_rows(s3_warehouse)
    now = HOUR + timedelta(hours=12)  # DT and NEXT_DT are closed, the window starts at -36 h
    before = settled(seaweedfs, wh)
    assert compact_warehouse(wh, now=now, lookback=timedelta(hours=48)) == 2 * 3
    # The heartbeats (the grace's floor), the ledger's folder (its expiry), two table roots,
    # the service's hour folders and its window, and per merged hour its fresh listing and the
    # intent check.
    assert requests_after(seaweedfs, wh, before, "LIST", 10) == 1 + 1 + 2 + 2 + 2 * 2
    assert service_rows(s3_warehouse) == rows
    for dt in (DT, NEXT_DT):
        names = entries(wh, wh.path(partition_path("container_logs", "old", dt)))
        assert len(names) == 1 and names[0].startswith("c-"), names


@pytest.mark.s3
@pytest.mark.integration
def test_the_window_listed_from_its_first_hour_keeps_its_edges(s3_warehouse: str) -> None:
    """The first hour of a 48-hour window (it ends exactly 48 hours ago) is merged; the hour
    before it, which the listing starts after, is not; nor is the hour still within grace."""
    wh = open_warehouse(s3_warehouse)
    now = HOUR + timedelta(hours=12)
    hours = {
        "first": now - timedelta(hours=49),  # ends at now - 48 h: in the window
        "before": now - timedelta(hours=50),  # ends before it
        "open": now - timedelta(hours=1),  # ended now: within the 30-minute grace
    }
    folders = {}
    for name, start in hours.items():
        folders[name] = wh.path(partition_path("container_logs", "edge", start.strftime(DT_FORMAT)))
        for seq in range(2):
            put_table(wh, f"{folders[name]}/n-{seq}.parquet", one_row(f"{name} {seq}"))
    assert compact_warehouse(wh, now=now, lookback=timedelta(hours=48)) == 2
    assert [n[:2] for n in entries(wh, folders["first"])] == ["c-"]
    assert entries(wh, folders["before"]) == ["n-0.parquet", "n-1.parquet"]
    assert entries(wh, folders["open"]) == ["n-0.parquet", "n-1.parquet"]


class Refuses:
    """The warehouse's S3 client in front of a store that refuses one request whole with
    ``code`` (every other request goes to the real server): DeleteObjects as boto3 1.36+ sends
    it (MinIO releases, Ceph, OVH: ``MissingContentMD5``), a listing with ``StartAfter`` (S3
    directory buckets), or throttling."""

    def __init__(self, real: Any, method: str, code: str) -> None:
        self.real, self.method, self.code, self.calls = real, method, code, 0

    def _refuse(self, *_: Any, **__: Any) -> Any:
        from botocore.exceptions import ClientError

        self.calls += 1
        raise ClientError({"Error": {"Code": self.code, "Message": "refused"}}, self.method)

    def __getattr__(self, name: str) -> Any:
        return self._refuse if name == self.method else getattr(self.real, name)


@pytest.mark.s3
@pytest.mark.integration
def test_a_store_without_batch_deletes_still_gets_every_merge_finished(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeleteObjects refused whole: the inputs are deleted one by one, the merge finishes (no
    row twice for good), and that store is not asked for a batch again."""
    monkeypatch.setattr(storage, "_NO_BATCH_DELETE", set())
    flush_files(s3_warehouse, files=6, rows_per_file=10, service="svc")
    rows = service_rows(s3_warehouse)
    wh = open_warehouse(s3_warehouse)
    assert wh.s3 is not None
    client = Refuses(s3_client(wh.s3), "delete_objects", "MissingContentMD5")
    monkeypatch.setattr(storage, "s3_client", lambda settings: client)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 12  # both hours, one pass
    assert client.calls == 1  # the second merge deleted one by one without asking again
    assert service_rows(s3_warehouse) == rows
    for dt in (DT, NEXT_DT):
        left = entries(wh, wh.path(partition_path("container_logs", "svc", dt)))
        assert len(left) == 1 and left[0].startswith("c-"), left


@pytest.mark.s3
@pytest.mark.integration
def test_delete_objects_carries_a_content_md5_of_its_body(s3_warehouse: str) -> None:
    """Stores that predate boto3's CRC32 checksums want Content-MD5 on DeleteObjects; the real
    server takes the request with it, and the header is the MD5 of the body sent."""
    import base64
    import hashlib

    wh = open_warehouse(s3_warehouse)
    assert wh.s3 is not None
    paths = [f"{wh.base}/md5/f-{i}.parquet" for i in range(3)]
    for path in paths:
        put_bytes(wh, path, b"x")
    sent: list[tuple[str | None, bytes]] = []

    def capture(request: Any, **_: Any) -> None:
        body = request.body if isinstance(request.body, bytes) else request.body.encode()
        md5 = request.headers.get("Content-MD5")
        sent.append((md5.decode() if isinstance(md5, bytes) else md5, body))

    client = s3_client(wh.s3)
    client.meta.events.register("before-send.s3.DeleteObjects", capture)
    try:
        delete_objects(wh, paths)
    finally:
        client.meta.events.unregister("before-send.s3.DeleteObjects", capture)
    assert len(sent) == 1
    md5, body = sent[0]
    assert md5 == base64.b64encode(hashlib.md5(body).digest()).decode()
    assert entries(wh, f"{wh.base}/md5") == []


@pytest.mark.s3
@pytest.mark.integration
def test_a_store_without_start_after_is_listed_hour_by_hour(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window's one-request listing refused: the pass lists hour by hour and merges, and
    the store is not asked again (nor logged about again) on the next pass."""
    monkeypatch.setattr(storage, "_NO_START_AFTER", set())
    monkeypatch.setattr(storage, "_LISTING_FAILURES", set())
    flush_files(s3_warehouse, files=6, rows_per_file=10, service="svc")
    wh = open_warehouse(s3_warehouse)
    # A long history: the window is not listed with the folder.
    put_history(
        wh, "svc", range(60, 160), lambda ago: (HOUR - timedelta(hours=ago)).strftime(DT_FORMAT)
    )
    rows = service_rows(s3_warehouse)
    assert wh.s3 is not None
    client = Refuses(s3_client(wh.s3), "get_paginator", "InvalidArgument")
    monkeypatch.setattr(storage, "s3_client", lambda settings: client)
    assert compact_warehouse(wh, now=LATER, lookback=timedelta(hours=48)) == 12
    assert client.calls == 1  # asked once, refused
    assert service_rows(s3_warehouse) == rows
    assert compact_warehouse(wh, now=LATER, lookback=timedelta(hours=48)) == 0
    assert client.calls == 1


@pytest.mark.s3
@pytest.mark.integration
def test_a_throttled_batch_delete_is_left_to_the_next_pass(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SlowDown is no reason to send a thousand single deletes instead: the merge's delete
    step fails (its intent stays, rows show twice meanwhile, none missing) and the next pass,
    unthrottled, finishes it."""
    monkeypatch.setattr(storage, "_NO_BATCH_DELETE", set())
    flush_files(s3_warehouse, files=6, rows_per_file=10, service="svc")
    rows = service_rows(s3_warehouse)
    wh = open_warehouse(s3_warehouse)
    assert wh.s3 is not None
    real = s3_client(wh.s3)
    throttled = Refuses(real, "delete_objects", "SlowDown")
    with monkeypatch.context() as patch, pytest.raises(CompactionFailed):
        patch.setattr(storage, "s3_client", lambda settings: throttled)
        compact_warehouse(wh, now=LATER, lookback=None)
    assert throttled.calls == 2  # one batch per partition, no single deletes after it
    twice = service_rows(s3_warehouse)
    assert set(twice) == set(rows) and all(twice[r] == 2 for r in rows)
    assert not storage._NO_BATCH_DELETE  # the store does take batches
    compact_warehouse(wh, now=LATER, lookback=None)
    assert service_rows(s3_warehouse) == rows
