"""Every byte of the usual lines swapped for each byte class that matters to the checks
(aggregator/envoy_checks.py): the split parser, checks and all, parses each such line as the
regexes alone do. Random lines rarely hit one exact literal byte; these hit every one."""

from __future__ import annotations

import re

import pytest

from tests.aggregator.helpers import OTHER_PLANES, envoy_line
from tests.aggregator.test_envoy_split import CUSTOM_LINE, ISTIO_LINE, _assert_same

#: The usual lines of every built-in format and of the test's custom one (the other data
#: planes' without the quotes in their user agent: those never reach the checks).
USUAL = {
    "default": envoy_line(xff="10.0.0.1", ust="-", upstream="[2001:db8::7]:8080"),
    "istio": ISTIO_LINE,
    "custom": CUSTOM_LINE,
    **{name: line.replace('"Chrome" ', "") for name, line in OTHER_PLANES.items()},
}
#: A stand-in of each class: letter, digit, dash, the delimiters, RE2's blanks and ``\v`` (no
#: blank to RE2), a multi-byte character, a NUL.
SWAPS = ("x", "7", "-", '"', " ", "\t", "\v", "\r", "é", "\x00", ":", "Z")


@pytest.mark.parametrize("name", sorted(USUAL))
def test_each_byte_swapped_parses_as_the_regexes_parse_it(name: str) -> None:
    line = USUAL[name]
    lines = [line[:i] + swap + line[i + 1 :] for i in range(len(line)) for swap in SWAPS]
    _assert_same([line, *lines])


#: Values that are one step outside a value pattern (ten digits for ``\d{1,9}``, 19 for
#: ``\d{1,18}``, a signed or doubled dash...) or inside it at its edges.
ODD_VALUES = ("", "-", "--", "-5", "5-", "0", "123456789", "1234567890", "1" * 18, "1" * 19)


@pytest.mark.parametrize("name", sorted(USUAL))
def test_each_value_replaced_parses_as_the_regexes_parse_it(name: str) -> None:
    line = USUAL[name]
    spans = [m.span() for m in re.finditer(r'[^" ]+', line)]
    lines = [line[:a] + odd + line[b:] for a, b in spans for odd in ODD_VALUES]
    _assert_same([line, *lines])
