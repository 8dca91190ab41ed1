"""The column-wise scan of shipper PackedForward blobs (:mod:`aggregator.packed_scan`).

It must take what logq-shipper sends, and for every blob either give exactly the batch the
decoder gives without it (msgspec, else the general path) or decline: checked on the shipper's
own encoder, on values of every msgpack width, and on many blobs cut or with a byte changed.
"""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from aggregator import decode as dec
from aggregator import packed, packed_scan
from shipper import wire
from shipper.batch import record_constants
from shipper.lines import Lines
from tests.aggregator.test_packed import T0, same_batch, shipper_record

N = packed.CONSTANT_MIN_ENTRIES


@pytest.fixture(autouse=True)
def _scan_small_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blobs here are small (fast tests): let the scan take them, as it takes the large
    ones it is for (see :data:`packed_scan.MIN_ENTRIES`)."""
    monkeypatch.setattr(packed_scan, "MIN_ENTRIES", packed.CONSTANT_MIN_ENTRIES)


def scanned(blob: bytes, size: int) -> list[pa.Array] | None:
    return packed_scan.scan_columns(blob, size, dec.DICT_STRING)


def message(blob: bytes, size: Any) -> Any:
    """A PackedForward message as the server's unpacker yields it."""
    frame = wire.pack(["logq.recipe", blob, {"chunk": "c", "size": size}])
    return msgpack.unpackb(frame, raw=False, ext_hook=wire._ext_hook)


