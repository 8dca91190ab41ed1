"""Where the tables live: a local directory or ``s3://bucket/prefix``, behind ``pyarrow.fs``.

The aggregator's writer and the local query engine both open the warehouse here, so they agree
on the layout. S3 is reached with the standard AWS settings: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), ``AWS_REGION``/``AWS_DEFAULT_REGION`` and the usual credentials chain.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
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
    #: What ``fs`` was built from, for an S3 warehouse opened by :func:`open_warehouse` (None:
    #: a local one, or a filesystem built elsewhere: only pyarrow's requests are then used).
    s3: S3Settings | None = field(default=None, compare=False, repr=False)

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def path(self, *parts: str) -> str:
        """Path inside the filesystem of a relative location (``envoy_access/service=x/...``)."""
        return "/".join([self.base, *[p.strip("/") for p in parts if p]])

    def table_root(self, table: str) -> str:
        return self.path(table)


#: Listings of a folder before the error of one that appeared during each is raised. Once made,
#: a folder is there for the next listing: only one removed and made again in between could
#: fail it too (no writer of the warehouse removes a folder it may make again). So a second
#: listing already succeeds whatever the load (a slow machine widens the window, it cannot make
#: a folder go missing again); the two more are a margin, not a timing guess.
LISTING_ATTEMPTS = 4


def list_entries(fs: pafs.FileSystem, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
    """``fs.get_file_info(selector)``, listed again when the folder appeared during the listing.

    Arrow lists a local folder by opening it; when that fails, ``allow_not_found`` forgives
    the failure only if the folder is still missing when Arrow looks again. A folder made
    between the two (the aggregator's first flush into a new warehouse making
    ``container_logs/``, or a new service's or hour's folder) failed the listing with "Cannot
    list directory ...: No such file or directory" although the folder was there: ``logq``
    failed once, compaction's pass, the catalog's listing of services too. Listed again, it is
    read as it now is, up to :data:`LISTING_ATTEMPTS` times. Any other failure is raised at
    once (:func:`appeared_during_listing`): a folder denied to this user, or a file where a
    folder should be, is the same error at every attempt. An S3 listing never fails so: with
    ``allow_not_found`` Arrow does not check that the prefix exists, and its S3 errors never
    carry these words, so nothing on S3 is listed twice.
    """
    for _ in range(LISTING_ATTEMPTS - 1):
        try:
            return fs.get_file_info(selector)
        except FileNotFoundError as exc:
            if not (selector.allow_not_found and appeared_during_listing(exc)):
                raise
    return fs.get_file_info(selector)


def appeared_during_listing(exc: OSError) -> bool:
    """Whether ``exc`` is Arrow's failure to list a local folder that was missing when the
    listing opened it (``ENOENT``): with ``allow_not_found``, one that was there again when
    Arrow looked (see :func:`list_entries`). Its words are Arrow's (``arrow/util/io_util.cc``,
    ``ListDir``), so that no other missing file (one named inside the folder, a path a
    filesystem wrapper did not find) passes for it."""
    return exc.errno == errno.ENOENT and "Cannot list directory" in str(exc)


def is_s3_location(uri: str) -> bool:
    """Whether ``uri`` is ``s3://BUCKET`` or ``s3://BUCKET/PREFIX``: where Athena can write a
    query's results (``--athena-output``; a local path fails later without naming the flag)."""
    return uri.startswith("s3://") and len(uri) > len("s3://") and uri[5] != "/"


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


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3, read once from the standard AWS settings when a warehouse is opened.

    Both clients of an S3 warehouse are built from it: pyarrow's filesystem (reads, writes,
    listings) and boto3's, for the requests pyarrow cannot send or sends more of (DeleteObjects,
    up to 1,000 keys a request; ListObjectsV2 with ``StartAfter``; a small object fetched whole
    in one GET, where pyarrow sends a HEAD first; a delete in one DELETE, where pyarrow adds a
    HEAD and a folder-marker PUT: see :mod:`aggregator.storage`). So they talk to the same
    endpoint, in the same region, as the same identity.
    """

    region: str
    #: ``host[:port]`` of an S3-compatible server (``AWS_ENDPOINT_URL``), None for AWS's own.
    endpoint: str | None = None
    scheme: str = "https"
    #: From the environment; None: the SDKs' own credentials chain (profile, container, IMDS).
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> S3Settings:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = (
            os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or _profile_region()
            or "us-east-1"
        )
        key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        explicit = bool(key and secret)
        settings = cls(
            region=region,
            access_key=key if explicit else None,
            secret_key=secret if explicit else None,
            session_token=(os.environ.get("AWS_SESSION_TOKEN") or None) if explicit else None,
        )
        if not endpoint:
            return settings
        parsed = urlparse(endpoint)
        return replace(
            settings, endpoint=parsed.netloc or parsed.path, scheme=parsed.scheme or "https"
        )


def _profile_region() -> str | None:
    """The region of the AWS profile (``~/.aws/config``, ``AWS_CONFIG_FILE``, ``AWS_PROFILE``),
    as the SDKs and the Athena engine read it; None without one (or an unusable profile).
    botocore (~0.3 s to import) only when there is a config file to read."""
    config = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    if not Path(config).expanduser().is_file():
        return None
    import botocore.session
    from botocore.exceptions import BotoCoreError

    try:
        return botocore.session.get_session().get_config_variable("region")
    except BotoCoreError:
        return None


def s3_filesystem(
    settings: S3Settings | None = None, request_timeout: float | None = None
) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem configured from ``settings`` (None: the standard AWS
    environment, read now).

    ``request_timeout`` (seconds without a byte of the answer): None keeps the AWS SDK's 3 s,
    after which the request is sent again (3 attempts in all). The tests that count a server's
    requests wait longer: an answer slower than that under load was sent, and counted, twice.
    """
    settings = settings or S3Settings.from_env()
    kwargs: dict = {"region": settings.region}
    if request_timeout is not None:
        kwargs["request_timeout"] = request_timeout
    if settings.endpoint:
        kwargs["endpoint_override"] = settings.endpoint
        kwargs["scheme"] = settings.scheme
        # S3-compatible servers (SeaweedFS, MinIO) expect path-style addressing.
        kwargs["force_virtual_addressing"] = False
    if settings.access_key and settings.secret_key:
        kwargs["access_key"] = settings.access_key
        kwargs["secret_key"] = settings.secret_key
        if settings.session_token:
            kwargs["session_token"] = settings.session_token
    return pafs.S3FileSystem(**kwargs)


