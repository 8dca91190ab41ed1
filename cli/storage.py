"""S3 failures in words that say what to check, for people who did not write the warehouse code.

pyarrow reports an S3 failure as ``... AWS Error ACCESS_DENIED during ListObjectsV2 operation``:
exact, but it does not say which setting to fix. :func:`advice` adds that to the same line. A
bucket that does not exist is no error at all to a listing (it lists nothing), so "no data"
would be the answer; :func:`check_bucket` asks the bucket itself before logq says that.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from athena.warehouse import Warehouse

#: Names and phrases that mean no answer came back at all.
_NETWORK = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Timeout", "timed out")


class BucketNotFound(OSError):
    """The warehouse bucket does not exist (exit 1, like every storage failure)."""


def _endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _endpoint() -> str:
    value = _endpoint_url()
    return f"AWS_ENDPOINT_URL ({value})" if value else "AWS_ENDPOINT_URL (unset: AWS itself)"


#: botocore's words (Athena, STS, S3 through boto3) for credentials that are missing or refused;
#: pyarrow's S3 errors say "AWS Error" instead and are matched apart.
_BOTO_CREDENTIALS = (
    "Unable to locate credentials",
    "NoCredentialsError",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "ExpiredToken",
    "security token included in the request is",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Partial credentials found",
)

CREDENTIALS = "the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"


def advice(message: str) -> str | None:
    """What to check for an S3 or AWS API error ``message`` (None when it is not one).

    The likeliest cause comes first, the other two after it, so one line is enough to act on.
    """
    if "AWS Error" not in message:
        if any(words in message for words in _BOTO_CREDENTIALS):
            return (
                f"check {CREDENTIALS}: `aws sts get-caller-identity` must work in this shell "
                "(an expired SSO session: `aws sso login`)"
            )
        return None
    credentials = CREDENTIALS
    endpoint = _endpoint()
    bucket = "the bucket in --warehouse / LOGQ_WAREHOUSE"
    if any(word in message for word in _NETWORK):
        order = [f"{endpoint} and the network", credentials, bucket]
    elif "NO_SUCH_BUCKET" in message:
        order = [bucket, endpoint, credentials]
    else:  # ACCESS_DENIED, SIGNATURE_DOES_NOT_MATCH, INVALID_ACCESS_KEY_ID, EXPIRED_TOKEN, ...
        order = [credentials, endpoint, bucket]
    return "check " + ", ".join(order[:-1]) + " and " + order[-1]


def check_bucket(wh: Warehouse) -> None:
    """Raise :class:`BucketNotFound` when ``wh`` is on S3 and its bucket does not exist.

    One HeadBucket request; call it only where an empty listing is about to be reported (a
    listing of a missing bucket is empty, and "no data yet" would send the reader the wrong way).
    """
    if not wh.is_s3:
        return
    import pyarrow.fs as pafs

    bucket = wh.base.split("/", 1)[0]
    if wh.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise BucketNotFound(
            f"the bucket {bucket!r} of the warehouse {wh.uri} does not exist on "
            f"{_endpoint_url() or 'AWS S3'}; check --warehouse / LOGQ_WAREHOUSE and "
            "AWS_ENDPOINT_URL"
        )
