"""One encoder and one decoder for a Result's (or a Config's) fields, driven by their
annotations: tensors (``torch.Tensor`` or jaxtyping's ``Float[Tensor, "layer head"]``),
plain numbers and strings, Enums and Literals, lists, tuples, dicts and small dataclass
records (``HeadEffect``, ``Interval``, ...). Saving encodes, loading decodes, and both
check the value against its annotation with the same code, so a run folder that does
not fit its Result is refused in one line (``FieldError``, a ``TypeError``).

Tensors never go to JSON: ``tensor_names`` says which fields (or dict entries) go to
safetensors, under the field's name (``field/key`` for a dict of tensors).
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from jaxtyping import AbstractArray

from .run_folder import json_type

TENSOR_SEP = "/"  # safetensors name of entry ``key`` of a dict-of-tensors field: ``field/key``


class FieldError(TypeError):
    """A value that does not fit its annotation: the message names where and what."""


class MigratesV1(Protocol):
    """What ``migrate_v1`` needs of a Result class (``workbench.results.Result`` has both)."""

    v1_names: ClassVar[dict[str, str]]

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]: ...


def type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, AbstractArray):
        return f"a tensor [{annotation.dim_str}]"
    if typing.get_args(annotation) or not hasattr(annotation, "__name__"):
        return str(annotation).replace("typing.", "").replace("torch.", "")
    return annotation.__name__


def hints_of(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (cached: classes do not change)."""
    return _cached_hints(cls)


@functools.lru_cache(maxsize=None)
def _cached_hints(cls: type) -> dict[str, Any]:
    # behind hints_of, whose ``type`` parameter takes any class: mypy reads ``type[Result]`` as
    # unhashable (a dataclass with eq sets its instances' __hash__ to None), not the class itself
    return typing.get_type_hints(cls)


def split_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) < len(typing.get_args(annotation)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return annotation, False


def is_tensor_type(annotation: Any) -> bool:
    annotation, _ = split_optional(annotation)
    return annotation is torch.Tensor or (isinstance(annotation, type) and issubclass(annotation, AbstractArray))


def tensor_kind(annotation: Any) -> str | None:
    """``"tensor"`` for a tensor field, ``"dict"`` for ``dict[str, tensor]``, else None."""
    if is_tensor_type(annotation):
        return "tensor"
    inner, _ = split_optional(annotation)
    if typing.get_origin(inner) is dict and is_tensor_type(typing.get_args(inner)[1]):
        return "dict"
    return None


# ----- tensors ----------------------------------------------------------------------------
def check_tensor(value: Any, annotation: Any, where: str, sizes: dict[str, int]) -> None:
    """A tensor of the annotated dtype kind and rank; a named dimension has one size across
    every field checked with the same ``sizes`` (``layer`` is the same in all of a Result)."""
    annotation, optional = split_optional(annotation)
    if value is None and optional:
        return
    if not isinstance(value, torch.Tensor):
        raise FieldError(f"{where} is {json_type(value)}, not a tensor")
    if annotation is torch.Tensor:
        return
    dtype = str(value.dtype).removeprefix("torch.")
    if annotation.dtypes is not None and dtype not in annotation.dtypes:
        raise FieldError(f"{where} holds {dtype}, not {type_name(annotation)}")
    if annotation.index_variadic is not None:
        return
    if value.ndim != len(annotation.dims):
        raise FieldError(f"{where} has shape {tuple(value.shape)}, not {type_name(annotation)}")
    for dim, size in zip(annotation.dims, value.shape):
        name = getattr(dim, "name", None)
        fixed = getattr(dim, "size", None)
        if isinstance(fixed, int) and fixed != size:
            raise FieldError(f"{where} has shape {tuple(value.shape)}, not {type_name(annotation)}")
        if isinstance(name, str) and name != "_":
            if sizes.setdefault(name, int(size)) != size:
                raise FieldError(f"{where} has {size} along '{name}' where other fields have {sizes[name]}")


# ----- JSON values --------------------------------------------------------------------------
def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode(value: Any, annotation: Any, where: str) -> Any:
    """The JSON value of ``value``, checked against ``annotation`` (NaN and inf become null)."""
    annotation, optional = split_optional(annotation)
    origin = typing.get_origin(annotation)
    if value is None:
        if optional or annotation is Any:
            return None
        raise FieldError(f"{where} is null, not {type_name(annotation)}")
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return plain_json(value)
    if origin in (typing.Union, types.UnionType):
        return plain_json(value)
    if is_tensor_type(annotation):
        raise FieldError(f"{where} is a tensor inside a JSON value; declare it as a field of its own")
    value = _number(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None if not math.isfinite(value) else float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is Path:
        if isinstance(value, (str, Path)):
            return str(value)
    elif origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value).value
        except ValueError:
            pass
    elif annotation in (list, tuple) or origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            return [encode(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, _elements(annotation, len(value))))]
    elif annotation is dict or origin is dict:
        if isinstance(value, dict):
            inner = typing.get_args(annotation)[1] if typing.get_args(annotation) else Any
            return {str(k): encode(v, inner, f"{where}.{k}") for k, v in value.items()}
    elif isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            hints = hints_of(annotation)
            return {f.name: encode(getattr(value, f.name), hints.get(f.name, Any), f"{where}.{f.name}")
                    for f in dataclasses.fields(annotation)}
    else:
        return plain_json(value)
    raise FieldError(f"{where} is {json_type(value)}, not {type_name(annotation)}")


