"""Batched greedy decoding with a KV cache that fires the workbench hook points at every
step, so analyses can read (``blocks.{l}.attn.hook_pattern`` of the newest query ...) and
patch (``blocks.{l}.attn.hook_z``, ``hook_q`` ...) activations during generation, by the
canonical names only.

Layout: prompts are left-padded so every sequence's newest token sits in the last
column; the prompt minus its last token is prefilled once, then every answer token
(the first included) comes from a one-token decode step, as in Wu et al.'s reference
loop. One prefill can serve many decode configurations (``repeat``): the cache is
repeated so row ``b * repeat + c`` is prompt ``b`` under configuration ``c``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .errors import InputError
from .hooks import check_names

PatchFn = Callable[[torch.Tensor], torch.Tensor]
StepFn = Callable[[int, dict[str, torch.Tensor], torch.Tensor, torch.Tensor], None]
"""on_step(step, read [name -> newest-query activation], next_token [rows], active [rows])."""


@dataclass
class Prefill:
    """A prefilled batch: left-padded ids and mask [batch pos] and the HF cache of all
    but the last prompt token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: Any
    n_prefill_forwards: int = 1

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1]


@dataclass
class Generated:
    """Greedy output: ``new_tokens`` [rows steps] (``pad`` after a row stopped), the
    number of kept tokens per row (stop token included) and the left-padded prompt."""

    new_tokens: torch.Tensor
    n_tokens: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    n_forwards: int

    def texts(self, tokenizer: Any) -> list[str]:
        return [tokenizer.decode(row[: int(n)].tolist(), skip_special_tokens=True)
                for row, n in zip(self.new_tokens, self.n_tokens)]

    def sequences(self) -> torch.Tensor:
        """[rows prompt+steps] prompt ids followed by the generated ids."""
        return torch.cat([self.input_ids, self.new_tokens], dim=1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch pos] ids and mask, padded on the left so the last tokens line up, on ``device``
    (None: left where they are built, the CPU)."""
    if not prompts:
        raise InputError("the prompt list is empty; pass at least one prompt")
    if any(len(p) == 0 for p in prompts):
        raise InputError("a prompt has no tokens; every prompt needs some text")
    n = max(len(p) for p in prompts)
    # cpu: padded from Python lists on the CPU, then moved in one copy
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, n - len(p):] = torch.as_tensor(list(p), dtype=torch.long)  # cpu: from a Python list
        mask[i, n - len(p):] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _as_id_lists(model: Any, prompts: Any) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for p in prompts:
        if isinstance(p, str):
            if not p.strip():
                raise InputError("a prompt is empty; every prompt needs some text")
            out.append(model.tokenizer.encode(p, add_special_tokens=False))
        else:
            out.append([int(x) for x in p])
    return out


class _Hooks:
    """Forward hooks on the model's hook points: patches, and readers that keep only
    the newest query's activation ([rows head key] for patterns/scores, [rows ...] else)."""

    def __init__(self, model: Any, patches: Mapping[str, PatchFn], read: Iterable[str]) -> None:
        self.store: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, fn in patches.items():
            self.handles.append(model.hook_points[name].register_forward_hook(lambda m, i, o, fn=fn: fn(o)))
        for name in read:
            per_head_qk = name.endswith(("hook_pattern", "hook_attn_scores"))

            def keep(m, i, o, name=name, qk=per_head_qk):
                self.store[name] = (o[:, :, -1] if qk else o[:, -1]).detach()

            self.handles.append(model.hook_points[name].register_forward_hook(keep))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _forward(model: Any, ids: torch.Tensor, mask: torch.Tensor, cache: Any, positions: torch.Tensor) -> tuple[torch.Tensor, Any]:
    out = model.hf(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = getattr(out, "past_key_values", None)
    return out.logits[:, -1], new_cache


def prefill(model: Any, prompts: Any, patches: Mapping[str, PatchFn] | None = None, batch_size: int | None = None) -> Prefill:
    """Left-pad ``prompts`` (strings or token-id lists) and run all but their last token
    through the model, keeping the KV cache. ``patches`` apply during the prefill."""
    from transformers import DynamicCache

    ids, mask = left_pad(_as_id_lists(model, prompts), model.tokenizer.pad_token_id or 0, model.device)
    if ids.shape[1] < 2:
        raise InputError("prompts need at least two tokens to prefill and decode; lengthen the prompts")
    patches = dict(patches or {})
    check_names(model.hook_points, list(patches))
    n = ids.shape[0]
    step = batch_size or n
    caches = []
    hooks = _Hooks(model, patches, ())
    try:
        with torch.no_grad():
            for s in range(0, n, step):
                sub_ids, sub_mask = ids[s:s + step, :-1], mask[s:s + step, :-1]
                cache = DynamicCache(config=model.hf.config)
                _, cache = _forward(model, sub_ids, sub_mask, cache, _positions(sub_mask))
                caches.append(cache)
    finally:
        hooks.remove()
    cache = caches[0] if len(caches) == 1 else _cat_caches(caches)
    return Prefill(ids, mask, cache, n_prefill_forwards=len(caches))


def _cat_caches(caches: list[Any]) -> Any:
    first = caches[0]
    for li, layer in enumerate(first.layers):
        layer.keys = torch.cat([c.layers[li].keys for c in caches])
        layer.values = torch.cat([c.layers[li].values for c in caches])
    return first


def _repeat_cache(cache: Any, repeat: int) -> Any:
    """A copy of ``cache`` with each row repeated ``repeat`` times (row b -> rows b*repeat .. +repeat-1)."""
    import copy

    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        lay.keys = layer.keys.repeat_interleave(repeat, dim=0)
        lay.values = layer.values.repeat_interleave(repeat, dim=0)
        new.layers.append(lay)
    return new


def _buffered_cache(cache: Any, extra: int) -> Any:
    """A copy of ``cache`` whose layers write new keys/values into preallocated buffers
    (room for ``extra`` more tokens) instead of concatenating the whole cache every step."""
    import copy

    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        kbuf: torch.Tensor  # the preallocated keys [B K T+extra D] and values, and how much of them is filled
        vbuf: torch.Tensor
        length: int

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            n = key_states.shape[-2]
            if self.length + n > self.kbuf.shape[-2]:  # out of room: grow like a list
                grow = max(n, self.kbuf.shape[-2])
                self.kbuf = torch.cat([self.kbuf, self.kbuf.new_zeros(*self.kbuf.shape[:2], grow, self.kbuf.shape[3])], 2)
                self.vbuf = torch.cat([self.vbuf, self.vbuf.new_zeros(*self.vbuf.shape[:2], grow, self.vbuf.shape[3])], 2)
            self.kbuf[:, :, self.length:self.length + n] = key_states
            self.vbuf[:, :, self.length:self.length + n] = value_states
            self.length += n
            self.keys, self.values = self.kbuf[:, :, : self.length], self.vbuf[:, :, : self.length]
            return self.keys, self.values

    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        lay = BufferedLayer.__new__(BufferedLayer)
        lay.__dict__.update(layer.__dict__)
        k, v = layer.keys, layer.values
        lay.kbuf = torch.cat([k, k.new_zeros(*k.shape[:2], extra, k.shape[3])], 2)
        lay.vbuf = torch.cat([v, v.new_zeros(*v.shape[:2], extra, v.shape[3])], 2)
        lay.length = k.shape[2]
        lay.keys, lay.values = lay.kbuf[:, :, : lay.length], lay.vbuf[:, :, : lay.length]
        new.layers.append(lay)
    return new


def _select_cache(cache: Any, rows: torch.Tensor) -> Any:
    import copy

    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        lay.keys = layer.keys[rows]
        lay.values = layer.values[rows]
        new.layers.append(lay)
    return new


def decode(
    model: Any,
    state: Prefill,
    max_new_tokens: int,
    stop_ids: Iterable[int] = (),
    patches: Mapping[str, PatchFn] | None = None,
    read: Iterable[str] = (),
    on_step: StepFn | None = None,
    repeat: int = 1,
    rows: Sequence[int] | None = None,
    progress: bool = False,
) -> Generated:
    """Greedy decoding from a prefilled state, ``max_new_tokens`` steps at most; a row
    stops after emitting a token in ``stop_ids``. ``patches`` apply at every decode step,
    ``read`` names are handed to ``on_step`` after each step (newest query only).

    ``rows`` picks prefilled prompts (default all); ``repeat`` decodes each of them under
    ``repeat`` configurations (row ``i * repeat + c``), reusing one prefill."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens}; ask for at least one new token")
    patches = dict(patches or {})
    read = list(dict.fromkeys(read))
    check_names(model.hook_points, list(patches) + read)
    dev = state.input_ids.device
    sel = torch.arange(state.input_ids.shape[0], device=dev) if rows is None else \
        torch.as_tensor(list(rows), dtype=torch.long, device=dev)
    cache = _select_cache(state.cache, sel)
    if repeat > 1:
        cache = _repeat_cache(cache, repeat)
    cache = _buffered_cache(cache, max_new_tokens)
    ids = state.input_ids[sel].repeat_interleave(repeat, dim=0)
    mask = state.attention_mask[sel].repeat_interleave(repeat, dim=0)
    n = ids.shape[0]
    stop = torch.tensor(sorted(set(int(s) for s in stop_ids)), dtype=torch.long, device=ids.device)
    pad = model.tokenizer.pad_token_id or 0
    out = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=ids.device)
    n_tokens = torch.zeros(n, dtype=torch.long, device=ids.device)
    active = torch.ones(n, dtype=torch.bool, device=ids.device)
    current = ids[:, -1:]
    positions = _positions(mask)[:, -1:]
    hooks = _Hooks(model, patches, read)
    n_forwards = 0
    try:
        with torch.no_grad():
            for step in tqdm(range(max_new_tokens), desc="decoding", disable=not progress, leave=False):
                logits, cache = _forward(model, current, mask, cache, positions)
                n_forwards += 1
                nxt = logits.argmax(-1)
                nxt = torch.where(active, nxt, torch.full_like(nxt, pad))
                out[:, step] = nxt
                n_tokens += active.long()
                if on_step is not None:
                    on_step(step, dict(hooks.store), nxt, active.clone())
                hooks.store.clear()
                if stop.numel():
                    active = active & ~torch.isin(nxt, stop)
                if not active.any():
                    out = out[:, : step + 1]
                    break
                current = nxt[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions + 1
    finally:
        hooks.remove()
    return Generated(out, n_tokens, ids, state.attention_mask[sel].repeat_interleave(repeat, dim=0), n_forwards)


def greedy_generate(
    model: Any,
    prompts: Any,
    max_new_tokens: int = 20,
    stop_ids: Iterable[int] = (),
    patches: Mapping[str, PatchFn] | None = None,
    prefill_patches: Mapping[str, PatchFn] | None = None,
    read: Iterable[str] = (),
    on_step: StepFn | None = None,
) -> Generated:
    """Prefill then greedy-decode a batch of prompts (strings or token-id lists)."""
    state = prefill(model, prompts, patches=prefill_patches)
    gen = decode(model, state, max_new_tokens, stop_ids, patches, read, on_step)
    gen.n_forwards += state.n_prefill_forwards
    return gen


def newline_stop_ids(tokenizer: Any) -> list[int]:
    """Token ids that contain a newline, plus end-of-sequence ids: where a one-line answer ends
    (the reference stops at the newline token)."""
    ids = set()
    for tok_id in range(len(tokenizer)):
        piece = tokenizer.convert_ids_to_tokens(tok_id)
        if piece is None:
            continue
        text = tokenizer.convert_tokens_to_string([piece]) if "Ċ" in piece or "\n" in piece or "<0x0A>" in piece else ""
        if "\n" in text:
            ids.add(tok_id)
    for special in (tokenizer.eos_token_id, getattr(tokenizer, "pad_token_id", None)):
        if special is not None:
            ids.add(int(special))
    return sorted(ids)


def last_token_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      patches: Mapping[str, PatchFn] | None = None,
                      read: Iterable[str] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward over left-padded prompts (see ``left_pad``) with ``patches``: the last
    token's logits [batch vocab] (the vocabulary projection runs for that token only) and
    the ``read`` activations in full."""
    patches = dict(patches or {})
    read = list(dict.fromkeys(read))
    check_names(model.hook_points, list(patches) + read)
    store: dict[str, torch.Tensor] = {}
    hooks = _Hooks(model, patches, ())
    for name in read:
        hooks.handles.append(model.hook_points[name].register_forward_hook(
            lambda m, i, o, name=name: store.__setitem__(name, o.detach())))
    try:
        with torch.no_grad():
            out = model.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                           use_cache=False, logits_to_keep=1)
    finally:
        hooks.remove()
    return out.logits[:, -1], store
