"""Ctrl-C while the local engine sets up a query: exit 130 with one line, never a traceback.

Before the query runs, the local engine makes a DuckDB view per table over the warehouse files
(binding reads a footer: every file's for a table that mixes schema versions) and locks the
connection down. Those statements ran in the main thread, where DuckDB checks Python's signals
itself and reports a SIGINT as ``RuntimeError("Query interrupted")``: ``logq`` printed a
traceback and exited 1 (a sweep of SIGINTs 0.05 s apart over ``logq errors`` on a warehouse of
2,900 files hit it at 0.65 s; ``timeline`` at 0.6-0.9 s, in the lockdown).

To land the signal in that moment every time, a ``sitecustomize`` hook (on ``PYTHONPATH``, as in
tests/test_interrupt_at_start.py) makes one step of the set-up start with a statement that never
ends (what a slow bind is, for the signal), and touches a file when it starts it; the test then
sends SIGINT. The program must stop it and exit 130 with ``logq: interrupted`` alone on stderr,
without waiting for the statement (it would run for hours): no thread is left keeping it alive.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.procs import console_script

pytestmark = pytest.mark.integration

#: An end to --since's span: "from a fixed time until now" grows every day (past 5,000 minutes
#: `timeline` prints a note about its --every, which these tests' exact stderr would not expect),
#: so every fixed --since here has a fixed --until.
UNTIL = "2026-11-28T02:00:00Z"

SITECUSTOMIZE = '''\
"""Test hook of tests/cli/test_interrupt_windows.py (see there)."""
import os
import signal
import sys

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignored SIGINT

#: A statement DuckDB would run for hours, and stops at once when interrupted.
RUNAWAY = "SELECT count(*) FROM range(1000000000000000)"


def _nap(seconds: float) -> float:
    """A Python function in SQL: DuckDB cannot interrupt it (a hung read, for the signal).
    Touches the file once it runs: a Ctrl-C before then, DuckDB stops in time. It comes back
    into Python every millisecond, as an S3 scan's batches do: once the interpreter finalizes,
    that aborted the process."""
    import time

    open(os.environ["LOGQ_TEST_REACHED"], "w").close()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.001)
    return seconds


def _held(function):
    """``function`` starting with RUNAWAY on the DuckDB connection among its arguments (with
    $LOGQ_TEST_DEAF: a minute of ``_nap``, DuckDB then waited for $LOGQ_TEST_DEAF seconds)."""

    def step(*args, **kwargs):
        con = next(a for a in args if type(a).__name__ == "DuckDBPyConnection")
        if os.environ.get("LOGQ_TEST_DEAF"):
            con.create_function("logq_test_nap", _nap)
            con.execute("SELECT logq_test_nap(60)")
        else:
            open(os.environ["LOGQ_TEST_REACHED"], "w").close()
            con.execute(RUNAWAY)
        return function(*args, **kwargs)

    return step


class _Hold:
    """Once athena.engines.local has been imported: hold its step $LOGQ_TEST_HOLD
    (``_sandbox``, ``LocalEngine._register``)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "athena.engines.local":
            return None
        sys.meta_path.remove(_Hold)
        import importlib.util

        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            *owner_path, attr = os.environ["LOGQ_TEST_HOLD"].split(".")
            owner = module
            for part in owner_path:
                owner = getattr(owner, part)
            setattr(owner, attr, _held(getattr(owner, attr)))
            if os.environ.get("LOGQ_TEST_DEAF"):
                module.INTERRUPT_WAIT_SECONDS = float(os.environ["LOGQ_TEST_DEAF"])

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("LOGQ_TEST_HOLD"):
    sys.meta_path.insert(0, _Hold)
if os.environ.get("LOGQ_TEST_DEAF"):
    import numpy  # DuckDB's Python functions (the nap) need it; logq keeps it out otherwise
