"""Trino functions whose DuckDB namesake means something else, rewritten on the parsed tree.

sqlglot transpiles names and argument orders; a few functions keep their name and change their
meaning, so that ``logq sql`` would answer differently on the two engines. Rewritten here (each
documented in Trino's "Functions and operators" pages):

* ``regexp_replace(s, pattern, replacement)``: Trino's replacement is Java's (``$1`` a group,
  ``\\$`` a dollar sign, ``\\\\`` a backslash); DuckDB's is RE2's (``\\1``). A literal
  replacement is rewritten; ``$10`` and ``${name}`` have no RE2 spelling and are refused.
* ``split_part(s, delimiter, index)``: Trino gives NULL past the last field, DuckDB ''; Trino
  refuses an index below 1, DuckDB counts from the end.
* ``format(fmt, args...)``: Java's ``String.format``; DuckDB's ``format`` is fmt's ``{}`` syntax
  and leaves ``%d`` as it is. A literal format becomes one ``printf`` per conversion, joined
  with ``||`` (a NULL argument prints ``null``, as in Java). Trino hands Java a DECIMAL as a
  ``BigDecimal``, a DOUBLE as a ``Double`` and a TIMESTAMP as a ``LocalDateTime`` (its
  ``FormatFunction``), which print unlike DuckDB's printf and casts; the argument's type is
  known only when DuckDB runs, so each is told apart there (``typeof``):

  - ``%f`` of a DECIMAL: Java rounds the exact decimal half-up (``format('%.2f', 2.675)``
    ``2.68``); printf goes through a double (``2.67``). The decimal is rounded exactly first.
  - ``%s`` of a TIMESTAMP: Java's ``2020-01-01T00:00`` (seconds only when not zero, then
    3, 6 or 9 fraction digits); written so from DuckDB's text. The tables' ``timestamp`` is a
    TIMESTAMP on Athena and WITH TIME ZONE (UTC) locally: both print as Athena prints it. A
    TIMESTAMP WITH TIME ZONE of Trino's own (``now()``, ``from_unixtime(x)``) is Java's
    ``ZonedDateTime`` there, ``2024-03-10T22:00:03.719Z[UTC]``: so where the statement shows
    one (:func:`athena.trinotypes.is_zoned`), and a value of ``AT TIME ZONE`` with its offset
    and zone, ``2026-12-06T05:00-05:00[America/New_York]`` (:func:`_java_zoned_text`).
  - ``%s`` of a DOUBLE or REAL: Java's ``Double.toString``, as DuckDB's text between 1e-3 and
    1e7 (``0.5``, ``10000.0``), ``NaN``/``Infinity``, and outside that range Java's ``1.0E7``
    (:data:`JAVA_NUMBER_TEXT`, which ``CAST(x AS varchar)`` prints too).

  Left as they are, and differing only there: ``%e`` of a DECIMAL and ties of ``%f`` of a
  DOUBLE or REAL (Java rounds the shortest decimal form half-up, printf the binary value),
  ``%f`` of DECIMALs past a double's 17 digits, ``%s`` of a DECIMAL under 1e-6 (Java's
  ``BigDecimal`` writes ``1E-7``), and years past 9999 in a TIMESTAMP.
* ``approx_distinct(x)``: a HyperLogLog on Trino (standard error 2.3%), exact locally
  (``count(DISTINCT x)``), as the local percentiles are: the same answer within Trino's error.

* ``normalize(s[, NFC])``: DuckDB's ``nfc_normalize(s)``, the same NFC form; other forms are
  refused.

Functions Athena has and DuckDB lacks (:data:`ATHENA_ONLY`) are refused before DuckDB sees
them, with what to write instead that works on both engines; that includes those sqlglot
parses into typed expressions (``from_base``, ``width_bucket``, ``soundex``,
``split_to_map``: :func:`typed_athena_only`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from athena.queries import QueryError
from athena.trinotypes import is_zoned, zone_given

#: A URL's scheme and authority (optional), the part before its path.
_BEFORE_PATH = "^(?:[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*)?"
#: Functions of Athena (Trino) that the local engine has not, and what works on both engines.
ATHENA_ONLY: dict[str, str] = {
    "format_datetime": "date_format(ts, '%Y-%m-%d %H:%i:%s') (MySQL-style patterns)",
    "parse_datetime": "date_parse(text, '%Y-%m-%d %H:%i:%s') (MySQL-style patterns)",
    "to_iso8601": "date_format(ts, '%Y-%m-%dT%H:%i:%s.%f')",
    "url_extract_host": "regexp_extract(url, '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#:@]+)', 1)",
    "url_extract_path": f"regexp_extract(url, '{_BEFORE_PATH}([^?#]*)', 1)",
    "url_extract_parameter": "url_decode(regexp_extract(url, '[?&]NAME=([^&#]*)', 1))",
    "url_extract_query": "regexp_extract(url, '[?]([^#]*)', 1)",
    "url_extract_fragment": "regexp_extract(url, '#(.*)$', 1)",
    "url_extract_protocol": "regexp_extract(url, '^([A-Za-z][A-Za-z0-9+.-]*):', 1)",
    "url_extract_port": "CAST(regexp_extract(url, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*:([0-9]+)', "
    "1) AS bigint)",
    # Math (https://trino.io/docs/current/functions/math.html): DuckDB has none of these
    # names, and its own "did you mean" points elsewhere (nan() -> "nanosecond").
    "nan": "CAST('NaN' AS double)",
    "infinity": "CAST('Infinity' AS double)",
    "is_finite": "abs(x) < CAST('Infinity' AS double)",
    "is_infinite": "abs(x) = CAST('Infinity' AS double)",
    "e": "exp(1)",
    "from_unixtime_nanos": "from_unixtime(nanos / 1e9)",
    "normal_cdf": "",
    "crc32": "",
    "xxhash64": "",
    "hamming_distance": "",
    "zip_with": "",
    "ngrams": "",
    "human_readable_seconds": "",
    "parse_duration": "",
    "format_number": "",
    "parse_data_size": "",
    "current_timezone": "",
    "at_timezone": "",
    "with_timezone": "",
    "to_milliseconds": "",
    "codepoint": "",
    "word_stem": "",
    "luhn_check": "",
    # sqlglot parses these as typed expressions (:func:`typed_athena_only`), which DuckDB's
    # SQL spells under other names: its error named a function the user never wrote
    # (split_to_map -> "str_to_map does not exist").
    "from_base": "",
    # Trino numbers the buckets from bound1 either way: with bound1 > bound2 the first
    # bucket is the highest values (MathFunctions.widthBucket: n + 1 - the ascending one).
    "width_bucket": "CASE WHEN x < lo THEN 0 WHEN x >= hi THEN n + 1 ELSE "
    "CAST(floor((x - lo) * n / CAST(hi - lo AS double)) AS bigint) + 1 END when lo < hi, or "
    "CASE WHEN x >= lo THEN 0 WHEN x < hi THEN n + 1 ELSE "
    "n - CAST(floor((x - hi) * n / CAST(lo - hi AS double)) AS bigint) END when lo > hi",
    "soundex": "",
    "split_to_map": "",
    "map_agg": "",
}


def typed_athena_only(node: Any) -> str | None:
    """The Trino name of ``node`` when sqlglot parses that Athena-only function into a typed
    expression (``exp.StrToMap`` for ``split_to_map``), else None. A column or alias of that
    name is no call, and stays a Column/Alias."""
    from sqlglot import exp

    typed = {
        exp.FromBase: "from_base",
        exp.WidthBucket: "width_bucket",
        exp.Soundex: "soundex",
        exp.StrToMap: "split_to_map",
    }
    return typed.get(type(node))


def normalize(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """Trino's ``normalize(s)`` / ``normalize(s, NFC)`` as DuckDB's ``nfc_normalize(s)``: both
    the Unicode NFC form (Trino's default; "Functions and operators: string"). The other
    forms (NFD, NFKC, NFKD) have no DuckDB function and are refused."""
    from sqlglot import exp

    form = node.args.get("form")
    name = form.name.upper() if isinstance(form, exp.Expression) else "NFC"
    if name not in ("NFC", "NFD", "NFKC", "NFKD"):
        raise QueryError(
            f"normalize(s, {name}): {name} is no normal form; Athena (Trino) takes NFC (the "
            "default), NFD, NFKC or NFKD, unquoted"
        )
    if name != "NFC":
        raise QueryError(
            f"normalize(s, {name}) is an Athena (Trino) form the local engine (DuckDB) does "
            "not have (it normalizes to NFC only: normalize(s)); run the statement with "
            "--engine athena"
        )
    return exp.Anonymous(this="nfc_normalize", expressions=[adapt(node.this)])


def athena_only(name: str, advice_fits: bool = True) -> QueryError:
    """The local engine's refusal of an Athena-only function, with what to use instead
    (unless not ``advice_fits``: another form of the call, ``width_bucket(x, ARRAY[...])``)."""
    advice = ATHENA_ONLY.get(name.lower(), "") if advice_fits else ""
    if advice:
        then = f"use {advice} instead (it works on both engines), or run the statement with"
    else:
        then = "it has no local equivalent: run the statement with"
    return QueryError(
        f"{name.lower()}() is an Athena (Trino) function the local engine (DuckDB) does not "
        f"have; {then} --engine athena"
    )


#: One unit of a Java replacement: an escaped character, a group reference, or a plain run.
_JAVA_REPLACEMENT = re.compile(r"\\(.)|\$(\d+|\{[^}]*\}|)|([^\\$]+)|(\\)$", re.S)


def re2_replacement(java: str) -> str:
    """A Java (Trino) ``regexp_replace`` replacement spelled for RE2 (DuckDB): ``$1`` ->
    ``\\1``, ``\\$`` -> ``$``, ``\\\\`` -> ``\\\\`` (RE2's own escape for a backslash)."""
    out: list[str] = []
    for escaped, group, plain, trailing in _JAVA_REPLACEMENT.findall(java):
        if plain:
            out.append(plain)  # no backslash in it: RE2 reads it as it is
        elif trailing:
            raise QueryError(
                "regexp_replace: the replacement ends in a lone backslash (Athena refuses it: "
                "write \\\\ for a backslash)"
            )
        elif escaped:
            out.append("\\\\" if escaped == "\\" else escaped)
        elif len(group) == 1:
            out.append("\\" + group)
        elif not group:
            raise QueryError(
                "regexp_replace: the replacement has a $ that names no group (Athena refuses "
                "it: write \\$ for a dollar sign)"
            )
        else:
            raise QueryError(
                f"regexp_replace: the replacement's ${group} has no local equivalent (DuckDB "
                "refers to groups $0 to $9 only, by number); use $1..$9, or --engine athena"
            )
    return "".join(out)


def regexp_replace(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.RegexpReplace) with its literal replacement in RE2's spelling."""
    from sqlglot import exp

    out = node.copy()
    for key, value in node.args.items():
        if isinstance(value, exp.Expression):
            out.set(key, adapt(value))
    replacement = node.args.get("replacement")
    if isinstance(replacement, exp.Lambda):
        raise QueryError(
            "regexp_replace() with a lambda has no local equivalent (DuckDB's takes a "
            "replacement string: $1..$9 for groups); use one, or --engine athena"
        )
    if isinstance(replacement, exp.Literal) and replacement.is_string:
        out.set("replacement", exp.Literal.string(re2_replacement(replacement.this)))
    return out


def split_part(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.SplitPart) with Trino's meaning: NULL past the last field, an error for
    an index below 1. A literal 1 is left alone (the first field always exists; the canned
    queries split paths this way, and counting the fields costs a list per row)."""
    from sqlglot import exp

    text, delimiter = adapt(node.this), adapt(node.args["delimiter"])
    index = adapt(node.args["part_index"])
    call = exp.SplitPart(this=text, delimiter=delimiter, part_index=index)
    if isinstance(index, exp.Literal) and not index.is_string:
        if int(index.this) < 1:
            raise QueryError(f"split_part: index {index.this} is below 1, which Athena refuses")
        if int(index.this) == 1:
            return call
    fields = exp.Anonymous(
        this="len",
        expressions=[exp.Anonymous(this="string_split", expressions=[text.copy(), delimiter])],
    )
    below = exp.LT(this=index.copy(), expression=exp.Literal.number(1))
    refuse = exp.Anonymous(
        this="error", expressions=[exp.Literal.string("split_part: index must be 1 or more")]
    )
    within = exp.LTE(this=index.copy(), expression=fields)
    return exp.Case(ifs=[exp.If(this=below, true=refuse), exp.If(this=within, true=call)])


#: A Java format specifier: %[index$][flags][width][.precision]conversion.
_JAVA_SPEC = re.compile(r"%(?:(\d+)\$|(<))?([-#+ 0,(]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")
#: Java conversions printf writes the same way (given the cast for s/S), by kind.
_NUMERIC = frozenset("dxXofeE")


def format_call(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``node`` (exp.Format, Trino's ``format``) as the same text on DuckDB: literal parts and
    one ``printf`` per conversion, joined with ``||``.

    Java's conversions s, S, d, x, X, o, f, e, E with flags ``-#+ 0,``, width, precision and
    ``n$`` argument indexes, plus ``%%`` and ``%n``, print as printf prints them (``%s`` of a
    number through a cast to varchar; a NULL argument as ``null``). Others (``%g``, which Java
    prints unlike C, ``%b``, ``%t`` dates, ``%<s``) are refused with what to do."""
    from sqlglot import exp

    fmt = node.this
    if not (isinstance(fmt, exp.Literal) and fmt.is_string):
        raise QueryError(
            "format() with a format that is not a string literal has no local equivalent "
            "(DuckDB's format is another language); write the format as a literal, or use "
            "--engine athena"
        )
    args = [adapt(a) for a in node.expressions]
    parts: list[Any] = []
    pos, ordinary = 0, 0
    text = fmt.this
    for spec in _JAVA_SPEC.finditer(text):
        parts += _literal(text[pos : spec.start()])
        pos = spec.end()
        index, relative, flags, width, precision, conversion = spec.groups()
        if conversion in "%n":
            parts.append(exp.Literal.string("%" if conversion == "%" else "\n"))
            continue
        if relative or conversion not in _NUMERIC | {"s", "S"} or "(" in flags:
            raise QueryError(
                f"format(): {spec.group(0)!r} has no local equivalent (the local engine takes "
                "%s %S %d %x %X %o %f %e %E, flags -#+ 0, width, precision, n$); use "
                "--engine athena"
            )
        if index is None:
            ordinary += 1
        at = int(index) if index is not None else ordinary
        if not 1 <= at <= len(args):
            raise QueryError(f"format(): {spec.group(0)!r} has no argument {at}")
        original = node.expressions[at - 1]
        zone = zone_given(original)
        zoned: Any = _in_zone(original, zone, adapt) if zone is not None else is_zoned(original)
        parts.append(_conversion(args[at - 1].copy(), flags, width, precision, conversion, zoned))
    parts += _literal(text[pos:])
    if not parts:
        return exp.Literal.string("")
    out = parts[0]
    for part in parts[1:]:
        out = exp.DPipe(this=out, expression=part)
    return out


def _literal(text: str) -> list[Any]:
    """The text between two conversions (none when empty); a ``%`` in it began no complete
    conversion, which Java refuses (UnknownFormatConversionException)."""
    from sqlglot import exp

    if "%" in text:
        raise QueryError(f"format(): {text!r} holds an incomplete % conversion (write %% for %)")
    return [exp.Literal.string(text)] if text else []


def _conversion(
    arg: Any, flags: str, width: str | None, precision: str | None, conv: str, zoned: Any = False
) -> Any:
    """``coalesce(printf('%<spec>', arg), '<null, padded>')`` for one Java conversion; ``zoned``:
    True when the argument is one of Trino's zoned timestamps in UTC
    (:func:`athena.trinotypes.is_zoned`), its zone and instant (:class:`_InZone`) when it is a
    value of ``AT TIME ZONE`` (:func:`athena.trinotypes.zone_given`: locally the zone's wall
    time)."""
    from sqlglot import exp

    spec = "%" + flags + (width or "") + (f".{precision}" if precision else "")
    value = arg
    if conv in "sS" and isinstance(zoned, _InZone):
        value = _java_zoned_text(arg, zoned)
    elif conv in "sS" and zoned:
        value = from_template(_JAVA_ZONED_TEXT, text=_java_text(from_template(_MILLIS, x=arg)))
    elif conv in "sS":
        value = _java_text(arg)
    elif conv == "f":
        value = from_template(_DECIMAL_ROUNDED.format(digits=int(precision or 6)), arg=arg)
    printed = exp.Anonymous(
        this="printf", expressions=[exp.Literal.string(spec + conv.lower()), value]
    )
    pad = "%" + ("-" if "-" in flags else "") + (width or "") + "s"
    null = exp.Anonymous(
        this="printf", expressions=[exp.Literal.string(pad), exp.Literal.string("null")]
    )
    out = exp.Coalesce(this=printed, expressions=[null])
    return exp.Upper(this=out) if conv == "S" else out


def approx_distinct(node: Any, adapt: Callable[[Any], Any]) -> Any:
    """``approx_distinct(x[, e])`` as the exact ``count(DISTINCT x)`` (see the module docs)."""
    from sqlglot import exp

    return exp.Count(this=exp.Distinct(expressions=[adapt(node.this)]))


#: ``%f`` of a DECIMAL rounded exactly first (DuckDB rounds a DECIMAL half away from zero, as
#: Java's HALF_UP), so printf's trip through a double cannot land on the other side of a tie.
_DECIMAL_ROUNDED = (
    "CASE WHEN typeof(__arg__) LIKE 'DECIMAL%' THEN round(__arg__, {digits}) ELSE __arg__ END"
)

#: What ``%s`` prints of a value, as Java prints what Trino passes it (see the module doc).
_JAVA_TEXT = """
CASE
  WHEN typeof(__arg__) IN ('DOUBLE', 'FLOAT') THEN __number__
  WHEN typeof(__arg__) LIKE 'TIMESTAMP%' THEN
    split_part(CAST(__arg__ AS VARCHAR), ' ', 1) || 'T'
    || substr(split_part(CAST(__arg__ AS VARCHAR), ' ', 2), 1, 5)
    || CASE WHEN regexp_matches(CAST(__arg__ AS VARCHAR), ' [0-9:]{5}:00([+-]|$)') THEN ''
       ELSE ':' || substr(split_part(CAST(__arg__ AS VARCHAR), ' ', 2), 7, 2) END
    || CASE WHEN NOT contains(CAST(__arg__ AS VARCHAR), '.') THEN ''
       ELSE '.' || rpad(
         regexp_extract(CAST(__arg__ AS VARCHAR), '[.]([0-9]+)', 1),
         CASE WHEN length(regexp_extract(CAST(__arg__ AS VARCHAR), '[.]([0-9]+)', 1)) <= 3
           THEN 3
           WHEN length(regexp_extract(CAST(__arg__ AS VARCHAR), '[.]([0-9]+)', 1)) <= 6
           THEN 6 ELSE 9 END,
         '0') END
  ELSE CAST(__arg__ AS VARCHAR)
END
"""


#: ``%s`` of Trino's own zoned timestamps (``now()``, ``from_unixtime``: a ``timestamp(3) with
#: time zone`` in the session's zone, UTC): Java's ``ZonedDateTime``, its ``LocalDateTime`` and
#: ``Z[UTC]`` (the offset, then the zone's name). DuckDB's ``now()`` has six digits: cut to 3.
_JAVA_ZONED_TEXT = "__text__ || 'Z[UTC]'"
_MILLIS = "date_trunc('millisecond', __x__)"


#: Java's ``ZoneOffset`` text of the offset of a zone's wall time ``__wall__`` at ``__instant__``
#: (its seconds from UTC, ``s``): ``Z`` for none, else ``+05:30``, ``-04:56:02`` with seconds.
_JAVA_OFFSET = """
list_extract(list_transform(
  [CAST(round(epoch(__wall__) - epoch(__instant__)) AS BIGINT)],
  s -> CASE WHEN s = 0 THEN 'Z' ELSE CASE WHEN s < 0 THEN '-' ELSE '+' END
    || lpad(CAST(abs(s) // 3600 AS VARCHAR), 2, '0') || ':'
    || lpad(CAST(abs(s) % 3600 // 60 AS VARCHAR), 2, '0')
    || CASE WHEN abs(s) % 60 = 0 THEN '' ELSE ':' || lpad(CAST(abs(s) % 60 AS VARCHAR), 2, '0')
       END END), 1)
"""
#: The ``[zone]`` Java's ``ZonedDateTime`` writes after the offset for a named zone (not for
#: a zone that is an offset, ``+02:00``, which Trino hands Java as a ``ZoneOffset``).
_JAVA_ZONE_NAME = (
    "CASE WHEN regexp_matches(__zone__, '^[+-][0-9]{2}:[0-9]{2}$') THEN '' "
    "ELSE '[' || __zone__ || ']' END"
)


class _InZone(NamedTuple):
    """A value of ``AT TIME ZONE`` as ``format`` prints it: its zone (adapted) and its instant
    (:func:`athena.trinocalls.zoned_instant`, a TIMESTAMP WITH TIME ZONE)."""

    zone: Any
    instant: Any


def _in_zone(value: Any, zone: Any, adapt: Callable[[Any], Any]) -> _InZone:
    """``value``'s zone and instant (:class:`_InZone`): the offset is read from the instant,
    which the wall time alone does not give in the hour a zone repeats (01:30 in New York on
    2024-11-03 is -04:00 at 05:30Z and -05:00 at 06:30Z)."""
    from athena.trinocalls import zoned_instant  # it imports this module

    return _InZone(adapt(zone), zoned_instant(value, zone, adapt))


def _java_zoned_text(wall: Any, zoned: _InZone) -> Any:
    """``%s`` of a value of ``AT TIME ZONE`` (``wall``: the zone's wall time, as the local
    engine holds it; ``zoned``: its zone and instant) as Java's ``ZonedDateTime`` prints
    Trino's (``FormatFunction``: ``toZonedDateTime``): the wall time, the offset and the zone's
    name,
    ``2026-12-06T05:00-05:00[America/New_York]``; ``2026-12-06T10:00+02:00`` in an offset
    zone. Locally it printed the wall time alone, as if a TIMESTAMP."""
    from sqlglot import exp

    offset = from_template(_JAVA_OFFSET, wall=wall, instant=zoned.instant)
    name = from_template(_JAVA_ZONE_NAME, zone=zoned.zone)
    text = _java_text(from_template(_MILLIS, x=wall))
    return exp.DPipe(this=exp.DPipe(this=text, expression=offset), expression=name)


def _java_text(arg: Any) -> Any:
    """``arg`` as the text Java's ``%s`` prints of it on Athena (:data:`_JAVA_TEXT`)."""
    return from_template(_JAVA_TEXT, arg=arg, number=from_template(JAVA_NUMBER_TEXT, x=arg))


#: The text of a DOUBLE or REAL as Trino casts it and ``format``'s ``%s`` prints it (Java's
#: ``Double.toString``/``Float.toString``): the shortest digits that read back as the value, as
#: DuckDB's own text, but from 1e7 up and below 1e-3 in Java's notation (``1.0E7``, ``1.5E-5``,
#: where DuckDB writes ``10000000.0`` and ``1.5e-05``), and ``NaN``/``Infinity`` for DuckDB's
#: ``nan``/``inf``. Built from DuckDB's text, given once to a lambda (``t``) so the value is
#: computed once: ``sig`` is its significant digits and ``exp`` the power of ten of the first
#: (the struct's fields are read ``n['sig']``: DuckDB reads ``n.sig`` as a table's column).
JAVA_NUMBER_TEXT = """
list_extract(list_transform([CAST(__x__ AS VARCHAR)], t -> CASE
  WHEN t IN ('nan', '-nan') THEN 'NaN'
  WHEN t = 'inf' THEN 'Infinity'
  WHEN t = '-inf' THEN '-Infinity'
  WHEN TRY_CAST(t AS DOUBLE) = 0
    OR abs(TRY_CAST(t AS DOUBLE)) >= 1e-3 AND abs(TRY_CAST(t AS DOUBLE)) < 1e7 THEN t
  ELSE list_extract(list_transform([struct_pack(
      sig := rtrim(ltrim(replace(split_part(ltrim(t, '-'), 'e', 1), '.', ''), '0'), '0'),
      exp := CASE WHEN contains(t, 'e')
        THEN CAST(split_part(t, 'e', 2) AS INTEGER)
          + strpos(split_part(ltrim(t, '-'), 'e', 1) || '.', '.') - 2
        WHEN ltrim(split_part(ltrim(t, '-'), '.', 1), '0') <> ''
        THEN length(ltrim(split_part(ltrim(t, '-'), '.', 1), '0')) - 1
        ELSE length(ltrim(split_part(t, '.', 2), '0')) - length(split_part(t, '.', 2)) - 1
      END)], n -> CASE WHEN starts_with(t, '-') THEN '-' ELSE '' END
      || left(n['sig'], 1) || '.' || coalesce(nullif(substr(n['sig'], 2), ''), '0')
      || 'E' || CAST(n['exp'] AS VARCHAR)), 1)
END), 1)
"""


#: A zone of a fixed offset as Trino names one (``+02:00``, ``TimeZoneKey``); DuckDB's ICU
#: refuses that name ("Unknown TimeZone '+02:00'") and takes ``GMT+02:00``.
_OFFSET_ZONE = re.compile(r"[+-]\d\d:\d\d")


def duckdb_zone(zone: Any) -> Any:
    """``zone`` (an adapted zone expression) as DuckDB names it: a literal offset ``+02:00``
    becomes ``GMT+02:00`` (:data:`_OFFSET_ZONE`); any other zone is left as it is. Where the
    zone is printed (``CAST(... AS varchar)``) Trino's name is kept."""
    from sqlglot import exp

    if isinstance(zone, exp.Literal) and zone.is_string and _OFFSET_ZONE.fullmatch(zone.this):
        return exp.Literal.string("GMT" + zone.this)
    return zone


def from_template(template: str, **args: Any) -> Any:
    """The DuckDB expression ``template`` with a copy of ``args[name]`` for each ``__name__``
    (a column of that name as the template parses it). :mod:`athena.trinocalls` fills its
    templates so too."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(template, read="duckdb")

    def put(node: Any) -> Any:
        if isinstance(node, exp.Column) and node.name.startswith("__") and node.name.endswith("__"):
            return args[node.name.strip("_")].copy()
        return node

    return tree.transform(put)
