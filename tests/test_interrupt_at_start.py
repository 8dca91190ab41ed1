"""Ctrl-C while a program is still starting: exit 130 with one line, never a traceback.

The console scripts spend their first 0.1-0.5 s importing (pyarrow, typer, msgpack...), before
any signal handler of ours exists; a SIGINT then printed a ``KeyboardInterrupt`` traceback.

Now the entry modules import with SIGINT blocked (shipper.startup.deferred_interrupts): a
Ctrl-C waits until the imports are done, then ends the program. Two ways to land the signal
there. Deterministic: a ``sitecustomize`` hook (on ``PYTHONPATH``)
makes the program SIGINT itself when it first imports a given module, as a Ctrl-C pressed at that
moment would. Realistic: the test sends SIGINT after a few delays, counted from the program's
first import of its own (the hook touches a file then). Earlier, while the interpreter starts
(``site``, the editable install's finder) and the console script locates the entry module, no
code of ours runs yet: a signal there is Python's to report.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shipper.startup import deferred_interrupts, is_interrupt, run_held
from tests.support.procs import console_script, free_port, start_group, stop_group, wait_until

pytestmark = pytest.mark.integration

SITECUSTOMIZE = '''\
"""Test hook of tests/test_interrupt_at_start.py (see there)."""
import os
import signal
import sys

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignored SIGINT


class _At:
    """When this process first looks for module $LOGQ_TEST_AT: touch $LOGQ_TEST_REACHED and,
    with $LOGQ_TEST_SIGINT set, SIGINT itself."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == os.environ["LOGQ_TEST_AT"]:
            sys.meta_path.remove(_At)
            open(os.environ["LOGQ_TEST_REACHED"], "w").close()
            if os.environ.get("LOGQ_TEST_SIGINT"):
                os.kill(os.getpid(), signal.SIGINT)  # raises KeyboardInterrupt right here
        return None


