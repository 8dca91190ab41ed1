"""A shipper sending to a test :class:`~tests.shipper.receiver.Receiver`: its arguments, and the
stop of one driven in-process (``Shipper`` run on the test's own event loop)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from shipper.config import Config, load_config
from shipper.daemon import Shipper
from tests.shipper.receiver import Receiver


def shipper_args(
    tmp_path: Path,
    receiver: Receiver,
    *extra: str,
    docker: Path | None = None,
    cri: Path | None = None,
) -> list[str]:
    """Arguments of a shipper that sends to ``receiver`` as host ``h``, with its state under
    ``tmp_path/state``, the Docker and CRI roots given (else an empty folder), then
    ``extra``."""
    none = empty_root(tmp_path)
    return [
        *("--aggregator", receiver.address, "--hostname", "h"),
        *("--docker-root", str(docker or none), "--cri-root", str(cri or none)),
        *("--state-dir", str(tmp_path / "state")),
        *extra,
    ]


#: The repository's folder: ``python -m shipper.daemon`` runs its code from there.
REPO = Path(__file__).resolve().parents[2]


def run_once(tmp_path: Path, receiver: Receiver, *extra: str) -> subprocess.CompletedProcess[str]:
    """``logq-shipper --once`` (:func:`shipper_args` then ``extra``) as a child process, checked
    to exit 0; its output for the test's own assertions."""
    args = shipper_args(tmp_path, receiver, *extra, "--once")
    done = subprocess.run(
        [sys.executable, "-m", "shipper.daemon", *args, "--retry-timeout", "5"],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def failover_args(tmp_path: Path, docker: Path, state: str, *receivers: Receiver) -> list[str]:
    """A shipper of ``docker``'s containers sending to ``receivers`` (each source's first
    choice by rendezvous hashing, as always), polling its files every 50 ms, its state under
    ``tmp_path/state`` (a copy of a killed one's, for a restart)."""
    args = shipper_args(tmp_path, receivers[0], "--poll-interval", "0.05", docker=docker)
    args[args.index(str(tmp_path / "state"))] = str(tmp_path / state)
    for other in receivers[1:]:
        args += ["--aggregator", other.address]
    return args


def empty_root(tmp_path: Path, name: str = "none") -> Path:
    """An empty folder ``tmp_path/name`` (made if missing) for a log root the test does not
    use: a ``--docker-root`` / ``--cri-root`` given that does not exist is an error."""
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def quick_config(tmp_path: Path, receiver: Receiver, docker: Path) -> Config:
    """The loaded config of a shipper of ``docker``'s containers that polls its files every
    50 ms and looks for new ones every 200 ms (tests that follow files as they change)."""
    args = ("--poll-interval", "0.05", "--discover-interval", "0.2")
    return load_config(shipper_args(tmp_path, receiver, *args, docker=docker))


async def stop_runners(shipper: Shipper) -> None:
    """Stop a shipper whose sources were started by hand (``_sync_sources``, no ``run()``):
    its runners, its client and its registry."""
    for runner in list(shipper.runners.values()):
        runner.stopping = True
    await asyncio.gather(*(r.task for r in list(shipper.runners.values()) if r.task))
    await shipper.client.close()
    shipper.registry.close()


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait on the running loop until ``check()`` holds (a TimeoutError after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def first_choice(one: Receiver, two: Receiver) -> tuple[Receiver, Receiver]:
    """Once a file's first line reached ``one`` or ``two``: (its first choice, the other)."""
    await until(lambda: len(one.lines()) + len(two.lines()) == 1)
    return (one, two) if one.lines() else (two, one)


def plain_id(value: object) -> str | None:
    """A parametrize id without ``::`` (IPv6 addresses): ``make test``'s ``--dist loadscope``
    cuts test ids at their last ``::`` to find the module, so such a case ran on its own,
    apart from its module. None: pytest's own id."""
    return value.replace("::", ": :") if isinstance(value, str) else None


def scrape_lost(port: int, service: str, reason: str) -> float | None:
    """``service``'s ``logq_shipper_files_lost_total`` for ``reason`` in one scrape of the
    metrics a shipper serves on 127.0.0.1 (None: no such series, or not serving yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except urllib.error.URLError:
        return None
    want = f'logq_shipper_files_lost_total{{reason="{reason}",service="{service}"}} '
    for line in text.splitlines():
        if line.startswith(want):
            return float(line[len(want) :])
    return None
