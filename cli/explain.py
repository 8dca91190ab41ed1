"""Why an answer is empty or may be stale, in words that say what to try next.

An empty table in an incident reads as "all is well"; so does "no errors" from a window the
pipeline never filled. These explanations tell those apart from a real empty answer: a warehouse
path one folder off, unknown ``--service`` names (with the closest known ones), a window before
or after the data, how many requests the window held, and a newest row minutes old. They are
notes and reasons around the answer, never a change to it; only "no possible answer" changes
the exit status (:data:`NO_DATA_EXIT`). Running and printing the query is :mod:`cli.runner`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from cli.notes import note_once, plural
from cli.options import Common, EngineName

if TYPE_CHECKING:
    from athena.freshness import Ahead, Tops
    from athena.projection import ServiceEnum
    from athena.warehouse import Warehouse
    from cli.runner import Prepared

#: Finds the newest row at or before a time (None: of all rows), e.g. :func:`newest_in`.
NewestFinder = Callable[[datetime | None], datetime | None]


def newest_and_ahead(
    find: NewestFinder, at_or_before: bool = True
) -> tuple[datetime | None, datetime | None]:
    """The newest row at or before now, and the newest row stamped ahead of now (else None).

    Freshness is the newest row *not* in the future: rows a source with its clock ahead wrote
    say nothing of how far behind the pipeline is, and while they were the newest a stalled
    pipeline never looked stale (the stale note and an empty answer's "newest data" also named
    two different times). Those rows are named apart (:func:`ahead_text`). ``find`` runs once
    when nothing is ahead, as before; twice otherwise, unless ``at_or_before`` is False: then
    the newest row at or before now is None once rows ahead are seen (the stale note names
    those rows instead, and the second look read the ``timestamp`` column of every newest
    file with rows ahead, which counting them reads again).
    """
    from datetime import UTC, timedelta

    from athena.timerange import as_utc
    from cli.output import CLOCK_TOLERANCE_SECONDS

    top = find(None)
    cap = datetime.now(UTC) + timedelta(seconds=CLOCK_TOLERANCE_SECONDS)
    if top is None or as_utc(top) <= cap:
        return top, None
    return (find(cap) if at_or_before else None), top


def ahead_text(ahead: datetime | None) -> str:
    """`` (rows stamped up to <time>: in 2h 5m, ahead of this clock: ...)``, or empty."""
    if ahead is None:
        return ""
    from athena.timerange import iso_utc
    from cli.output import since_text

    return f" (rows stamped up to {iso_utc(ahead)}: {since_text(ahead)})"


#: Services ``logq services`` gives a note of their own for rows stamped ahead of the clock;
#: past them, one note counts the others (a host with a clock a day ahead, running every
#: service, made one note per service of the warehouse after the table).
AHEAD_NOTES_MAX = 4


def note_ahead(ahead: dict[str, datetime]) -> None:
    """The notes of ``logq services`` on rows stamped ahead of the clock: ``<svc> also has
    rows (...)`` for the first :data:`AHEAD_NOTES_MAX` services (by name), then one note for
    the rest, with the newest of their times."""
    from cli.notes import note

    names = sorted(ahead)
    for svc in names[:AHEAD_NOTES_MAX]:
        note(f"logq: note: {svc} also has rows{ahead_text(ahead[svc])}")
    rest = names[AHEAD_NOTES_MAX:]
    if rest:
        newest = max(ahead[svc] for svc in rest)
        note(
            f"logq: note: {len(rest):,} more services also have rows{ahead_text(newest)}; "
            "`logq services -s NAME` notes those of one"
        )


#: Known services listed in full by an unknown-service message; with more, only the closest
#: names are (a list of 200 hides the one that was meant).
LIST_KNOWN_MAX = 10

#: Characters the parts of an unknown-service message may take: the values given, the known
#: names listed, and the services shown (``rest``, :func:`showing_text`). Past the room, names
#: are counted: 80 unknown values of 60 characters, or 10 known names of 128, made a note of
#: kilobytes.
UNKNOWN_ROOM = {"unknown": 160, "known": 200, "showing": 160}

#: The most characters of :func:`unknown_services_text` (with a ``rest`` of
#: :func:`showing_text`), whatever the number and length of the names: the parts above, the
#: words around them, and a suggestion (:func:`cli.service_names.suggestion`) in what is left
#: of this, else its count of the close names.
UNKNOWN_TEXT_MAX_CHARS = 800


#: Why a name that differs in case only is suggested (:func:`cli.service_names.other_cases`).
_CASED_WHY = " (a name with letters of no ASCII form is stored under a hash of its exact spelling)"


def unknown_services_text(
    table: str,
    unknown: list[str],
    known: list[str],
    rest: str = "",
    max_chars: int = UNKNOWN_TEXT_MAX_CHARS,
) -> str:
    """``unknown service 'chekout' in <table>; known: a, b; did you mean 'checkout'?``.

    The known names closest to the values named (difflib) end the message; the known names are
    listed when there are few (or when none is close), else counted. ``rest`` goes before the
    suggestion. Within ``max_chars`` (less than :data:`UNKNOWN_TEXT_MAX_CHARS` when the text
    follows another in one note): the values given, the known names and the close ones are
    named while they fit (:data:`UNKNOWN_ROOM`) and counted past it, with `logq services`,
    which lists them all.
    """
    from cli.service_names import (
        SUGGESTED_AT_MOST,
        as_typed,
        close_names,
        named_within,
        other_cases,
        suggestion,
        with_more,
    )

    named, left = named_within([as_typed(n) for n in unknown], UNKNOWN_ROOM["unknown"])
    shown = unknown[: len(unknown) - left]
    cased = other_cases(shown, known)
    close = cased or close_names(shown, known)
    text = f"unknown service {with_more(named, left)} in {table}"
    if len(known) <= LIST_KNOWN_MAX or not close:
        listed, left = named_within(known, UNKNOWN_ROOM["known"], LIST_KNOWN_MAX, given=False)
        text += f"; known: {listed}"
        text += f" ... ({len(known)} in all; `logq services` lists them)" if left else ""
    else:
        text += f" ({len(known)} known services; `logq services` lists them)"
    text += rest
    typo = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    if len(close) > SUGGESTED_AT_MOST or len(text) + len(typo) > max_chars:
        typo = suggestion(close, max_chars - len(text))  # the closest that fit
    if cased and len(text) + len(typo) + len(_CASED_WHY) <= max_chars:
        typo += _CASED_WHY
    return text + typo


def showing_text(found: list[str]) -> str:
    """``; showing a, b only``: the ``--service`` names answered for beside unknown ones
    (empty without any), counted past :data:`UNKNOWN_ROOM`."""
    from cli.service_names import named_within, with_more

    if not found:
        return ""
    named, left = named_within(found, UNKNOWN_ROOM["showing"], len(found), given=False)
    return f"; showing {with_more(named, left)} only"


#: Each table in words, with the command that reads it (for "it has container logs: ...").
TABLE_WORDS = {
    "envoy_access": ("Envoy access logs", "logq errors -s"),
    "container_logs": ("container logs", "logq tail -s"),
}


def elsewhere_text(table: str, names: list[str]) -> str:
    """``service 'app' has no Envoy access logs (it has container logs: logq tail -s app)``:
    for names the *other* table has. Not "unknown": the service exists, and the closest name in
    this table (``did you mean 'api'?``) was a wrong lead.

    The names are counted past :data:`cli.service_names.NAMES_ROOM` (300 of them made a note
    of 40 KB, each twice), and the command then takes them as a placeholder: a command with
    some of the names would read only those."""
    from cli.service_names import NAMES_ROOM, named_within, with_more

    what = TABLE_WORDS.get(table, (table, ""))[0]
    other = next((t for t in TABLE_WORDS if t != table), table)
    other_what, command = TABLE_WORDS[other]
    quoted, left = named_within(names, NAMES_ROOM, given=False, quoted=True)
    has = "it has" if len(names) == 1 else "they have"
    run = f"{command} <their names> reads them" if left else f"{command} {','.join(names)}"
    return (
        f"{'service' if len(names) == 1 else 'services'} {with_more(quoted, left)} "
        f"{'has' if len(names) == 1 else 'have'} no {what} ({has} {other_what}: {run})"
    )


def missing_services_text(
    wh: Warehouse, table: str, missing: list[str], known: list[str], rest: str = ""
) -> str:
    """Why ``table`` has no folder for the ``missing`` services: those the other table has
    (:func:`elsewhere_text`), then the unknown ones (:func:`unknown_services_text`, in what
    the first part leaves of :data:`cli.service_names.NOTE_MAX_CHARS`)."""
    from athena.partitions import list_services
    from cli.service_names import NOTE_MAX_CHARS, capped

    others = [t for t in TABLE_WORDS if t != table]
    there = {s for t in others for s in list_services(wh, t)} if table in TABLE_WORDS else set()
    elsewhere = [s for s in missing if s in there]
    nowhere = [s for s in missing if s not in there]
    if not nowhere:
        return capped(elsewhere_text(table, elsewhere) + rest)
    head = f"{elsewhere_text(table, elsewhere)}; " if elsewhere else ""
    room = min(UNKNOWN_TEXT_MAX_CHARS, NOTE_MAX_CHARS - len(head))
    return capped(head + unknown_services_text(table, nowhere, known, rest, room))


def note_unknown_services(
    wh: Warehouse, table: str, services: list[str] | None, all_too: bool = False
) -> list[str]:
    """Name the ``--service`` values ``table`` has no folder for, on stderr, with the known ones;
    return them (empty without ``--service``).

    A name that matches nothing is dropped by the query's ``IN (...)`` without a word; with
    ``recipe,recipee`` the answer would look complete. When *every* name is unknown the
    canned queries say so in their "no results" reason instead (``all_too`` False); ``logq
    sql``, which has no such reason, asks for that case too. Like that reason, this is a note:
    the answer (possibly empty) is still printed; the caller decides the exit status.
    """
    if not services:
        return []
    from athena.partitions import list_services

    known = list_services(wh, table)
    names = set(known)  # 2,000 values against a list of 500: a million comparisons
    unknown = [s for s in services if s not in names]
    if not unknown or (len(unknown) == len(services) and not all_too):
        return unknown
    if not known:
        return unknown  # an empty table is explained by the "no data at all" reason
    rest = showing_text([s for s in services if s in names])
    note_once(f"logq: note: {missing_services_text(wh, table, unknown, known, rest)}")
    return unknown


def note_outside_enum(
    common: Common, database: str, region: str | None, table: str, services: list[str] | None
) -> list[str] | None:
    """On Athena, name the ``--service`` values missing from ``table``'s ``service`` enum, on
    stderr, with the way to add them; return them (None: no ``--service``, or the list could
    not be read).

    Athena reads only the partitions its projection enumerates, so such a service answers
    "no results" (or, in a list, is left out) while its data sits in S3: the enum is fixed
    when the DDL is applied by hand (``logq ddl``), and only an aggregator with
    ``--athena-database`` extends it as services appear. One Glue call per table and process,
    only with ``--service``; when the list cannot be read (permissions, network) nothing is
    said. The canned commands and ``logq sql`` (once per table it reads) share it.
    """
    if not services:
        return None
    from athena.projection import service_enum

    found = service_enum(database, table, region)
    if found is None:
        return None
    values = set(found.values)
    missing = [s for s in services if s not in values]
    if missing:
        text = outside_enum_text(common, database, table, services, found, missing)
        note_once(f"logq: note: {text}")
    return missing


def outside_enum_text(
    common: Common,
    database: str,
    table: str,
    services: list[str],
    found: ServiceEnum,
    missing: list[str],
) -> str:
    """Which names Athena cannot see, why, and the commands that fix it (the warehouse taken
    from the table's LOCATION when --warehouse does not name an s3:// one).

    As :func:`unknown_services_text`: the names given are named while they fit and counted
    past it, and the service list's names closest to those named (not to every one: 2,000
    names of 66 characters against a list of 200 took 43 s) end it, all of them (sorted)
    while the text fits :data:`cli.service_names.NOTE_MAX_CHARS` (300 names made 36 KB), else
    the closest that fit, the others counted. No `logq services`: on Athena it reads this
    same list."""
    from cli.service_names import (
        NAMES_ROOM,
        NOTE_MAX_CHARS,
        capped,
        close_names,
        named_within,
        suggestion,
        with_more,
    )

    named, left = named_within(missing, NAMES_ROOM)
    outside = set(missing)
    rest = showing_text([s for s in services if s not in outside])
    given = common.warehouse if (common.warehouse or "").startswith("s3://") else None
    uri = given or found.warehouse or "s3://BUCKET/PREFIX"
    close = close_names(missing[: len(missing) - left], found.values)
    typo = f"; did you mean {' or '.join(map(repr, sorted(close)))}?" if close else ""
    text = (
        f"{with_more(named, left)} "
        f"{'is' if len(missing) == 1 else 'are'} not in the service list "
        f"(projection.service.values) of the Athena table {database}.{table}, so Athena "
        f"reads none of {'its' if len(missing) == 1 else 'their'} data{rest}. The list is "
        "fixed when the DDL is applied by hand: apply again the DDL that `logq ddl "
        f"--warehouse {uri} --athena-database {database}` prints (it lists the services now "
        "in the warehouse), or run an aggregator with --athena-database, which keeps the list "
        f"current; meanwhile `--engine local --warehouse {uri}` reads the data"
    )
    if len(text) + len(typo) > NOTE_MAX_CHARS:  # all of them while they fit, as before
        typo = suggestion(close, NOTE_MAX_CHARS - len(text), listed="")  # the closest
    return capped(text + typo)


def outside_enum_reason(database: str, tables: list[str], missing: list[str]) -> str:
    """The "no results" reason when no ``--service`` is in the service list of any table read:
    Athena reads none of their partitions, so the empty answer is no answer (exit
    :data:`NO_DATA_EXIT`). The names are counted past a few, as the note above counts them."""
    from cli.service_names import capped, counted

    where = ", ".join(f"{database}.{t}" for t in tables)
    return capped(
        f"Athena reads no partition of {counted(missing)}: not in the service list of {where} "
        "(see the note above)"
    )


#: Exit status when the question cannot have an answer: every ``--service`` is unknown, or the
#: warehouse holds no data of the table at all (a typo, or a path one level off). The empty
#: answer is still printed; 3 lets a script tell it from "no matching rows" (0).
NO_DATA_EXIT = 3

#: Canned queries over envoy_access whose empty answer is explained by how many requests the
#: window held (one ``requests`` query on the same partitions, locally).
COUNTED = frozenset({"errors", "latency", "top", "flags", "upstreams", "timeline"})


def no_data_reason(common: Common, prep: Prepared) -> str | None:
    """Why the question has no answer at all (locally): the table has no data, or no
    ``--service`` has data in it (unknown, or with only the other table's lines: ``errors -s
    app`` for an app without an Envoy sidecar). None when the data is there (an empty answer is
    then a real one). Either way the exit status is :data:`NO_DATA_EXIT`: the question about
    this table cannot have an answer, which "0, no errors" would misstate."""
    if common.engine is not EngineName.local:
        missing = prep.outside_enum or []
        if prep.services and len(missing) == len(prep.services):
            return outside_enum_reason(common.athena_database, [prep.table], missing)
        return None
    from athena.partitions import list_services
    from athena.warehouse import open_warehouse
    from cli.service_names import capped

    wh = open_warehouse(common.warehouse)
    known = list_services(wh, prep.table)
    if not known:
        from cli.storage import check_bucket

        check_bucket(wh)  # a missing bucket lists as empty: say so, not "no data"
        only_other = only_other_table_text(wh, prep.table, prep.services)
        if only_other:
            return only_other
        off = one_level_off(wh)
        return capped(
            f"the warehouse {wh.uri} has no {prep.table} data at all; "
            + (off or "check --warehouse / LOGQ_WAREHOUSE, or run `logq demo` to make some")
        )
    if prep.services:
        names = set(known)
        unknown = [s for s in prep.services if s not in names]
        if len(unknown) == len(prep.services):
            return missing_services_text(wh, prep.table, unknown, known)
    return None


#: Why a warehouse may hold no access lines at all: no container was taken for Envoy.
_ENVOY_HINT = (
    "; a line is stored as an access line when its container is recognised as Envoy "
    "(by image or name, or label logq.format=envoy; README, 'Service name of a container')"
)


def only_other_table_text(wh: Warehouse, table: str, services: list[str] | None) -> str | None:
    """Why ``table`` is empty when the warehouse holds the *other* table only (apps without an
    Envoy sidecar, or Fluent Bit sending plain lines): what it has and the command that reads
    it, not "check --warehouse, or run `logq demo`", which sent a user with a working pipeline
    looking for a wrong path. ``--service`` names the other table has get
    :func:`elsewhere_text`, as when ``table`` has data of other services. None when the other
    table is empty too. Within :data:`cli.service_names.NOTE_MAX_CHARS`, its lists counted past
    a few names as in :func:`unknown_services_text`."""
    from athena.partitions import list_services
    from cli.service_names import NOTE_MAX_CHARS, capped, named_within

    other = next((t for t in TABLE_WORDS if t != table), None)
    there = list_services(wh, other) if table in TABLE_WORDS and other else []
    if not there:
        return None
    other_what, command = TABLE_WORDS[str(other)]
    head = f"the warehouse {wh.uri} has no {table} data at all, only {other_what}"
    if not services:
        # Ten names of 128 characters were 1,300: past the room, counted as past ten.
        listed, left = named_within(there, UNKNOWN_ROOM["known"], LIST_KNOWN_MAX, given=False)
        listed = f"{len(there)} services" if left else listed
        text = f"{head} ({listed}): {command.removesuffix(' -s')} reads them"
        return capped(text + (_ENVOY_HINT if table == "envoy_access" else ""))
    names = set(there)
    elsewhere = [s for s in services if s in names]
    nowhere = [s for s in services if s not in names]
    text = elsewhere_text(table, elsewhere) if elsewhere else ""
    if nowhere:
        text += f"{'; ' if text else ''}{head}; "
        room = min(UNKNOWN_TEXT_MAX_CHARS, NOTE_MAX_CHARS - len(text))
        text += unknown_services_text(other or table, nowhere, there, max_chars=room)
    return capped(text)


def one_level_off(wh: Warehouse) -> str | None:
    """``did you mean --warehouse X?`` when ``wh`` is one folder off a real warehouse: its parent
    (a folder holding a warehouse), or a table or partition folder inside one."""
    import pyarrow.fs as pafs

    from athena.schema import TABLES
    from athena.warehouse import list_entries

    root = wh.base.rstrip("/")
    prefix = "s3://" if wh.is_s3 else ""
    name = root.rsplit("/", 1)[-1]
    if _inside(name):
        parts = root.split("/")
        while parts and _inside(parts[-1]):
            parts.pop()
        if parts and parts != [""]:
            up = "/".join(parts)
            return (
                f"{wh.uri} is a folder inside a warehouse: did you mean --warehouse {prefix}{up}?"
            )
    try:
        infos = list_entries(wh.fs, pafs.FileSelector(root, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.path):
            if info.type != pafs.FileType.Directory:
                continue
            inner = list_entries(wh.fs, pafs.FileSelector(info.path, allow_not_found=True))
            if any(i.base_name in TABLES for i in inner):
                return (
                    f"{info.base_name}/ inside it is a warehouse: did you mean --warehouse "
                    f"{prefix}{info.path}?"
                )
    except OSError:
        return None
    return None


def _inside(name: str) -> bool:
    """Whether a folder name is one a warehouse has inside it (a table or a partition)."""
    from athena.schema import TABLES

    return name in TABLES or name.startswith(("service=", "dt="))


def explain_empty(common: Common, prep: Prepared, data_known: bool = False) -> str:
    """Why a query returned nothing, in words that say what to try next (``data_known``: the
    caller found :func:`no_data_reason` None already). Within
    :data:`cli.service_names.NOTE_MAX_CHARS`: the ``--service`` names counted past a few
    (:func:`services_for`), anything else long (a ``--path`` of kilobytes) cut."""
    from athena.timerange import iso_utc
    from cli.service_names import capped, counted

    span = f"between {iso_utc(prep.trange.since)} and {iso_utc(prep.trange.until)}"
    hint = path_hint(common.path) + (f"; {prep.empty_hint}" if prep.empty_hint else "")
    if common.engine is not EngineName.local:
        where = services_for(prep.services)
        if prep.outside_enum:  # the services query reads the same list: no use pointing to it
            return capped(
                f"no matching rows {span}{where}; Athena does not read "
                f"{counted(prep.outside_enum)}, which the table's service list "
                f"lacks (see the note above){hint}"
            )
        return capped(
            f"no matching rows {span}{where}; `logq services --engine athena --since 1d` lists "
            f"the services with recent data{hint}"
        )
    reason = None if data_known else no_data_reason(common, prep)
    if reason is not None:
        return reason
    return capped(explain_no_rows(common, prep, span, hint))


#: Longest ``--path`` :func:`path_hint` spells out again with its ``/``.
PATH_HINT_CHARS = 80


def path_hint(path: str | None) -> str:
    """What to try when a ``--path`` without its leading ``/`` matched nothing: Envoy logs a
    request's path from its ``/`` (``/api/v1/items``) and ``--path`` is a prefix of it, so
    ``--path api/v1`` matches no request, and the empty answer read as "no errors on that
    route" (empty for a path that holds ``*`` or ``://`` too: an ``OPTIONS *`` or an absolute
    form, ``http://host/x``, is logged so)."""
    if not path or path.startswith("/") or "*" in path or "://" in path:
        return ""
    fix = f"--path /{path}" if len(path) <= PATH_HINT_CHARS else "a --path that starts with /"
    return f"; a path as Envoy logs it starts with '/': try {fix}"


