"""``--service`` values as the stored partition values every query command compares with.

The writer stores a service name lower-cased with accents folded, and rewrites anything else
(``/``, quotes, ``..``) to ``_``. A value that only differs by case or accents names the same
folder (``-s CAFE-U`` and ``-s café-ü`` both find ``cafe-u``) and is taken; a value the writer
would have rewritten otherwise is refused, so a quote or a ``..`` never reaches a query. The
refusal names what is wrong with the value (the characters refused, a ``_`` at an end, ``__``)
and the rule a name follows: "stored as letters, digits, '_', '.', '-'" alone left ``recip_``
unexplained. It suggests only names the warehouse holds: the rewritten form
(``recipe/../checkout`` -> ``recipe_checkout``, ``*`` -> ``svc-<hash>``) is usually no service
at all. An empty value (``-s ""`` from an unset ``$SVC``, or an empty item of a comma list)
is refused too: taken as "no filter" it answered for every service.

A name the writer stores under a hash because it loses information otherwise (characters
with no ASCII form: ``Заказы-api`` -> ``api-014a4ce317``, ``服务`` -> ``svc-4b81846f62``; longer
than 128 characters) is taken as that hashed folder (:func:`hashed_folder`). The mapping is
the writer's own, over the very name (no other name shares the folder but by a 40-bit hash
collision) and the folder's name is always safe, so refusing it only made the user find the
hash (in the aggregator's log or `logq services`) for a name they know. The hash is over the
name as sent, its case included (``ЗАКАЗЫ-api`` is another folder, as it is to the writer):
``-s`` takes it as typed, surrounding blanks aside. When that folder is missing, the note
names the value as typed and the spellings differing in case only whose folders exist
(:func:`other_cases`). Such a value that also holds an ASCII
character the writer would rewrite (``Заказы/api``, ``Заказы*``) is refused as any other: a
glob or a path is more likely a mistake than a name, and the refusal suggests the warehouse's
closest names, the hashed ones included.
"""

from __future__ import annotations

import difflib
import unicodedata
from typing import TYPE_CHECKING

from athena import named
from athena.named import with_more
from cli.notes import empty_option_text, shown

if TYPE_CHECKING:
    from athena.schema import SanitizedService

#: The characters a stored name is made of (after case and accents are folded).
_ACCEPTED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")
#: Most refused characters, or unknown values, a message names one by one.
_NAMED_AT_MOST = 4
#: Most characters of a refused value the message repeats.
_SHOWN_CHARS = 40
#: Most close names a refusal suggests by name; the others are counted.
SUGGESTED_AT_MOST = 3
#: Characters the values a note or reason names one by one may take (:func:`counted`): past
#: them, and past :data:`_NAMED_AT_MOST` values, the others are counted.
NAMES_ROOM = named.NAMES_ROOM
#: The most characters of a note or "no results" reason that names ``--service`` values,
#: whatever their number and length: each list in it is cut at :data:`NAMES_ROOM` and counted,
#: and :func:`capped` cuts anything left over (300 values of 66 characters, listed in full,
#: made a note of 36 KB).
NOTE_MAX_CHARS = 1200
#: The value typed for each hashed folder a ``--service`` value was taken as in this process
#: (:func:`hashed_folder`): a note about a folder the warehouse lacks names what was typed,
#: ``'ЗАКАЗЫ-api'``, where the hash alone (``'api-96308befc7'``) told the user nothing.
_TYPED: dict[str, str] = {}


def normalise_services(values: list[str] | None, warehouse: str | None = None) -> list[str] | None:
    """``--service`` values as stored partition values (None: the option was not given, which
    means every service).

    Each value may be a comma-separated list. ``warehouse`` (the ``--warehouse`` value, else
    ``LOGQ_WAREHOUSE``) is only read to suggest existing names when a value is refused.
    ValueError (exit 2) for an empty name or one the writer would have stored otherwise (but
    under a hash of it: :func:`hashed_folder`).
    """
    if not values:
        return None
    from athena.schema import sanitize_service

    out: list[str] = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                raise ValueError(empty_text(value))
            name = hashed_folder(part)
            if name is None:
                name = sanitize_service(part)
                if name != folded(part):
                    raise ValueError(refused_text(part, name, warehouse))
            if name not in out:
                out.append(name)
    return out


def hashed_folder(part: str) -> str | None:
    """The folder the writer stores the service named ``part`` in when it hashes the name for
    what it loses (characters with no ASCII form, a length past 128); None when it does not,
    or when ``part`` also holds an ASCII character the writer rewrites (refused as usual).

    ``part`` is hashed without its surrounding blanks: ``-s "checkout, Заказы-api"`` means
    the name, not `` Заказы-api``."""
    from athena.schema import sanitized_service

    name = part.strip()
    result = sanitized_service(name)
    if not result.lossy:
        return None
    if any(c.isascii() and c not in _ACCEPTED for c in folded(name)):
        return None
    _TYPED[result.value] = name
    return result.value


