"""`logq --service` finds a service the writer stores under a hash (cli/service_names.py).

``Заказы-api`` and ``注文-api`` are stored as ``api-<hash>`` each (athena.schema.sanitize_service):
the value is taken as the folder the writer gave that very name, where it was refused as a name
the writer rewrites, leaving the user to find the hash.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from athena.schema import sanitize_service
from tests.athena.factory import logs_frame, write_with_writer

START = datetime(2026, 3, 1, 10, tzinfo=UTC)
END = datetime(2026, 3, 1, 12, tzinfo=UTC)
WIDE = ["--since", "2026-03-01T10:00:00Z", "--until", "2026-03-01T12:00:00Z"]
NAMES = ["Заказы-api", "注文-api", "api", "x" * 200]


@pytest.fixture
def warehouse(tmp_path: Path) -> str:
    uri = str(tmp_path / "wh")
    write_with_writer(uri, "container_logs", logs_frame(40, START, END, NAMES))
    return uri


def _services(logq: Callable[..., Any], uri: str, *values: str) -> list[str]:
    args = [a for v in values for a in ("-s", v)]
    run = logq("tail", *args, *WIDE, "-f", "json", "--limit", "100", "--warehouse", uri)
    assert run.exit_code == 0, run.stderr
    return sorted(row["service"] for row in run.json())


def test_a_name_is_found_as_sent_in_its_own_folder(logq, warehouse: str) -> None:
    """Each as sent and as stored; ``api`` (a service really named so) apart from both."""
    for name in NAMES:
        stored = sanitize_service(name)
        assert _services(logq, warehouse, name) == [stored] * 10, name
        assert _services(logq, warehouse, stored) == [stored] * 10, name


def test_hashed_names_in_a_list_are_taken_without_their_blanks(logq, warehouse: str) -> None:
    """``-s "api, Заказы-api"``: the name hashed is ``Заказы-api``, not `` Заказы-api``."""
    both = _services(logq, warehouse, "api, Заказы-api , 注文-api")
    assert both == sorted(["api"] * 10 + [sanitize_service("Заказы-api")] * 10
                          + [sanitize_service("注文-api")] * 10)  # fmt: skip


def test_a_hashed_name_with_a_character_the_writer_rewrites_is_refused_for_it(
    logq, warehouse: str
) -> None:
    """Only the ASCII character is named: the letters of another script are taken."""
    run = logq("tail", "-s", "Заказы/api", *WIDE, "--warehouse", warehouse)
    assert run.exit_code == 2 and run.stdout == "", run.stderr
    assert (
        "is not a service name: the character '/' is not accepted (letters with no ASCII form "
        "are: the writer stores such a name under a hash); a name is lower-case letters"
    ) in run.stderr
    long = logq("tail", "-s", "x" * 200 + "*", *WIDE, "--warehouse", warehouse)
    assert long.exit_code == 2 and long.stdout == "", long.stderr
    assert (
        "the character '*' is not accepted (a name past 128 characters is: the writer stores it "
        "under a hash)"
    ) in long.stderr


def test_a_hashed_name_without_a_folder_is_named_as_typed_with_its_other_case(
    logq, warehouse: str
) -> None:
    """The hash covers the exact spelling: ``ЗАКАЗЫ-api`` is not ``Заказы-api``'s folder. The
    note names what was typed (not its hash) and the spelling whose folder exists."""
    run = logq("tail", "-s", "ЗАКАЗЫ-api", *WIDE, "--warehouse", warehouse)
    assert run.exit_code == 3, run.stderr
    assert "unknown service 'ЗАКАЗЫ-api' in container_logs;" in run.stdout
    assert sanitize_service("ЗАКАЗЫ-api") not in run.stdout
    assert "did you mean 'Заказы-api'? (a name with letters of no ASCII form is stored" in (
        run.stdout
    )
    upper = logq("tail", "-s", "注文-API,api", *WIDE, "--warehouse", warehouse)
    assert upper.exit_code == 0, upper.stderr
    assert "unknown service '注文-API' in container_logs;" in upper.stderr
    assert "did you mean '注文-api'?" in upper.stderr


def test_a_hashed_name_no_spelling_of_which_is_stored_gets_no_such_suggestion(
    logq, warehouse: str
) -> None:
    run = logq("tail", "-s", "Доставка-api", *WIDE, "--warehouse", warehouse)
    assert run.exit_code == 3, run.stderr
    assert "unknown service 'Доставка-api' in container_logs;" in run.stdout
    assert "exact spelling" not in run.stdout and "'Заказы-api'" not in run.stdout
