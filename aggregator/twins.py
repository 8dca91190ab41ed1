"""Two processes under one node id: a copied ``--buffer-dir`` refused at start-up.

Object keys are ``<node-id>-<segment>-<part>``, so two aggregators with one node id overwrite
each other's Parquet objects: the same segment number of each is the same key, and the one
written last wins (acknowledged lines of the other are lost). The buffer lock (buffer.py) keeps
a second process off the *same* directory; a *copy* of it (a cloned volume, a PVC or EBS
snapshot restored for a new instance, an AMI carrying the buffer, ``cp -a`` / rsync) carries
the ``node-id`` file, and nothing local tells it apart from the original: a block-level clone
keeps even the inode numbers, and a legitimate move (a volume re-attached on another host, a
directory copied to a bigger disk while its aggregator is stopped) looks the same as a copy.

What does tell them apart is whether the original still runs. Each node rewrites its
heartbeat ``_ledger/_nodes/<node-id>.json`` after every flush pass (ledger.py), and the
heartbeat names the process that wrote it (:class:`ProcessToken`: host name, boot id, pid and
its start time). At start-up (:func:`live_twin`), before this process writes anything under
its node id:

* no heartbeat, or a stale one (older than the 10 flush intervals plus a minute after which
  peers count a node as down): nobody runs under this id; start.
* a fresh heartbeat of a process on this host (same boot id and host name) that no longer
  exists (its pid is gone or belongs to a process started at another time): the previous run
  of this buffer dir, killed or crashed a moment ago (``kill -9``, an OOM kill, a container
  restart in the same pod); start at once.
* otherwise (a process on another host, or one still running here): watch the heartbeat for
  two of its flush intervals plus :data:`NEXT_BEAT_SLACK_S`, by this host's clock (the
  heartbeat's own time is its writer's, which may run ahead or behind). A live
  writer rewrites it by then: that is a twin, and the start is refused (exit 2, see
  :class:`TwinRunning`). Not rewritten: its writer is gone (a pod rescheduled to another host
  with its volume after a crash); start. That wait is the only delay, and only in that case.

What counts as a copy is therefore "a buffer dir whose node id a live process is using", however
the copy was made; a directory moved or copied while its aggregator is stopped is no copy.
Not detected at start: a twin whose flushes take longer than that window (or are failing, so
that it writes no heartbeat), and two copies started within one flush interval of each other.
The clean stop of either then leaves the heartbeat it did not write in place (:meth:`Ledger.forget
<aggregator.ledger.Ledger.forget>`), with a WARNING that names the other process.

The right recovery for a refused copy is an *empty* ``--buffer-dir`` (a new node id): the
copy's segments hold the original's lines, which the original writes itself; replayed under a
new node id they would be stored twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aggregator.ledger import Heartbeat, Ledger

log = logging.getLogger("logq.aggregator.twins")

#: Seconds beyond two flush intervals that a running node may take to rewrite its heartbeat
#: (a flush pass writes it once its segments are written: their upload time counts).
NEXT_BEAT_SLACK_S = 10.0
#: Where Linux says which boot this is (the same in every container of a host).
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ProcessToken:
    """Which process wrote a heartbeat: enough to tell a previous run on this host, which can
    be proved gone, from a process elsewhere or still running."""

    host: str
    """Host name (a pod's name on Kubernetes, a container's id under Docker)."""
    boot: str
    """The kernel's boot id ("" off Linux): pids and start times compare only within one."""
    pid: int
    ticks: int
    """Start time of the process in clock ticks since boot (``/proc/<pid>/stat``; 0 if not
    known): with the pid, one process of one boot, even after its pid is reused."""
    started: float
    """Unix time at which the process started (for people reading the file)."""

    def as_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: object) -> ProcessToken | None:
        """The token of a heartbeat document's ``process`` field; None when absent (a version
        before it) or malformed."""
        if not isinstance(doc, dict):
            return None
        try:
            return cls(
                str(doc["host"]),
                str(doc["boot"]),
                int(doc["pid"]),
                int(doc["ticks"]),
                float(doc["started"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def gone_from_this_host(self) -> bool:
        """Whether this process provably no longer runs: it ran on this host in this boot,
        and its pid is free or belongs to a process started at another time. False when that
        cannot be known (another host or boot, no /proc): it may be running."""
        here = this_process()
        if not self.boot or self.boot != here.boot or self.host != here.host or not self.ticks:
            return False
        return _start_ticks(self.pid) != self.ticks

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))
        return f"host {self.host}, pid {self.pid}, started {started}"


@cache
def this_process() -> ProcessToken:
    """The token of the running process (the same for its whole life)."""
    try:
        boot = BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        boot = ""
    pid = os.getpid()
    return ProcessToken(socket.gethostname(), boot, pid, _start_ticks(pid) or 0, time.time())


def _start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None if there is no such
    process running (none, a zombie: killed and not yet reaped by its parent; or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        # The command name (field 2) is in parentheses and may hold spaces or ')': split
        # after its last ')'. The state is field 3, starttime field 22.
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


class TwinRunning(OSError):
    """Another live process writes this node id's heartbeat: this buffer dir is a copy of its
    buffer dir (or the other one is a copy of this one, or ``--node-id`` gives two instances
    one id). The message says what happened and what to do; the program exits 2."""

    def __init__(
        self,
        node_id: str,
        buffer_dir: str,
        other: ProcessToken | None,
        age: float,
        draining: bool = False,
    ):
        who = other.describe() if other is not None else "a process of an older version"
        todo = (
            "Do not drain it: that node writes these segments itself (drained as well, its "
            "newer objects would be overwritten by the copy's older ones); delete the copy"
            if draining
            else "Start this instance with an empty --buffer-dir (it gets a new node id) and "
            "delete the copy: its segments hold the other node's lines, which that node "
            "writes itself (replayed under a new id they would be stored twice). If the other "
            "process is the copy, stop it, move its buffer aside, and start this one again"
        )
        super().__init__(
            f"node id {node_id} (--buffer-dir {buffer_dir}) is in use by another running "
            f"logq-aggregator ({who}): it rewrote its heartbeat _ledger/_nodes/{node_id}.json "
            f"{age:.0f}s ago. This --buffer-dir is a copy of that node's (a cloned volume, a "
            "restored snapshot, cp/rsync), or both were given the same --node-id; two "
            f"processes with one node id overwrite each other's Parquet objects. {todo}"
        )


def live_twin(
    ledger: Ledger, stop: threading.Event, poll: float = 1.0
) -> tuple[Heartbeat, float] | None:
    """The heartbeat of a live process using ``ledger``'s node id, and how old it was when
    last seen rewritten; None when no such process runs (see the module docstring). A set
    ``stop`` ends the wait with None (the caller checks it). Reads the warehouse: a worker
    thread runs it."""
    beat = ledger.own_heartbeat()
    me = this_process()
    if beat is None or beat.process == me:
        return None
    ledger.inherited = beat  # unless it turns out to be a twin's (then the start is refused)
    if beat.stale(time.time()):
        return None
    if beat.process is not None and beat.process.gone_from_this_host():
        log.info(
            "the heartbeat of node %s is the previous run's on this host (%s), which is no "
            "longer running: starting at once",
            ledger.node_id,
            beat.process.describe(),
        )
        return None
    # Watched for a whole span of this host's clock: the heartbeat's ``updated`` is the other
    # host's time, and a span ending there waited an hour for a dead node whose clock ran an
    # hour ahead, or nothing at all for a live twin whose clock runs behind (R4s19).
    deadline = time.time() + 2 * beat.flush_interval + NEXT_BEAT_SLACK_S
    who = beat.process.describe() if beat.process is not None else "an older version"
    log.info(
        "node %s's heartbeat was written %.0fs ago by another process (%s): waiting up to "
        "%.0fs for it to be rewritten, which would mean this --buffer-dir is a copy of a "
        "running node's",
        ledger.node_id,
        max(0.0, time.time() - beat.updated),
        who,
        max(0.0, deadline - time.time()),
    )
    poll = max(0.05, min(poll, beat.flush_interval / 4))
    while time.time() < deadline:
        if stop.wait(min(poll, max(0.0, deadline - time.time()))):
            return None
        try:
            now_beat = ledger.own_heartbeat()
        except OSError as exc:  # no answer (a 503): says nothing of the writer, watch on
            log.info("could not read node %s's heartbeat (%s): watching on", ledger.node_id, exc)
            continue
        if now_beat is None:  # removed by its writer's clean stop: it is gone now
            return None
        if now_beat.updated != beat.updated and now_beat.process != me:
            return now_beat, max(0.0, time.time() - now_beat.updated)
    log.info("node %s's heartbeat was not rewritten: its writer is gone; starting", ledger.node_id)
    return None
