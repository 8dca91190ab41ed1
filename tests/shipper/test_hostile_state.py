"""Hostile local state: a corrupt checkpoint registry, a config file that is not UTF-8, a bad
``--metrics-listen``, a source that cannot be read.

What an SRE expects (as from Fluent Bit's DB or Vector's checkpoints): the shipper starts, says
in one line which file was bad and what it reset, and reads the affected files from where the
read-from-start policy says -- never crashing with a traceback, never hanging ``--once``, never
losing lines. Re-read lines keep their ``source_id`` wherever the entry still names it, so the
aggregator drops the ones it already stored (its per-source offset dedup) instead of duplicating
them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from shipper.checkpoint import FileState, Registry, file_key
from shipper.config import Endpoint, load_config
from shipper.daemon import Shipper
from shipper.errors import ConfigError, ShipperError
from shipper.fingerprint import fingerprint
from tests.shipper.hostgen import docker_line
from tests.shipper.receiver import Receiver, free_port
from tests.shipper.shipping import empty_root, shipper_args
from tests.shipper.test_once import run_shipper

GOOD = {"source": "file:/x", "path": "/x", "source_id": "h:1:ab", "offset": 10, "acked": 9}


def saved_key(name: str) -> str:
    """A checkpoint key of the form the shipper saves (``<dev>:<ino>:<fingerprint>``)."""
    return f"1:2:{name}"


def load(tmp_path: Path, doc: object, caplog: pytest.LogCaptureFixture) -> Registry:
    (tmp_path / "checkpoints.json").write_text(json.dumps(doc))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="logq.shipper.checkpoint"):
        reg = Registry(tmp_path)
    reg.close()
    return reg


def identity(path: Path) -> tuple[os.stat_result, str]:
    """``(stat, fingerprint)`` of a log file, as the tailer keys its checkpoint."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st, fp = os.fstat(fd), fingerprint(fd)
    finally:
        os.close(fd)
    assert fp is not None
    return st, fp


@pytest.mark.parametrize(
    "doc, why",
    [
        ([1, 2, 3], "a JSON array, not an object"),
        ("files", "a JSON string, not an object"),
        ({"files": [1]}, "files is a JSON array"),
        ({"files": 7}, "files is a JSON number"),
    ],
)
def test_registry_of_the_wrong_shape_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, doc: object, why: str
) -> None:
    reg = load(tmp_path, doc, caplog)
    assert reg.items() == []
    (moved,) = tmp_path.glob("checkpoints.bad-*")
    assert json.loads(moved.read_text()) == doc  # kept for inspection
    (record,) = caplog.records
    assert why in record.getMessage() and str(tmp_path / "checkpoints.json") in record.getMessage()
    assert "read from its start" in record.getMessage()


@pytest.mark.parametrize(
    "content",
    [b"\xff\x00\xfe", b"{garbage", b"[" * 100_000],
    ids=["binary", "garbage", "deeply-nested"],
)
def test_unreadable_registry_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    (tmp_path / "checkpoints.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="logq.shipper.checkpoint"):
        reg = Registry(tmp_path)
    reg.close()
    assert reg.items() == []
    assert list(tmp_path.glob("checkpoints.bad-*"))
    assert "unreadable" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "entry, problem",
    [
        (5, "entry is a JSON number"),
        ([1], "entry is a JSON array"),
        ({**GOOD, "path": 5}, "path is 5"),
        ({**GOOD, "source_id": None}, "source_id is None"),
        ({k: v for k, v in GOOD.items() if k != "source"}, "source is None"),
    ],
)
def test_unusable_entry_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, entry: object, problem: str
) -> None:
    reg = load(tmp_path, {"files": {"1:2:ab": entry, "1:3:cd": GOOD}}, caplog)
    assert [k for k, _ in reg.items()] == ["1:3:cd"]  # the good entry survives
    (record,) = caplog.records
    text = record.getMessage()
    assert problem in text and "key=1:2:ab" in text and str(reg.path) in text


