"""``--service`` values as the stored partition values every query command compares with.

The writer stores a service name lower-cased with accents folded, and rewrites anything else
(``/``, quotes, ``..``) to ``_``. A value that only differs by case or accents names the same
folder (``-s CAFE-U`` and ``-s café-ü`` both find ``cafe-u``) and is taken; a value the writer
would have rewritten otherwise is refused, so a quote or a ``..`` never reaches a query. The
refusal suggests only names the warehouse holds: the rewritten form (``recipe/../checkout`` ->
``recipe_checkout``, ``*`` -> ``svc-<hash>``) is usually no service at all. An empty value (``-s
""`` from an unset ``$SVC``, or an empty item of a comma list) is refused too: taken as "no
filter" it answered for every service.
"""

from __future__ import annotations

import difflib
import unicodedata

from cli.notes import empty_option_text, shown

#: What the user learns when a value is refused: how names are stored, where to find them.
STORED_AS = (
    "service names are stored as lower-case letters, digits, '_', '.', '-'; "
    "`logq services` lists them"
)


def normalise_services(values: list[str] | None, warehouse: str | None = None) -> list[str] | None:
    """``--service`` values as stored partition values (None: the option was not given, which
    means every service).

    Each value may be a comma-separated list. ``warehouse`` (the ``--warehouse`` value, else
    ``LOGQ_WAREHOUSE``) is only read to suggest existing names when a value is refused.
    ValueError (exit 2) for an empty name or one the writer would have stored otherwise.
    """
    if not values:
        return None
    from athena.schema import sanitize_service

    out: list[str] = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                raise ValueError(empty_text(value))
            name = sanitize_service(part)
            if name != folded(part):
                raise ValueError(refused_text(part, name, warehouse))
            if name not in out:
                out.append(name)
    return out


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
    close = difflib.get_close_matches(name, existing_names(warehouse), n=3, cutoff=0.6)
    typo = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"--service {shown(part)} is not a service name ({STORED_AS}){typo}"


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
