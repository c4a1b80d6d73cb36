"""A model is checked before any analysis uses it. Transformers fills missing tensors with
random values, loads NaN weights, and leaves a truncated file or an impossible config to a
traceback; each of these is one ``InputError`` here, naming what is wrong and the fix.

Two moments: ``check_model_folder`` reads only the folder's config and the safetensors
headers (before any weight is loaded); ``check_loading_info`` and ``check_loaded`` look at
what transformers built."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError

RESAVE = "copy the weights again from where they came from, or save the model again with save_pretrained"
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size: a ``ValueError``
    whose text says what is wrong (empty, not safetensors, truncated, inconsistent)."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError("is empty (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"is {size} bytes, too short for a safetensors file")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER or n > size - 8:
            raise ValueError("is not a safetensors file (its first bytes are not a safetensors header)")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ValueError("is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("is not a safetensors file (its header is not a table of tensors)")
    end = _data_end(header)
    if 8 + n + end > size:
        raise ValueError(f"is truncated: it holds {size} bytes but its header lists {8 + n + end}")
    return header


def _data_end(header: dict[str, Any]) -> int:
    """Where the last tensor's bytes end; each tensor's byte count must fit its dtype and shape."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in entry["data_offsets"])
            count = math.prod(int(d) for d in entry["shape"])
            width = DTYPE_BYTES.get(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"has a damaged header (tensor '{name}')") from None
        if width is not None and stop - begin != count * width:
            raise ValueError(f"has a damaged header (tensor '{name}' is {entry['shape']} {entry['dtype']} "
                             f"but holds {stop - begin} bytes)")
        end = max(end, stop)
    return end


def check_weight_files(folder: Path) -> None:
    """Every ``*.safetensors`` in the folder is a whole safetensors file (read from its header
    and size only; nothing is loaded)."""
    for path in sorted(folder.glob("*.safetensors")):
        try:
            safetensors_header(path)
        except ValueError as exc:
            raise InputError(f"the weights file {path} {exc}; {RESAVE}") from None
        except OSError as exc:
            raise InputError(f"the weights file {path} cannot be read ({exc.strerror or type(exc).__name__}); "
                             "check its permissions") from None


def check_config_heads(doc: dict[str, Any], config_path: Path) -> None:
    """Head counts that cannot describe a model: the hidden size not a multiple of the head
    count (when no head_dim is given), or query heads not a multiple of the key/value heads."""
    heads = _first(doc, "num_attention_heads", "n_head")
    hidden = _first(doc, "hidden_size", "n_embd", "d_model")
    kv = _first(doc, "num_key_value_heads")
    for name, value in (("num_attention_heads", heads), ("hidden_size", hidden), ("num_key_value_heads", kv)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InputError(f"{config_path}: {name} is {value!r}, not a positive integer; {RESAVE}")
    if heads and hidden and doc.get("head_dim") is None and hidden % heads:
        raise InputError(f"{config_path}: the hidden size {hidden} is not a multiple of the {heads} attention heads; "
                         f"fix num_attention_heads (a divisor of {hidden}) or give the model's head_dim")
    if heads and kv and heads % kv:
        raise InputError(f"{config_path}: {heads} attention heads cannot share {kv} key/value heads (not a "
                         "multiple); fix num_key_value_heads to a divisor of num_attention_heads")


def _first(doc: dict[str, Any], *names: str) -> Any:
    return next((doc[n] for n in names if doc.get(n) is not None), None)


def check_model_folder(folder: Path, doc: dict[str, Any]) -> None:
    """What can be seen of a local model folder before loading it: its config's head counts
    and the safetensors files' integrity."""
    check_config_heads(doc, folder / "config.json")
    check_weight_files(folder)


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """Hide transformers' load-report table (missing / unexpected keys): ``check_loading_info``
    turns the same facts into one line with the fix."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def check_loading_info(info: dict[str, Any], where: str) -> None:
    """Transformers' ``output_loading_info``: tensors the weights lack (they would be random),
    tensors the model has no place for, and tensors whose shape disagrees with the config."""
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    if missing:
        raise InputError(f"the weights of {where} lack {len(missing)} tensor(s) the model needs ({_few(missing)}); "
                         f"they would be random values. The file is incomplete: {RESAVE}")
    if mismatched:
        name, saved, wanted = mismatched[0]
        raise InputError(f"{where}: {len(mismatched)} tensor(s) disagree with config.json, e.g. {name} is "
                         f"{list(saved)} in the weights but {list(wanted)} by the config; use the config.json saved "
                         "with these weights")
    if unexpected:
        raise InputError(f"the weights of {where} hold {len(unexpected)} tensor(s) this model has no place for "
                         f"({_few(unexpected)}); config.json does not describe these weights: use the config saved "
                         "with them")


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_loaded(hf: Any, tokenizer: Any, where: str) -> None:
    """After loading: the tokenizer fits the embedding, and every weight is finite."""
    check_vocab(hf, tokenizer, where)
    check_finite(hf, where)


def check_vocab(hf: Any, tokenizer: Any, where: str) -> None:
    """A tokenizer with more tokens than the embedding has rows gives ids that index past it."""
    embedding = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
    rows = getattr(embedding, "num_embeddings", None)
    if rows is None or tokenizer is None:
        return
    n_tokens = len(tokenizer)
    if n_tokens > rows:
        raise InputError(f"the tokenizer of {where} has {n_tokens} tokens but the model's embedding has {rows} rows, "
                         f"so token ids {rows} and up would index past it; use the tokenizer saved with these weights "
                         "(tokenizer.save_pretrained) or resize the model (model.resize_token_embeddings(len(tokenizer)))")


def check_finite(hf: Any, where: str) -> None:
    """NaN or infinite weights make every figure NaN. One sum per tensor (NaN and inf survive
    a sum); a non-finite sum is confirmed element-wise, since a half-precision sum may overflow."""
    import torch

    bad = []
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.device.type == "meta" or torch.isfinite(p.sum()):
                continue
            n_bad = int((~torch.isfinite(p)).sum())
            if n_bad:
                bad.append((name, n_bad, p.numel()))
    if bad:
        name, n_bad, total = bad[0]
        fix = "the file is damaged or the training diverged: use another checkpoint"
        if next(hf.parameters()).dtype == torch.float16:
            fix = "in float16 values past 65504 overflow: use --dtype bfloat16 or float32, or another checkpoint"
        raise InputError(f"the weights of {where} hold NaN or infinite values ({len(bad)} tensor(s), e.g. {name}: "
                         f"{n_bad} of {total}); {fix}")
