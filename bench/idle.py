"""What idle sources cost the shipper, and how fast a line written to an idle file arrives.

    .venv/bin/python bench/idle.py [--sources 500] [--seconds 20] [--appends 50]
                                   [--mode both|inotify|poll] [--src DIR] [--ceiling S]
                                   [--pods]

Writes N Docker json-file containers (``config.v2.json`` and one line each; with ``--pods``,
N Kubernetes pods instead: ``<namespace>_<pod>_<uid>/app/0.log`` under ``--cri-root``, CRI
lines, as a kubelet writes them), starts a real
``logq-shipper`` (follow mode, default ``--poll-interval 0.25``) sending to the tests' Forward
receiver (in this process: it acks every chunk), waits until every first line arrived, then:

* CPU: the shipper's user + system seconds (``/proc/<pid>/stat``) per wall second over
  ``--seconds`` while nothing is written (100 % = one core), and its resident memory then;
* latency: ``--appends`` lines, each appended to another idle file (0.3-0.6 s apart), timed from
  the write to its arrival at the receiver: p50, p99, max.

``--mode poll`` runs the same shipper with its file watcher disabled (what every source did
before: look at its file every ``--poll-interval``); ``both`` runs poll then inotify. ``--src``
runs the shipper of another checkout (e.g. ``git archive HEAD | tar -x -C /tmp/head``);
``--ceiling`` sets the longest idle wait of a watched source (what the safety net costs).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procfs import cpu_seconds, status_kib  # noqa: E402
from tests.shipper.hostgen import cri_line, docker_line, make_container  # noqa: E402
from tests.shipper.receiver import Receiver  # noqa: E402
from tests.support.procs import start_group, stop_group  # noqa: E402

POLL_ONLY = (
    "import sys, shipper.inotify as i; "
    "i.FileWatcher.create = classmethod(lambda cls: None); "
    "from shipper.daemon import main; sys.exit(main(sys.argv[1:]))"
)
"""The shipper with no file watcher: every source polls (``FileWatcher.create`` failing)."""
CEILING = (
    "import sys, shipper.source as s; s.IDLE_CEILING_SECONDS = float(sys.argv[1]); "
    "from shipper.daemon import main; sys.exit(main(sys.argv[2:]))"
)
"""The shipper with another ceiling on the idle wait (``--ceiling``)."""


def run(mode: str, args: argparse.Namespace, host: Path, work: Path) -> dict[str, float]:
    receiver = Receiver()
    state = work / f"state-{mode}"
    cmd = [sys.executable]
    if mode == "poll":
        cmd += ["-c", POLL_ONLY]
    elif args.ceiling is not None:
        cmd += ["-c", CEILING, str(args.ceiling)]
    else:
        cmd += ["-m", "shipper.daemon"]
    cmd += ["--aggregator", receiver.address, "--hostname", "bench"]
    (work / "none").mkdir(exist_ok=True)  # a root given must exist
    docker, cri = (work / "none", host) if args.pods else (host, work / "none")
    cmd += ["--docker-root", str(docker), "--cri-root", str(cri)]
    cmd += ["--state-dir", str(state), "--log-level", "warning"]
    proc = start_group(cmd, work / f"shipper-{mode}.log", cwd=args.src or REPO)
    try:
        deadline = time.monotonic() + 300
        while len(receiver.records) < args.sources:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"shipper did not ship the first lines, see {work}")
            time.sleep(0.2)
        time.sleep(3.0)  # let the start settle (new watches, last checkpoint save)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        rss = status_kib(proc.pid, "VmRSS") / 1024
        latencies = appends(receiver, host, args)
    finally:
        stop_group(proc, timeout=20)
        receiver.close()
    lat = sorted(latencies)
    return {
        "cpu": cpu,
        "rss": rss,
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
        "max": lat[-1],
    }


def appends(receiver: Receiver, host: Path, args: argparse.Namespace) -> list[float]:
    rng = random.Random(7)
    logs = sorted(host.glob("*/app/0.log" if args.pods else "*/*-json.log"))
    line = cri_line if args.pods else docker_line
    out: list[float] = []
    for k, log in enumerate(rng.sample(logs, min(args.appends, len(logs)))):
        time.sleep(rng.uniform(0.3, 0.6))
        seen = len(receiver.records)
        text = f"probe-{k}-{time.monotonic_ns()}"
        with open(log, "ab") as f:
            start = time.monotonic()
            f.write(line(text, 10 + k))
        deadline = start + 60
        while True:
            records = receiver.records[seen:]
            if any(r[2].get("log") == text for r in records):
                out.append(time.monotonic() - start)
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"line {text} did not arrive within 60 s")
            time.sleep(0.001)
    return out


def make_pod(root: Path, i: int) -> Path:
    """A kubelet's pod log folder with one container (``app``) and one CRI line."""
    folder = root / f"team_svc{i}-5d8f7c9b6d-x{i:04d}_{i:08x}-0000-0000-0000-000000000000" / "app"
    folder.mkdir(parents=True)
    path = folder / "0.log"
    path.write_bytes(cri_line("hello"))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sources", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--appends", type=int, default=50)
    ap.add_argument("--mode", choices=["both", "inotify", "poll"], default="both")
    ap.add_argument("--pods", action="store_true", help="Kubernetes pods (CRI), not Docker")
    ap.add_argument("--src", type=Path, help="run the shipper of this checkout")
    ap.add_argument(
        "--ceiling", type=float, help="inotify mode: longest idle wait (default: the shipper's)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="logq-idle-") as tmp:
        work = Path(tmp)
        host = work / "containers"
        for i in range(args.sources):
            if args.pods:
                make_pod(host, i)
            else:
                make_container(host, f"{i:064x}", f"svc{i}", lines=["hello"])
        modes = ["poll", "inotify"] if args.mode == "both" else [args.mode]
        kind = "pods" if args.pods else "containers"
        print(f"{args.sources} idle {kind}, --poll-interval 0.25, {args.seconds:g} s measured")
        for mode in modes:
            r = run(mode, args, host, work)
            print(
                f"{mode:8s} CPU {r['cpu']:.2%} of a core, RSS {r['rss']:.0f} MB; append->arrival "
                f"p50 {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms, "
                f"max {r['max'] * 1000:.0f} ms ({args.appends} appends)",
                flush=True,
            )


if __name__ == "__main__":
    main()
