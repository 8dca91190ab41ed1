"""How long a discovery pass takes, and how long it holds the shipper's event loop.

    .venv/bin/python bench/discovery_stall.py [--containers 300] [--pods 0] [--files 0]
                                              [--passes 50] [--changed 0] [--src DIR]
                                              [--gone 0] [--stat-ms 0] [--age 2.5] [--removed 0]

Writes a host of ``--containers`` Docker json-file containers (a ``config.v2.json`` with the
labels of an ECS task and a dozen image labels), ``--pods`` CRI pod logs and ``--files`` plain
files (one ``--path`` glob), builds the daemon (:class:`shipper.daemon.Shipper`, its real
configuration) and runs ``--passes`` discovery passes as its follow mode does
(``Shipper._discover``, then ``Shipper._watch``: the folders inotify watches), 20 ms apart.
Meanwhile a probe on the same event loop wakes every millisecond and records how late it woke:
a pass that runs on the loop makes it wake late by the whole pass; one on another thread, by
the time the loop waits for the GIL (at most the interpreter's switch interval, 5 ms, once the
pass holds it). ``--changed`` rewrites that many ``config.v2.json`` before each pass (their
metadata is parsed again, as after ``docker update`` or at a deploy).

``--gone`` deletes the log files of that many containers after the first pass (their folders
stay: a rotation between rename and create, or a container's files going), and every pass
after it is handed to the daemon's bookkeeping (``Shipper._sync_sources``) with a source
"running" for each container found at the first pass (stand-ins: nothing is read or sent), so
each pass asks whether each of those sources is gone, as the daemon does for
:data:`~shipper.daemon.GONE_GRACE_SECONDS` after a file goes (the grace is started again at
each pass: nothing is drained). ``--stat-ms`` makes every look at a path in those containers'
folders take that long (a slow or hung NFS mount under the root): on the loop, each pass
stalls it by the looks at every gone source; on the discovery thread, not at all.

``--removed`` measures the start instead: that many containers removed while the shipper was
down, their checkpoints in the registry and their folders gone, each listing and ``stat`` of
their folders taking ``--stat-ms`` (a slow NFS mount, or a hung one at a large value). The
real daemon starts (``Shipper.run``, no aggregator: nothing is sent) and the script prints
how long after the start the sources found were all started, and when the start's verdicts
on the removed ones (``removed_while_down``) were all in; each verdict waits for its looks,
and the sources waited for all of them before they started.

Prints, for the first pass (every ``config.v2.json`` parsed) and the others (metadata cached):
the pass time (median, max) and the probe's lateness during the passes (p50, p99, max: the
loop's longest stall), next to its lateness while no pass runs (the machine's noise).
The passes start ``--age`` seconds after the host is written (a folder changed less than two
seconds before a pass is listed again at every pass: :mod:`shipper.listings`).
``--src`` runs the shipper of another checkout (e.g. ``git archive HEAD | tar -x -C /tmp/head``)
for a before/after comparison in the same minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

PROBE_SECONDS = 0.001
"""The probe's period: its lateness past this is the loop's stall."""
GAP_SECONDS = 0.02
"""Pause between passes (the probe's baseline is measured in them)."""


def make_host(root: Path, containers: int, pods: int, files: int) -> dict[str, Path]:
    """Docker containers with ECS-like metadata, CRI pod logs, plain files under ``root``."""
    docker, cri, plain = root / "docker", root / "pods", root / "files"
    for folder in (docker, cri, plain):
        folder.mkdir(parents=True)
    for i in range(containers):
        cid = f"{i:08x}" + "c" * 56
        labels = {
            "com.amazonaws.ecs.cluster": "arn:aws:ecs:eu-west-1:123456789012:cluster/prod",
            "com.amazonaws.ecs.container-name": "app",
            "com.amazonaws.ecs.task-arn": f"arn:aws:ecs:eu-west-1:123456789012:task/prod/{i:032x}",
            "com.amazonaws.ecs.task-definition-family": f"service-{i % 120}",
            "com.amazonaws.ecs.task-definition-version": "42",
            **{f"org.opencontainers.image.label{k}": "x" * 60 for k in range(12)},
        }
        write_config(docker / cid, cid, labels, i)
        (docker / cid / f"{cid}-json.log").write_bytes(b"")
    for i in range(pods):
        folder = (
            cri / f"team_service{i % 50}-5d8f7c9b6d-x{i:04d}_{i:08x}-0000-0000-0000-000000000000"
        )
        (folder / "app").mkdir(parents=True)
        (folder / "app" / "0.log").write_bytes(b"")
    for i in range(files):
        (plain / f"app{i}.log").write_bytes(b"")
    return {"docker": docker, "cri": cri, "plain": plain}


def write_config(folder: Path, cid: str, labels: dict[str, str], version: int) -> None:
    folder.mkdir(exist_ok=True)
    config = {
        "ID": cid,
        "Name": f"/ecs-service-{version}-app-e8a4c0",
        "Config": {"Image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1", "Labels": labels},
        "State": {"Running": True, "Pid": 1000 + version},
        "Version": version,
    }
    (folder / "config.v2.json").write_text(json.dumps(config))


@contextmanager
def slow_stats(folders: list[Path], seconds: float) -> Iterator[None]:
    """``os.stat`` and ``os.listdir`` of a path in ``folders`` (``os.path.isfile``, ``isdir``,
    ``Path.stat``...) sleep ``seconds`` first, the GIL released, as a call on a slow network
    mount does."""
    prefixes = tuple(f"{folder}/" for folder in folders)
    names = {str(folder) for folder in folders}
    real_stat: Callable[..., os.stat_result] = os.stat
    real_listdir: Callable[..., list[str]] = os.listdir

    def slow(path: Any) -> None:
        text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        if seconds and (text in names or text.startswith(prefixes)):
            time.sleep(seconds)

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        slow(path)
        return real_stat(path, *args, **kwargs)

    def listdir(path: Any = ".") -> list[str]:
        slow(path)
        return real_listdir(path)

    os.stat, os.listdir = stat, listdir  # type: ignore[assignment]
    try:
        yield
    finally:
        os.stat, os.listdir = real_stat, real_listdir


def write_removed(state: Path, docker: Path, count: int) -> list[Path]:
    """Checkpoints of ``count`` containers removed while the shipper was down, saved in the
    registry of ``state``: their folders under ``docker`` are not there. Returns the folders."""
    from shipper.checkpoint import FileState, Registry, file_key

    reg = Registry(state)
    folders = []
    try:
        for i in range(count):
            cid = f"{i:064x}"[::-1]
            folder = docker / cid
            path = folder / f"{cid}-json.log"
            reg.put(
                file_key(1, 10_000_000 + i, "f" * 16),
                FileState(f"docker:{cid}", str(path), f"sid{i}", 10, 10, seen=10),
            )
            folders.append(folder)
        reg.save()
    finally:
        reg.close()
    return folders


async def measure_start(
    args: argparse.Namespace, host: dict[str, Path], state: Path
) -> dict[str, Any]:
    """The start of the real daemon with ``--removed`` containers removed while it was down:
    seconds until every source found was started, and until the removed ones were judged."""
    from shipper.config import load_config
    from shipper.daemon import Shipper

    removed = write_removed(state, host["docker"], args.removed)
    argv = [
        *("--aggregator", "127.0.0.1:9", "--hostname", "bench", "--retry-timeout", "1"),
        *("--docker-root", str(host["docker"]), "--cri-root", str(host["cri"])),
        *("--path", f"{host['plain']}/*.log", "--state-dir", str(state)),
    ]
    logging.getLogger("logq").setLevel(logging.ERROR)  # a WARNING per removed container
    shipper = Shipper(load_config(argv))
    judged: list[float] = []
    t0 = time.perf_counter()
    shipper.metrics.count_loss = lambda *_: judged.append(time.perf_counter() - t0)
    wanted = args.containers + args.pods + args.files
    with slow_stats(removed, args.stat_ms / 1000):
        run = asyncio.create_task(shipper.run())
        while len(shipper.runners) < wanted:
            await asyncio.sleep(0.001)
        started = time.perf_counter() - t0
        while len(judged) < len(removed):
            await asyncio.sleep(0.001)
        shipper.request_stop()
        await run
    return {"started": started, "judged": judged[-1] if judged else 0.0, "sources": wanted}


class Probe:
    """Wakes every :data:`PROBE_SECONDS` on the loop; records how late each wake-up was,
    filed under what was running (a pass or not)."""

    def __init__(self) -> None:
        self.in_pass = False
        self.passes = 0
        """Passes started: one that started and ended while the probe slept counts too."""
        self.late: dict[bool, list[float]] = {True: [], False: []}
        self.sources = 0
        """Sources the first pass found."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + PROBE_SECONDS
            passes, during = self.passes, self.in_pass
            await asyncio.sleep(PROBE_SECONDS)
            during = during or self.in_pass or self.passes != passes
            self.late[during].append(max(loop.time() - due, 0.0))


async def measure(args: argparse.Namespace, host: dict[str, Path], state: Path) -> dict[str, Any]:
    from shipper.config import load_config
    from shipper.daemon import Shipper
    from shipper.inotify import DirectoryWatcher

    argv = [
        *("--aggregator", "127.0.0.1:9", "--hostname", "bench"),
        *("--docker-root", str(host["docker"]), "--cri-root", str(host["cri"])),
        *("--path", f"{host['plain']}/*.log", "--state-dir", str(state)),
    ]
    shipper = Shipper(load_config(argv))
    watcher = DirectoryWatcher.create()
    if watcher is not None:
        watcher.start(asyncio.get_running_loop())
    probe = Probe()
    prober = asyncio.create_task(probe.run())
    await asyncio.sleep(0.05)
    times: list[float] = []
    stalls: list[list[float]] = []
    folders = sorted(host["docker"].iterdir())
    gone = folders[: args.gone]
    try:
        with slow_stats(gone, args.stat_ms / 1000):
            await passes(args, shipper, watcher, probe, folders, gone, times, stalls)
    finally:
        prober.cancel()
        if watcher is not None:
            watcher.close()
        shipper.registry.close()
        await shipper.client.close()
    return {"times": times, "stalls": stalls, "idle": probe.late[False], "sources": probe.sources}


async def passes(
    args: argparse.Namespace,
    shipper: Any,
    watcher: Any,
    probe: Probe,
    folders: list[Path],
    gone: list[Path],
    times: list[float],
    stalls: list[list[float]],
) -> None:
    """``--passes`` passes as the follow mode runs them, each one's time and stalls noted."""
    for n in range(args.passes):
        for i in range(args.changed if n else 0):
            folder = folders[(n * args.changed + i) % len(folders)]
            write_config(folder, folder.name, {"logq.service": f"s{n}"}, n)
        before = len(probe.late[True])
        probe.in_pass = True
        probe.passes += 1
        t0 = time.perf_counter()
        scan = shipper._discover()
        if inspect.isawaitable(scan):  # the pass off the loop (after the change)
            scan = await scan
        if n and gone:
            shipper._sync_sources(scan)  # is each source missing gone? (stats)
            shipper._missing.clear()  # the grace starts again: every pass asks again
        if watcher is not None:
            covered = shipper._watch(watcher)
            if inspect.isawaitable(covered):
                await covered
        times.append(time.perf_counter() - t0)
        probe.in_pass = False
        await asyncio.sleep(GAP_SECONDS)
        stalls.append(probe.late[True][before:])
        if not n:
            probe.sources = len(scan.specs)
            if gone:
                # Stand-ins for the sources the daemon would run: nothing read or sent.
                for spec in scan.specs:
                    runner = types.SimpleNamespace(spec=spec, finishing=False, stopping=False)
                    shipper.runners[spec.key] = runner
                for folder in gone:
                    (folder / f"{folder.name}-json.log").unlink()


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<28} (none)"
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"  {name:<28} p50 {statistics.median(ms):7.2f} ms  p99 {p99:7.2f} ms  "
        f"max {ms[-1]:7.2f} ms  (n={len(ms)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--containers", type=int, default=300)
    ap.add_argument("--pods", type=int, default=0)
    ap.add_argument("--files", type=int, default=0)
    ap.add_argument("--passes", type=int, default=50)
    ap.add_argument("--changed", type=int, default=0, help="config.v2.json rewritten a pass")
    ap.add_argument("--src", type=Path, help="run the shipper of this checkout")
    ap.add_argument("--gone", type=int, default=0, help="containers whose log file goes")
    ap.add_argument("--age", type=float, default=2.5, help="seconds between writing and passes")
    ap.add_argument("--stat-ms", type=float, default=0.0, help="a look in their folders takes")
    ap.add_argument("--removed", type=int, default=0, help="containers removed while down")
    args = ap.parse_args()
    sys.path.insert(0, str(args.src or REPO))
    with tempfile.TemporaryDirectory(prefix="logq-discovery-") as tmp:
        host = make_host(Path(tmp), args.containers, args.pods, args.files)
        if args.removed:
            start = asyncio.run(measure_start(args, host, Path(tmp) / "state"))
            print(
                f"start: {start['sources']} sources found, {args.removed} containers removed "
                f"while down (a look there {args.stat_ms:g} ms), code {args.src or REPO}\n"
                f"  every source started after {start['started'] * 1000:8.1f} ms\n"
                f"  every removed one judged after {start['judged'] * 1000:8.1f} ms"
            )
            return
        # As on a host whose containers started a while ago: folders changed in the last two
        # seconds are listed again at every pass (shipper.listings.RECENT_NS).
        time.sleep(args.age)
        got = asyncio.run(measure(args, host, Path(tmp) / "state"))
    print(
        f"discovery: {args.containers} containers, {args.pods} pods, {args.files} files "
        f"({got['sources']} sources), {args.changed} configs changed a pass, "
        f"{args.gone} files gone (a stat there {args.stat_ms:g} ms), "
        f"code {args.src or REPO}"
    )
    print(row("first pass: time", got["times"][:1]))
    print(row("first pass: loop stall", got["stalls"][0]))
    print(row("next passes: time", got["times"][1:]))
    print(row("next passes: loop stall", [s for st in got["stalls"][1:] for s in st]))
    print(row("no pass: probe lateness", got["idle"]))


if __name__ == "__main__":
    main()