'''


def run_logq(args: list[str], warehouse: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``logq ARGS --warehouse WAREHOUSE`` run to its end (at most 60 s), output captured."""
    return subprocess.run(
        [str(console_script("logq")), *args, "--warehouse", warehouse],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def hooked_env(
    tmp_path: Path, subprocess_env: dict[str, str], name: str, hook: str
) -> dict[str, str]:
    """``subprocess_env`` with the ``sitecustomize`` text ``hook`` first on ``PYTHONPATH``
    (in the folder ``tmp_path / name``) and ``$LOGQ_TEST_REACHED`` set."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(hook)
    return {
        **subprocess_env,
        "PYTHONPATH": f"{folder}:{subprocess_env.get('PYTHONPATH', '')}".rstrip(":"),
        "LOGQ_TEST_REACHED": str(tmp_path / "reached"),
    }


def ctrl_c_once_reached(
    args: list[str], warehouse: str, env: dict[str, str], timeout: float
) -> tuple[int, str, str]:
    """Start ``logq ARGS --warehouse WAREHOUSE``, send it SIGINT once the hook has touched
    ``$LOGQ_TEST_REACHED``, and wait at most ``timeout`` seconds for its end (killed if it
    is still running then). Its exit status, stdout and stderr."""
    reached = Path(env["LOGQ_TEST_REACHED"])
    proc = subprocess.Popen(
        [str(console_script("logq")), *args, "--warehouse", warehouse],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        while not reached.exists():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


@pytest.mark.parametrize(
    ("step", "args"),
    [
        ("LocalEngine._register", ["errors", "--since", "2026-11-27T22:00:00Z", "--until", UNTIL]),
        ("_sandbox", ["timeline", "--since", "2026-11-27T22:00:00Z", "--until", UNTIL]),
        ("_sandbox", ["sql", "SELECT * FROM envoy_access", "-f", "csv"]),
    ],
    ids=["views", "lockdown", "sql-stream"],
)
def test_ctrl_c_while_the_local_engine_sets_up_exits_130(
    step: str,
    args: list[str],
    warehouse,
    tmp_path: Path,
    subprocess_env: dict[str, str],
) -> None:
    env = {
        **hooked_env(tmp_path, subprocess_env, "hook", SITECUSTOMIZE),
        "LOGQ_TEST_HOLD": step,
        "LOGQ_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("LOGQ_DEBUG", None)
    # Within 60 s: the statement never ends, so an exit at all means it was stopped.
    code, out, err = ctrl_c_once_reached(args, warehouse.uri, env, timeout=60)
    assert "Traceback" not in err, err
    assert (code, err, out) == (130, "logq: interrupted\n", "")


@pytest.mark.parametrize(
    "args",
    [
        ["errors", "--since", "2026-11-27T22:00:00Z", "--until", UNTIL],
        ["sql", "SELECT * FROM envoy_access"],
    ],
    ids=["canned", "sql"],
)
def test_an_engine_that_does_not_stop_ends_in_two_lines(
    args: list[str], warehouse, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """DuckDB may go on past a Ctrl-C (a hung S3 read; here a Python function in the SQL).
    After its wait logq closed the connection under the statement: "connection is busy", a
    traceback and exit 1. It exits 130 and says why it did not wait, leaving DuckDB be; not
    through Python's finalization, where the statement's thread aborted the process (status
    134, "Fatal Python error"), and with its spill folder removed all the same."""
    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    env = {
        "TMPDIR": str(spill_root),
        **hooked_env(tmp_path, subprocess_env, "hook", SITECUSTOMIZE),
        "LOGQ_TEST_HOLD": "_sandbox",
        "LOGQ_TEST_DEAF": "0.2",
        "LOGQ_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("LOGQ_DEBUG", None)
    # Within 50 s: the function naps for a minute, so logq did not wait for it.
    code, out, err = ctrl_c_once_reached(args, warehouse.uri, env, timeout=50)
    assert (code, out) == (130, ""), err
    assert err == (
        "logq: interrupted\nlogq: the local engine (DuckDB) did not stop the query within "
        "0.2 s of the Ctrl-C; exiting without waiting for it\n"
    )
    assert list(spill_root.iterdir()) == []


def test_duckdbs_report_of_a_ctrl_c_is_a_keyboard_interrupt() -> None:
    """Short statements stay in the main thread (the connection's settings, the ``--grep``
    check), where a SIGINT DuckDB takes comes out as this error: logq ends on it as on the
    KeyboardInterrupt it is (the subprocess tests above show the set-up's)."""
    from athena.engines.local import DUCKDB_INTERRUPTED, duckdb_interrupts

    with pytest.raises(KeyboardInterrupt), duckdb_interrupts():
        raise RuntimeError(DUCKDB_INTERRUPTED)


def test_other_runtime_errors_pass_through() -> None:
    from athena.engines.local import duckdb_interrupts
    from athena.engines.result import EngineError

    with pytest.raises(RuntimeError, match="something else"), duckdb_interrupts():
        raise RuntimeError("something else")
    with pytest.raises(EngineError), duckdb_interrupts():
        raise EngineError("Query interrupted")


@pytest.mark.parametrize(
    ("module", "args"),
    [("cli.runner", ["errors"]), ("cli.textio", ["--help"])],
    ids=["typer-caught", "streams-set-up"],
)
def test_ctrl_c_before_a_command_body_takes_over_says_interrupted(
    module: str, args: list[str], warehouse, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """A Ctrl-C in a command before its body's error handling (``logq errors`` importing the
    runner) was ended by typer with 130 and nothing on stderr; it says what happened as the
    others do. One while ``logq`` set its streams up for UTF-8 (``cli.textio``, imported by
    ``main`` before it took Ctrl-C over) printed a ``KeyboardInterrupt`` traceback."""
    from tests.test_interrupt_at_start import SITECUSTOMIZE as AT_IMPORT

    reached = tmp_path / "reached"
    env = {
        **hooked_env(tmp_path, subprocess_env, "at-import", AT_IMPORT),
        "LOGQ_TEST_AT": module,
        "LOGQ_TEST_SIGINT": "1",
    }
    done = run_logq(args, warehouse.uri, env)
    assert reached.exists(), done.stderr
    assert (done.returncode, done.stderr, done.stdout) == (130, "logq: interrupted\n", "")


def test_a_ctrl_c_between_two_statements_stops_the_next_one() -> None:
    """The set-up is several statements (a view per table, then the lockdown) with Python between
    them, all in one worker thread. DuckDB forgets an interrupt asked for between two statements:
    the next one started uninterrupted and ran to its end, the main thread waited its 5 s, then
    closed the connection under it ("connection is busy": a traceback instead of the one line).
    Here the Ctrl-C lands while the worker is between a first statement and a runaway: the
    runaway must be stopped."""
    import _thread
    import threading

    import duckdb

    from athena.engines.local import _interruptible

    con = duckdb.connect(":memory:")
    between = threading.Event()  # the first statement is done, the next not started
    asked = threading.Event()  # logq asked DuckDB to interrupt (and DuckDB had nothing running)
    ran: list[str] = []

    class Connection:
        """The connection as ``_interruptible`` sees it, saying when it asked for the stop."""

        def interrupt(self) -> None:
            con.interrupt()
            asked.set()

    def set_up() -> None:
        con.execute("SELECT 1").fetchall()
        between.set()
        asked.wait()
        try:
            con.execute("SELECT count(*) FROM range(1000000000000000)").fetchall()
            ran.append("ran to its end")
        except duckdb.InterruptException:
            ran.append("interrupted")
            raise

    def press_ctrl_c() -> None:
        between.wait()
        _thread.interrupt_main(signal.SIGINT)
        while not asked.wait(0.5):  # again if it landed where Python could not raise it
            _thread.interrupt_main(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _interruptible(Connection(), set_up)
        assert ran == ["interrupted"]
    finally:
        signal.signal(signal.SIGINT, previous)
        while not ran:  # without the fix: the runaway still runs in the worker
            con.interrupt()
            time.sleep(0.05)
        presser.join(timeout=5)
        con.close()


AT_DUCKDB_INIT = '''\
"""Test hook of tests/cli/test_interrupt_windows.py: a Ctrl-C as DuckDB's extension starts."""
import os
import signal
import sys

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignored SIGINT


