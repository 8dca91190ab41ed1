"""Line formats of container runtimes: Docker json-file, CRI (containerd / CRI-O) and plain text.

A parser is fed *complete physical lines* (bytes, without the ``\\n``) together with the file
offset of the first one, and returns the *logical* lines they complete as
:class:`~shipper.lines.Lines`: columns of what each line's Forward entry needs (its event time
already packed, see :mod:`shipper.entry`), plus the byte offset just past its last part (offsets
strictly increase per file). Runtimes split long lines (Docker and CRI at 16 KiB): the parts are
joined here, and the parser remembers an unfinished group across calls.

Per-line Python work is the shipper's throughput limit, so a Docker block of ordinary complete
lines is decoded with one msgspec call (typed, into :class:`DockerEntry`) and turned into
columns with ``map`` over whole lists (:meth:`DockerParser._feed_block`); any other block takes
the general path (``json.loads``, then line by line), which yields the same records for the
lines both accept. Nothing is ever dropped: a line that is not valid JSON (or is nested too
deeply to decode) is shipped as raw text and counted; invalid UTF-8 is carried with U+FFFD
replacement characters and counted; an over-long line is truncated with a visible marker and
counted; a runtime time that cannot be parsed or sent as an EventTime (before 1970, from
2106-02-07) is replaced by the read time, counted, and kept as text in the record.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from itertools import accumulate, chain, islice, repeat
from operator import add, attrgetter, getitem

import msgspec
from msgspec import Raw

from shipper.entry import EVENT_TIME, HEAD
from shipper.fsnames import SURROGATE as _SURROGATE
from shipper.lines import Lines
from shipper.rfc3339 import TimeParser, now_rfc3339

TRUNCATION_MARKER = " [logq-shipper: truncated {dropped} bytes]"
_GET_LOG, _GET_STREAM, _GET_TIME = attrgetter("log"), attrgetter("stream"), attrgetter("time")
_SECOND = slice(0, 19)
_FRACTION = slice(20, -1)
_NO_NEWLINE = slice(0, -1)
#: A JSON escape of a UTF-16 surrogate (``\\ud800`` to ``\\udfff``, any case), or a surrogate's
#: UTF-8 form (bytes ED A0..BF ..): what can put one into a decoded string. The latter is not
#: UTF-8, yet ``json.loads`` of bytes decodes it (``surrogatepass``) without a UnicodeDecodeError.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _chomp(log: str) -> str:
    """A Docker ``log`` value less its ``\n`` and one ``\r`` before it (CRLF output), as
    plain files lose theirs."""
    return log[:-2] if log[-2:] == "\r\n" else log[:-1]


def _chomp_all(logs: list[str]) -> list[str]:
    """:func:`_chomp` of every value (each ends in ``\n``), at C speed: CRLF output (Windows
    containers, some Java and .NET loggers) keeps the fast path."""
    lines = list(map(getitem, logs, repeat(_NO_NEWLINE)))
    if any(map(str.endswith, lines, repeat("\r"))):
        return list(map(str.removesuffix, lines, repeat("\r")))
    return lines


class DockerEntry(msgspec.Struct, gc=False):
    """One json-file line as the block fast path accepts it: all three keys, all strings
    (unknown keys such as ``attrs`` are ignored). Anything else fails the whole block over to
    the general per-line path, which knows Docker's omissions and bad input."""

    log: str
    stream: str
    time: str


_DOCKER_BLOCK = msgspec.json.Decoder(list[DockerEntry])


