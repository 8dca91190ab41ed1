"""Option values taken without pydantic (cli.plain_params) are what typer's own coercion makes
of them: the same value, or the same error message for a value typer refuses."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.models import OptionInfo

from cli import plain_params
from cli.commands.access import LatencyBy, TopBy
from cli.commands.logs import Stream
from cli.options import EngineName
from cli.output import OutputFormat
from cli.plain_params import plain_first

#: typer's own coercion (typer 0.29 and later; older typers have no pydantic to avoid).
_coercion = pytest.importorskip("typer._coercion")

#: Every kind of option logq's commands have (test_every_option_kind_is_covered checks it
#: against the app), with values taken plainly and values refused.
CASES: list[tuple[Any, dict[str, Any], Any]] = [
    (str, {}, "1h"),
    (str, {}, ""),
    (str, {}, "sélect ✓"),
    (list[str], {}, ["recipe"]),
    (list[str], {}, ("recipe", "users")),
    (int, {"min": 1, "max": 10_000_000}, "20"),
    (int, {"min": 1, "max": 10_000_000}, "0"),
    (int, {"min": 1, "max": 10_000_000}, "10000001"),
    (int, {"min": 1, "max": 10}, "020"),
    (int, {}, " 7"),
    (int, {}, "+7"),
    (int, {}, "1_000"),
    (int, {}, "-3"),
    (int, {}, "2.0"),
    (int, {}, "ten"),
    (int, {}, "9" * 30),
    (int, {"min": 1, "max": 5, "clamp": True}, "9"),
    (int, {}, 12),
    (int, {"min": 0}, "0"),
    (int, {"min": 0}, "-1"),
    (int, {"min": 0}, "5000000000"),
    (OutputFormat, {"case_sensitive": False}, "json"),
    (OutputFormat, {"case_sensitive": False}, "JSON"),
    (OutputFormat, {"case_sensitive": False}, "bogus"),
    (OutputFormat, {"case_sensitive": False}, OutputFormat.csv),
    (OutputFormat, {}, "Json"),
    (EngineName, {"case_sensitive": False}, "athena"),
    (Stream, {}, "stderr"),
    (Stream, {}, "STDERR"),
    (LatencyBy, {}, "upstream"),
    (TopBy, {}, "nope"),
    (bool, {}, "1"),
    (bool, {}, "maybe"),
    (float, {}, "1e3"),
    (float, {"min": 0.2, "max": 3600.0}, "2"),
    (float, {"min": 0.2, "max": 3600.0}, "0.1"),
    (float, {"min": 0.2, "max": 3600.0}, "inf"),
    (Path, {}, "some/dir"),
]

#: Types whose values always go to typer's own coercion, unchanged.
TYPERS_OWN = (bool, float, Path)


def _outcome(runtime: Any, value: Any) -> tuple[str, Any]:
    try:
        result = runtime.coerce(value, param=plain_params._ProbeParam(), ctx=None)
    except typer.BadParameter as exc:
        return "refused", exc.message
    return type(result).__name__, result


def _descriptor(annotation: Any, info: dict[str, Any]) -> Any:
    return _coercion.resolve_type_descriptor(annotation, OptionInfo(**info))


@pytest.mark.parametrize(("annotation", "info", "value"), CASES)
def test_same_value_or_error_as_typer(annotation: Any, info: dict[str, Any], value: Any) -> None:
    descriptor = _descriptor(annotation, info)
    plain = plain_first(descriptor)
    assert _outcome(plain, value) == _outcome(_coercion.build_runtime_param(descriptor), value)
    if annotation in TYPERS_OWN:  # always typer's own coercion, unchanged
        assert plain.full


@pytest.mark.parametrize(
    ("annotation", "info", "value"),
    [
        (str, {}, "1h"),
        (list[str], {}, ("recipe", "users")),
        (int, {"min": 1, "max": 10_000_000}, "20"),
        (int, {"min": 0}, "0"),
        (OutputFormat, {"case_sensitive": False}, "JSON"),
        (Stream, {}, "stderr"),
    ],
)
def test_a_plain_value_builds_no_adapter(annotation: Any, info: dict[str, Any], value: Any) -> None:
    """The point of it all: no pydantic for the values logq's options take in practice."""
    plain = plain_first(_descriptor(annotation, info))
    plain.coerce(value, param=plain_params._ProbeParam(), ctx=None)
    assert not plain.full