def as_typed(name: str) -> str:
    """The ``--service`` value typed for ``name`` when it is a hashed folder taken for one
    (:func:`hashed_folder`), else ``name``."""
    return _TYPED.get(name, name)


def other_cases(names: list[str], known: list[str] | tuple[str, ...]) -> list[str]:
    """Spellings of the hashed ``names``, as typed, that differ in case only and whose folders
    ``known`` holds (lower, upper, first letter capital, each word capital).

    The writer hashes a name's exact spelling, so ``-s ЗАКАЗЫ-api`` finds no ``Заказы-api``
    data, and difflib over the hashes cannot tell which hash was meant: the hash is the
    writer's, so each spelling is tried the writer's way."""
    from athena.schema import sanitized_service

    have = set(known)
    found: list[str] = []
    for name in names:
        typed = _TYPED.get(name)
        if typed is None:
            continue
        for variant in (typed.lower(), typed.upper(), typed.capitalize(), typed.title()):
            if variant not in found and sanitized_service(variant).value in have:
                found.append(variant)
    return found


def folded(part: str) -> str:
    """``part`` lower-cased with its accents dropped, nothing else changed: what the writer
    stores for a name made only of ``[a-z0-9_.-]`` once case and accents are folded."""
    text = unicodedata.normalize("NFKD", part.strip().lower())
    return "".join(c for c in text if not unicodedata.combining(c))


def empty_text(value: str) -> str:
    """Why an empty ``--service`` value is refused, and the two things meant instead."""
    what = "is empty" if not value.strip() else "holds an empty name between its commas"
    instead = "give a service name (`logq services` lists them)"
    return empty_option_text("--service", value, instead, "ask about every service", what)


def refused_text(part: str, name: str, warehouse: str | None) -> str:
    """Why ``part`` is not a service name, with the closest names the warehouse holds (none
    when it cannot be listed cheaply: see :func:`existing_names`)."""
    from cli.errors import MAX_MESSAGE_CHARS

    known = existing_names(warehouse)
    close = difflib.get_close_matches(name, known, n=max(len(known), 1), cutoff=0.6)
    # The value cut shorter than elsewhere: the fault, the rule and the names suggested must
    # fit in one error line (:data:`cli.errors.MAX_MESSAGE_CHARS`), not be cut from its middle.
    value = shown(part, _echoed_chars(part))
    text = f"--service {value} is not a service name: {fault(part)}; {rule()}"
    return text + suggestion(close, MAX_MESSAGE_CHARS - len(text))


#: Where every known name is listed, as a suggestion names it.
LISTED = "; `logq services` lists them"


def suggestion(close: list[str], room: int, listed: str = LISTED) -> str:
    """How a refusal ends, in at most ``room`` characters when it can: where the names are
    (``listed``: `logq services`), and the closest of ``close`` (closest first) that fit, up to
    :data:`SUGGESTED_AT_MOST` of them, counting the others.

    A name is up to 128 characters: three of them made the line longer than the error cut,
    which then took out its middle, the rule and half a name with it. When not even the
    closest name fits, the count of close names does. ``listed`` empty: no command is named
    (on Athena `logq services` reads the same service list a note is about)."""
    every = " all" if listed else ""
    for count in range(min(len(close), SUGGESTED_AT_MOST), 0, -1):
        named = " or ".join(map(repr, close[:count]))
        more = len(close) - count
        if more:  # the command named last, where it says how to see the ones left out
            are = "is" if more == 1 else "are"
            text = f"; did you mean {named}? {more} more {are} close{listed}{every}"
        else:
            text = f"{listed}; did you mean {named}?"
        if len(text) <= room:
            return text
    if not close:
        return listed
    what = "1 known name is" if len(close) == 1 else f"{len(close)} known names are"
    return f"; {what} close{listed}{every}"


def close_names(values: list[str], known: list[str] | tuple[str, ...]) -> list[str]:
    """The known names closest to each of ``values`` (up to 3 each, difflib), in that order.

    Only for the values a message names (:func:`named_within`): difflib compares a value with
    every known name, character by character, so suggestions for every value given cost their
    product (80 values of 67 characters against 200 names: 4.6 s before `logq errors`
    answered; 2,000 values outside an Athena table's list of 200 names: 43 s), for names the
    message counted and never showed."""
    close: list[str] = []
    for name in values:
        for match in difflib.get_close_matches(name, known, n=3, cutoff=0.6):
            if match not in close:
                close.append(match)
    return close


