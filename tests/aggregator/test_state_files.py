"""A FIFO (or a folder, a device) where the aggregator keeps its own state in ``--buffer-dir``.

Before the fix, ``open()`` of a FIFO ``last-seq``, ``node-id``, ``offsets.json``,
``chunks.journal`` or segment waited for a writer: the aggregator hung at start-up, without a
log line, and SIGTERM was not heard (the buffer dir is read in a worker thread). A FIFO named
like a segment was deleted as an empty one. Now each is refused at start with one line naming
it and what to do (aggregator/state_files.py), exit 1 as for a buffer dir that cannot be used.
The end-to-end tests run the program with a generous timeout: a regression fails, never hangs.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator.buffer import Buffer
from aggregator.dedup import OFFSETS_JOURNAL_NAME, OFFSETS_NAME
from aggregator.state_files import (
    LAST_SEQ_NAME,
    NODE_ID_NAME,
    SEGMENT_SUFFIX,
    NotRegularStateFile,
    segment_name,
)
from tests.support.procs import console_script

SEGMENT = segment_name(3)


def _within(seconds: float, call: Callable[[], object]) -> object:
    """``call()``'s result or exception, failing (not hanging the suite) when it blocks past
    ``seconds``."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:  # handed back to the test
            out.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "blocked opening a FIFO"
    return out[0]


def _make(path: Path, what: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if what == "fifo":
        os.mkfifo(path)
    elif what == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/null")  # a character device, as seen through the link


@pytest.mark.parametrize(
    ("name", "what", "said"),
    [
        ("lock", "fifo", "a FIFO (named pipe)"),
        ("lock", "folder", "a directory"),
        (NODE_ID_NAME, "fifo", "a FIFO (named pipe)"),
        (NODE_ID_NAME, "device", "a character device"),
        (LAST_SEQ_NAME, "fifo", "a FIFO (named pipe)"),
        (OFFSETS_NAME, "fifo", "a FIFO (named pipe)"),
        (OFFSETS_JOURNAL_NAME, "folder", "a directory"),
        ("chunks.journal", "fifo", "a FIFO (named pipe)"),
        (SEGMENT, "fifo", "a FIFO (named pipe)"),
        (SEGMENT, "folder", "a directory"),
        ("0000000000000002.acked", "fifo", "a FIFO (named pipe)"),
        ("flushing/2.json", "fifo", "a FIFO (named pipe)"),
    ],
)
def test_a_state_file_that_is_no_regular_file_is_refused_when_the_buffer_opens(
    tmp_path: Path, name: str, what: str, said: str
) -> None:
    directory = tmp_path / "buffer"
    directory.mkdir()
    (directory / segment_name(2)).write_bytes(b"")  # a real (empty) segment beside it
    _make(directory / name, what)
    buffer = Buffer(directory, 1 << 20, 1 << 30)
    error = _within(20, buffer.open)
    buffer.unlock()
    assert isinstance(error, NotRegularStateFile), error
    text = str(error)
    assert text.startswith(f"--buffer-dir {directory}: {directory / name} is {said}, "), text
    assert "not a regular file: " in text and "\n" not in text
    assert (directory / name).exists() or (directory / name).is_symlink()  # left as found


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "todo"),
    [
        (LAST_SEQ_NAME, "replace it with a file holding a number above the highest segment number"),
        ("chunks.journal", "remove it (resends of the chunks flushed"),
        (SEGMENT, "move it out of the buffer dir"),
    ],
)
def test_the_aggregator_exits_at_once_naming_a_fifo_in_its_buffer_dir(
    tmp_path: Path, subprocess_env: dict[str, str], name: str, todo: str
) -> None:
    """The real program: it exits 1 with one line, where it hung (a FIFO segment was deleted
    and the aggregator served, never exiting either)."""
    _exits_naming_the_fifo(tmp_path, subprocess_env, [], name, todo)


@pytest.mark.integration
def test_drain_names_a_fifo_node_id(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """``drain`` said "no node-id file" (exit 2) of a buffer dir whose node-id is a FIFO."""
    todo = "put this buffer's node-id file back, or remove it to get a new node id"
    _exits_naming_the_fifo(tmp_path, subprocess_env, ["drain"], NODE_ID_NAME, todo)


def _exits_naming_the_fifo(
    tmp_path: Path, env: dict[str, str], command: list[str], name: str, todo: str
) -> None:
    """``logq-aggregator COMMAND`` over a buffer dir whose ``name`` is a FIFO exits 1 with
    one line naming it and ``todo``, the FIFO left as it was."""
    buffer = tmp_path / "buffer"
    buffer.mkdir()
    os.mkfifo(buffer / name)
    done = subprocess.run(
        [
            str(console_script("logq-aggregator")),
            *command,
            f"--warehouse={tmp_path / 'warehouse'}",
            f"--buffer-dir={buffer}",
            "--listen=127.0.0.1:0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,  # a hang fails this test, not the run
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    said = f"logq-aggregator: --buffer-dir {buffer}: {buffer / name} is a FIFO (named pipe), "
    assert last.startswith(said) and f"not a regular file: {todo}" in last, last
    assert (buffer / name).exists()  # left as found: no segment opened beside it either
    assert [p.name for p in buffer.glob(f"*{SEGMENT_SUFFIX}")] == (
        [SEGMENT] if name == SEGMENT else []
    )


def test_the_buffer_dir_names_are_those_earlier_versions_wrote() -> None:
    """The names are named once, in their owning modules; this pins their values: a buffer dir
    is read by the next version after an upgrade, and a renamed file (segments holding
    acknowledged data above all) would be left unread."""
    assert (OFFSETS_NAME, OFFSETS_JOURNAL_NAME) == ("offsets.json", "offsets.journal")
    assert (segment_name(7), SEGMENT_SUFFIX) == ("0000000000000007.seg", ".seg")
