"""``--multiline`` records shipped as they are (timeout, rotation, ``--once``): when, and what
the log says; and the split-line messages of sources without the option, unchanged.

Driven on real files with the tailer's fake clock (:func:`~tests.shipper.tailing.fresh_process`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipper.checkpoint import MAX_CUTS, Registry
from shipper.cursor import Chunk
from shipper.multiline import MULTILINE_FLUSH_SECONDS
from shipper.split_lines import SPLIT_FLUSH_SECONDS
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line
from tests.shipper.tailing import commit, drain, fresh_process, spec_for
from tests.shipper.test_multiline import JAVA, append, ml_tailer

LOGGER = "logq.shipper.tailer"
TRACE = "\n".join(JAVA)


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def _flush_messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(lv, m) for lv, m in _messages(caplog) if m.startswith("shipping")]


def test_without_the_option_a_split_line_before_an_empty_next_file_warns_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The option off: a split line at the end of a rotated file whose successor stays empty
    goes out after the split-line wait with the WARNING it always had (the patch must not
    change what sources without --multiline log)."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("whole", 0) + docker_line("part-a ", 1, nl=False))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path), reg, "h", 65536)
    assert drain(t) == ["whole"]
    os.rename(path, f"{path}.1")
    path.write_bytes(b"")
    with caplog.at_level("INFO", logger=LOGGER):
        assert drain(t) == []
        now[0] += SPLIT_FLUSH_SECONDS - 0.5
        assert drain(t) == []  # still waiting for its next part
        now[0] += 1
        assert drain(t) == ["part-a "]
    assert _flush_messages(caplog) == [
        (
            "WARNING",
            "shipping split lines as they are: their next parts were in files rotated away "
            f"unread lines=1 path={path}",
        )
    ]
    reg.close()


def test_a_record_before_an_empty_next_file_goes_after_the_multiline_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A trace at the end of a rotated file, the new file empty: shipped after the 2 s a
    record waits (not the 5 s of a split line), logged as a record, at INFO. The rotated copy
    is deleted at once (compressed away, as the kubelet does), so the 5 s rotate wait, which
    keeps a renamed file that is still on disk, does not hide the record's own wait."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["before", *JAVA], 0)
    t, reg = ml_tailer(path, tmp_path / "state")
    assert drain(t) == ["before"]
    os.rename(path, f"{path}.1")
    path.write_bytes(b"")
    os.unlink(f"{path}.1")
    with caplog.at_level("INFO", logger=LOGGER):
        assert drain(t) == []
        now[0] += MULTILINE_FLUSH_SECONDS + 0.5
        assert MULTILINE_FLUSH_SECONDS + 0.5 < SPLIT_FLUSH_SECONDS
        assert drain(t) == [TRACE]
    assert _flush_messages(caplog) == [
        (
            "INFO",
            "shipping open multi-line records as they are: its file was rotated and no next "
            f"line came for {MULTILINE_FLUSH_SECONDS:g} s lines=1 path={path}",
        )
    ]
    # the rotated file is let go once the record is acked (the empty new one has no entry yet)
    assert reg.items() == []
    reg.close()


def test_a_record_flushed_at_the_timeout_is_logged_as_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["before", *JAVA], 0)
    t, reg = ml_tailer(path, tmp_path / "state")
    with caplog.at_level("INFO", logger=LOGGER):
        assert drain(t) == ["before"]
        now[0] += MULTILINE_FLUSH_SECONDS + 0.1
        assert drain(t) == [TRACE]
    assert _flush_messages(caplog) == [
        (
            "INFO",
            "shipping an open multi-line record as it is: no next line has come for "
            f"{MULTILINE_FLUSH_SECONDS:g} s lines=1 path={path}",
        )
    ]
    ((_, st),) = reg.items()
    assert st.offset == path.stat().st_size and st.cuts == []  # acked: nothing open, no cut
    reg.close()


def _once(path: Path, state: Path) -> tuple[Tailer, Registry]:
    reg = Registry(state)
    return Tailer(spec_for(path), reg, "h", 65536, once=True, multiline="java"), reg


def test_once_flushes_nothing_after_a_trace_that_a_line_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """R1s18 #5: a --once run over a file whose trace is followed by lines ships them all
    without a flush (no line is held), writes no cut, and ends at the file's end."""
    fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["start", *JAVA, "next", "last"], 0)
    t, reg = _once(path, tmp_path / "state")
    with caplog.at_level("INFO", logger=LOGGER):
        assert drain(t) == ["start", TRACE, "next", "last"]
    assert t.finished()
    assert _flush_messages(caplog) == []
    ((_, st),) = reg.items()
    assert st.offset == path.stat().st_size and st.cuts == []
    reg.close()


