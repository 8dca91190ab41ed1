"""Compaction: merge a closed hour's small flush files into files of about ``--target-file-bytes``.

Flushes write one small file per partition every few seconds (freshness); Athena pays per file
opened, so once an hour is closed (its end plus ``grace`` has passed, and no file in it is younger
than ``grace``) its small files are merged. Run by ``logq-aggregator compact`` and by the
service every ``--compact-interval`` seconds.

Run one compactor per warehouse: the periodic task is off by default. Set ``--compact-interval``
on every aggregator, or on some (of the live ones that have it, said in their heartbeats, only
the one with the smallest node id compacts, see :func:`aggregator.ledger.compaction_blocker`),
or run ``logq-aggregator compact`` from cron on one machine. A second compactor is safe (see
:mod:`.attempt`), only wasted work.

The modules, from a pass down to one merge:

- :mod:`.command`: ``logq-aggregator compact``, one pass from the command line;
- :mod:`.notes`: what a pass left alone and why (the open hours), for the command to say;
- :mod:`.passes`: one pass over a warehouse (several partitions merged at once, ``hold``);
- :mod:`.grace`: the grace, never shorter than a crashed aggregator's heartbeat staleness;
- :mod:`.last_pass`: where the next pass resumes (``_compaction/last-pass.json``);
- :mod:`.store_clock`: the warehouse's clock, which dates the files and intents whose ages a
  pass judges (``_compaction/clock.json``);
- :mod:`.listing`: the closed partitions within a pass's window, listed with few requests;
- :mod:`.partition`: the merges of one partition (and the temporaries of killed writes);
- :mod:`.uploads`: on S3, the incomplete multipart uploads that killed merges left, aborted;
- :mod:`.intents`: finishing or dropping the merges other compactors left;
- :mod:`.attempt`: one merge, in an order that lets readers see a row twice but never miss one;
- :mod:`.inputs`, :mod:`.sorted_rows`, :mod:`.runs` and :mod:`.merge`: reading the inputs,
  merging them in time order (many that overlap in runs first) and writing the output in
  bounded memory.
"""
