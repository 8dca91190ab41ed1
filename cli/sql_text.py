"""Nested and binary values (ARRAY, MAP, ROW, VARBINARY) as text, the way Athena shows them.

The csv, markdown and table formats print a value as text. For a list, a dict or bytes,
Python's ``str`` printed its repr (``['a']``, ``{'_0': 1}``, ``b'h\\xc3\\xa9'``); Athena's
console and its result CSV print Trino's text form instead, which this module writes:

- ``ARRAY``: ``[a, b]``;
- ``MAP``: ``{k=v, k2=v2}`` (a ``dict``, or pyarrow's list of key-value pairs when a map is
  nested in another value or its keys are not hashable);
- ``ROW``: ``{name=value, ...}`` (Athena names an unnamed row's fields ``field0``, …; DuckDB
  its own way, kept as it gives them);
- ``VARBINARY``: hex bytes separated by spaces, ``68 c3 a9``;
- NULL inside any of them: ``null``; ``true``/``false`` for booleans; ``NaN``, ``Infinity``
  and ``-Infinity`` for those doubles (Python's ``nan``/``inf`` are not Athena's, and pyathena
  reads Athena's ``[NaN]`` as a float); text as it is, unquoted; a VARBINARY map key in hex
  too (:class:`athena.arrow_values.BinaryKey`); an interval as
  :func:`athena.arrow_values.interval_text` writes one (``0 01:30:00.000``).

Nested values are written recursively; other values inside them read as the format prints
them on their own (``scalar``: times in ISO-8601 UTC, decimals as numbers). Each format's own
escaping (CSV quoting, Markdown escapes, control characters shown escaped) applies to the
whole text afterwards. JSON output does not use this: it writes lists and objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from athena.arrow_values import BinaryKey, interval_text

#: Values this module writes: what pyarrow and pyathena give for ARRAY, MAP, ROW, VARBINARY.
NESTED = (list, tuple, dict, bytes, bytearray, memoryview)


def sql_text(value: Any, scalar: Callable[[Any], Any]) -> str:
    """``value`` (an instance of :data:`NESTED`) in Athena's text form (see the module);
    ``scalar`` gives the printable form of any other value inside it."""
    if type(value) is str:  # the most common item, as it is (not a BinaryKey)
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex(" ")
    if isinstance(value, BinaryKey):
        return value.raw.hex(" ")
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_text(value)
    if isinstance(value, dict):
        return _map_text(value.items(), scalar)
    if _is_interval(value):  # inside a value: a column of them is text already
        return interval_text(value)
    if isinstance(value, list | tuple):
        if value and all(_is_pair(item) for item in value):
            return _map_text(value, scalar)  # pyarrow's form of a map
        return "[" + ", ".join(sql_text(item, scalar) for item in value) + "]"
    return str(scalar(value))


def nonfinite_text(value: float) -> str:
    """A NaN or infinite double as Athena's console and result CSV write it, in a value or on
    its own: ``NaN``, ``Infinity``, ``-Infinity`` (Python's ``str`` gives ``nan``, ``inf``)."""
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _map_text(pairs: Any, scalar: Callable[[Any], Any]) -> str:
    return "{" + ", ".join(f"{sql_text(k, scalar)}={sql_text(v, scalar)}" for k, v in pairs) + "}"


def _is_pair(item: Any) -> bool:
    """A map entry as pyarrow gives it: a ``(key, value)`` tuple. Neither engine gives tuples
    for anything else inside a value (a ROW is a ``dict``, an ARRAY a ``list``)."""
    return type(item) is tuple and len(item) == 2


def _is_interval(value: Any) -> bool:
    """pyarrow's ``MonthDayNano`` (a named tuple) of an interval inside an ARRAY, MAP or ROW."""
    return isinstance(value, tuple) and hasattr(value, "nanoseconds") and hasattr(value, "days")
