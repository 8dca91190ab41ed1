"""The aggregator's own listings meet a folder another flush makes right then.

Arrow forgives a missing folder only if it is still missing when it looks again (see
``tests/support/listing.py``): a table's folder made by the first flush into it, while a
compaction pass or the catalog lists the table, failed the pass, and the catalog wrote the
enum of services without those of every table (a WARNING, "cannot list services").
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from aggregator.catalog import Catalog
from aggregator.compaction.passes import compact_warehouse
from aggregator.config import Settings
from athena.schema import partition_path
from athena.warehouse import open_warehouse
from tests.aggregator.helpers import parquet_files
from tests.aggregator.test_compaction import DT, LATER, flush_files
from tests.support.listing import FolderAppears


def test_a_compaction_pass_lists_a_table_folder_made_during_its_listing(tmp_path: Path) -> None:
    """The pass lists each table's folder for its services: envoy_access's, made by its first
    flush at that moment, is listed (its new hour is not closed: nothing to merge there)."""
    uri = str(tmp_path / "wh")
    flush_files(uri, files=4, rows_per_file=10)
    made = open_warehouse(uri).path(partition_path("envoy_access", "recipe", DT))
    fs = FolderAppears([made])
    wh = dataclasses.replace(open_warehouse(uri), fs=fs)
    assert compact_warehouse(wh, now=LATER, lookback=None) == 8  # both container_logs hours
    assert fs.appeared == [made]
    assert len(parquet_files(uri, "container_logs")) == 2


def test_the_catalog_lists_a_table_folder_made_during_its_listing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another aggregator's first envoy_access flush makes the table's folder while this one
    lists the services for its DDL: the enum holds them all (it held only this flush's)."""
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    held = Path(wh.path(partition_path("container_logs", "x", "2026-11-28-10")))
    held.mkdir(parents=True)
    (held / "x.parquet").write_bytes(b"")
    made = wh.path(partition_path("envoy_access", "b", "2026-11-28-10"))
    fs = FolderAppears([made])
    catalog = Catalog(dataclasses.replace(wh, fs=fs), Settings())
    with caplog.at_level(logging.WARNING, logger="logq.aggregator.catalog"):
        assert catalog.add_services({"a"})
    assert fs.appeared == [made]
    assert "cannot list services" not in caplog.text
    ddl = (tmp_path / "wh" / "_ddl" / "container_logs.sql").read_text()
    assert "'projection.service.values' = 'a,b,x'," in ddl
