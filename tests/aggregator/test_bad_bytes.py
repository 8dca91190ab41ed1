"""Bad bytes in Forward records are replaced as Fluent Bit and Vector replace them, and kept apart.

* Invalid UTF-8 in a msgpack ``str`` becomes one U+FFFD per invalid sequence, the rest of the
  text kept byte for byte: the same as the same bytes sent as ``bin`` (Rust's
  ``from_utf8_lossy``), not a ``?`` per byte that reads like a real question mark.
* Service names that are not valid UTF-8 (in ``service`` or in the tag) land in folders of their
  own (``svc-<hash>``, or what is left of the name and ``-<hash>``, over their bytes as sent),
  while every valid name that loses nothing keeps its folder.
* Record keys sent as ``bin`` (``{b"log": ...}``, as some old clients do) are read as keys.

Each message is decoded as the server receives it (:func:`shipper.wire.new_unpacker`, or the
JSON-mode parser), on every decode path that takes it.
"""

from __future__ import annotations

import gzip
import hashlib
import time
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from aggregator import decode as dec
from aggregator import packed_scan
from aggregator.batch import service_column
from aggregator.server import _json_messages
from athena.schema import sanitize_service
from shipper import wire
from tests.aggregator.helpers import read_acks, start_aggregator, wait_rows

T0 = 1_795_860_000_123_456_789
#: Invalid UTF-8 of each kind: lone continuation bytes, a bad second byte, a truncated 4-byte
#: sequence (one U+FFFD for the three bytes), a surrogate's encoding (three), then a real "?".
BAD = b"ok \xff\xfe bad \xc3\x28 cut \xf0\x9f\x98 sur \xed\xa0\x80 end?"
LOSSY = "ok \ufffd\ufffd bad \ufffd( cut \ufffd sur \ufffd\ufffd\ufffd end?"


def sent_str(raw: bytes) -> str:
    """``raw`` as a str the packer writes as a msgpack ``str`` holding those very bytes."""
    return raw.decode("utf-8", "surrogateescape")


def pack(obj: Any) -> bytes:
    """msgpack bytes of ``obj``: str values as ``str`` (bad bytes kept), bytes as ``bin``."""
    return msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogateescape")


def received(frame: bytes) -> Any:
    """The message as the server's unpacker hands it to the decoder."""
    unpacker = wire.new_unpacker()
    unpacker.feed(frame)
    (obj,) = list(wire.iter_messages(unpacker))
    return obj


def entry(record: dict[Any, Any], i: int = 0) -> list[Any]:
    return [wire.EventTime.from_ns(T0 + i).to_ext(), record]


def frames(tag: Any, records: list[dict[Any, Any]]) -> dict[str, bytes]:
    """One message of ``records`` in every Forward mode (Message mode: the first record)."""
    blob = b"".join(pack(entry(r, i)) for i, r in enumerate(records))
    n = len(records)
    return {
        "message": pack([tag, wire.EventTime.from_ns(T0).to_ext(), records[0]]),
        "forward": pack([tag, [entry(r, i) for i, r in enumerate(records)]]),
        "packed": pack([tag, blob, {"size": n}]),
        "packed_no_size": pack([tag, blob]),
        "packed_gzip": pack([tag, gzip.compress(blob), {"compressed": "gzip", "size": n}]),
    }


MODES = ["message", "forward", "packed", "packed_no_size", "packed_gzip"]


def decoded(frame: bytes) -> pa.RecordBatch:
    return dec.decode(received(frame), 1 << 30)[0]


def column(batch: pa.RecordBatch, name: str) -> list[Any]:
    return batch.column(name).to_pylist()


def services(batch: pa.RecordBatch) -> list[str]:
    """The partition values of the batch's rows, as the flush computes them."""
    return service_column(pa.Table.from_batches([batch])).to_pylist()


# --- 1. invalid UTF-8 in text ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_invalid_utf8_in_a_str_log_is_replaced_per_sequence_as_in_bin(mode: str) -> None:
    as_str = decoded(frames("app.x", [{"log": sent_str(BAD), "stream": "stdout"}] * 3)[mode])
    as_bin = decoded(frames("app.x", [{"log": BAD, "stream": "stdout"}] * 3)[mode])
    assert BAD.decode("utf-8", "replace") == LOSSY  # Python's replace is from_utf8_lossy's
    assert column(as_str, "log")[0] == LOSSY
    assert column(as_str, "log") == column(as_bin, "log")


