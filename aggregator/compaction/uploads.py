"""Incomplete multipart uploads of merge outputs that a killed compactor left on S3: aborted.

A merge's output on S3 is a multipart upload (:mod:`aggregator.multipart`), completed when the
merge succeeds and aborted when it fails; a process killed in between (``kill -9``, an
out-of-memory kill, a lost instance) does neither. No object appears, but S3 keeps the parts,
and bills them, until someone aborts the upload: a bucket lifecycle rule with
``AbortIncompleteMultipartUpload`` does, and so does every pass, with this module. It lists the
incomplete uploads under the warehouse's prefix (ListMultipartUploads) and aborts those of
compaction outputs (``<table>/.../c-<id>.parquet``) started before the pass's stale-intent
cutoff (:func:`.partition.stale_intents_before`, by the store's clock: the dates are the
store's), unless the merge's intent ``_compact-<id>.json`` is still fresh (a live merge slower
than that: its intent is rewritten every minute). Uploads outside the warehouse prefix, or of
other keys, are never touched.

A policy without ``s3:ListBucketMultipartUploads`` (AccessDenied) does not fail the pass:
WARNING once per process, which names the permission and the lifecycle rule. Settings whose
boto3 requests get no answer (:data:`aggregator.storage._UNANSWERED`: a TLS setting only
pyarrow's client has, a network blip until a pass finds boto3 answered again) send no listing:
it would fail the same way at every pass, with a WARNING each time.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import pyarrow.fs as pafs

from aggregator import storage
from aggregator.storage import _error_code, _with_boto3
from athena.intents import INTENT_PREFIX
from athena.schema import TABLES, is_compacted_object
from athena.warehouse import Warehouse, s3_client

log = logging.getLogger("logq.aggregator.compaction")

#: S3 error codes of a ListMultipartUploads that this policy will never be allowed.
_REFUSED = frozenset({"AccessDenied", "AllAccessDisabled", "NotImplemented"})
#: (S3 settings, bucket, listing/aborting) refused already: logged once each.
_REFUSED_SEEN: set[tuple[Any, str, str]] = set()
_REFUSED_LOCK = threading.Lock()


def abort_stale_uploads(wh: Warehouse, before: datetime) -> int:
    """Abort the incomplete uploads of compaction outputs under ``wh``'s prefix started before
    ``before`` (by the store's clock) whose merge is not live; return how many. Nothing on a
    local warehouse, a filesystem built without boto3 settings, or settings whose boto3
    requests get no answer. Never raises for S3's answers: a pass goes on without this
    housekeeping (logged)."""
    if not _with_boto3(wh):
        return 0
    if wh.s3 in storage._UNANSWERED:  # (boto3 gets no answer: pyarrow's client must do)
        log.debug("no incomplete upload listed in %s: boto3 gets no answer there", wh.uri)
        return 0
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, base = wh.path().partition("/")
    prefix = f"{base}/" if base else ""
    client = s3_client(wh.s3)
    aborted = 0
    what = "listing"
    try:
        for key, upload_id in _stale_uploads(client, bucket, prefix, before):
            if _live_merge(wh, f"{bucket}/{key}", before):
                continue
            what = "aborting"
            if _aborted(client, bucket, key, upload_id):
                aborted += 1
    except (ClientError, BotoCoreError, OSError) as exc:  # (OSError: the intent's HEAD)
        code = _error_code(exc)
        if code in _REFUSED:
            _refused_once(wh, bucket, prefix, what, code)
        else:
            log.warning(
                "%s the incomplete multipart uploads under s3://%s/%s failed (%s): the next "
                "compaction pass tries again",
                what,
                bucket,
                prefix,
                exc,
            )
    return aborted


def _stale_uploads(
    client: Any, bucket: str, prefix: str, before: datetime
) -> list[tuple[str, str]]:
    """(key, upload id) of the uploads of compaction outputs under ``prefix`` started before
    ``before``, all pages read first (aborting while paging would shift the markers)."""
    found: list[tuple[str, str]] = []
    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for upload in page.get("Uploads", []):
            key = str(upload.get("Key", ""))
            started = upload.get("Initiated")
            if not (key.startswith(prefix) and _is_output(key[len(prefix) :])):
                continue
            if not isinstance(started, datetime):
                continue
            if started.replace(tzinfo=started.tzinfo or UTC) >= before:
                continue  # (maybe a live merge of another compactor)
            found.append((key, str(upload["UploadId"])))
    return found


def _is_output(relative: str) -> bool:
    """Whether ``relative`` (a key inside the warehouse) is a compaction output: a
    ``c-<20 hex>.parquet`` inside a partition folder of one of the tables."""
    parts = relative.split("/")
    return len(parts) >= 3 and parts[0] in TABLES and is_compacted_object(parts[-1])


def _live_merge(wh: Warehouse, output: str, before: datetime) -> bool:
    """Whether the merge writing ``output`` may still run: its intent (same id) was written
    or refreshed after ``before``. One HEAD (and pyarrow's LIST for a folder of that name
    when the intent is gone), for the rare upload old enough to abort."""
    folder, _, name = output.rpartition("/")
    uid = name[len("c-") : -len(".parquet")]
    info = wh.fs.get_file_info(f"{folder}/{INTENT_PREFIX}{uid}.json")
    if info.type != pafs.FileType.File or info.mtime is None:
        return False
    mtime = info.mtime.replace(tzinfo=info.mtime.tzinfo or UTC)
    return mtime >= before


def _aborted(client: Any, bucket: str, key: str, upload_id: str) -> bool:
    """Abort one upload; False if it was gone already (another compactor aborted or the
    merge completed it meanwhile: NoSuchUpload)."""
    from botocore.exceptions import ClientError

    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if _error_code(exc) == "NoSuchUpload":
            return False
        raise
    log.info(
        "aborted the incomplete multipart upload of s3://%s/%s: a merge killed mid-way left "
        "it (its parts are no longer billed)",
        bucket,
        key,
    )
    return True


def _refused_once(wh: Warehouse, bucket: str, prefix: str, what: str, code: str) -> None:
    with _REFUSED_LOCK:
        if (wh.s3, bucket, what) in _REFUSED_SEEN:
            return
        _REFUSED_SEEN.add((wh.s3, bucket, what))
    log.warning(
        "%s the incomplete multipart uploads under s3://%s/%s was refused (%s): merges "
        "killed mid-way leave their parts billed until a bucket lifecycle rule with "
        "AbortIncompleteMultipartUpload removes them. Add that rule, or allow "
        "s3:ListBucketMultipartUploads on the bucket (and s3:AbortMultipartUpload on the "
        "warehouse prefix) to the compactor's role (see docs/operations.md)",
        what,
        bucket,
        prefix,
        code,
    )