@pytest.mark.parametrize(
    "bad",
    [
        "junk",
        "x:y:z",
        "1:2",
        "1:2:",
        ":2:ab",
        "1:2:ab:cd",
        "+1:2:ab",
        " 1:2:ab",
        "1_0:2:ab",
        "\u0661:2:ab",
        pytest.param("9" * 5000 + ":2:ab", id="5000-digits"),
    ],
)
def test_entry_under_a_malformed_key_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    """An entry (otherwise valid) whose key is not ``<dev>:<ino>:<fingerprint>`` as the
    shipper writes it was loaded: resuming its source split the key and ``int()`` failed on
    it (ValueError), so ``--once`` ended with an internal error and a daemon retried the
    source forever. It is dropped at load like any unusable entry; a ``finished`` one too."""
    doc = {"files": {bad: GOOD, "1:3:cd": GOOD}, "finished": {bad: GOOD}}
    reg = load(tmp_path, doc, caplog)
    assert [k for k, _ in reg.items()] == ["1:3:cd"]
    assert reg.finished(bad) is None
    (record,) = caplog.records
    text = record.getMessage()
    assert "ignoring malformed checkpoint entry" in text and str(reg.path) in text
    assert "the key is not <device>:<inode>:<first-line hash>" in text


@pytest.mark.parametrize(
    "bad",
    [
        {"offset": -100},
        {"acked": -1},
        {"offset": 10**30},
        {"offset": 2**63},
        {"offset": "abc"},
        {"offset": 1.5},
        {"acked": True},
        {"offset": None},
    ],
    ids=repr,
)
def test_bad_position_restarts_the_file_keeping_its_source_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: dict[str, object]
) -> None:
    reg = load(tmp_path, {"files": {"1:2:ab": {**GOOD, **bad}}}, caplog)
    st = reg.get("1:2:ab")
    assert st is not None
    assert (st.offset, st.acked, st.source_id, st.path) == (0, 0, "h:1:ab", "/x")
    (record,) = caplog.records
    text = record.getMessage()
    name, value = next(iter(bad.items()))
    assert f"{name}={value!r}"[:40] in text and "file=/x" in text
    assert "read again from its start" in text and str(reg.path) in text


def test_other_damage_is_repaired_quietly_or_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    doc = {
        "files": {
            saved_key("a"): {**GOOD, "epoch": -3},
            saved_key("b"): {**GOOD, "updated": float("nan"), "from_a_newer_shipper": 1},
            saved_key("c"): {**GOOD, "updated": 1e300},
        }
    }
    (tmp_path / "checkpoints.json").write_text(json.dumps(doc))  # NaN: what json writes
    with caplog.at_level(logging.WARNING, logger="logq.shipper.checkpoint"):
        reg = Registry(tmp_path)
    reg.close()
    a, b, c = (reg.get(saved_key(k)) for k in "abc")
    assert a is not None and (a.epoch, a.offset, a.acked) == (0, 10, 9)
    assert b is not None and b.updated == 0.0 and (b.offset, b.acked) == (10, 9)
    assert c is not None and c.updated == 0.0
    assert [r.getMessage().count("epoch=-3") for r in caplog.records] == [1]


