"""``--multiline GLOB=PARSER``, its TOML key and the ``logq.multiline`` label: parsed, refused
when wrong with what is allowed, and applied by a real shipper (one record per trace, the
metrics counting them); off by default."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from shipper import discover as discover_mod
from shipper import multiline
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.discover import Discoverer
from shipper.errors import ConfigError
from shipper.multiline import choose
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.test_multiline import GO, JAVA, PYTHON

REPO = Path(__file__).resolve().parents[2]


def test_flags_map_service_globs_to_parsers_in_order() -> None:
    cfg = load_config(["--multiline", "recipe*=java", "--multiline", " worker = Python "])
    assert cfg.multiline == (("recipe*", "java"), ("worker", "python"))
    assert load_config([]).multiline == ()  # off by default


def test_the_toml_key_takes_a_list_or_one_string(tmp_path: Path) -> None:
    listed = tmp_path / "a.toml"
    listed.write_text('[shipper]\nmultiline = ["recipe*=java", "api-*=go"]\n')
    assert load_config(["--config", str(listed)]).multiline == (
        ("recipe*", "java"),
        ("api-*", "go"),
    )
    single = tmp_path / "b.toml"
    single.write_text('multiline = "worker=python"\n')
    assert load_config(["--config", str(single)]).multiline == (("worker", "python"),)
    # A flag wins over the file, as every other setting does.
    assert load_config(["--config", str(single), "--multiline", "x=go"]).multiline == (("x", "go"),)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("recipe*=ruby", "unknown parser 'ruby'; use one of java, python, go"),
        ("recipe*", "is not SERVICE_GLOB=PARSER; write e.g. 'recipe*=java'"),
        ("=java", "is not SERVICE_GLOB=PARSER"),
        ("recipe=", "(parsers: java, python, go)"),
        ("", "--multiline is empty"),
    ],
)
def test_bad_flag_values_are_refused_with_what_is_allowed(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(["--multiline", value])
    assert says in str(err.value)


def test_a_bad_toml_value_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("multiline = 3\n")
    with pytest.raises(ConfigError, match="key 'multiline': must be a string or a list of strings"):
        load_config(["--config", str(cfg)])


def test_a_bad_toml_mapping_names_the_file_and_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[shipper]\nmultiline = ["recipe*=java", "api=ruby"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(["--config", str(cfg)])
    assert str(err.value) == (
        f"--config {cfg}: key 'multiline': multiline = 'api=ruby': unknown parser 'ruby'; "
        "use one of java, python, go (or label a container logq.multiline=none to keep it out)"
    )


def test_the_label_wins_over_the_globs_and_none_turns_it_off() -> None:
    mapping = (("recipe*", "java"), ("*", "go"))
    assert choose("recipe-api", None, mapping) == "java"
    assert choose("billing", None, mapping) == "go"
    assert choose("recipe-api", "python", mapping) == "python"
    assert choose("recipe-api", "none", mapping) is None
    assert choose("billing", None, ()) is None


def test_discovery_reads_the_label_and_reports_a_bad_one_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "docker"
    make_container(root, "a" * 64, "recipe", labels={"logq.multiline": "Java"})
    make_container(root, "b" * 64, "billing", labels={"logq.multiline": "ruby"})
    make_container(root, "c" * 64, "worker")
    d = Discoverer(root, tmp_path / "none", (), ())
    with caplog.at_level(logging.WARNING, logger=discover_mod.log.name):
        specs = {s.container_name: s.multiline for s in d.scan().specs}
        d.scan()
    assert specs == {"recipe": "java", "billing": None, "worker": None}
    warned = [r.getMessage() for r in caplog.records if "logq.multiline" in r.getMessage()]
    assert len(warned) == 1 and "use one of java, python, go" in warned[0]


def _by_container(receiver: Receiver) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for _, _, record in receiver.records:
        out[record["container_name"]].append(record["log"])
    return dict(out)


def test_once_ships_each_trace_of_a_selected_service_as_one_record(tmp_path: Path) -> None:
    """A real ``--once`` run: the glob selects ``recipe-*``, a label selects ``worker``, a
    ``none`` label keeps ``recipe-legacy`` out, and ``billing`` (selected by nothing) keeps one
    record per line."""
    root = tmp_path / "docker"
    make_container(root, "a" * 64, "recipe-api", lines=["start", *JAVA, "next"])
    make_container(root, "b" * 64, "billing", lines=JAVA)
    make_container(root, "c" * 64, "worker", {"logq.multiline": "python"}, lines=PYTHON)
    make_container(root, "d" * 64, "recipe-legacy", {"logq.multiline": "none"}, lines=JAVA[:2])
    make_container(root, "e" * 64, "gateway", lines=GO)
    receiver = Receiver()
    try:
        argv = [*shipper_args(tmp_path, receiver, docker=root), "--once"]
        argv += ["--multiline", "recipe-*=java", "--multiline", "gate*=go"]
        res = subprocess.run(
            [sys.executable, "-m", "shipper.daemon", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert res.returncode == 0, res.stderr
        got = _by_container(receiver)
    finally:
        receiver.close()
    assert got == {
        "recipe-api": ["start", "\n".join(JAVA), "next"],
        "billing": JAVA,
        "worker": ["\n".join(PYTHON)],
        "recipe-legacy": JAVA[:2],
        "gateway": ["\n".join(GO)],
    }


def test_a_following_shipper_joins_traces_and_counts_them(tmp_path: Path) -> None:
    """Followed (not ``--once``): the trace is joined, the line after it goes out after the
    flush timeout, and ``logq_shipper_multiline_records`` counts the trace."""
    root = tmp_path / "docker"
    make_container(root, "a" * 64, "recipe", lines=["start", *JAVA, "last"])
    receiver = Receiver()
    args = ("--poll-interval", "0.05", "--multiline", "recipe=java")
    shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *args, docker=root)))

    async def go() -> float | None:
        run = asyncio.create_task(shipper.run())
        await until(lambda: receiver.lines() == ["start", "\n".join(JAVA), "last"])
        shipper.request_stop()
        assert await run == 0
        return shipper.metrics.registry.get_sample_value(
            "logq_shipper_multiline_records_total", {"service": "recipe"}
        )

    try:
        assert asyncio.run(go()) == 1.0
    finally:
        receiver.close()


def test_a_crash_after_a_flushed_trace_lost_its_ack_stores_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace at the end of the file is flushed at the timeout and stored, its ack lost;
    the shipper dies (``kill -9``: the state on disk at that instant is what the next run
    gets). A frame written after the flush must not join it in the next run: the trace would
    be stored twice, once inside a longer record."""
    # Short, for a test: the receiver, not a race with this thread, loses the trace's ack.
    monkeypatch.setattr(multiline, "MULTILINE_FLUSH_SECONDS", 1.0)
    root = tmp_path / "docker"
    log = make_container(root, "a" * 64, "recipe", lines=["before"])
    receiver = Receiver(ack_first=1)
    extra = ("--poll-interval", "0.05", "--retry-timeout", "5", "--multiline", "recipe=java")
    trace = "\n".join(JAVA)

    async def first_run() -> None:
        shipper = Shipper(load_config(shipper_args(tmp_path, receiver, *extra, docker=root)))
        run = asyncio.create_task(shipper.run())
        # "before" stored (and acked) before the trace is written: it cannot share its
        # message, whatever the machine's load (R3s18).
        await until(lambda: receiver.lines() == ["before"])
        with open(log, "ab") as f:
            f.write(b"".join(docker_line(t, i + 1) for i, t in enumerate(JAVA)))
        await until(lambda: receiver.lines() == ["before", trace])  # stored, its ack lost
        assert receiver.chunks[:2] == [["before"], [trace]]
        shutil.copytree(tmp_path / "state", tmp_path / "crashed", ignore=_no_lock)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        shipper.registry.close()

    async def second_run() -> None:
        args = shipper_args(tmp_path, receiver, *extra, docker=root)
        args[args.index(str(tmp_path / "state"))] = str(tmp_path / "crashed")
        shipper = Shipper(load_config(args))
        run = asyncio.create_task(shipper.run())
        await until(lambda: receiver.lines()[-1:] == ["after"])
        shipper.request_stop()
        assert await run == 0

    try:
        asyncio.run(first_run())
        with open(log, "ab") as f:
            f.write(docker_line("\tat late.Frame.x(X.java:1)", 20))
            f.write(docker_line("after", 21))
        receiver.ack_first = None
        asyncio.run(second_run())
    finally:
        receiver.close()
    assert receiver.lines() == ["before", trace, "\tat late.Frame.x(X.java:1)", "after"]
    assert receiver.duplicates >= 1  # the trace came again, under the offset it had


def _no_lock(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "lock"]
