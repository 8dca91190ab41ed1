"""Notes and reasons that list ``--service`` values stay short, and cheap, however many and
long the values: a few are named, the rest counted, close names looked for only for those
named (difflib compares a value with every known name), and the whole text capped.

Before: 300 values of 66 characters outside an Athena table's list made a 36 KB note, and
2,000 took 43 s of difflib; "elsewhere", "no data of" and "no matching rows ... for" listed
every value, some twice. The unknown-service text of the local engine is tested in
test_errors.py (``test_unknown_services_text_stays_bounded_with_many_long_names``)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from athena import partitions
from athena.projection import ServiceEnum
from athena.timerange import TimeRange
from cli.explain import (
    elsewhere_text,
    explain_empty,
    missing_services_text,
    only_other_table_text,
    outside_enum_reason,
    outside_enum_text,
    services_for,
    showing_text,
)
from cli.options import EngineName
from cli.service_names import NOTE_MAX_CHARS, counted
from tests.cli.conftest import Warehouse

THE_FIX = (
    "The list is fixed when the DDL is applied by hand: apply again the DDL that `logq ddl "
    "--warehouse s3://logs/prod --athena-database logs` prints (it lists the services now in "
    "the warehouse), or run an aggregator with --athena-database, which keeps the list "
    "current; meanwhile `--engine local --warehouse s3://logs/prod` reads the data"
)


def _long(count: int, tag: str) -> list[str]:
    """``count`` service names of 66 characters (as stored: a ``--service`` value as typed)."""
    return [f"{tag}-gateway-eu-west-1-canary-cluster-{i:04d}-checkout-service-v2-blue" for i in
            range(count)]  # fmt: skip


def _common(warehouse: str = "s3://logs/prod") -> Any:
    """The options the texts read, on Athena."""
    return SimpleNamespace(warehouse=warehouse, engine=EngineName.athena, path=None)


@pytest.mark.parametrize("count", [300, 2000])
def test_outside_enum_text_names_a_few_values_and_counts_the_rest(
    compared: list[str], count: int
) -> None:
    """100 values are a character off a name in the table's list: the note names two,
    counts the others, and suggests the names closest to those two only."""
    listed = _long(200, "pay")
    given = [f"{n}x" for n in listed[:100]] + _long(count - 100, "zzz")
    served = listed[100:180]
    enum = ServiceEnum(tuple(listed), None)
    text = outside_enum_text(_common(), "logs", "envoy_access", given + served, enum, given)
    assert len(text) <= NOTE_MAX_CHARS, (len(text), text)
    assert text.startswith(
        f"{given[0]!r}, {given[1]!r} and {count - 2:,} more are not in the service list "
        "(projection.service.values) of the Athena table logs.envoy_access, so Athena reads "
        f"none of their data; showing {served[0]}, {served[1]} and 78 more only. {THE_FIX}; "
        f"did you mean {listed[0]!r} or "
    ), text
    assert compared == given[:2]  # before: every one of them
    assert "logq services" not in text  # on Athena it reads this same list


def test_outside_enum_text_for_a_few_values_is_worded_as_before() -> None:
    """Every value named, every close name suggested (sorted), as before the bound."""
    enum = ServiceEnum(("recipe", "users", "billing", "recipes", "user"), None)
    given, missing = ["recipee", "userz", "billing"], ["recipee", "userz"]
    text = outside_enum_text(_common(), "logs", "envoy_access", given, enum, missing)
    assert text == (
        "'recipee', 'userz' are not in the service list (projection.service.values) of the "
        "Athena table logs.envoy_access, so Athena reads none of their data; showing billing "
        f"only. {THE_FIX}; did you mean 'recipe' or 'recipes' or 'user' or 'users'?"
    )


def test_outside_enum_text_past_its_room_keeps_the_closest_names_that_fit() -> None:
    """A value of 120 characters close to three names of 121 to 131 in the list, and a
    warehouse of 210 (named twice): the three would pass NOTE_MAX_CHARS; the closest, which
    fits, is named, the two others counted."""
    stem = "a" * 60 + "-" + "b" * 59
    listed = [f"{stem}{end}" for end in ("x", "-xy", "-xyz", "-other-name")]
    enum = ServiceEnum(tuple(listed), None)
    uri = "s3://logs/" + "p" * 200
    text = outside_enum_text(_common(uri), "logs", "envoy_access", [stem], enum, [stem])
    assert len(text) <= NOTE_MAX_CHARS, (len(text), text)
    assert "characters ...]" not in text  # not cut: the suggestion was made to fit
    assert text.endswith(f"reads the data; did you mean {listed[0]!r}? 2 more are close"), text


def test_outside_enum_text_with_a_warehouse_of_kilobytes_is_cut() -> None:
    """The names are bounded by themselves; a --warehouse of 3,000 characters, named twice,
    is cut from the middle of the note (what was left out counted)."""
    enum = ServiceEnum(("recipe",), None)
    uri = "s3://logs/" + "p" * 3000
    text = outside_enum_text(_common(uri), "logs", "envoy_access", ["newsvc"], enum, ["newsvc"])
    assert len(text) <= NOTE_MAX_CHARS, len(text)
    assert text.startswith("'newsvc' is not in the service list"), text
    assert "characters ...]" in text and text.endswith("reads the data"), text


def test_outside_enum_reason_counts_the_values() -> None:
    """The "no results" reason named every value: 140 KB for 2,000 of 66 characters."""
    given = _long(2000, "zzz")
    reason = outside_enum_reason("logs", ["envoy_access"], given)
    assert reason == (
        f"Athena reads no partition of {given[0]!r}, {given[1]!r} and 1,998 more: not in the "
        "service list of logs.envoy_access (see the note above)"
    )
    assert outside_enum_reason("logs", ["envoy_access", "container_logs"], ["a", "b"]) == (
        "Athena reads no partition of 'a', 'b': not in the service list of logs.envoy_access, "
        "logs.container_logs (see the note above)"
    )


def test_elsewhere_text_counts_the_names_and_keeps_its_command_whole() -> None:
    """300 names the other table has were listed twice (quoted, then in the command): 40 KB.
    Past the room they are counted and the command says where the names go: one with only
    the names shown would read only those."""
    names = _long(300, "app")
    text = elsewhere_text("envoy_access", names)
    assert text == (
        f"services {names[0]!r}, {names[1]!r} and 298 more have no Envoy access logs (they "
        "have container logs: logq tail -s <their names> reads them)"
    )
    assert elsewhere_text("container_logs", names[:2]) == (
        f"services {names[0]!r}, {names[1]!r} have no container logs (they have Envoy access "
        f"logs: logq errors -s {names[0]},{names[1]})"
    )


def _tables(monkeypatch: pytest.MonkeyPatch, listed: dict[str, list[str]]) -> Any:
    """A warehouse whose tables list these services (no folder is read)."""
    monkeypatch.setattr(partitions, "list_services", lambda wh, table: listed.get(table, []))
    return SimpleNamespace(uri="/data/wh")


def test_missing_services_text_bounds_both_lists(
    monkeypatch: pytest.MonkeyPatch, compared: list[str]
) -> None:
    """300 values only container_logs has, 300 no table has (200 a character off a known
    one) and 80 answered for: each list named a few at a time, close names only for the
    unknown values named."""
    known, logs_only = _long(200, "pay"), _long(300, "app")
    wh = _tables(monkeypatch, {"envoy_access": known, "container_logs": logs_only})
    unknown = [f"{n}x" for n in known] + _long(100, "zzz")
    rest = showing_text(known[:80])
    text = missing_services_text(wh, "envoy_access", logs_only + unknown, known, rest)
    assert len(text) <= NOTE_MAX_CHARS, (len(text), text)
    assert text.startswith(
        f"services {logs_only[0]!r}, {logs_only[1]!r} and 298 more have no Envoy access logs "
        "(they have container logs: logq tail -s <their names> reads them); unknown service "
        f"{unknown[0]!r}, {unknown[1]!r} and 298 more in envoy_access (200 known services; "
        f"`logq services` lists them); showing {known[0]}, {known[1]} and 78 more only; "
    ), text
    assert compared == unknown[:2]
    assert f"{known[0]!r}" in text.split("only; ")[1], text  # the closest name is still given


def test_only_other_table_text_bounds_its_lists(
    monkeypatch: pytest.MonkeyPatch, compared: list[str]
) -> None:
    """envoy_access is empty and container_logs holds the services: without --service, ten
    names of 128 were 1,300 characters; with 300 of 66 that it holds and 300 that no table
    has, both lists named in full."""
    long_ten = [f"{i}{'n' * 127}" for i in range(10)]
    wh = _tables(monkeypatch, {"container_logs": long_ten})
    text = only_other_table_text(wh, "envoy_access", None)
    assert text is not None and text.startswith(
        "the warehouse /data/wh has no envoy_access data at all, only container logs "
        "(10 services): logq tail reads them; a line is stored as an access line"
    ), text
    logs = _long(300, "app")
    wh = _tables(monkeypatch, {"container_logs": logs})
    unknown = [f"{n}x" for n in logs[:150]] + _long(150, "zzz")
    text = only_other_table_text(wh, "envoy_access", logs + unknown)
    assert text is not None and len(text) <= NOTE_MAX_CHARS, text
    assert text.startswith(
        f"services {logs[0]!r}, {logs[1]!r} and 298 more have no Envoy access logs (they have "
        "container logs: logq tail -s <their names> reads them); the warehouse /data/wh has "
        "no envoy_access data at all, only container logs; unknown service "
        f"{unknown[0]!r}, {unknown[1]!r} and 298 more in container_logs (300 known services; "
    ), text
    assert compared == unknown[:2]


def test_empty_answer_reasons_on_athena_count_the_services() -> None:
    """ "no matching rows ... for a, b, ..." listed every --service, and those outside the
    table's list once more: 2,000 names made a reason of 280 KB."""
    given = _long(2000, "svc")
    trange = TimeRange(datetime(2026, 11, 28, tzinfo=UTC), datetime(2026, 11, 28, 1, tzinfo=UTC))
    span = "between 2026-11-28T00:00:00.000Z and 2026-11-28T01:00:00.000Z"
    prep: Any = SimpleNamespace(trange=trange, empty_hint="", services=given, outside_enum=None)
    reason = explain_empty(_common(), prep)
    assert reason == (
        f"no matching rows {span} for {given[0]}, {given[1]} and 1,998 more; `logq services "
        "--engine athena --since 1d` lists the services with recent data"
    )
    prep.outside_enum = given[1:]
    reason = explain_empty(_common(), prep)
    assert reason == (
        f"no matching rows {span} for {given[0]}, {given[1]} and 1,998 more; Athena does not "
        f"read {given[1]!r}, {given[2]!r} and 1,997 more, which the table's service list lacks "
        "(see the note above)"
    )