def test_where_the_acknowledged_batches_end_is_optional_and_repaired_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``acked_to`` (where the acknowledged batches of a file whose checkpoint is kept back
    end) is new: entries of older shippers load without it, and a damaged one is set to 0 --
    only a loss may then be counted for a file compressed while the shipper was down -- while
    the positions stay."""
    doc = {
        "files": {
            saved_key("old"): GOOD,
            saved_key("kept"): {**GOOD, "acked_to": 120},
            saved_key("bad"): {**GOOD, "acked_to": -4},
        }
    }
    reg = load(tmp_path, doc, caplog)
    old, kept, bad = (reg.get(saved_key(k)) for k in ("old", "kept", "bad"))
    assert old is not None and old.acked_to == 0 and (old.offset, old.acked) == (10, 9)
    assert kept is not None and kept.acked_to == 120
    assert bad is not None and bad.acked_to == 0 and (bad.offset, bad.acked) == (10, 9)
    (record,) = caplog.records
    assert "acked_to=-4" in record.getMessage() and "key=1:2:bad" in record.getMessage()


def test_split_line_cuts_are_kept_or_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged ``cuts`` list is dropped (a flushed split line may then be stored twice after
    a restart, never lost); the entry's positions stay."""
    doc = {
        "files": {
            saved_key("ok"): {**GOOD, "cuts": [[120, 121], [300, 301]]},
            saved_key("short"): {**GOOD, "cuts": [[120]]},
            saved_key("text"): {**GOOD, "cuts": "120"},
            saved_key("negative"): {**GOOD, "cuts": [[-1, 5]]},
            saved_key("bool"): {**GOOD, "cuts": [[True, 5]]},
        }
    }
    reg = load(tmp_path, doc, caplog)
    assert reg.get(saved_key("ok")).cuts == [[120, 121], [300, 301]]  # type: ignore[union-attr]
    for name in ("short", "text", "negative", "bool"):
        st = reg.get(saved_key(name))
        assert st is not None and st.cuts == [] and (st.offset, st.acked) == (10, 9), name
    assert sum("cuts=" in r.getMessage() for r in caplog.records) == 4


def test_registry_roundtrip_survives_repair(tmp_path: Path) -> None:
    doc = {"files": {saved_key("k"): {**GOOD, "offset": -1}}}
    (tmp_path / "checkpoints.json").write_text(json.dumps(doc))
    reg = Registry(tmp_path)
    reg.save()
    reg.close()
    again = Registry(tmp_path)
    st = again.get(saved_key("k"))
    again.close()
    assert st is not None and (st.offset, st.acked, st.source_id) == (0, 0, "h:1:ab")


def _many_files(reg: Registry, n: int) -> None:
    for i in range(n):
        state = FileState(source="s", path=f"/p/{i}", source_id=f"h:{i}", offset=i, acked=i)
        reg.put(f"1:{i}:k", state)


