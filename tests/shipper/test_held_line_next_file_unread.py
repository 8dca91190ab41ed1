"""A line open at the end of a file read again from its ``.gz`` at a restart (see
:mod:`shipper.held_gz`), whose next file was written, rotated and compressed while the shipper
was down, never opened (R3s20 #3, H8s20).

That file holds the line's next entry, and compressed generations are not read: the line is
shipped as it was read (cut), and the unread file counted ``rotated_unseen``. Joined to the
live file's next line of its stream instead, two different lines were stored as one record
and nothing was counted -- with ``--multiline`` off since 5e54c32, with it on before that.
A compressed file no checkpoint knows that holds only the other stream's lines (it may have
been read and forgotten) does not cut the line: its next part is in the live file.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import shipper.held_gz as held_gz
from shipper.checkpoint import Registry
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line
from tests.shipper.tailing import (
    aggregator_keeps,
    commit,
    drain_sent,
    rotate_docker,
    set_clock,
    spec_for,
)


def _tailer(
    path: Path, losses: list[str] | None = None, multiline: str | None = None
) -> tuple[Tailer, Registry]:
    """A tailer of the Docker file at ``path``, its state beside it."""
    reg = Registry(path.parent / "state")
    on_loss = losses.append if losses is not None else None
    return Tailer(spec_for(path), reg, "h", 65536, on_loss=on_loss, multiline=multiline), reg


def _kill(t: Tailer, reg: Registry) -> None:
    """``kill -9`` after the registry's last save: nothing else is written."""
    reg.save()
    t.close()
    reg.close()


def _restart_after(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    first: bytes,
    unread: bytes,
    live: bytes,
    multiline: str | None = None,
    ack: bool = False,
    as_the_reader: bool = False,
) -> tuple[list[str], list[str]]:
    """(what the aggregator keeps, losses counted at the restart) when the Docker file holds
    ``first`` and is rotated with ``compress`` while read (acknowledged if ``ack``), the
    shipper is killed, and while it is down the next file holds ``unread`` and is rotated and
    compressed too; the live file then holds ``live``. With ``as_the_reader`` the restarted
    tailer is driven on an event loop as the source's reader drives it (:func:`_drain_async`)."""
    clock = [1000.0]
    set_clock(monkeypatch, clock)
    path = tmp_path / "c-json.log"
    path.write_bytes(first)
    t, reg = _tailer(path, multiline=multiline)
    sent = drain_sent(t)
    rotate_docker(path, max_file=5, compress=True)
    sent += drain_sent(t, ack=ack)
    _kill(t, reg)
    path.write_bytes(unread)
    rotate_docker(path, max_file=5, compress=True)
    path.write_bytes(live)
    losses: list[str] = []
    t, reg = _tailer(path, losses, multiline)
    drain = (lambda t: asyncio.run(_drain_async(t))) if as_the_reader else drain_sent
    sent += drain(t)
    clock[0] += 30  # past every wait: whatever is still open goes out
    sent += drain(t)
    t.close()
    reg.close()
    return aggregator_keeps(sent), losses


async def _drain_async(t: Tailer) -> list[tuple[str, int, str]]:
    """:func:`~tests.shipper.tailing.drain_sent` as :class:`shipper.source.SourceRunner`'s
    reader does it: at the end of the files it awaits :meth:`Tailer.poll_off_loop`."""
    out: list[tuple[str, int, str]] = []
    while (chunk := t.read()) is not None or await t.poll_off_loop():
        if chunk is None:
            continue
        lines, sid = chunk.lines, chunk.cursor.source_id
        out += [(log, off, sid) for log, off in zip(lines.logs, lines.offsets, strict=True)]
        commit(t, chunk)
    return out


@pytest.mark.parametrize("ack", [False, True], ids=["unacked", "acked"])
def test_a_split_line_whose_next_file_was_compressed_unread_is_not_joined_to_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ack: bool
) -> None:
    """``--multiline`` off: the stdout part ``head-`` ends the file at a ``compress``
    rotation; the next file (``tail`` ending that line, then ``y line``) is compressed while
    the shipper is down; the live file starts with another split line. ``head-`` goes out
    alone, the live file's line whole, and the unread file is counted."""
    kept, losses = _restart_after(
        tmp_path,
        monkeypatch,
        docker_line("before", 0) + docker_line("head-", 1, "stdout", nl=False),
        docker_line("tail", 2, "stdout") + docker_line("y line", 3, "stdout"),
        docker_line("z part ", 4, "stdout", nl=False) + docker_line("z end", 5, "stdout"),
        ack=ack,
    )
    assert sorted(kept) == ["before", "head-", "z part z end"]
    assert losses == ["rotated_unseen"]


