"""Fixtures of the shipper tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.checkpoint import Registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    """A checkpoint registry under ``tmp_path/state``, closed after the test."""
    r = Registry(tmp_path / "state")
    yield r
    r.close()