def _elements(annotation: Any, n: int) -> list[Any]:
    """The annotation of each of ``n`` elements of a list or tuple annotation."""
    args = typing.get_args(annotation)
    if not args:
        return [Any] * n
    if typing.get_origin(annotation) is tuple and Ellipsis not in args:
        return list(args) + [Any] * max(0, n - len(args))
    return [args[0]] * n


def decode(raw: Any, annotation: Any, where: str) -> Any:
    """The value of a JSON value under ``annotation``, checked by the same rules as ``encode``."""
    annotation, optional = split_optional(annotation)
    origin = typing.get_origin(annotation)
    if annotation is Any or isinstance(annotation, typing.TypeVar) or origin in (typing.Union, types.UnionType):
        return raw
    if raw is None:
        if optional:
            return None
        if annotation is float:  # NaN and inf were saved as null
            return math.nan
        raise FieldError(f"{where} is null, not {type_name(annotation)}")
    if annotation is bool:
        ok = isinstance(raw, bool)
    elif annotation is int:
        ok = isinstance(raw, int) and not isinstance(raw, bool)
    elif annotation is float:
        ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        raw = float(raw) if ok else raw
    elif annotation is str:
        ok = isinstance(raw, str)
    elif annotation is Path:
        ok = isinstance(raw, str)
        raw = Path(raw) if ok else raw
    elif origin is typing.Literal:
        ok = raw in typing.get_args(annotation)
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(raw)
        except ValueError:
            raise FieldError(f"{where} is {json.dumps(raw)[:40]}, not one of "
                             f"{', '.join(str(m.value) for m in annotation)}") from None
    elif annotation in (list, tuple) or origin in (list, tuple):
        if not isinstance(raw, list):
            raise FieldError(f"{where} is {json_type(raw)}, not {type_name(annotation)}")
        items = [decode(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(raw, _elements(annotation, len(raw))))]
        return tuple(items) if (annotation is tuple or origin is tuple) else items
    elif annotation is dict or origin is dict:
        if not isinstance(raw, dict):
            raise FieldError(f"{where} is {json_type(raw)}, not {type_name(annotation)}")
        inner = typing.get_args(annotation)[1] if typing.get_args(annotation) else Any
        return {k: decode(v, inner, f"{where}.{k}") for k, v in raw.items()}
    elif isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return decode_record(raw, annotation, where)
    else:
        return raw
    if not ok:
        raise FieldError(f"{where} is {json_type(raw)}, not {type_name(annotation)}")
    return raw


