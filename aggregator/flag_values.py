"""Values of ``logq-aggregator``'s flags (defaults, choices, the form of a value) shared by the
modules that use them and the flag table, :mod:`aggregator.arguments`.

Plain constants, standard library only: ``logq-aggregator --help`` builds its parser from them
without importing the buffer, the decoder or the server (pyarrow, numpy, msgpack: over half a
second of imports for a help text).
"""

from __future__ import annotations

import re

#: Default ``--listen``: the Forward protocol's port, on this host only.
DEFAULT_LISTEN = "127.0.0.1:24224"

#: Buffer frame compressions (``--buffer-compression``). Per Envoy line: ``none`` ~260 bytes of
#: disk, ``lz4`` ~95, ``zstd`` ~55. In process alone (``bench/ingest.py --stages``) lz4 costs
#: ~0.4 µs a line more than none (encode + decode) and zstd ~0.8 µs; but the whole aggregator
#: (``bench/ingest.py``) spends less CPU with lz4 than with none: 2.7 times fewer bytes to write,
#: fsync and read back through the kernel, and fewer segments sealed by size (measured 2026-12-04,
#: 1M lines, five alternating runs each: median ~245,000 lines per CPU-second with lz4 against
#: ~227,000 with none, and 20 Parquet objects against 38). Hence the default
#: (:data:`DEFAULT_BUFFER_COMPRESSION`). Frames record their compression, so a buffer written
#: with one setting replays under any other.
BUFFER_COMPRESSIONS = ("none", "lz4", "zstd")
#: ``--buffer-compression`` when not given.
DEFAULT_BUFFER_COMPRESSION = "lz4"

#: What a node id may hold (``--node-id``): it starts every object key and ledger file this
#: instance writes.
NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Default of ``--max-inflight-bytes``: bytes of messages read and not yet durable, all
#: connections together (docs/operations.md section 3, "memory").
MAX_INFLIGHT_BYTES = 256 * 1024 * 1024

#: Environment variable holding the passphrase of an encrypted ``--tls-key`` when no
#: ``--tls-key-password`` (flag or config key) gives one: kept out of ``ps``.
TLS_KEY_PASSWORD_ENV = "LOGQ_AGGREGATOR_TLS_KEY_PASSWORD"