def services_for(services: list[str] | None) -> str:
    """`` for a, b and 298 more``: the ``--service`` names an answer is for (empty without
    any), named while they fit :data:`cli.service_names.NAMES_ROOM` and counted past it: a
    reason repeats it up to three times, and 2,000 names made each 140 KB."""
    from cli.service_names import counted

    return f" for {counted(services, given=False)}" if services else ""


def explain_no_rows(common: Common, prep: Prepared, span: str, hint: str) -> str:
    """The local reason for an empty answer over data that exists: where the data is when the
    window has none, else how many requests the window had."""
    from athena.freshness import newest_data_quick, newest_in
    from athena.timerange import iso_utc
    from athena.warehouse import open_warehouse

    wh = open_warehouse(common.warehouse)
    where = services_for(prep.services)
    if not prep.scopes.get(prep.table):
        return no_partitions_reason(wh, prep, span, where) + hint
    files = sum(len(p.files) for p in prep.scopes[prep.table])
    read = f"{plural(len(prep.scopes[prep.table]), 'partition')}, {plural(files, 'file')} read"
    if prep.table == "envoy_access" and prep.name in COUNTED:
        requests = count_requests(common, prep)
        if requests:
            return f"{plural(requests, 'request')} {span}{where}, none matched ({read}){hint}"
        parts = prep.scopes[prep.table]
        if lists_every_service(wh, prep):  # the partitions read: footers, no listing
            what = "in those partitions"
            newest, ahead = newest_and_ahead(lambda before: newest_in(wh, parts, before))
        else:
            what = f"data{where}"
            newest, ahead = newest_and_ahead(
                lambda before: newest_data_quick(wh, prep.table, prep.services, before)
            )
        tail = f"; newest {what}: {iso_utc(newest)}" if newest else ""
        tail += ahead_text(ahead)
        return f"no requests {span}{where}{filters_text(common)} ({read}){tail}{hint}"
    return f"no matching rows {span} ({read}){hint}"