def decode_record(raw: Any, cls: type, where: str) -> Any:
    """A dataclass record from its JSON object (fields with defaults may be absent)."""
    if not isinstance(raw, dict):
        raise FieldError(f"{where} is {json_type(raw)}, not {cls.__name__}")
    hints = hints_of(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in raw:
            kwargs[f.name] = decode(raw[f.name], hints.get(f.name, Any), f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise FieldError(f"{where} lacks '{f.name}', which {cls.__name__} needs")
    return cls(**kwargs)


def plain_json(value: Any) -> Any:
    """Plain JSON values from anything un-annotated: numpy / torch scalars, tuples, paths,
    enums and dataclasses (NaN and inf become null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, enum.Enum):
        return plain_json(value.value)
    if isinstance(value, (np.generic,)):
        return plain_json(value.item())
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return plain_json(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----- a Result's fields ------------------------------------------------------------------------
NOT_DATA = frozenset({"config", "meta", "metrics", "arrays", "path"})  # the base's bookkeeping, not the data


def data_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """A Result class's data fields with their annotations: everything but the base's
    bookkeeping (``intervals`` is data: every Result may carry them)."""
    hints = hints_of(cls)
    return [(f, hints.get(f.name, Any)) for f in dataclasses.fields(cls) if f.name not in NOT_DATA]


def is_typed(cls: type) -> bool:
    """Whether a Result class declares its data as fields (else it keeps the metrics bag)."""
    return any(f.name != "intervals" for f, _ in data_fields(cls))


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _field_failed(name: str, annotation: Any, exc: Exception) -> FieldError:
    return FieldError(f"its '{name}' cannot be read: '{name}' is not {type_name(annotation)} ({exc})")


def encode_data(result: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON fields, tensors by safetensors name) of a Result, each checked against its annotation."""
    data: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {}
    for f, hint in data_fields(type(result)):
        value, where = getattr(result, f.name), f"'{f.name}'"
        try:
            kind = tensor_kind(hint)
            if kind == "tensor":
                check_tensor(value, hint, where, sizes)
                if value is not None:
                    tensors[f.name] = value
            elif kind == "dict":
                if value is None and split_optional(hint)[1]:
                    continue
                if not isinstance(value, dict):
                    raise FieldError(f"{where} is {json_type(value)}, not a dict of tensors")
                inner = typing.get_args(split_optional(hint)[0])[1]
                for key, tensor in value.items():
                    check_tensor(tensor, inner, f"{where}.{key}", {})  # entries may differ in size
                    tensors[f"{f.name}{TENSOR_SEP}{key}"] = tensor
                data[f.name] = [str(k) for k in value]  # the keys, in order (an empty dict round-trips)
            else:
                data[f.name] = encode(value, hint, where)
        except FieldError as exc:
            raise _field_failed(f.name, hint, exc) from None
    return data, tensors


def decode_data(cls: type, data: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments of ``cls`` from saved JSON fields and tensors, checked by the
    same rules as ``encode_data``; a missing field with a default takes its default."""
    kwargs: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    for f, hint in data_fields(cls):
        try:
            kind = tensor_kind(hint)
            if kind == "dict":
                keys = data.get(f.name)
                if keys is None:
                    prefix = f"{f.name}{TENSOR_SEP}"
                    keys = [k[len(prefix):] for k in tensors if k.startswith(prefix)]
                if not isinstance(keys, list) or any(f"{f.name}{TENSOR_SEP}{k}" not in tensors for k in keys):
                    raise FieldError("its tensors are missing")
                kwargs[f.name] = {k: tensors[f"{f.name}{TENSOR_SEP}{k}"] for k in keys}
                continue
            present = f.name in (tensors if kind == "tensor" else data)
            if not present:
                if _has_default(f):
                    continue
                raise FieldError("it is missing")
            if kind == "tensor":
                check_tensor(tensors[f.name], hint, f"'{f.name}'", sizes)
                kwargs[f.name] = tensors[f.name]
            else:
                kwargs[f.name] = decode(data[f.name], hint, f"'{f.name}'")
        except FieldError as exc:
            raise _field_failed(f.name, hint, exc) from None
    return kwargs


def migrate_v1(cls: type[MigratesV1], metrics: dict[str, Any], arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(data, tensors) of format 2 from a format-1 run: its ``metrics`` bag and flat ``arrays``.
    A typed class names where a field used to live in ``v1_names`` (field -> old key, looked
    up in the metrics, then the arrays) and may reshape the bag first in ``from_v1``."""
    metrics, arrays = cls.from_v1(dict(metrics), dict(arrays))
    data: dict[str, Any] = {"intervals": metrics.get("intervals") or {}}
    tensors: dict[str, torch.Tensor] = {}
    for f, hint in data_fields(cls):
        old = cls.v1_names.get(f.name, f.name)
        if tensor_kind(hint) == "tensor":
            if old in arrays:
                tensors[f.name] = arrays[old]
        elif tensor_kind(hint) == "dict":
            prefix = f"{old}{TENSOR_SEP}"
            entries = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            tensors |= {f"{f.name}{TENSOR_SEP}{k}": v for k, v in entries.items()}
            data[f.name] = list(entries)
        elif old in metrics and f.name != "intervals":
            data[f.name] = metrics[old]
    return data, tensors
