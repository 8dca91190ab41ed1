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


def shown(value: str, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut when long (a 100 KB value is not echoed)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def note_once(message: str) -> None:
    """:func:`note` a message once per command (``trace`` and ``tail --follow`` run their query
    more than once); :func:`cli.runner.prepare` starts each command with none noted."""
    if message not in _noted:
        _noted.add(message)
        note(message)


def forget_notes() -> None:
    """Start a new command with nothing noted (tests run many commands in one process)."""
    _noted.clear()
