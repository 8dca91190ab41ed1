"""Container churn: does the shipper keep something for every container it ever saw?

    .venv/bin/python bench/churn.py [--rounds 10] [--containers 200] [--lines 20]
                                    [--layout docker|cri] [--rotate] [--series-idle S]
                                    [--tracemalloc] [--src DIR] [--keep DIR]

Starts a real ``logq-aggregator`` (local warehouse) and a real ``logq-shipper`` in follow mode,
then runs ``--rounds`` rounds; each creates ``--containers`` Docker json-file containers
(``--layout cri``: Kubernetes pods under ``--cri-root``), each its own service, as Docker's
generated names or one-off jobs are; waits until every line is acknowledged, deletes their
folders (``docker rm``, the kubelet removing a pod) and waits until the shipper has ended
their sources. After each round it prints the shipper's resident memory (``VmRSS``), the size
of ``checkpoints.json`` and the sizes of its per-source structures: the runners, the
checkpoint registry, the tailers' memory of sources seen, discovery's caches, the file
watcher's subscriptions, the sender's endpoint ranking per source, the Prometheus series, the
objects the garbage collector tracks.

Those sizes are read inside the shipper process: the bench runs ``shipper.daemon.main`` (the
console script's entry point, unchanged) in a child whose event loop also writes them to a
JSON file every half second. ``--tracemalloc`` also records allocations (slower) and prints,
at the end, the source lines whose memory grew most between the end of the first round and
the end of the last. ``--rotate`` rotates each container's log once before removing it.
``--series-idle`` shortens the day after which a service without sources loses its series
(``shipper.metrics.SERVICE_SERIES_IDLE_SECONDS``), to see that they go. ``--src`` runs the
shipper of another checkout (e.g. ``git archive HEAD | tar -x -C /tmp/head``) for a
before/after comparison.

Memory that grows in the first rounds and then stays flat is the allocator's and the
interpreter's working set; memory that grows by the same amount every round is kept per
container.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

SIZES_SECONDS = 0.5
"""How often the child writes the sizes of the shipper's structures."""


# -- the child: the shipper, whose event loop also reports its structures ---------------------


def child(sizes_path: Path, argv: list[str]) -> int:
    """Run ``logq-shipper ARGV`` in this process, reporting its structures to ``sizes_path``.

    A file ``<sizes_path>.snap`` naming a path asks for a tracemalloc snapshot there. The
    figures are taken in the event loop's thread (a timer thread only asks for them):
    ``gc.get_objects()`` from another thread can catch a tuple the loop is building and make it
    fail with ``SystemError: bad argument to internal function``."""
    if os.environ.get("CHURN_TRACEMALLOC"):
        import tracemalloc

        tracemalloc.start(8)
    import asyncio

    import shipper.daemon as daemon
    import shipper.metrics

    idle = os.environ.get("CHURN_SERIES_IDLE")
    if idle and hasattr(shipper.metrics, "SERVICE_SERIES_IDLE_SECONDS"):
        shipper.metrics.SERVICE_SERIES_IDLE_SECONDS = float(idle)
        shipper.metrics.SWEEP_SECONDS = min(float(idle), shipper.metrics.SWEEP_SECONDS)

    found: list[tuple[Any, asyncio.AbstractEventLoop]] = []
    init = daemon.Shipper.__init__

    def capture(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        found.append((self, asyncio.get_running_loop()))

    daemon.Shipper.__init__ = capture  # type: ignore[method-assign]

    done = threading.Event()

    def report(the_shipper: Any) -> None:
        """In the event loop: write the sizes, take a snapshot if one is asked for."""
        try:
            sizes = structure_sizes(the_shipper)
            tmp = sizes_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(sizes))
            tmp.replace(sizes_path)
            request = sizes_path.with_suffix(".snap")
            if request.exists():
                import tracemalloc

                target = request.read_text().strip()
                gc.collect()
                if tracemalloc.is_tracing():
                    tracemalloc.take_snapshot().dump(target)
                request.unlink()
        finally:
            done.set()

    def ask() -> None:
        """Every SIZES_SECONDS, one report at a time: reports queued faster than the loop
        runs them would starve the shipper."""
        while True:
            time.sleep(SIZES_SECONDS)
            if not found:
                continue
            the_shipper, loop = found[0]
            done.clear()
            try:
                loop.call_soon_threadsafe(report, the_shipper)
            except RuntimeError:  # the loop is closed: the shipper is exiting
                return
            while not done.wait(5.0):
                if loop.is_closed():
                    return

    threading.Thread(target=ask, name="churn-sizes", daemon=True).start()
    return daemon.main(argv)


