"""Custom ``%START_TIME(...)%`` formats: Envoy's strftime-like time specs, parsed in bulk.

Envoy lets an access-log format print the start time its own way, e.g.
``%START_TIME(%Y/%m/%dT%H:%M:%S%z)%``, ``%START_TIME(%s.%3f)%`` (epoch seconds and millis) or
``%START_TIME(%d/%b/%Y:%H:%M:%S %z)%`` (the common log format). A spec is compiled into

* a regex for the value inside the access-log line (so the format still anchors), and
* an Arrow conversion of the captured texts to ``timestamp[ms, UTC]``: ``pc.strptime`` for
  calendar specs (``%z`` offsets are applied, no offset means UTC, as Envoy prints UTC), integer
  arithmetic for ``%s`` (calendar fields beside it, as in Envoy's documented example
  ``%Y/%m/%dT%H:%M:%S%z %s``, must be there but the epoch seconds are the time); the
  fractional digits of ``%f`` / ``%1f`` … ``%9f`` are cut out first because strptime has no
  sub-second directive.

strptime rolls impossible dates over (``2018-02-30`` becomes 2018-03-02, second 60 the next
minute, day 366 of 2018 a day in 2020): :func:`without_rollover` compares the fields it accepts
out of range (``%d``, ``%S``, ``%j``) with those of the parsed wall-clock time, so such a time is
invalid (NULL, and its line unparsed), never stored as another instant. (Printing each time back
with ``pc.strftime`` would do too, at ~2.5 µs a line against ~0.5 µs for this check.)

A directive outside the supported set is refused with a :class:`ValueError` naming it, at start
up, never while parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from athena.schema import TIMESTAMP

#: directive -> regex of its text (strptime understands each of these as is)
_CALENDAR = {
    "Y": r"\d{4}",
    "m": r"\d{2}",
    "d": r"\d{2}",
    "H": r"\d{2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "y": r"\d{2}",
    "j": r"\d{3}",
    "b": r"[A-Za-z]{3}",
    "h": r"[A-Za-z]{3}",
    "z": r"(?:[+-]\d{2}:?\d{2}|Z)",
}
_EXPAND = {"T": "%H:%M:%S", "F": "%Y-%m-%d"}
#: What a spec is read as, left to right, to expand :data:`_EXPAND`: ``%%`` is a percent sign,
#: so ``%%T`` is the text ``%T``, not a time.
_EXPANDED = re.compile(r"%(%|" + "|".join(_EXPAND) + ")")
#: Regex of ``%s`` (epoch seconds); also how the epoch parts are told apart from literals.
_EPOCH_DIGITS = r"\d{1,12}"
_DIRECTIVE = re.compile(r"%([1-9]?f|[A-Za-z%])")
#: Directives whose place in a value :attr:`TimeFormat.fields` captures: those strptime takes
#: beyond the calendar (day 31 of any month, second 60, day 366 of any year), and the offset.
_CHECKED = ("d", "S", "j", "z")


def _mark(directive: str) -> str:
    """Stands for a :data:`_CHECKED` directive's regex while a spec compiles."""
    return f"\x00{directive}\x00"


@dataclass(frozen=True)
class TimeFormat:
    """A compiled ``START_TIME`` spec."""

    spec: str
    pattern: str
    """Regex of the value inside a line (no capture groups)."""
    parts: str
    """Regex over the value alone, groups ``a`` (before the fraction), ``f``, ``b`` (after), and
    within them one per :attr:`fields`."""
    strptime: str
    """The spec without its fraction, for ``pc.strptime``; empty for an epoch (``%s``) spec."""
    epoch: bool
    fields: tuple[str, ...] = ()
    """The :data:`_CHECKED` directives of a calendar spec, each a group of :attr:`parts` (at its
    first place) for :func:`without_rollover`; empty when the spec has no ``%d``, ``%S``, ``%j``."""

    def to_timestamp(self, text: pa.Array) -> pa.Array:
        """Captured time texts -> timestamp[ms, UTC]; a text that does not parse -> NULL."""
        pieces = pc.extract_regex(text, self.parts)
        whole = pc.binary_join_element_wise(pieces.field("a"), pieces.field("b"), "")
        if self.epoch:
            seconds = pc.cast(whole, pa.int64())
        else:
            parsed = pc.strptime(whole, format=self.strptime, unit="s", error_is_null=True)
            seconds = pc.cast(parsed, pa.int64())
            if self.fields:
                seconds = without_rollover(seconds, {n: pieces.field(n) for n in self.fields})
        return with_fraction(seconds, pieces.field("f"))


