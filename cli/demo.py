"""``logq demo``: the whole pipeline on this machine in well under a minute, with real processes.

Steps: write a realistic Docker host (:mod:`cli.demohost`) to a fresh directory, start
``logq-aggregator`` on a free port of 127.0.0.1 with a local warehouse, run ``logq-shipper --once``
against the host, stop the aggregator with SIGTERM (it writes out everything it acknowledged),
then ask ``logq errors`` about one service and print the commands to try next. The programs run
as separate processes, exactly as an operator would run them, so the demo also proves the
installed console scripts work. The work directory is kept so the printed commands can be tried.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cli.demohost import Manifest, write_host
from cli.demoservices import SERVICES
from cli.textio import output_encoding

AGGREGATOR_READY_TIMEOUT = 30.0
SHIPPER_TIMEOUT = 120.0
AGGREGATOR_STOP_TIMEOUT = 60.0
QUERY_TIMEOUT = 60.0

_MODULES = {
    "logq": "cli.app",
    "logq-shipper": "shipper.daemon",
    "logq-aggregator": "aggregator.commands",
}


class DemoError(RuntimeError):
    """A demo step failed; the message says which step, why, and where its log is."""


def program(name: str) -> list[str]:
    """The command that runs one of our programs: the console script next to this Python,
    else one on PATH, else ``python -c 'from <module> import main; main()'``.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    return [
        sys.executable,
        "-c",
        f"import sys; from {_MODULES[name]} import main; sys.exit(main())",
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"    | {line}" for line in text)


@dataclass
class DemoPaths:
    """Where the demo keeps its pieces (all under one work directory)."""

    work: Path

    @property
    def host(self) -> Path:
        return self.work / "host" / "containers"

    @property
    def warehouse(self) -> Path:
        return self.work / "warehouse"

    @property
    def buffer(self) -> Path:
        return self.work / "buffer"

    @property
    def state(self) -> Path:
        return self.work / "state"

    @property
    def aggregator_log(self) -> Path:
        return self.work / "aggregator.log"

    @property
    def shipper_log(self) -> Path:
        return self.work / "shipper.log"