def test_an_unread_file_of_the_other_stream_only_does_not_cut_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compressed file no checkpoint knows holds only stderr lines: the stdout line open
    in the held file continues in the live file, and is stored whole (as before)."""
    kept, losses = _restart_after(
        tmp_path,
        monkeypatch,
        docker_line("before", 0) + docker_line("head-", 1, "stdout", nl=False),
        docker_line("err 1", 2, "stderr") + docker_line("err 2", 3, "stderr"),
        docker_line("tail", 4, "stdout") + docker_line("after", 5, "stdout"),
    )
    assert sorted(kept) == ["after", "before", "head-tail"]
    assert losses == []


def test_a_record_whose_next_file_was_compressed_unread_gets_no_frame_of_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--multiline`` on: a stack trace open at the end of the held file, its next frame
    in the file compressed while the shipper was down; the live file starts with a frame of
    another trace. The held record goes out as it was read, and the unread file is counted."""
    kept, losses = _restart_after(
        tmp_path,
        monkeypatch,
        docker_line("java.lang.IllegalStateException: boom", 0)
        + docker_line("\tat x.X(X.java:1)", 1),
        docker_line("\tat x.X(X.java:2)", 2) + docker_line("plain y", 3),
        docker_line("\tat z.Z(Z.java:9)", 4) + docker_line("plain z", 5),
        multiline="java",
    )
    assert sorted(kept) == [
        "\tat z.Z(Z.java:9)",
        "java.lang.IllegalStateException: boom\n\tat x.X(X.java:1)",
        "plain z",
    ]
    assert losses == ["rotated_unseen"]


def test_only_the_unread_files_before_the_next_one_read_can_cut_a_held_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two files read again from their copies: the first ends with ``a-``, which the second
    completes (``b``) before it ends with ``c-`` itself; then a file compressed unread while
    the shipper was down. ``a-b`` is whole (the unread file is after the second copy, which
    holds its next part); only ``c-`` is cut."""
    clock = [1000.0]
    set_clock(monkeypatch, clock)
    path = tmp_path / "c-json.log"
    path.write_bytes(docker_line("a-", 0, "stdout", nl=False))
    t, reg = _tailer(path)
    sent = drain_sent(t)
    rotate_docker(path, max_file=5, compress=True)
    path.write_bytes(docker_line("b", 1, "stdout") + docker_line("c-", 2, "stdout", nl=False))
    sent += drain_sent(t, ack=False)
    rotate_docker(path, max_file=5, compress=True)
    sent += drain_sent(t, ack=False)
    _kill(t, reg)
    path.write_bytes(docker_line("d", 3, "stdout") + docker_line("y line", 4, "stdout"))
    rotate_docker(path, max_file=5, compress=True)
    path.write_bytes(docker_line("z part ", 5, "stdout", nl=False) + docker_line("z end", 6))
    losses: list[str] = []
    t, reg = _tailer(path, losses)
    sent += drain_sent(t)
    clock[0] += 30
    sent += drain_sent(t)
    reg.close()
    assert sorted(aggregator_keeps(sent)) == ["a-b", "c-", "z part z end"]
    assert losses == ["rotated_unseen"]


def test_a_line_of_a_stream_not_in_the_unread_file_is_not_cut_with_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--multiline`` off, a split line open on each stream at the end of the held file;
    the unread file holds only stderr (the end of ``err-``). ``err-`` goes out as it was
    read and the unread file is counted once; the stdout line continues in the live file and
    is stored whole (R7s20: it was cut into ``head-`` and ``tail``)."""
    kept, losses = _restart_after(
        tmp_path,
        monkeypatch,
        docker_line("before", 0)
        + docker_line("head-", 1, "stdout", nl=False)
        + docker_line("err-", 2, "stderr", nl=False),
        docker_line("errtail", 3, "stderr") + docker_line("err 2", 4, "stderr"),
        docker_line("tail", 5, "stdout") + docker_line("after", 6, "stdout"),
    )
    assert sorted(kept) == ["after", "before", "err-", "head-tail"]
    assert losses == ["rotated_unseen"]


