"""Bad values in flags and the ``--config`` file: one line naming the setting, exit status 2.

An operator who mistypes a TOML value (``aggregator = 5``, ``batch_lines = 1.9``), leaves a
template variable unset (``--state-dir ""``), writes ``nan`` or an IPv6 address without brackets
must get one line that says which setting, which value and what to write -- never a traceback,
and never a silent guess (``--state-dir ""`` meant the default directory, ``compress = 1``
meant gzip, ``batch_lines = true`` meant 1, ``::1:24224`` became ``::1:24224:24224``).
Everything here runs in-process on :func:`load_config` / :func:`main`: no shipper is started.

The same goes for the two aggregator set-ups most often mismatched with the shipper's flags
(``--shared-key`` or ``--tls`` on one side only): the delivery error hints at the other side.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from shipper import checkpoint, config, daemon, sender
from shipper.checkpoint import Registry
from shipper.config import Endpoint, load_config, parse_endpoint
from shipper.daemon import main
from shipper.errors import DeliveryError, StartError
from shipper.sender import describe_error, tls_context
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import plain_id
from tests.shipper.test_sender import client, message


@pytest.fixture(autouse=True)
def never_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration wrongly accepted must fail the test, not start a shipper on the defaults
    (/var/lib/logq-shipper, /var/lib/docker/containers) of the machine running the tests."""

    def started(level: str) -> None:
        raise AssertionError("the configuration was accepted: the shipper would start")

    monkeypatch.setattr(daemon, "setup_logging", started)


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of ``logq-shipper argv``, which must exit with status 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("logq-shipper: ") and "Traceback" not in err
    return err


def toml(tmp_path: Path, text: str) -> str:
    conf = tmp_path / "shipper.toml"
    conf.write_text(text + "\n")
    return str(conf)


@pytest.mark.parametrize(
    ("line", "key", "shown"),
    [
        ("aggregator = 5", "aggregator", "got 5"),
        ('aggregator = ["a:1", 2]', "aggregator", "got ['a:1', 2]"),
        ("path = 5", "path", "got 5"),
        ("state_dir = 5", "state_dir", "got 5"),
        ('docker_root = ["host"]', "docker_root", "got ['host']"),
        ("cri-root = 1", "cri-root", "got 1"),
        ("hostname = 5", "hostname", "got 5"),
        (
            "shared_key = 5",
            "shared_key",
            "got a value of type int (the value is a secret, not shown)",
        ),
        ("metrics_listen = 9110", "metrics_listen", "got 9110"),
        ("max_line_bytes = 1e400", "max_line_bytes", "got inf"),
        ("batch_lines = true", "batch_lines", "got True"),
        ("batch_lines = 1.9", "batch_lines", "got 1.9"),
        ('batch-bytes = "1024"', "batch-bytes", "got '1024'"),
        ("ack_timeout = true", "ack_timeout", "got True"),
        ('poll_interval = "1"', "poll_interval", "got '1'"),
        ('state_dir = "/var/lib/a\\u0000b"', "state_dir", "got '/var/lib/a\\x00b'"),
        ('path = ["/x/*.log", "\\u0000"]', "path", "got ['/x/*.log', '\\x00']"),
    ],
)
def test_toml_values_of_the_wrong_type_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, key: str, shown: str
) -> None:
    """Before the fix: TypeError/OverflowError tracebacks, or a float/bool read as an int."""
    conf = toml(tmp_path, line)
    err = refused(["--config", conf, "--once"], capsys)
    assert f"--config {conf}: key {key!r}: must be " in err and err.rstrip().endswith(shown)


def test_every_key_has_a_type_check() -> None:
    assert set(config._KINDS) == set(config._HELP) - {"config"}
    assert set(config._EXPECTED) == {k for k, v in config._KINDS.items() if "string" in v}


