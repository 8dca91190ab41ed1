"""Settings: flags over the TOML --config file over defaults, with errors that name the fix."""

from __future__ import annotations

import argparse
import errno
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aggregator.arguments import add_serve_flags
from aggregator.buffer import Buffer
from aggregator.commands import main
from aggregator.config import (
    MIN_FRAME_BYTES,
    ConfigError,
    Settings,
    load_settings,
)
from aggregator.state_files import NODE_ID_NAME, SEGMENT_SUFFIX
from tests.support.procs import console_script, free_port


def parse(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    return load_settings(parser.parse_args(argv))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGQ_WAREHOUSE", "s3://bucket/prefix")
    s = parse([])
    assert (s.listen, s.flush_interval, s.max_frame_bytes) == ("127.0.0.1:24224", 10.0, 32 << 20)
    assert s.warehouse_uri == "s3://bucket/prefix"
    assert parse(["--warehouse", "/data/wh"]).warehouse_uri == "/data/wh"


def test_config_file_and_flag_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "agg.toml"
    conf.write_text(
        'listen = "127.0.0.1:25000"\nflush-interval = 3\n[aggregator]\n'
        'shared_key = "k"\nenvoy-format = "%START_TIME% %RESPONSE_CODE%"\n'
    )
    s = parse(["--config", str(conf), "--flush-interval", "7"])
    assert s.listen == "127.0.0.1:25000"
    assert s.flush_interval == 7.0
    assert s.shared_key == "k"
    assert s.envoy_formats == ["%START_TIME% %RESPONSE_CODE%"]


def test_one_config_file_serves_both_daemons(tmp_path: Path) -> None:
    """Each daemon reads the top-level keys and its own table, and skips the other's: before,
    the aggregator refused a ``[shipper]`` table and the shipper an ``[aggregator]`` one."""
    from shipper.config import Endpoint, load_config

    conf = tmp_path / "logq.toml"
    conf.write_text(
        'shared_key = "k"\nlog_level = "debug"\n'
        '[shipper]\naggregator = ["agg-1:24224"]\nstate_dir = "/tmp/logq-shipper-state"\n'
        'log_level = "warning"\n'
        '[aggregator]\nlisten = "0.0.0.0:24300"\nflush_interval = 3\n'
    )
    agg = parse(["--config", str(conf)])
    assert (agg.listen, agg.flush_interval, agg.shared_key) == ("0.0.0.0:24300", 3, "k")
    assert agg.log_level == "debug"
    ship = load_config(["--config", str(conf)])
    assert ship.aggregators == (Endpoint("agg-1", 24224),)
    assert (str(ship.state_dir), ship.shared_key, ship.log_level) == (
        "/tmp/logq-shipper-state",
        "k",
        "warning",
    )


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        (
            "flush_intervall = 3\n",
            [],
            "key 'flush_intervall': unknown key (did you mean 'flush_interval'?)",
        ),
        ('Listen = "a:1"\n', [], "key 'Listen': unknown key (keys are lower case: write 'listen')"),
        ("Flush-Interval = 3\n", [], "unknown key (keys are lower case: write 'flush_interval')"),
        ('shipper = "a:24224"\n', [], "key 'shipper': unknown key"),  # not a table: a typo
        ("[aggregator]\nstate_dir = 3\n", [], "key 'state_dir': a logq-shipper setting"),
        ("listen = [\n", [], "not valid TOML"),
        ("", ["--listen", "nohostport"], "HOST:PORT"),
        ("", ["--tls-cert", "c.pem"], "both --tls-cert and --tls-key"),
        (
            "",
            ["--flush-interval", "0"],
            "--flush-interval must be a finite number of seconds, more than 0; got 0.0",
        ),
        (
            "",
            ["--unhealthy-after", "-1"],
            "--unhealthy-after must be a finite number of seconds, more than 0",
        ),
        ("", ["--user", "alice:pw"], "--user needs --shared-key"),
        ("", ["--shared-key", "k", "--user", "alice"], "--user must be NAME:PASSWORD"),
        ('user = ["bob:"]\n', ["--shared-key", "k"], "--user must be NAME:PASSWORD"),
        ('flush_interval = "soon"\n', [], "key 'flush_interval': must be a number, got 'soon'"),
        ("listen = 5\n", [], "key 'listen': must be a string, got 5"),
        ("max_frame_bytes = inf\n", [], "key 'max_frame_bytes': must be a whole number, got inf"),
        ("max-connections = true\n", [], "key 'max-connections': must be a whole number, got True"),
        ("envoy_format = 5\n", [], "key 'envoy_format': must be a string or a list of strings"),
        (
            "flush_interval = nan\n",
            [],
            "--flush-interval must be a finite number of seconds, more than 0; got nan",
        ),
        (
            "",
            ["--idle-timeout", "-1"],
            "--idle-timeout must be a finite number of seconds, more than 0",
        ),
        (
            "retry_max_interval = 0\n",
            [],
            "--retry-max-interval must be a finite number of seconds, more than 0",
        ),
        (
            "",
            ["--compact-interval", "inf"],
            "--compact-interval must be a finite number of seconds, at least 0; got inf",
        ),
        ("", ["--max-connections", "0"], "--max-connections must be at least 1; got 0"),
        ("", ["--max-message-entries", "0"], "--max-message-entries must be at least 1; got 0"),
        # Past 2**63 each closed every connection: "Python int too large to convert to C ssize_t"
        *[
            ("", [flag, str(2**63)], f"{flag} must be at most 1,099,511,627,776; got {2**63}")
            for flag in ("--max-message-entries", "--max-frame-bytes", "--max-connections")
        ],
        ("max_frame_bytes = 1099511627777\n", [], "--max-frame-bytes must be at most"),
        ("", ["--log-level", "verbose"], "--log-level must be one of debug, info"),
        ("", ["--node-id", "../../escaped"], "--node-id must be 1-64 letters"),
        ("", ["--warehouse", " "], "--warehouse is empty"),
        ("", ["--buffer-dir", ""], "--buffer-dir is empty"),
        ("", ["--tls-cert", "", "--tls-key", ""], "--tls-cert is empty"),
        ("", ["--metrics-listen", " "], "--metrics-listen is empty"),
    ],
)
def test_bad_settings_say_what_to_do(
    tmp_path: Path, content: str, argv: list[str], message: str
) -> None:
    conf = tmp_path / "agg.toml"
    conf.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(["--config", str(conf), *argv])