def test_every_option_kind_is_covered() -> None:
    """A new kind of option (another type, a parser, a file) gets a case above."""
    from cli.app import app

    def params(command: Any) -> Any:
        yield from command.params
        for sub in getattr(command, "commands", {}).values():
            yield from params(sub)

    covered = {annotation for annotation, _, _ in CASES}
    for param in params(typer.main.get_command(app)):
        descriptor = param.type_descriptor
        assert descriptor.annotation in covered, param.name
        assert descriptor.parameter_info.parser is None, param.name
        assert descriptor.file_annotation is None, param.name


def test_a_surprise_inside_falls_back_to_typers_coercion(monkeypatch: pytest.MonkeyPatch) -> None:
    def moved(*_: Any) -> Any:
        raise AttributeError("typer moved something")

    monkeypatch.setattr(plain_params, "_plain", moved)
    descriptor = _descriptor(int, {"min": 1, "max": 10})
    plain = plain_first(descriptor)
    assert _outcome(plain, "7") == ("int", 7)
    assert _outcome(plain, "70") == _outcome(_coercion.build_runtime_param(descriptor), "70")


def test_a_runtime_param_that_cannot_be_built_is_typers_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.core import TyperOption

    assert plain_params.install()
    option = TyperOption(
        param_decls=["--limit"], type_descriptor=_descriptor(int, {}), default=None
    )
    monkeypatch.setattr(plain_params, "plain_first", lambda _: 1 / 0)
    assert type(option.get_runtime_param()).__name__ == "AdapterRuntimeParam"


def _as_an_older_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    """typer before 0.29: no ``typer._coercion`` at all (click's types, no pydantic)."""
    monkeypatch.delattr("typer._coercion")
    monkeypatch.setitem(sys.modules, "typer._coercion", None)


def _without_runtime_param_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass(frozen=True)
    class Other:
        descriptor: Any

    monkeypatch.setattr(_coercion, "RuntimeParam", Other)


def _without_instance_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.core import _TyperParameter

    hints = {k: v for k, v in _TyperParameter.__annotations__.items() if k != "_runtime_param"}
    monkeypatch.setattr(_TyperParameter, "__annotations__", hints)


@pytest.mark.parametrize(
    "remove",
    [
        lambda mp: mp.delattr("typer.core._TyperParameter"),
        lambda mp: mp.delattr("typer._coercion.RuntimeParam"),
        lambda mp: mp.delattr("typer._coercion.build_runtime_param"),
        lambda mp: mp.delattr("typer._coercion.resolve_type_descriptor"),
        lambda mp: mp.delattr("typer._param_types.coerce_cli_choice"),
        _as_an_older_typer,
        _without_runtime_param_fields,
        _without_instance_attribute,
    ],
    ids=[
        "_TyperParameter",
        "RuntimeParam",
        "build_runtime_param",
        "resolve_type_descriptor",
        "coerce_cli_choice",
        "no _coercion (older typer)",
        "RuntimeParam fields",
        "_runtime_param attribute",
    ],
)
def test_install_leaves_a_different_typer_untouched(
    monkeypatch: pytest.MonkeyPatch, remove: Any
) -> None:
    from typer import core

    typers_own = core._TyperParameter.get_runtime_param
    # as typer ships it, whether or not cli.app installed plain values already in this process
    monkeypatch.setattr(
        core._TyperParameter, "get_runtime_param", getattr(typers_own, "__wrapped__", typers_own)
    )
    before = core._TyperParameter.__dict__["get_runtime_param"]
    with monkeypatch.context() as mp:
        remove(mp)
        assert plain_params.install() is False
    assert core._TyperParameter.__dict__["get_runtime_param"] is before
