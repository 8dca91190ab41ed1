"""A copytruncate while a batch is in flight (R1s19 #3).

logrotate ``copytruncate`` copies ``app.log`` to ``app.log.1`` and truncates ``app.log`` while
the batch of its last lines is read but not yet acknowledged. The copy holds nothing past what
was read, so it is followed (A3s18) and read to its end at once. It used to be finished at its
end right then, having no batch of its own: a kill before the in-flight batch's ack restarted
past those lines, and they were lost. The batches in flight now count as the copy's, and their
acks advance the copy's checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shipper.checkpoint import Registry
from shipper.cursor import Chunk
from shipper.tailer import Tailer
from tests.shipper.tailing import aggregator_keeps, fresh_process, spec_for


def _tailer(path: Path, state: Path) -> tuple[Tailer, Registry]:
    reg = Registry(state)
    return Tailer(spec_for(path, "plain"), reg, "h", 65536), reg


def _read_all(t: Tailer) -> list[Chunk]:
    """Read until nothing changes, acknowledging nothing (each chunk counted outstanding, as
    the source's batch is when it is read)."""
    chunks: list[Chunk] = []
    while (chunk := t.read()) is not None or t.poll():
        if chunk is not None:
            chunk.cursor.outstanding += 1
            chunks.append(chunk)
    return chunks


def _ack(t: Tailer, chunk: Chunk) -> None:
    last = chunk.lines.offsets[-1] if chunk.lines.offsets else 0
    t.commit(chunk.cursor, chunk.resume, last)


def _sent(chunks: list[Chunk]) -> list[tuple[str, int, str]]:
    return [
        (log, off, c.cursor.source_id)
        for c in chunks
        for log, off in zip(c.lines.logs, c.lines.offsets, strict=True)
    ]


def _restart(t: Tailer, reg: Registry, path: Path, state: Path) -> tuple[Tailer, Registry]:
    """kill -9: the registry as it is on disk, nothing more acknowledged."""
    reg.save()
    t.close()
    reg.close()
    return _tailer(path, state)


@pytest.mark.parametrize("ack_before_kill", [False, True])
def test_a_copytruncate_while_a_batch_is_in_flight_loses_no_line_at_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ack_before_kill: bool
) -> None:
    """Killed before the in-flight batch's ack, the restart reads its lines again from the
    copy; acknowledged after the copy was followed, the restart reads nothing twice."""
    now = fresh_process(monkeypatch)
    path, state = tmp_path / "app.log", tmp_path / "state"
    path.write_bytes(b"a 0\na 1\n")
    t, reg = _tailer(path, state)
    delivered = _read_all(t)
    for c in delivered:
        _ack(t, c)
    with open(path, "ab") as f:
        f.write(b"b 0\nb 1\n")
    in_flight = _read_all(t)
    assert _sent(in_flight)
    shutil.copyfile(path, f"{path}.1")
    with open(path, "r+b") as f:
        f.truncate(0)
    now[0] += 10
    _read_all(t)  # the truncation seen, the copy followed and read to its end
    if ack_before_kill:
        for c in in_flight:
            _ack(t, c)
        delivered += in_flight
    t, reg = _restart(t, reg, path, state)
    now[0] += 10
    second = _read_all(t)
    for c in second:
        _ack(t, c)
    reg.close()
    sent = _sent(delivered) + _sent(second)
    kept = aggregator_keeps(sent)
    assert sorted(kept) == ["a 0", "a 1", "b 0", "b 1"], sent
    if ack_before_kill:  # the copy's entry was finished by the forwarded ack
        assert not _sent(second), _sent(second)
