"""``logq-aggregator``: Forward server -> durable buffer -> Envoy parsing -> partitioned Parquet.

Modules, in the order data flows through them:

* :mod:`.server` accepts Forward protocol v1 connections (TLS, shared-key handshake, limits);
* :mod:`.decode` turns each message into an Arrow batch (the receive hot path);
* :mod:`.buffer` appends the batches to fsync'd segment files before any ack;
* :mod:`.flusher` turns sealed segments into Parquet, exactly once, using :mod:`.dedup`
  (per-source offsets), :mod:`.ledger` (what other aggregators committed), :mod:`.batch`
  (routing), :mod:`.envoy` / :mod:`.envoy_split` / :mod:`.envoy_json` / :mod:`.envoy_time`
  (parsing), :mod:`.writer`, :mod:`.storage` and :mod:`.durable` (objects, local or S3);
* :mod:`.compaction` merges closed hours' small files; :mod:`.catalog` keeps the Athena DDL
  current; :mod:`.metrics` serves Prometheus metrics and ``/healthz``;
* :mod:`.service` runs it all (``logq-aggregator``, also ``drain``), :mod:`.arguments` parses
  the command line (light: before anything heavy), :mod:`.config` merges flags and TOML,
  :mod:`.launch` is the console entry and :mod:`.memory` its allocator settings.
"""