def test_toml_values_of_the_right_type_still_work(tmp_path: Path) -> None:
    conf = toml(
        tmp_path,
        'aggregator = "a:1"\npath = ["/x/*.log"]\nstate_dir = "/tmp/s"\nbatch_lines = 7\n'
        'poll_interval = 1\nack_timeout = 2.5\nlog_level = "DEBUG"\ncompress = true',
    )
    cfg = load_config(["--config", conf])
    assert cfg.aggregators == (Endpoint("a", 1),) and cfg.paths == ("/x/*.log",)
    assert (cfg.batch_lines, cfg.poll_interval, cfg.ack_timeout) == (7, 1.0, 2.5)
    assert (cfg.log_level, cfg.compress) == ("debug", True)


def test_keys_under_a_shipper_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As the aggregator reads ``[aggregator]``: the ``[shipper]`` table's keys over the
    top-level ones, the ``[aggregator]`` table skipped (it is the aggregator's), flags over
    both. Before: "unknown key 'shipper'"."""
    conf = toml(
        tmp_path,
        'shared_key = "k"\nlog_level = "info"\n'
        '[shipper]\naggregator = ["agg-1:24224", "agg-2:24225"]\nlog-level = "warning"\n'
        "batch_lines = 7\n"
        '[aggregator]\nlisten = "0.0.0.0:24224"\nflush_interval = 3',
    )
    cfg = load_config(["--config", conf, "--batch-lines", "9"])
    assert cfg.aggregators == (Endpoint("agg-1", 24224), Endpoint("agg-2", 24225))
    assert (cfg.shared_key, cfg.log_level, cfg.batch_lines) == ("k", "warning", 9)
    # The shipper's table holds shipper keys only, and is checked like the top level.
    err = refused(["--config", toml(tmp_path, "[shipper]\nflush_interval = 3"), "--once"], capsys)
    assert "key 'flush_interval': unknown key" in err
    err = refused(["--config", toml(tmp_path, '[shipper]\nbatch_lines = "7"'), "--once"], capsys)
    assert "key 'batch_lines': must be a whole number" in err


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (
            'Aggregator = "a:1"',
            "key 'Aggregator': unknown key (keys are lower case: write 'aggregator')",
        ),
        ('paht = "/x/*.log"', "key 'paht': unknown key (did you mean 'path'?);"),
        ('[shipper]\nState-Dir = "/s"', "unknown key (keys are lower case: write 'state_dir')"),
        ("xyz = 1", "key 'xyz': unknown key (a logq-aggregator key goes under [aggregator]);"),
    ],
)
def test_unknown_key_names_the_key_it_is_close_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, said: str
) -> None:
    """TOML keys are case-sensitive: ``Aggregator`` (as Fluent Bit's case-insensitive keys are
    often written) is said to be lower case, and a typo gets the key it is close to."""
    assert said in refused(["--config", toml(tmp_path, content), "--once"], capsys)


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        ("[shippr]\nonce = true", " (did you mean [shipper]?);"),
        ('[Aggregator]\nlisten = ":24224"', " (did you mean [aggregator]?);"),
        ("[inputs]\nx = 1", ";"),
    ],
)
def test_a_misspelt_table_is_named_as_a_table_by_both_daemons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, hint: str
) -> None:
    """No setting is a table: ``[shippr]`` is a misspelt ``[shipper]``, whose settings would all
    go unread. It was an unknown key, the shipper adding "a logq-aggregator key goes under
    [aggregator]", and the aggregator listing its keys: neither named the table as the fault."""
    from aggregator.commands import main as aggregator_main

    conf = toml(tmp_path, content)
    table = content.split("]")[0].lstrip("[")
    said = f"a table [{table}] that neither program reads{hint}"
    shipper_err = refused(["--config", conf, "--once"], capsys)
    assert said in shipper_err and "the tables are [aggregator] and [shipper]" in shipper_err
    assert aggregator_main(["--config", conf]) == 2
    assert said in capsys.readouterr().err


def test_log_level_key_is_checked_like_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix: ValueError "Unknown level" from logging, as a traceback."""
    err = refused(["--config", toml(tmp_path, 'log_level = "verbose"')], capsys)
    assert "log-level must be one of debug, info, warning, error, got 'verbose'" in err


@pytest.mark.parametrize("value", ["1", "0", '"yes"'])
def test_compress_is_none_gzip_or_a_boolean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """Before the fix ``compress = 1`` compared equal to True and meant gzip."""
    err = refused(["--config", toml(tmp_path, f"compress = {value}")], capsys)
    assert "key 'compress': must be 'none' or 'gzip'" in err
    assert load_config(["--config", toml(tmp_path, "compress = false")]).compress is False
    assert load_config(["--config", toml(tmp_path, 'compress = "gzip"')]).compress is True


@pytest.mark.parametrize(
    "flag",
    [
        "--state-dir",
        "--docker-root",
        "--cri-root",
        "--path",
        "--tls-ca",
        "--hostname",
        "--shared-key",
        "--metrics-listen",
        "--aggregator",
    ],
)
def test_empty_values_are_refused(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    """Before the fix ``--state-dir ""`` silently used /var/lib/logq-shipper (and rewrote the
    checkpoints found there); the other empty values silently meant their defaults."""
    err = refused([f"{flag}=", "--once"], capsys)
    assert f"{flag} is empty" in err or "empty aggregator address" in err
    err = refused([flag, "  ", "--once"], capsys)
    assert "empty" in err


def test_empty_config_path_and_toml_values_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix ``--config ""`` was ignored: the shipper ran on defaults."""
    err = refused(["--config", "", "--once"], capsys)
    assert "--config is empty; pass the path of a TOML file" in err
    err = refused(["--config", toml(tmp_path, 'state_dir = ""'), "--once"], capsys)
    assert "--state-dir is empty" in err
    err = refused(["--config", toml(tmp_path, "aggregator = []"), "--once"], capsys)
    assert "lists no aggregator" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--retry-timeout", "nan"),
        ("--ack-timeout", "nan"),
        ("--ack-timeout", "inf"),
        ("--poll-interval", "nan"),
        ("--poll-interval", "1e-9"),
        ("--poll-interval", "-1"),
        ("--discover-interval", "inf"),
        ("--discover-interval", "0"),
    ],
)
def test_seconds_must_be_finite_and_not_absurdly_small(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """Before the fix nan passed ``> 0`` checks (every comparison with nan is false): an ack
    timeout of nan gave up at once, and a 1 ns poll interval burned a core."""
    err = refused([flag, value, "--once"], capsys)
    assert f"{flag} must be a finite number of seconds, at least" in err
    assert err.rstrip().endswith(f"got {float(value)!r}")


@pytest.mark.parametrize(
    ("key", "value", "bound", "as_flag"),
    [
        ("batch_lines", "0", "at least 1", "0"),
        ("batch_bytes", "-1", "at least 1", "-1"),
        ("max_inflight_bytes", "0", "at least 1", "0"),
        # Past 2**63: an OverflowError in C code once there was data, the source retried forever
        ("batch_lines", str(2**63), "at most 1,099,511,627,776", str(2**63)),
        ("batch_bytes", str(2**40 + 1), "at most 1,099,511,627,776", str(2**40 + 1)),
        ("max_line_bytes", "1023", "at least 1024", "1023"),
        (
            "max_line_bytes",
            "393217",
            "at most 393216 (384 KiB): one line must fit in a Forward message of 4 MiB, the most "
            "every logq-aggregator takes, counting 4 bytes per character",
            "393217",
        ),
        ("ack_timeout", "0", "a finite number of seconds, at least 0.1", "0.0"),
        ("poll_interval", "-1", "a finite number of seconds, at least 0.01", "-1.0"),
    ],
)
def test_a_number_out_of_range_names_its_flag_or_its_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
    value: str,
    bound: str,
    as_flag: str,
) -> None:
    """``--batch-lines 0`` said ``batch-lines must be positive`` and ``--max-line-bytes 10``
    ``max-line-bytes must be at least 1024``: no flag of that name, and no value. The flag is
    named as given (``as_flag``: the value as argparse read it), and the same value from the
    file is blamed on its key as written; exit status 2 both."""
    flag = "--" + key.replace("_", "-")
    err = refused([flag, value, "--once"], capsys)
    assert err == f"logq-shipper: {flag} must be {bound}; got {as_flag}\n"
    written = key.replace("_", "-")
    conf = toml(tmp_path, f"[shipper]\n{written} = {value}")
    err = refused(["--config", conf, "--once"], capsys)
    assert (
        err
        == f"logq-shipper: --config {conf}: key {written!r}: {flag} must be {bound}; got {value}\n"
    )


