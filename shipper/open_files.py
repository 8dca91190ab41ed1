"""The soft limit on open files raised to the hard one at start-up (both programs use it).

systemd and most container runtimes start services with a soft limit of 1024: a shipper on a
host with hundreds of containers (it holds rotated files open while an aggregator is down), or
an aggregator with many clients, reaches it, and then neither sockets nor files can be opened.
The hard limit is the administrator's ceiling; the soft one only protects old programs that use
``select()``, which asyncio does not (it uses epoll). Going up to the hard limit is what every Go
program (dockerd, containerd, Promtail) has done at start-up since Go 1.19.
"""

from __future__ import annotations

import logging


def raise_open_files_limit(log: logging.Logger) -> tuple[int | None, int | None]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit, saying so on ``log``; returns the
    soft limit (before, now), None for unlimited (or not a Unix system)."""
    try:
        import resource
    except ImportError:  # not a Unix system
        return None, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    before = None if soft == inf else soft
    shown = "unlimited" if hard == inf else str(hard)
    target = _nr_open() if hard == inf else hard
    if before is None or before >= target:
        log.info("open files limit soft=%s hard=%s", before or "unlimited", shown)
        return before, before
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit soft=%d hard=%s error=%s", soft, shown, exc)
        return before, before
    log.info("open files limit raised soft=%d was=%d hard=%s", target, soft, shown)
    return before, target


def _nr_open() -> int:
    """The kernel's ceiling on a process's open files (RLIM_INFINITY is refused)."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 1 << 20
