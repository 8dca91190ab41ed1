"""`logq tail --follow`: lines that arrive later are printed once each, in time order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from athena.timerange import iso_utc
from cli import runner
from cli.follow import follow_lines
from cli.options import Common, EngineName
from cli.output import OutputFormat
from tests.athena.factory import logs_frame, write_frame


def _common(uri: str, fmt: OutputFormat = OutputFormat.json) -> Common:
    return Common(
        service=["svc"], since="10m", until=None, path=None, method=None, limit=None, fmt=fmt,
        engine=EngineName.local, warehouse=uri, dry_run=False, athena_database="logq",
        athena_workgroup=None, athena_output=None, athena_region=None, max_scan_bytes=None,
    )  # fmt: skip


def test_follow_prints_late_lines_once(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    first = logs_frame(20, now - timedelta(minutes=5), now - timedelta(minutes=3), ["svc"], seed=1)
    # Arrives later but carries container timestamps *before* the newest line already shown.
    late = logs_frame(5, now - timedelta(minutes=4), now - timedelta(minutes=3), ["svc"], seed=2)
    late["message"] = [f"late {i}" for i in range(5)]
    late["container_id"] = "late"
    write_frame(uri, "container_logs", first)

    common = _common(uri)
    prep = runner.prepare(
        common, "tail", "container_logs", {"grep": "", "stream": ""}, default_since="10m",
        default_limit=100,
    )  # fmt: skip
    initial = list(reversed(runner.execute(common, prep).rows))
    printed: list[list[tuple]] = []

    def printer(common, result, prep, rows, stream=False):
        printed.append(list(rows))
        if len(printed) == 1:
            folder = Path(uri, "container_logs", "service=svc")
            write_frame(str(tmp_path / "staging"), "container_logs", late)
            for src in Path(tmp_path / "staging", "container_logs", "service=svc").rglob(
                "*.parquet"
            ):
                dest = folder / src.parent.name / "late-0001.parquet"
                dest.parent.mkdir(parents=True, exist_ok=True)
                src.rename(dest)

    follow_lines(common, prep, initial, 0.01, printer, polls=3)
    assert len(printed) == 2, "the initial lines, then one batch with the late lines, then nothing"
    assert [r[4] for r in printed[0]] == list(first.sort_values("timestamp")["message"])
    assert sorted(r[4] for r in printed[1]) == sorted(late["message"])
    shown = [iso_utc(r[0]) for r in printed[1]]
    assert shown == sorted(shown)


def test_follow_cli_stops_on_ctrl_c(tmp_path: Path, monkeypatch) -> None:
    """The CLI path: --follow with json prints NDJSON and exits 0 on Ctrl-C."""
    import json

    from typer.testing import CliRunner

    from cli.app import app

    uri = str(tmp_path / "wh")
    now = datetime.now(UTC)
    write_frame(uri, "container_logs", logs_frame(3, now - timedelta(minutes=2), now, ["svc"]))
    calls = {"n": 0}

    def fake_sleep(seconds: float) -> None:
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr("cli.follow.time.sleep", fake_sleep)
    result = CliRunner().invoke(app, ["tail", "-s", "svc", "-F", "-f", "json", "--warehouse", uri])
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(ln) for ln in result.stdout.splitlines()]
    assert len(lines) == 3 and calls["n"] == 1
    assert [ln["timestamp"] for ln in lines] == sorted(ln["timestamp"] for ln in lines)