def decode_text(raw: bytes, counts: Lines) -> str:
    """UTF-8 bytes to text; invalid sequences become U+FFFD and are counted, never fatal."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        counts.invalid_utf8 += 1
        return raw.decode("utf-8", "replace")


def decode_line(raw: bytes, counts: Lines | None, max_bytes: int) -> str:
    """:func:`decode_text` of a line (``counts`` None: its invalid UTF-8 is counted already),
    except that one to be cut (what it shows is over ``max_bytes``) keeps the bytes that are
    not UTF-8 as they are (``surrogateescape``): its cut (:func:`cut_line`) counts them as
    the file holds them, one byte each, not as the 3-byte U+FFFD that replaces them."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if counts is not None:
            counts.invalid_utf8 += 1
        if len(raw) > max_bytes:  # shown, it is longer still (U+FFFD is 3 bytes for 1 to 3)
            return raw.decode("utf-8", "surrogateescape")
        shown = raw.decode("utf-8", "replace")
        if len(shown) * 4 > max_bytes and len(shown.encode("utf-8")) > max_bytes:
            # (as many characters as shown or more: a LineParser._emit cuts it for sure)
            return raw.decode("utf-8", "surrogateescape")
        return shown


def _file_bytes(text: str) -> bytes:
    """The bytes of a line as the file holds them: ``text`` may hold those that are not UTF-8
    as ``surrogateescape`` surrogates (a surrogate no decoding here made counts as UTF-8
    would have it)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _shown_size(text: str) -> int:
    """The UTF-8 size of ``text`` as shipped: its undecoded bytes replaced by U+FFFD."""
    return len(_file_bytes(text).decode("utf-8", "replace").encode("utf-8"))


def cut_line(text: str, max_bytes: int) -> tuple[str, int]:
    """A line as shipped, within ``max_bytes`` of UTF-8, and how many bytes of it, as the
    file holds them, are not kept (0: it fits whole). ``text`` may hold bytes that are not
    UTF-8 as ``surrogateescape`` surrogates (:func:`decode_line`, a CRI split line's parts):
    what is kept shows them as U+FFFD (3 bytes in the limit, for one to three bytes of the
    file), and the count counts them as the file holds them -- so a line says the same
    ``truncated N bytes`` whether it came in one part or several, and N is the line's size
    less the bytes kept (a character cut in the middle is not kept: none of its bytes is)."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 (or a lone surrogate)
        raw = _file_bytes(text)
        if len(raw) <= max_bytes:  # (longer, what it shows is longer still)
            shown = raw.decode("utf-8", "replace")
            if len(shown.encode("utf-8")) <= max_bytes:
                return shown, 0
        kept = raw[: _kept_bytes(raw, max_bytes)]
    else:  # all UTF-8: cut at a character's start
        if len(raw) <= max_bytes:
            return text, 0
        end = max_bytes
        while raw[end] & 0xC0 == 0x80:
            end -= 1
        kept = raw[:end]
    return kept.decode("utf-8", "replace"), len(raw) - len(kept)


#: The bytes of a line with bytes that are not UTF-8 measured at a time for its cut
#: (:func:`_kept_bytes`): the last block to fit is searched character by character.
_CUT_BLOCK = 4096


def _kept_bytes(raw: bytes, max_bytes: int) -> int:
    """How many bytes of ``raw`` (not all UTF-8, shown over ``max_bytes``) a cut keeps: the
    most characters whose bytes, shown, fit (a byte that is not UTF-8 is a character of its
    own; it shows as the 3 bytes of U+FFFD, or none more after another of its sequence).

    The line is measured a block at a time, each ending before a byte that starts a character
    or where none can go on (a character, or a sequence U+FFFD shows as one, holds at most 3
    continuation bytes), so the blocks' sizes shown add up; only the block the limit falls in
    is searched (in halves, each measured). A search over the whole line measured up to
    ``max_bytes`` of it at each of ~18 halvings: 0.1 s of the loop for a line of 1 MiB of
    binary output, 6 times the cut of the same line before the counts were kept in file
    bytes."""
    kept = shown = 0
    while True:
        end = stop = min(kept + _CUT_BLOCK, len(raw))
        while end < len(raw) and end - stop < 3 and raw[end] & 0xC0 == 0x80:
            end += 1
        size = len(raw[kept:end].decode("utf-8", "replace").encode("utf-8"))
        if shown + size > max_bytes or end == len(raw):
            break
        kept, shown = end, shown + size
    text = raw[kept:end].decode("utf-8", "surrogateescape")
    # (no more characters than bytes of room: 3 for a sequence U+FFFD shows, of 3 at most)
    lo, hi = 0, min(len(text), max_bytes - shown)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if shown + _shown_size(text[:mid]) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return kept + len(text[:lo].encode("utf-8", "surrogateescape"))


def truncate(log: str, max_bytes: int) -> tuple[str, bool]:
    """Cut ``log`` to ``max_bytes`` of UTF-8 plus a marker saying how much was dropped (the
    container metadata's values; lines are cut by :func:`cut_line`)."""
    if len(log) * 4 <= max_bytes:
        return log, False
    raw = log.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return log, False
    kept = raw[:max_bytes].decode("utf-8", "ignore")
    return kept + TRUNCATION_MARKER.format(dropped=len(raw) - max_bytes), True


def _utf8_len(text: str) -> int:
    """The bytes of ``text`` in UTF-8 as the runtime wrote them: a CRI part's undecoded bytes
    (``surrogateescape``, see :meth:`CriParser._join`) count one each."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))


#: The ``surrogateescape`` form of a UTF-8 continuation byte (0x80 to 0xBF) that was not
#: decoded: what a CRI part starts with when the runtime split the line inside a character.
_CONTINUATION = range(0xDC80, 0xDCC0)


def _past_continuation(text: str, at: int, before: str) -> int:
    """``at``, or past the undecoded continuation bytes there that the character ending
    ``before`` (what is kept before ``at``, its last 3 characters) still lacks, when it ends
    in an undecoded lead byte and fewer continuation bytes than its sequence takes: a
    character the runtime split between two parts is not cut in the middle where the limit
    drops the rest of its line, so what is kept still decodes as the line does (a line of
    valid UTF-8 was counted as invalid). What is shown is cut at the limit later all the same
    (:func:`cut_line`). Only that character's bytes: parts of continuation bytes alone after
    an undecoded byte were each kept whole, past the limit without end."""
    missing = 0
    for after, char in enumerate(reversed(before[-3:])):
        byte = ord(char) - 0xDC00
        if not 0x80 <= byte <= 0xFF:
            break  # not an undecoded byte: no character left unfinished
        if byte < 0xC0:
            continue  # a continuation byte: its lead is further back
        length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4 if byte < 0xF8 else 1
        missing = max(length - 1 - after, 0)
        break
    end = at
    while end < len(text) and end - at < missing and ord(text[end]) in _CONTINUATION:
        end += 1
    return end


@dataclass(slots=True)
class _Partial:
    """An unfinished group of runtime-split parts of one stream."""

    start: int
    time: str
    time_ns: int
    parts: list[str]
    size: int = 0
    dropped: int = 0
    invalid_utf8: bool = False
    """Whether the line is counted as invalid UTF-8 already (a Docker part held some): its
    other parts' invalid UTF-8 is not counted again (:meth:`LineParser._part`)."""
    cr: bool = False
    """Whether the text so far (kept or dropped) ends in ``\r``: the CRLF end of a complete
    line is no part of it, also when the limit cut it off with the text before it."""
    starts: dict[object, int] = field(default_factory=dict)
    """Per file (:attr:`LineParser.origin`) the offset of the group's first part in it: a group
    can span a rotation, and no file's checkpoint may pass the start of its parts."""
    read_at: float = 0.0
    """When its newest part was read (the reader's clock, :attr:`LineParser.reading_at`): the
    wait for its next part is timed from it, per stream, not from the file's newest line --
    another stream's lines must not hold it."""


class LineParser:
    """Base class: turns complete physical lines into logical :class:`Lines`."""

    format_name = "plain"

    def __init__(self, max_line_bytes: int = 256 * 1024) -> None:
        self.max_line_bytes = max_line_bytes
        self.times = TimeParser()
        self._partials: dict[str, _Partial] = {}
        self.origin: object = None
        """The file the lines being fed come from (set by the reader before :meth:`feed`).
        One parser serves all files of a source, so that a split line whose parts straddle a
        rotation is joined; offsets are per file, hence the tag."""
        self.reading_at = 0.0
        """The reader's clock (monotonic) when the lines being fed were read, set with
        :attr:`origin`: a part fed now is stamped with it (:attr:`_Partial.read_at`)."""

    def new_lines(self) -> Lines:
        return Lines()

    def reset(self) -> None:
        """Forget unfinished groups (the file changed under us)."""
        self._partials.clear()

    def pending_start(self, origin: object = None) -> int | None:
        """Offset in file ``origin`` (default: the current one) where the earliest unfinished
        group has its first part there, or None: never checkpoint that file past it, or a
        restart would lose the group's first parts."""
        if not self._partials:
            return None
        key = self.origin if origin is None else origin
        starts = [s for p in self._partials.values() if (s := p.starts.get(key)) is not None]
        return min(starts) if starts else None

    def retag(self, old: object, new: object) -> None:
        """File ``old`` continues as file ``new`` at the same offsets (a copytruncate copy)."""
        for p in self._partials.values():
            if old in p.starts:
                p.starts[new] = p.starts.pop(old)

    def pending_origins(self, streams: Collection[str] | None = None) -> set[object]:
        """Files holding parts of a group that is not complete yet (of ``streams`` only, when
        given)."""
        return {
            o
            for stream, p in self._partials.items()
            if streams is None or stream in streams
            for o in p.starts
        }

    def waiting_since(self, read_before: float) -> list[str]:
        """Streams whose unfinished group got its newest part before ``read_before`` (the
        reader's clock): their next part is overdue."""
        return [stream for stream, p in self._partials.items() if p.read_at < read_before]

    def pending_streams(self) -> list[str]:
        """Streams with a split line waiting for its next part."""
        return list(self._partials)

    def open_in(self, origin: object) -> list[str]:
        """Streams with a split line waiting for its next part that has parts in file
        ``origin``."""
        return [stream for stream, p in self._partials.items() if origin in p.starts]

    def overdue(self, now: float, split_seconds: float) -> list[str]:
        """Streams whose split line has waited ``split_seconds`` since its newest part was
        read (the reader's clock ``now``): shipped as it is at the live file's end."""
        return self.waiting_since(now - split_seconds)

    def wait_seconds(self, split_seconds: float, streams: Collection[str] | None = None) -> float:
        """How long open lines (of ``streams``) wait for what comes next: a split line its next
        part, :data:`~shipper.split_lines.SPLIT_FLUSH_SECONDS` (``split_seconds``)."""
        return split_seconds

    def records_only(self, streams: Collection[str] | None = None) -> bool:
        """Whether what is open (in ``streams``) is only ``--multiline`` records, no split
        line: never here (see :class:`shipper.multiline.MultilineParser`)."""
        return False

    def feed(self, lines: list[bytes], base: int) -> Lines:
        raise NotImplementedError

    def flush(
        self,
        origin: object,
        at: int,
        every: bool = False,
        streams: Collection[str] | None = None,
    ) -> Lines:
        """The unfinished groups whose parts all lie in file ``origin`` (``every``: all
        groups; ``streams``: only those streams' groups), as they are: their last part is not
        coming (the container died mid-line, or it was in a file lost to rotation) or not
        soon. Fluent Bit does the same after ``Docker_Mode_Flush`` seconds. A part arriving
        later starts a new line.

        They get offsets ``at``, ``at + 1``, ... in ``origin`` (one past its read position:
        above every line read from it, whatever the stream, and below the next line's end),
        since the aggregator drops a record whose offset is not above those it has."""
        out = self.new_lines()
        for stream, p in list(self._partials.items()):
            if not every and set(p.starts) != {origin}:
                continue
            if streams is not None and stream not in streams:
                continue
            del self._partials[stream]
            self._emit_group(out, at, stream, p, complete=False)
            at += 1
        return out

    # -- shared helpers --------------------------------------------------------------------

    def _emit(self, out: Lines, offset: int, t: str, t_ns: int, stream: str, log: str) -> None:
        """A line of ``out``, cut at the limit with its marker (:func:`cut_line`); ``log`` may
        hold undecoded bytes only when it is over the limit (:func:`decode_line`)."""
        if len(log) * 4 > self.max_line_bytes:
            log, dropped = cut_line(log, self.max_line_bytes)
            if dropped:
                log += TRUNCATION_MARKER.format(dropped=dropped)
                out.truncated += 1
        out.add(offset, t, t_ns, stream, log)

    def _part(
        self,
        out: Lines,
        start: int,
        end: int,
        t: str,
        stream: str,
        text: str,
        last: bool,
        counted: bool = False,
    ) -> None:
        """One part of a possibly split line: joined with its predecessors, emitted when last.

        ``text`` holds no ``\n``; the ``\r`` of a CRLF line end is stripped here, after
        joining, since the writer's split may fall between the ``\r`` and the ``\n``.
        ``counted``: the part's invalid UTF-8 was counted in ``out`` as a line's (a Docker
        entry is decoded alone); the count is taken back when an earlier part of the line was
        counted already: one count per line, as a line of one part has."""
        p = self._partials.get(stream)
        if p is not None and counted:
            if p.invalid_utf8:
                out.invalid_utf8 -= 1
            p.invalid_utf8 = True
        if p is None:
            t_ns = self.times.to_ns(t)
            if t_ns is None:
                t_ns = self._read_time(out)
            if last:
                if text[-1:] == "\r":
                    text = text[:-1]
                self._emit(out, end, t, t_ns, stream, text)
                return
            p = self._partials[stream] = _Partial(start, t, t_ns, [], invalid_utf8=counted)
        p.starts.setdefault(self.origin, start)
        p.read_at = self.reading_at
        if text:  # Docker's last part of a line split between its \r and \n is empty
            p.cr = text[-1] == "\r"
        room = self.max_line_bytes - p.size
        if len(text) <= room:
            p.parts.append(text)
            p.size += len(text)
        else:
            keep = max(room, 0)
            if not p.dropped:  # what is kept so far ends where this part starts
                before = text[max(keep - 3, 0) : keep]
                for kept in reversed(p.parts):
                    if len(before) >= 3:
                        break
                    before = kept[-3:] + before
                keep = _past_continuation(text, keep, before)
            p.parts.append(text[:keep])
            p.size += keep
            p.dropped += _utf8_len(text[keep:])
        if last:
            del self._partials[stream]
            self._emit_group(out, end, stream, p, complete=True)

    @staticmethod
    def _read_time(out: Lines) -> int:
        """The event time of a line whose runtime time does not parse or an EventTime cannot
        carry: the read time, counted in ``out``. Fluent Bit keeps such a record too: one odd
        line must not stop its file (its time text stays in the record)."""
        out.bad_times += 1
        return time.time_ns()

    def _emit_group(
        self, out: Lines, offset: int, stream: str, p: _Partial, complete: bool
    ) -> None:
        """The parts of ``p`` as one line (marked when parts were cut at the line limit); a
        ``complete`` line loses the ``\r`` of its CRLF end, before it is cut: as a line of one
        part does (a line of the limit and a CRLF end was kept whole in one part, but cut in
        several, with a marker of the \r alone)."""
        if complete and p.cr:
            if p.dropped:
                p.dropped -= 1  # past the limit: the last byte dropped
            else:  # (before the join: whether the line is to be cut is told without it)
                last = max(i for i, text in enumerate(p.parts) if text)
                p.parts[last] = p.parts[last][:-1]
        log = self._join(p.parts, out, bool(p.dropped))
        if p.dropped:
            # The parts were kept up to the limit in characters (cheap while they come):
            # multi-byte text held up to 4 times --max-line-bytes, and the marker counted
            # characters. The line is cut to the limit in bytes here, and says so in the
            # bytes of the line as the file holds them (those of a CRI line that are not
            # UTF-8 are still undecoded here, as in a line of one part: cut_line).
            log, over = cut_line(log, self.max_line_bytes)
            out.truncated += 1
            marker = TRUNCATION_MARKER.format(dropped=p.dropped + over)
            out.add(offset, p.time, p.time_ns, stream, log + marker)
            return
        self._emit(out, offset, p.time, p.time_ns, stream, log)

    def _join(self, parts: list[str], out: Lines, cut: bool) -> str:
        """The text of a split line's parts, joined (the parts are text already here; ``cut``:
        some were dropped at the limit)."""
        return "".join(parts)

    def _raw(self, out: Lines, end: int, raw: bytes, counted: bool = False) -> None:
        """A line the format cannot parse: shipped as it is (counted), never dropped.
        ``counted``: its invalid UTF-8, if any, is counted already (one count per line)."""
        out.malformed += 1
        t_ns = time.time_ns()
        text = decode_line(raw, None if counted else out, self.max_line_bytes)
        self._emit(out, end, now_rfc3339(t_ns), t_ns, "stdout", text)


class PlainParser(LineParser):
    """Plain text files: one line per record, time = when it was read."""

    format_name = "plain"

    def feed(self, lines: list[bytes], base: int) -> Lines:
        out = self.new_lines()
        t_ns = time.time_ns()
        t = now_rfc3339(t_ns)
        pos = base
        for raw in lines:
            pos += len(raw) + 1
            if raw[-1:] == b"\r":
                raw = raw[:-1]
            self._emit(out, pos, t, t_ns, "stdout", decode_line(raw, out, self.max_line_bytes))
        return out


#: The streams whose split parts are joined: the only ones a runtime writes. An entry of any
#: other stream (a file dockerd did not write) is a line of its own even without its ``\n``:
#: otherwise each of many made-up streams could hold an open line of ``--max-line-bytes``,
#: all flushed in one chunk, which is never cut, past the message cap every aggregator takes.
JOINED_STREAMS = frozenset(("stdout", "stderr"))


class DockerParser(LineParser):
    """Docker json-file: ``{"log":"...\\n","stream":"stdout","time":"...Z"}`` per line.

    Docker splits messages over 16 KiB into entries whose ``log`` does not end in ``\\n``; only
    the last part does. Parts are joined per stream (:data:`JOINED_STREAMS`).
    """

    format_name = "docker"

    def feed(self, lines: list[bytes], base: int) -> Lines:
        if lines and not self._partials and all(lines):
            fast = self._feed_block(lines, base)
            if fast is not None:
                return fast
        out = self.new_lines()
        docs: list | None = None
        joined = b",".join(lines)
        if lines and all(lines):
            try:
                docs = json.loads(b"[" + joined + b"]")
            except (ValueError, RecursionError):
                # Bad JSON, JSON nested too deeply to decode, or invalid UTF-8 somewhere:
                # go line by line.
                docs = None
            if docs is not None and len(docs) != len(lines):
                docs = None  # a line held several values ("{..},{..}"): go line by line
        counted: set[int] = set()  # lines whose invalid UTF-8 is counted: once per line
        if docs is None:
            docs = [self._decode(raw, out, counted, i) for i, raw in enumerate(lines)]
        if _SURROGATE_ESCAPE.search(joined):  # one C scan of the block
            _replace_surrogates(docs, out, counted)
        # The per-line loop: complete single-part lines with Docker's fixed-width time are
        # handled inline; everything else goes through the general path.
        cache = self.times._cache
        limit = self.max_line_bytes // 4
        partials = self._partials
        pos = base
        for i, (doc, raw) in enumerate(zip(docs, lines, strict=True)):
            start = pos
            pos += len(raw) + 1
            try:
                log = doc["log"]
                stream = doc["stream"]
                t = doc["time"]
                if type(log) is not str or type(stream) is not str or type(t) is not str:
                    # A list or null where text belongs (not Docker's output): never a part
                    # of a split line, whose parts are joined as text later.
                    self._lenient(out, start, pos, doc, raw, i in counted)
                    continue
                if (
                    not partials
                    and log.endswith("\n")
                    and len(log) <= limit
                    and 21 < len(t) < 31
                    and t.endswith("Z")
                ):
                    # Go's RFC3339Nano drops trailing zeros: 1 to 9 fraction digits.
                    sec = cache.get(t[:19])
                    frac = t[20:-1]
                    if sec is not None and t[19] == "." and frac.isdigit() and frac.isascii():
                        out.add(
                            pos,
                            t,
                            sec * 1_000_000_000 + int(frac.ljust(9, "0")),
                            stream,
                            _chomp(log),
                        )
                        continue
                bad = i in counted
                if log[-1:] == "\n":
                    self._part(out, start, pos, t, stream, log[:-1], True, bad)
                else:
                    last = stream not in JOINED_STREAMS
                    self._part(out, start, pos, t, stream, log, last, bad)
            except (TypeError, KeyError, AttributeError):
                self._lenient(out, start, pos, doc, raw, i in counted)
        return out

    def _feed_block(self, lines: list[bytes], base: int) -> Lines | None:
        """The whole block at C speed (one msgspec decode, then ``map`` over columns) when
        every line is a complete, ordinary Docker entry -- the common case; None sends it down
        the general path, which handles everything else and yields the same records."""
        n = len(lines)
        try:
            if n == 1:
                docs = _DOCKER_BLOCK.decode(b"[" + lines[0] + b"]")
            else:
                # One large allocation: the brackets ride on the first and last line.
                docs = _DOCKER_BLOCK.decode(
                    b",".join(
                        chain((b"[" + lines[0],), islice(lines, 1, n - 1), (lines[-1] + b"]",))
                    )
                )
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None  # not JSON, not UTF-8, a missing key, too deep an ``attrs``...
        if len(docs) != n:
            return None  # a line held several values ("{..},{..}")
        logs = list(map(_GET_LOG, docs))
        times = list(map(_GET_TIME, docs))
        lengths = set(map(len, times))
        # Set-of-characters tests are the C-speed form of "every line ends in ...".
        if (
            min(lengths) < 22  # Docker's RFC3339Nano in UTC: 1 to 9 fraction digits
            or max(lengths) > 30
            or set(map(getitem, times, repeat(-1))) != {"Z"}
            or set(map(getitem, times, repeat(19))) != {"."}
            or max(map(len, logs)) > self.max_line_bytes // 4
            or "" in logs
            or set(map(getitem, logs, repeat(-1))) != {"\n"}  # split parts: general path
        ):
            return None
        fractions = list(map(getitem, times, repeat(_FRACTION)))
        digits = "".join(fractions)
        if not (digits.isdigit() and digits.isascii()):
            return None
        seconds = list(map(getitem, times, repeat(_SECOND)))
        try:  # a block spans a few distinct seconds: parse each once (cached across blocks)
            lookup = {head: self.times.seconds(head) for head in set(seconds)}
        except ValueError:
            return None
        secs = map(lookup.__getitem__, seconds)
        nss = map(int, map(str.ljust, fractions, repeat(9), repeat("0")))
        out = Lines(
            # End offset of line i: base + the lengths of lines 0..i + i + 1 newlines.
            offsets=list(map(add, accumulate(map(len, lines)), range(base + 1, base + n + 1))),
            heads=list(map(Raw, map(HEAD.pack, repeat(EVENT_TIME), secs, nss))),
            logs=_chomp_all(logs),
            streams=list(map(_GET_STREAM, docs)),
            times=times,
        )
        out.nbytes = sum(map(len, out.logs))
        return out

    def _lenient(
        self, out: Lines, start: int, end: int, doc: object, raw: bytes, counted: bool
    ) -> None:
        """Docker omits empty ``log`` and ``stream``; anything else unexpected is raw text
        (``counted``: its invalid UTF-8 is counted already)."""
        if isinstance(doc, dict) and isinstance(doc.get("time"), str):
            log = doc.get("log", "")
            stream = doc.get("stream") or "stdout"
            if isinstance(log, str) and isinstance(stream, str):
                ends = log.endswith("\n")
                last = ends or stream not in JOINED_STREAMS
                text = log[:-1] if ends else log
                self._part(out, start, end, doc["time"], stream, text, last, counted)
                return
        self._raw(out, end, raw, counted)

    @staticmethod
    def _decode(raw: bytes, out: Lines, counted: set[int], index: int) -> object:
        """Line ``index`` of a block as JSON (None if it is not, or is nested too deeply to
        decode: a line, not the file, is bad); invalid UTF-8 is replaced, counted, and the
        line noted in ``counted``."""
        try:
            return json.loads(raw)
        except UnicodeDecodeError:
            out.invalid_utf8 += 1
            counted.add(index)
            try:
                return json.loads(raw.decode("utf-8", "replace"))
            except (ValueError, RecursionError):
                return None
        except (ValueError, RecursionError):
            return None


def _replace_surrogates(docs: list[object], out: Lines, counted: set[int]) -> None:
    """Lone surrogates in ``log`` values (JSON ``\\udc80`` escapes, or a surrogate's UTF-8
    bytes, which ``json.loads`` accepts and msgspec refuses) become U+FFFD, counted in
    ``out.invalid_utf8`` like invalid UTF-8 bytes (once per line, whatever else it holds:
    ``counted``): they are not text either, and the encoder would replace them uncounted.

    Only called for blocks holding such an escape (Docker itself writes none: Go's encoder
    emits raw UTF-8, and U+FFFD for bytes that are not)."""
    for index, doc in enumerate(docs):
        if isinstance(doc, dict):
            log = doc.get("log")
            if isinstance(log, str) and _SURROGATE.search(log):
                doc["log"] = _SURROGATE.sub("\ufffd", log)
                if index not in counted:  # invalid UTF-8 bytes too: still one line
                    counted.add(index)
                    out.invalid_utf8 += 1


_STREAMS = {b"stdout": "stdout", b"stderr": "stderr"}


class CriParser(LineParser):
    """CRI (containerd, CRI-O): ``<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <text>``."""

    format_name = "cri"

    def feed(self, lines: list[bytes], base: int) -> Lines:
        out = self.new_lines()
        pos = base
        for raw in lines:
            start = pos
            pos += len(raw) + 1
            fields = raw.split(b" ", 3)
            if len(fields) == 3:
                fields.append(b"")
            stream = _STREAMS.get(fields[1]) if len(fields) == 4 else None
            if stream is None or not fields[2] or not fields[0][:4].isdigit():
                self._raw(out, pos, raw)
                continue
            t = fields[0].decode("ascii", "replace")
            last = not fields[2].startswith(b"P")
            if last and stream not in self._partials:
                text = decode_line(fields[3], out, self.max_line_bytes)
            else:
                # A part of a split line: its bytes are kept as they are (see _join).
                text = fields[3].decode("utf-8", "surrogateescape")
            self._part(out, start, pos, t, stream, text, last)
        return out

    def _join(self, parts: list[str], out: Lines, cut: bool) -> str:
        """The parts of a split line decoded as one: containerd and CRI-O cut a long line
        at a byte count, often inside a multi-byte character, so each part is held as
        undecoded bytes (``surrogateescape``) and only the whole line is UTF-8 -- decoded
        part by part, the character became two U+FFFD, counted as two invalid lines. Bytes
        invalid in the joined line are replaced and counted once, as for any line; in a line
        to be cut (``cut``, or over the limit) they stay undecoded, as :func:`decode_line`
        leaves them in a line of one part, for its marker to count them as the file does."""
        log = "".join(parts)
        try:
            log.encode("utf-8")
        except UnicodeEncodeError:
            raw = log.encode("utf-8", "surrogateescape")
            return decode_line(raw, out, -1 if cut else self.max_line_bytes)
        return log


PARSERS: dict[str, type[LineParser]] = {
    "docker": DockerParser,
    "cri": CriParser,
    "plain": PlainParser,
}


def overlong_line(parser: LineParser, prefix: bytes, end: int, dropped: int) -> Lines:
    """A physical line longer than a read block: its first bytes, a marker, counted.

    The rest of the line was skipped without buffering it, so memory stays bounded whatever
    the writer does.
    """
    out = parser.new_lines()
    t_ns = time.time_ns()
    text = decode_text(prefix, out) + TRUNCATION_MARKER.format(dropped=dropped)
    out.truncated += 1
    out.add(end, now_rfc3339(t_ns), t_ns, "stdout", text)
    return out
