"""Text in and out of ``logq`` whatever the locale.

The warehouse holds UTF-8 text. Under the C or POSIX locale Python normally switches to UTF-8
(PEP 540's UTF-8 mode); with that mode off (``PYTHONUTF8=0``) its standard streams are ASCII,
so one non-ASCII message ended every format with ``'ascii' codec can't encode``, and arguments
were decoded as ASCII (``--service café`` became ``'caf\\udcc3\\udca9'``, a ``logq sql``
statement with ``'%wörld%'`` failed in DuckDB). An ASCII locale is taken to mean UTF-8 here, as
Python's UTF-8 mode does; in any other locale that cannot show a character, it is printed as a
backslash escape instead of failing. An encoding set with ``PYTHONIOENCODING`` is kept (as
Python's UTF-8 mode keeps it), with the backslash escapes unless it names its own error
handler; the arguments follow the file-system encoding, whatever the streams' is.
"""

from __future__ import annotations

import codecs
import os
import sys
from typing import TextIO


def _codec(encoding: str | None) -> str | None:
    """The codec's canonical name (``ascii`` for ``ANSI_X3.4-1968``), None if unknown."""
    try:
        return codecs.lookup(encoding).name if encoding else None
    except LookupError:
        return None


def _is_ascii(stream: TextIO) -> bool:
    return _codec(getattr(stream, "encoding", None)) == "ascii"


def writes_utf8(stream: TextIO) -> bool:
    """Whether ``stream`` encodes as UTF-8 (one without an encoding, like StringIO, counts)."""
    encoding = getattr(stream, "encoding", None)
    return not encoding or _codec(encoding) == "utf-8"


def _io_encoding_env() -> tuple[str, str]:
    """``PYTHONIOENCODING`` as (encoding, error handler), each ``""`` when not given."""
    encoding, _, errors = os.environ.get("PYTHONIOENCODING", "").partition(":")
    return encoding.strip(), errors.strip()


def output_encoding() -> str:
    """What a ``logq`` started with this environment writes to a pipe: ``PYTHONIOENCODING``'s
    encoding if set, else the locale's, UTF-8 for an ASCII one (see
    :func:`utf8_streams_and_args`). For reading its output."""
    import locale

    explicit, _ = _io_encoding_env()
    if explicit and _codec(explicit):
        return explicit
    encoding = locale.getpreferredencoding(False)
    return "utf-8" if _codec(encoding) == "ascii" else encoding


def _reconfigure(stream: TextIO, **options: str) -> None:
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(**options)


def utf8_streams_and_args(argv: list[str] | None = None) -> None:
    """Make stdout/stderr write every character, and (under an ASCII locale) ``argv`` hold what
    was typed. Changes ``sys.stdout``, ``sys.stderr`` and ``argv`` (``sys.argv`` by default)
    in place; a no-op in UTF-8 locales and in Python's UTF-8 mode."""
    argv = sys.argv if argv is None else argv
    explicit, explicit_errors = _io_encoding_env()
    ascii_locale = not explicit and (_is_ascii(sys.stdout) or _is_ascii(sys.stderr))
    for stream in (sys.stdout, sys.stderr):
        if writes_utf8(stream) or explicit_errors:
            continue
        if ascii_locale:
            _reconfigure(stream, encoding="utf-8", errors="backslashreplace")
        else:
            _reconfigure(stream, errors="backslashreplace")
    if _codec(sys.getfilesystemencoding()) == "ascii" and not sys.flags.utf8_mode:
        # Arguments were decoded as ASCII, their other bytes kept as surrogates: read as UTF-8.
        # (The streams do not tell: PYTHONIOENCODING=utf-8 under LC_ALL=C leaves argv ASCII.)
        argv[:] = [os.fsencode(arg).decode("utf-8", "surrogateescape") for arg in argv]
