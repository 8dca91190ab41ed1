"""Allocator settings for the aggregator process, applied once at start (:func:`tune_memory`).

Why: the aggregator's peak RSS was ~400 MiB at 1M lines (bench/ingest.py, local disk) while
Arrow itself never held more than ~80 MiB at once (``max_memory()`` of its pool) and Python and
the rest another ~40 MiB over the ~80 MiB an idle process takes. The gap was allocator caches:

* pyarrow's default pool in these wheels is mimalloc. It reserves a 1 GiB arena and kept ~200
  MiB of it resident although ``release_unused()`` is called after every flush (its purge
  delay and segment caching keep freed pages). The *system* pool (glibc malloc) hands the same
  pages back: Arrow's ``release_unused()`` on that pool is ``malloc_trim(0)``, which the flusher
  already calls after each segment. Measured (pool chosen through the environment, see
  below): ~400 -> ~285 MiB, same CPU per line.
* glibc gives a thread that mallocs under contention an arena of its own (up to 8 per core):
  the Parquet write threads, Arrow's CPU pool, the AWS SDK's S3 threads and the asyncio worker
  threads each pin the free memory of their own arena. ``M_ARENA_MAX`` = :data:`ARENA_MAX`
  shares two between them: a further ~10-25 MiB less, same CPU.

Measured and NOT done: a fixed ``M_MMAP_THRESHOLD`` (1-16 MiB) cut another ~10-30 MiB but cost
10-35% more CPU (every large Arrow buffer then is a fresh mmap, page faults and munmap);
jemalloc with ``decay_ms=0`` came out near the system pool in memory but ~25% more CPU, as did
mimalloc with ``MIMALLOC_PURGE_DELAY=0``; a one-thread Arrow CPU pool changed nothing.

Set at run time, the pool covers what pyarrow allocates (tables, compute, Parquet writes), but
Arrow's C++ code that takes its *native* default pool (S3 output streams, IPC writes) keeps
using the pool chosen from ``ARROW_DEFAULT_MEMORY_POOL`` when pyarrow loaded, and an arena limit
only binds threads that had none yet (the AWS SDK starts its threads when the warehouse is
opened). So the full saving needs the native pool chosen before pyarrow loads: the environment
``ARROW_DEFAULT_MEMORY_POOL=system MALLOC_ARENA_MAX=2`` set before the process starts, or
:func:`tune_memory_early` called before anything imports pyarrow. Measured peak RSS, before ->
run time only -> environment: local disk ~390 -> ~318 -> ~285 MiB; two aggregators writing to
SeaweedFS ~485-530 -> ~440-480 -> ~310-330 MiB each. The log line at start names
Arrow's native pool.

The operator's environment wins: with ``ARROW_DEFAULT_MEMORY_POOL`` set the pool is left as
Arrow chose it, with ``MALLOC_ARENA_MAX`` set glibc has already applied that value.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: tune_memory_early() must run before pyarrow loads
    import pyarrow as pa

log = logging.getLogger("logq.aggregator.memory")

#: Arrow pool the aggregator uses unless ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise.
ARROW_POOL = "system"
#: glibc malloc arenas shared by all threads unless ``MALLOC_ARENA_MAX`` says otherwise.
ARENA_MAX = 2
#: ``mallopt`` parameter number of ``M_ARENA_MAX`` (glibc's malloc.h).
M_ARENA_MAX = -8


@dataclass(frozen=True)
class MemorySettings:
    """What :func:`tune_memory` left in force (logged at start, and for tests)."""

    arrow_pool: str
    """Backend of pyarrow's default pool: ``system``, ``mimalloc`` or ``jemalloc``."""
    native_pool: str
    """Backend of Arrow's C++ default pool, fixed when pyarrow loaded (S3 and IPC buffers)."""
    arena_max: int | None
    """glibc's arena limit as set here or by ``MALLOC_ARENA_MAX``; None: glibc's default (or
    not glibc)."""
    source: str
    """``tuned`` (set here), ``environment`` (an operator's variable won) or a mix."""

    def describe(self) -> str:
        arenas = "glibc default" if self.arena_max is None else str(self.arena_max)
        text = f"arrow pool {self.arrow_pool}, malloc arenas {arenas} ({self.source})"
        if self.native_pool != self.arrow_pool:
            text += (
                f"; Arrow's native pool stays {self.native_pool} "
                f"(set ARROW_DEFAULT_MEMORY_POOL={self.arrow_pool} before start to move it too)"
            )
        return text


def tune_memory_early() -> bool:
    """Choose Arrow's native pool and limit the arenas before pyarrow loads; True if in time.

    Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once, at the first use of its native default pool:
    here it is set for that moment only (so child processes inherit nothing) and that first use
    is made. Also limits glibc's arenas while no worker thread exists yet. Does nothing once
    pyarrow is imported or when the operator set the variable. :func:`tune_memory` still runs
    at start (it completes the settings and logs them).
    """
    if "pyarrow" in sys.modules or os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return False
    _arena_max()
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = ARROW_POOL
    try:
        import pyarrow as pa

        pa.default_memory_pool()  # fixes the native default from the variable
    finally:
        del os.environ["ARROW_DEFAULT_MEMORY_POOL"]
    return True


def tune_memory() -> MemorySettings:
    """Apply the pool and arena settings; call once at process start, before the workers.

    An arena limit binds threads that first allocate after it is set, so the earlier the
    better; the pool applies to every Arrow allocation from then on.
    """
    import pyarrow as pa

    sources = set()
    native = pa.default_memory_pool().backend_name  # pyarrow's default starts as the native one
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        sources.add("environment")
    else:
        pa.set_memory_pool(_pool(ARROW_POOL))
        sources.add("tuned")
    arena_max = _arena_max()
    sources.add("environment" if os.environ.get("MALLOC_ARENA_MAX") else "tuned")
    settings = MemorySettings(
        arrow_pool=pa.default_memory_pool().backend_name,
        native_pool=native,
        arena_max=arena_max,
        source="+".join(sorted(sources)),
    )
    log.info("memory: %s", settings.describe())
    return settings


def _pool(name: str) -> pa.MemoryPool:
    import pyarrow as pa

    factories = {
        "system": pa.system_memory_pool,
        "mimalloc": pa.mimalloc_memory_pool,
        "jemalloc": pa.jemalloc_memory_pool,
    }
    return factories[name]()


def _arena_max() -> int | None:
    """Limit glibc's arenas (unless the environment did); the limit in force, None if unknown."""
    from_env = os.environ.get("MALLOC_ARENA_MAX", "")
    if from_env:
        return int(from_env) if from_env.isascii() and from_env.isdigit() else None  # not ²
    libc = _glibc()
    if libc is None:
        return None
    if libc.mallopt(M_ARENA_MAX, ARENA_MAX) != 1:  # 1: accepted
        log.warning("mallopt(M_ARENA_MAX, %d) refused; glibc's default arenas stay", ARENA_MAX)
        return None
    return ARENA_MAX


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (musl's ``mallopt`` is a no-op stub)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