def test_a_logq_shipper_blob_with_one_bad_line_is_replaced_the_same_way() -> None:
    """A blob big enough for the column-wise scan, which leaves it to the other paths."""
    n = packed_scan.MIN_ENTRIES
    records = [{"log": f"line {i}", "stream": "stdout", "service": "recipe"} for i in range(n)]
    records[7]["log"] = sent_str(BAD)
    batch = decoded(frames("logq.recipe", records)["packed"])
    assert column(batch, "log")[6:9] == ["line 6", LOSSY, "line 8"]


@pytest.mark.parametrize("mode", MODES)
def test_invalid_utf8_in_the_other_text_is_replaced_the_same_way(mode: str) -> None:
    record = {
        "log": "x",
        "stream": sent_str(b"std\xffout"),
        "container_name": sent_str(b"web-\xc3\x28"),
        "container_id": sent_str(b"c0\xf0\x9f\x98ffee"),
        "host": sent_str(b"ip-\xfe"),
    }
    batch = decoded(frames(sent_str(b"app\xff.web"), [record])[mode])
    assert column(batch, "tag") == ["app\ufffd.web"]
    assert column(batch, "stream") == [None]  # replaced, it is no stream (stdout/stderr)
    assert column(batch, "container_name") == ["web-\ufffd("]
    assert column(batch, "container_id") == ["c0\ufffdffee"]
    assert column(batch, "host") == ["ip-\ufffd"]


@pytest.mark.parametrize("mode", MODES)
def test_a_record_stored_as_json_replaces_bad_bytes_in_keys_and_values(mode: str) -> None:
    record = {"level": sent_str(b"warn\xff"), sent_str(b"k\xfe"): [sent_str(BAD)]}
    (line,) = column(decoded(frames("app.x", [record])[mode]), "log")
    assert line == f'{{"k\ufffd": ["{LOSSY}"], "level": "warn\ufffd"}}'


def test_lone_surrogates_of_json_mode_are_one_replacement_character_each() -> None:
    text = '["app.x", 1795860000, {"log": "a \\ud800 b \\udfff c", "host": "h\\ud83d"}]'
    (obj,), _ = _json_messages(text.encode())
    batch = dec.decode(obj, 1 << 30)[0]
    assert column(batch, "log") == ["a \ufffd b \ufffd c"]
    assert column(batch, "host") == ["h\ufffd"]


# --- 2. service names that are not valid UTF-8 -----------------------------------------------


def service_of(service: Any = None, tag: Any = "app.x", mode: str = "forward") -> str:
    record = {"log": "x"} if service is None else {"log": "x", "service": service}
    (name,) = set(services(decoded(frames(tag, [record] * 2)[mode])))
    return name


@pytest.mark.parametrize("mode", MODES)
def test_distinct_invalid_service_names_land_in_distinct_folders(mode: str) -> None:
    names = {
        "str ff": service_of(sent_str(b"\xff"), mode=mode),
        "str fe": service_of(sent_str(b"\xfe"), mode=mode),
        "str ff fe": service_of(sent_str(b"\xff\xfe"), mode=mode),
        "tag fd": service_of(tag=sent_str(b"app.\xfd"), mode=mode),
        "tag fe fe": service_of(tag=sent_str(b"app.\xfe\xfe"), mode=mode),
        "real ?": service_of("?", mode=mode),
        "replacement character": service_of("\ufffd", mode=mode),
    }
    assert len(set(names.values())) == len(names), names
    assert all(name.startswith("svc-") for name in names.values())


def test_a_name_lands_in_one_folder_however_it_is_sent() -> None:
    """str or bin, as ``service`` or as the tag's last part, on every path; and the name a
    user types to ``--service`` (the command line hands bad bytes over escaped) finds it."""
    folder = sanitize_service(sent_str(b"\xff\xfe"))
    for mode in MODES:
        assert service_of(sent_str(b"\xff\xfe"), mode=mode) == folder
        assert service_of(b"\xff\xfe", mode=mode) == folder
        assert service_of(tag=sent_str(b"app.\xff\xfe"), mode=mode) == folder
        assert service_of(tag=b"app.\xff\xfe", mode=mode) == folder
    assert folder == "svc-" + hashlib.sha1(b"\xff\xfe").hexdigest()[:10]  # over the bytes