def test_short_writes_of_a_full_disk_never_leave_a_truncated_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nearly full disk makes write(2) return short without an error (the auditor saw an
    8,192-byte registry of invalid JSON renamed into place), then fail with ENOSPC."""
    import errno

    import shipper.checkpoint as checkpoint

    reg = Registry(tmp_path)
    _many_files(reg, 10)
    reg.save()
    before = (tmp_path / "checkpoints.json").read_bytes()
    _many_files(reg, 300)
    real_write = os.write
    calls = []

    def full_disk(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:4096]))  # short, and no error
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        reg.save()
    assert (tmp_path / "checkpoints.json").read_bytes() == before  # the last good one stays
    assert not (tmp_path / ".checkpoints.json.tmp").exists()

    # Short writes that succeed in the end give the whole document.
    monkeypatch.setattr(checkpoint.os, "write", lambda fd, data: real_write(fd, bytes(data[:999])))
    reg.save()
    reg.close()
    again = Registry(tmp_path)
    assert len(again.items()) == 300
    again.close()


# --- through the real program ------------------------------------------------------------------


def _args(tmp_path: Path, receiver: Receiver) -> list[str]:
    plain = str(tmp_path / "plain" / "*.log")
    return shipper_args(tmp_path, receiver, "--path", plain, "--once", "--retry-timeout", "10")


@pytest.mark.integration
@pytest.mark.parametrize(
    "corrupt",
    ["negative", "huge", "not-a-number", "wrong-shape", "files-list", "junk", "x:y:z", "1:2"],
)
def test_once_with_a_corrupt_checkpoint_ships_every_line_once(tmp_path: Path, corrupt: str) -> None:
    """Before the fix: a negative offset hung ``--once`` (EINVAL from pread, retried every
    second); the wrong shapes crashed with AttributeError; an entry under a key the shipper
    does not write ended it with an internal error (ValueError)."""
    receiver = Receiver()
    try:
        (tmp_path / "plain").mkdir()
        log = tmp_path / "plain" / "app.log"
        log.write_text("".join(f"line-{i}\n" for i in range(5)))
        args = _args(tmp_path, receiver)
        first = run_shipper(*args)
        assert first.returncode == 0, first.stderr[-2000:]
        registry = tmp_path / "state" / "checkpoints.json"
        doc = json.loads(registry.read_text())
        if corrupt in ("wrong-shape", "files-list"):
            doc = [1, 2, 3] if corrupt == "wrong-shape" else {"files": [1]}
        elif corrupt in ("junk", "x:y:z", "1:2"):  # a key the shipper does not write
            (entry,) = doc["files"].values()
            doc["files"] = {corrupt: entry}
        else:
            value = {"negative": -100, "huge": 10**30, "not-a-number": "abc"}[corrupt]
            for entry in doc["files"].values():
                entry["offset"] = entry["acked"] = value
        registry.write_text(json.dumps(doc))
        with log.open("a") as f:
            f.write("after\n")
        second = run_shipper(*args, timeout=90)
        assert second.returncode == 0, second.stderr[-2000:]
        assert "Traceback" not in second.stderr, second.stderr[-3000:]
        warned = [line for line in second.stderr.splitlines() if str(registry) in line]
        assert len(warned) == 1 and "from its start" in warned[0], second.stderr[-2000:]
        # Every line exactly once; the re-read ones were dropped as already stored.
        assert receiver.lines() == [f"line-{i}" for i in range(5)] + ["after"]
        assert receiver.duplicates == 5
    finally:
        receiver.close()


def test_once_gives_up_on_a_source_it_cannot_read(tmp_path: Path) -> None:
    """A read error that does not go away ends ``--once`` after ``--retry-timeout`` with one
    line naming the source, instead of retrying forever."""
    (tmp_path / "plain").mkdir()
    log = tmp_path / "plain" / "app.log"
    log.write_text("one\ntwo\n")
    cfg = load_config(
        [
            *("--aggregator", f"127.0.0.1:{free_port()}", "--hostname", "h"),
            *("--docker-root", str(empty_root(tmp_path))),
            *("--cri-root", str(empty_root(tmp_path))),
            *("--path", str(log), "--state-dir", str(tmp_path / "state")),
            *("--once", "--retry-timeout", "1", "--poll-interval", "0.05"),
        ]
    )

    async def go() -> None:
        shipper = Shipper(cfg)
        st, fp = identity(log)
        # A position pread refuses (EINVAL), as a registry written by a buggy shipper could hold.
        state = FileState(f"file:{log}", str(log), f"h:{st.st_ino:x}:{fp}", -5, 0)
        shipper.registry.put(file_key(st.st_dev, st.st_ino, fp), state)
        await shipper.run()

    with pytest.raises(ShipperError, match=r"cannot read source file:.*app\.log for 1 s"):
        asyncio.run(asyncio.wait_for(go(), 60))


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    conf = tmp_path / "latin1.toml"
    conf.write_bytes('hostname = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(byte 15"):
        load_config(["--config", str(conf)])
    with pytest.raises(ConfigError, match=r": is a directory; pass the TOML file in it"):
        load_config(["--config", str(tmp_path)])  # a directory


@pytest.mark.parametrize("value", ["127.0.0.1:99999", "127.0.0.1:65536", ":", "[]:9110", "h:port"])
def test_bad_metrics_listen_names_the_flag(value: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-listen address") as err:
        load_config(["--metrics-listen", value])
    assert "aggregator" not in str(err.value)


def test_metrics_listen_without_a_host_is_every_address() -> None:
    """``:9110`` listens on every address, IPv4 and IPv6 (see shipper.metrics); an aggregator
    to send to still needs a host."""
    assert load_config(["--metrics-listen", ":9110"]).metrics_listen == Endpoint("", 9110)
    with pytest.raises(ConfigError, match="bad aggregator address ':24224': no host"):
        load_config(["--aggregator", ":24224"])


def test_bad_aggregator_address_still_says_aggregator() -> None:
    with pytest.raises(ConfigError, match=r"bad aggregator address 'a:70000': port 70000"):
        load_config(["--aggregator", "a:70000"])


def test_main_prints_one_line_for_a_non_utf8_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipper.daemon import main

    conf = tmp_path / "bad.toml"
    conf.write_bytes(b"\xff\xfe = 1\n")
    assert main(["--config", str(conf), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(conf) in err and "UTF-8" in err


def test_checkpoint_past_the_end_is_read_as_new_content_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Offset beyond the file's size: truncated while down (copytruncate) -- or a corrupt
    offset, which looks the same. The file is read from its start under a new epoch (no loss);
    the warning names the file, so possible duplicates are not silent."""
    path, chunk, _ = _resumed_plain_file(tmp_path, caplog, 10**6, 10**6)
    assert chunk is not None and chunk.lines.logs == ["one", "two"]
    (record,) = caplog.records
    text = record.getMessage()
    assert "past the end" in text and str(path) in text and "offset=1000000" in text