def test_a_record_of_a_stream_not_in_the_unread_file_keeps_its_next_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--multiline`` on, a trace open on each stream at the end of the held file; the
    unread file holds only stderr lines. The stderr record goes out as it was read; the
    stdout record gets its next frame from the live file (R7s20: it was cut there)."""
    kept, losses = _restart_after(
        tmp_path,
        monkeypatch,
        docker_line("java.lang.IllegalStateException: boom", 0, "stdout")
        + docker_line("\tat x.X(X.java:1)", 1, "stdout")
        + docker_line("java.lang.RuntimeException: err", 2, "stderr")
        + docker_line("\tat e.E(E.java:1)", 3, "stderr"),
        docker_line("\tat e.E(E.java:2)", 4, "stderr") + docker_line("plain err", 5, "stderr"),
        docker_line("\tat x.X(X.java:2)", 6, "stdout") + docker_line("plain z", 7, "stdout"),
        multiline="java",
    )
    assert sorted(kept) == [
        "java.lang.IllegalStateException: boom\n\tat x.X(X.java:1)\n\tat x.X(X.java:2)",
        "java.lang.RuntimeException: err\n\tat e.E(E.java:1)",
        "plain z",
    ]
    assert losses == ["rotated_unseen"]


@pytest.mark.parametrize("unread_stream", ["stdout", "stderr"])
def test_the_unread_copy_is_scanned_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unread_stream: str
) -> None:
    """The scan of the compressed file no checkpoint knows reads it whole when it holds no
    entry of the open line's stream: about a second of the event loop per 100 MiB (no acks,
    heartbeats, ``/metrics`` or other sources meanwhile). The shipper's reader has it done in
    a worker thread before the poll that needs it, and the poll takes that answer: the copy
    is scanned once, off the loop's thread, and what is stored and counted is as before
    (the line cut and counted when the unread file holds its stream, else joined)."""
    threads: list[threading.Thread] = []
    scan = held_gz.streams_with_entries

    def spy(*args, **kwargs):  # passes everything through
        threads.append(threading.current_thread())
        return scan(*args, **kwargs)

    monkeypatch.setattr(held_gz, "streams_with_entries", spy)
    kept, losses = _restart_after(
        tmp_path,
        monkeypatch,
        docker_line("before", 0) + docker_line("err-", 1, "stderr", nl=False),
        docker_line("errtail", 2, unread_stream) + docker_line("other", 3, unread_stream),
        docker_line("tail", 4, "stderr") + docker_line("after", 5, "stdout"),
        as_the_reader=True,
    )
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()
    if unread_stream == "stderr":
        assert sorted(kept) == ["after", "before", "err-", "tail"]
        assert losses == ["rotated_unseen"]
    else:
        assert sorted(kept) == ["after", "before", "err-tail"]
        assert losses == []


def test_the_source_reader_polls_through_the_off_loop_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test above drives :meth:`Tailer.poll_off_loop` itself: this one checks that the
    shipper's reader (:class:`shipper.source.SourceRunner`) does too, at every look at the end
    of its files -- a reader calling :meth:`Tailer.poll` kept the scan on the event loop."""
    from shipper.config import load_config
    from shipper.daemon import Shipper
    from tests.shipper.receiver import Receiver
    from tests.shipper.shipping import shipper_args, stop_runners, until

    calls = {"poll": 0, "poll_off_loop": 0}
    poll, poll_off_loop = Tailer.poll, Tailer.poll_off_loop

    def counted_poll(self: Tailer, finishing: bool = False) -> bool:
        calls["poll"] += 1
        return poll(self, finishing)

    async def counted_poll_off_loop(self: Tailer, finishing: bool = False) -> bool:
        calls["poll_off_loop"] += 1
        return await poll_off_loop(self, finishing)

    monkeypatch.setattr(Tailer, "poll", counted_poll)
    monkeypatch.setattr(Tailer, "poll_off_loop", counted_poll_off_loop)
    log = tmp_path / "app.log"
    log.write_text("")  # nothing to send: the reader only looks at the file's end
    receiver = Receiver()
    cfg = load_config(
        shipper_args(tmp_path, receiver, "--path", str(log), "--poll-interval", "0.01")
    )

    async def go() -> None:
        shipper = Shipper(cfg)
        shipper._sync_sources(await shipper._discover())
        await until(lambda: calls["poll"] >= 3)
        await stop_runners(shipper)

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        receiver.close()
    assert calls["poll_off_loop"] >= calls["poll"] >= 3