def filters_text(common: Common) -> str:
    """`` matching --path /x --method GET`` for the filters given (empty without any)."""
    given = [f"--{n} {v}" for n, v in (("path", common.path), ("method", common.method)) if v]
    return f" matching {' '.join(given)}" if given else ""


def count_requests(common: Common, prep: Prepared) -> int:
    """Requests in the window with the common filters (one local query, same partitions)."""
    from athena.queries import load
    from cli.runner import make_engine

    engine = make_engine(common)
    result = engine.run(load("requests").text, prep.params, {prep.table: prep.scopes[prep.table]})
    return int(result.rows[0][0]) if result.rows else 0


def no_partitions_reason(wh: Warehouse, prep: Prepared, span: str, where: str) -> str:
    """No partition in range: say where the data is, and which way to move the window."""
    from athena.freshness import newest_data, oldest_data
    from athena.timerange import as_utc, iso_utc

    text = f"no {prep.table} data {span}{where}"
    if lists_every_service(wh, prep):
        return f"{text}; `logq services --since 1d` shows each service's newest data"
    newest, ahead = newest_and_ahead(
        lambda before: newest_data(wh, prep.table, prep.services, before)
    )
    if newest is None:
        return f"{text}; widen --since{ahead_text(ahead)}"
    last = f"{iso_utc(newest)}{ahead_text(ahead)}"  # rows ahead are named beside the newest
    oldest = oldest_data(wh, prep.table, prep.services)
    if oldest is not None and prep.trange.until <= as_utc(oldest):
        return (
            f"{text}; the data{where} starts at {iso_utc(oldest)}: move --since/--until later "
            f"(newest: {last})"
        )
    if prep.trange.since > as_utc(newest):
        return f"{text}; newest data{where}: {last}; start --since before it"
    return f"{text} (a gap in the data); newest data{where}: {last}"