def _resumed_plain_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, offset: int, acked: int
) -> tuple[Path, Any, FileState | None]:
    """A plain file ``app.log`` of two lines with a checkpoint at ``offset``/``acked``: the
    file, what a tailer started on it reads first, and its checkpoint after that."""
    from shipper.discover import SourceSpec

    path = tmp_path / "app.log"
    path.write_text("one\ntwo\n")
    reg = Registry(tmp_path / "state")
    try:
        st, fp = identity(path)
        key = file_key(st.st_dev, st.st_ino, fp)
        reg.put(key, FileState("file:app", str(path), "h:1:ab", offset, acked))
        spec = SourceSpec(key="file:app", path=path, format="plain", service="svc")
        return path, _first_read(spec, reg, caplog), reg.get(key)
    finally:
        reg.close()


def _first_read(spec: Any, reg: Registry, caplog: pytest.LogCaptureFixture) -> Any:
    """What a tailer of ``spec`` started on ``reg`` reads first (its warnings in ``caplog``)."""
    from shipper.tailer import Tailer

    tailer = Tailer(spec, reg, "h", 65536)
    with caplog.at_level(logging.WARNING, logger="logq.shipper.tailer"):
        tailer.start()
    chunk = tailer.read()
    tailer.close()
    return chunk


@pytest.mark.parametrize("offset", [4, 0], ids=["offset-after-one", "offset-0"])
def test_acknowledged_offset_past_the_end_is_read_as_new_content_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, offset: int
) -> None:
    """``acked`` beyond the file's size with a sound ``offset``: the file resumed at its
    offset, and every line at or below ``acked`` (all of them, and all those written later
    until the file passed it) was read and silently never sent. It is treated as an offset
    past the end: read from its start under a new epoch, with the same warning."""
    path, chunk, fresh = _resumed_plain_file(tmp_path, caplog, offset, 10**5)
    assert chunk is not None and chunk.lines.logs == ["one", "two"]
    assert fresh is not None and fresh.source_id != "h:1:ab" and fresh.epoch == 1
    (record,) = caplog.records
    text = record.getMessage()
    assert "acknowledged offset is past the end" in text and str(path) in text
    assert "acked=100000" in text and "size=8" in text


def test_acknowledged_offset_just_past_the_end_of_a_flushed_line_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A line flushed as it is at the end of the file (a Docker split line whose last part
    never came) is numbered one past the bytes read: its ack leaves ``acked`` past the file's
    size, legitimately (as a ``--once`` run leaves it). The restart resumes at the checkpoint
    under the same id, the next line sent, without a warning."""
    from shipper.discover import SourceSpec

    path = tmp_path / "c-json.log"
    data = docker_line("one", 0) + docker_line("cut short", 1, nl=False)
    path.write_bytes(data)
    reg = Registry(tmp_path / "state")
    try:
        st, fp = identity(path)
        key = file_key(st.st_dev, st.st_ino, fp)
        size = len(data)
        reg.put(key, FileState("docker:c", str(path), "h:1:ab", size, size + 1, floor=size + 1))
        with path.open("ab") as f:
            f.write(docker_line("two", 2))
        spec = SourceSpec(key="docker:c", path=path, format="docker", service="svc")
        chunk = _first_read(spec, reg, caplog)
        assert chunk is not None and chunk.lines.logs == ["two"]
        assert reg.get(key).source_id == "h:1:ab"  # type: ignore[union-attr]
        assert caplog.records == []
    finally:
        reg.close()