def named_within(
    names: list[str],
    room: int,
    at_most: int = _NAMED_AT_MOST,
    *,
    given: bool = True,
    quoted: bool = False,
) -> tuple[str, int]:
    """:func:`athena.named.named_within` of ``--service`` values or stored names.

    ``given``: values as typed, quoted, each cut past 80 characters (:func:`cli.notes.shown`;
    a name that long is rare, a value of kilobytes is no name): a ``--service`` list of
    kilobytes made a note of kilobytes. Otherwise stored names (up to 128 characters), named
    whole so they can be copied, quoted with ``quoted``."""
    word = shown if given else (repr if quoted else str)
    return named.named_within(names, room, at_most, word)


def counted(names: list[str], room: int = NAMES_ROOM, *, given: bool = True) -> str:
    """``'a', 'b' and 298 more``: :func:`named_within`, with the names left out counted."""
    return with_more(*named_within(names, room, given=given))


def capped(text: str, limit: int = NOTE_MAX_CHARS) -> str:
    """``text`` within ``limit`` characters, cut in its middle past it (what was left out
    counted, :func:`cli.errors.shorten`). The last guard of a note or reason whose parts are
    bounded already: it only cuts when a value besides the names (a ``--warehouse`` of
    kilobytes) made the text long."""
    from cli.errors import shorten

    return shorten(text, limit)


def _echoed_chars(part: str) -> int:
    """How many characters of ``part`` the refusal repeats: at most :data:`_SHOWN_CHARS` once
    escaped, so 40 control characters (``\\x00``, 4 each) do not push the line past its cut."""
    width = 0
    for count, char in enumerate(part):
        width += len(repr(char)) - 2
        if width > _SHOWN_CHARS:
            return count
    return len(part)


def rule() -> str:
    """What the user learns when a value is refused: the names the writer stores unchanged
    (:func:`athena.schema.sanitize_service`); where to find them, :func:`suggestion` says. The
    names it hashes (:func:`hashed_folder`) are said by :func:`fault` when it refuses one: the
    line has no room for them in every refusal."""
    from athena.schema import MAX_SERVICE_LEN  # imported when refusing only: it needs pyarrow

    return (
        "a name is lower-case letters, digits and '_', '.', '-' (never first or last, never "
        f"'__' or '..'), up to {MAX_SERVICE_LEN} characters; case and accents fold ('Café' is "
        "'cafe')"
    )


def fault(part: str) -> str:
    """What in ``part`` the writer would have rewritten (:func:`athena.schema.sanitize_service`),
    in its order: characters it replaces, a run of dots or underscores it collapses, a ``_``,
    ``.`` or ``-`` at an end it strips. One of these is always true of a value
    :func:`normalise_services` refuses. A value the writer hashes (letters with no ASCII form,
    a length past 128) is refused only for an ASCII character it rewrites: that is the one
    named (``Заказы/api``: ``'/'``)."""
    from athena.schema import sanitized_service

    text = folded(part)
    if not text:  # accents only (U+0301): nothing left once they fold
        return "nothing is left of it once accents fold"
    result = sanitized_service(part.strip())
    hashed = result.lossy
    refused = list(
        dict.fromkeys(c for c in text if c not in _ACCEPTED and (c.isascii() or not hashed))
    )
    if refused:
        named = ", ".join(repr(c) for c in refused[:_NAMED_AT_MOST])
        more = f" and {len(refused) - _NAMED_AT_MOST} more" if len(refused) > _NAMED_AT_MOST else ""
        if len(refused) == 1:
            return f"the character {named} is not accepted{_taken(result)}"
        return f"the characters {named}{more} are not accepted{_taken(result)}"
    runs = [run for run in ("..", "__") if run in text]
    if runs:
        return f"it holds {' and '.join(map(repr, runs))}"
    ends = [
        f"{where} with {c!r}"
        for where, c in (("starts", text[:1]), ("ends", text[-1:]))
        if c and c in "_.-"
    ]
    return f"it {' and '.join(ends)}" if ends else "the writer would store it otherwise"


def _taken(result: SanitizedService) -> str:
    """What of a refused value would be taken (:func:`hashed_folder`), said after the
    characters refused; empty when the writer does not hash it."""
    if result.dropped:
        return " (letters with no ASCII form are: the writer stores such a name under a hash)"
    from athena.schema import MAX_SERVICE_LEN

    if result.cut_from:
        return f" (a name past {MAX_SERVICE_LEN} characters is: the writer stores it under a hash)"
    return ""


def existing_names(warehouse: str | None) -> list[str]:
    """Service names of a local-directory warehouse (both tables); empty for an s3:// one (the
    suggestion is not worth an S3 request, which without credentials or network can hang for
    many seconds before a refusal) and when the folder cannot be listed."""
    from athena.freshness import known_services
    from athena.warehouse import open_warehouse, resolve_uri

    try:
        if resolve_uri(warehouse).lower().startswith("s3:"):
            return []
        return known_services(open_warehouse(warehouse))
    except (OSError, ValueError):
        return []