def test_seconds_in_the_config_file_are_checked_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(["--config", toml(tmp_path, "poll_interval = nan")], capsys)
    assert "--poll-interval must be a finite number of seconds, at least 0.01; got nan" in err
    err = refused(["--config", toml(tmp_path, "ack_timeout = 1" + "0" * 400)], capsys)
    assert "--ack-timeout must be a finite number of seconds" in err  # not an OverflowError
    cfg = load_config(["--poll-interval", "0.01", "--discover-interval", "0.2"])
    assert (cfg.poll_interval, cfg.discover_interval) == (0.01, 0.2)


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--aggregator", "::1:24224", "IPv6 addresses need brackets: [::1]:24224"),
        ("--aggregator", "fe80::1", "IPv6 addresses need brackets: [::1]:24224"),
        ("--metrics-listen", "::1:9110", "IPv6 addresses need brackets: [::1]:9110"),
        ("--aggregator", "host:", "no port after ':'; write host:PORT"),
        ("--aggregator", "[::1]:", "no port after ':'; write [::1]:PORT"),
        ("--metrics-listen", "host:", "no port after ':'; write host:PORT"),
        ("--aggregator", "[::1", "expected HOST:PORT, or [::1]:24224 for IPv6"),
        ("--aggregator", "host:+1", "bad port"),
        ("--aggregator", "host:0", "port 0 is not in 1-65535"),  # 0 is for listening only
        ("--metrics-listen", "host:65536", "port 65536 is not in 0-65535"),
    ],
    ids=plain_id,
)
def test_addresses_are_not_guessed(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, says: str
) -> None:
    """Before the fix ``::1:24224`` became host ``::1:24224`` port 24224 (failing later with
    "name or service not known") and ``host:`` silently meant the default port."""
    err = refused([flag, value, "--once"], capsys)
    assert says in err and repr(value) in err


