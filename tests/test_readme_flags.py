"""README.md's flag tables list every flag of the two daemons, as their ``--help`` does.

The shipper's table once lacked ``--poll-interval``, ``--discover-interval`` and ``--log-level``:
an operator reading the README could not know they existed.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from aggregator.arguments import add_serve_flags
from shipper.config import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def table_flags(program: str) -> set[str]:
    """The flags named in the first column of the flag table under ``### `program```."""
    section = README.read_text(encoding="utf-8").split(f"### `{program}`", 1)[1]
    section = section.split("\n### ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `--")]
    return {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)", row.split(" | ")[0])}


def help_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The long flags ``--help`` lists, ``--help`` itself aside."""
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    return flags - {"--help"}


@pytest.mark.parametrize("program", ["logq-shipper", "logq-aggregator"])
def test_every_flag_is_in_the_readme(program: str) -> None:
    if program == "logq-shipper":
        parser = build_parser()
    else:
        parser = argparse.ArgumentParser()
        add_serve_flags(parser)
    assert help_flags(parser) - table_flags(program) == set()
    assert table_flags(program) - help_flags(parser) == set()


OPERATIONS = README.parent / "docs" / "operations.md"


def documented_keys(program: str) -> set[str]:
    """The keys docs/operations.md lists for ``program`` in its "Config files" table."""
    text = OPERATIONS.read_text(encoding="utf-8").split("### Config files", 1)[1]
    row = next(ln for ln in text.splitlines() if ln.startswith(f"| `{program}` |"))
    return set(re.findall(r"`([a-z_]+)`", row.split(" | ", 1)[1]))


def test_every_config_key_and_alias_is_documented() -> None:
    """The accepted spellings were undocumented: ``aggregators``, ``paths``, ``envoy_formats``
    and ``users`` worked, and with a second spelling of a setting the last silently won."""
    from aggregator import arguments
    from aggregator import config as agg
    from shipper import config as ship

    shipper = {k.replace("-", "_") for k in ship.file_setting_names()} - set(ship.FILE_ALIASES)
    assert documented_keys("logq-shipper") == shipper
    aggregator = {flag[2:].replace("-", "_") for flag, _ in arguments._FLAGS}
    assert documented_keys("logq-aggregator") == aggregator
    # What the loader takes (a Settings field without a flag would be a key too).
    fields = {agg._FILE_KEYS.get(f.name, f.name) for f in dataclasses.fields(agg.Settings)}
    assert documented_keys("logq-aggregator") == fields
    section = OPERATIONS.read_text(encoding="utf-8").split("### Config files", 1)[1]
    # The aggregator's canonical key is the flag's (envoy_format), its field the alias.
    for alias, name in {**ship.FILE_ALIASES, **agg._FILE_KEYS}.items():
        assert f"`{alias}` for `{name}`" in section


def test_keys_both_daemons_take_are_the_ones_named() -> None:
    """docs/operations.md names the keys both daemons take (to say where they belong in a
    shared file); the README once named two of the four."""
    both = documented_keys("logq-shipper") & documented_keys("logq-aggregator")
    section = OPERATIONS.read_text(encoding="utf-8").split("### Config files", 1)[1]
    named = re.search(r"keys both take \(([^)]*)\)", " ".join(section.split()))
    assert named is not None
    assert set(re.findall(r"`([a-z_]+)`", named.group(1))) == both
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert all(f"`{key}`" in readme.split("## Configuration", 1)[1] for key in both)


#: ``logq sql`` examples the README quotes: the statement, the answer as the README gives it,
#: and the CSV logq prints. The README said that a VALUES list's columns stay DuckDB's ``col0``
#: and an unnamed ROW's fields ``_0``, ``_1`` after logq had come to name both as Athena does.
SQL_EXAMPLES = [
    ("VALUES (1, 'x')", "give `_col0`, `_col1`", "_col0,_col1\n1,x\n"),
    ("SELECT * FROM (VALUES (1, 'x'))", "give `_col0`, `_col1`", "_col0,_col1\n1,x\n"),
    ("SELECT ROW(1, 'x')", "gives `{field0=1, field1=x}`", '_col0\n"{field0=1, field1=x}"\n'),
    ("SELECT 1; -- why", "a second statement exits 2", "_col0\n1\n"),
]


@pytest.mark.parametrize(("statement", "said", "printed"), SQL_EXAMPLES)
def test_readme_sql_examples_answer_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statement: str, said: str, printed: str
) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert f"`{statement}`" in readme
    assert said in readme.split(f"`{statement}`", 1)[1][:200]
    monkeypatch.delenv("LOGQ_ENGINE", raising=False)
    run = CliRunner().invoke(app, ["sql", statement, "-f", "csv", "--warehouse", str(tmp_path)])
    assert (run.exit_code, run.stdout) == (0, printed), run.stderr


@pytest.mark.parametrize(
    ("function", "statement"),
    [
        ("read_xlsx", "SELECT * FROM read_xlsx('a.xlsx')"),
        ("st_point", "SELECT st_point(1, 2)"),
        ("iceberg_scan", "SELECT * FROM iceberg_scan('s3://b/t')"),
    ],
)
def test_readme_extension_functions_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str, statement: str
) -> None:
    """The README names these as refused, exit 2, naming the extension."""
    from typer.testing import CliRunner

    from cli.app import app

    assert f"`{function}`" in README.read_text(encoding="utf-8")
    monkeypatch.delenv("LOGQ_ENGINE", raising=False)
    run = CliRunner().invoke(app, ["sql", statement, "--warehouse", str(tmp_path)])
    assert run.exit_code == 2, run.stderr
    assert "extension, which it does not load" in run.stderr


def migration_table_flags() -> set[str]:
    """The flags the "Coming from Fluent Bit / Fluentd" table of docs/operations.md names in its
    logq column."""
    text = OPERATIONS.read_text(encoding="utf-8").split("### Coming from Fluent Bit / Fluentd", 1)
    rows = [ln for ln in text[1].split("\n## ", 1)[0].splitlines() if ln.startswith("| ")]
    return {flag for row in rows[2:] for flag in re.findall(r"`(--[a-z-]+)", row.split(" | ")[1])}


def test_the_migration_tables_flags_exist() -> None:
    """A Fluent Bit or Fluentd user follows that table setting by setting: each flag it gives
    must be one of logq-shipper, logq-aggregator or logq (a renamed flag would send them to
    one that exits 2)."""
    import typer.main

    from cli.app import app

    shipper = help_flags(build_parser())
    serve = argparse.ArgumentParser()
    add_serve_flags(serve)
    logq = {
        opt
        for command in typer.main.get_command(app).commands.values()
        for param in command.params
        for opt in param.opts
        if opt.startswith("--")
    }
    flags = migration_table_flags()
    assert len(flags) > 30  # the table was found and read
    assert flags - shipper - help_flags(serve) - logq == set()
