"""Config fields: ``option()`` (a dataclass field that also describes its command-line
option and its valid range), their flags and types, and the range checks they declare.

The ground floor under ``spec`` (the analysis registry) and ``checks`` (every check before
work): both read Config fields, and neither may import the other's module to do it."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, Sequence

from .errors import InputError


def option(default: Any = dataclasses.MISSING, *, help: str = "", flag: str | None = None,
           aliases: Sequence[str] = (), min: float | None = None, max: float | None = None,
           choices: Sequence[Any] | None = None, cli: bool = True,
           default_factory: Any = dataclasses.MISSING, refers: str | None = None) -> Any:
    """A Config field that also describes its command-line option and its valid range.

    ``flag`` overrides the option name (default ``--field-name``); ``aliases`` are extra
    names (``-p``); ``min``/``max``/``choices`` are checked before any work starts;
    ``refers="run"`` or ``"file"``: the value names saved run folders or files, read before
    any work (``workbench.checks``); ``cli=False`` keeps an internal knob off the command line."""
    meta = {"help": help, "flag": flag, "aliases": tuple(aliases), "min": min, "max": max,
            "choices": tuple(choices) if choices is not None else None, "cli": cli, "refers": refers}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The option name of a Config field: ``--n-prompts`` for ``n_prompts`` unless overridden."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type inside ``Optional[...]``, whether None is allowed) for a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return annotation, False


@dataclasses.dataclass(frozen=True)
class FieldShape:
    """What one Config field takes, read once from its annotation and ``option()`` metadata:
    the command line and the app build their option and widget from it, so neither
    interprets annotations itself."""

    kind: type  # bool, int, float, str, or tuple (a list of ``elem``)
    elem: type | None  # a tuple's element type: int, float or str
    optional: bool  # None is allowed (an empty box or no option: the Config's own default)
    default: Any
    choices: tuple[Any, ...] | None  # ``option(choices=...)`` or the members of a Literal


def field_shape(f: dataclasses.Field, annotation: Any) -> FieldShape:
    """The ``FieldShape`` of a Config field (unknown annotations read as text)."""
    kind, optional = base_type(annotation)
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    choices = f.metadata.get("choices")
    if typing.get_origin(kind) is typing.Literal:
        choices = choices or typing.get_args(kind)
        kind = type(typing.get_args(kind)[0])
    elem = None
    if typing.get_origin(kind) is tuple or kind is tuple:
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        elem = args[0] if args and args[0] in (int, float, str) else (type(default[0]) if default else str)
        kind = tuple
    elif kind not in (bool, int, float, str):
        kind = str
    return FieldShape(kind, elem, optional or default is None, default, tuple(choices) if choices else None)


def config_fields(config_cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The Config's fields with their resolved annotations (string annotations included)."""
    hints = typing.get_type_hints(config_cls)
    return [(f, hints.get(f.name, Any)) for f in dataclasses.fields(config_cls)]


def check_config(config: Any) -> None:
    """Range and finiteness checks from the fields' metadata, then the Config's own
    ``validate()`` when it has one; a bad value is one ``InputError`` naming the option."""
    for f, _annotation in config_fields(type(config)):
        value = getattr(config, f.name)
        if value is None:
            continue
        name = flag_of(f)
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise InputError(f"{name} must be a finite number (got {v})")
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if lo is not None and v < lo:
                    raise InputError(f"{name} must be at least {lo} (got {v})")
                if hi is not None and v > hi:
                    raise InputError(f"{name} must be at most {hi} (got {v})")
            choices = f.metadata.get("choices")
            if choices and v not in choices:
                raise InputError(f"unknown {f.name.replace('_', ' ')} '{v}' for {name}; "
                                 f"choose one of {', '.join(map(str, choices))}")
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