class Demo:
    """Runs the steps and prints one progress line per step."""

    def __init__(self, paths: DemoPaths, out: TextIO, env: dict[str, str]) -> None:
        self.paths = paths
        self.out = out
        self.env = env
        self.aggregator: subprocess.Popen | None = None
        self.port = 0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, n: int, text: str) -> None:
        self.say(f"[{n}/5] {text}")

    def done(self, text: str, since: float) -> None:
        self.say(f"      {text} ({time.monotonic() - since:.1f}s)")

    # -- steps -------------------------------------------------------------------------------

    def write_host(self, service: str, seed: int, requests: int) -> Manifest:
        t = time.monotonic()
        self.step(1, f"writing a demo Docker host to {self.paths.host}")
        known = [s.name for s in SERVICES]
        if service not in known:
            raise DemoError(f"step 1: no service {service!r} in the demo; pick one of {known}")
        try:
            manifest = write_host(
                self.paths.host, seed=seed, requests=requests, incident_service=service
            )
        except OSError as exc:
            raise DemoError(f"step 1: cannot write the demo host: {exc}") from exc
        counts = manifest.counts()
        lines = sum(sum(c.values()) for c in counts.values())
        self.done(
            f"{len(manifest.containers)} containers (Envoy sidecar + app for "
            f"{', '.join(manifest.services)}), {lines:,} log lines over the last 2 hours",
            t,
        )
        return manifest

    def start_aggregator(self) -> None:
        t = time.monotonic()
        self.port = free_port()
        cmd = [
            *program("logq-aggregator"),
            "--listen", f"127.0.0.1:{self.port}",
            "--warehouse", str(self.paths.warehouse),
            "--buffer-dir", str(self.paths.buffer),
            "--flush-interval", "1",
        ]  # fmt: skip
        self.step(2, f"starting logq-aggregator on 127.0.0.1:{self.port}")
        with open(self.paths.aggregator_log, "wb") as log:
            self.aggregator = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + AGGREGATOR_READY_TIMEOUT
        while not _port_open(self.port):
            if self.aggregator.poll() is not None:
                raise DemoError(
                    f"step 2: logq-aggregator exited with status {self.aggregator.returncode} "
                    f"before listening; its log ({self.paths.aggregator_log}):\n"
                    f"{_tail(self.paths.aggregator_log)}"
                )
            if time.monotonic() > deadline:
                raise DemoError(
                    f"step 2: logq-aggregator did not listen on 127.0.0.1:{self.port} within "
                    f"{AGGREGATOR_READY_TIMEOUT:.0f}s; its log ({self.paths.aggregator_log}):\n"
                    f"{_tail(self.paths.aggregator_log)}"
                )
            time.sleep(0.05)
        self.done("listening", t)

    def run_shipper(self) -> None:
        t = time.monotonic()
        cmd = [
            *program("logq-shipper"),
            "--aggregator", f"127.0.0.1:{self.port}",
            "--docker-root", str(self.paths.host),
            "--state-dir", str(self.paths.state),
            "--once",
        ]  # fmt: skip
        self.step(3, "shipping the host's logs: logq-shipper --once")
        with open(self.paths.shipper_log, "wb") as log:
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    timeout=SHIPPER_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise DemoError(
                    f"step 3: logq-shipper --once did not finish within {SHIPPER_TIMEOUT:.0f}s; "
                    f"its log ({self.paths.shipper_log}):\n{_tail(self.paths.shipper_log)}"
                ) from None
        if proc.returncode != 0:
            raise DemoError(
                f"step 3: logq-shipper --once exited with status {proc.returncode}; its log "
                f"({self.paths.shipper_log}):\n{_tail(self.paths.shipper_log)}"
            )
        self.done("every batch acknowledged", t)

    def stop_aggregator(self) -> None:
        t = time.monotonic()
        self.step(4, "stopping the aggregator (SIGTERM: it flushes what it acknowledged)")
        assert self.aggregator is not None
        self.aggregator.send_signal(signal.SIGTERM)
        try:
            status = self.aggregator.wait(AGGREGATOR_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.aggregator.kill()
            self.aggregator.wait()
            raise DemoError(
                f"step 4: logq-aggregator did not exit within {AGGREGATOR_STOP_TIMEOUT:.0f}s of "
                f"SIGTERM; its log ({self.paths.aggregator_log}):\n"
                f"{_tail(self.paths.aggregator_log)}"
            ) from None
        if status != 0:
            raise DemoError(
                f"step 4: logq-aggregator exited with status {status} after SIGTERM; its log "
                f"({self.paths.aggregator_log}):\n{_tail(self.paths.aggregator_log)}"
            )
        self.done(f"exited 0; {warehouse_summary(self.paths.warehouse)}", t)

    def query(self, service: str) -> None:
        cmd = [
            *program("logq"),
            "errors", "--service", service, "--since", "3h",
            "--warehouse", str(self.paths.warehouse), "--engine", "local",
        ]  # fmt: skip
        self.step(5, f"logq errors --service {service} --since 3h")
        self.out.flush()
        # On a terminal the CLI draws straight to it (colours, real width); otherwise its
        # output is copied into ``out``.
        direct = self.out is sys.stdout and sys.stdout.isatty()
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=None if direct else subprocess.PIPE,
                stderr=subprocess.PIPE,
                encoding=output_encoding(),  # UTF-8 under LC_ALL=C PYTHONUTF8=0 (cli.textio)
                errors="replace",
                env=self.env,
                timeout=QUERY_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DemoError(
                f"step 5: logq errors did not answer within {QUERY_TIMEOUT:.0f}s"
            ) from None
        if proc.stdout:
            self.out.write(proc.stdout)
        if proc.returncode != 0:
            raise DemoError(
                f"step 5: logq errors exited with status {proc.returncode}:\n{proc.stderr.strip()}"
            )

    def stop(self) -> None:
        """Never leave an aggregator running behind the user's back."""
        if self.aggregator is not None and self.aggregator.poll() is None:
            self.aggregator.kill()
            self.aggregator.wait()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def warehouse_summary(root: Path) -> str:
    """``N Parquet files: X envoy_access rows, Y container_logs rows`` for a local warehouse."""
    import pyarrow.parquet as pq

    parts = []
    files = 0
    for table in ("envoy_access", "container_logs"):
        rows = 0
        for path in sorted((root / table).rglob("*.parquet")):
            if path.name.startswith((".", "_")):
                continue
            files += 1
            rows += pq.ParquetFile(path).metadata.num_rows
        parts.append(f"{rows:,} {table} rows")
    return f"{files} Parquet files: " + ", ".join(parts)


#: Commands worth trying next, shown when the installed ``logq`` has them.
_SUGGESTIONS = (
    ("services", "logq services --since 3h"),
    ("errors", "logq errors --service {service} --since 1h --format json"),
    ("latency", "logq latency --service {service} --since 3h"),
    ("flags", "logq flags --since 3h"),
    ("upstreams", "logq upstreams --service {service} --since 3h"),
    ("timeline", "logq timeline --service {service} --since 1h"),
    ("tail", "logq tail --service {service} --since 3h --limit 20"),
    ("sql", 'logq sql "SELECT service, count(*) AS n FROM envoy_access GROUP BY service"'),
    ("ddl", "logq ddl    # the tables' Athena DDL, with partition projection"),
)


def cli_commands() -> set[str] | None:
    """Names of the subcommands the installed ``logq`` has (None when they cannot be listed)."""
    try:
        import typer

        from cli.app import app

        group = typer.main.get_command(app)
        return set(getattr(group, "commands", {}))
    except Exception:
        return None


def next_steps(warehouse: Path, service: str) -> str:
    """What to run next against the demo warehouse (only commands that exist)."""
    known = cli_commands()
    lines = ["", "Next, try (the warehouse is kept until you delete it):"]
    bin_dir = Path(sys.executable).parent
    on_path = any(
        Path(p).resolve() == bin_dir.resolve()
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p
    )
    if not on_path:
        # `make demo` runs the venv's logq; the user's shell does not have it yet.
        lines.append(f"  source {bin_dir / 'activate'}    # puts logq on your PATH")
    lines.append(f"  export LOGQ_WAREHOUSE={warehouse}")
    engine = os.environ.get("LOGQ_ENGINE", "")
    if engine.strip() and engine.strip().lower() != "local":
        # Set up for Athena: the commands below would ask Athena, not this local warehouse.
        lines.append(f"  export LOGQ_ENGINE=local    # was {shlex.quote(engine)}; Athena reads S3")
    for command, text in _SUGGESTIONS:
        if known is None or command in known:
            lines.append("  " + text.format(service=service))
    lines.append(f"  rm -rf {warehouse.parent}    # when done")
    return "\n".join(lines)


def run_demo(
    workdir: Path | None = None,
    service: str = "recipe",
    seed: int = 7,
    requests: int = 3000,
    out: TextIO | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Run the demo; returns the process exit status (0 on success, 1 with a reason printed).

    ``workdir`` (default: a new temp directory) must be empty or missing; ``extra_env`` is
    added to the programs' environment (tests use it; users need nothing).
    """
    out = out or sys.stdout
    work = workdir or Path(tempfile.mkdtemp(prefix="logq-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("LOGQ_WAREHOUSE", None)  # the flags say where; a user's setting must not leak in
    env.update(extra_env or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    demo = Demo(DemoPaths(work), out, env)
    started = time.monotonic()
    try:
        demo.write_host(service, seed, requests)
        demo.start_aggregator()
        demo.run_shipper()
        demo.stop_aggregator()
        demo.query(service)
    except DemoError as exc:
        print(f"\nlogq demo failed at {exc}", file=out)
        print(f"(work directory kept for inspection: {work})", file=out)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=out)
        return 130
    finally:
        demo.stop()
    print(f"\nDemo finished in {time.monotonic() - started:.1f}s.", file=out)
    print(next_steps(demo.paths.warehouse, service), file=out)
    return 0