#: A newest row older than this, without ``--until``, gets a note: the aggregator flushes every
#: 10 s by default and docs/operations.md suggests 60-300 s in production, so up to five minutes
#: of lag is routine there; 2 minutes flags it early, and the note says both readings ("not
#: flushed yet" or "stalled") instead of guessing. A note, never an error: the answer stands.
STALE_AFTER_SECONDS = 120


#: Services the stale-data note looks at one by one when the query planned none of their files
#: (on Athena, always): each costs three listings (its hours, the files of its two newest).
STALE_LISTED_SERVICES = 10


def lists_every_service(wh: Warehouse, prep: Prepared) -> bool:
    """Whether saying where the data is would list the folders of every service (or of more
    than :data:`STALE_LISTED_SERVICES`) on S3: 1 + 3N requests one after another, minutes
    for hundreds of services. An empty answer then points to `logq services` instead."""
    return wh.is_s3 and (not prep.services or len(prep.services) > STALE_LISTED_SERVICES)


def note_stale(common: Common, prep: Prepared) -> None:
    """With no ``--until``, say on stderr when the newest row of the selected services is old:
    rows after it may not be flushed yet, or the pipeline stalled. "No errors" read from a
    window the pipeline never filled is the trap this closes. Any ``--until`` (even one at now)
    turns it off: a closed window is history, not a live view.

    Cost: none beyond Parquet footers when the window has data: the newest partition the query
    already planned holds the newest row, and the footers of its newest files give it (row-group
    statistics; no data pages). A service with nothing in the window costs three listings (its
    hours, then the files of its two newest), for at most :data:`STALE_LISTED_SERVICES` of the
    ``--service`` values. Without ``--service`` and nothing planned, every service would be
    listed so (1 + 3N listings: 1,500 S3 round trips for 500 services): that is done only on
    a local-disk warehouse. On Athena no query is run and nothing is planned: the check lists
    the warehouse when ``--warehouse`` names the s3:// location and ``--service`` names the
    services, and is skipped otherwise (a second Athena query would add seconds and a 10 MB
    minimum charge to every call).

    Rows stamped ahead of now (:func:`ahead_note`) replace the stale note for their service:
    such a service is writing, with a clock ahead, so its newest row at or before now is old
    by that much without any stall.
    """
    if common.until is not None or common.dry_run or prep.stale_checked:
        return
    prep.stale_checked = True  # once: ``tail --follow`` runs the query every poll
    if common.engine is EngineName.athena and (
        not prep.services or not (common.warehouse or "").startswith("s3://")
    ):
        return
    from functools import partial

    from athena.engines.result import EngineError
    from athena.foreign import ForeignFile
    from athena.freshness import newest_data_quick, newest_in
    from athena.warehouse import open_warehouse

    try:
        wh = open_warehouse(common.warehouse)
        planned = prep.scopes.get(prep.table) or []
        for name in (prep.services or [None])[:STALE_LISTED_SERVICES]:
            parts = [p for p in planned if name is None or p.service == name]
            tops: Tops = {}  # the footers read for the newest row, not read again to count
            if parts:
                find = partial(newest_in, wh, parts, tops=tops)
            elif name is None and wh.is_s3:
                return  # every service listed one by one: too many round trips for a note
            else:
                svcs = None if name is None else [name]
                find = partial(newest_data_quick, wh, prep.table, svcs, tops=tops)
            # Rows seen ahead get their note whatever the newest row before now (not looked for).
            newest, ahead = newest_and_ahead(find, at_or_before=False)
            note_freshness(common, prep, wh, name, newest, ahead, not parts, tops)
    except ForeignFile as exc:  # the answer stands; say why it comes without the check
        note_once(f"logq: note: how fresh the data is was not checked: {exc}")
    except (OSError, EngineError):
        return  # a note is best effort; the query itself reports storage failures


