"""Service names stored under a hash, said once per name in the aggregator's log.

A name that loses information when it becomes a partition value (characters with no ASCII
form, a name past 128 characters, nothing printable: :func:`athena.schema.sanitize_service`)
is stored as what is left of it and a hash of its bytes: ``Заказы-api`` as ``api-014a4ce317``.
That keeps it apart from ``注文-api`` and from a service really named ``api``, but nothing in the
warehouse says which name ``api-014a4ce317`` stands for: a WARNING names the name as sent and
the folder it went to, once per name and process (a :class:`~aggregator.throttle.Throttle`
that never expires, its memory bounded), the first time a message names it. A name that only
folds (``Café API`` -> ``cafe_api``) is stored under a readable form of itself and is not said.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

from aggregator.throttle import Throttle
from athena.named import counted
from athena.schema import MAX_SERVICE_LEN, SanitizedService, sanitized_service

log = logging.getLogger("logq.aggregator.services")

#: Characters of a name as sent the WARNING repeats (a name may be any length).
SHOWN_CHARS = 160
#: Characters without an ASCII form the WARNING names one by one; the others are counted.
NAMED_AT_MOST = 5

_said = Throttle(math.inf, what="service names stored under a hash", logger=log)
"""The hashed values already said, one per name as sent (their hash tells the names apart; a
name as sent may be any length, a value is at most 128 characters). Past 10,000 names, the
others are counted and summed up every 10 minutes (:class:`~aggregator.throttle.Throttle`)."""


def stored_service(name: str | None) -> str:
    """The partition value of ``name`` (:func:`athena.schema.sanitize_service`); when it is
    hashed, a WARNING says so the first time (:func:`rewrite_text`)."""
    result = sanitized_service(name)
    if result.hashed and _said.due(result.value, time.time()):
        log.warning("%s", rewrite_text(str(name), result))
    return result.value


def rewrite_text(name: str, result: SanitizedService) -> str:
    """``service 'Заказы-api' is stored as 'api-014a4ce317': ...``: the name as sent (cut past
    :data:`SHOWN_CHARS`), the folder, why it is hashed, and how ``logq`` finds it."""
    reasons = []
    letters = [c for c in result.dropped if not _is_escaped_byte(c)]
    if letters:
        have = "has" if len(letters) == 1 else "have"
        named = counted(letters, at_most=NAMED_AT_MOST, word=repr)
        reasons.append(f"{named} {have} no ASCII form")
    if len(letters) < len(result.dropped):
        reasons.append("it is not valid UTF-8")
    if result.cut_from:
        reasons.append(
            f"it is {result.cut_from:,} characters long once sanitised, past {MAX_SERVICE_LEN}"
        )
    if not reasons:
        reasons.append("nothing of it is a letter, digit, '_', '.' or '-'")
    return (
        f"service {_shown(name)} is stored as {result.value!r} (service={result.value}): "
        f"{' and '.join(reasons)}; the hash of the name as sent keeps it apart from other "
        f"names; `logq --service` takes the name as sent, or {result.value}"
    )


def _is_escaped_byte(char: str) -> bool:
    """``char`` stands for a byte that is not UTF-8 (``surrogateescape``, as the decoder hands
    such a name over: :func:`athena.schema._name_bytes`)."""
    return 0xDC80 <= ord(char) <= 0xDCFF


def _shown(name: str) -> str:
    """``name`` quoted, cut past :data:`SHOWN_CHARS`; one that is not valid UTF-8 as the bytes
    it was sent as (``b'rec\\xffipe'``), not as escapes no one typed."""
    cut = name if len(name) <= SHOWN_CHARS else name[:SHOWN_CHARS]
    shown = repr(cut)
    # Not with another lone surrogate too (JSON's \ud800): no byte stands for that one.
    with contextlib.suppress(UnicodeEncodeError):
        if any(_is_escaped_byte(c) for c in cut):
            shown = repr(cut.encode("utf-8", "surrogateescape"))
    return shown if cut is name else shown + "..."
