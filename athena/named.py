"""Lists in messages: the first few names, the rest counted (``a, b and 2,998 more``).

A message that names every item of a list grows with the list: the aggregator's catalog resync
named each service the stored DDL lacked (165 KB with thousands of them), ``logq`` notes named
every ``--service`` value. One helper for all of them, here where both the aggregator and the
CLI may import it (DESIGN.md: ``aggregator -> athena <- cli``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: Most names a message names one by one, unless it says otherwise.
NAMED_AT_MOST = 4
#: Characters the names named one by one may take, unless the message says otherwise.
NAMES_ROOM = 160


def named_within(
    names: Sequence[str],
    room: int = NAMES_ROOM,
    at_most: int = NAMED_AT_MOST,
    word: Callable[[str], str] = str,
) -> tuple[str, int]:
    """The first of ``names`` (up to ``at_most``), each as ``word`` writes it, joined with
    ``, `` in at most ``room`` characters, the first always; and how many are left out, for
    the caller to count (:func:`with_more`). Only the names named are formatted."""
    words = [word(n) for n in names[:at_most]]
    count = min(len(words), 1)
    while count < len(words) and len(", ".join(words[: count + 1])) <= room:
        count += 1
    return ", ".join(words[:count]), len(names) - count


def with_more(named: str, left: int) -> str:
    """``named`` (from :func:`named_within`) followed by `` and N more`` when ``left``."""
    return f"{named} and {left:,} more" if left else named


def counted(
    names: Sequence[str],
    room: int = NAMES_ROOM,
    at_most: int = NAMED_AT_MOST,
    word: Callable[[str], str] = str,
) -> str:
    """``a, b and 298 more``: :func:`named_within`, with the names left out counted."""
    return with_more(*named_within(names, room, at_most, word))
