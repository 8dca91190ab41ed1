"""Splitting routed rows by ``service=…/dt=…`` (:func:`aggregator.writer.partitions`): rows
sorted by service then time, ties in arrival order, whatever order they came in; rows that
came in order are sliced, not copied."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from aggregator import writer
from aggregator.writer import partitions
from athena.schema import TIMESTAMP

HOUR_MS = 3_600_000
T0 = 1_795_860_000_000


def table_of(rows: list[tuple[str, int, str]]) -> pa.Table:
    """``(service, time in ms, message)`` rows with the service dictionary-encoded."""
    services, times, messages = zip(*rows, strict=True)
    return pa.table(
        {
            "service": pa.array(services).dictionary_encode(),
            "timestamp": pa.array(times, pa.int64()).cast(TIMESTAMP),
            "message": pa.array(messages),
        }
    )


def sorted_rows(rows: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """A stable sort by (the service's first appearance, as dictionary indices go; time)."""
    first = {s: i for i, s in enumerate(dict.fromkeys(r[0] for r in rows))}
    return sorted(rows, key=lambda r: (first[r[0]], r[1]))


def expected(rows: list[tuple[str, int, str]]) -> list[tuple[str, str, list[str]]]:
    out: list[tuple[str, str, list[str]]] = []
    for service, ms, message in sorted_rows(rows):
        dt = pa.scalar(ms, pa.int64()).cast(TIMESTAMP).as_py().strftime("%Y-%m-%d-%H")
        if not out or out[-1][:2] != (service, dt):
            out.append((service, dt, []))
        out[-1][2].append(message)
    return out


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("in_order", [True, False])
def test_partitions_are_sorted_by_service_then_time(seed: int, in_order: bool) -> None:
    rng = random.Random(seed)
    rows = [
        (rng.choice("abc"), T0 + rng.randrange(3 * HOUR_MS) // 1000 * 1000, f"m{i}")
        for i in range(rng.randrange(1, 60))
    ]
    if in_order:  # (ties in time are kept: the sort is stable)
        rows = sorted_rows(rows)
    got = [
        (service, dt, piece["message"].to_pylist())
        for service, dt, piece in partitions(table_of(rows))
    ]
    assert got == expected(rows)


def test_rows_in_order_are_sliced_not_copied() -> None:
    rows = [("a", T0 + i, f"a{i}") for i in range(5)] + [("b", T0 + 2 * HOUR_MS, "b0")]
    table = table_of(rows)
    pieces = partitions(table)
    assert [(s, p.num_rows) for s, _, p in pieces] == [("a", 5), ("b", 1)]
    source = table["message"].chunk(0).buffers()[2].address
    for _, _, piece in pieces:
        assert piece["message"].chunk(0).buffers()[2].address == source
    shuffled = partitions(table.take([5, 0, 1, 2, 3, 4]))
    assert [p["message"].to_pylist() for _, _, p in shuffled] == [
        [f"a{i}" for i in range(5)],
        ["b0"],
    ]


@pytest.mark.parametrize(
    "rows",
    [
        [("a", T0, "only")],
        [("a", T0, "t0"), ("a", T0, "t1"), ("a", T0, "t2"), ("b", T0, "t3")],  # ties
        [("a", T0 + i * HOUR_MS // 3, f"a{i}") for i in range(7)] + [("b", T0, "b0")],
        [("a", T0, "a0"), ("b", T0 + 1, "b0"), ("b", T0, "b1"), ("a", T0 - 1, "a1")],  # not
        [("a", T0, "a0"), ("b", T0 + 1, "b0"), ("a", T0 + 2, "a1")],  # in time, not service
    ],
)
@pytest.mark.parametrize("cut", [None, 1, 3])
def test_rows_in_order_give_what_the_sort_gives(
    rows: list[tuple[str, int, str]], cut: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The skipped sort is invisible: the same pieces as with it, also from a table of
    several chunks (a piece then spans two of them) and with ties in time."""
    table = table_of(rows)
    if cut is not None and cut < len(rows):
        table = pa.concat_tables([table.slice(0, cut), table.slice(cut)])
    got = partitions(table)
    monkeypatch.setattr(writer, "_in_order", lambda *_: False)
    sorted_pieces = partitions(table)
    assert [(s, dt, p.to_pylist()) for s, dt, p in got] == [
        (s, dt, p.to_pylist()) for s, dt, p in sorted_pieces
    ]
    assert partitions(table.slice(0, 0)) == []