def test_json_mode_lone_surrogates_in_tag_and_service_stay_apart() -> None:
    """The audit's case: JSON ``\\ud800`` as the tag and ``\\ud83d`` as the service both
    landed in svc-5bab61eb53, the folder of a service named ``?``."""
    text = (
        '["app.\\ud800", 1795860000, {"log": "a"}]'
        '["app.x", 1795860000, {"log": "b", "service": "\\ud83d"}]'
        '["app.x", 1795860000, {"log": "c", "service": "?"}]'
    )
    objs, _ = _json_messages(text.encode())
    names = [services(dec.decode(obj, 1 << 30)[0])[0] for obj in objs]
    assert names == [sanitize_service("\ud800"), sanitize_service("\ud83d"), "svc-5bab61eb53"]
    assert len(set(names)) == 3


def test_an_invalid_name_keeps_its_printable_part_as_the_same_bytes_in_bin_do() -> None:
    """Its printable part, and a hash of its bytes: without it ``Rec\\xffipe`` shared the
    folder of ``recipe`` (:func:`athena.schema.sanitize_service`)."""
    recipe = "recipe-" + hashlib.sha1(b"Rec\xffipe").hexdigest()[:10]
    assert service_of(sent_str(b"Rec\xffipe")) == service_of(b"Rec\xffipe") == recipe
    assert (
        service_of(tag=sent_str(b"app.Web\xfe-1"))
        == "web-1-" + hashlib.sha1(b"Web\xfe-1").hexdigest()[:10]
    )


@pytest.mark.parametrize("mode", MODES)
def test_an_invalid_kubelet_log_tag_gives_the_pods_owner_as_a_valid_one_does(mode: str) -> None:
    """A tailed kubelet log's tag names the pod's owner (aggregator/tags.py) even when a bad
    byte in its prefix makes the tag invalid UTF-8: that path kept the plain last-part rule and
    filed every such pod under ``log``."""
    path = "var.log.containers.recipe-7d9c8b5f4-x2x7k_default_recipe-" + "0a" * 32 + ".log"
    assert service_of(tag=sent_str(b"kube\xff." + path.encode()), mode=mode) == "recipe"
    assert service_of(tag=b"kube\xff." + path.encode(), mode=mode) == "recipe"
    assert service_of(tag="kube." + path, mode=mode) == "recipe"


def test_a_record_with_its_own_service_ignores_an_invalid_tag() -> None:
    assert service_of("checkout", tag=sent_str(b"app.\xff")) == "checkout"
    assert service_of("", tag=sent_str(b"app.\xff")) == sanitize_service(sent_str(b"\xff"))


@pytest.mark.parametrize("mode", MODES)
def test_a_blank_service_takes_an_invalid_tags_service_as_an_empty_one_does(mode: str) -> None:
    """A service of only whitespace names nothing (shipper.discover.names_service): the
    invalid tag's partition value, computed at decode, fills it as it fills an empty one."""
    tag = sent_str(b"app.\xff")
    assert service_of(" \t", tag=tag, mode=mode) == service_of("", tag=tag, mode=mode)
    assert service_of(" \t", tag=tag, mode=mode) == sanitize_service(sent_str(b"\xff"))


