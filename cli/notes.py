"""Lines for the person at the terminal, kept off stdout so pipes carry only the answer.

Both the query runner and the explanations of an empty or stale answer write notes; they live
here, below both, so neither has to import the other. :func:`note_once` remembers what was said
during one command (``trace`` and ``tail --follow`` run their query more than once).
"""

from __future__ import annotations

import sys

#: Notes printed by :func:`note_once` since the last :func:`forget_notes`.
_noted: set[str] = set()


def note(message: str) -> None:
    """A line for the person at the terminal: always stderr, so pipes stay clean."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and its noun, singular for 1: "1 file", "3 files", "1,204 partitions"."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def shown(value: str | bytes, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut when long (a 100 KB value is not echoed)."""
    if len(value) <= limit:
        return repr(value)
    unit = "bytes" if isinstance(value, bytes) else "characters"
    return f"{value[:limit]!r}... ({len(value):,} {unit})"


def refuse_not_utf8(option: str, value: str | None) -> None:
    """ValueError (exit 2) for a value holding bytes that are not UTF-8 (``--path $'/\\xff'``;
    Python keeps such argument bytes as lone surrogates), before an engine fails on it with an
    encoding error. No stored value can hold such bytes: the aggregator stores text as UTF-8,
    each invalid sequence replaced by U+FFFD (``aggregator.decode``)."""
    if value is None or not any("\udc80" <= c <= "\udcff" for c in value):
        return
    sent = value.encode("utf-8", "surrogateescape")
    raise ValueError(
        f"{option} {shown(sent)} is not UTF-8 text: logq stores lines as UTF-8, each "
        "invalid byte sequence replaced by U+FFFD (as Fluent Bit and Vector do), so nothing "
        "stored holds these bytes; give the text in UTF-8 (check the terminal's or script's "
        "encoding), or match the replacement character U+FFFD ($'\\uFFFD' in bash)"
    )


def empty_option_text(option: str, value: str, instead: str, absent: str, what: str = "") -> str:
    """Why an empty filter value is refused: ``--path "$P"`` with ``$P`` unset means no filter
    at all and answers for everything, with no sign of it. ``instead`` says what to give,
    ``absent`` what leaving the option out asks; ``what`` replaces "is empty"."""
    return (
        f"{option} {shown(value)} {what or 'is empty'}; {instead}, or leave {option} out to "
        f"{absent}"
    )


def refuse_empty(
    option: str, value: str | None, instead: str, absent: str, *, blank: bool = False
) -> None:
    """ValueError (exit 2, :func:`empty_option_text`) for a filter option given as ``""``
    (with ``blank``, also one of only spaces: a time, where they mean nothing; a ``--grep``
    pattern of a space is a pattern); None (not given) and any other value pass."""
    if value is not None and (value == "" or (blank and not value.strip())):
        raise ValueError(empty_option_text(option, value, instead, absent))


def note_once(message: str) -> None:
    """:func:`note` a message once per command (``trace`` and ``tail --follow`` run their query
    more than once); :func:`cli.runner.prepare` starts each command with none noted."""
    if message not in _noted:
        _noted.add(message)
        note(message)


def forget_notes() -> None:
    """Start a new command with nothing noted (tests run many commands in one process), the
    folders the listings skipped (:mod:`athena.stray_folders`) included."""
    _noted.clear()
    strays = sys.modules.get("athena.stray_folders")  # not imported for this: start-up time
    if strays is not None:
        strays.forget_strays()
