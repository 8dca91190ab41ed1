"""Multi-line records: an application's stack trace joined into one record (``--multiline``).

A Java, Python or Go service writes a stack trace as many lines; the runtime stores one entry per
line, so without this layer ``container_logs`` holds a row per frame. :class:`MultilineParser`
sits on top of a source's format parser (which already joined the parts the *runtime* split, see
:mod:`shipper.formats`) and groups its logical lines, per stream, with the state machines of
Fluent Bit's built-in multiline parsers (``src/multiline/flb_ml_parser_java.c``,
``flb_ml_parser_python.c``, ``flb_ml_parser_go.c``; the rule semantics of
``src/multiline/flb_ml_rule.c``): a record starts at a line matching a ``start_state`` rule; a
next line matching a rule allowed in the record's state is appended with ``\\n`` and moves it
to that rule's state; any other line ends the record and starts a new one (when it matches a
start rule) or is a record of its own.

It is opt-in per source (:func:`choose`): a wrong join merges unrelated lines.

Exactly once. A record ends at the first line X of its stream that does not continue it
(physical end offset ``e``): the record is emitted at ``e - 1`` (the position of X's final
newline: above the offset of every line before X, of either stream, and below X's own), and X is
handled at once: it starts a record, or it is emitted at ``e``. No line waits for another to be
emitted, so offsets are unique, rise in the order records are emitted (as the aggregator's dedup
needs: it drops a record at or below the source's mark) and depend only on the file's bytes.
(A plain ``--path`` file has one stream, where ``e - 1`` is at worst the end of the record's
own last line. Docker json-file and CRI lines are never empty as the runtime writes them; an
empty one in a damaged or hand-written file, shipped raw, has no offset below its own that the
line before it has not taken: it neither continues nor ends a record, and is emitted at once at
its own offset, as another stream's line is, see :meth:`MultilineParser._line`.) A record
flushed at the timeout gets the offsets the tailer gives flushed split lines
(:meth:`shipper.split_lines.SplitLines._flushed`), which also records the cut so that a restart
cuts there again.

Quiet points. A file's checkpoint never passes :meth:`MultilineParser.pending_start`: the last
place where no record and no split line of any stream was open. A restart reads again from there
with empty state, exactly as the run before it did, so every record comes out again whole and
under the same offset (the tailer drops those acknowledged, the aggregator those it has).
Reading from the first line of an open record instead would meet the tail of another stream's
record shipped in between without its head. Every file read since that quiet point stays
pending (:meth:`MultilineParser.pending_origins`): a rotated file holding it is held as a file
holding a split line's first parts is (its checkpoint stays; the files after it stay at the
place they were opened) until a later quiet point is reached and the chunk reaching it is
acknowledged. So a restart (kill -9 included) at any moment, also inside a trace that straddles
rotations, ships every line in exactly one record, grouped as the uninterrupted run grouped it
(tests/shipper/test_multiline_restarts.py and the fuzzers) but for one thing: a record open at
the stop may be joined to a line read soon after the restart (the timeout follows the read
time). That holds provided the files read since that quiet point are still on disk, or their
gzip-compressed copies (read again from those, :mod:`shipper.held_gz`; a held rotated file
deleted during the downtime loses its open lines, as a split line's first parts are lost; a
graceful stop ships the open records first, see
:meth:`shipper.source.SourceRunner._ship_open_records`) and the checkpoint had room for
every timeout cut (:data:`~shipper.checkpoint.MAX_CUTS`, else WARNING and
``logq_shipper_cuts_dropped_total``). A copytruncate copy's checkpoint follows the acks of the
truncated file's batches (:meth:`~shipper.copytruncate.CopyTruncate._follow_acks`); a record
open at a truncation with no copy is shipped as it is at once
(:meth:`~shipper.copytruncate.CopyTruncate._flush_truncated`).

Grouping is a Python loop over lines (a few regular expressions each): slower than the format
parsers' block path, and paid only by the sources that asked for it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from msgspec import Raw

from shipper.errors import ConfigError
from shipper.formats import TRUNCATION_MARKER, LineParser, cut_line
from shipper.lines import Lines

START = "start_state"
"""The state a record is not in yet: the rules allowed there start one (Fluent Bit's name)."""

MULTILINE_FLUSH_SECONDS = 2.0
"""A record whose stream has had no next line for this long (read time) is shipped as it is.
Fluent Bit's built-in parsers wait 4 s (``FLB_ML_FLUSH_TIMEOUT``); a trace is written by one
logger call, its lines arrive within milliseconds, and a shorter wait keeps the last line of a
quiet service fresh. A line the runtime split waits the longer
:data:`~shipper.split_lines.SPLIT_FLUSH_SECONDS` for its next part first."""

MAX_RECORD_LINES = 1000
"""A record is cut (shipped, counted) before it grows past this many lines; its next lines go
on in a new record in the same state. With ``--max-line-bytes`` (the byte cap of a record, as
of any line) this bounds what a stream holds."""

NONE = "none"
"""The ``logq.multiline`` label value that turns grouping off for a container that a
``--multiline`` glob would select."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One transition: a line matching :attr:`pattern` in one of :attr:`states` joins the
    record (or starts one, from :data:`START`) and moves it to :attr:`to`."""

    states: frozenset[str]
    pattern: re.Pattern[str]
    to: str


def _rule(states: str, pattern: str, to: str) -> Rule:
    return Rule(frozenset(s.strip() for s in states.split(",")), re.compile(pattern), to)


_JAVA = "java_after_exception, java"
"""The states after an exception line or a frame: where frames, causes and "more" go on."""

JAVA = (
    # flb_ml_parser_java.c, rule for rule. Lines reach us without their "\n": "$" stands in
    # for it in the first rule (Fluent Bit matches the newline Docker keeps in ``log``).
    _rule(
        "start_state, java_start_exception",
        r"(.)(?:Exception|Error|Throwable|V8 errors stack trace)(?:[:\r\n]|$)",
        "java_after_exception",
    ),
    _rule("java_after_exception", r"^[\t ]*nested exception is:[\t ]*", "java_start_exception"),
    _rule("java_after_exception", r"^[\r\n]*$", "java_after_exception"),
    _rule(_JAVA, r"^[\t ]+(?:eval )?at ", "java"),
    _rule(_JAVA, r"^[\t ]+--- End of inner exception stack trace ---$", "java"),
    _rule(
        _JAVA,
        r"^--- End of stack trace from previous location where exception was thrown ---$",
        "java",
    ),
    _rule(_JAVA, r"^[\t ]*(?:Caused by|Suppressed):", "java_after_exception"),
    _rule(_JAVA, r"^[\t ]*... \d+ (?:more|common frames omitted)", "java"),
)
"""Java (and C#) exceptions: the exception line, ``at`` frames, ``Caused by:``,
``... 12 more``."""

_TRACEBACK = r"^Traceback \(most recent call last\):$"

PYTHON = (
    # flb_ml_parser_python.c: the first four rules. Fluent Bit's exception-line rule goes back
    # to start_state, so a next "Traceback" joined the record: two unrelated errors logged in
    # a row became one. Here its own state allows only what Python prints between chained
    # exceptions (the rules below), and a next traceback starts a record of its own.
    _rule("start_state, python_chained_blank", _TRACEBACK, "python"),
    _rule("python", r"^[\t ]+File ", "python_code"),
    # logq: a frame printed without its source line (frozen importlib frames, every
    # ImportError raised inside an import) is followed by the next frame, not by code.
    _rule("python_code", r"^[\t ]+File ", "python_code"),
    _rule("python_code", r"[^\t ]", "python"),
    _rule("python", r"^(?:[^\s.():]+\.)*[^\s.():]+:", "python_after_exception"),
    # logq's additions: Python 3.11+ position markers under a code line, a RecursionError's
    # "[Previous line repeated N more times]", an exception printed without a message
    # ("app.Shutdown", "KeyboardInterrupt"), Python 3.11+ exception groups (the "|" and "+"
    # block TaskGroup prints), and chained exceptions (PEP 3134), which Fluent Bit ships as
    # separate records.
    _rule("python", r"^[\t ]+[~^]+[\t ]*$", "python"),
    _rule("python", r"^[\t ]+\[Previous line repeated \d+ more times?\]$", "python"),
    # A bare exception: a dotted class name ("app.Shutdown"), or a builtin-looking one
    # ("KeyboardInterrupt"); not any lone word, which is more likely the next log line.
    _rule(
        "python",
        r"^(?:(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*"
        r"|[A-Z]\w*(?:Error|Exception|Interrupt|Exit|Iteration))$",
        "python_after_exception",
    ),
    _rule(
        "start_state, python_chained_blank",
        r"^[\t ]*\+ Exception Group Traceback \(most recent call last\):$",
        "python_group",
    ),
    _rule("python_group", r"^[\t ]*[|+]", "python_group"),
    _rule("python_group", r"^$", "python_blank"),
    _rule("python_after_exception", r"^$", "python_blank"),
    _rule(
        "python_blank",
        r"^(?:During handling of the above exception, another exception occurred|"
        r"The above exception was the direct cause of the following exception):$",
        "python_chained",
    ),
    _rule("python_chained", r"^$", "python_chained_blank"),
)
"""Python tracebacks, chained ones (``During handling of the above exception``) included."""

GO = (
    # flb_ml_parser_go.c, rule for rule.
    _rule("start_state", r"\bpanic: ", "go_after_panic"),
    _rule("start_state", r"http: panic serving", "go_goroutine"),
    _rule("go_after_panic", r"^$", "go_goroutine"),
    _rule("go_after_panic, go_after_signal, go_frame_1", r"^$", "go_goroutine"),
    _rule("go_after_panic", r"^\[signal ", "go_after_signal"),
    # logq: a panic raised while recovering from another ("panic: x [recovered]").
    _rule("go_after_panic", r"^\s+panic: ", "go_after_panic"),
    _rule("go_goroutine", r"^goroutine \d+ \[[^\]]+\]:$", "go_frame_1"),
    # logq: "(?:\[\.\.\.\])?" takes a generic function's frame (Go 1.18+: "main.Map[...](").
    _rule(
        "go_frame_1",
        r"^(?:[^\s.:]+\.)*[^\s.():]+(?:\[\.\.\.\])?\(|^created by ",
        "go_frame_2",
    ),
    _rule("go_frame_2", r"^\s", "go_frame_1"),
)
"""Go panics: ``panic:``, the blank line, each ``goroutine N [state]:`` with its frames."""

BUILTIN: dict[str, tuple[Rule, ...]] = {"java": JAVA, "python": PYTHON, "go": GO}
"""The parsers ``--multiline`` and the ``logq.multiline`` label name."""

ALLOWED = ", ".join(BUILTIN)


def parse_mapping(text: str, where: str = "--multiline") -> tuple[str, str]:
    """``GLOB=PARSER`` (``recipe*=java``) as (glob, parser); a ConfigError that says what is
    allowed otherwise, naming the setting as ``where`` (the flag, or a TOML file and key)."""
    glob, sep, name = text.partition("=")
    glob, name = glob.strip(), name.strip().lower()
    if not sep or not glob or not name:
        raise ConfigError(
            f"{where} {text!r} is not SERVICE_GLOB=PARSER; write e.g. 'recipe*=java' "
            f"(parsers: {ALLOWED})"
        )
    if name not in BUILTIN:
        raise ConfigError(
            f"{where} {text!r}: unknown parser {name!r}; use one of {ALLOWED} "
            f"(or label a container logq.multiline={NONE} to keep it out)"
        )
    return glob, name


def choose(service: str, label: str | None, mapping: Iterable[tuple[str, str]]) -> str | None:
    """The multiline parser of a source, or None (lines shipped one by one, the default).

    The container label ``logq.multiline`` wins (``none`` turns grouping off); else the first
    ``--multiline`` glob matching the service name (case-sensitive, as ``--exclude``). A label
    naming no parser is ignored (discovery warned about it)."""
    if label is not None:
        value = label.strip().lower()
        if value == NONE:
            return None
        if value in BUILTIN:
            return value
    for glob, name in mapping:
        if fnmatch.fnmatchcase(service, glob):
            return name
    return None


@dataclass(slots=True)
class _Record:
    """The open record of one stream."""

    state: str | None
    """Its rule state; None only for a split line cut by a flush and shipped on its own."""
    head: Raw
    """The packed event time of its first line (the record's time, as Fluent Bit's)."""
    time: str
    lines: list[str]
    size: int
    """UTF-8 bytes of its lines joined (the cap is ``--max-line-bytes``, in bytes)."""
    origins: set[object]
    """Files holding its lines (a trace can straddle a rotation)."""
    read_at: float
    """When its newest line was read (the reader's clock)."""
    ended_by_cap: bool = False
    end: int = 0
    """The offset its newest line ends at, in file :attr:`end_origin` (see
    :meth:`MultilineParser.flush`)."""
    end_origin: object = None


@dataclass(slots=True)
class _Stats:
    joined: int = 0
    cut: int = 0


class MultilineParser:
    """A format parser (:class:`~shipper.formats.LineParser`) whose lines are grouped into
    records; the tailer uses it as it uses the format parser (same methods)."""

    def __init__(
        self,
        inner: LineParser,
        rules: tuple[Rule, ...],
        flush_seconds: float | None = None,
        max_lines: int | None = None,
    ) -> None:
        """``flush_seconds`` and ``max_lines`` default to :data:`MULTILINE_FLUSH_SECONDS` and
        :data:`MAX_RECORD_LINES` as they are when the source starts."""
        self.inner = inner
        self.flush_seconds = MULTILINE_FLUSH_SECONDS if flush_seconds is None else flush_seconds
        self.max_lines = MAX_RECORD_LINES if max_lines is None else max_lines
        self.format_name = inner.format_name
        self._starts = [r for r in rules if START in r.states]
        self._next: dict[str, list[Rule]] = {}
        for r in rules:
            for state in r.states:
                self._next.setdefault(state, []).append(r)
        self._records: dict[str, _Record] = {}
        self._span: dict[object, int] = {}
        """Empty at a quiet point (no record, no split line open). Else, per file read since
        the last quiet point, where a restart reads it again from: the quiet point in the
        first, the first line read in the others (see :meth:`pending_start`)."""
        self._stats = _Stats()
        self._empty_apart = inner.format_name != "plain"
        """Whether a physically empty line stays out of records (Docker, CRI: it is malformed
        there, see :meth:`_line`); a plain file's empty line is text a record may hold."""

    # -- what the tailer and cursors read and set on a parser -------------------------------

    @property
    def origin(self) -> object:
        return self.inner.origin

    @origin.setter
    def origin(self, value: object) -> None:
        self.inner.origin = value

    @property
    def reading_at(self) -> float:
        return self.inner.reading_at

    @reading_at.setter
    def reading_at(self, value: float) -> None:
        self.inner.reading_at = value

    @property
    def max_line_bytes(self) -> int:
        return self.inner.max_line_bytes

    def new_lines(self) -> Lines:
        return self.inner.new_lines()

    def reset(self) -> None:
        """Forget open records and split lines (the file changed under us)."""
        self.inner.reset()
        self._records.clear()
        self._span.clear()

    def pending_origins(self, streams: Collection[str] | None = None) -> set[object]:
        """Files holding lines of an open record or parts of a split line (of ``streams``);
        without ``streams`` also every file read since the last quiet point, which a restart
        reads again (module docstring)."""
        out = self.inner.pending_origins(streams)
        for stream, rec in self._records.items():
            if streams is None or stream in streams:
                out |= rec.origins
        if streams is None:
            out |= self._span.keys()
        return out

    def record_origins(self) -> set[object]:
        """Files holding lines of an open record or parts of a split line (the span of files
        read since the last quiet point aside): a held file not among them has every line in
        a record already emitted."""
        out = self.inner.pending_origins(None)
        for rec in self._records.values():
            out |= rec.origins
        return out

    def pending_start(self, origin: object = None) -> int | None:
        """Where a restart must read file ``origin`` (default: the current one) again from
        while something is open: the last quiet point when it is in this file, else the first
        line read in it since, so that the lines read again are grouped as they were (module
        docstring). None at a quiet point."""
        key = self.origin if origin is None else origin
        span = self._span.get(key)
        inner = self.inner.pending_start(key)
        if span is None:
            return inner
        return span if inner is None else min(span, inner)

    def retag(self, old: object, new: object) -> None:
        """File ``old`` continues as file ``new`` at the same offsets (a copytruncate copy)."""
        self.inner.retag(old, new)
        for rec in self._records.values():
            if old in rec.origins:
                rec.origins.discard(old)
                rec.origins.add(new)
            if rec.end_origin is old:
                rec.end_origin = new
        if old in self._span:
            self._span[new] = self._span.pop(old)

    def overdue(self, now: float, split_seconds: float) -> list[str]:
        """Streams to flush at the live file's end: a split line whose next part is overdue,
        or a record with no next line for :attr:`flush_seconds` (and no split line of its
        stream on the way: that is its next line)."""
        streams = self.inner.overdue(now, split_seconds)
        splitting = set(self.inner.pending_streams())
        for stream, rec in self._records.items():
            if stream not in splitting and rec.read_at < now - self.flush_seconds:
                streams.append(stream)
        return streams

    def pending_streams(self) -> list[str]:
        """Streams with a split line waiting for its next part (open records aside)."""
        return self.inner.pending_streams()

    def open_in(self, origin: object) -> list[str]:
        """Streams with an open record or a split line waiting for its next part that has
        lines (parts) in file ``origin``."""
        streams = self.inner.open_in(origin)
        for stream, rec in self._records.items():
            if origin in rec.origins and stream not in streams:
                streams.append(stream)
        return streams

    def wait_seconds(self, split_seconds: float, streams: Collection[str] | None = None) -> float:
        """How long open lines (of ``streams``) wait for what comes next: ``split_seconds``
        while a split line waits for its next part, else :attr:`flush_seconds`."""
        splitting = self.inner.pending_streams()
        if any(streams is None or s in streams for s in splitting):
            return split_seconds
        return self.flush_seconds

    def records_only(self, streams: Collection[str] | None = None) -> bool:
        """Whether what is open (in ``streams``) is only records, no split line: the tailer's
        messages then speak of a multi-line record, not of a split line."""
        splitting = self.inner.pending_streams()
        return not any(streams is None or s in streams for s in splitting)

    # -- grouping ----------------------------------------------------------------------------

    def feed(self, lines: list[bytes], base: int) -> Lines:
        """The records the physical ``lines`` (the first at offset ``base``) complete.

        The block goes to the format parser whole when no split line is open before or after
        it and it gave one line per physical line (the usual case): then line ``i`` starts
        where line ``i - 1`` ended, and the quiet points are exact. Otherwise (a split part in
        it) the parser is set back and fed one physical line at a time."""
        out = self.inner.new_lines()
        if not self.inner.pending_streams():
            logical = self.inner.feed(lines, base)
            if len(logical) == len(lines) and not self.inner.pending_streams():
                _add_counts(out, logical)
                self._feed_whole(out, lines, logical, base)
                self._take_stats(out)
                return out
            self.inner.reset()  # nothing was open before the block: back to that
        return self._feed_each(out, lines, base)

    def _feed_whole(self, out: Lines, lines: list[bytes], logical: Lines, base: int) -> None:
        """:meth:`feed` of a block of whole lines, none split: :meth:`_before_line` and
        :meth:`_after_line` inlined (no split line is open here), the hot loop."""
        origin = self.origin
        origins = {origin}
        span, records = self._span, self._records
        start = base
        apart = self._empty_apart
        for i, end in enumerate(logical.offsets):
            if span:
                span.setdefault(origin, start)
            self._line(out, logical, i, origins, apart and not lines[i])
            if not records:
                span.clear()
            elif not span:
                span[origin] = start
            start = end

    def _busy(self) -> bool:
        """Whether a record or a split line of any stream is open."""
        return bool(self._records) or bool(self.inner.pending_streams())

    def _before_line(self, origin: object, start: int) -> None:
        """A line of ``origin`` starting at ``start`` is next: while something is open, the
        file joins the span (a restart reads it from here, or from where it joined)."""
        if self._span:
            self._span.setdefault(origin, start)

    def _after_line(self, origin: object, start: int) -> None:
        """The line that began at ``start`` is handled: nothing open is a quiet point (the
        span is dropped, and with it the files it held); an open thing begun by this very line
        starts a span there."""
        if not self._busy():
            self._span.clear()
        elif not self._span:
            self._span[origin] = start

    def _feed_each(self, out: Lines, lines: list[bytes], base: int) -> Lines:
        """:meth:`feed` one physical line at a time (split parts in the block)."""
        origin = self.origin
        inner = self.inner
        pos = base
        for raw in lines:
            start = pos
            pos += len(raw) + 1
            self._before_line(origin, start)
            before = {s: set(inner.pending_origins((s,))) for s in inner.pending_streams()}
            logical = inner.feed([raw], start)
            _add_counts(out, logical)
            empty = self._empty_apart and not raw
            for i in range(len(logical)):
                origins = before.get(logical.streams[i], set()) | {origin}
                self._line(out, logical, i, origins, empty)
            self._after_line(origin, start)
        self._take_stats(out)
        return out

    def flush(
        self,
        origin: object,
        at: int,
        every: bool = False,
        streams: Collection[str] | None = None,
    ) -> Lines:
        """The open records (and split lines) of ``streams`` (default all), as they are, at
        offsets ``at``, ``at + 1``, ... (see :meth:`shipper.formats.LineParser.flush`); without
        ``every`` only those whose lines all lie in ``origin``. A split line cut here joins
        its stream's record when it continues it.

        A plain file's record whose newest line is in ``origin`` goes out at that line's own
        end instead: ``at`` is one past the read position, where the next line ends when it is
        empty (plain text has empty lines, Docker and CRI entries never are), and the
        aggregator dropped that line as a resend. One stream, so no other record has the
        offset: a line after the record's newest would have ended it. A restart cutting there
        again (the cut in the checkpoint) gets the same offset."""
        out = self.inner.new_lines()
        cut = self.inner.flush(origin, at, every, streams)
        _add_counts(out, cut)
        tails = {s: i for i, s in enumerate(cut.streams)}
        chosen = [
            s
            for s, rec in self._records.items()
            if (streams is None or s in streams) and (every or rec.origins == {origin})
        ]
        for stream in sorted({*chosen, *tails}):
            rec = self._records.pop(stream, None) if stream in chosen else None
            i = tails.get(stream)
            for record in self._closing(rec, None if i is None else (cut, i)):
                if self.format_name == "plain" and record.end_origin is origin:
                    self._emit(out, record.end, stream, record)  # see the docstring
                else:
                    at = self._emit(out, at, stream, record) + 1
        if not self._busy():
            self._span.clear()
        self._take_stats(out)
        return out

    def _closing(self, rec: _Record | None, tail: tuple[Lines, int] | None) -> list[_Record]:
        """What a flush ships for one stream: its open record, with the split line cut at
        the same time (``tail``, line ``i`` of a flush of the format parser) joined to it when
        it continues the record, else each on its own."""
        if tail is None:
            return [] if rec is None else [rec]
        cut, i = tail
        text = cut.logs[i]
        alone = _Record(None, cut.heads[i], cut.times[i], [text], _size(text), set(), 0.0)
        if rec is None:
            return [alone]
        if self._follow(rec.state, text) is None or self._full(rec, text):
            return [rec, alone]
        rec.lines.append(text)
        rec.size += _size(text) + 1
        return [rec]

    def _line(
        self, out: Lines, logical: Lines, i: int, origins: set[object], empty: bool = False
    ) -> None:
        """One logical line: joined to its stream's record; else that record is emitted just
        below the line's offset (module docstring) and the line starts a record, or is
        emitted at once at its own offset.

        An ``empty`` line (a physically empty Docker or CRI line, shipped raw as malformed)
        is emitted at once at its own offset and leaves its stream's record open: just below
        its offset is the end of the line before it, whose offset may be taken already (by
        another stream's line), and the aggregator drops a second record at one offset
        without a count. The record ends at a later line, just below that line's offset,
        which is above this one's. Decided by the bytes alone, so a restart does the same."""
        stream, text, end = logical.streams[i], logical.logs[i], logical.offsets[i]
        if empty:
            _put(out, end, logical.heads[i], logical.times[i], stream, text)
            return
        rec = self._records.get(stream)
        if rec is None:
            state = self._follow(START, text)
        else:
            to = self._follow(rec.state, text)
            if to is not None and not self._full(rec, text):
                rec.lines.append(text)
                rec.size += _size(text) + 1
                rec.origins |= origins
                rec.read_at = self.reading_at
                rec.state = to
                rec.end, rec.end_origin = end, self.origin
                return
            if to is not None:  # full: cut here, the trace goes on in a new record
                rec.ended_by_cap = True
            del self._records[stream]
            self._emit(out, end - 1, stream, rec)
            state = to if to is not None else self._follow(START, text)
        if state is None:
            _put(out, end, logical.heads[i], logical.times[i], stream, text)
        else:
            self._records[stream] = self._open(logical, i, state, origins)

    def _open(self, logical: Lines, i: int, state: str | None, origins: set[object]) -> _Record:
        text = logical.logs[i]
        head, t = logical.heads[i], logical.times[i]
        rec = _Record(state, head, t, [text], _size(text), set(origins), self.reading_at)
        rec.end, rec.end_origin = logical.offsets[i], self.origin
        return rec

    def _follow(self, state: str | None, text: str) -> str | None:
        """The state a record in ``state`` moves to with line ``text``; None: not joined."""
        if state is None:
            return None
        for rule in self._starts if state == START else self._next.get(state, ()):
            if rule.pattern.search(text):
                return rule.to
        return None

    def _full(self, rec: _Record, text: str) -> bool:
        """Whether ``text`` would take ``rec`` past :attr:`max_lines` or ``--max-line-bytes``."""
        return (
            len(rec.lines) >= self.max_lines
            or rec.size + 1 + _size(text) > self.inner.max_line_bytes
        )

    def _emit(self, out: Lines, offset: int, stream: str, rec: _Record) -> int:
        """``rec`` as one line of ``out`` at ``offset``; returns the offset."""
        log = "\n".join(rec.lines)
        if len(log) * 4 > self.inner.max_line_bytes:
            log, dropped = cut_line(log, self.inner.max_line_bytes)
            if dropped:
                log += TRUNCATION_MARKER.format(dropped=dropped)
                out.truncated += 1
        _put(out, offset, rec.head, rec.time, stream, log)
        if len(rec.lines) > 1:
            self._stats.joined += 1
        if rec.ended_by_cap:
            self._stats.cut += 1
        return offset

    def _take_stats(self, out: Lines) -> None:
        out.multiline_joined += self._stats.joined
        out.multiline_cut += self._stats.cut
        self._stats = _Stats()


def _size(text: str) -> int:
    """UTF-8 size of a line (ASCII, the usual trace, without encoding it)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _put(out: Lines, offset: int, head: Raw, t: str, stream: str, log: str) -> None:
    out.offsets.append(offset)
    out.heads.append(head)
    out.logs.append(log)
    out.streams.append(stream)
    out.times.append(t)
    out.nbytes += len(log)


def _add_counts(out: Lines, other: Lines) -> None:
    """The format parser's counts (bad input it met) carried over to the records."""
    out.truncated += other.truncated
    out.invalid_utf8 += other.invalid_utf8
    out.malformed += other.malformed
    out.bad_times += other.bad_times
