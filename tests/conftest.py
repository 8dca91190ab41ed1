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
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.moto import MotoServer, start_moto
from tests.support.seaweedfs import AWS_OVERRIDES, SeaweedFS, program_env, start_seaweedfs

#: A crashed xdist worker's dying words (its fault handler's stacks) in the run's summary.
pytest_plugins = ["tests.support.crashes"]

#: Start order of the modules under ``make test`` (pytest-xdist): lower first. Chaos scenarios take
#: 15-65 s each, other integration tests (real processes) seconds, most of the rest milliseconds.
_CHAOS, _INTEGRATION, _UNIT = 0, 1, 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, run the longest modules first and the millisecond ones last.

    ``make test`` hands a whole module at a time to whichever of its workers is free, in
    this order (``--dist loadscope --no-loadscope-reorder``; a module's fixtures are then built
    once, e.g. the ~70 ``logq`` runs of ``tests/chaos/test_hostile_cli.py``). A 60-second chaos
    scenario that starts near the end keeps one worker busy while the others idle; started
    first, it overlaps with the rest, and the run ends on modules without processes, mostly
    milliseconds each (a few take longer: ``tests/shipper/test_fast_rotation.py``, ~20 s). The
    sort is stable, so modules keep their order within a rank and tests theirs within a
    module. A plain ``pytest`` run (no workers) keeps the collection order.
    """
    if not hasattr(config, "workerinput"):
        return
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        rank[module] = min(rank.get(module, _UNIT), _start_rank(item))
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])


def _start_rank(item: pytest.Item) -> int:
    """``_CHAOS``, ``_INTEGRATION`` or ``_UNIT``, from the test's markers."""
    if item.get_closest_marker("chaos"):
        return _CHAOS
    if item.get_closest_marker("integration"):
        return _INTEGRATION
    return _UNIT


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


#: The loggers the programs' ``setup_logging`` configure (the root, and the shipper's own).
PROGRAM_LOGGERS = ("", "logq.shipper")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Entry points called in-process (``compact_main``, the CLIs, the shipper's ``main``)
    install their own handler on the ``sys.stderr`` of that moment, which pytest closes after
    the test: restore those loggers, or a later test's log line fails on the closed stream. The
    shipper's logger also stops propagating, which hid a later test's records from ``caplog``
    (test_state_disk then test_removed_while_down failed in one worker, H2s19)."""
    loggers = [logging.getLogger(name) for name in PROGRAM_LOGGERS]
    kept = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, (handlers, level, propagate) in zip(loggers, kept, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.fixture(autouse=True)
def _unraisable_hook_restored() -> Iterator[None]:
    """A program's ``main()`` called in-process installs its Ctrl-C redelivery
    (``shipper.startup.redeliver_dropped_interrupts``) as ``sys.unraisablehook``: restore
    pytest's, or a stray ``KeyboardInterrupt`` in a later test's finalizer would become a
    SIGINT that ends the run instead of a reported warning."""
    hook = sys.unraisablehook
    yield
    sys.unraisablehook = hook


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
    return program_env()


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