def without_rollover(seconds: pa.Array, fields: dict[str, pa.Array]) -> pa.Array:
    """``seconds`` (int64, parsed by strptime), NULL where the texts of ``fields`` (``d``, ``S``,
    ``j``: digits; ``z``: the offset, if the time had one) differ from the parsed wall-clock
    time's: where strptime rolled February 30 over into March, second 60 into the next minute."""
    local = seconds
    if "z" in fields:
        local = pc.add(seconds, _offset_seconds(fields["z"]))
    wall = pc.cast(local, pa.timestamp("s"))
    same = pa.scalar(True)
    for name, component in (("d", pc.day), ("S", pc.second), ("j", pc.day_of_year)):
        if name in fields:
            # Digits wherever strptime parsed (a regex matched them); other rows are NULL anyway.
            text = pc.if_else(pc.is_valid(seconds), fields[name], "0")
            same = pc.and_(same, pc.equal(component(wall), pc.cast(text, pa.int64())))
    return pc.if_else(pc.fill_null(same, False), seconds, pa.scalar(None, pa.int64()))


def _offset_seconds(offset: pa.Array) -> pa.Array:
    """``Z``, ``+hhmm`` or ``+hh:mm`` texts as seconds east of UTC."""
    text = pc.if_else(pc.equal(offset, "Z"), "+0000", offset)
    hours = pc.cast(pc.utf8_slice_codeunits(text, 1, 3), pa.int64())
    minutes = pc.cast(pc.utf8_slice_codeunits(text, -2), pa.int64())
    sign = pc.if_else(pc.starts_with(text, "-"), -1, 1)
    return pc.multiply(sign, pc.add(pc.multiply(hours, 3600), pc.multiply(minutes, 60)))


def with_fraction(seconds: pa.Array, fraction: pa.Array) -> pa.Array:
    """Epoch seconds (int64) plus the digits after the decimal point (text, NULL: none) as
    timestamp[ms, UTC]; digits past the millisecond are cut, as everywhere in the tables."""
    digits = pc.utf8_slice_codeunits(pc.fill_null(fraction, ""), 0, 3)
    millis = pc.cast(pc.utf8_rpad(digits, 3, "0"), pa.int64())
    return pc.add(pc.multiply(seconds, 1000), millis).cast(TIMESTAMP)


def expand(spec: str) -> str:
    """``spec`` with ``%T`` and ``%F`` written out (:data:`_EXPAND`), ``%%`` kept as it is."""
    return _EXPANDED.sub(lambda m: _EXPAND.get(m.group(1), m.group(0)), spec)


def value_pattern(spec: str) -> str:
    """Regex (no groups) of a time printed with ``spec`` that is matched but not converted (a
    format's second ``START_TIME``): each directive :func:`compile_time_format` knows as its
    regex, any other as a run of non-blanks; the spec's own text, spaces included, as it is.
    (``\\S+`` for the whole value never matched a time printed with a space.)"""
    parts: list[str] = []
    pos = 0
    spec = expand(spec)
    for m in _DIRECTIVE.finditer(spec):
        parts.append(re.escape(spec[pos : m.start()]))
        d = m.group(1)
        if d == "%":
            parts.append("%")
        elif d.endswith("f"):
            parts.append(rf"\d{{{int(d[0]) if len(d) == 2 else 9}}}")
        elif d == "s":
            parts.append(_EPOCH_DIGITS)
        else:
            parts.append(_CALENDAR.get(d, r"\S+"))
        pos = m.end()
    parts.append(re.escape(spec[pos:]))
    return "".join(parts)


