"""No logq-shipper message passes 4 MiB on the wire, whatever ``--batch-lines`` and
``--batch-bytes`` say: a message over an aggregator's ``--max-frame-bytes`` (at least 4 MiB) is
refused and resent forever, its file stuck. ``--batch-bytes`` counts characters of log text: a
batch of 4-byte characters, long keys or long time texts took several times that on the wire.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shipper import wire
from shipper.batch import WireRoom, body_room, record_bytes, record_constants
from shipper.checkpoint import Registry
from shipper.config import MAX_LINE_BYTES, ConfigError, load_config
from shipper.entry import record_bound
from shipper.formats import TRUNCATION_MARKER
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container, ts
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root
from tests.shipper.tailing import commit, set_clock, spec_for
from tests.shipper.test_once import run_shipper

pytestmark = pytest.mark.integration

CLEF = "\U0001d11e"  # 4 bytes of UTF-8 (12 as the JSON escape Docker's file holds)
HUGE = ("--batch-lines", "1000000", "--batch-bytes", "1000000000")


def _text(i: int) -> str:
    """Line ``i``: 4-byte characters, 100 to 1,000 of them, every seventh line ASCII."""
    n = 100 + (i * 37) % 900
    return f"{i:05d} " + ("a" * n if i % 7 == 0 else CLEF * n)


def _assert_capped(receiver: Receiver, share: int) -> None:
    """Every message within the cap, and batches filled, not cut small: all but the last over
    1 / ``share`` of the cap (the cap counts 4 bytes per character: ASCII texts fill a
    quarter of it)."""
    assert receiver.sizes, "nothing was sent"
    assert max(receiver.sizes) <= wire.MAX_MESSAGE_BYTES, sorted(receiver.sizes)[-3:]
    assert min(receiver.sizes[:-1]) > wire.MAX_MESSAGE_BYTES // share, receiver.sizes
    assert receiver.duplicates == 0


def test_utf8_text_and_long_keys_never_make_a_message_over_4_mib(
    tmp_path: Path, receiver: Receiver
) -> None:
    """3,000 lines of mostly 4-byte characters (~6.5 MB of UTF-8) with ~3 KB of keys per
    record, a few lines Docker split in two parts, and one left open at the end (the run
    ships it as it is), from one file with batch limits no file reaches: they went out as one
    ~17 MB message; now in messages of at most 4 MiB, each line exactly once, in order."""
    root = tmp_path / "containers"
    texts = [_text(i) for i in range(3000)]
    image = "registry.example.com/team/" + "long-image-name-" * 100 + ":v1"
    path = make_container(root, "c" * 64, "app-" + "x" * 1000, image=image)
    with open(path, "ab") as f:
        for i, text in enumerate(texts):
            if i % 500 == 250:  # a split line: its parts are joined (the general path)
                half = len(text) // 2
                f.write(docker_line(text[:half], i, nl=False) + docker_line(text[half:], i))
            else:
                f.write(docker_line(text, i))
        f.write(docker_line(CLEF * 5000, 3000, nl=False))  # open at the end: flushed as it is
    res = run_shipper(
        *("--aggregator", receiver.address, "--docker-root", str(root)),
        *("--cri-root", str(empty_root(tmp_path)), "--state-dir", str(tmp_path / "state")),
        *("--once", *HUGE),
    )
    assert res.returncode == 0, res.stderr
    assert receiver.lines() == [*texts, CLEF * 5000]
    assert len(receiver.records[0][2]["image"]) == len(image)
    _assert_capped(receiver, 2)


def test_long_time_texts_count_too(tmp_path: Path, receiver: Receiver) -> None:
    """CRI lines whose time text (kept as it is when it does not parse) is 2,000 characters:
    ``--batch-bytes`` counts only the log text, yet the time texts took the wire."""
    cdir = tmp_path / "pods" / "shop_checkout-5d8f7c9b6d-x2x7k_0f1e-22" / "app"
    cdir.mkdir(parents=True)
    texts = [f"line {i}" for i in range(3000)]
    when = "2026" + "9" * 1996
    with open(cdir / "0.log", "ab") as f:
        for text in texts:
            f.write(f"{when} stdout F {text}\n".encode())
    res = run_shipper(
        *("--aggregator", receiver.address, "--docker-root", str(empty_root(tmp_path))),
        *("--cri-root", str(tmp_path / "pods"), "--state-dir", str(tmp_path / "state")),
        *("--once", *HUGE),
    )
    assert res.returncode == 0, res.stderr
    assert receiver.lines() == texts
    assert {r["time"] for _, _, r in receiver.records} == {when}
    _assert_capped(receiver, 5)


def test_one_record_at_the_longest_line_fits_with_a_megabyte_of_keys() -> None:
    """The first record of a message goes whatever its size: at the largest --max-line-bytes
    its log (cut to that, plus the marker) and its time and stream (at most one read block of
    the physical line) fit in a message, with ~1 MB of the source's keys."""
    block = MAX_LINE_BYTES + 4096  # Tailer.block_size: max(256 KiB, --max-line-bytes + 4 KiB)
    marker = len(TRUNCATION_MARKER.format(dropped=10**12))
    shared = record_constants("s" * 250_000, "c", "n" * 250_000, "h", "i" * 500_000, "x" * 64, "")
    worst = record_bound("x" * (MAX_LINE_BYTES + marker), "", "t" * block, record_bytes(shared))
    assert worst <= body_room("t" * 1000, compress=True)


def test_max_line_bytes_is_bounded_so_one_line_fits() -> None:
    assert load_config(["--max-line-bytes", str(MAX_LINE_BYTES)]).max_line_bytes == MAX_LINE_BYTES
    with pytest.raises(ConfigError, match=r"^--max-line-bytes must be at most 393216 "):
        load_config(["--max-line-bytes", str(MAX_LINE_BYTES + 1)])


def test_a_flushed_line_without_room_goes_whole_in_the_next_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open lines flushed as they are (a split line's next part overdue, here) come without a
    restart position inside them, so they are never cut: when the message being filled has no
    room for them, they wait, whole, for the next one, instead of passing its room."""
    import shipper.split_lines as split_lines

    clock = [1000.0]
    set_clock(monkeypatch, clock)
    path = tmp_path / "c-json.log"
    path.write_bytes(
        docker_line("a" * 1000, 0)
        + docker_line("b" * 1000, 1)
        + docker_line("c" * 999, 2, nl=False)
    )
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    one = record_bound("a" * 1000, "stdout", ts(0), 100)  # every line's bound, the open one too
    room = WireRoom(2 * one + one // 2, lambda cursor: 100)
    first = t.read(room=room)
    assert first is not None and first.lines.logs == ["a" * 1000, "b" * 1000]
    assert room.left == one // 2
    clock[0] += split_lines.SPLIT_FLUSH_SECONDS + 1  # the open line is overdue: flushed now
    assert t.read(of=first.cursor, room=room) is None
    assert room.left == one // 2
    commit(t, first)
    room = WireRoom(one, lambda cursor: 100)
    second = t.read(room=room)
    assert second is not None and second.lines.logs == ["c" * 999]
    assert room.left == 4  # its log is a character shorter than the others'
    reg.close()