#: Connections the shared boto3 client keeps open (pyarrow's S3 client keeps up to 25): a
#: compaction pass sends at once up to 32 GETs (4 merges reading 8 inputs each), 16 listings and
#: 4 deletes. Beyond the pool urllib3 opens a connection, then drops it with a WARNING.
S3_CLIENT_CONNECTIONS = 64
#: Seconds boto3 waits for a TCP connection to S3 (botocore's default: 60). pyarrow's client
#: (the AWS C++ SDK's defaults, which :func:`s3_filesystem` keeps) waits 1 s; 3 s also lets a
#: lost SYN be sent again once (Linux resends it after 1 s).
S3_CONNECT_TIMEOUT = 3.0
#: Seconds boto3 waits for the next bytes of an answer on the shared client (botocore's
#: default: 60, x 3 attempts: a hung GET took 4 minutes). It bounds each socket read, not a
#: whole request: a 64 MiB flush file that keeps arriving is never cut. It is longer than
#: pyarrow's (its SDK gives up after 3 s without a byte) because this client also sends
#: DeleteObjects of up to 1,000 keys, whose answer comes only once all are deleted: seconds
#: on S3, more on some S3-compatible stores.
S3_READ_TIMEOUT = 20.0
#: The same for the reads of small documents (:func:`s3_small_client`: heartbeats, replay
#: marks), answered in milliseconds, on the paths a stop or a replay waits on: close to
#: pyarrow's 3 s, so that a hung endpoint fails a read in about 15 s (3 attempts).
S3_SMALL_READ_TIMEOUT = 4.0
_CLIENTS: dict[tuple[S3Settings, float], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def s3_client(settings: S3Settings) -> Any:  # an S3 client (boto3 stubs are not installed)
    """A boto3 S3 client for ``settings``, as pyarrow's filesystem is configured (same endpoint,
    addressing, region, credentials, and pyarrow's retry policy: standard, 3 attempts), with
    timeouts (:data:`S3_CONNECT_TIMEOUT`, :data:`S3_READ_TIMEOUT`); one per settings, shared
    (boto3 clients are thread-safe). boto3 is imported here, on first use: the CLI's start-up
    never pays for it."""
    return _shared_client(settings, S3_READ_TIMEOUT)


def s3_small_client(settings: S3Settings) -> Any:
    """:func:`s3_client` for the GETs of small documents (a heartbeat, a replay mark): its read
    timeout is :data:`S3_SMALL_READ_TIMEOUT`, as a clean stop (which reads its own heartbeat)
    must end within the service manager's grace period, and a replay poll within seconds."""
    return _shared_client(settings, S3_SMALL_READ_TIMEOUT)


def _shared_client(settings: S3Settings, read_timeout: float) -> Any:
    with _CLIENTS_LOCK:
        client = _CLIENTS.get((settings, read_timeout))
        if client is None:
            client = _CLIENTS[settings, read_timeout] = _new_s3_client(settings, read_timeout)
        return client


def _new_s3_client(settings: S3Settings, read_timeout: float) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        # pyarrow's policy: 3 attempts in all. (botocore's "max_attempts" counts the retries
        # only: 3 of them made 4 attempts, a fourth wait on a hung endpoint.)
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=S3_CONNECT_TIMEOUT,
        read_timeout=read_timeout,
        # Compaction reads, lists and deletes many at once: far more than boto3's 10 pooled
        # connections (the extra ones would be opened and dropped each time).
        max_pool_connections=S3_CLIENT_CONNECTIONS,
        # Like pyarrow: path-style for an S3-compatible server; for AWS, boto3's default. With no
        # endpoint given, one from an AWS config file must not apply to this client alone.
        s3={"addressing_style": "path"} if settings.endpoint else None,
        ignore_configured_endpoint_urls=settings.endpoint is None,
    )
    session = boto3.session.Session(  # a session of its own: creating one is thread-safe
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        aws_session_token=settings.session_token,
        region_name=settings.region,
    )
    endpoint = f"{settings.scheme}://{settings.endpoint}" if settings.endpoint else None
    client = session.client("s3", endpoint_url=endpoint, config=config)
    client.meta.events.register("before-sign.s3.DeleteObjects", _content_md5)
    return client


