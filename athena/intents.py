"""Compaction intents, read the same way by the compactor's recovery and by the local engine.

A merge (``aggregator/compaction/``) writes ``_compact-<id>.json`` (its inputs, its output,
the row count), then the merged ``c-<id>.parquet``, then deletes the inputs, then the intent.
Between the output and the deletes -- milliseconds, or until the next compaction pass when a
delete failed or the compactor was killed there -- both the inputs and the output are in the
folder. The compactor's recovery (``finish_intents``) settles which of them stands by one rule:
an output that holds the intent's row count stands for its inputs; any other output is dropped
and the inputs stay. Readers that list files (the local engine's planner,
:mod:`athena.partitions`) apply the same rule to every listing that holds an intent, so they see
each row once at every moment; a listing without one (the usual case) costs nothing more.

Only reads live here: the aggregator imports this module, the CLI never imports the aggregator
(its modules pull in the compactor's and the writer's dependencies).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pyarrow.fs as pafs

#: Intents are ``_compact-<id>.json``: the ``_`` prefix hides them from every reader of data.
INTENT_PREFIX = "_compact-"
#: The youngest a file can be when compaction merges it, unless forced (``compact --force
#: --grace-minutes``): :func:`aggregator.compaction.grace.safe_grace` for a node that flushes
#: all the time (a minute past its last heartbeat, plus a 5-minute margin); more for slower
#: flushes.
#: Here for readers that must not import the aggregator: ``tail --follow`` lists each hour more
#: often than this, so it sees every flush object before a merge can take it.
GRACE_FLOOR = timedelta(minutes=6)


class Intent(NamedTuple):
    """What one merge replaces: names inside the intent's own partition folder."""

    inputs: tuple[str, ...]
    """The small files the output replaces."""
    output: str
    """The merged file (``c-<id>.parquet``)."""
    rows: int
    """The inputs' row count: the output stands for them only when it holds exactly this."""


def is_intent(name: str) -> bool:
    """Whether the base name ``name`` is a compaction intent."""
    return name.startswith(INTENT_PREFIX) and name.endswith(".json")


def read_intent(fs: pafs.FileSystem, path: str) -> Intent:
    """The intent at ``path``.

    FileNotFoundError: gone (its merge was finished or dropped since the listing). ValueError:
    not an intent this version writes (they are written whole, so a stray file, or one cut
    short by an older version). Any other OSError: the store failed; retry later.
    """
    raw = _read_small(fs, path)
    try:
        body = json.loads(raw.decode("utf-8"))
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not all(isinstance(n, str) for n in inputs):
            raise TypeError("inputs is not a list of names")
        output = body["output"]
        if not isinstance(output, str):
            raise TypeError("output is not a name")
        return Intent(tuple(inputs), output, int(body["rows"]))
    # UnicodeDecodeError is a ValueError; RecursionError: JSON nested too deeply ("[" * 10**5)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ValueError(f"{path} is not a readable compaction intent: {exc}") from exc


def _read_small(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole file at ``path``; FileNotFoundError when it is gone.

    On S3 pyarrow opens a stream with a HEAD and reads it with a GET: an intent deleted
    between the two (its merge finished right then, while a reader planned a query over that
    hour) fails the GET with a bare OSError (``NO_SUCH_KEY``, or SeaweedFS's
    ``INTERNAL_FAILURE``), not FileNotFoundError, and the query failed with that raw AWS error.
    Whether the file is gone is asked again after such an error.
    """
    import pyarrow.fs as pafs

    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except FileNotFoundError:
        raise
    except OSError:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(path) from None
        raise


def output_complete(fs: pafs.FileSystem, path: str, rows: int) -> bool:
    """``path`` exists, reads as Parquet, and holds ``rows`` rows: it may stand for its inputs.

    False only when it is missing, short or not Parquet (then it may be deleted, and its inputs
    are the truth); a storage error raises (OSError or another ``pa.ArrowException``): taking
    a complete output for a missing one could make a compactor delete it and lose rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path, filesystem=fs).num_rows == rows
    except FileNotFoundError:
        return False
    except pa.ArrowInvalid:  # cut short, not Parquet
        return False


def superseded(fs: pafs.FileSystem, folder: str, names: Iterable[str]) -> frozenset[str]:
    """The names among ``names`` (one listing of ``folder``) that a reader must skip.

    For each intent in the listing whose output is listed too: the inputs when the output is
    complete (the merge only waits for its deletes), else the output (a short or damaged file
    that the merge's rollback, or the next pass, deletes). An intent whose output is not
    listed belongs to a merge under way or rolled back: its inputs stand, nothing is skipped.
    An intent gone since the listing was finished or dropped meanwhile: nothing is skipped
    for it, and a file it deleted makes the read fail and list again, as any file that
    compaction swaps under a query does. A listing without intents costs no request here.
    """
    listed = set(names)
    skipped: set[str] = set()
    for name in sorted(n for n in listed if is_intent(n)):
        try:
            intent = read_intent(fs, f"{folder}/{name}")
        except FileNotFoundError:
            continue
        except ValueError:  # replaces nothing (compaction drops it once stale)
            continue
        if intent.output not in listed:
            continue
        if output_complete(fs, f"{folder}/{intent.output}", intent.rows):
            skipped.update(intent.inputs)
        else:
            skipped.add(intent.output)
    return frozenset(skipped & listed)