#: Partition values of valid names, as the code before this change gave them (computed with
#: it): a folder of existing data never moves. Ordinary names, names sanitised already, names
#: hashed (nothing printable left) and a U+FFFD sent as such. Names that lost characters or
#: were cut moved on purpose (:data:`HASHED_NOW`).
SAME_FOLDERS = {
    "recipe": "recipe",
    "Recipe": "recipe",
    "checkout-api": "checkout-api",
    "café-api": "cafe-api",
    "Café API": "cafe_api",
    "服务": "svc-4b81846f62",
    "サービス": "svc-2dd5ca6b6b",
    "a=b/c": "a_b_c",
    "x" * 128: "x" * 128,
    "/": "svc-42099b4af0",
    "?": "svc-5bab61eb53",
    "???": "svc-2d86c2a659",
    "-": "svc-3bc15c8aae",
    "\ufffd": "svc-9bdb77276c",
    "svc-5bab61eb53": "svc-5bab61eb53",
    "svc-0123456789": "svc-0123456789",
    "unknown": "unknown",
    "_x_": "x",
    "ns/pod/container": "ns_pod_container",
    "😀": "svc-9c533688a9",
    " spaced name ": "spaced_name",
    "tab\tname": "tab_name",
    "nul\x00x": "nul_x",
}
#: Names with dots: the tag's last part is after the last dot, so these are sent as service only.
SAME_FOLDERS_DOTTED = {
    "../../etc": "etc",
    "../../Evil/..\\Name": "evil_name",
    "a_.._..b": "a_b",
    "UPPER_lower.1": "upper_lower.1",
    "..": "svc-9d891e731f",
    ".": "svc-3a52ce7809",
}


#: Names that lost characters without an ASCII form (U+FFFD, an emoji, kanji) or were cut,
#: merged with the name left (``emoji-😀`` with ``emoji``): each gets a hash of its bytes.
HASHED_NOW = {
    name: f"{kept}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    for name, kept in {
        "a\ufffdb": "ab",
        "emoji-😀": "emoji",
        "x" * 300: "x" * 117,
        "日本.svc": "svc",
    }.items()
}


@pytest.mark.parametrize("name", list(HASHED_NOW))
def test_names_that_lose_characters_get_folders_of_their_own(name: str) -> None:
    assert sanitize_service(name) == HASHED_NOW[name]
    assert service_of(name) == HASHED_NOW[name]
    assert service_of(name.encode(), mode="packed") == HASHED_NOW[name]  # as bin


@pytest.mark.parametrize("name", [*SAME_FOLDERS, *SAME_FOLDERS_DOTTED])
def test_valid_names_keep_their_folders(name: str) -> None:
    expected = SAME_FOLDERS.get(name) or SAME_FOLDERS_DOTTED[name]
    assert sanitize_service(name) == expected
    assert service_of(name) == expected
    assert service_of(name.encode(), mode="packed") == expected  # as bin
    if name in SAME_FOLDERS:
        assert service_of(tag=f"app.{name}") == expected


def test_json_lone_surrogates_hash_as_before_when_given_directly() -> None:
    """``sanitize_service`` of a JSON lone surrogate (``--service`` from JSON tooling, the
    catalog) is unchanged: only names with bytes escaped by msgpack hash anew."""
    assert sanitize_service("\ud800") == "svc-10db70ec07"
    assert sanitize_service("\ud83d") == "svc-1f0b4240df"
    assert sanitize_service(sent_str(b"\xff")) == "svc-85e53271e1"  # sha1 of b"\xff"


# --- 3. keys sent as bin ----------------------------------------------------------------------


def bin_keyed(record: dict[str, Any]) -> dict[Any, Any]:
    return {k.encode(): v for k, v in record.items()}


@pytest.mark.parametrize("mode", MODES)
def test_keys_sent_as_bin_are_read_as_keys(mode: str) -> None:
    record = {
        "log": "hello",
        "stream": "stderr",
        "service": "Checkout",
        "container_name": "web-1",
        "container_id": "c0ffee",
        "host": "ip-10-0-0-1",
        "image": "shop/web:1",
    }
    records = [bin_keyed({**record, "log": f"hello {i}"}) for i in range(3)]
    batch = decoded(frames("app.x", records)[mode])
    n = 1 if mode == "message" else 3
    assert column(batch, "log") == [f"hello {i}" for i in range(n)]
    for key in ("stream", "container_name", "container_id", "host", "image"):
        assert column(batch, key) == [record[key]] * n, key
    assert services(batch) == ["checkout"] * n