class _After:
    """When module $LOGQ_TEST_AFTER has been imported (its body has run): touch
    $LOGQ_TEST_REACHED and SIGINT this process, as a Ctrl-C landing then would."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != os.environ["LOGQ_TEST_AFTER"]:
            return None
        sys.meta_path.remove(_After)
        import importlib.util

        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            open(os.environ["LOGQ_TEST_REACHED"], "w").close()
            os.kill(os.getpid(), signal.SIGINT)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("LOGQ_TEST_AT"):
    sys.meta_path.insert(0, _At)
if os.environ.get("LOGQ_TEST_LOOP"):
    # SIGINT while asyncio builds the event loop: inside BaseSelectorEventLoop.__init__,
    # before _UnixSelectorEventLoop.__init__ has set what its finalizer reads.
    import selectors

    _Selector = selectors.DefaultSelector

    def _selector_then_sigint(*args, **kwargs):
        selectors.DefaultSelector = _Selector
        open(os.environ["LOGQ_TEST_REACHED"], "w").close()
        os.kill(os.getpid(), signal.SIGINT)
        return _Selector(*args, **kwargs)

    selectors.DefaultSelector = _selector_then_sigint
if os.environ.get("LOGQ_TEST_AFTER"):
    sys.meta_path.insert(0, _After)
if os.environ.get("LOGQ_TEST_CLOSE"):
    # Signal $LOGQ_TEST_CLOSE while the event loop closes: its self-pipe closed, the loop not
    # marked closed yet and its signal handlers not removed yet.
    import asyncio.selector_events

    _Loop = asyncio.selector_events.BaseSelectorEventLoop
    _close_self_pipe = _Loop._close_self_pipe

    def _close_self_pipe_then_signal(self):
        _Loop._close_self_pipe = _close_self_pipe
        _close_self_pipe(self)
        open(os.environ["LOGQ_TEST_REACHED"], "w").close()
        os.kill(os.getpid(), getattr(signal, os.environ["LOGQ_TEST_CLOSE"]))

    _Loop._close_self_pipe = _close_self_pipe_then_signal
'''

#: A module each program imports early in its guarded start-up imports: the delays count from
#: when it is looked for.
FIRST_IMPORT = {
    "logq-shipper": "shipper.checkpoint",
    "logq-aggregator": "aggregator.memory",
    "logq": "typer",
}


def _with(hook: Path, env: dict[str, str]) -> str:
    """``PYTHONPATH`` with the hook first, then what the tests run with (a worktree's checkout
    rather than the editable install's)."""
    return f"{hook}:{env.get('PYTHONPATH', '')}".rstrip(":")


@dataclass
class Run:
    """One start of a program: its exit status and everything it wrote (stdout + stderr)."""

    status: int
    output: str


def _args(program: str, work: Path) -> list[str]:
    """Arguments that keep ``program`` running (the daemons) or finish at once (``logq``)."""
    if program == "logq-shipper":
        (work / "containers").mkdir(exist_ok=True)
        return [
            "--aggregator", "127.0.0.1:9",
            "--docker-root", str(work / "containers"),
            "--state-dir", str(work / "state"),
        ]  # fmt: skip
    if program == "logq-aggregator":
        return [
            "--listen", f"127.0.0.1:{free_port()}",
            "--warehouse", str(work / "warehouse"),
            "--buffer-dir", str(work / "buffer"),
        ]  # fmt: skip
    return ["--help"]


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[Path]:
    """A folder holding the ``sitecustomize`` hook, for ``PYTHONPATH``."""
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    yield folder


def _start(program: str, work: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "output.log"
    cmd = [str(console_script(program)), *_args(program, work)]
    return start_group(cmd, log, env=env, cwd=work), log


def _finish(proc: subprocess.Popen, log: Path) -> Run:
    try:
        status = proc.wait(60)
    finally:
        stop_group(proc, timeout=0, sig=signal.SIGKILL)
    return Run(status, log.read_text(errors="replace"))


@pytest.mark.parametrize(
    ("program", "module"),
    [
        ("logq-shipper", "shipper.checkpoint"),  # the first of shipper.daemon's own modules
        ("logq-shipper", "msgpack"),  # deep inside it (shipper.sender -> shipper.wire)
        ("logq-shipper", "shipper.source"),  # its last
        ("logq-aggregator", "aggregator.memory"),
        ("logq-aggregator", "pyarrow"),
        ("logq", "typer"),
        ("logq", "cli.commands"),
    ],
)
def test_sigint_while_importing_exits_130_without_traceback(
    program: str, module: str, tmp_path: Path, hook: Path, subprocess_env: dict[str, str]
) -> None:
    reached = tmp_path / "reached"
    env = {
        **subprocess_env,
        "PYTHONPATH": _with(hook, subprocess_env),
        "LOGQ_TEST_AT": module,
        "LOGQ_TEST_REACHED": str(reached),
        "LOGQ_TEST_SIGINT": "1",
    }
    proc, log = _start(program, tmp_path / "work", env)
    run = _finish(proc, log)
    assert reached.exists(), f"{program} never imported {module}:\n{run.output}"
    assert "Traceback" not in run.output, run.output
    assert run.status == 130, run.output
    assert run.output.strip().splitlines()[-1] == f"{program}: interrupted", run.output


def test_sigint_after_the_cli_module_ran_exits_130_without_traceback(
    tmp_path: Path, hook: Path, subprocess_env: dict[str, str]
) -> None:
    """``cli.app`` goes on after its guarded imports (the typer app, the commands): a Ctrl-C
    landing there, before its ``main`` runs, must end like one during the imports (the console
    entry, cli/launch.py, imports the whole module with SIGINT held back)."""
    reached = tmp_path / "reached"
    env = {
        **subprocess_env,
        "PYTHONPATH": _with(hook, subprocess_env),
        "LOGQ_TEST_AFTER": "cli.app",
        "LOGQ_TEST_REACHED": str(reached),
    }
    proc, log = _start("logq", tmp_path / "work", env)
    run = _finish(proc, log)
    assert reached.exists(), run.output
    assert "Traceback" not in run.output, run.output
    assert run.status == 130, run.output


@pytest.mark.parametrize("program", ["logq-shipper", "logq-aggregator"])
def test_sigint_while_the_event_loop_is_built_exits_130_without_traceback(
    program: str, tmp_path: Path, hook: Path, subprocess_env: dict[str, str]
) -> None:
    """A Ctrl-C inside ``asyncio.run`` before the loop is whole (a CI run caught it 0.1 s in)
    left a half-built loop whose finalizer printed a traceback, and the daemon's coroutine never
    awaited: the signal is held back until the coroutine starts (shipper.startup.run_held)."""
    reached = tmp_path / "reached"
    env = {
        **subprocess_env,
        "PYTHONPATH": _with(hook, subprocess_env),
        "LOGQ_TEST_LOOP": "1",
        "LOGQ_TEST_REACHED": str(reached),
    }
    proc, log = _start(program, tmp_path / "work", env)
    run = _finish(proc, log)
    assert reached.exists(), f"{program} never built an event loop:\n{run.output}"
    assert "Traceback" not in run.output, run.output
    assert "never awaited" not in run.output, run.output
    assert run.status == 130, run.output
    assert run.output.strip().splitlines()[-1] == f"{program}: interrupted", run.output


#: What each daemon writes once it runs, its signal handlers installed.
RUNNING = {"logq-shipper": "no log files found", "logq-aggregator": "listening on"}


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("program", list(RUNNING))
def test_a_stop_signal_while_the_event_loop_closes_is_dropped_quietly(
    program: str, sig: str, tmp_path: Path, hook: Path, subprocess_env: dict[str, str]
) -> None:
    """Stopped by SIGTERM, the daemon got a second signal while asyncio closed its loop: the
    signal's wakeup byte went to the loop's closed self-pipe ("Exception ignored when trying to
    write to the signal wakeup fd"), or a SIGINT left the loop half closed (logq-shipper: a
    traceback from the loop's ``__del__``; a SIGTERM killed it). Its stop is done by then: the
    signal is dropped, and the exit is the stop's (shipper.startup._close_quietly)."""
    reached = tmp_path / "reached"
    env = {
        **subprocess_env,
        "PYTHONPATH": _with(hook, subprocess_env),
        "LOGQ_TEST_CLOSE": sig,
        "LOGQ_TEST_REACHED": str(reached),
    }
    proc, log = _start(program, tmp_path / "work", env)
    try:
        wait_until(lambda: RUNNING[program] in log.read_text(), 60, program, proc, log)
        proc.send_signal(signal.SIGTERM)
    finally:
        run = _finish(proc, log)
    assert reached.exists(), f"{program} never closed its event loop:\n{run.output}"
    assert "Exception ignored" not in run.output, run.output
    assert "Traceback" not in run.output, run.output
    assert run.status == 0, run.output


#: asyncio's stop after the daemon's coroutine returned, held by an executor thread that does
#: not return (a call stuck on S3): ``shutdown_default_executor`` waits for it, with no timeout
#: on Python 3.11. Prints a line once it waits.
STUCK_EXECUTOR = """\
import asyncio
import os
import signal
import threading

from shipper.startup import run_held

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignored SIGINT
stuck = threading.Event()  # never set
_shutdown = asyncio.BaseEventLoop.shutdown_default_executor


async def shutdown_default_executor(self):
    print("waiting for the executor", flush=True)
    await _shutdown(self)


asyncio.BaseEventLoop.shutdown_default_executor = shutdown_default_executor


async def main():
    asyncio.get_running_loop().run_in_executor(None, stuck.wait)
    return 0


try:
    run_held(main)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    os._exit(130)  # (the stuck thread would hold a normal exit)
print("went on", flush=True)
"""


@pytest.mark.parametrize(
    ("sig", "status", "said"),
    [(signal.SIGINT, 130, "interrupted\n"), (signal.SIGTERM, -signal.SIGTERM, "")],
)
def test_a_stop_signal_while_asyncio_waits_for_its_executor_still_ends_the_process(
    sig: signal.Signals, status: int, said: str, subprocess_env: dict[str, str]
) -> None:
    """The stop signals are ignored only while the loop itself closes (run_held's
    ``_close_quietly``), which waits for nothing: before that, asyncio's stop can wait without
    end for an executor thread, and a Ctrl-C or SIGTERM must still end the process there."""
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_EXECUTOR],
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "waiting for the executor\n"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out) == (status, said), err


