"""A shared key on one side only, against a real ``logq-aggregator``: the error names the cause.

An aggregator without a key sends no HELO; a timeout around the whole handshake fired before the
HELO read's own and the user read only "timed out". Such an endpoint is still retried like any
timeout (``--once`` keeps failing over until ``--retry-timeout``); only the message changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper import sender
from shipper.errors import DeliveryError, HandshakeError
from tests.shipper.hostgen import make_container
from tests.shipper.test_sender import client, message
from tests.support.pipeline import Aggregator, run_shipper_once, start_aggregator

pytestmark = pytest.mark.integration

NO_HELO = "sent no HELO within {t:g} s: it does not expect --shared-key"


@pytest.fixture
def plain(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Aggregator]:
    """A ``logq-aggregator`` without ``--shared-key``."""
    agg = start_aggregator(str(tmp_path / "wh-plain"), _dir(tmp_path / "plain"), subprocess_env)
    yield agg
    agg.kill()


@pytest.fixture
def keyed(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Aggregator]:
    """A ``logq-aggregator --shared-key k``."""
    work = _dir(tmp_path / "keyed")
    agg = start_aggregator(str(tmp_path / "wh-keyed"), work, subprocess_env, "--shared-key", "k")
    yield agg
    agg.kill()


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_key_on_the_shipper_only_says_the_aggregator_expects_none(
    plain: Aggregator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender, "HANDSHAKE_TIMEOUT", 0.5)

    async def go() -> tuple[str, int]:
        c = client(plain.address, shared_key="k", give_up_after=1.0)
        try:
            with pytest.raises(DeliveryError) as err:
                await c.deliver(*message(1))
        finally:
            await c.close()
        return str(err.value), c.stats.retries.get(plain.address, 0)

    text, retries = asyncio.run(go())
    assert f"aggregator {plain.address} {NO_HELO.format(t=0.5)}; drop it here" in text, text
    assert "timed out" not in text, text
    # Retried like a timeout (not given up at the first failure as a wrong key is).
    assert retries >= 1


def test_once_with_the_key_fails_over_from_an_aggregator_without_one(
    plain: Aggregator, keyed: Aggregator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever endpoint the batch tries first, the keyed one takes it: no HELO is no reason to
    give up in ``--once`` (``give_up_after``), unlike a rejected key."""
    monkeypatch.setattr(sender, "HANDSHAKE_TIMEOUT", 0.5)

    async def go() -> list[str]:
        c = client(plain.address, keyed.address, shared_key="k", give_up_after=60.0)
        try:
            got = []
            for _ in range(4):
                got.append(str(await c.deliver(*message(1))))
            return got
        finally:
            await c.close()

    assert set(asyncio.run(go())) == {keyed.address}


def test_key_on_the_aggregator_only_says_pass_it(keyed: Aggregator) -> None:
    async def go() -> None:
        c = client(keyed.address, give_up_after=30.0)
        try:
            with pytest.raises(HandshakeError, match=r"requires a shared key; pass --shared-key"):
                await c.deliver(*message(1))
        finally:
            await c.close()

    asyncio.run(go())


def test_shipper_once_with_a_key_prints_the_cause(
    tmp_path: Path, plain: Aggregator, subprocess_env: dict[str, str]
) -> None:
    """The real program: one line on stderr naming the missing HELO, exit 1."""
    root = tmp_path / "containers"
    make_container(root, "a" * 64, "web", lines=["x"])
    done = run_shipper_once(
        plain.address,
        root,
        tmp_path / "state",
        subprocess_env,
        "--shared-key",
        "k",
        "--retry-timeout",
        "1",
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logq-shipper: cannot reach aggregator {plain.address}"), last
    assert NO_HELO.format(t=sender.HANDSHAKE_TIMEOUT) in last, last
