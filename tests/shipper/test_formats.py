"""Docker json-file, CRI and plain-text parsing: joins, offsets, bad input."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.formats import (
    TRUNCATION_MARKER,
    CriParser,
    DockerParser,
    PlainParser,
    truncate,
)
from shipper.rfc3339 import TimeParser
from tests.shipper.hostgen import T0, cri_line, docker_line
from tests.shipper.hostgen import ts as hostgen_ts

T0_NS = int(T0.timestamp()) * 10**9


def feed(parser, data: bytes, base: int = 0):
    assert data.endswith(b"\n")
    return parser.feed(data[:-1].split(b"\n"), base)


def test_docker_lines_offsets_and_times() -> None:
    data = docker_line("one", 0) + docker_line("two", 1, "stderr")
    out = feed(DockerParser(), data)
    assert out.logs == ["one", "two"]
    assert out.streams == ["stdout", "stderr"]
    first = len(docker_line("one", 0))
    assert out.offsets == [first, len(data)]
    assert out.times[0] == "2026-11-28T12:00:00.000000123Z"
    assert out.time_ns[1] == T0_NS + 1_000_123


def test_docker_joins_16k_partials_across_feeds() -> None:
    p = DockerParser()
    part1 = docker_line("a" * 16384, 0, nl=False)
    part2 = docker_line("b" * 16384, 1, nl=False)
    last = docker_line("c" * 10, 2)
    out = feed(p, part1 + part2)
    assert len(out) == 0
    assert p.pending_start() == 0
    out = feed(p, last, base=len(part1 + part2))
    assert out.logs == ["a" * 16384 + "b" * 16384 + "c" * 10]
    assert out.offsets == [len(part1 + part2 + last)]
    assert out.times == ["2026-11-28T12:00:00.000000123Z"]  # the first part's time
    assert p.pending_start() is None


def test_docker_partials_per_stream_interleaved() -> None:
    data = (
        docker_line("out-", 0, "stdout", nl=False)
        + docker_line("err", 1, "stderr")
        + docker_line("end", 2, "stdout")
    )
    out = feed(DockerParser(), data)
    assert out.logs == ["err", "out-end"]
    assert out.offsets == sorted(out.offsets)


def test_docker_joins_split_parts_only_on_the_runtimes_streams() -> None:
    """A part without ``\\n`` of a stream no runtime writes (a file dockerd did not write) is
    a line of its own: left open, 1,000 such streams would each hold a line of up to
    ``--max-line-bytes``, flushed in one chunk past the message cap. stdout/stderr still join,
    also in the lenient path (a ``log`` key omitted, as Docker does when it is empty)."""
    made_up = b"".join(docker_line(f"part {i}", i, f"s{i}", nl=False) for i in range(1000))
    data = (
        docker_line("out-", 0, "stdout", nl=False)
        + made_up
        + b'{"stream":"s-x","time":"2026-11-28T12:00:00.5Z"}\n'  # lenient path, no log
        + docker_line("err-", 1, "stderr", nl=False)
        + docker_line("end", 2, "stdout")
        + docker_line("end", 3, "stderr")
    )
    p = DockerParser()
    out = feed(p, data)
    assert out.logs == [*(f"part {i}" for i in range(1000)), "", "out-end", "err-end"]
    assert out.streams[:2] == ["s0", "s1"] and out.streams[-2:] == ["stdout", "stderr"]
    assert out.offsets == sorted(out.offsets)
    assert p.pending_start() is None


def test_docker_malformed_line_is_shipped_raw_and_counted() -> None:
    data = docker_line("ok", 0) + b"this is not json\n" + b'{"no_log": 1}\n' + docker_line("ok2")
    out = feed(DockerParser(), data)
    assert out.logs == ["ok", "this is not json", '{"no_log": 1}', "ok2"]
    assert out.malformed == 2


def test_docker_deeply_nested_json_line_is_shipped_raw_and_counted() -> None:
    """A line nested too deeply for the JSON decoders (5000 ``[``, or a valid entry whose
    extra ``attrs`` key is; also with invalid UTF-8) raised RecursionError out of ``feed``:
    ``--once`` failed and a daemon's source retried forever, its later lines never shipped.
    It is one malformed line, shipped raw; the lines around it are unaffected, whether it is
    alone or not."""
    deep_attrs = (
        b'{"log":"x\\n","stream":"stdout","time":"2026-11-28T12:00:00.1Z","attrs":'
        + b"[" * 5000
        + b"]" * 5000
        + b"}"
    )
    for bad in (b"[" * 5000, deep_attrs, b"[" * 5000 + b'"\xff"'):
        before, after = docker_line("before", 0), docker_line("after", 1)
        out = feed(DockerParser(), before + bad + b"\n" + after)
        assert out.logs == ["before", bad.decode(errors="replace"), "after"]
        assert out.malformed == 1
        assert out.invalid_utf8 == (b"\xff" in bad)
        assert out.offsets == [
            len(before),
            len(before) + len(bad) + 1,
            len(before + bad) + 1 + len(after),
        ]
        alone = feed(DockerParser(), bad + b"\n")
        assert alone.logs == [bad.decode(errors="replace")] and alone.malformed == 1


def test_docker_non_text_log_while_a_split_line_is_open_is_raw() -> None:
    """A ``log`` that is a JSON list while a split line of its stream is open used to become
    one of its parts: joining them raised TypeError out of ``flush`` (and a next part lost
    the line's head). It is a malformed line, shipped raw, like one with no split open."""
    p = DockerParser()
    part = docker_line("out-", 0, "stdout", nl=False)
    odd = b'{"log":["x"],"stream":"stdout","time":"2026-11-28T12:00:00Z"}'
    out = feed(p, part + odd + b"\n")
    assert out.logs == [odd.decode()]
    assert out.malformed == 1
    flushed = p.flush(None, len(part) + len(odd) + 2, every=True)
    assert flushed.logs == ["out-"]


def test_docker_malformed_invalid_utf8_line_is_counted_once_and_the_open_split_goes_on() -> None:
    """A malformed line holding invalid UTF-8 (not JSON, or JSON with a list for ``log``) is
    one bad line: ``invalid_utf8`` once, not again when it is shipped raw. A split line open
    meanwhile keeps its parts: joined with its last part, at an offset above the raw line's.
    Likewise one line with a lone-surrogate escape and an invalid byte (another stream's
    line, in between) is counted once."""
    part = docker_line("out-", 0, "stdout", nl=False)
    last = docker_line("end", 1, "stdout")
    for odd in (
        b"not json \xff",
        b'{"log":["\xff"],"stream":"stdout","time":"2026-11-28T12:00:00Z"}',
        b'{"log":"x\\udc80 \xff\\n","stream":"stderr","time":"2026-11-28T12:00:00Z"}',
    ):
        out = feed(DockerParser(), part + odd + b"\n" + last)
        assert out.invalid_utf8 == 1, odd
        assert out.logs[-1] == "out-end"
        assert out.offsets == sorted(set(out.offsets))
        assert out.offsets[-1] == len(part) + len(odd) + 1 + len(last)


def test_docker_a_surrogate_in_utf8_bytes_is_replaced_and_counted() -> None:
    """Bytes ED A0 80 (a surrogate's UTF-8 form) are not UTF-8, but ``json.loads`` of bytes
    decodes them to a lone surrogate: it was left for the encoder to replace, uncounted."""
    line = b'{"log":"a\xed\xa0\x80b\\n","stream":"stdout","time":"2026-11-28T12:00:00Z"}\n'
    out = feed(DockerParser(), line + line)
    assert out.logs == ["a\ufffdb", "a\ufffdb"]
    assert out.invalid_utf8 == 2


def test_docker_invalid_utf8_replaced_and_counted() -> None:
    bad = b'{"log":"caf\xe9 \xff\\n","stream":"stdout","time":"2026-11-28T12:00:00Z"}\n'
    out = feed(DockerParser(), docker_line("fine") + bad)
    assert out.logs == ["fine", "caf\ufffd \ufffd"]
    assert out.invalid_utf8 == 1


def test_docker_lone_surrogate_escape_does_not_break_packing() -> None:
    from shipper.batch import pack_entries

    line = b'{"log":"x\\ud800y\\n","stream":"stdout","time":"2026-11-28T12:00:00Z"}\n'
    out = feed(DockerParser(), line)
    body = pack_entries(out, {"service": "s"})
    assert b"x\xef\xbf\xbdy" in body


def test_docker_lone_surrogates_are_counted_as_invalid_utf8() -> None:
    """A JSON ``\\udc80`` escape is no more text than a stray ``\\xff`` byte: both become
    U+FFFD and both are counted (the audit saw one count for two bad lines). An escaped valid
    pair (an emoji) is text; upper-case hex (``\\uDFFF``, here in a split line's first part)
    is caught too."""
    surrogate = b'{"log":"bad \\udc80 s\\n","stream":"stdout","time":"2026-11-28T12:00:01Z"}\n'
    byte = b'{"log":"bad \xff b\\n","stream":"stdout","time":"2026-11-28T12:00:02Z"}\n'
    emoji = b'{"log":"\\ud83d\\ude00\\n","stream":"stdout","time":"2026-11-28T12:00:03Z"}\n'
    part = b'{"log":"p\\uDFFF","stream":"stderr","time":"2026-11-28T12:00:04Z"}\n'
    out = feed(DockerParser(), docker_line("fine") + surrogate + byte + emoji + part)
    assert out.invalid_utf8 == 3
    assert out.logs == ["fine", "bad \ufffd s", "bad \ufffd b", "\U0001f600"]
    alone = feed(DockerParser(), surrogate)  # one line: no block fallback in between
    assert (alone.invalid_utf8, alone.logs) == (1, ["bad \ufffd s"])


def test_docker_split_line_with_invalid_utf8_in_each_part_is_counted_once() -> None:
    """A line split in parts that each hold invalid UTF-8 (a lone-surrogate escape, a bad
    byte) is one bad line, counted once as the same line in one part is (and as CRI's are):
    each part was counted, also when its parts came in separate reads, with the other
    stream's lines between them or flushed unfinished."""

    def entry(log: bytes, second: int, stream: bytes = b"stdout") -> bytes:
        return b'{"log":"%s","stream":"%s","time":"2026-11-28T12:00:0%dZ"}\n' % (
            log,
            stream,
            second,
        )

    whole = feed(DockerParser(), entry(b"a\\udc80 b\xff c\\uDFFF\\n", 0))
    assert (whole.logs, whole.invalid_utf8) == (["a\ufffd b\ufffd c\ufffd"], 1)
    parts = entry(b"a\\udc80 ", 0) + entry(b"b\xff", 1) + entry(b" c\\uDFFF\\n", 2)
    out = feed(DockerParser(), parts)
    assert (out.logs, out.invalid_utf8) == (whole.logs, 1)
    p = DockerParser()
    first = feed(p, entry(b"a\\udc80 ", 0) + entry(b"err\xff\\n", 1, b"stderr"))
    assert (first.logs, first.invalid_utf8) == (["err\ufffd"], 2)  # the split line's, stderr's
    rest = feed(p, entry(b"b\xff", 2) + entry(b" c\\uDFFF\\n", 3))
    assert (rest.logs, rest.invalid_utf8) == (whole.logs, 0)
    p = DockerParser()
    assert feed(p, entry(b"a\\udc80 ", 0) + entry(b"b\xff", 1)).invalid_utf8 == 1
    flushed = p.flush(None, 999, every=True)
    assert (flushed.logs, flushed.invalid_utf8) == (["a\ufffd b\ufffd"], 0)
    later = feed(p, entry(b"c\\udc80", 2))  # a new line: counted as such
    assert later.invalid_utf8 == 1


def test_truncation_marker_and_counter() -> None:
    p = DockerParser(max_line_bytes=1024)
    out = feed(p, docker_line("x" * 5000))
    assert out.truncated == 1
    assert out.logs[0].startswith("x" * 1024)
    assert out.logs[0].endswith("[logq-shipper: truncated 3976 bytes]")


def test_joined_partials_truncated_without_buffering_everything() -> None:
    p = DockerParser(max_line_bytes=2048)
    data = b"".join(docker_line("y" * 1000, i, nl=False) for i in range(10)) + docker_line("z")
    out = feed(p, data)
    assert len(out) == 1 and out.truncated == 1
    assert out.logs[0] == "y" * 2048 + " [logq-shipper: truncated 7953 bytes]"


@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_joined_multibyte_partials_are_cut_at_the_limit_in_bytes(fmt: str) -> None:
    """A split line of 3-byte characters is cut to ``--max-line-bytes`` bytes, like a line
    of one part, and its marker counts the bytes dropped: the parts were kept up to the
    limit in characters, three times the limit, the marker counting characters."""
    text = "\u20ac" * 600  # 1,800 bytes a part
    if fmt == "docker":
        p, data = DockerParser(max_line_bytes=1000), docker_line(text, 0, nl=False) * 2
        data += docker_line("x", 1)
    else:
        p, data = CriParser(max_line_bytes=1000), cri_line(text, 0, tag="P") * 2
        data += cri_line("x", 1)
    out = feed(p, data)
    assert out.truncated == 1
    kept, marker = out.logs[0].split(" [", 1)
    assert kept == "\u20ac" * 333  # 999 bytes: the 1,000th is inside a character
    assert marker == "logq-shipper: truncated 2602 bytes]"  # 3,601 bytes, 999 kept


def _cri(raw: bytes, i: int, tag: str) -> bytes:
    """A CRI line of ``raw`` bytes (any, UTF-8 or not) with tag ``tag`` (``P``: a part)."""
    return f"{hostgen_ts(i)} stdout {tag} ".encode() + raw + b"\n"


#: Lines over a limit: (the line's bytes, the limit, the text kept, the bytes not kept). Bytes
#: that are not UTF-8 show as U+FFFD, 3 bytes each in the limit, and count one each (as the
#: file holds them) in the marker; a character the limit cuts in the middle is not kept.
_CUT_LINES = [
    (b"a" * 10 + b"\xff" * 10, 15, "a" * 10 + "\ufffd", 9),
    (b"a" * 10 + b"\xff" * 10, 12, "a" * 10, 10),
    (b"\xff" * 4 + b"a" * 20, 10, "\ufffd" * 3, 21),
    (("a" * 10 + "\u00e9" * 10).encode(), 11, "a" * 10, 20),
]


@pytest.mark.parametrize(("raw", "limit", "kept", "dropped"), _CUT_LINES)
def test_a_cut_line_says_the_same_bytes_not_kept_in_one_part_or_several(
    raw: bytes, limit: int, kept: str, dropped: int
) -> None:
    """``truncated N bytes`` counts the bytes of the line, as the file holds them, that were
    not kept, whatever the line came in: a CRI line of one part counted the dropped bytes
    that are not UTF-8 as the 3 bytes of their U+FFFD (30 for 10), the same line split by
    the runtime (or flushed unfinished, as after a restart) counted them as one byte each and
    the bytes kept as 3 (15 here, 25 there, 9 true), and a character cut at the limit counted
    as kept, though none of it was."""
    expected = [kept + TRUNCATION_MARKER.format(dropped=dropped)]
    outs = {
        "cri whole": feed(CriParser(limit), _cri(raw, 0, "F")),
        "plain": feed(PlainParser(limit), raw + b"\n"),
    }
    for at in sorted({1, 5, 10, 11, 12, limit, len(raw) - 1}):
        first, rest = _cri(raw[:at], 0, "P"), _cri(raw[at:], 1, "F")
        outs[f"cri split at {at}"] = feed(CriParser(limit), first + rest)
        flushed = CriParser(limit)
        feed(flushed, first + _cri(raw[at:], 1, "P"))
        outs[f"cri flushed, split at {at}"] = flushed.flush(None, 1000, every=True)
    valid = raw.isascii() or b"\xff" not in raw
    if valid:  # the same text in Docker json-file (dockerd writes no other)
        text = raw.decode()
        outs["docker whole"] = feed(DockerParser(limit), docker_line(text))
        for at in (1, 5, 10, 11, 12, len(text) - 1):
            split = docker_line(text[:at], 0, nl=False) + docker_line(text[at:], 1)
            outs[f"docker split at {at}"] = feed(DockerParser(limit), split)
    for name, out in outs.items():
        assert (name, out.logs) == (name, expected)
        assert (name, out.truncated, out.invalid_utf8) == (name, 1, int(not valid))


@given(
    st.binary(min_size=2, max_size=40).filter(lambda raw: b"\n" not in raw),
    st.integers(min_value=4, max_value=30),
    st.data(),
)
def test_a_cri_line_cut_in_parts_shows_what_it_shows_in_one(
    raw: bytes, limit: int, data: st.DataObject
) -> None:
    """Any bytes, any limit, any split by the runtime: the same record and marker."""
    at = data.draw(st.integers(min_value=1, max_value=len(raw) - 1))
    whole = feed(CriParser(limit), _cri(raw, 0, "F"))
    split = feed(CriParser(limit), _cri(raw[:at], 0, "P") + _cri(raw[at:], 1, "F"))
    assert split.logs == whole.logs
    assert split.truncated == whole.truncated
    assert len(whole.logs[0].split(" [logq-shipper")[0].encode()) <= limit


def test_a_long_line_of_binary_output_is_cut_measuring_it_about_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line of bytes that are not UTF-8 (a container writing binary output) is cut at the
    most characters whose U+FFFDs fit, measured a block at a time: a search over the whole
    line measured up to the limit at each of its ~18 halvings (0.1 s of the event loop for a
    line of 1 MiB, 6 times the cut before). What is kept fits, one character more would not,
    and the marker counts the bytes of the file not kept, in one part or in several."""
    import random

    from shipper import formats

    raw = random.Random(7).randbytes(60_000).replace(b"\n", b"x")
    limit = 40_000
    measured: list[int] = []
    real = formats._shown_size

    def counted(text: str) -> int:
        measured.append(len(text))
        return real(text)

    monkeypatch.setattr(formats, "_shown_size", counted)
    whole = feed(CriParser(limit), _cri(raw, 0, "F"))
    assert sum(measured) < limit  # (the search over the line: 18 halvings of up to 40,000)
    split = feed(CriParser(limit), _cri(raw[:30_001], 0, "P") + _cri(raw[30_001:], 1, "F"))
    assert split.logs == whole.logs == feed(PlainParser(limit), raw + b"\n").logs
    log, marker = whole.logs[0].rsplit(" [logq-shipper: ", 1)
    kept = len(raw) - int(marker.removeprefix("truncated ").removesuffix(" bytes]"))
    assert log == raw[:kept].decode("utf-8", "replace")
    assert len(log.encode()) <= limit
    text = raw.decode("utf-8", "surrogateescape")
    chars = len(raw[:kept].decode("utf-8", "surrogateescape"))
    one_more = text[: chars + 1].encode("utf-8", "surrogateescape")
    assert len(one_more.decode("utf-8", "replace").encode()) > limit


def test_a_split_line_of_continuation_bytes_is_held_within_the_limit() -> None:
    """A character split by the runtime at the limit is kept whole (its continuation bytes
    at the next part's start), once: parts of continuation bytes alone after it were each
    kept whole too, so a line held 61,024 characters for a limit of 1,024 after 20,000 such
    parts. The line shipped is the same, and a character split over three parts at the limit
    is still kept whole."""
    parts = [b"a" * 1023 + b"\xe2"] + [b"\x80\x80\x80"] * 20_000
    parser = CriParser(1024)
    blob = b"".join(_cri(part, i, "P") for i, part in enumerate(parts))
    feed(parser, blob)
    held = parser._partials["stdout"]
    assert held.size <= 1024 + 3
    out = feed(parser, _cri(b"", 20_001, "F"))
    whole = feed(CriParser(1024), _cri(b"".join(parts), 0, "F"))
    assert out.logs == whole.logs
    # A character split over three parts at the limit is still kept whole, in one line.
    line = b"a" * 1023 + "\u20ac".encode() + b"b"
    parts = [line[:1024], line[1024:1025], line[1025:]]
    blob = b"".join(_cri(part, i, "P" if i < 2 else "F") for i, part in enumerate(parts))
    split = feed(CriParser(1024), blob)
    assert split.logs == feed(CriParser(1024), _cri(line, 0, "F")).logs
    assert (split.logs, split.invalid_utf8) == (
        ["a" * 1023 + " [logq-shipper: truncated 4 bytes]"],
        0,
    )


@pytest.mark.parametrize("fmt", ["docker", "cri"])
@pytest.mark.parametrize("size", [1000, 1200])
@pytest.mark.parametrize("cut", [600, None])
def test_a_split_crlf_line_is_cut_as_the_same_line_in_one_part(
    fmt: str, size: int, cut: int | None
) -> None:
    """A complete line's CRLF end is no part of it, also when the line limit cut it off with
    the text before it: a line of the limit and a ``\r`` was kept whole in one part, but in
    several it was marked ``truncated 1 bytes`` (its ``\r``), and a longer one counted its
    ``\r`` in its marker. ``cut`` None: the runtime split it between ``\r`` and ``\n``."""
    text = "x" * size + "\r"
    first, rest = (text[:cut], text[cut:]) if cut else (text, "")
    if fmt == "docker":
        parser, whole = DockerParser, docker_line(text)
        split = docker_line(first, 0, nl=False) + docker_line(rest, 1)
    else:
        parser, whole = CriParser, cri_line(text)
        split = cri_line(first, 0, tag="P") + cri_line(rest, 1)
    one = feed(parser(max_line_bytes=1000), whole)
    two = feed(parser(max_line_bytes=1000), split)
    assert two.logs == one.logs
    assert two.truncated == one.truncated == (size > 1000)
    if size > 1000:
        assert one.logs[0] == "x" * 1000 + " [logq-shipper: truncated 200 bytes]"


def test_cri_partial_and_full() -> None:
    data = (
        cri_line("hello ", 0, tag="P")
        + cri_line("err line", 1, "stderr")
        + cri_line("world", 2, tag="F")
        + b"2026-11-28T12:00:00.5+01:00 stdout F with offset\n"
        + cri_line("", 3)
    )
    out = feed(CriParser(), data)
    assert out.logs == ["err line", "hello world", "with offset", ""]
    assert out.streams == ["stderr", "stdout", "stdout", "stdout"]
    assert out.time_ns[2] == T0_NS - 3600 * 10**9 + 500_000_000
    assert out.malformed == 0


def cri_raw(text: bytes, i: int = 0, stream: str = "stdout", tag: str = "F") -> bytes:
    """A CRI line whose text is ``text``'s bytes as the runtime wrote them."""
    return f"{hostgen_ts(i)} {stream} {tag} ".encode() + text + b"\n"


def test_cri_character_cut_between_parts_is_joined_whole() -> None:
    """containerd cuts a long line at a byte count, often inside a multi-byte character: the
    joined line holds the character, not two U+FFFD counted as invalid UTF-8 -- also when the
    parts come in separate reads (a rotation between them) and with the other stream's lines
    between them."""
    euro = "€".encode()  # 3 bytes
    p = CriParser()
    out = feed(p, cri_raw(b"price " + euro[:1], 0, tag="P") + cri_line("err", 1, "stderr"))
    assert out.logs == ["err"]
    out = feed(p, cri_raw(euro[1:2], 2, tag="P") + cri_raw(euro[2:] + b" 5\r", 3))
    assert out.logs == ["price \u20ac 5"]
    assert out.invalid_utf8 == 0


def test_cri_split_line_with_bad_bytes_is_counted_once() -> None:
    """Bytes invalid in the joined line are replaced and counted once per line, whether the
    line completes or is flushed unfinished (the container died mid-character)."""
    p = CriParser()
    out = feed(p, cri_raw(b"a\xff", 0, tag="P") + cri_raw(b"\xfeb", 1))
    assert out.logs == ["a\ufffd\ufffdb"] and out.invalid_utf8 == 1
    out = feed(p, cri_raw(b"c" + "\u20ac".encode()[:2], 2, tag="P"))
    assert len(out) == 0
    out = p.flush(None, 99)
    assert out.logs == ["c\ufffd"] and out.invalid_utf8 == 1


def test_cri_garbage_is_raw() -> None:
    out = feed(CriParser(), b"garbage without fields\n")
    assert out.logs == ["garbage without fields"] and out.malformed == 1


def test_plain_text_strips_cr_and_replaces_bad_utf8() -> None:
    out = feed(PlainParser(), b"a\r\nb\xff\n")
    assert out.logs == ["a", "b\ufffd"]
    assert out.invalid_utf8 == 1
    assert out.offsets == [3, 6]


def test_time_parser_forms() -> None:
    tp = TimeParser()
    assert tp.to_ns("2026-11-28T12:00:00Z") == T0_NS
    assert tp.to_ns("2026-11-28T12:00:00.123456789Z") == T0_NS + 123_456_789
    assert tp.to_ns("2026-11-28T12:00:00.1Z") == T0_NS + 100_000_000
    assert tp.to_ns("2026-11-28T13:00:00.25+01:00") == T0_NS + 250_000_000


ODD_TIMES = [
    "2026-11-28T12:00:00.-5Z",  # int() read -0.05 s: a time before the second
    "2026-11-28T12:00:00.+5Z",
    "2026-11-28T12:00:00.1_2Z",  # int() read .012
    "2026-11-28T12:00:00. 5Z",
    "2026-11-28T12:00:00.Z",  # no digit at all
    "2026-11-28T12:00:00.\u0661\u0662Z",  # Arabic-Indic digits
    "2026-11-28T12:00:00.123456789xZ",  # int() read the first nine digits only
    "2026-11-28T12:00:00.-5+01:00",
    "2026-11-28T12:00:00.1_2+01:00",
    "\u0662\u0660\u0662\u0666-11-28T12:00:00.5Z",  # strptime took Unicode digits
    "2026-11-28T12:00:0\uff10.5Z",  # a fullwidth digit
    "2026-11- 8T12:00:00.5Z",  # strptime took a space-padded day
]


def test_time_parser_refuses_fractions_and_digits_int_would_stretch() -> None:
    """A fraction is one or more ASCII digits, and so is every field: ``int()`` and
    ``strptime`` also read signs, underscores, spaces and other Unicode digits, giving wrong
    times (``.-5`` 0.05 s *before* the second) that were not counted as bad."""
    tp = TimeParser()
    for text in ODD_TIMES:
        assert tp.to_ns(text) is None, text
    for head in ("\u0662\u0660\u0662\u0666-11-28T12:00:00", "2026-11- 8T12:00:00"):
        with pytest.raises(ValueError):
            tp.seconds(head)
    assert tp.to_ns("2026-11-28T12:00:00.5Z") == T0_NS + 500_000_000  # the real one parses


def test_docker_odd_time_gets_the_read_time_and_is_counted() -> None:
    """Such a time is a bad time, as any that does not parse: the line ships with the read
    time, its text kept, counted in ``bad_times``, the lines around it as usual."""
    for text in ODD_TIMES:
        odd = json.dumps({"log": "odd\n", "stream": "stdout", "time": text}).encode() + b"\n"
        before = time.time_ns()
        out = feed(DockerParser(), docker_line("a", 0) + odd + docker_line("b", 1))
        assert out.logs == ["a", "odd", "b"] and out.times[1] == text, text
        assert out.bad_times == 1 and out.malformed == 0, text
        assert out.time_ns[1] >= before and out.time_ns[0] == T0_NS + 123, text
    for text in ("2026-11-28T12:00:00.-5Z", "2026-11-28T12:00:00.1_2Z"):  # CRI alike
        out = feed(CriParser(), f"{text} stdout F odd\n".encode())
        assert out.logs == ["odd"] and out.bad_times == 1 and out.time_ns[0] >= before


def test_truncate_keeps_utf8_boundaries() -> None:
    text, cut = truncate("é" * 3000, 1025)
    assert cut and text.startswith("é" * 512) and "truncated" in text


@given(st.lists(st.text(min_size=0, max_size=50), min_size=1, max_size=30))
def test_docker_roundtrip_any_text(texts: list[str]) -> None:
    texts = [t.replace("\n", " ") for t in texts]
    data = b"".join(
        json.dumps({"log": t + "\n", "stream": "stdout", "time": "2026-11-28T12:00:00Z"}).encode()
        + b"\n"
        for t in texts
    )
    out = feed(DockerParser(), data)
    assert out.logs == [t.removesuffix("\r") for t in texts]  # CRLF output loses its \r
    assert out.offsets[-1] == len(data)


def test_packed_entries_decode_to_the_columns() -> None:
    """The inline-packed fast path and the general path produce the same records."""
    from shipper import wire
    from shipper.batch import encode_message, pack_entries

    data = (
        docker_line("first of its second", 0)
        + docker_line("fast path", 1)
        + docker_line("split ", 2, nl=False)
        + docker_line("line", 3)
        + b"raw text\n"
        + docker_line("é ünïcode", 4, "stderr")
    )
    parser = DockerParser()
    out = feed(parser, data)
    body = pack_entries(out, {"service": "svc", "source_id": "sid"})
    unpacker = wire.new_unpacker()
    unpacker.feed(encode_message("logq.svc", body, len(out), "c", compress=True))
    msg = wire.decode_message(next(iter(unpacker)))
    recs = [e.record for e in msg.events]
    assert [r["log"] for r in recs] == out.logs
    assert [r["offset"] for r in recs] == out.offsets
    assert [r["time"] for r in recs] == out.times
    assert [r["stream"] for r in recs] == out.streams
    assert [e.time_ns for e in msg.events] == out.time_ns
    assert all(r["service"] == "svc" and r["source_id"] == "sid" for r in recs)
    assert out.logs[2] == "split line" and out.logs[3] == "raw text"


def test_docker_trimmed_fraction_and_omitted_keys() -> None:
    data = (
        b'{"log":"a\\n","stream":"stdout","time":"2026-11-28T12:00:00.1Z"}\n'
        b'{"log":"b\\n","stream":"stderr","time":"2026-11-28T12:00:00.12345Z"}\n'
        b'{"log":"c\\n","stream":"stdout","attrs":{"tag":"x"},"time":"2026-11-28T12:00:01Z"}\n'
        b'{"log":"no stream\\n","time":"2026-11-28T12:00:02Z"}\n'
    )
    out = feed(DockerParser(), data)
    assert out.logs == ["a", "b", "c", "no stream"]
    assert out.time_ns[:2] == [T0_NS + 100_000_000, T0_NS + 123_450_000]
    assert out.streams == ["stdout", "stderr", "stdout", "stdout"]
    assert out.malformed == 0


@given(
    st.lists(
        st.tuples(
            st.text(max_size=40).map(lambda t: t.replace("\n", " ")),
            st.sampled_from(["stdout", "stderr"]),
            st.integers(min_value=0, max_value=10**9 - 1),
            st.integers(min_value=1, max_value=9),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_block_fast_path_equals_line_by_line(rows: list[tuple[str, str, int, int]]) -> None:
    """The whole-block path and the per-line path produce byte-identical entries."""
    from shipper.batch import pack_entries

    data = b""
    for i, (text, stream, ns, digits) in enumerate(rows):
        frac = f"{ns:09d}"[:digits]
        t = f"2026-11-28T12:00:{i % 60:02d}.{frac}Z"
        doc = {"log": text + "\n", "stream": stream, "time": t}
        data += json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    fast = feed(DockerParser(), data, base=7)

    slow_parser = DockerParser()
    slow_parser._feed_block = lambda *a: None  # type: ignore[method-assign]
    slow = feed(slow_parser, data, base=7)
    shared = {"service": "s", "source_id": "id"}
    assert pack_entries(fast, shared) == pack_entries(slow, shared)
    assert fast.offsets == slow.offsets
    assert fast.logs == [r[0].removesuffix("\r") for r in rows]  # CRLF loses its \r


def test_ordinary_docker_block_takes_the_block_path() -> None:
    """The equivalence test above means something only if ordinary lines use the block path."""
    data = b"".join(docker_line(f"line {i} é", i, ("stdout", "stderr")[i % 2]) for i in range(50))
    lines = data[:-1].split(b"\n")
    out = DockerParser()._feed_block(lines, 100)
    assert out is not None
    assert out.logs == [f"line {i} é" for i in range(50)]
    assert out.offsets[-1] == 100 + len(data)
    assert out.time_ns[49] == T0_NS + 49_000_123


def test_block_path_refuses_what_it_cannot_keep_exact() -> None:
    """Blocks with anything unusual go to the general path (which counts and repairs them)."""
    ok = docker_line("ok", 0)
    unusual = [
        b'{"log":"a\\n","stream":"stdout","time":"2026-11-28T12:00:00.1Z"} {"log":"b"}',
        b'{"log":"x\\ud800\\n","stream":"stdout","time":"2026-11-28T12:00:00Z"}',
        b'{"log":"caf\xe9\\n","stream":"stdout","time":"2026-11-28T12:00:00.1Z"}',
        b'{"log":"no stream\\n","time":"2026-11-28T12:00:00.1Z"}',
        b'{"log":"split","stream":"stdout","time":"2026-11-28T12:00:00.1Z"}',
        b'{"log":"seconds only\\n","stream":"stdout","time":"2026-11-28T12:00:00Z"}',
        b'{"log":"offset\\n","stream":"stdout","time":"2026-11-28T12:00:00.1+01:00"}',
        b'{"log":"bad date\\n","stream":"stdout","time":"2026-13-28T12:00:00.1Z"}',
        b'{"log":1,"stream":"stdout","time":"2026-11-28T12:00:00.1Z"}',
    ]
    for line in unusual:
        lines = [ok[:-1], line]
        assert DockerParser()._feed_block(lines, 0) is None, line
        out = DockerParser().feed(lines, 0)  # the general path still ships every line
        complete = 1 if b'"split"' in line else 2  # a split part waits for its last part
        assert len(out) == complete and out.logs[0] == "ok"


def test_records_with_many_shared_keys_use_a_map16_header() -> None:
    """Four per-line keys + 12 shared keys no longer fit a fixmap: still valid msgpack."""
    from shipper import wire
    from shipper.batch import pack_entries

    out = feed(DockerParser(), docker_line("one", 0) + docker_line("two", 1))
    shared = {f"k{i}": f"v{i}" for i in range(12)}
    events = wire.decode_message(["t", pack_entries(out, shared), {}]).events
    assert [e.record["log"] for e in events] == ["one", "two"]
    assert all(len(e.record) == 16 and e.record["k11"] == "v11" for e in events)
    assert [e.time_ns for e in events] == out.time_ns


def test_crlf_docker_block_takes_the_block_path() -> None:
    """CRLF output (Windows containers, some Java/.NET loggers) keeps the fast path: it lost
    it once, and shipped at about half the speed."""
    texts = [f"line {i}\r" if i % 3 else f"line {i}" for i in range(30)] + ["cr\r\r", "\r"]
    data = b"".join(docker_line(t, i) for i, t in enumerate(texts))
    lines = data[:-1].split(b"\n")
    out = DockerParser()._feed_block(lines, 0)
    assert out is not None
    assert out.logs == [t.removesuffix("\r") for t in texts]  # one \r, as for a single line
    assert out.nbytes == sum(map(len, out.logs))
    slow_parser = DockerParser()
    slow_parser._feed_block = lambda *a: None  # type: ignore[method-assign]
    assert slow_parser.feed(lines, 0).logs == out.logs


def test_crlf_split_at_the_16k_boundary_is_stripped_after_joining() -> None:
    """The writer's split may fall between the \\r and the \\n: the joined line is the same
    as if it had not been split (one trailing \\r removed, never an inner one)."""
    a = "A" * 16383
    cases = [
        ([(a + "\r", False), ("\n", True)], a),  # 'A..\r' + '\n'
        ([(a, False), ("\r\n", True)], a),  # 'A..' + '\r\n'
        ([(a + "\r", False), ("x\n", True)], a + "\rx"),  # inner \r kept
        ([(a + "\r", False), ("\r\n", True)], a + "\r"),  # 'A..\r\r\n': one \r stripped
    ]
    for parts, joined in cases:
        data = b"".join(docker_line(t, i, nl=False) for i, (t, _) in enumerate(parts))
        assert feed(DockerParser(), data).logs == [joined], parts
    cri = cri_line(a + "\r", 0, tag="P") + cri_line("", 1, tag="F")
    assert feed(CriParser(), cri).logs == [a]
    cri = cri_line(a + "\r", 0, tag="P") + cri_line("x\r", 1, tag="F")
    assert feed(CriParser(), cri).logs == [a + "\rx"]