def test_run_held_gives_the_stop_signals_their_handlers_back() -> None:
    """A caller running a daemon's ``main()`` in its own process (a test, a wrapper) keeps its
    handlers: those ``_close_quietly`` ignores while the loop closes come back after it."""

    def mine(signum: int, frame: object) -> None:
        pass

    async def main() -> int:
        return 7

    sigint = signal.getsignal(signal.SIGINT)
    before = {sig: signal.signal(sig, mine) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        assert run_held(main) == 7
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGHUP) is mine
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_stop_signal_handled_outside_python_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handler Python did not set (an embedding host's: Python reports it as None) cannot be
    set back: ignored while the loop closed, SIGHUP stayed ignored for the rest of the process.
    Such a signal is left as it is."""
    real_get, real_set = signal.getsignal, signal.signal

    def outside(sig: int) -> Any:
        return None if sig == signal.SIGHUP else real_get(sig)

    def setting(sig: int, handler: Any) -> Any:
        previous = real_set(sig, handler)
        return None if sig == signal.SIGHUP else previous

    before = real_get(signal.SIGHUP)
    try:
        monkeypatch.setattr(signal, "getsignal", outside)
        monkeypatch.setattr(signal, "signal", setting)

        async def main() -> int:
            return 7

        assert run_held(main) == 7
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGHUP) is before
    finally:
        real_set(signal.SIGHUP, before)


#: Seconds from the program's first import of its own (FIRST_IMPORT) to the SIGINT.
DELAYS = (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4)


@pytest.mark.parametrize("program", list(FIRST_IMPORT))
def test_sigint_soon_after_start_never_prints_a_traceback(
    program: str, tmp_path: Path, hook: Path, subprocess_env: dict[str, str]
) -> None:
    """Whenever it lands: 130 while starting; later the daemons stop gracefully (exit 0), and
    ``logq --help`` is stopped by typer (130) or has finished (0, or killed by the signal while
    Python shuts down)."""
    for i, delay in enumerate(DELAYS):
        reached = tmp_path / f"reached-{i}"
        env = {
            **subprocess_env,
            "PYTHONPATH": _with(hook, subprocess_env),
            "LOGQ_TEST_AT": FIRST_IMPORT[program],
            "LOGQ_TEST_REACHED": str(reached),
        }
        proc, log = _start(program, tmp_path / f"work-{i}", env)
        try:
            while not reached.exists() and proc.poll() is None:
                time.sleep(0.001)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        finally:
            run = _finish(proc, log)
        where = f"{program}, SIGINT {delay} s into its imports, exit {run.status}:\n"
        assert "Traceback" not in run.output, where + run.output
        if run.status == 130:  # (logq also for a Ctrl-C typer caught: cli.app.main says it)
            assert run.output.strip().splitlines()[-1:] == [f"{program}: interrupted"], where
        elif run.status not in (130, -signal.SIGINT):
            # (Python resets SIGINT to the default action late in its shutdown: a program that
            # has done its work, printed the help, then dies of the signal -- quietly.)
            assert run.status == 0, where + run.output


class _InterruptedSetName:
    """A descriptor whose ``__set_name__`` is where the Ctrl-C lands."""

    def __set_name__(self, owner: type, name: str) -> None:
        raise KeyboardInterrupt


def test_a_ctrl_c_in_a_class_definition_counts_as_one() -> None:
    """Python 3.11 wraps it in ``RuntimeError("Error calling __set_name__...")``: seen in
    ``logq --help`` when the signal landed while rich defined a dataclass."""
    with pytest.raises(BaseException) as caught:

        class _Defined:
            field = _InterruptedSetName()

    assert is_interrupt(caught.value)
    assert not is_interrupt(RuntimeError("Error calling __set_name__"))
    assert not is_interrupt(ValueError("x"))


def test_a_ctrl_c_during_the_block_waits_for_its_end(capsys: pytest.CaptureFixture[str]) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach Python code in the main thread only")
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    ran_to_the_end = False
    try:
        with pytest.raises(SystemExit) as done, deferred_interrupts("prog"):
            # To this thread: the test runner has threads of its own that do not block it.
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # held back, not raised
            ran_to_the_end = True
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.signal(signal.SIGINT, handler)
    assert ran_to_the_end
    assert done.value.code == 130
    assert capsys.readouterr().err == "prog: interrupted\n"


#: A Ctrl-C landing in one of importlib's weakref callbacks, as it did while typer rendered
#: ``logq --help`` (rich imports modules lazily): Python can only report it as "Exception
#: ignored", and the program would go on as if no key had been pressed.
UNRAISABLE_CTRL_C = """\
import signal
import sys
import time
import weakref

from shipper.startup import redeliver_dropped_interrupts

# As in a terminal: a test run started in the background (`make test &`, a CI job) passes
# SIGINT on as ignored, and the SIGINT sent again would then be ignored too.
signal.signal(signal.SIGINT, signal.default_int_handler)
redeliver_dropped_interrupts()  # what each program's main() does first


class Lock:
    pass


def callback(_ref):
    raise KeyboardInterrupt  # what the signal handler raises inside the callback


lock = Lock()
ref = weakref.ref(lock, callback)
try:
    del lock
    time.sleep(5)
    print("went on")
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
"""


def _run_quietly(script: str, env: dict[str, str]) -> tuple[int, str]:
    """``python -c script``'s exit status and stdout, once it is checked that nothing was
    printed as ignored or as a traceback."""
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr
    return done.returncode, done.stdout


def test_a_ctrl_c_python_cannot_raise_is_delivered_again(
    subprocess_env: dict[str, str],
) -> None:
    assert _run_quietly(UNRAISABLE_CTRL_C, subprocess_env) == (130, "interrupted\n")


#: The main thread held up inside the hook just after it started its redelivery thread, as a
#: loaded machine can deschedule it: the signal sent again 10 ms later landed in the hook itself
#: ("Exception ignored in sys.unraisablehook", KeyboardInterrupt) and was lost once more.
STALLED_HOOK = """\
import threading
import time

_start = threading.Thread.start


def _start_then_stall(self):
    _start(self)
    time.sleep(0.3)


threading.Thread.start = _start_then_stall
"""


def test_a_ctrl_c_sent_again_waits_until_the_hook_has_returned(
    subprocess_env: dict[str, str],
) -> None:
    assert _run_quietly(STALLED_HOOK + UNRAISABLE_CTRL_C, subprocess_env) == (130, "interrupted\n")


#: SIGTERM (``timeout``, a CI job's kill) landing in a weakref callback while an Athena query
#: runs, in a process that inherits SIGINT as ignored (started in the background, or by CI).
UNRAISABLE_SIGTERM = """\
import signal
import sys
import time
import weakref

from athena.engines.result import Terminated
from shipper.startup import redeliver_dropped_interrupts

signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop(signum, _frame):
    raise Terminated(signum)  # what the Athena engine's handler raises


signal.signal(signal.SIGTERM, stop)
redeliver_dropped_interrupts()


class Lock:
    pass


def callback(_ref):
    raise Terminated(signal.SIGTERM)  # the handler's exception, inside the callback


lock = Lock()
ref = weakref.ref(lock, callback)
try:
    del lock
    time.sleep(5)
    print("went on")
except Terminated as exc:
    print(exc.signame)
    sys.exit(exc.exit_status)
"""


def test_a_sigterm_python_cannot_raise_is_delivered_again_as_sigterm(
    subprocess_env: dict[str, str],
) -> None:
    """Sent again as SIGINT, which the process ignores, the SIGTERM was lost: the query ran on
    (test_athena_cli's SIGHUP test hung in a fresh clone's ``make test``)."""
    assert _run_quietly(UNRAISABLE_SIGTERM, subprocess_env) == (143, "SIGTERM\n")


def test_importing_the_programs_leaves_the_unraisable_hook_alone() -> None:
    """Only a program's ``main()`` installs the redelivery: a process that imports the entry
    modules (a test runner) keeps its own hook, and a stray Ctrl-C in a finalizer there stays a
    reported warning instead of a SIGINT that would end the run."""
    import importlib
    import sys

    before = sys.unraisablehook
    for name in ("cli.app", "cli.launch", "shipper.daemon", "aggregator.launch"):
        importlib.import_module(name)
    assert sys.unraisablehook is before