def test_numbers_are_checked_as_the_shippers_are(tmp_path: Path) -> None:
    """One range check for both daemons (:func:`shipper.config.at_least`): the same words, and
    a TOML integer past any float is refused, where the aggregator's own check raised an
    OverflowError traceback (``flush_interval = 1000...0``)."""
    conf = tmp_path / "agg.toml"
    conf.write_text("flush_interval = 1" + "0" * 400 + "\n")
    with pytest.raises(ConfigError) as refused:
        parse(["--config", str(conf)])
    assert str(refused.value).startswith(
        f"--config {conf}: key 'flush_interval': --flush-interval must be a finite number of "
        "seconds, more than 0; got 1000"
    )
    with pytest.raises(ConfigError, match=r"^--max-connections must be at least 1; got 0$"):
        parse(["--max-connections", "0"])
    assert parse(["--compact-interval", "0", "--flush-interval", "0.5"]).flush_interval == 0.5


@pytest.mark.parametrize("value", ["0", "1", "65536", str(MIN_FRAME_BYTES - 1)])
def test_a_frame_limit_under_a_normal_message_is_refused_at_start(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--max-frame-bytes 1`` was taken, and then every message was refused, and resent by
    its client forever. The error names the flag, the floor and why; from the file, the key."""
    reason = (
        f"--max-frame-bytes must be at least {MIN_FRAME_BYTES} (4 MiB): a client resends a "
        "message over it forever, and a logq-shipper's messages reach 4 MiB"
    )
    with pytest.raises(ConfigError, match=rf"^{re.escape(reason)}.*; got {value}$"):
        parse(["--max-frame-bytes", value])
    conf = tmp_path / "agg.toml"
    conf.write_text(f"max-frame-bytes = {value}\n")
    with pytest.raises(ConfigError, match=rf"^--config {re.escape(str(conf))}: key "):
        parse(["--config", str(conf)])
    wh = tmp_path / "wh"
    buf = tmp_path / "buf"
    assert main(["--max-frame-bytes", value, "--warehouse", str(wh), "--buffer-dir", str(buf)]) == 2
    assert reason in capsys.readouterr().err
    assert not wh.exists() and not buf.exists()


def test_the_smallest_frame_limit_is_taken() -> None:
    assert parse(["--max-frame-bytes", str(MIN_FRAME_BYTES)]).max_frame_bytes == MIN_FRAME_BYTES


def test_the_frame_floor_takes_a_default_shipper_batch() -> None:
    """The floor's reason: a logq-shipper batch at its default --batch-lines and --batch-bytes
    (2,048 records, 512 Ki characters of log text), of 4-byte UTF-8 characters and with long
    Kubernetes names, is one message under it; in ASCII it is over 1 MiB (a floor of 1 MiB
    would have refused it, forever)."""
    from shipper.batch import encode_message, pack_entries, record_constants
    from shipper.config import Config
    from shipper.lines import Lines

    cfg = Config()
    shared = record_constants(
        "payments-api-7d9f8c6b5-x2x7q",
        "a" * 64,
        "payments-api",
        "ip-10-0-12-34.eu-west-1.compute.internal",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/payments/api:v1.42.3",
        "b" * 32,
        "json",
    )

    def message(char: str) -> bytes:
        lines = Lines()
        text = char * (cfg.batch_bytes // cfg.batch_lines)
        for i in range(cfg.batch_lines):
            lines.add(
                i * 2000, "2026-12-03T11:34:42.123456789Z", 1_795_000_000 * 10**9, "stdout", text
            )
        assert lines.nbytes == cfg.batch_bytes
        return encode_message("logq.k8s", pack_entries(lines, shared), len(lines), "c" * 32, False)

    assert 1 << 20 < len(message("x")) < len(message("\U0001f600")) < MIN_FRAME_BYTES


def test_athena_database_with_output_or_workgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGQ_WAREHOUSE", "s3://bucket/prefix")
    for where in (["--athena-output", "s3://results/"], ["--athena-workgroup", "primary"]):
        assert parse(["--athena-database", "logs", *where]).athena_database == "logs"


def test_athena_database_alone_is_a_valid_setting() -> None:
    """Without --athena-output or --athena-workgroup Athena runs the DDL in the primary
    workgroup, with its result location if it has one (R2: a start-up refusal stopped the
    ingestion of deployments whose primary workgroup has one)."""
    from aggregator.config import _check

    _check(Settings(athena_database="logs"))  # no ConfigError


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (Settings(athena_output="s3://results/"), "--athena-output needs --athena-database"),
        (Settings(athena_workgroup="etl"), "--athena-workgroup needs --athena-database"),
        (
            Settings(athena_database="logs", athena_output="results/"),
            "--athena-output 'results/' is not an S3 location",
        ),
        (Settings(athena_database="logs", athena_output="s3://"), "is not an S3 location"),
        (Settings(athena_database="logs", athena_output="s3:///r/"), "is not an S3 location"),
    ],
)
def test_athena_settings_that_could_apply_no_ddl_are_refused(given: Settings, said: str) -> None:
    """Without --athena-database the DDL is never applied in Athena: a workgroup or output
    location alone did nothing, without a word. Athena writes results only to S3: a local
    path failed later, at the first DDL, in a WARNING that did not name the flag."""
    from aggregator.config import _check

    with pytest.raises(ConfigError, match=re.escape(said)):
        _check(given)


def test_mistyped_warehouses_are_refused_before_anything_is_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``s3:/bucket`` made a local folder named ``s3:`` (the operator believed the data went to
    S3), ``file:///`` put the ledger at the file system's root, ``s3:///x`` read as bucket x,
    ``s3://logs//wh`` started and failed every flush (no S3 key may hold an empty folder
    name), and ``--config ""`` was ignored."""
    monkeypatch.chdir(tmp_path)
    buf = tmp_path / "buf"
    for uri, message in [
        ("s3:/mybucket/logs", "is not an S3 address; write s3://BUCKET/PREFIX"),
        ("S3://mybucket/logs", "is not an S3 address"),
        ("s3:///x", "names no bucket"),
        ("s3://logs//wh", "has an empty folder name (//), which no S3 key of the warehouse "
         "may hold; write s3://logs/wh"),
        ("file:///", "is the root of the file system"),
        ("/", "is the root of the file system"),
    ]:  # fmt: skip
        assert main(["--warehouse", uri, "--buffer-dir", str(buf)]) == 2, uri
        assert message in capsys.readouterr().err, uri
    assert main(["--config", "", "--buffer-dir", str(buf)]) == 2
    assert "--config is empty" in capsys.readouterr().err
    monkeypatch.setenv("LOGQ_WAREHOUSE", "")
    assert main(["--buffer-dir", str(buf)]) == 2
    assert "LOGQ_WAREHOUSE is set but empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no buffer, no "s3:" folder
    assert not Path("/_ledger").exists()


def test_cli_exits_2_with_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    wh = tmp_path / "wh"
    assert main(["--envoy-format", "%REQ(:PATH)%", "--warehouse", str(wh)]) == 2
    assert not wh.exists()
    assert "START_TIME" in capsys.readouterr().err


# -- an unusable --buffer-dir: one line with the directory, the uid/gid and the fix --------------


def _buffer_error(directory: Path) -> OSError:
    with pytest.raises(OSError) as caught:
        Buffer(directory, 1 << 20, 1 << 30).open()
    return caught.value


def test_permission_denied_names_the_dir_the_uid_and_chown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a root-owned host path (Docker's or the kubelet's) does to the image's `logq` user:
    the kernel refuses the lock file. As root no directory refuses, so the refusal is made here
    exactly as the kernel makes it (``os.open`` raising EACCES with the file name)."""
    real_open = os.open

    def refuse_lock(path: Any, flags: int, *args: Any) -> int:
        if Path(path).name == "lock":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr("aggregator.buffer.os.open", refuse_lock)
    error = _buffer_error(tmp_path / "buffer")
    text = str(error)
    assert isinstance(error, PermissionError) and error.errno == errno.EACCES
    assert text.startswith(f"--buffer-dir {tmp_path / 'buffer'} is not writable")
    assert f"Permission denied: {tmp_path / 'buffer' / 'lock'}" in text
    assert f"uid {os.getuid()}, gid {os.getgid()}" in text
    assert f"chown -R {os.getuid()}:{os.getgid()} {tmp_path / 'buffer'}" in text
    assert "deploy/README.md" in text and "\n" not in text


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    for directory in (tmp_path / "afile" / "buffer", tmp_path / "afile"):
        text = str(_buffer_error(directory))
        assert text.startswith(f"--buffer-dir {directory} is not a directory"), text
        assert text.count("is not a directory") == 1, text  # said once, not wrapped twice
        assert f"uid {os.getuid()}, gid {os.getgid()}" in text
    # Other errors keep their own words (a second instance on the same directory).
    held = Buffer(tmp_path / "held", 1 << 20, 1 << 30)
    held.open()
    try:
        assert "in use by another logq-aggregator" in str(_buffer_error(tmp_path / "held"))
    finally:
        held.unlock()


@pytest.mark.integration
def test_cli_prints_one_line_for_an_unusable_buffer_dir(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    (tmp_path / "afile").write_text("not a directory")
    done = subprocess.run(
        [
            str(console_script("logq-aggregator")),
            f"--warehouse={tmp_path / 'warehouse'}",
            f"--buffer-dir={tmp_path / 'afile' / 'buffer'}",
            "--listen=127.0.0.1:0",
        ],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stderr  # the host refused it: no usage error (2)
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logq-aggregator: --buffer-dir {tmp_path / 'afile' / 'buffer'} is")
    assert f"uid {os.getuid()}, gid {os.getgid()}" in last and "point it at a directory" in last


def test_a_port_in_use_names_the_flag_and_what_to_do(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--buffer-dir", str(tmp_path / "buf"), "--warehouse", str(tmp_path / "wh")]
        assert main(["--listen", f"127.0.0.1:{port}", *args]) == 1  # not 2: no usage error
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{port} (--listen): address already in use" in err
        assert "pick another port" in err
        assert (
            main(["--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}", *args]) == 1
        )
        assert "(--metrics-listen): address already in use" in capsys.readouterr().err
    # The failed starts left the buffer unlocked (the second could open it) and no segment.
    assert not list((tmp_path / "buf").glob(f"*{SEGMENT_SUFFIX}"))


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The last stderr line of a serve that failed, which must be its only error line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_runtime_failures_exit_1_naming_what_failed_and_what_to_do(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exit 2 is a usage error (the command must change); what the host refuses at run time is
    1 (serve exited 2 for any OSError): a warehouse folder that cannot be made, a buffer dir
    another process holds, a --buffer-dir that cannot be created."""
    (tmp_path / "afile").write_text("not a directory")
    args = ["--listen", "127.0.0.1:0"]
    wh = tmp_path / "afile" / "wh"
    assert main([*args, "--buffer-dir", str(tmp_path / "b1"), "--warehouse", str(wh)]) == 1
    last = _one_line(capsys)
    assert last.startswith(f"logq-aggregator: --warehouse {wh} is not a directory"), last
    assert "point it at a directory" in last
    held = Buffer(tmp_path / "held", 1 << 20, 1 << 30)
    held.lock()
    try:
        good_wh = ["--warehouse", str(tmp_path / "wh")]
        assert main([*args, "--buffer-dir", str(tmp_path / "held"), *good_wh]) == 1
        assert "is in use by another logq-aggregator" in _one_line(capsys)
    finally:
        held.unlock()
    # A cause without its own words still names the flag, the folder and what to do.
    assert main([*args, "--buffer-dir", "/proc/logq-buffer", *good_wh]) == 1
    last = _one_line(capsys)
    assert last.startswith("logq-aggregator: --buffer-dir /proc/logq-buffer cannot be used ("), last
    assert last.endswith("check the path and its volume")


def test_a_local_warehouse_that_cannot_be_written_fails_the_start(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warehouse folder that exists on a read-only mount (or is another user's) was found
    out by the first flush only: the aggregator started, acknowledged data, and its flushes
    failed in a loop until the buffer filled. Now the start exits 1 naming the flag, the
    folder and what to do, before a port is opened, as for a folder that cannot be made. As
    root no folder refuses, so the refusal is made here as the kernel makes it (``os.open``
    raising EROFS with the file name)."""
    wh = tmp_path / "wh"
    wh.mkdir()
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any) -> int:
        if Path(path).parent == wh and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr("aggregator.service.os.open", read_only)
    args = ["--listen", "127.0.0.1:0", "--buffer-dir", str(tmp_path / "b"), "--warehouse", str(wh)]
    assert main(args) == 1
    last = _one_line(capsys)
    assert last.startswith(f"logq-aggregator: --warehouse {wh} is on a read-only file system")
    assert last.endswith("mount a writable volume there"), last
    assert "listening on" not in capsys.readouterr().out
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / NODE_ID_NAME).write_text("gone\n")
    assert main(["drain", *args[2:]]) == 1  # drain writes the warehouse too
    assert "read-only file system" in _one_line(capsys)
    assert list(wh.iterdir()) == []  # the check leaves nothing behind


def test_drain_of_a_buffer_a_running_aggregator_holds_says_to_stop_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``drain`` pointed at a live aggregator's buffer said serve's "give each instance its own
    buffer directory", which is no remedy there: the drain was pointed at it on purpose."""
    held = Buffer(tmp_path / "held", 1 << 20, 1 << 30)
    held.open()
    try:
        args = ["drain", "--buffer-dir", str(tmp_path / "held"), "--warehouse", str(tmp_path)]
        assert main(args) == 1
        last = _one_line(capsys)
    finally:
        held.unlock()
    assert last.startswith(
        f"logq-aggregator: drain: --buffer-dir {tmp_path / 'held'} is held by a running "
        "logq-aggregator"
    ), last
    assert "SIGTERM" in last and "its own buffer directory" not in last


def test_usage_errors_still_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """TLS files that are no PEM pair are a bad flag value (the command must change)."""
    args = ["--listen", "127.0.0.1:0", "--buffer-dir", str(tmp_path / "b")]
    missing = str(tmp_path / "missing.pem")
    tls = ["--tls-cert", missing, "--tls-key", missing]
    assert main([*args, "--warehouse", str(tmp_path / "wh"), *tls]) == 2
    assert f"--tls-cert {missing} cannot be read (No such file" in _one_line(capsys)
    assert main([*args, "--flush-interval", "0"]) == 2
    assert "--flush-interval" in _one_line(capsys)


def test_listen_without_host_means_every_address_of_both_families() -> None:
    """``:PORT`` was 0.0.0.0 (IPv4 only) and asyncio binds ``[::]`` IPv6 only: no value served
    both, and with ``0.0.0.0`` an IPv6-only pod was unreachable. ``""`` is asyncio's "every
    address", IPv4 and IPv6."""
    from aggregator.config import join_host_port, split_host_port

    assert split_host_port(":24224", "--listen") == ("", 24224)
    assert split_host_port("0.0.0.0:24224", "--listen") == ("0.0.0.0", 24224)
    assert split_host_port("[::1]:24224", "--listen") == ("::1", 24224)
    # The "listening on" line and the metrics URL: an IPv6 address in brackets.
    assert join_host_port("::1", 24224) == "[::1]:24224"
    assert join_host_port("127.0.0.1", 9880) == "127.0.0.1:9880"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("127.0.0.1:\u00b2", "bad port in --listen"),  # a digit to str.isdigit, not to int()
        ("127.0.0.1:99999", "port 99999 is not in 0-65535"),
        ("::1:24224", "IPv6 addresses need brackets: [::1]:24224"),  # ::1 port 24224, or ::1:24224?
        ("[::1:24224", "bad --listen '[::1:24224'"),
        ("127.0.0.1", "--listen must be HOST:PORT"),
        ("127.0.0.1:", "--listen must be HOST:PORT"),
        ("[::1]", "--listen must be HOST:PORT"),
    ],
)
def test_a_bad_listen_address_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str, said: str
) -> None:
    """Read as logq-shipper reads its addresses: a port of Unicode digits ended in a traceback
    (``int('²')``), and an IPv6 address without brackets was split at its last colon."""
    args = ["--buffer-dir", str(tmp_path / "b"), "--warehouse", str(tmp_path / "wh")]
    assert main([*args, "--listen", value]) == 2
    assert said in _one_line(capsys)
    assert main([*args, "--listen", "127.0.0.1:0", "--metrics-listen", value]) == 2
    assert said.replace("--listen", "--metrics-listen") in _one_line(capsys)