def test_once_ships_a_trace_open_at_the_end_as_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["start", *JAVA], 0)
    t, reg = _once(path, tmp_path / "state")
    with caplog.at_level("INFO", logger=LOGGER):
        assert drain(t) == ["start", TRACE]
    assert _flush_messages(caplog) == [
        (
            "INFO",
            "shipping an open multi-line record as it is: the --once run ends here; a next "
            f"line written later starts a record of its own lines=1 path={path}",
        )
    ]
    t.close()
    reg.save()
    reg.close()
    append(path, ["\tat late.Frame.x(X.java:1)"], 20)
    t, reg = _once(path, tmp_path / "state")
    assert drain(t) == ["\tat late.Frame.x(X.java:1)"]  # the next run: after the record
    reg.close()


def _read_all(t: Tailer) -> list[Chunk]:
    chunks: list[Chunk] = []
    while (chunk := t.read()) is not None or t.poll():
        if chunk is not None:
            chunks.append(chunk)
            commit(t, chunk)
    return chunks


def test_a_cut_the_checkpoint_has_no_room_for_is_warned_about_once_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """R1s18 #2: a flush whose cut finds the checkpoint's cuts full (acks that do not come,
    or open records that overlapped for that long) used to drop it silently."""
    now = fresh_process(monkeypatch)
    path = tmp_path / "c-json.log"
    append(path, ["before", *JAVA], 0)
    t, reg = ml_tailer(path, tmp_path / "state")
    assert drain(t) == ["before"]
    t.cursors[0].state.cuts = [[10**9 + i, 1, "stdout"] for i in range(MAX_CUTS)]
    with caplog.at_level("INFO", logger=LOGGER):
        now[0] += MULTILINE_FLUSH_SECONDS + 0.1
        first = _read_all(t)
        append(path, JAVA, 20)
        _read_all(t)
        now[0] += MULTILINE_FLUSH_SECONDS + 0.1
        second = _read_all(t)
    assert [c.lines.logs for c in first] == [[TRACE]]
    assert [c.lines.logs for c in second] == [[TRACE]]
    assert first[0].lines.cuts_dropped == second[0].lines.cuts_dropped == 1
    warnings = [m for lv, m in _messages(caplog) if lv == "WARNING"]
    assert warnings == [
        f"a flushed line's cut is not kept in the checkpoint: it already holds {MAX_CUTS}; a "
        f"restart before the next acknowledgement may store these lines twice path={path}"
    ]
    reg.close()


def test_an_empty_plain_line_after_a_record_flushed_at_the_timeout_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain ``--path`` file: a traceback shipped at the timeout, then an empty line. The
    record used to go out one past the read position, where the empty line ends: the
    aggregator dropped the line as a resend of it."""
    from tests.shipper.tailing import aggregator_keeps, drain_sent
    from tests.shipper.test_multiline import PYTHON

    now = fresh_process(monkeypatch)
    path = tmp_path / "app.log"
    path.write_text("".join(f"{line}\n" for line in ["started", *PYTHON]))
    reg = Registry(tmp_path / "state")
    t = Tailer(spec_for(path, "plain"), reg, "h", 65536, multiline="python")
    sent = drain_sent(t)
    now[0] += MULTILINE_FLUSH_SECONDS + 0.1
    sent += drain_sent(t)
    with open(path, "a") as f:
        f.write("\nnext\n")
    sent += drain_sent(t)
    assert aggregator_keeps(sent) == ["started", "\n".join(PYTHON), "", "next"]
    offsets = [off for _, off, _ in sent]
    assert offsets == sorted(set(offsets))
    reg.close()