def structure_sizes(shipper: Any) -> dict[str, int]:
    """Entries of every per-source, per-file or per-service structure of a running shipper
    (attributes a checkout may not have count as -1)."""
    import shipper.discover as discover
    import shipper.fd_budget as fd_budget

    def size(obj: Any, *names: str) -> int:
        for name in names:
            obj = getattr(obj, name, None)
            if obj is None:
                return -1
        return len(obj)

    metrics = shipper.metrics
    # Label sets of the labelled metrics (what /metrics shows per service, path, endpoint);
    # counted without rendering them, which takes a while with tens of thousands.
    series = sum(
        len(getattr(m, "_metrics", None) or ())
        for m in vars(metrics).values()
        if getattr(m, "_labelnames", None)
    )
    watcher = shipper.file_watcher
    runners = list(shipper.runners.values())
    return {
        "lines_acked": shipper.lines_acked,
        "tick_age": round(time.monotonic() - metrics.last_tick),
        "runners": len(runners),
        "cursors": sum(len(r.tailer.cursors) for r in runners),
        "missing": size(shipper, "_missing"),
        "gauge_paths": size(shipper, "_gauge_paths"),
        "checkpoints": size(shipper, "registry", "_files"),
        "followed": size(shipper, "registry", "_followed"),
        "disc_cache": sum(
            max(size(shipper, "discoverer", name), 0) for name in ("_meta", "_specs", "_cri")
        ),
        "unlistable": size(discover, "_UNLISTABLE"),
        "fd_waiting": size(fd_budget, "_waiting"),
        "watch_subs": -1 if watcher is None else size(watcher, "_subscribers"),
        "watch_refused": -1 if watcher is None else size(watcher, "_refused"),
        "sender_ranks": size(shipper, "client", "_ranks"),
        "sender_health": size(shipper, "client", "_health"),
        "series": series,
        "gc_objects": len(gc.get_objects()),
    }


# -- the bench ------------------------------------------------------------------------------


def vm_rss_kib(pid: int) -> int:
    from bench.procfs import status_kib

    return status_kib(pid, "VmRSS")


