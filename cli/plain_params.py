"""Plain option values (a string, strings, a choice, a small whole number) taken without pydantic.

Typer 0.29 coerces every parameter of the command being run through a pydantic ``TypeAdapter``
it builds on the spot, even a parameter left unset: importing pydantic and building the
adapters of a query command's 20-odd options cost ~0.15 s of a ~0.5 s ``logq errors``, more
than the query itself. For the values logq's options take in practice (text, repeated text, a
choice, a whole number in range), the answer is known without pydantic: the value itself, a
list of them, the choice typer's own :func:`coerce_cli_choice` picks, the number. Anything
else (a bad choice, a number out of range or not plainly written, a file, a custom parser)
goes to typer's own adapter, built then, so its result and its error are typer's (the
error said in plain words by :func:`cli.errors.plain_reason`).

:func:`install` changes only how a parameter gets its coercion, and only on a typer that has
the lazy per-parameter hook this relies on; any other typer is left as it is (slower, same
results).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from typing import Any, get_args, get_origin

#: A whole number as pydantic reads it and ``int()`` reads it alike: digits, no sign, no
#: leading zero, no ``_`` or blanks, few enough digits to stay clear of pydantic's length limit.
_WHOLE = re.compile(r"(?:0|[1-9][0-9]{0,17})\Z", re.ASCII)

#: Returned by :func:`_plain` when a value needs typer's full coercion.
_NOT_PLAIN = object()


def install() -> bool:
    """Give typer's parameters a plain-values-first coercion; False (nothing changed) on a
    typer without every private name this relies on (older typers use click's types, with no
    pydantic to avoid; a newer one may have moved them): that typer then runs as it is, slower,
    with the same results."""
    try:
        from typer import _coercion, _param_types, core
    except ImportError:
        return False
    param = getattr(core, "_TyperParameter", None)
    needed = (
        (param, "get_runtime_param"),
        (_coercion, "RuntimeParam"),
        (_coercion, "build_runtime_param"),
        (_coercion, "resolve_type_descriptor"),
        (_param_types, "coerce_cli_choice"),
    )
    if any(not hasattr(owner, name) for owner, name in needed):
        return False
    if getattr(param.get_runtime_param, "__module__", None) == __name__:
        return True  # installed already
    try:
        usable = _hooks_as_expected(param, _coercion)
    except Exception:  # any surprise in typer's internals: leave typer alone
        usable = False
    if not usable:
        return False
    typers_own = param.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        try:
            if self._runtime_param is None:
                self._runtime_param = plain_first(self.type_descriptor)
            return self._runtime_param
        except Exception:  # typer's own coercion, as without install()
            return typers_own(self)

    get_runtime_param.__wrapped__ = typers_own  # type: ignore[attr-defined]
    param.get_runtime_param = get_runtime_param
    return True


def _hooks_as_expected(param: type, coercion: Any) -> bool:
    """Whether typer's parameters carry the attributes :func:`install` reads and writes, and a
    plain-values-first runtime parameter built as typer builds its own takes a plain value."""
    from dataclasses import fields

    from typer.models import OptionInfo

    attributes = {"_runtime_param", "type_descriptor"}
    hints = {name for cls in param.__mro__ for name in getattr(cls, "__annotations__", {})}
    # typer's own hook, the one replaced, caches build_runtime_param(type_descriptor) there
    if not attributes <= hints or not {*attributes, "build_runtime_param"} <= set(
        param.get_runtime_param.__code__.co_names
    ):
        return False
    if not {"parameter_info", "annotation"} <= {f.name for f in fields(coercion.RuntimeParam)}:
        return False
    probe = plain_first(coercion.resolve_type_descriptor(str, OptionInfo()))
    return probe.coerce("x", param=_ProbeParam(), ctx=None) == "x" and not probe.full


class _ProbeParam:
    """The two attributes of a click parameter that typer's ``RuntimeParam.coerce`` reads."""

    multiple = False
    nargs = 1


def plain_first(descriptor: Any) -> Any:
    """The runtime parameter (typer's ``RuntimeParam``) of a parameter of type ``descriptor``
    (typer's ``TypeDescriptor``): plain values first, typer's own coercion for the rest."""
    return _plain_first_class()(
        parameter_info=descriptor.parameter_info,
        annotation=descriptor.annotation,
        descriptor=descriptor,
    )


@cache
def _plain_first_class() -> type:
    """A subclass of typer's ``RuntimeParam``, whose ``coerce`` settles unset and multi-value
    input before :meth:`_coerce_value` is asked."""
    from typer._coercion import RuntimeParam, build_runtime_param

    @dataclass(frozen=True)
    class PlainFirst(RuntimeParam):
        descriptor: Any = None
        #: typer's own runtime parameter, built the first time a value needs it.
        full: list[Any] = field(default_factory=list)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                plain = _NOT_PLAIN
                if self.descriptor.file_annotation is None and self.parameter_info.parser is None:
                    plain = _plain(self.annotation, self.parameter_info, value, ctx)
            except Exception:  # typer's internals moved: its adapter decides
                plain = _NOT_PLAIN
            if plain is not _NOT_PLAIN:
                return plain
            if not self.full:
                self.full.append(build_runtime_param(self.descriptor))
            return self.full[0]._coerce_value(value, param=param, ctx=ctx)

    return PlainFirst


def _plain(annotation: Any, info: Any, value: Any, ctx: Any) -> Any:
    """What typer's adapter makes of ``value``, or :data:`_NOT_PLAIN` when that takes it."""
    if get_origin(annotation) is list:
        (item_type,) = get_args(annotation) or (Any,)
        items = value if isinstance(value, list | tuple) else [value]
        plain = [_plain(item_type, info, item, ctx) for item in items]
        return _NOT_PLAIN if any(p is _NOT_PLAIN for p in plain) else plain
    if annotation is str:
        return value if type(value) is str else _NOT_PLAIN
    if annotation is int:
        return _whole(info, value)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        from typer._param_types import coerce_cli_choice

        try:
            return coerce_cli_choice(
                value, choices=tuple(annotation), case_sensitive=info.case_sensitive, ctx=ctx
            )
        except ValueError:  # typer's adapter says it, in its words
            return _NOT_PLAIN
    return _NOT_PLAIN


def _whole(info: Any, value: Any) -> Any:
    """A whole number written plainly and within the option's bounds (clamped or not, one in
    range is itself), else :data:`_NOT_PLAIN`."""
    if type(value) is int:
        number = value
    elif type(value) is str and _WHOLE.match(value):
        number = int(value)
    else:
        return _NOT_PLAIN
    if (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
        return _NOT_PLAIN
    return number
