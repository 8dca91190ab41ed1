"""What the bench scripts read from the processes they run: /proc figures and Prometheus metrics.

No psutil here: peak RSS is ``VmHWM`` from ``/proc/<pid>/status`` (the kernel's high-water mark
of resident memory, reset by exec, so it is the program's own figure and not the bench's), CPU
time is ``utime + stime`` from ``/proc/<pid>/stat``. Both must be read while the process is
still alive, i.e. just before it is stopped.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


@dataclass(frozen=True)
class Usage:
    """Resource figures of one process, read just before it was stopped."""

    name: str
    peak_rss_kib: int
    """``VmHWM``: the peak resident set size."""
    cpu_seconds: float
    """User + system CPU time of the process (its threads included, children not)."""


def status_kib(pid: int, key: str) -> int:
    """One ``/proc/<pid>/status`` figure (``VmHWM``, ``VmRSS``) in KiB; 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (``/proc/<pid>/stat`` fields 14 and 15)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces; the fields after it follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def thread_cpu(pid: int) -> dict[tuple[int, str], float]:
    """User + system CPU seconds of each live thread of ``pid``, keyed by (thread id, name)."""
    out: dict[tuple[int, str], float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[(int(tid), name)] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return out


def usage(name: str, proc: subprocess.Popen) -> Usage:
    """The figures of a process that is still running (call right before stopping it)."""
    return Usage(name, status_kib(proc.pid, "VmHWM"), cpu_seconds(proc.pid))


def scrape(port: int, timeout: float = 5.0) -> dict[str, float]:
    """A Prometheus ``/metrics`` page as ``{name: value}``, labelled samples summed per name."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            try:
                out[match[1]] = out.get(match[1], 0.0) + float(match[3])
            except ValueError:
                continue
    return out


def scrape_or_empty(port: int) -> dict[str, float]:
    """:func:`scrape`, or ``{}`` while the endpoint is not up (yet) or too busy to answer."""
    try:
        return scrape(port)
    except OSError:
        return {}
