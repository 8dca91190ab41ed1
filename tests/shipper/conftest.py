"""Fixtures of the shipper tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from tests.shipper.receiver import Receiver


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    """A checkpoint registry under ``tmp_path/state``, closed after the test."""
    r = Registry(tmp_path / "state")
    yield r
    r.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A Forward server that acks every chunk (see :class:`Receiver`), closed after the test."""
    r = Receiver()
    yield r
    r.close()