@pytest.mark.parametrize("mode", MODES)
def test_bin_keys_of_other_clients_are_read_too(mode: str) -> None:
    """A ``message`` key (fluent-logger) and Fluent Bit's ``kubernetes`` metadata."""
    kube = {"pod_name": "web-7d4b9c-x2x9z", "container_name": "web", "namespace_name": "shop"}
    records = [bin_keyed({"message": "from message", "kubernetes": kube})]
    batch = decoded(frames("kube.var.log", records)[mode])
    assert column(batch, "log") == ["from message"]
    assert column(batch, "container_name") == ["shop/web-7d4b9c-x2x9z/web"]
    assert services(batch) == ["web"]


def test_a_record_with_a_bin_log_key_and_text_keys_reads_both() -> None:
    record = {b"log": "hello", "stream": "stderr", b"service": "billing"}
    batch = decoded(frames("app.x", [record])["forward"])
    assert column(batch, "log") == ["hello"]
    assert column(batch, "stream") == ["stderr"]
    assert services(batch) == ["billing"]


def general_path(tag: str, records: list[dict[Any, Any]]) -> bytes:
    """Forward mode with a float time: the message takes the general path
    (:func:`shipper.wire.decode_message`), as any message with a float time or a bad entry."""
    return pack([tag, [[T0 / 1e9, r] for r in records]])


@pytest.mark.parametrize("mode", [*MODES, "general"])
def test_a_record_with_a_text_log_and_bin_keys_reads_the_bin_keys_on_every_path(
    mode: str,
) -> None:
    """Its folder does not depend on the path its message takes: the general path always read
    ``b"service"``; the fast paths took the tag's service instead."""
    records = [{"log": "hello", b"service": "billing", b"stream": "stderr"}] * 2
    frame = general_path("app.x", records) if mode == "general" else frames("app.x", records)[mode]
    batch = decoded(frame)
    assert set(services(batch)) == {"billing"}
    assert set(column(batch, "stream")) == {"stderr"}
    assert set(column(batch, "log")) == {"hello"}


@pytest.mark.parametrize("mode", [*MODES, "general"])
def test_a_bin_log_key_beside_a_text_message_key_is_the_line_on_every_path(mode: str) -> None:
    records = [{"message": "from message", b"log": "from log", b"service": "billing"}] * 2
    frame = general_path("app.x", records) if mode == "general" else frames("app.x", records)[mode]
    batch = decoded(frame)
    assert set(column(batch, "log")) == {"from log"}
    assert set(services(batch)) == {"billing"}


# --- a real aggregator ------------------------------------------------------------------------


@pytest.mark.integration
def test_bad_bytes_reach_the_warehouse_replaced_and_kept_apart(tmp_path: Path) -> None:
    agg = start_aggregator(tmp_path)
    now = time.time_ns()
    messages = [
        ("app.x", {"log": sent_str(BAD), "service": sent_str(b"\xff")}),
        ("app.x", {"log": "fe", "service": sent_str(b"\xfe")}),
        ("app.x", {"log": "question", "service": "?"}),
        ("app.x", {b"log": "bin key", b"service": "billing", b"stream": "stderr"}),
    ]
    try:
        with agg.connect() as sock:
            for i, (tag, record) in enumerate(messages):
                blob = pack([wire.EventTime.from_ns(now).to_ext(), record])
                sock.sendall(pack([tag, blob, {"chunk": f"c{i}"}]))
            assert read_acks(sock, len(messages)) == [f"c{i}" for i in range(len(messages))]
        table = wait_rows(agg.warehouse, "container_logs", len(messages), agg)
    finally:
        assert agg.stop() == 0
    rows = dict(zip(table["message"].to_pylist(), table["service"].to_pylist(), strict=True))
    assert rows == {
        LOSSY: "svc-85e53271e1",  # sha1 of b"\xff"
        "fe": sanitize_service(sent_str(b"\xfe")),
        "question": "svc-5bab61eb53",  # as before
        "bin key": "billing",
    }
    assert len(set(rows.values())) == len(rows)
    streams = dict(zip(table["message"].to_pylist(), table["stream"].to_pylist(), strict=True))
    assert streams["bin key"] == "stderr"


def test_the_helpers_send_what_they_say() -> None:
    """``pack`` writes a ``str`` holding the bad bytes themselves (not escapes), and ``bin``
    for bytes."""
    assert pack(sent_str(b"\xff")) == b"\xa1\xff"
    assert pack(b"\xff") == b"\xc4\x01\xff"
