"""A streamed S3 upload that is published only when told to: :class:`MultipartUpload`.

pyarrow's S3 output streams have no abort (pyarrow 26): closing one, as a ``with`` does when the
code inside raises, completes its upload, and a merge that failed half way published a short but
valid Parquet file that readers (Athena) counted beside its inputs until a rollback deleted it.
This sink is a boto3 multipart upload that is completed by :meth:`MultipartUpload.complete`
alone; :meth:`~MultipartUpload.abort` (or :meth:`~MultipartUpload.close` before a completion)
sends AbortMultipartUpload: no object appears, and S3 drops the parts uploaded so far (none is
left to bill).

Memory: the part being filled plus at most ``in_flight`` parts being uploaded, i.e. about
``(in_flight + 1) * part_bytes`` (48 MiB with the defaults; a part is the writes that filled it,
joined once a slot is free, so it may exceed ``part_bytes`` by one write). A write that fills a
part waits while ``in_flight`` parts are still uploading. An output smaller than one part is
held whole until :meth:`~MultipartUpload.complete` sends it in one PutObject.

Retries are boto3's own (standard mode, as
:func:`athena.warehouse.s3_client` configures them); a part that still fails fails the upload:
the next write that fills a part, or :meth:`~MultipartUpload.complete`, raises
:class:`StorageError` and the upload is aborted.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from aggregator.storage import StorageError, _error_code

log = logging.getLogger(__name__)

#: Bytes of one part (S3: at least 5 MiB except the last, at most 10,000 parts: 156 GiB).
PART_BYTES = 16 * 1024 * 1024
#: Parts uploaded at once while the next one fills (pyarrow's stream writes in the background
#: too: a merge is not held up by its uploads).
IN_FLIGHT = 2


def buffer_bytes() -> int:
    """The most that one :class:`MultipartUpload` with the module's settings holds: the part
    being filled plus ``IN_FLIGHT`` parts uploading (a merge charges it to the compaction
    memory budget: :func:`aggregator.compaction.merge._memory_cost`)."""
    return (IN_FLIGHT + 1) * max(1, PART_BYTES)


class MultipartUpload:
    """A write-only binary file whose bytes become the object ``bucket/key`` on
    :meth:`complete`, and never otherwise (see the module's docstring). An output smaller than
    one part is one PutObject at completion (no multipart upload is started)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        part_bytes: int | None = None,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self.part_bytes = max(1, PART_BYTES if part_bytes is None else part_bytes)
        self._chunks: list[bytes] = []  # the part being filled, as written
        self._filled = 0
        self._written = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._pending: deque[tuple[int, Future[str]]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight = max(1, in_flight)
        self._closed = False
        self.completed = False

    # The file-like interface pq.ParquetWriter uses for a Python sink.
    @property
    def closed(self) -> bool:
        return self._closed

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        """Nothing to do: a part is sent once full (an S3 part cannot be appended to)."""

    def write(self, data: Any) -> int:
        chunk = data if isinstance(data, bytes) else bytes(memoryview(data).cast("B"))
        if self._closed:
            if self.completed:
                raise ValueError(f"write to s3://{self.bucket}/{self.key}: already complete")
            return len(chunk)  # (aborted: a writer's footer written on the way out goes nowhere)
        self._chunks.append(chunk)
        self._filled += len(chunk)
        self._written += len(chunk)
        if self._filled >= self.part_bytes:
            self._make_room()  # (before the join: the part and its chunks are not held beside
            self._send(self._cut())  # ``in_flight`` parts under way)
        return len(chunk)

    def complete(self) -> None:
        """Publish what was written as the object (the last part sent, then
        CompleteMultipartUpload; or one PutObject). Raises :class:`StorageError`, the upload
        aborted, if S3 refuses."""
        if self._closed:
            if self.completed:
                return
            raise ValueError(f"s3://{self.bucket}/{self.key}: the upload was aborted")
        try:
            if self._upload_id is None:
                self._client.put_object(Bucket=self.bucket, Key=self.key, Body=self._cut())
            else:
                if self._filled:
                    self._send(self._cut())
                while self._pending:
                    self._collect()
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])},
                )
        except BaseException as exc:
            self.abort()
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise StorageError(
                    f"uploading s3://{self.bucket}/{self.key} failed: {exc}; it was aborted "
                    "(nothing published): the next pass merges again"
                ) from exc
            raise
        self._closed = self.completed = True
        self._shut_pool()

    def close(self) -> None:
        """Abort the upload unless :meth:`complete` ran: closing never publishes."""
        if not self._closed:
            self.abort()

    def abort(self) -> None:
        """Drop the upload: no object appears, no part is left (AbortMultipartUpload, sent
        once the parts under way are done, so that none outlives it). Never raises: a failed
        abort is logged (an S3 lifecycle rule for incomplete uploads then collects the parts)."""
        if self._closed:
            return
        self._closed = True
        self._chunks, self._filled = [], 0
        for _, future in self._pending:
            future.cancel()
        self._shut_pool()
        self._pending.clear()
        if self._upload_id is None:
            return
        try:
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id
            )
        except Exception as exc:  # (botocore's errors, a network error)
            if _error_code(exc) == "NoSuchUpload":  # (completed after all: a reply was lost)
                log.debug("s3://%s/%s: no upload left to abort (%s)", self.bucket, self.key, exc)
                return
            log.warning(
                "aborting the upload of s3://%s/%s failed (%s): its parts stay until the "
                "bucket's lifecycle rule for incomplete multipart uploads removes them",
                self.bucket,
                self.key,
                exc,
            )

    def _cut(self) -> bytes:
        """The part filled so far, joined (a part may exceed ``part_bytes`` by one write)."""
        part = b"".join(self._chunks)
        self._chunks, self._filled = [], 0
        return part

    def _send(self, part: bytes) -> None:
        """Upload ``part`` as the next part on the pool; the multipart upload is started with
        the first part. Waits first while ``in_flight`` parts are under way (bounded memory)."""
        if self._upload_id is None:
            try:
                answer = self._client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
            except Exception as exc:
                self.abort()
                raise StorageError(
                    f"starting the upload of s3://{self.bucket}/{self.key} failed: {exc}; "
                    "nothing was published: the next pass merges again"
                ) from exc
            self._upload_id = str(answer["UploadId"])
            self._pool = ThreadPoolExecutor(self._in_flight, thread_name_prefix="s3-part")
        self._make_room()
        number = len(self._parts) + len(self._pending) + 1
        assert self._pool is not None
        self._pending.append((number, self._pool.submit(self._upload_part, number, part)))

    def _make_room(self) -> None:
        """Wait while ``in_flight`` parts are under way; collect those already done (a part
        that failed stops the merge at its next part, not ``in_flight`` parts later)."""
        while self._pending and (
            len(self._pending) >= self._in_flight or self._pending[0][1].done()
        ):
            self._collect()

    def _upload_part(self, number: int, part: bytes) -> str:
        answer = self._client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=part
        )
        return str(answer["ETag"])

    def _collect(self) -> None:
        """Wait for the oldest part under way; raises (the upload is aborted) if it failed."""
        number, future = self._pending.popleft()
        try:
            etag = future.result()
        except Exception as exc:
            self.abort()
            raise StorageError(
                f"uploading part {number} of s3://{self.bucket}/{self.key} failed: {exc}; "
                "the upload was aborted (nothing published)"
            ) from exc
        self._parts.append({"PartNumber": number, "ETag": etag})

    def _shut_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
