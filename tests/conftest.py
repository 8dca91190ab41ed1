"""Shared fixtures: a real S3 server (SeaweedFS) and moto's Athena API, started only when used.

* ``seaweedfs`` (session): a running ``weed server -s3`` on 127.0.0.1; ``.endpoint``,
  ``.access_key``, ``.secret_key``, ``.region``, ``.create_bucket(name=None)``, ``.client()``,
  ``.env()``.
* ``s3_env`` (function): the standard AWS variables pointing at it, set with monkeypatch for the
  test's own process and returned as a dict to merge into subprocess environments.
* ``s3_warehouse`` (function): a fresh bucket, returned as the warehouse URI ``s3://<bucket>/wh``.
* ``moto_server`` (session): the endpoint URL of a ``moto_server`` for Athena API tests.
* ``subprocess_env`` (function): ``os.environ`` plus ``s3_env``-style overrides, helper for
  tests that run our console scripts.

Mark tests that use S3 with ``@pytest.mark.s3`` (and ``integration`` when they start processes).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest

from tests.support.moto import MotoServer, start_moto
from tests.support.seaweedfs import AWS_OVERRIDES, SeaweedFS, start_seaweedfs


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="chaos scenarios (tests/chaos): more rounds and longer outages than in `make test`",
    )


#: Startup figures of the servers this session started, printed in the terminal summary.
_STARTED: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, seconds in _STARTED.items():
        terminalreporter.write_line(f"{name} started in {seconds:.1f}s (127.0.0.1, free ports)")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Entry points called in-process (``compact_main``, the CLIs) install their own root
    handler on the ``sys.stderr`` of that moment, which pytest closes after the test: restore
    the root logger, or a later test's log line fails on the closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """One SeaweedFS (S3) per session; stopped (then SIGKILLed) and deleted at the end."""
    server = start_seaweedfs()
    _STARTED["SeaweedFS S3"] = server.startup_seconds
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the AWS SDKs at the test SeaweedFS; returns the variables for subprocess envs."""
    for name in AWS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    env = seaweedfs.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_warehouse(seaweedfs: SeaweedFS, s3_env: dict[str, str]) -> str:
    """A warehouse URI in a bucket of its own: ``s3://<fresh-bucket>/wh``."""
    bucket = seaweedfs.create_bucket()
    return f"s3://{bucket}/wh"


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """A copy of the environment for child processes, without AWS settings that would leak in.

    Tests add ``s3_env`` on top when the child must reach SeaweedFS.
    """
    env = {k: v for k, v in os.environ.items() if k not in AWS_OVERRIDES}
    env.pop("LOGQ_WAREHOUSE", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a ``moto_server`` (Athena API emulation), killed at the end."""
    started = time.monotonic()
    server: MotoServer = start_moto()
    _STARTED["moto (Athena API)"] = time.monotonic() - started
    try:
        yield server.endpoint
    finally:
        server.stop()
