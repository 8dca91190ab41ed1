"""A string array's offsets and bytes as numpy views, for the parsers' whole-batch byte scans."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def offsets_and_bytes(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (``len + 1`` int32, the array's slice of them) and the data bytes of a
    ``pa.string()`` array, without a copy (an array of empty strings may have no data buffer:
    then no bytes)."""
    _, offset_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offset_buffer, np.int32)[
        strings.offset : strings.offset + len(strings) + 1
    ]
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer else np.zeros(0, np.uint8)
    return offsets, data