def test_the_listening_line_shows_both_families_ipv4_first() -> None:
    """asyncio binds ``:PORT``'s two sockets in set order, which changes from run to run: the
    line read ``listening on [::]:24224`` (IPv6 only, by the README) about half the time, and
    with ``:0`` the port given back was either family's."""
    from aggregator.config import listening_text
    from aggregator.server import bound_addresses

    for names in (
        [("::", 24225, 0, 0), ("0.0.0.0", 24224)],
        [("0.0.0.0", 24224), ("::", 24225, 0, 0)],
    ):
        listening = bound_addresses(names)
        assert listening == [("0.0.0.0", 24224), ("::", 24225)]
        assert listening_text(listening) == "0.0.0.0:24224 and [::]:24225"
    assert listening_text(bound_addresses([("127.0.0.1", 5)])) == "127.0.0.1:5"


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        ('warehous = "/elsewhere"', "key 'warehous': unknown key"),
        ('target_file_bytes = "big"', "key 'target_file_bytes': must be a whole number, got 'big'"),
        ("warehouse = 5", "key 'warehouse': must be a string, got 5"),
    ],
)
def test_compact_checks_its_config_file_as_the_aggregator_does(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    toml: str,
    said: str,
) -> None:
    """``compact --config`` ignored unknown keys, so a ``warehous`` typo compacted
    ``$LOGQ_WAREHOUSE`` (exit 0), and a value of the wrong type was a traceback."""
    from aggregator.compaction.command import compact_main

    monkeypatch.setenv("LOGQ_WAREHOUSE", str(tmp_path / "other"))
    conf = tmp_path / "agg.toml"
    conf.write_text(toml + "\n")
    assert compact_main(["--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert f"logq-aggregator compact: --config {conf}: {said}" in err
    assert not (tmp_path / "other").exists()


def test_unknown_key_error_lists_the_keys_as_documented(tmp_path: Path) -> None:
    """The list named the fields ``envoy_formats`` and ``users``; the README's keys are
    ``envoy_format`` and ``user`` (``user = ["name:pw"]``), as the flags."""
    conf = tmp_path / "agg.toml"
    conf.write_text("usr = ['a:b']\n")
    with pytest.raises(ConfigError) as err:
        load_settings(argparse.Namespace(config=str(conf)))
    keys = str(err.value).split("the keys are ")[1].split(", ")
    assert "envoy_format" in keys and "user" in keys
    assert "envoy_formats" not in keys and "users" not in keys
    assert not any("'" in key or "[" in key for key in keys)  # a list as the shipper says it


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--config", "{tmp}"], "--config {tmp}: is a directory; pass the TOML file in it"),
        (["--config", " "], "--config is empty"),
        (
            ["--config", "{conf}"],
            "--config {conf}: key 'target_file_bytes': --target-file-bytes must be",
        ),
        (["--target-file-bytes", "-5"], "--target-file-bytes must be at least 1; got -5"),
        (["--config", "{conf}", "--target-file-bytes", "0"], "--target-file-bytes must be a"),
    ],
)
def test_compact_refuses_what_the_aggregator_refuses(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    said: str,
) -> None:
    """``compact --config DIR`` was an IsADirectoryError traceback once the file was read
    outside the command's OSError handling; ``--config ""`` was ignored; a target size of 0 or
    less (flag or file) was taken, and a 0 flag fell through to the file."""
    from aggregator.compaction.command import compact_main

    (tmp_path / "wh").mkdir()
    monkeypatch.setenv("LOGQ_WAREHOUSE", str(tmp_path / "wh"))
    conf = tmp_path / "agg.toml"
    conf.write_text("target_file_bytes = -5\n")
    fill = {"tmp": str(tmp_path), "conf": str(conf)}
    assert compact_main([a.format(**fill) for a in argv]) == 2
    assert f"logq-aggregator compact: {said.format(**fill)}" in capsys.readouterr().err


