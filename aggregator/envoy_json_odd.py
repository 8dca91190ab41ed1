"""Which lines of an Envoy JSON batch made the bulk reader refuse it, so that only they are read
line by line (:func:`aggregator.envoy_json._read`).

``pyarrow.json`` reads a batch as one table: one line that types a key otherwise than the rest
(``"response_code": "200.0"`` beside ``200``), one number past a double, one broken line, and
it refuses the whole batch. Read line by line, that batch cost ~10x: one such line per batch
(an odd or a hostile client) made every batch 10x slower. The lines to blame are told by the
refusal:

* a key typed two ways (Arrow's ``Column(/key) changed from number to string``): the lines
  whose value of that key is of the less frequent of the two kinds (:func:`conflicting_rows`);
* and with any refusal (a broken line, a number past a double are refused without a row), the
  lines that look like a cause (:func:`suspect_rows`): one round for all of them.

(A line the reader takes but whose values it cannot give back, a number a double may have
changed, an object where a string belongs, is told by ``_read_bulk`` itself: no refusal.)

A wrong guess costs time, never a value: every reader gives a line the same row.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregator.string_bytes import offsets_and_bytes

#: Arrow's refusal of a key two lines type differently: its JSON pointer and both kinds.
_CONFLICT = re.compile(r"Column\((/[^)]*)\) changed from (\w+) to (\w+)")
#: The first character of a value of each kind Arrow names.
_KIND_STARTS = {
    "string": '"',
    "number": r"[-\d]",
    "boolean": "[tf]",
    "object": r"\{",
    "array": r"\[",
}
#: A line no JSON reader takes as it is: its last character not the object's ``}`` (a line cut
#: by a shipper's buffer). (A regex: ~0.04 µs a line, the line's end alone.)
_CUT = r"[^}\s]\s*$"
#: A number past a double (Arrow's ``Number too big to be stored in double``): an exponent of
#: three digits (``1e400``) or 300 digits. Looked for only when Arrow says so: a regex that
#: reads the whole line (~0.8 µs a line, a third of a bulk read).
_PAST_DOUBLE = r"[:,\[]\s*-?(?:\d{300}|[\d.]+[eE]\+?\d{3})"
_TOO_BIG = "Number too big"


def conflicting_key(error: Exception) -> str | None:
    """The key (the last part of its JSON pointer) Arrow's ``error`` says two lines typed
    differently; None for any other error."""
    match = _CONFLICT.search(str(error))
    return None if match is None else _key(match)


def _key(match: re.Match[str]) -> str:
    """The key of a :data:`_CONFLICT`: its JSON pointer's last part, unescaped (RFC 6901)."""
    return match.group(1).rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~")


def blamed_rows(lines: pa.Array, error: Exception) -> np.ndarray | None:
    """One bool per line of ``lines``: the lines that made the bulk reader refuse them with
    ``error`` (module docstring); None when none can be told apart from the rest."""
    rows = suspect_rows(lines, error)
    conflicting = conflicting_rows(lines, error)
    if conflicting is not None:
        rows |= conflicting
    return rows if 0 < rows.sum() < len(rows) else None


def conflicting_rows(lines: pa.Array, error: Exception) -> np.ndarray | None:
    """For a key typed two ways (``error``), the lines whose value of it is of the kind fewer
    lines hold (ties: the later kind, the one Arrow met second); None for another error."""
    match = _CONFLICT.search(str(error))
    if match is None:
        return None
    kinds = [_KIND_STARTS.get(kind) for kind in match.group(2, 3)]
    if None in kinds:
        return None
    quoted = rf'"{re.escape(_key(match))}"\s*:\s*'
    first, second = (
        pc.fill_null(pc.match_substring_regex(lines, quoted + start), False).to_numpy(
            zero_copy_only=False
        )
        for start in kinds
    )
    return first if first.sum() < second.sum() else second


def suspect_rows(lines: pa.Array, error: Exception) -> np.ndarray:
    """The lines that look broken (:data:`_CUT`, or with a control character: a raw newline
    splits a line in two for the bulk reader, ``newlines_in_values=False``, and JSON allows none
    in a string), and those with a number past a double when ``error`` says there is one."""
    found = pc.fill_null(pc.match_substring_regex(lines, _CUT), False).to_numpy(
        zero_copy_only=False
    )
    found |= _with_control_bytes(lines)
    if _TOO_BIG in str(error):
        past = pc.fill_null(pc.match_substring_regex(lines, _PAST_DOUBLE), False)
        found |= past.to_numpy(zero_copy_only=False)
    return found


def _with_control_bytes(lines: pa.Array) -> np.ndarray:
    """Which lines hold a byte below 0x20 (tab, newline...), in one numpy pass over their bytes
    (a regex read every line's every byte: ~0.8 µs a line, against ~0.04)."""
    if not pa.types.is_string(lines.type):  # large strings: the regex
        found = pc.match_substring_regex(lines, r"[\x00-\x1f]")
        return pc.fill_null(found, False).to_numpy(zero_copy_only=False)
    offsets, data = offsets_and_bytes(lines)
    hits = np.flatnonzero(data[int(offsets[0]) : int(offsets[-1])] < 0x20) + int(offsets[0])
    out = np.zeros(len(lines), bool)
    out[np.searchsorted(offsets, hits, side="right") - 1] = True
    return out


def merged(
    odd: np.ndarray, blamed: dict[str, pa.Array], rest: dict[str, pa.Array]
) -> dict[str, pa.Array]:
    """The columns of a batch whose ``odd`` lines were read into ``blamed`` and the others into
    ``rest``, in the batch's order. A number column the bulk reader kept as integers is turned
    to text, as the line-by-line reader gives it (the same row:
    :func:`aggregator.envoy_json._typed` reads both)."""
    kept = int(len(odd) - odd.sum())
    order = np.empty(len(odd), np.int64)
    order[~odd] = np.arange(kept)
    order[odd] = kept + np.arange(len(odd) - kept)
    index = pa.array(order)
    out = {}
    for name, values in rest.items():
        other = blamed[name]
        if values.type != other.type:
            values = pc.cast(values, other.type)
        out[name] = pa.concat_arrays([values, other]).take(index)
    return out
