"""Settings: flags over the TOML --config file over defaults, with errors that name the fix."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from aggregator.config import ConfigError, Settings, add_serve_flags, load_settings
from aggregator.service import main


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


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        ("flush_intervall = 3\n", [], "unknown keys ['flush_intervall']"),
        ("listen = [\n", [], "not valid TOML"),
        ("", ["--listen", "nohostport"], "HOST:PORT"),
        ("", ["--tls-cert", "c.pem"], "both --tls-cert and --tls-key"),
        ("", ["--flush-interval", "0"], "--flush-interval must be > 0"),
        ("", ["--unhealthy-after", "-1"], "--unhealthy-after must be > 0"),
        ("", ["--user", "alice:pw"], "--user needs --shared-key"),
        ("", ["--shared-key", "k", "--user", "alice"], "--user must be NAME:PASSWORD"),
        ('user = ["bob:"]\n', ["--shared-key", "k"], "--user must be NAME:PASSWORD"),
        ('flush_interval = "soon"\n', [], "flush_interval must be a number, got 'soon'"),
        ("listen = 5\n", [], "listen must be a string, got 5"),
        ("max_frame_bytes = inf\n", [], "max_frame_bytes must be a whole number, got inf"),
        ("max-connections = true\n", [], "max_connections must be a whole number, got True"),
        ("envoy_format = 5\n", [], "envoy_formats must be a string or a list of strings"),
        ("flush_interval = nan\n", [], "--flush-interval must be > 0 seconds"),
        ("", ["--idle-timeout", "-1"], "--idle-timeout must be > 0 seconds"),
        ("", ["--compact-interval", "inf"], "--compact-interval must be >= 0 seconds"),
        ("", ["--max-connections", "0"], "--max-connections must be at least 1"),
        ("", ["--max-message-entries", "0"], "--max-message-entries must be at least 1"),
        ("", ["--log-level", "verbose"], "--log-level must be one of debug, info"),
        ("", ["--node-id", "../../escaped"], "--node-id must be 1-64 letters"),
        ("", ["--warehouse", " "], "--warehouse is empty"),
    ],
)
def test_bad_settings_say_what_to_do(
    tmp_path: Path, content: str, argv: list[str], message: str
) -> None:
    conf = tmp_path / "agg.toml"
    conf.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(["--config", str(conf), *argv])


def test_cli_exits_2_with_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    wh = tmp_path / "wh"
    assert main(["--envoy-format", "%REQ(:PATH)%", "--warehouse", str(wh)]) == 2
    assert not wh.exists()
    assert "START_TIME" in capsys.readouterr().err