def test_serve_names_a_config_file_it_cannot_read(tmp_path: Path) -> None:
    """A directory (or a file without read permission) said only ``[Errno 21] Is a directory``."""
    with pytest.raises(ConfigError, match=rf"^--config {re.escape(str(tmp_path))}: is a directory"):
        load_settings(argparse.Namespace(config=str(tmp_path)))


def test_a_value_out_of_range_in_the_file_names_the_file(tmp_path: Path) -> None:
    """``flush_interval = -1`` in the file said only ``--flush-interval must be > 0``: the
    operator looked for a flag never given. A flag's own bad value does not blame the file."""
    conf = tmp_path / "agg.toml"
    conf.write_text("flush_interval = -1\nlog_level = 'info'\n")
    with pytest.raises(
        ConfigError,
        match=rf"^--config {re.escape(str(conf))}: key 'flush_interval': --flush-interval ",
    ):
        load_settings(argparse.Namespace(config=str(conf)))
    with pytest.raises(
        ConfigError,
        match=r"^--flush-interval must be a finite number of seconds, more than 0; got -2.0$",
    ):
        load_settings(argparse.Namespace(config=str(conf), flush_interval=-2.0))


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        # The key as written: the error said flush_interval, which grep does not find.
        ('flush-interval = "5"', "key 'flush-interval': must be a number, got '5'"),
        ("flush-intervall = 5", "key 'flush-intervall': unknown key"),
        # A NUL was a ValueError traceback (serve and compact): the shipper's rule.
        ('warehouse = "/tmp/w\\u0000x"', "key 'warehouse': must be text without NUL characters"),
        # Other users' passwords were printed to the logs.
        (
            'user = ["alice:s3cret", 5]',
            "key 'user': must be a string or a list of strings, got a list",
        ),
    ],
)
def test_file_errors_quote_the_key_as_written_and_no_secret(
    tmp_path: Path, toml: str, said: str
) -> None:
    conf = tmp_path / "agg.toml"
    conf.write_text(toml + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings(argparse.Namespace(config=str(conf)))
    assert str(err.value).startswith(f"--config {conf}: {said}")
    assert "s3cret" not in str(err.value)


def test_compact_an_empty_warehouse_flag_is_not_replaced_by_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--warehouse ""`` (an unset variable) fell through to the file's warehouse, and compacted
    it; a flag wins over the file, and an empty one is refused, as serve refuses it."""
    from aggregator.compaction.command import compact_main

    (tmp_path / "wh").mkdir()
    conf = tmp_path / "agg.toml"
    conf.write_text(f"warehouse = {str(tmp_path / 'wh')!r}\n")
    assert compact_main(["--config", str(conf)]) == 0
    capsys.readouterr()
    assert compact_main(["--config", str(conf), "--warehouse", ""]) == 2
    assert "is empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("toml", "first", "second"),
    [
        ("flush_interval = 5\nflush-interval = 7", "flush_interval", "flush-interval"),
        ('envoy_format = "%A%"\nenvoy_formats = ["%B%"]', "envoy_format", "envoy_formats"),
        ('shared_key = "k"\nuser = ["a:b"]\nusers = ["c:d"]', "user", "users"),
        ('[aggregator]\nlog-level = "info"\nlog_level = "debug"', "log-level", "log_level"),
    ],
)
def test_two_spellings_of_one_setting_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, first: str, second: str
) -> None:
    """The last of ``flush_interval = 5`` and ``flush-interval = 7`` silently won: the operator
    who edited the other saw no effect. serve and compact refuse it (exit 2), naming both."""
    from aggregator.compaction.command import compact_main

    conf = tmp_path / "agg.toml"
    conf.write_text(toml + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings(argparse.Namespace(config=str(conf)))
    said = f"--config {conf}: key {second!r}: the same setting as key {first!r}"
    assert str(err.value).startswith(said) and "keep one of them" in str(err.value)
    assert compact_main(["--config", str(conf)]) == 2
    assert said in capsys.readouterr().err


def test_a_table_key_over_a_top_level_one_is_no_clash(tmp_path: Path) -> None:
    """``[aggregator]`` overriding a top-level key of a shared file is documented, not a
    duplicate, whatever the spelling."""
    conf = tmp_path / "agg.toml"
    conf.write_text("flush_interval = 5\n[aggregator]\nflush-interval = 7\n")
    assert parse(["--config", str(conf)]).flush_interval == 7


@pytest.mark.parametrize(
    ("argv", "toml"),
    [
        (["--shared-key", "k", "--user", "hunter2-is-my-password"], ""),
        (["--shared-key", "k"], 'user = ["hunter2-is-my-password"]'),
        (["--shared-key", "k"], 'user = ["fluent:pw", "hunter2-is-my-password"]'),
        (["--shared-key", "k"], 'users = ":hunter2-is-my-password"'),
    ],
)
def test_a_bad_user_value_is_not_echoed(tmp_path: Path, argv: list[str], toml: str) -> None:
    """``--user must be NAME:PASSWORD, got 'hunter2-is-my-pass...'``: a value without its colon
    is likely the password alone, and stderr ends up in the journal and the pod's logs."""
    conf = tmp_path / "agg.toml"
    conf.write_text(toml + "\n")
    with pytest.raises(ConfigError, match="--user must be NAME:PASSWORD") as err:
        parse(["--config", str(conf), *argv])
    assert "hunter2" not in str(err.value)
    if "," in toml:  # which of several is at fault, since it cannot be shown
        assert "value 2 of 2 is not" in str(err.value)
    if toml:
        assert str(err.value).startswith(f"--config {conf}: key ")


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"flush_interval = 5\x00\n", "not valid TOML"),
        (b"\xff\xfef\x00", "not UTF-8 text"),
        (b"listen = [\n", "not valid TOML"),
    ],
)
def test_a_file_that_cannot_be_parsed_is_named(tmp_path: Path, content: bytes, said: str) -> None:
    conf = tmp_path / "agg.toml"
    conf.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^--config {re.escape(str(conf))}: {said}"):
        parse(["--config", str(conf)])


