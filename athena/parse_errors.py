"""sqlglot's parse errors as a reason a person can act on, on one line.

sqlglot words its errors for its own developers: a trailing ``WHERE`` is ``Required keyword:
'this' missing for <class 'sqlglot.expressions.query.Where'>``, a trailing ``FROM`` is ``Expected
table name but got <Token token_type: TokenType.SENTINEL, text: SENTINEL, ...>``. Its
``ParseError`` also carries each error as data (``errors``: description, line, col, the
highlighted token and the text around it), from which :func:`parse_error_text` writes:

- what is missing, and where: ``the SQL ends early after WHERE: a condition is missing`` when
  nothing but blanks, comments or ``;`` follows the token, else ``a value is missing before AND``
  (or before a closing bracket);
- ``unexpected ')'`` for a token that fits nowhere;
- any other description with its class and token reprs made readable (``Where``, ``'('``, ``the
  end of the SQL``), so that an error not foreseen here reads too;
- then the line and column where the highlighted token starts, and the statement around it:
  ``...; line 1, column 28: SELECT * FROM envoy_access WHERE``.

Errors without that data (a ``TokenError``: an unclosed quote or comment) keep sqlglot's text,
on one line and without its terminal colour codes.
"""

from __future__ import annotations

import re
from typing import Any

#: Terminal colour codes sqlglot puts around the offending token in its message.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: A node sqlglot built without a part it needs: the part and the node's class.
_REQUIRED = re.compile(r"Required keyword: '(\w+)' missing for <class '(?:[\w.]+\.)?(\w+)'>")
#: A class repr anywhere else: its name is kept.
_CLASS = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
#: A token's repr (its text may hold anything, commas too); SENTINEL is the end of the text.
_TOKEN = re.compile(
    r"<Token token_type: TokenType\.(\w+), text: (.*?), line: \d+, col: \d+, start: \d+, "
    r"end: \d+, comments: \[.*?\]>",
    re.DOTALL,
)
#: sqlglot's two ways of saying which token it wanted: "Expected table name but got ...",
#: "Expecting )".
_EXPECTED = re.compile(r"Expected (.+?) but got (.+)|Expecting (.+)", re.DOTALL)
_END = "the end of the SQL"
#: A last token that closes a call or a list: what is missing is inside it, not after it
#: (``date_trunc('hour', )``).
_CLOSING = frozenset({")", "]"})
#: What a node sqlglot found incomplete lacks, by its class; any other lacks "a value" (an
#: operand of ``=``, ``+``, ``LIKE``, an argument of a function).
_MISSING = {
    "Where": "a condition",
    "Having": "a condition",
    "Not": "a condition",
    "And": "a condition",
    "Or": "a condition",
    "If": "a condition",  # CASE WHEN
    "Between": "the upper bound of BETWEEN",
    "Order": "what to order by",
    "Group": "what to group by",
    "Limit": "a number",
    "Offset": "a number",
    "Union": "a query",
    "Intersect": "a query",
    "Except": "a query",
}


def parse_error_text(exc: Exception) -> str:
    """The reason ``exc`` (a sqlglot ``ParseError`` or ``TokenError``) gives, as the module
    writes it: one line, no class or token reprs, no colour codes."""
    errors = getattr(exc, "errors", None)
    if not errors:
        return _one_line(_readable(str(exc)))
    error: dict[str, Any] = errors[0]
    highlight = _one_line(str(error.get("highlight") or ""))
    reason = _reason(str(error.get("description") or ""), highlight, _ends(error))
    excerpt = _one_line(
        f"{error.get('start_context') or ''}{error.get('highlight') or ''}"
        f"{error.get('end_context') or ''}"
    )
    line, col = error.get("line"), error.get("col")
    if not isinstance(line, int) or not isinstance(col, int):
        return f"{reason}: {excerpt}" if excerpt else reason
    raw = str(error.get("highlight") or "")
    if raw and "\n" not in raw:  # sqlglot's column is the token's last character
        col -= len(raw) - 1
    return f"{reason}; line {line}, column {col}: {excerpt}"


def _reason(description: str, highlight: str, at_end: bool) -> str:
    """The reason of one error, its token ``highlight`` as the SQL writes it."""
    word = _word(highlight)
    required = _REQUIRED.fullmatch(description)
    expected = _EXPECTED.fullmatch(_readable(description))
    if required:
        missing = _MISSING.get(required.group(2), "a value")
    elif expected and expected.group(3):
        missing = _quoted(expected.group(3).strip())
    elif expected and (at_end or expected.group(2) != _END):
        missing = _article(expected.group(1).strip())
    elif description.startswith("Invalid expression / Unexpected token") and highlight:
        return f"unexpected {word}"
    else:
        text = _readable(description)
        return f"{text} at {word}" if highlight else text
    if not highlight:
        return f"{missing} is missing"
    if at_end and highlight not in _CLOSING:
        return f"the SQL ends early after {word}: {missing} is missing"
    return f"{missing} is missing before {word}"


def _readable(text: str) -> str:
    """``text`` without colour codes, class reprs (the class's name) or token reprs (the
    token's text in quotes, or "the end of the SQL")."""
    text = _ANSI.sub("", text)
    text = _CLASS.sub(lambda m: m.group(1), text)
    return _TOKEN.sub(lambda m: _END if m.group(1) == "SENTINEL" else _quoted(m.group(2)), text)


def _ends(error: dict[str, Any]) -> bool:
    """Whether nothing but blanks, comments and ``;`` follows the highlighted token (its
    ``end_context``, read by Trino's tokenizer; one it cannot read is more SQL)."""
    from sqlglot.dialects.dialect import Dialect
    from sqlglot.errors import SqlglotError
    from sqlglot.tokens import TokenType

    rest = str(error.get("end_context") or "")
    if not rest.strip():
        return True
    try:
        tokens = Dialect.get_or_raise("trino").tokenize(rest)
    except SqlglotError:
        return False
    return all(t.token_type == TokenType.SEMICOLON for t in tokens)


def _word(text: str) -> str:
    """A keyword or name as it is (``WHERE``, ``ORDER BY``), anything else quoted (``'='``)."""
    return text if re.fullmatch(r"[A-Za-z_][\w ]*", text) else _quoted(text)


def _quoted(text: str) -> str:
    return text if text == _END else f"'{text}'"


def _article(noun: str) -> str:
    """``table name`` → ``a table name``; ``TYPE`` → ``a TYPE``."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _one_line(text: str) -> str:
    return " ".join(_ANSI.sub("", text).split())
