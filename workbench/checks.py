"""Every check before work, in one function: ``check_run_inputs(spec, config, target)``.

The command line and the app call it with the Config before the model loads; every
analysis's ``run`` calls it again through ``checked_run`` (the Python door, so ``run(model,
config)`` and ``spec.run`` refuse what the command line refuses, with the same one-line
``WorkbenchError``), this time with the target it was handed. What it checks, in order:
the Config's class, each field's type, empty values, ranges and finiteness, the Config's
own ``validate()`` (``spec.check_config``), the saved runs and files a field names, and
then, given a target, that it is a loaded model and the spec's ``check_target``."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
import typing
from typing import Any, Callable

from .errors import InputError, WorkbenchError
from .config_fields import base_type, check_config, config_fields, flag_of

NOT_GIVEN: Any = object()  # the CLI and the app check before there is a target
_DOORS: dict[Callable[..., Any], Any] = {}  # checked run -> its AnalysisSpec


def check_run_inputs(spec: Any, config: Any, target: Any = NOT_GIVEN) -> Any:
    """The one validation of an analysis's inputs; returns the Config to run (the default
    one when ``config`` is None)."""
    config = config_object(spec, config)
    check_field_types(config)
    check_config(config)
    check_references(config)
    if target is not NOT_GIVEN:
        check_target(spec, config, target)
    return config


def config_object(spec: Any, config: Any) -> Any:
    """``config`` when it is one of the Config classes the analysis takes; its default for None."""
    if config is None:
        return spec.config()
    accepted = accepted_configs(spec)
    if not isinstance(config, accepted):
        names = " or ".join(c.__name__ for c in accepted)
        got = "a class, not an instance" if isinstance(config, type) else f"a {type(config).__name__}"
        raise InputError(f"{spec.key} takes {names} as its config, got {got}; build one: "
                         f"from {spec.config.__module__} import {spec.config.__name__}; {spec.config.__name__}(...)")
    return config


def accepted_configs(spec: Any) -> tuple[type, ...]:
    """The spec's Config, plus the classes its run's ``config`` parameter is annotated with
    (lrp's run also takes the two configs its options become)."""
    found = [spec.config]
    fn = inspect.unwrap(spec.run)
    try:
        params = list(inspect.signature(fn).parameters.values())
        annotation = params[1].annotation if len(params) > 1 else None
        if isinstance(annotation, str):
            annotation = eval(annotation, getattr(fn, "__globals__", {}))  # noqa: S307 - the module's own annotation
        candidates = typing.get_args(annotation) or (annotation,)
        found += [c for c in candidates if isinstance(c, type) and dataclasses.is_dataclass(c) and c not in found]
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: the spec's Config alone
        pass
    return tuple(found)


WORDS = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}


def _fits(kind: Any, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, str)


def check_field_types(config: Any) -> None:
    """Each field holds what its annotation says (``n_prompts="5"`` would fail deep inside the
    run); an optional text given as "" is refused rather than read as "not given"."""
    for f, annotation in config_fields(type(config)):
        if not f.init:
            continue
        value, (kind, optional) = getattr(config, f.name), base_type(annotation)
        name = f"{f.name} ({flag_of(f)})"
        if value is None:
            if not optional and kind in WORDS and f.default is not None:
                raise InputError(f"{name} must be {WORDS[kind]}, not None")
            continue
        if kind in WORDS:
            if not _fits(kind, value):
                raise InputError(f"{name} must be {WORDS[kind]}, not the {type(value).__name__} {value!r}")
            if optional and kind is str and value == "":
                raise InputError(f"{flag_of(f)} is empty; give a value, or leave it out for the default")
        elif typing.get_origin(kind) is tuple or kind is tuple:
            _check_sequence(name, kind, value)


def _check_sequence(name: str, kind: Any, value: Any) -> None:
    if not isinstance(value, (tuple, list)):
        raise InputError(f"{name} must be a tuple of values, not the {type(value).__name__} {value!r}")
    elems = [a for a in typing.get_args(kind) if a is not Ellipsis]
    elem = elems[0] if len(elems) == 1 and elems[0] in WORDS else None
    if elem is None:
        return
    for v in value:
        if not _fits(elem, v):
            raise InputError(f"{name} must hold {WORDS[elem].split(' ', 1)[1]}s, but holds the "
                             f"{type(v).__name__} {v!r}")


def check_references(config: Any) -> None:
    """Saved runs and files a field names (``option(refers="run" | "file")``) are read now,
    not after the analysis: ``ablation --include`` used to fail after the whole run."""
    from .paths import file_problem, user_path
    from .results import load_result

    for f, _ in config_fields(type(config)):
        refers = f.metadata.get("refers")
        value = getattr(config, f.name, None)
        if not refers or value is None:
            continue
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if not str(item).strip():
                raise InputError(f"{flag_of(f)} is empty; name a {'saved run folder' if refers == 'run' else 'file'}")
            if refers == "run":
                try:
                    load_result(item)
                except WorkbenchError as exc:
                    raise InputError(f"{flag_of(f)}: {exc}") from None
            elif (problem := file_problem(user_path(item))) is not None:
                raise InputError(f"{flag_of(f)} {item} {problem}; name a readable file")


def check_target(spec: Any, config: Any, target: Any) -> None:
    """What the analysis runs on: a loaded ``Model`` when it needs one (not its name, not
    None), then the spec's checks that need it (``check_model``, the memory estimate)."""
    if spec.load_target is None and spec.wants_model(config):
        from .models import Model

        if isinstance(target, str):
            raise InputError(f"{spec.key} runs on a loaded model, not the name '{target}'; load it first: "
                             f"from workbench.models import load_model; model = load_model({target!r})")
        if not isinstance(target, Model):
            got = "None" if target is None else f"a {type(target).__name__}"
            raise InputError(f"{spec.key} runs on a loaded model, got {got}; pass one: "
                             "from workbench.models import load_model; run(load_model('smollm2-135m'), config)")
    spec.check_target(config, target)


def checked_run(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An analysis's ``run(target, config, progress, ...)`` that calls ``check_run_inputs``
    first. The spec registers itself (``register``) so the door knows its checks."""
    if getattr(fn, "checks_inputs", False):
        return fn
    signature = inspect.signature(fn)
    names = list(signature.parameters)
    if len(names) < 2:
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        spec = _DOORS.get(run)
        if spec is None:
            return fn(*args, **kwargs)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InputError(f"{spec.key}: {exc}; call run(model, config, progress=True)") from None
        config = check_run_inputs(spec, bound.arguments.get(names[1]), bound.arguments.get(names[0]))
        if bound.arguments.get(names[1]) is not None:
            bound.arguments[names[1]] = config
        return fn(*bound.args, **bound.kwargs)

    run.checks_inputs = True  # type: ignore[attr-defined]
    return run


def register(run: Callable[..., Any], spec: Any) -> None:
    _DOORS[run] = spec