def without_scan(obj: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The decoder's batch (or its ProtocolError) with the scan switched off."""
    with monkeypatch.context() as patched:
        patched.setattr(packed_scan, "scan_columns", lambda *args: None)
        try:
            return dec.decode(obj, 1 << 30)[0]
        except wire.ProtocolError as exc:
            return exc


def assert_same_as_without_scan(obj: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = without_scan(obj, monkeypatch)
    if isinstance(expected, wire.ProtocolError):
        with pytest.raises(wire.ProtocolError):
            dec.decode(obj, 1 << 30)
        return
    batch, _ = dec.decode(obj, 1 << 30)
    assert same_batch(batch, expected)


def blob_of(records: list[dict[str, Any]]) -> bytes:
    return wire.pack_entries([(T0 + i * 1_000_003, r) for i, r in enumerate(records)])


def test_the_shippers_own_bytes_are_scanned_as_msgspec_decodes_them() -> None:
    """The body logq-shipper's encoder writes (``time`` per line, shared keys after), with
    both streams, lines of every string width and offsets of every integer width."""
    lines = Lines()
    widths = ["", "x" * 31, "é" * 40, "y" * 300, "z" * 70_000]  # fixstr, str8, str16, str32
    offsets = [0, 127, 255, 65_535, 2**32 - 1, 2**40]
    for i in range(3 * N):
        stream = "stderr" if i % 4 == 0 else "stdout"
        text = f"line {i} {widths[i % len(widths)]}"
        lines.add(offsets[i % len(offsets)] + i, "2026-11-28T10:00:00Z", T0 + i, stream, text)
    shared = record_constants(
        "recipe", "c" * 64, "ecs-recipe-envoy", "ip-1", "envoy:v1", "src", None
    )
    blob = bytes(lines.encode(shared))
    columns = scanned(blob, len(lines))
    assert columns is not None
    expected = packed.constant_columns(blob, len(lines), dec.DICT_STRING)
    assert expected is not None
    for got, want in zip(columns, expected, strict=True):
        assert got.equals(want)
    assert columns[1].to_pylist() == lines.logs
    assert columns[-1].to_pylist() == lines.offsets


@pytest.mark.parametrize(
    "later",
    [
        {wire.KEY_STREAM: None},
        {wire.KEY_OFFSET: None},
        {wire.KEY_STREAM: "console"},
        {wire.KEY_OFFSET: -1},
        {wire.KEY_SERVICE: "checkout"},
        {wire.KEY_LOG: None, "message": "from message"},
        {wire.KEY_TIME: 5},
        {"kubernetes": {"pod_name": "web-1"}},
        {wire.KEY_LOG: b"bin \xff"},
    ],
)
def test_a_record_unlike_the_others_gives_the_same_batch(
    later: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [shipper_record(i, **(later if i == N // 2 else {})) for i in range(N)]
    assert_same_as_without_scan(message(blob_of(records), N), monkeypatch)


def test_what_it_takes_and_what_it_leaves() -> None:
    records = [shipper_record(i) for i in range(N)]
    blob = blob_of(records)
    assert scanned(blob, N) is not None
    assert scanned(blob, N - 1) is None  # a wrong size
    assert scanned(blob + b"\xc0", N) is None  # a byte after the last entry
    assert scanned(blob[:-1], N) is None  # a truncated last entry
    small = blob_of(records[: N - 1])
    assert scanned(small, N - 1) is None  # too few entries to pay off: msgspec takes them
    reordered = blob_of([dict(reversed(r.items())) for r in records])
    assert scanned(reordered, N) is not None  # any key order, the same in every record
    mixed = blob_of([dict(reversed(r.items())) if i == 3 else r for i, r in enumerate(records)])
    assert scanned(mixed, N) is None


def test_an_invalid_utf8_line_is_left_to_the_other_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = [shipper_record(i, log="line ###") for i in range(N)]
    blob = blob_of(records).replace(b"line ###", b"line \xff##", 1)
    assert scanned(blob, N) is None
    obj = message(blob, N)
    assert_same_as_without_scan(obj, monkeypatch)
    assert dec.decode(obj, 1 << 30)[0].column("log")[0].as_py() == "line \ufffd##"


def test_bytes_that_look_like_an_entry_start_are_not_taken_for_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An offset of ``92 d7 00 ...`` followed by a map header's byte: a false entry start."""
    fake = int.from_bytes(b"\x92\xd7\x00\x00\x00\x00\x00\x8a", "big")
    records = [shipper_record(i, offset=fake + i if i == 5 else i) for i in range(N)]
    blob = blob_of(records)
    assert b"\xcf\x92\xd7\x00" in blob
    assert scanned(blob, N) is None
    assert_same_as_without_scan(message(blob, N), monkeypatch)


def test_cut_or_changed_blobs_give_the_same_batch_or_the_same_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seeded: every cut of the last entries, and bytes changed anywhere to values that
    matter to msgpack (headers of each width, nil, the entry start) or to random ones."""
    records = [shipper_record(i, offset=(i * 7919) << (i % 40)) for i in range(N)]
    blob = blob_of(records)
    last = len(blob) - len(blob_of(records[-1:]))
    for cut in range(last - 20, len(blob) + 1):
        assert_same_as_without_scan(message(blob[:cut], N), monkeypatch)
    rng = random.Random(15)
    special = [0x00, 0x7F, 0x80, 0x8A, 0x92, 0xA0, 0xA6, 0xBF, 0xC0, 0xCC, 0xCF, 0xD7, 0xD9, 0xDB]
    for _ in range(400):
        changed = bytearray(blob)
        at = rng.randrange(len(blob))
        changed[at] = rng.choice(special) if rng.random() < 0.7 else rng.randrange(256)
        assert_same_as_without_scan(message(bytes(changed), N), monkeypatch)


def peak_while_declined(blob: bytes) -> int:
    """Peak bytes Python allocated while the scan declined ``blob`` (it must decline it)."""
    tracemalloc.start()
    try:
        assert scanned(blob, N) is None
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_blob_of_entry_start_bytes_is_declined_in_memory_of_its_size() -> None:
    """A valid first entry, then 4 MiB of ``0x92`` (the first byte of an entry): each was
    listed as an int64 candidate start (8 bytes a byte, and as much again for the gathers),
    so a 64 KiB gzip frame of 128 MiB took GiBs and seconds of the event loop."""
    first = blob_of([shipper_record(0)])
    blob = first + b"\x92" * (4 << 20)
    assert peak_while_declined(blob) < 3 * len(
        blob
    )  # the padded copy and one byte mask, not 8 bytes a byte


def test_blobs_under_the_scan_s_size_go_to_msgspec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below :data:`packed_scan.MIN_ENTRIES` the scan's fixed cost is more than msgspec's whole
    decode: such a blob is declined, and one of that size taken."""
    monkeypatch.setattr(packed_scan, "MIN_ENTRIES", 1024)
    small = blob_of([shipper_record(i) for i in range(1023)])
    large = blob_of([shipper_record(i) for i in range(1024)])
    assert scanned(small, 1023) is None
    assert scanned(large, 1024) is not None


def test_ascii_blobs_cut_or_changed_give_the_same_batch_or_the_same_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All-ASCII lines skip the UTF-8 validation (:func:`packed_scan._ascii`): a byte changed
    to a non-ASCII one in a line, or a cut, must still give msgspec's batch or its refusal."""
    records = [shipper_record(i, log=f"GET /api/{i} 200") for i in range(N)]
    blob = blob_of(records)
    assert scanned(blob, N) is not None  # ASCII: taken
    for cut in range(len(blob) - 30, len(blob) + 1):
        assert_same_as_without_scan(message(blob[:cut], N), monkeypatch)
    rng = random.Random(16)
    lines = [at for at in range(len(blob)) if blob.startswith(b"GET /api/", at)]
    for _ in range(200):
        changed = bytearray(blob)
        at = rng.choice(lines) + rng.randrange(9)
        changed[at] = rng.choice([0x80, 0x92, 0xC3, 0xE9, 0xFF, rng.randrange(0x80, 0x100)])
        assert scanned(bytes(changed), N) is None  # a lone non-ASCII byte: not UTF-8
        assert_same_as_without_scan(message(bytes(changed), N), monkeypatch)


@pytest.mark.parametrize(
    "streams",
    [
        ["stderr", "stdout"],
        ["stderr", None, "stdout"],
        [None, "stderr"],
        [None, "stdout", "stderr"],
        [None],
    ],
)
def test_mixed_and_nil_streams_are_scanned_as_msgspec_decodes_them(
    streams: list[str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``stream`` column's dictionary holds the streams in the order they first appear
    (stderr first here), NULL where nil: as :func:`packed.constant_columns` builds it."""
    records = [shipper_record(i, stream=streams[i * 7 % len(streams)]) for i in range(N)]
    blob = blob_of(records)
    columns = scanned(blob, N)
    assert columns is not None
    expected = packed.constant_columns(blob, N, dec.DICT_STRING)
    assert expected is not None
    assert columns[2].equals(expected[2])
    assert columns[2].to_pylist() == [r[wire.KEY_STREAM] for r in records]
    assert_same_as_without_scan(message(blob, N), monkeypatch)


def test_a_blob_of_entry_start_bytes_in_every_word_is_declined_in_memory_of_its_size() -> None:
    """A ``0x92`` in every 8-byte word (one in 8 bytes: under the byte share) is declined on
    the words' count, before a position is listed for each (8 bytes each: the blob's size)."""
    first = blob_of([shipper_record(0)])
    blob = first + (b"\x92" + b"a" * 7) * (1 << 19)
    assert peak_while_declined(blob) < 3 * len(blob)


def test_lines_full_of_0x92_bytes_are_still_scanned() -> None:
    """UTF-8 of ``Ғ`` is ``d2 92``: lines of it are not entry starts, and a blob of them whose
    words rarely hold a ``0x92`` is taken (a real blob is not declined for its text)."""
    records = [shipper_record(i, log=f"{i} {'Ғ' * (i % 3)}") for i in range(N)]
    blob = blob_of(records)
    assert b"\xd2\x92" in blob
    columns = scanned(blob, N)
    assert columns is not None
    assert columns[1].to_pylist() == [r[wire.KEY_LOG] for r in records]


@pytest.mark.parametrize("wide", [2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1])
def test_a_uint64_offset_among_small_ones_is_read_whole_or_left(
    wide: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One uint64 (``cf`` and 8 bytes: more than the header's gather) among fixints: read
    from its own 8 bytes; over int64's range the blob is left to the other paths."""
    records = [shipper_record(i, offset=wide if i == N // 3 else i) for i in range(N)]
    blob = blob_of(records)
    columns = scanned(blob, N)
    if wide < 2**63:
        assert columns is not None
        assert columns[-1].to_pylist() == [r[wire.KEY_OFFSET] for r in records]
    else:
        assert columns is None
    assert_same_as_without_scan(message(blob, N), monkeypatch)
