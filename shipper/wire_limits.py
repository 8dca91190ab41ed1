"""The Forward message limits that light modules need without the codec (:mod:`shipper.wire`).

Standard library only: ``logq-aggregator --help`` prints ``--max-message-entries``'s default
without importing msgpack and the rest of the codec. :mod:`shipper.wire` imports them from here.
"""

from __future__ import annotations

#: Most entries one message may hold (and longest array or map in it), unless the caller says
#: otherwise. A message's memory grows with its entry count, not its bytes: a gzip blob of 16 KB
#: inflates to 5 million 3-byte ``[0, {}]`` entries, ~2 GB of Python objects. Real clients send
#: far fewer: logq-shipper 2,048 lines, Fluent Bit 2 MB chunks, Fluentd 8 MB chunks (~100,000
#: lines of 80 bytes).
MAX_MESSAGE_ENTRIES = 500_000
