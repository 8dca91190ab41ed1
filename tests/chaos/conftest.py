"""Fixtures of the chaos scenarios: how many rounds of faults, the random seed, process env.

``make test`` runs :data:`DEFAULT_ROUNDS` rounds of every fault (what issue 6 asks for);
``pytest --long`` runs :data:`LONG_ROUNDS`. The seed of the random fault timings is printed so
that a failing run can be replayed with ``LOGQ_CHAOS_SEED=<seed>``.
"""

from __future__ import annotations

import os
import random

import pytest

DEFAULT_ROUNDS = 10
LONG_ROUNDS = 50


@pytest.fixture
def long_mode(request: pytest.FixtureRequest) -> bool:
    """True under ``pytest --long`` (more rounds, longer outages)."""
    return bool(request.config.getoption("--long"))


@pytest.fixture
def chaos_rounds(long_mode: bool) -> int:
    """How many times a scenario injects its fault: 10, or 50 with ``--long``."""
    return LONG_ROUNDS if long_mode else DEFAULT_ROUNDS


@pytest.fixture
def chaos_rng() -> random.Random:
    """The scenario's random source; its seed comes from ``LOGQ_CHAOS_SEED`` or is drawn."""
    seed = int(os.environ.get("LOGQ_CHAOS_SEED") or random.SystemRandom().randrange(10**9))
    print(f"chaos seed: LOGQ_CHAOS_SEED={seed}")
    return random.Random(seed)


@pytest.fixture
def chaos_env(subprocess_env: dict[str, str]) -> dict[str, str]:
    """Environment for the console scripts (no AWS settings leaking in)."""
    return dict(subprocess_env)
