"""Where the tables live: a local directory or ``s3://bucket/prefix``, behind ``pyarrow.fs``.

The aggregator's writer and the local query engine both open the warehouse here, so they agree
on the layout. S3 is reached with the standard AWS settings: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), ``AWS_REGION``/``AWS_DEFAULT_REGION`` and the usual credentials chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

ENV_WAREHOUSE = "LOGQ_WAREHOUSE"
DEFAULT_WAREHOUSE = "./logq-warehouse"


class WarehouseError(ValueError):
    """The warehouse URI cannot be used; the message says what to pass instead."""


@dataclass(frozen=True)
class Warehouse:
    """An opened warehouse: a filesystem and the base path inside it (no trailing slash)."""

    uri: str
    fs: pafs.FileSystem
    base: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def path(self, *parts: str) -> str:
        """Path inside the filesystem of a relative location (``envoy_access/service=x/...``)."""
        return "/".join([self.base, *[p.strip("/") for p in parts if p]])

    def table_root(self, table: str) -> str:
        return self.path(table)


def resolve_uri(uri: str | None) -> str:
    """The warehouse URI: the argument, else ``$LOGQ_WAREHOUSE``, else ``./logq-warehouse``.

    An empty argument is refused (an unset variable in a script: it silently meant
    ``$LOGQ_WAREHOUSE`` or the default)."""
    if uri is not None and not uri.strip():
        raise WarehouseError(
            "--warehouse (or LOGQ_WAREHOUSE) is empty; pass a directory or s3://bucket/prefix"
        )
    if uri:
        return uri
    env = os.environ.get(ENV_WAREHOUSE)
    if env is not None and not env.strip():
        # Set but blank: a template filled from an unset variable. The default would put the
        # warehouse on the container's own disk, gone with it.
        raise WarehouseError(
            f"{ENV_WAREHOUSE} is set but empty; set it to a directory or s3://bucket/prefix, or "
            "unset it for the default ./logq-warehouse"
        )
    return env or DEFAULT_WAREHOUSE


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem configured from the standard AWS environment."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        # S3-compatible servers (SeaweedFS, MinIO) expect path-style addressing.
        kwargs["force_virtual_addressing"] = False
    key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs["access_key"] = key
        kwargs["secret_key"] = secret
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def open_warehouse(uri: str | None = None, create: bool = False) -> Warehouse:
    """Open the warehouse at ``uri`` (see :func:`resolve_uri`).

    ``create`` makes a missing local directory; S3 buckets must exist already.
    """
    uri = resolve_uri(uri)
    if uri.lower().startswith("s3:") and not uri.startswith("s3://"):
        # Not a local folder named "s3:": a slash too few (s3:/bucket) or a capital S3.
        raise WarehouseError(
            f"{uri!r} is not an S3 address; write s3://BUCKET/PREFIX (two slashes, lower case)"
        )
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :].strip("/")
        if not rest or uri.startswith("s3:///"):
            raise WarehouseError(f"{uri!r} names no bucket; use s3://BUCKET or s3://BUCKET/PREFIX")
        return Warehouse(uri=f"s3://{rest}", fs=s3_filesystem(), base=rest)
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise WarehouseError(
            f"unsupported warehouse scheme {scheme!r} in {uri!r}; use a local directory or s3://bucket/prefix"
        )
    local = Path(uri.removeprefix("file://")).expanduser().resolve()
    if local == local.parent:
        # file:/// or /: the aggregator would make _ledger/, envoy_access/ ... at the root.
        raise WarehouseError(
            f"{uri!r} is the root of the file system; use a folder of its own, e.g. "
            "/var/lib/logq/warehouse"
        )
    if create:
        local.mkdir(parents=True, exist_ok=True)
    return Warehouse(uri=str(local), fs=pafs.LocalFileSystem(), base=str(local))