def note_freshness(
    common: Common,
    prep: Prepared,
    wh: Warehouse,
    name: str | None,
    newest: datetime | None,
    seen: datetime | None,
    later_read: bool = False,
    tops: Tops | None = None,
) -> None:
    """The stale note, or the note on rows ahead of now, for one service (None: the table).

    ``newest``: its newest row at or before now; ``seen``: the newest row ahead of now that
    the footers read showed (None: none seen). A service with rows ahead writes, with a clock
    ahead of this one: its newest row at or before now is old by that much without any stall,
    so it gets :func:`ahead_note` instead of the stale note. Before a stale note the later
    hours are looked at too, unless ``later_read`` says the newest hours were read already
    (the footers of the partitions a query planned cover only its range): a clock hours
    ahead, whose rows sit in later hour folders, is not called a stall either: that costs
    one listing (are there later hours?) and footers only there, as it runs with every query
    against a stale service (a 60-300 s flush makes most services stale). ``tops``: the
    footers read to find ``newest``, not read again to count the rows ahead.
    """
    from athena.timerange import as_utc, dt_of, iso_utc
    from cli.output import since_text

    who = f"for {name}" if name else f"in {prep.table}"
    now = prep.trange.until
    age = None if newest is None else (now - as_utc(newest)).total_seconds()
    stale = age is not None and age > STALE_AFTER_SECONDS
    if seen is not None or (stale and not later_read):
        # Nothing seen ahead: only hours after now's can hold rows of a clock hours ahead
        # (one listing finds them); the current hour's newest footers were read already.
        read_up_to = None if seen is not None else dt_of(prep.trange.until)
        found = rows_ahead(wh, prep, None if name is None else [name], read_up_to, tops)
        if found is not None or seen is not None:
            note_once(ahead_note(common, prep, who, found, seen))
            return
    if stale and newest is not None and age is not None:
        # since_text, as `logq services` says its newest rows: "2m 42s ago" in both places
        note_once(
            f"logq: note: newest data {who}: {iso_utc(newest)} ({since_text(newest, now)}): "
            "rows after it may not be flushed yet or the pipeline is stalled (or there "
            "was no traffic since)"
        )