def test_bracketed_ipv6_and_plain_addresses_still_work() -> None:
    assert parse_endpoint("[::1]:24224") == Endpoint("::1", 24224)
    assert parse_endpoint("[fe80::1]") == Endpoint("fe80::1", 24224)
    assert parse_endpoint("agg:7") == Endpoint("agg", 7)
    cfg = load_config(["--aggregator", "[::1]:5", "--metrics-listen", "[::1]"])
    assert cfg.aggregators == (Endpoint("::1", 5),)
    assert cfg.metrics_listen == Endpoint("::1", 9110)
    # Port 0: a free port, which the kernel picks (and the ``metrics on`` line tells).
    assert load_config(["--metrics-listen", ":0"]).metrics_listen == Endpoint("", 0)


@pytest.mark.parametrize(
    ("code", "says", "todo"),
    [
        (errno.EROFS, "is on a read-only file system", "mount a writable volume there"),
        (errno.EACCES, "is not writable by this process", "chown -R"),
    ],
)
def test_state_dir_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, says: str, todo: str
) -> None:
    """An existing state dir on a read-only mount (or root's, for a non-root shipper): before
    the fix the lock file's ``os.open`` raised an OSError traceback. Tests run as root here, so
    a mode 0o500 directory would not fail: the lock's open is made to fail instead."""
    lock = str(tmp_path / "lock")
    real_open = os.open

    def failing_open(path: object, *args: object, **kw: object) -> int:
        if str(path) == lock:
            raise OSError(code, os.strerror(code), lock)
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint.os, "open", failing_open)
    with pytest.raises(StartError) as err:  # the host refused it: exit 1, not 2
        Registry(tmp_path)
    text = str(err.value)
    assert text.startswith(f"--state-dir {tmp_path} {says} ")
    assert f"running as uid {os.getuid()}, gid {os.getgid()}" in text and todo in text
    assert "\n" not in text


