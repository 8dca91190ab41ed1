"""logq under the C/POSIX locale with Python's UTF-8 mode off (``LC_ALL=C PYTHONUTF8=0``)."""

from __future__ import annotations

import io
import os
import sys

import pytest

from cli.textio import utf8_streams_and_args


def _stream(encoding: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")


def _written(stream: io.TextIOWrapper) -> bytes:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue()


def test_ascii_locale_writes_and_reads_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every format ended with "logq: error: 'ascii' codec can't encode characters" on the first
    non-ASCII message, and ``--service café`` / a statement with ``'%wörld%'`` arrived as
    ``'caf\\udcc3\\udca9'`` (refused, or a DuckDB "cannot encode str as UTF-8")."""
    out, err = _stream("ascii"), _stream("ascii")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "ascii")
    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    typed = ["logq", "tail", "--service", "café", "--grep", "wörld ✓"]
    argv = [os.fsencode(a).decode("ascii", "surrogateescape") for a in typed]  # as Python has it
    utf8_streams_and_args(argv)
    assert argv == typed
    print("héllo wörld — ✓ 日本語 🚀")
    sys.stderr.write("logq: note: café\n")
    assert _written(out) == "héllo wörld — ✓ 日本語 🚀\n".encode()
    assert _written(err) == "logq: note: café\n".encode()


def test_other_locales_escape_what_they_cannot_show(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _stream("latin-1")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    argv = ["logq", "caf\xe9"]
    utf8_streams_and_args(argv)
    assert argv == ["logq", "caf\xe9"]  # decoded right by the locale already
    print("café ✓")
    assert _written(out) == b"caf\xe9 \\u2713\n"


def test_utf8_streams_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _stream("utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "utf-8")
    monkeypatch.setattr(sys, "stderr", _stream("utf-8"))
    argv = ["logq", "caf\udcc3"]
    utf8_streams_and_args(argv)
    assert argv == ["logq", "caf\udcc3"] and out.errors == "strict"


def test_output_encoding_is_what_a_child_logq_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """``logq demo`` reads ``logq errors``' output: decoded as ASCII, the UTF-8 table ended the
    demo with a UnicodeDecodeError traceback under ``LC_ALL=C PYTHONUTF8=0``."""
    import locale

    from cli.textio import output_encoding

    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "ANSI_X3.4-1968")
    assert output_encoding() == "utf-8"
    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "ISO-8859-1")
    assert output_encoding() == "ISO-8859-1"


def test_an_encoding_set_in_pythonioencoding_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PYTHONIOENCODING=ascii`` is a choice, not the locale: the output stays ASCII (escapes
    for the rest) instead of turning into UTF-8 bytes, as Python's own UTF-8 mode keeps it."""
    import locale

    from cli.textio import output_encoding

    out = _stream("ascii")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", _stream("ascii"))
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "utf-8")
    monkeypatch.setenv("PYTHONIOENCODING", "ascii")
    utf8_streams_and_args(["logq"])
    print("café ✓")
    assert _written(out) == b"caf\\xe9 \\u2713\n"
    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "UTF-8")
    assert output_encoding() == "ascii"  # what logq demo reads a child's output as


