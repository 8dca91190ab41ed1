"""Names that lose characters are stored apart, under a hash, and the aggregator says so once.

``Заказы-api`` and ``注文-api`` both landed in ``api`` (the letters with no ASCII form dropped,
:func:`athena.schema.sanitize_service`), with the rows of a service really named ``api``, and
nothing said it. Now each has a folder of its own (``api-<hash>``), named once in a WARNING
(:mod:`aggregator.stored_names`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import msgpack
import pytest

from aggregator import stored_names
from aggregator.batch import service_column
from athena.schema import sanitize_service
from shipper import wire
from tests.aggregator.helpers import read_acks, start_aggregator, wait_rows

ORDERS_RU = "Заказы-api"
ORDERS_JA = "注文-api"


def _hash(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:10]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has said nothing yet."""
    fresh = stored_names.Throttle(float("inf"), what="hashed names", logger=stored_names.log)
    monkeypatch.setattr(stored_names, "_said", fresh)


def test_a_hashed_name_is_said_once_with_its_folder(
    fresh: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "logq.aggregator.services")
    for _ in range(3):
        assert stored_names.stored_service(ORDERS_RU) == f"api-{_hash(ORDERS_RU)}"
        assert stored_names.stored_service(ORDERS_JA) == f"api-{_hash(ORDERS_JA)}"
    for plain in ("api", "Café API", "ns/pod", "api-" + _hash(ORDERS_RU)):  # nothing lost
        stored_names.stored_service(plain)
    lines = [r.getMessage() for r in caplog.records]
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert lines[0] == (
        f"service 'Заказы-api' is stored as 'api-{_hash(ORDERS_RU)}' "
        f"(service=api-{_hash(ORDERS_RU)}): 'З', 'а', 'к', 'з', 'ы' have no ASCII form; the hash "
        "of the name as sent keeps it apart from other names; `logq --service` takes the name "
        f"as sent, or api-{_hash(ORDERS_RU)}"
    )
    assert lines[1].startswith(f"service '注文-api' is stored as 'api-{_hash(ORDERS_JA)}'")


def test_a_cut_or_unprintable_name_says_why(fresh: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "logq.aggregator.services")
    stored_names.stored_service("x" * 1000)
    stored_names.stored_service("?")
    stored_names.stored_service(b"rec\xffipe-\xc3\x9f".decode("utf-8", "surrogateescape"))
    cut, unprintable, invalid = (r.getMessage() for r in caplog.records)
    assert "'" + "x" * 160 + "'... is stored as '" + "x" * 117 + "-" in cut  # the name cut
    assert "it is 1,000 characters long once sanitised, past 128;" in cut
    assert "is stored as 'svc-5bab61eb53' (service=svc-5bab61eb53): nothing of it" in unprintable
    # Bytes that are not UTF-8 are shown as sent, not as the escapes that carry them.
    digest = hashlib.sha1(b"rec\xffipe-\xc3\x9f").hexdigest()[:10]
    assert invalid.startswith(
        f"service b'rec\\xffipe-\\xc3\\x9f' is stored as 'recipe-{digest}' "
        f"(service=recipe-{digest}): 'ß' has no ASCII form and it is not valid UTF-8;"
    )


def test_the_flush_says_each_name_it_hashes(fresh: None, caplog: pytest.LogCaptureFixture) -> None:
    """The writer's path (:func:`aggregator.batch.service_column`) goes through it."""
    import pyarrow as pa

    caplog.set_level(logging.INFO, "logq.aggregator.services")
    records = pa.table({"service": [ORDERS_RU, ORDERS_JA, "api", ORDERS_RU], "tag": ["app.x"] * 4})
    column = service_column(records)
    assert column.to_pylist() == [
        sanitize_service(n) for n in (ORDERS_RU, ORDERS_JA, "api", ORDERS_RU)
    ]
    assert len(set(column.to_pylist())) == 3
    assert len(caplog.records) == 2


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.integration
def test_two_services_that_lose_their_letters_land_in_two_folders(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path)
    now = time.time_ns()
    names = [ORDERS_RU, ORDERS_JA, "api", ORDERS_RU, ORDERS_JA]
    try:
        with agg.connect() as sock:
            for i, name in enumerate(names):
                record = {"log": f"line {i}", "service": name}
                blob = _pack([wire.EventTime.from_ns(now + i).to_ext(), record])
                sock.sendall(_pack(["app.x", blob, {"chunk": f"c{i}"}]))
            assert read_acks(sock, len(names)) == [f"c{i}" for i in range(len(names))]
        table = wait_rows(agg.warehouse, "container_logs", len(names), agg)
    finally:
        assert agg.stop() == 0
    rows = dict(zip(table["message"].to_pylist(), table["service"].to_pylist(), strict=True))
    ru, ja = f"api-{_hash(ORDERS_RU)}", f"api-{_hash(ORDERS_JA)}"
    assert rows == {"line 0": ru, "line 1": ja, "line 2": "api", "line 3": ru, "line 4": ja}
    folders = sorted(os.listdir(Path(agg.warehouse) / "container_logs"))
    assert folders == [f"service={name}" for name in sorted(["api", ru, ja])]
    log = agg.log_text()
    assert log.count(f"is stored as '{ru}'") == 1 and log.count(f"is stored as '{ja}'") == 1
    assert "level=warning logger=logq.aggregator.services" in log