def test_a_byte_order_mark_and_crlf_line_ends_are_read(tmp_path: Path) -> None:
    """Notepad saves UTF-8 with a byte order mark and CRLF: tomllib refused the mark as
    "Invalid statement (at line 1, column 1)", which says nothing of the invisible cause."""
    conf = tmp_path / "agg.toml"
    conf.write_bytes(b'\xef\xbb\xbfflush_interval = 5\r\nlisten = "127.0.0.1:24300"\r\n')
    settings = parse(["--config", str(conf)])
    assert (settings.flush_interval, settings.listen) == (5, "127.0.0.1:24300")


@pytest.mark.parametrize(
    ("argv", "toml", "said"),
    [
        ([], 'warehouse = ""', "--config {conf}: key 'warehouse': --warehouse is empty"),
        ([], 'warehouse = "ftp://x/y"', "--config {conf}: key 'warehouse': unsupported"),
        (["--warehouse", "s3://"], "", "'s3://' names no bucket"),
        ([], "flush_interval = -1", "--config {conf}: key 'flush_interval': --flush-interval"),
        ([], 'shared_key = "k"\nuser = "pw"', "--config {conf}: key 'user': --user must be"),
        # serve said only "format '%A' lacks ...": neither the file nor the key.
        ([], 'envoy_formats = ["%A"]', "--config {conf}: key 'envoy_formats': --envoy-format: "),
    ],
)
def test_compact_exits_2_on_a_warehouse_that_serve_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], toml: str, said: str
) -> None:
    """serve exits 2 on these (a usage error); compact exited 1, as for a failed pass, or
    (a value out of range) took the file and failed later on a missing warehouse (exit 1)."""
    from aggregator.compaction.command import compact_main

    conf = tmp_path / "agg.toml"
    conf.write_text(toml + "\n")
    assert compact_main(["--config", str(conf), *argv]) == 2
    assert f"logq-aggregator compact: {said.format(conf=conf)}" in capsys.readouterr().err
    assert main(["--config", str(conf), "--buffer-dir", str(tmp_path / "b"), *argv]) == 2
    # serve names the file's key alike (a file's warehouse was not blamed on the file).
    assert f"logq-aggregator: {said.format(conf=conf)}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("toml", "serve_flags"),
    [
        ('tls_cert = "c.pem"', ["--tls-key", "k.pem"]),
        ('user = ["fluent:pw"]', ["--shared-key", "k"]),
    ],
)
def test_compact_takes_a_file_that_serve_completes_with_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, serve_flags: list[str]
) -> None:
    """compact has no --tls-key or --shared-key: a file whose ``tls_cert`` or ``user`` serve
    completes with its flags was refused (exit 2, "TLS needs both"), though compact uses
    neither. Each value is still checked (see the test above)."""
    from aggregator.compaction.command import compact_main

    (tmp_path / "wh").mkdir()
    conf = tmp_path / "agg.toml"
    conf.write_text(f"warehouse = {str(tmp_path / 'wh')!r}\n{toml}\n")
    assert compact_main(["--config", str(conf)]) == 0, capsys.readouterr().err
    assert parse(["--config", str(conf), *serve_flags]).warehouse == str(tmp_path / "wh")
    with pytest.raises(ConfigError):  # serve itself still wants the pair
        parse(["--config", str(conf)])


