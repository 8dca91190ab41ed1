"""aggregator.multipart on SeaweedFS: what a merge's upload holds is charged to the compaction
memory budget, a refused start is reported as a storage error that publishes nothing, and
merges leave the multipart upload only where boto3 got no answer from the store."""

from __future__ import annotations

from concurrent.futures import wait
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

import aggregator.compaction.merge as merge_mod
import aggregator.multipart as multipart_mod
import aggregator.storage as storage_mod
from aggregator.storage import StorageError
from athena.warehouse import open_warehouse, s3_client


@pytest.mark.s3
@pytest.mark.integration
def test_a_merge_on_s3_charges_its_upload_buffer_and_four_still_run(
    s3_warehouse: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each merge on S3 holds up to (IN_FLIGHT + 1) parts of its output: its reservation
    counts them, and the budget holds four such merges (MERGE_PARTITIONS), not five."""
    monkeypatch.setattr(storage_mod, "_UNANSWERED", set())
    s3, local = open_warehouse(s3_warehouse), open_warehouse(str(tmp_path / "wh"))
    upload = (multipart_mod.IN_FLIGHT + 1) * multipart_mod.PART_BYTES
    assert merge_mod._memory_cost([], local) == merge_mod.MERGE_BYTES
    assert merge_mod._memory_cost([], s3) == merge_mod.MERGE_BYTES + upload
    assert merge_mod._merge_budget(local).total == merge_mod.MERGE_MEMORY_BYTES
    budget = merge_mod._merge_budget(s3)
    cost = merge_mod._memory_cost([], s3)
    assert budget.total == 4 * cost
    for _ in range(4):
        budget.used += cost  # (as reserve() does: four fit, a fifth would wait)
    assert budget.used <= budget.total < budget.used + cost


class _Refusing:
    """The shared client, but CreateMultipartUpload is refused (a policy without
    s3:PutObject)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def create_multipart_upload(self, **_: Any) -> Any:
        error = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}
        raise ClientError(error, "CreateMultipartUpload")  # type: ignore[arg-type]


@pytest.mark.s3
@pytest.mark.integration
def test_a_refused_upload_start_is_a_storage_error_and_publishes_nothing(
    s3_warehouse: str,
) -> None:
    """A first part whose upload cannot start fails the write with a StorageError saying
    nothing was published (not botocore's bare error), and later writes (a writer's footer on
    the way out) are dropped instead of starting the upload again."""
    wh = open_warehouse(s3_warehouse, create=True)
    assert wh.s3 is not None
    bucket, _, key = wh.path("out", "c-refused.parquet").partition("/")
    client = _Refusing(s3_client(wh.s3))
    upload = multipart_mod.MultipartUpload(client, bucket, key, part_bytes=1024)
    with pytest.raises(StorageError, match="nothing was published"):
        upload.write(b"x" * 2048)
    assert upload.write(b"y" * 4096) == 4096  # (the footer: dropped, no second request)
    upload.close()
    assert upload.closed and not upload.completed
    assert not wh.fs.get_file_info(f"{bucket}/{key}").is_file


@pytest.mark.s3
@pytest.mark.integration
def test_merges_write_through_pyarrow_only_where_boto3_got_no_answer(
    s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET that S3 answered with an error (a 500 after boto3's retries) falls back to
    pyarrow but keeps merges on the multipart upload (a failed merge shows nothing); one that
    got no answer (a TLS setting only pyarrow's client has) moves them to pyarrow's stream."""
    monkeypatch.setattr(storage_mod, "_FELL_BACK", set())
    monkeypatch.setattr(storage_mod, "_UNANSWERED", set())
    wh = open_warehouse(s3_warehouse)
    answered = ClientError(
        {"Error": {"Code": "InternalError", "Message": "We encountered an internal error"}},
        "GetObject",
    )
    storage_mod._boto3_failed(wh, "reading x", answered)
    assert wh.s3 in storage_mod._FELL_BACK
    assert merge_mod._multipart(wh)
    storage_mod._boto3_failed(wh, "reading x", EndpointConnectionError(endpoint_url="https://x"))
    assert not merge_mod._multipart(wh)
    assert merge_mod._memory_cost([], wh) == merge_mod.MERGE_BYTES


class _FailingFirstPart:
    """The shared client, but the first part's UploadPart fails (after boto3's retries)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_part(self, **request: Any) -> Any:
        if request["PartNumber"] == 1:
            raise EndpointConnectionError(endpoint_url="https://s3.invalid")
        return self._client.upload_part(**request)


@pytest.mark.s3
@pytest.mark.integration
def test_a_failed_part_fails_the_next_part_and_aborts(s3_warehouse: str) -> None:
    """A part that failed is reported by the write that fills the next part (not only once
    IN_FLIGHT more parts are out): StorageError, the upload aborted, nothing published."""
    wh = open_warehouse(s3_warehouse, create=True)
    assert wh.s3 is not None
    bucket, _, key = wh.path("out", "c-part-failed.parquet").partition("/")
    upload = multipart_mod.MultipartUpload(
        _FailingFirstPart(s3_client(wh.s3)), bucket, key, part_bytes=5 << 20, in_flight=2
    )
    part = b"p" * (5 << 20)
    upload.write(part)
    wait([future for _, future in upload._pending])  # (part 1 has failed by now)
    with pytest.raises(StorageError, match=r"part 1 .* aborted"):
        upload.write(part)
    assert upload.closed and not upload.completed
    uploads = s3_client(wh.s3).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads if u["Key"] == key] == []
    assert not wh.fs.get_file_info(f"{bucket}/{key}").is_file