def _content_md5(request: Any, **_: Any) -> None:
    """Give DeleteObjects a Content-MD5 header: boto3 1.36 and later send only a CRC32 checksum,
    which S3 takes but S3-compatible stores that predate it (MinIO releases, Ceph, OVH...)
    refuse with ``MissingContentMD5``. S3 accepts both together."""
    import base64
    import hashlib

    body = request.body
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes) or "Content-MD5" in request.headers:
        return
    digest = hashlib.md5(body, usedforsecurity=False).digest()
    request.headers["Content-MD5"] = base64.b64encode(digest).decode()


def os_path(path: str) -> str:
    """``path`` (text, as pyarrow and DuckDB take it) as Python's own file functions take it.

    pyarrow and DuckDB read a file name as UTF-8 whatever the locale; Python encodes it with
    the file system encoding, which is ASCII under the C locale with UTF-8 mode off
    (``LC_ALL=C PYTHONUTF8=0``): a warehouse in ``/data/wärehouse`` failed every command with
    "'ascii' codec can't encode character". There the name is given as the UTF-8 bytes it is
    on disk, which Python holds as surrogates (``os.fsdecode``)."""
    try:
        path.encode(sys.getfilesystemencoding(), "surrogateescape")
    except UnicodeEncodeError:
        return os.fsdecode(path.encode("utf-8", "surrogateescape"))
    return path