def rows_ahead(
    wh: Warehouse,
    prep: Prepared,
    services: list[str] | None,
    read_up_to: str | None = None,
    tops: Tops | None = None,
) -> Ahead | None:
    """The rows of ``services`` stamped after the answer's end (now) past the clock
    tolerance: those a source whose clock runs ahead wrote (:func:`athena.freshness.rows_after`;
    ``read_up_to``: the hour whose newest footers showed none, only later hours are looked at
    first; ``tops``: footers read already)."""
    from datetime import timedelta

    from athena.freshness import rows_after
    from cli.output import CLOCK_TOLERANCE_SECONDS

    after = prep.trange.until + timedelta(seconds=CLOCK_TOLERANCE_SECONDS)
    planned = prep.scopes.get(prep.table)
    return rows_after(wh, prep.table, services, after, planned, read_up_to, tops)


def ahead_note(
    common: Common, prep: Prepared, who: str, found: Ahead | None, seen: datetime | None
) -> str:
    """``N rows for S are stamped after now, up to T (a clock ahead of this one by up to X);
    this answer ends now and holds none of them: to include them, add --until <ISO>``.

    The answer ends at now (``--until`` not given), so rows a source with a fast clock wrote
    are not in it: the note says how many (``found``; the count is left out in the rare case
    only ``seen`` knows of them), by how much, and the ``--until`` that takes them in: an ISO
    time, since a relative one counts back from now. Without ``--since`` it gives the answer's
    start too: the default span would otherwise end at the new ``--until``.
    """
    import math
    from datetime import UTC, timedelta

    from athena.timerange import as_utc, iso_utc
    from cli.output import span_text

    now = prep.trange.until
    times = [as_utc(t) for t in (found.newest if found else None, seen) if t is not None]
    newest = max(times)
    rows = f"{found.rows:,} " if found else ""
    ahead = span_text(math.ceil((newest - now).total_seconds()))
    try:
        until = (newest + timedelta(minutes=1)).replace(second=0, microsecond=0)
    except OverflowError:  # stamped in the last minute of 9999 (a clock set to garbage)
        until = datetime.max.replace(microsecond=0, tzinfo=UTC)
    start = "" if common.since else f" --since {iso_utc(prep.trange.since)}"
    given = query_filters(common, prep)
    if not given:
        return (
            f"logq: note: {rows}rows {who} are stamped after now, up to {iso_utc(newest)} "
            f"(a clock ahead of this one by up to {ahead}); this answer ends now and holds "
            f"none of them: to include them, add{start} --until {until:%Y-%m-%dT%H:%M:%SZ}"
        )
    return (
        f"logq: note: {rows}rows {who} (counted before {'/'.join(given)}) are stamped after "
        f"now, up to {iso_utc(newest)} (a clock ahead of this one by up to {ahead}); this "
        f"answer ends now and leaves them out, whether they match or not: to read them, "
        f"add{start} --until {until:%Y-%m-%dT%H:%M:%SZ}"
    )


def query_filters(common: Common, prep: Prepared) -> list[str]:
    """The row filters a query has besides time and service (``--path``, ``--status``, ...):
    the ahead note counts rows from footers and timestamps only, before any of them (counting
    with them would be a second query), so it must not read as "N matching rows"."""
    params = prep.params
    given = {
        "--path": common.path,
        "--method": common.method,
        "--status": "status_min" in params,  # errors always filters (5xx by default)
        "--grep": params.get("grep"),
        "--stream": params.get("stream"),
    }
    return [flag for flag, value in given.items() if value]
