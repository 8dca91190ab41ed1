"""The route of a request path, computed independently of the SQL (the tests' truth).

Split on ``/`` segment by segment in Python, where the canned queries use three regular
expression replacements: the query string goes, and a segment that is all digits, a UUID, 16+
hex digits or holds a run of 4+ digits becomes ``{id}``.
"""

from __future__ import annotations

import re

_ID = re.compile(
    r"[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}|.*[0-9]{4}.*"
)


def route(path: str | None) -> str | None:
    """``/api/v1/carts/3f2a…-…/items/12?x=1`` -> ``/api/v1/carts/{id}/items/{id}``."""
    if path is None:
        return None
    bare = path.split("?", 1)[0]
    parts = bare.split("/")
    # The first part precedes the first "/" (empty for absolute paths): never an id segment.
    return "/".join([parts[0]] + ["{id}" if _ID.fullmatch(p) else p for p in parts[1:]])