def text_path(path: str) -> str:
    """A path from Python's file functions as text for pyarrow, DuckDB and messages: the
    reverse of :func:`os_path` (UTF-8 bytes Python held as surrogates are read as UTF-8)."""
    if any("\udc80" <= c <= "\udcff" for c in path):
        return os.fsencode(path).decode("utf-8", "surrogateescape")
    return path


def check_folder(path: str, fix: str = "check --warehouse", missing: str = "") -> str | None:
    """What keeps this user from reading the local warehouse ``path`` (as
    :attr:`Warehouse.base` holds it), as one line that says what to do, or None when it can
    list the folder and enter it.

    ``logq`` (exit 2) and ``logq-aggregator compact`` (exit 1) check here before anything is
    listed: a mistyped path was answered "no results" or "compacted 0 files", and a folder
    denied to this user Arrow's "Failed getting information for path '.../envoy_access'.
    Detail: [errno 13] Permission denied" of a table inside it. ``fix`` is what to do about a
    path that is wrong (missing, or no folder); ``missing`` is added for a missing one (the
    hint at ``logq demo``)."""
    folder = os_path(path)
    try:
        mode = os.stat(folder).st_mode
        if stat.S_ISDIR(mode):
            with os.scandir(folder) as entries:  # read permission: its names can be listed
                next(entries, None)
            os.stat(os.path.join(folder, "."))  # search permission: its files can be opened
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a file above it
        return f"the warehouse {path} does not exist; {fix}{missing}"
    except PermissionError:
        return (
            f"the warehouse {path} cannot be read by this user (uid {os.geteuid()}, gid "
            f"{os.getegid()}): permission denied; check the permissions of the folder and of "
            f"those above it (`ls -ld {shlex.quote(path)}`: it needs r-x, to list and enter "
            "it), or run as the user that owns it"
        )
    except OSError as exc:  # an I/O error, a name too long: the system's words
        return f"the warehouse {path} cannot be read ({exc.strerror or exc}); {fix}"
    if stat.S_ISDIR(mode):
        return None
    kind = "a file, not a directory" if stat.S_ISREG(mode) else "not a directory"
    return f"the warehouse {path} is {kind}; {fix}"


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
        # text_path: LOGQ_WAREHOUSE=s3://bucket/päth under the C locale (read as surrogates)
        # failed in pyarrow with "surrogates not allowed"
        rest = text_path(uri[len("s3://") :]).strip("/")
        if not rest or uri.startswith("s3:///"):
            raise WarehouseError(f"{uri!r} names no bucket; use s3://BUCKET or s3://BUCKET/PREFIX")
        if "//" in rest:
            # pyarrow refuses every key with an empty folder name: the aggregator started,
            # acknowledged, and failed each flush until its buffer filled.
            fixed = "/".join(part for part in rest.split("/") if part)
            raise WarehouseError(
                f"{uri!r} has an empty folder name (//), which no S3 key of the warehouse may "
                f"hold; write s3://{fixed}"
            )
        settings = S3Settings.from_env()
        return Warehouse(uri=f"s3://{rest}", fs=s3_filesystem(settings), base=rest, s3=settings)
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise WarehouseError(
            f"unsupported warehouse scheme {scheme!r} in {uri!r}; use a local directory or s3://bucket/prefix"
        )
    local = Path(os_path(uri.removeprefix("file://"))).expanduser().resolve()
    if local == local.parent:
        # file:/// or /: the aggregator would make _ledger/, envoy_access/ ... at the root.
        raise WarehouseError(
            f"{uri!r} is the root of the file system; use a folder of its own, e.g. "
            "/var/lib/logq/warehouse"
        )
    if create:
        local.mkdir(parents=True, exist_ok=True)
    base = text_path(str(local))
    return Warehouse(uri=base, fs=pafs.LocalFileSystem(), base=base)
