"""Custom ``%START_TIME(...)%`` formats: Envoy's strftime-like time specs, parsed in bulk.

Envoy lets an access-log format print the start time its own way, e.g.
``%START_TIME(%Y/%m/%dT%H:%M:%S%z)%``, ``%START_TIME(%s.%3f)%`` (epoch seconds and millis) or
``%START_TIME(%d/%b/%Y:%H:%M:%S %z)%`` (the common log format). A spec is compiled into

* a regex for the value inside the access-log line (so the format still anchors), and
* an Arrow conversion of the captured texts to ``timestamp[ms, UTC]``: ``pc.strptime`` for
  calendar specs (``%z`` offsets are applied, no offset means UTC, as Envoy prints UTC), integer
  arithmetic for ``%s``; the fractional digits of ``%f`` / ``%1f`` … ``%9f`` are cut out first
  because strptime has no sub-second directive.

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
#: Regex of ``%s`` (epoch seconds); also how the epoch parts are told apart from literals.
_EPOCH_DIGITS = r"\d{1,12}"
_DIRECTIVE = re.compile(r"%([1-9]?f|[A-Za-z%])")


@dataclass(frozen=True)
class TimeFormat:
    """A compiled ``START_TIME`` spec."""

    spec: str
    pattern: str
    """Regex of the value inside a line (no capture groups)."""
    parts: str
    """Regex over the value alone, groups ``a`` (before the fraction), ``f``, ``b`` (after)."""
    strptime: str
    """The spec without its fraction, for ``pc.strptime``; empty for an epoch (``%s``) spec."""
    epoch: bool

    def to_timestamp(self, text: pa.Array) -> pa.Array:
        """Captured time texts -> timestamp[ms, UTC]; a text that does not parse -> NULL."""
        pieces = pc.extract_regex(text, self.parts)
        whole = pc.binary_join_element_wise(pieces.field("a"), pieces.field("b"), "")
        if self.epoch:
            seconds = pc.cast(whole, pa.int64())
        else:
            parsed = pc.strptime(whole, format=self.strptime, unit="s", error_is_null=True)
            seconds = pc.cast(parsed, pa.int64())
        return with_fraction(seconds, pieces.field("f"))


def with_fraction(seconds: pa.Array, fraction: pa.Array) -> pa.Array:
    """Epoch seconds (int64) plus the digits after the decimal point (text, NULL: none) as
    timestamp[ms, UTC]; digits past the millisecond are cut, as everywhere in the tables."""
    digits = pc.utf8_slice_codeunits(pc.fill_null(fraction, ""), 0, 3)
    millis = pc.cast(pc.utf8_rpad(digits, 3, "0"), pa.int64())
    return pc.add(pc.multiply(seconds, 1000), millis).cast(TIMESTAMP)


def compile_time_format(spec: str) -> TimeFormat:
    """Compile an Envoy ``START_TIME`` spec; ValueError for a directive logq cannot parse."""
    for short, long in _EXPAND.items():
        spec = spec.replace(f"%{short}", long)
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
            piece, strp_piece = _CALENDAR[d], f"%{d}"
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
    if epoch and any(d in spec for d in ("%Y", "%m", "%d", "%H", "%M", "%S")):
        raise ValueError(f"%START_TIME({spec})%: %s cannot be mixed with calendar fields")
    if epoch and (spec.count("%s") > 1 or _EPOCH_DIGITS in after):
        raise ValueError(
            f"%START_TIME({spec})%: %s must appear once, before any fraction (%f, %3f ...)"
        )
    if not epoch and not any(f"%{d}" in spec for d in ("Y", "y")):
        raise ValueError(f"%START_TIME({spec})%: needs a year (%Y or %y) or %s to be a time")
    if epoch:
        # Only the digits of %s take part in the number; literals around them are dropped.
        before = [p if p == _EPOCH_DIGITS else f"(?:{p})" for p in before]
        parts = _epoch_parts(before, frac, after)
    else:
        parts = f"^(?P<a>{''.join(before)})(?P<f>{frac})(?P<b>{''.join(after)})$"
    compiled = TimeFormat(spec, "".join(pattern), parts, "".join(strp), epoch)
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


def _epoch_parts(before: list[str], frac: str, after: list[str]) -> str:
    """Groups for an epoch spec: ``a`` = the seconds digits, ``f`` the fraction, ``b`` empty."""
    head = "".join(f"(?P<a>{p})" if p == _EPOCH_DIGITS else p for p in before)
    tail = "".join(after)
    return f"^{head}(?P<f>{frac}){tail}(?P<b>)$"