def read_sizes(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def acked(sizes_path: Path, n: int) -> Callable[[], bool]:
    """Whether the shipper has ``n`` lines acknowledged."""
    return lambda: read_sizes(sizes_path).get("lines_acked", 0) >= n


def wait_for(what: str, check: Any, proc: Any, log: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise SystemExit(
                f"the shipper exited ({proc.returncode}) waiting for {what}, see {log}"
            )
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}, see {log}")
        time.sleep(0.2)


def write_containers(host: Path, round_no: int, args: argparse.Namespace) -> list[Path]:
    """One round's containers, each its own service; returns their live log files (what a
    removal deletes is the file's folder: the Docker container's, or the pod's for CRI)."""
    from tests.shipper.hostgen import cri_line, make_container

    logs = []
    for i in range(args.containers):
        lines = [f"round {round_no} container {i} line {k}" for k in range(args.lines)]
        if args.layout == "docker":
            cid = f"{round_no:08x}{i:056x}"
            logs.append(make_container(host, cid, f"job-{round_no}-{i}", lines=lines))
            continue
        pod = host / f"batch_job-{round_no}-{i}-x7k2q_{round_no:08x}-0000-4000-8000-{i:012x}"
        (pod / "main").mkdir(parents=True)
        log = pod / "main" / "0.log"
        log.write_bytes(b"".join(cri_line(text, k) for k, text in enumerate(lines)))
        logs.append(log)
    return logs


def removed_folder(log: Path, layout: str) -> Path:
    """What ``docker rm`` (the container's folder) or the kubelet (the pod's) deletes."""
    return log.parent if layout == "docker" else log.parent.parent


def rotate(logs: list[Path], round_no: int, args: argparse.Namespace) -> None:
    """Rotate each container's log once, as dockerd (``.1``) or the kubelet (``.<time>``)
    does: rename, then a new live file."""
    from tests.shipper.hostgen import cri_line, docker_line

    line = docker_line if args.layout == "docker" else cri_line
    suffix = ".1" if args.layout == "docker" else ".20261129-120000"
    for live in logs:
        live.rename(live.with_name(live.name + suffix))
        with open(live, "ab") as f:
            for k in range(args.lines):
                f.write(line(f"round {round_no} after rotation line {k}", k))


def run(args: argparse.Namespace, work: Path) -> None:
    from tests.support.pipeline import start_aggregator
    from tests.support.procs import start_group, stop_group

    env = dict(os.environ)
    agg = start_aggregator(str(work / "warehouse"), work, env, flush_interval=5)
    host = work / "containers"
    host.mkdir()
    state = work / "state"
    sizes_path = work / "sizes.json"
    child_env = dict(env)
    if args.tracemalloc:
        child_env["CHURN_TRACEMALLOC"] = "1"
    if args.series_idle is not None:
        child_env["CHURN_SERIES_IDLE"] = str(args.series_idle)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(sizes_path), "--"]
    cmd += ["--aggregator", agg.address, "--hostname", "churn"]
    none = str(work / "none")
    os.makedirs(none, exist_ok=True)  # a root given must exist
    docker, cri = (str(host), none) if args.layout == "docker" else (none, str(host))
    cmd += ["--docker-root", docker, "--cri-root", cri]
    cmd += ["--state-dir", str(state), "--log-level", "warning"]
    src = args.src or REPO
    child_env["PYTHONPATH"] = f"{src}{os.pathsep}{REPO}"
    log = work / "shipper.log"
    proc = start_group(cmd, log, env=child_env, cwd=src)
    snaps: list[Path] = []
    try:
        wait_for("the shipper to start", lambda: sizes_path.exists(), proc, log, 120)
        print(
            f"{args.rounds} rounds of {args.containers} containers x {args.lines} lines"
            f"{' (rotated once)' if args.rotate else ''}; after each round (containers "
            "removed, their sources ended):"
        )
        shown = (
            "runners", "checkpoints", "followed", "disc_cache", "watch_subs", "sender_ranks",
            "series", "gc_objects", "tick_age",
        )  # fmt: skip
        print(f"{'round':>5} {'seen':>6} {'RSS KiB':>9} {'ckpt B':>8} " + " ".join(shown))
        expected = 0
        first_rss = 0
        for r in range(1, args.rounds + 1):
            logs = write_containers(host, r, args)
            expected += args.containers * args.lines
            wait_for(
                f"round {r}'s lines to be acknowledged",
                acked(sizes_path, expected),
                proc,
                log,
            )
            if args.rotate:
                rotate(logs, r, args)
                expected += args.containers * args.lines
                wait_for(
                    f"round {r}'s rotated lines to be acknowledged",
                    acked(sizes_path, expected),
                    proc,
                    log,
                )
            for log in logs:
                shutil.rmtree(removed_folder(log, args.layout))
            wait_for(
                f"round {r}'s sources to end",
                lambda: read_sizes(sizes_path).get("runners", -1) == 0,
                proc,
                log,
            )
            time.sleep(2 * SIZES_SECONDS + 1.0)  # the last checkpoint save, fresh sizes
            sizes = read_sizes(sizes_path)
            rss = vm_rss_kib(proc.pid)
            first_rss = first_rss or rss
            ckpt = (state / "checkpoints.json").stat().st_size
            figures = " ".join(f"{sizes.get(k, -1):>{len(k)}}" for k in shown)
            print(f"{r:>5} {r * args.containers:>6} {rss:>9} {ckpt:>8} {figures}", flush=True)
            if args.tracemalloc and r in (1, args.rounds):
                snap = work / f"round-{r}.snap"
                sizes_path.with_suffix(".snap").write_text(str(snap))
                wait_for(
                    "a tracemalloc snapshot",
                    lambda: not sizes_path.with_suffix(".snap").exists(),
                    proc,
                    log,
                    300,
                )
                snaps.append(snap)
        rounds = max(args.rounds - 1, 1)
        grown = vm_rss_kib(proc.pid) - first_rss
        print(
            f"RSS grew {grown} KiB from round 1 to round {args.rounds}: "
            f"{grown * 1024 / (rounds * args.containers):.0f} B per container"
        )
    finally:
        stop_group(proc, timeout=30)
        agg.terminate()
    if len(snaps) == 2:
        top_growth(snaps[0], snaps[1])


def top_growth(before: Path, after: Path, n: int = 15) -> None:
    import tracemalloc

    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = new.filter_traces(keep).compare_to(old.filter_traces(keep), "lineno")
    print(f"memory grown most from round 1 to the last (tracemalloc, top {n}):")
    for stat in stats[:n]:
        frame = stat.traceback[0]
        name = (
            os.path.relpath(frame.filename, REPO)
            if REPO.as_posix() in frame.filename
            else frame.filename
        )
        print(
            f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
            f"{name}:{frame.lineno}"
        )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(Path(sys.argv[2]), sys.argv[4:]))
    sys.path.insert(0, str(REPO))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--lines", type=int, default=20)
    ap.add_argument("--layout", choices=["docker", "cri"], default="docker")
    ap.add_argument("--rotate", action="store_true", help="rotate each log once before removal")
    ap.add_argument("--tracemalloc", action="store_true", help="print where memory grew")
    ap.add_argument(
        "--series-idle",
        type=float,
        help="seconds without a source after which a service's series go (default: a day)",
    )
    ap.add_argument("--src", type=Path, help="run the shipper of this checkout")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args, args.keep)
        return
    with tempfile.TemporaryDirectory(prefix="logq-churn-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