def compile_time_format(spec: str) -> TimeFormat:
    """Compile an Envoy ``START_TIME`` spec; ValueError for a directive logq cannot parse."""
    spec = expand(spec)
    pattern: list[str] = []
    before: list[str] = []
    after: list[str] = []
    frac = ""
    strp: list[str] = []
    epoch = False
    pos = 0
    for m in _DIRECTIVE.finditer(spec):
        literal = re.escape(spec[pos : m.start()])
        (after if frac else before).append(literal)
        pattern.append(literal)
        strp.append(spec[pos : m.start()])
        d = m.group(1)
        if d == "%":
            piece, strp_piece = "%", "%%"
        elif d.endswith("f"):
            if frac:
                raise ValueError(f"%START_TIME({spec})%: only one fractional-seconds directive")
            n = int(d[0]) if len(d) == 2 else 9
            frac = rf"\d{{{n}}}"
            pattern.append(frac)
            pos = m.end()
            continue
        elif d == "s":
            piece, strp_piece, epoch = _EPOCH_DIGITS, "", True
        elif d in _CALENDAR:
            piece, strp_piece = _mark(d) if d in _CHECKED else _CALENDAR[d], f"%{d}"
        else:
            raise ValueError(
                f"%START_TIME({spec})%: the directive %{d} is not supported; use %Y %m %d %H %M "
                "%S %y %j %b %z %T %F, %s (epoch seconds) and %f / %1f..%9f (fraction)"
            )
        (after if frac else before).append(piece)
        pattern.append(piece)
        strp.append(strp_piece)
        pos = m.end()
    tail = re.escape(spec[pos:])
    (after if frac else before).append(tail)
    pattern.append(tail)
    strp.append(spec[pos:])
    directives = [m.group(1) for m in _DIRECTIVE.finditer(spec)]  # %%Y is no year
    if epoch and (directives.count("s") > 1 or _EPOCH_DIGITS in after):
        raise ValueError(
            f"%START_TIME({spec})%: %s must appear once, before any fraction (%f, %3f ...)"
        )
    if not epoch and not any(d in directives for d in ("Y", "y")):
        raise ValueError(f"%START_TIME({spec})%: needs a year (%Y or %y) or %s to be a time")
    fields: tuple[str, ...] = ()
    if epoch:
        # Only the digits of %s take part in the number; literals around them are dropped.
        before = [p if p == _EPOCH_DIGITS else f"(?:{p})" for p in before]
        parts = _epoch_parts(before, frac, after)
    else:
        marked = "".join(before + after)
        if any(_mark(d) in marked for d in ("d", "S", "j")):
            fields = tuple(d for d in _CHECKED if _mark(d) in marked)
            before, after = _named(before, after)
        parts = f"^(?P<a>{''.join(before)})(?P<f>{frac})(?P<b>{''.join(after)})$"
    compiled = TimeFormat(
        spec, _unmarked("".join(pattern)), _unmarked(parts), "".join(strp), epoch, fields
    )
    _self_test(compiled)
    return compiled


#: The instant the self-test prints and parses back: 2024-03-05T06:07:08.123456789Z.
_SAMPLE_SECONDS = 1_709_618_828
_SAMPLE_TEXT = {
    "Y": "2024", "m": "03", "d": "05", "H": "06", "M": "07", "S": "08", "y": "24", "j": "065",
    "b": "Mar", "h": "Mar", "z": "+0000", "s": str(_SAMPLE_SECONDS), "%": "%",
}  # fmt: skip


def _self_test(fmt: TimeFormat) -> None:
    """Print a known instant with the spec and parse it back, at start-up: a spec that compiles
    but cannot convert (e.g. two ``%s``) must be refused here, not fail every flush later."""

    def text(m: re.Match[str]) -> str:
        d = m.group(1)
        if d.endswith("f"):
            return "123456789"[: int(d[0]) if len(d) == 2 else 9]
        return _SAMPLE_TEXT[d]

    sample = _DIRECTIVE.sub(text, fmt.spec)
    try:
        got = fmt.to_timestamp(pa.array([sample])).cast(pa.int64())[0].as_py()
    except (pa.ArrowException, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"%START_TIME({fmt.spec})%: cannot be parsed back ({exc})") from None
    if got is None or not re.fullmatch(fmt.pattern, sample):
        raise ValueError(f"%START_TIME({fmt.spec})%: cannot be parsed back ({sample!r})")


def _unmarked(regex: str) -> str:
    """``regex`` with each :func:`_mark` replaced by its directive's regex."""
    for directive in _CHECKED:
        regex = regex.replace(_mark(directive), _CALENDAR[directive])
    return regex


def _named(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    """The regex pieces around the fraction with the first mark of each :data:`_CHECKED`
    directive made a group of its name."""
    pieces, named = before + after, set()
    for i, piece in enumerate(pieces):
        directive = next((d for d in _CHECKED if piece == _mark(d)), None)
        if directive and directive not in named:
            named.add(directive)
            pieces[i] = f"(?P<{directive}>{_CALENDAR[directive]})"
    return pieces[: len(before)], pieces[len(before) :]


def _epoch_parts(before: list[str], frac: str, after: list[str]) -> str:
    """Groups for an epoch spec: ``a`` = the seconds digits, ``f`` the fraction, ``b`` empty."""
    head = "".join(f"(?P<a>{p})" if p == _EPOCH_DIGITS else p for p in before)
    tail = "".join(after)
    return f"^{head}(?P<f>{frac}){tail}(?P<b>)$"
