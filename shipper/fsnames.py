"""File names as text that can be sent and shown.

A file name is bytes. Python decodes it with the file-system encoding and keeps the bytes that
do not decode as lone surrogates (``surrogateescape``): ``résumé.log`` written in Latin-1 is
``'r\\udce9sum\\udce9.log'``, and under ``LC_ALL=C`` with ``PYTHONUTF8=0`` even a UTF-8
``café.log`` is ``'caf\\udcc3\\udca9.log'``. Such a string opens the file, but cannot be encoded
as UTF-8: in a Forward message (msgpack) or a Prometheus label it raised ``UnicodeEncodeError``
and stopped the shipper. What leaves the process uses :func:`as_text` instead.

Text read from JSON a runtime did not write (a ``config.v2.json`` holding ``"\\ud800"``) may
hold any lone surrogate, not only the escaped bytes above: :func:`as_text` takes it too.
"""

from __future__ import annotations

import os
import re

SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate (what no UTF-8 encodes); shared with :mod:`shipper.formats` and
:mod:`shipper.entry`."""


def as_text(name: str | os.PathLike[str]) -> str:
    """``name``'s bytes read as UTF-8 whatever the locale, each invalid byte as U+FFFD; a lone
    surrogate that stands for no byte (a JSON escape) is a U+FFFD too."""
    try:
        return os.fsencode(name).decode("utf-8", "replace")
    except UnicodeEncodeError:
        return SURROGATE.sub("\ufffd", os.fspath(name))