def test_state_dir_without_locks_or_in_the_way_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    with pytest.raises(StartError, match=r"is not a directory .*point --state-dir at a dir"):
        Registry(in_the_way)

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(checkpoint.fcntl, "flock", no_locks)
    with pytest.raises(StartError, match=rf"^--state-dir {tmp_path} cannot be used \(.*lock"):
        Registry(tmp_path)


def test_no_helo_hints_at_the_aggregators_shared_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """An aggregator without a key never sends HELO; the shipper with one said "timed out"."""
    monkeypatch.setattr(sender, "HANDSHAKE_TIMEOUT", 0.2)
    r = Receiver()  # no shared key: waits for messages, sends no HELO

    async def go() -> None:
        c = client(r.address, shared_key="k", give_up_after=0.5)
        with pytest.raises(DeliveryError) as err:
            await c.deliver(*message(1))
        await c.close()
        assert (
            "sent no HELO within 0.2 s: it does not expect --shared-key; drop it here, or give "
            "the aggregator the same --shared-key" in str(err.value)
        )

    try:
        asyncio.run(go())
    finally:
        r.close()
    assert r.records == []


def test_tls_to_a_plain_aggregator_hints_at_its_tls() -> None:
    """A plain-text server reads the ClientHello and hangs up: the shipper said
    "ConnectionResetError" (asyncio raises it bare on EOF during the TLS handshake)."""

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:  # read all the client sends, so that closing sends FIN, not RST
            while await asyncio.wait_for(reader.read(65536), 0.2):
                pass
        except (TimeoutError, OSError):
            pass
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(plain, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = client(f"127.0.0.1:{port}", tls=tls_context(None), give_up_after=0.5)
        try:
            with pytest.raises(DeliveryError) as err:
                await c.deliver(*message(1))
        finally:
            await c.close()
            server.close()
            await server.wait_closed()
        assert (
            "connection closed during the TLS handshake; is the aggregator serving TLS "
            "(--tls-cert)?" in str(err.value)
        )

    asyncio.run(go())


def test_other_timeouts_and_resets_keep_their_own_words() -> None:
    """The hints apply only where the cause is known: elsewhere the error speaks for itself."""
    assert describe_error(TimeoutError("no ack within 30 s")) == "no ack within 30 s"
    assert describe_error(TimeoutError()) == "timed out"
    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    assert describe_error(reset) == "connection reset by peer"
    assert describe_error(ConnectionResetError("Connection lost")) == "Connection lost"


@pytest.mark.parametrize(
    ("text", "first", "second"),
    [
        ('aggregator = "a:1"\naggregators = ["b:2"]', "aggregator", "aggregators"),
        ('paths = ["/x/*.log"]\npath = "/y/*.log"', "paths", "path"),
        ("batch_lines = 7\nbatch-lines = 9", "batch_lines", "batch-lines"),
        (
            "[shipper]\nmax-line-bytes = 2048\nmax_line_bytes = 4096",
            "max-line-bytes",
            "max_line_bytes",
        ),
    ],
)
def test_two_spellings_of_one_setting_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, first: str, second: str
) -> None:
    """The last of ``aggregator = ...`` and ``aggregators = ...`` silently won."""
    conf = toml(tmp_path, text)
    err = refused(["--config", conf], capsys)
    assert f"--config {conf}: key {second!r}: the same setting as key {first!r}" in err
    assert "keep one of them" in err