def test_compact_takes_the_warehouses_serve_takes_from_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    s3_warehouse: str,
) -> None:
    """compact now opens the file's warehouse among its usage checks (exit 2): an S3 URI and a
    directory relative to the working directory, as serve reads them, must still be compacted."""
    from aggregator.compaction.command import compact_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel" / "wh").mkdir(parents=True)
    for warehouse in ("rel/wh", "./rel/wh/", s3_warehouse, s3_warehouse + "/"):
        conf = tmp_path / "agg.toml"
        conf.write_text(f"[aggregator]\nwarehouse = {warehouse!r}\n")
        assert compact_main(["--config", str(conf)]) == 0, capsys.readouterr().err
        assert "compacted 0 files" in capsys.readouterr().err


def test_tls_key_password_from_the_flag_the_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The passphrase of an encrypted --tls-key: flag over file over
    $LOGQ_AGGREGATOR_TLS_KEY_PASSWORD; the variable is taken only with a key (one set in an
    image for TLS hosts must not stop a plain-TCP aggregator), and errors never show it."""
    tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"]
    monkeypatch.setenv("LOGQ_AGGREGATOR_TLS_KEY_PASSWORD", "from-env")
    assert parse(tls).tls_key_password == "from-env"
    assert parse([]).tls_key_password is None
    conf = tmp_path / "agg.toml"
    conf.write_text('[aggregator]\ntls_key_password = "from-file"\n')
    assert parse(["--config", str(conf), *tls]).tls_key_password == "from-file"
    flagged = parse(["--config", str(conf), *tls, "--tls-key-password", "from-flag"])
    assert flagged.tls_key_password == "from-flag"
    with pytest.raises(ConfigError, match="--tls-key-password needs --tls-cert and --tls-key"):
        parse(["--tls-key-password", "x"])
    conf.write_text("tls_key_password = 12345678\n")
    with pytest.raises(ConfigError, match="the value is a secret, not shown") as refused:
        parse(["--config", str(conf), *tls])
    assert "12345678" not in str(refused.value)


def test_allow_network_from_flags_or_the_file_checked_at_start(tmp_path: Path) -> None:
    conf = tmp_path / "agg.toml"
    conf.write_text('allow_network = ["10.0.0.0/8", "fd00::/8"]\n')
    assert parse(["--config", str(conf)]).allow_network == ["10.0.0.0/8", "fd00::/8"]
    conf.write_text('allow_network = "10.0.0.0/8"\n')
    assert parse(["--config", str(conf)]).allow_network == ["10.0.0.0/8"]
    flags = parse(["--allow-network", "10.1.0.0/16", "--allow-network", "127.0.0.1"])
    assert flags.allow_network == ["10.1.0.0/16", "127.0.0.1"]
    assert parse([]).allow_network == []
    with pytest.raises(ConfigError, match="--allow-network must be an address or a network"):
        parse(["--allow-network", "10.0.0.0/8", "--allow-network", "10.0.0.300"])
    conf.write_text('allow_network = ["10.0.0.0/99"]\n')
    with pytest.raises(ConfigError, match=f"--config {conf}: key 'allow_network'"):
        parse(["--config", str(conf)])


@pytest.mark.parametrize(
    ("listen", "metrics", "refused"),
    [
        ("127.0.0.1:24777", "127.0.0.1:24777", True),
        (":24777", "127.0.0.1:24777", True),  # every address includes 127.0.0.1
        ("127.0.0.1:24777", "0.0.0.0:24777", True),
        ("[::1]:24777", "[::]:24777", True),
        ("127.0.0.1:24777", "127.0.0.1:24778", False),
        ("10.0.0.1:24777", "127.0.0.1:24777", False),  # two addresses, one port each: fine
        ("127.0.0.1:0", ":0", False),  # each its own free port
    ],
)
def test_metrics_on_the_forward_port_is_refused(listen: str, metrics: str, refused: bool) -> None:
    """``--metrics-listen`` on the ``--listen`` port: the start failed on the second bind with
    ``another process listens there: stop it or pick another port``, the other process being
    this one. Now a usage error (exit 2) that names both flags."""
    argv = ["--listen", listen, "--metrics-listen", metrics]
    if not refused:
        parse(argv)
        return
    with pytest.raises(ConfigError) as caught:
        parse(argv)
    assert str(caught.value) == (
        f"--metrics-listen {metrics} and --listen {listen} name one port (24777) on one "
        "address: give the metrics another port (9880 in deploy/)"
    )


def test_the_aggregator_exits_2_for_metrics_on_the_forward_port(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [
            str(console_script("logq-aggregator")),
            *("--listen", address, "--metrics-listen", address),
            *("--buffer-dir", str(tmp_path / "b"), "--warehouse", str(tmp_path / "w")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logq-aggregator: --metrics-listen {address} and --listen {address}")
    assert not (tmp_path / "b").exists()  # refused before anything was made