def test_services_for_names_a_few() -> None:
    assert services_for(None) == ""
    assert services_for(["recipe", "users"]) == " for recipe, users"
    assert services_for(["a", "b", "c", "d", "e"]) == " for a, b, c, d and 1 more"
    assert counted(["a", "b", "c", "d", "e"]) == "'a', 'b', 'c', 'd' and 1 more"


def test_the_follow_note_stands_for_a_long_service_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paused-follow note repeats --service in the command it gives: with 2,000 names,
    a placeholder instead (some of the names would read only those)."""
    from datetime import timedelta

    from cli import follow, runner

    said: list[str] = []
    monkeypatch.setattr(runner, "note", said.append)
    paused, merged = timedelta(minutes=9), ["2026-11-28-00"]
    common: Any = SimpleNamespace(service=[",".join(_long(2000, "svc"))])
    follow._note_merged_while_paused(common, paused, merged)
    common.service = ["recipe", "users"]
    follow._note_merged_while_paused(common, paused, merged)
    assert len(said[0]) < 600, said[0]
    assert (
        "logq tail --service <the --service values given> --since 2026-11-28T00:00:00" in (said[0])
    )
    assert "logq tail --service recipe --service users --since 2026-11-28T00:00:00" in said[1]


def test_long_service_lists_locally_end_to_end(logq: Any, warehouse: Warehouse) -> None:
    """Through the CLI: `errors` with recipe and 2,000 unknown values over a window without
    data (the note and the reason), and `logq sql` with only unknown ones (exit 3)."""
    given = _long(2000, "svc")
    value = ",".join(["recipe", *given])
    window = ["--since", "2026-11-29T00:00:00Z", "--until", "2026-11-29T01:00:00Z"]
    run = logq("errors", "-s", value, *window, "--warehouse", warehouse.uri)
    assert run.exit_code == 0, run.stderr
    (reason,) = run.stdout.splitlines()
    assert reason.startswith(
        "No results: no envoy_access data between 2026-11-29T00:00:00.000Z and "
        f"2026-11-29T01:00:00.000Z for recipe, {given[0]}, {given[1]} and 1,998 more; newest "
        f"data for recipe, {given[0]}, {given[1]} and 1,998 more: "
    ), reason
    assert len(reason) <= len("No results: ") + NOTE_MAX_CHARS, reason
    (note,) = [n for n in run.stderr.splitlines() if "unknown service" in n]
    assert note.startswith(
        f"logq: note: unknown service {given[0]!r}, {given[1]!r} and 1,998 more in envoy_access"
    ), note
    assert note.endswith("; showing recipe only"), note
    sql = logq(
        "sql", "SELECT path FROM envoy_access", "-s", ",".join(given), "-f", "json",
        "--warehouse", warehouse.uri,
    )  # fmt: skip
    assert (sql.exit_code, sql.json()) == (3, []), sql.stderr
    lines = sql.stderr.splitlines()
    assert lines[-1] == (
        f"logq: no results: no data of {given[0]!r}, {given[1]!r} and 1,998 more in envoy_access"
    )
    assert all(len(line) <= len("logq: note: ") + NOTE_MAX_CHARS for line in lines), lines


def test_rows_ahead_of_the_clock_are_noted_for_a_few_services_and_counted_past_them(
    logq: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose clock runs ahead, running every service, stamps rows ahead in each:
    `logq services` gave a note per service of the warehouse after its table. The first
    four (by name) have theirs; one note counts the rest, with the newest of their times."""
    from datetime import timedelta

    import cli.output
    from athena.timerange import iso_utc
    from tests.athena.factory import access_frame, write_frame

    monkeypatch.setattr(cli.output, "since_text", lambda when: "ahead")
    now = datetime.now(UTC).replace(microsecond=0)
    names = [f"svc-{i:02d}" for i in range(9)]
    uri = str(tmp_path / "wh")
    newest: dict[str, str] = {}
    for i, name in enumerate(names):  # each later one's rows further ahead
        start = now + timedelta(hours=2, minutes=i)
        frame = access_frame(3, start, start + timedelta(seconds=5), [name])
        write_frame(uri, "envoy_access", frame)
        newest[name] = iso_utc(max(t.to_pydatetime() for t in frame["timestamp"]))
    run = logq("services", "-f", "json", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    assert [r["service"] for r in run.json()] == names
    notes = [line for line in run.stderr.splitlines() if "also ha" in line]
    assert notes[:4] == [
        f"logq: note: {name} also has rows (rows stamped up to {newest[name]}: ahead)"
        for name in names[:4]
    ]
    assert notes[4:] == [
        f"logq: note: 5 more services also have rows (rows stamped up to {newest['svc-08']}: "
        "ahead); `logq services -s NAME` notes those of one"
    ]
    one = logq("services", "-s", "svc-06", "--warehouse", uri)
    assert f"logq: note: svc-06 also has rows (rows stamped up to {newest['svc-06']}" in one.stderr