def test_arguments_follow_the_file_system_encoding_not_the_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``LC_ALL=C PYTHONUTF8=0 PYTHONIOENCODING=utf-8`` (UTF-8 streams, ASCII arguments):
    ``--service café`` was still refused as ``'caf\\udcc3\\udca9'``."""
    monkeypatch.setattr(sys, "stdout", _stream("utf-8"))
    monkeypatch.setattr(sys, "stderr", _stream("utf-8"))
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "ascii")
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
    typed = ["logq", "tail", "--service", "café"]
    argv = [os.fsencode(a).decode("ascii", "surrogateescape") for a in typed]
    utf8_streams_and_args(argv)
    assert argv == typed


def test_json_stays_json_on_an_output_that_is_not_utf8() -> None:
    """With ``PYTHONIOENCODING=ascii`` (or a Latin-1 locale) the stream writes what it cannot
    encode as ``\\xe9`` / ``\\U0001f680``: not JSON escapes, so ``--format json`` was no JSON
    (jq: "invalid escape"). It writes ``\\u`` escapes there instead."""
    import json

    from cli.output import OutputFormat, emit

    for encoding in ("ascii", "latin-1"):
        out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="backslashreplace")
        emit(OutputFormat.json, ["message"], [("héllo ✓ 🚀",)], out=out)
        assert json.loads(_written(out).decode(encoding)) == [{"message": "héllo ✓ 🚀"}]
    out = _stream("utf-8")  # unchanged on UTF-8: the characters themselves
    emit(OutputFormat.json, ["message"], [("héllo ✓ 🚀",)], out=out)
    assert _written(out) == '[\n  {"message": "héllo ✓ 🚀"}\n]\n'.encode()


@pytest.mark.parametrize("given", ["argument", "environment"])
def test_a_warehouse_with_a_non_ascii_name_under_the_c_locale(
    given: str, warehouse, tmp_path, subprocess_env: dict[str, str]
) -> None:
    """Python's own file functions encode names as ASCII there, pyarrow and DuckDB as UTF-8:
    ``--warehouse /data/wärehouse`` failed every command with "'ascii' codec can't encode",
    and ``LOGQ_WAREHOUSE`` (read as surrogates) with "surrogates not allowed"."""
    import json
    import shutil
    import subprocess

    from tests.support.procs import console_script

    folder = tmp_path / "wärehouse"
    shutil.copytree(warehouse.uri, folder)
    env = {**subprocess_env, "LC_ALL": "C", "PYTHONUTF8": "0", "LOGQ_CACHE_DIR": str(tmp_path)}
    env.pop("PYTHONIOENCODING", None)
    args = ["--warehouse", str(folder)] if given == "argument" else []
    if given == "environment":
        env["LOGQ_WAREHOUSE"] = str(folder)
    statement = "SELECT count(*) AS n FROM envoy_access"
    done = subprocess.run(
        [
            str(console_script("logq")),
            "sql",
            statement,
            "--since",
            "2020-01-01",
            *args,
            "-f",
            "json",
        ],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    assert json.loads(done.stdout) == [{"n": len(warehouse.access)}]


def test_services_of_a_warehouse_with_a_non_ascii_name_under_the_c_locale(
    warehouse, tmp_path, subprocess_env: dict[str, str]
) -> None:
    """``logq services`` lists a local warehouse's hour folders with os.scandir, which takes
    names as Python's file functions do: in ``/data/wärehouse`` it failed with "'ascii' codec
    can't encode character" (the hours are counted as under UTF-8)."""
    import json
    import shutil
    import subprocess

    from tests.support.procs import console_script

    folder = tmp_path / "wärehouse"
    shutil.copytree(warehouse.uri, folder)
    command = [str(console_script("logq")), "services", "--warehouse", str(folder), "-f", "json"]
    answers = []
    for locale in ({"LC_ALL": "C", "PYTHONUTF8": "0"}, {"PYTHONUTF8": "1"}):
        env = {**subprocess_env, **locale, "LOGQ_CACHE_DIR": str(tmp_path)}
        env.pop("PYTHONIOENCODING", None)
        done = subprocess.run(command, capture_output=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
        answers.append(json.loads(done.stdout))
    assert answers[0] == answers[1]
    assert [row["service"] for row in answers[0]] == sorted(set(warehouse.access["service"]))
    assert all(row["access_hours"] > 0 for row in answers[0])


def test_an_s3_warehouse_with_a_non_ascii_prefix_from_the_environment() -> None:
    """Under the C locale Python reads ``LOGQ_WAREHOUSE=s3://bucket/päth`` as surrogates (the
    UTF-8 bytes it could not decode): pyarrow refused the key ("surrogates not allowed"). The
    bucket and prefix are the text the bytes are (as ``--warehouse`` gives them)."""
    import os

    from athena.warehouse import open_warehouse

    given = os.fsdecode("s3://bucket/päth/wh".encode())  # what the C locale makes of it
    read_as_c_locale = given.encode("utf-8").decode("ascii", "surrogateescape")
    for uri in (given, read_as_c_locale):
        wh = open_warehouse(uri)
        assert (wh.uri, wh.base) == ("s3://bucket/päth/wh", "bucket/päth/wh")