class _AtDuckDB:
    """When this process looks for DuckDB's extension module (its import has begun), SIGINT
    itself and write to $LOGQ_TEST_REACHED whether the KeyboardInterrupt came out there, in
    the middle of the import, or was held back."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "_duckdb":
            sys.meta_path.remove(_AtDuckDB)
            reached = os.environ["LOGQ_TEST_REACHED"]
            try:
                signal.raise_signal(signal.SIGINT)  # its handler runs before this returns
            except KeyboardInterrupt:
                with open(reached, "w") as f:
                    f.write("raised inside the import")
                raise
            with open(reached, "w") as f:
                f.write("held back")
        return None


sys.meta_path.insert(0, _AtDuckDB)
'''


@pytest.mark.parametrize(
    "args",
    [
        ["errors", "--since", "2026-11-27T22:00:00Z", "--until", UNTIL],
        ["tail", "--grep", "ERROR|panic"],
    ],
    ids=["engine", "grep-check"],
)
def test_ctrl_c_while_duckdb_is_imported_waits_for_the_import(
    args: list[str], warehouse, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """DuckDB's extension runs Python as it initialises; a SIGINT landing in it failed the
    import (``ImportError: Encountered an error while initializing the extension``, a traceback
    and exit 1) or aborted the process ("Critical nanobind error: ... KeyboardInterrupt", status
    -6), in a sweep of ``logq tail -F`` at 0.57 and 0.63 s. A hook cannot land the signal inside
    the C code every time; it lands it as the import begins and checks that it is held back
    until the import is done, then ends the program as a Ctrl-C does."""
    reached = tmp_path / "reached"
    env = {
        **hooked_env(tmp_path, subprocess_env, "at-duckdb", AT_DUCKDB_INIT),
        "LOGQ_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("LOGQ_DEBUG", None)
    done = run_logq(args, warehouse.uri, env)
    assert reached.read_text() == "held back", done.stderr
    assert (done.returncode, done.stderr, done.stdout) == (130, "logq: interrupted\n", "")