def test_a_byte_order_mark_and_crlf_line_ends_are_read(tmp_path: Path) -> None:
    """Notepad's UTF-8 with a byte order mark was "not valid TOML: Invalid statement (at line
    1, column 1)"."""
    conf = tmp_path / "shipper.toml"
    conf.write_bytes(b'\xef\xbb\xbfbatch_lines = 7\r\naggregator = "a:1"\r\n')
    cfg = load_config(["--config", str(conf)])
    assert (cfg.batch_lines, cfg.aggregators) == (7, (Endpoint("a", 1),))


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"batch_lines = 7\x00\n", "not valid TOML"),
        (b"batch_lines = [\n", "not valid TOML"),
        # tomllib's RecursionError was a traceback
        (b"x = " + b"[" * 3000 + b"]" * 3000, "values nested too deeply to read"),
        (b"x = " + b"{a=" * 3000 + b"1" + b"}" * 3000, "values nested too deeply to read"),
        (b"", None),
    ],
)
def test_every_file_error_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, said: str | None
) -> None:
    conf = tmp_path / "shipper.toml"
    conf.write_bytes(content)
    if said is None:  # an empty file: the defaults
        assert load_config(["--config", str(conf)]).batch_lines == 2048
        return
    assert refused(["--config", str(conf)], capsys).startswith(
        f"logq-shipper: --config {conf}: {said}"
    )
    assert refused(["--config", str(tmp_path)], capsys).startswith(
        f"logq-shipper: --config {tmp_path}: is a directory"
    )
    assert refused(["--config", str(tmp_path / "no")], capsys).startswith(
        f"logq-shipper: --config {tmp_path / 'no'}: no such file"
    )


def test_tls_key_password_from_the_flag_the_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The passphrase of an encrypted --tls-key: flag over file over
    $LOGQ_SHIPPER_TLS_KEY_PASSWORD, the variable taken only with a key; without one the flag
    is refused (it would open nothing)."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    tls = ["--aggregator", "a:1", "--tls", "--tls-cert", str(cert), "--tls-key", str(key)]
    monkeypatch.setenv("LOGQ_SHIPPER_TLS_KEY_PASSWORD", "from-env")
    assert load_config(tls).tls_key_password == "from-env"
    assert load_config(["--aggregator", "a:1", "--tls"]).tls_key_password is None
    conf = toml(tmp_path, '[shipper]\ntls_key_password = "from-file"')
    assert load_config(["--config", conf, *tls]).tls_key_password == "from-file"
    flagged = load_config(["--config", conf, *tls, "--tls-key-password", "from-flag"])
    assert flagged.tls_key_password == "from-flag"
    err = refused(["--aggregator", "a:1", "--tls", "--tls-key-password", "x", "--once"], capsys)
    assert "--tls-key-password needs --tls-cert and --tls-key" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-server-name", "agg.example"], "--tls-server-name needs --tls"),
        (["--tls", "--tls-server-name", "https://agg:24224"], "must be a DNS name or an IP"),
        (["--tls", "--tls-server-name", "two names"], "must be a DNS name or an IP"),
    ],
)
def test_tls_server_name_needs_tls_and_a_name(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in refused(["--aggregator", "a:1", "--once", *argv], capsys)


def test_tls_server_name_is_taken() -> None:
    cfg = load_config(["--aggregator", "10.0.0.7:24224", "--tls", "--tls-server-name", "agg.x"])
    assert cfg.tls_server_name == "agg.x"


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--hostname", "host\udcff"], {}, "--hostname"),
        (["--username", "user\udcff", "--password", "pw"], {}, "--username"),
        (["--username", "user", "--password", "pw\udcff"], {}, "--password"),
        (["--username", "user"], {"LOGQ_SHIPPER_PASSWORD": "pw\udcff"}, "$LOGQ_SHIPPER_PASSWORD"),
    ],
    ids=["hostname", "username", "password", "password-variable"],
)
def test_text_for_the_wire_that_is_not_utf8_is_refused(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    said: str,
) -> None:
    """Bytes that are no UTF-8 in argv or the environment arrive as lone surrogates; sent as
    msgpack text they failed with "internal error: UnicodeEncodeError" at every attempt."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    key = ["--shared-key", "k" * 32]
    err = refused([*args, *key, "--once"], capsys)
    assert err.startswith(f"logq-shipper: {said} holds bytes that are not UTF-8 (character "), err
    assert err.endswith("); give it as UTF-8 text\n"), err
