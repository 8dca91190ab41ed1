"""Values that are not UTF-8 (``--path $'/\\xff'``): refused as bad input, before any engine.

Python keeps an argument's bytes that are not UTF-8 as lone surrogates (``'\\udcff'``). DuckDB
failed on them with "Python Conversion Failure: cannot encode str as UTF-8", which logq said as
an engine failure (exit 1) for ``top --path`` and ``trace``, and as RE2's or DuckDB's words for
``tail --grep`` and ``sql``. No stored value can hold such bytes (the aggregator stores text as
UTF-8, each invalid sequence replaced by U+FFFD), so each is one clear line and exit 2.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.support.procs import console_script

RANGE = ("--since", "2026-11-27T00:00:00Z", "--until", "2026-11-29T00:00:00Z")

#: (command line with the value, option named in the error, the bytes the error shows)
CASES = [
    (["top", "--path", "/\udcff", *RANGE], "--path", "b'/\\xff'"),
    (["latency", "--path", "/api\udcc3", *RANGE], "--path", "b'/api\\xc3'"),
    (["errors", "--path", "/\udcff", "--engine", "athena"], "--path", "b'/\\xff'"),
    (["trace", "req-\udcff"], "REQUEST_ID", "b'req-\\xff'"),
    (["tail", "--grep", "caf\udce9", *RANGE], "--grep", "b'caf\\xe9'"),
    (["sql", "SELECT '\udcff' AS v"], "the statement", "b\"SELECT '\\xff' AS v\""),
]


@pytest.mark.parametrize(("args", "option", "sent"), CASES, ids=lambda c: str(c)[:30])
def test_a_value_that_is_not_utf8_is_one_line_and_exit_2(
    logq, warehouse, args: list[str], option: str, sent: str
) -> None:
    run = logq(*args, "--warehouse", warehouse.uri)
    assert run.exit_code == 2, run.stderr
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"logq: error: {option} {sent} is not UTF-8 text: "), line
    assert "U+FFFD" in line and "DuckDB" not in line


def test_text_in_utf8_is_not_refused(logq, warehouse) -> None:
    """Non-ASCII text that is UTF-8 (and U+FFFD itself, what invalid bytes were stored as)
    still runs."""
    for args in (
        ["tail", "--grep", "café", *RANGE],
        ["sql", "SELECT '\ufffd' AS v", "-f", "json"],
        ["top", "--path", "/é", *RANGE],
    ):
        run = logq(*args, "--warehouse", warehouse.uri)
        assert run.exit_code in (0, 3), run.stderr  # 3: no rows matched, said so
        assert "not UTF-8" not in run.stderr
    answer = logq("sql", "SELECT '\ufffd' AS v", "-f", "json", "--warehouse", warehouse.uri)
    assert answer.json() == [{"v": "\ufffd"}]


def test_the_real_program_refuses_argument_bytes_that_are_not_utf8(
    warehouse, subprocess_env: dict[str, str], tmp_path
) -> None:
    """Through a real process: the bytes reach Python as argv, as from a shell."""
    env = {**subprocess_env, "LOGQ_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [str(console_script("logq")), "top", "--path", b"/\xff", "--warehouse", warehouse.uri],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(b"logq: error: --path b'/\\xff' is not UTF-8 text: ")
    assert b"Traceback" not in done.stderr and done.stdout == b""
