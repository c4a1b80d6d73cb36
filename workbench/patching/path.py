"""Path patching as Wang et al. (2022) define it.

For a sender head s and a set of receivers (heads, through their queries, keys and/or
values; or the logits):

1. run the clean and corrupt prompts and cache every head's output z;
2. run the clean prompts with s's output taken from the corrupt run and every other head
   frozen to its clean output (MLPs are recomputed); record the receivers' inputs;
3. run the clean prompts with only the receivers' q/k/v replaced by the recorded values,
   and read the metric. With the logits as receiver, step 2's output is the answer.

Many senders go in one batch (configs x prompts). A receiver's key and value are its own
copies (grouped-query attention shares keys and values between heads; patching one head's
copy leaves its siblings clean).

A head's output is its write into the residual (``head_qkv.head_writes`` @ ``write_weights``).
Where a norm follows the attention (Gemma-2's post-attention RMSNorm), head h writes
(z_h / rms) @ W_O[h] (1 + w) with rms that of the layer's whole attention output in its run, so
freezing the other heads' z would still rescale their writes by the sender's change: step 2
instead sets the sender's layer's write to its clean value plus the sender's corrupt-minus-clean
write (each run at its own scale), exactly what "every other head frozen" means there; without
such a norm this is the same as patching z. Step 3 rebuilds the receivers' scores from q and k
with the layer's soft-cap (Gemma-2), and the model's own norm follows their new z.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..cache import Tokens, forward
from ..backends import PatchFn
from ..errors import InputError
from ..names import act_name
from .activation import PatchGrid, baseline_metrics, check_pair, last_logits
from .graph import attn_scale, masked_positions, per_head_attention
from .head_qkv import attn_softcap, head_writes, write_weights

if TYPE_CHECKING:
    from ..models import Model


def _check_heads(model: Any, heads: Sequence[tuple[int, int]], what: str) -> None:
    s = model.shape
    for l, h in heads:
        if not (0 <= l < s.n_layers and 0 <= h < s.n_heads):
            raise InputError(f"{what} head L{l}H{h} does not exist; this model has {s.n_layers} layers x {s.n_heads} heads")


def path_patch(model: Any, clean: Tokens, corrupt: Tokens, metric: Callable,
               receivers: str | Sequence[tuple[int, int]] = "logits", receiver_inputs: str = "qkv",
               senders: Sequence[tuple[int, int]] | None = None, max_batch: int = 256,
               progress: bool = False) -> PatchGrid:
    """Metric after path patching each sender to the receivers (mean over prompts):
    [layer head] when ``senders`` is None (every head), else [len(senders)]."""
    check_pair(clean, corrupt)
    s = model.shape
    L, H = s.n_layers, s.n_heads
    if set(receiver_inputs) - set("qkv") or not receiver_inputs:
        raise InputError(f"receiver_inputs '{receiver_inputs}' must be a non-empty mix of q, k, v")
    all_senders = senders is None
    senders = [(l, h) for l in range(L) for h in range(H)] if senders is None else list(senders)
    _check_heads(model, senders, "sender")
    to_logits = isinstance(receivers, str)
    if to_logits and receivers != "logits":
        raise InputError(f"receivers must be 'logits' or a list of (layer, head), got '{receivers}'")
    if not isinstance(receivers, str):
        receivers = list(receivers)
        _check_heads(model, receivers, "receiver")
    z_names = [act_name("z", l) for l in range(L)]
    clean_metric, corrupt_metric, corrupt_cache = baseline_metrics(model, clean, corrupt, metric, z_names)
    with torch.no_grad():
        _, clean_cache = forward(model, clean, z_names + [act_name("attn_out", l) for l in range(L)])
    n = len(clean)
    per = max(1, max_batch // n)
    out = []
    for start in tqdm(range(0, len(senders), per), desc="path patching", disable=not progress, leave=False):
        chunk = senders[start:start + per]
        out.append(_chunk(model, clean, chunk, clean_cache, corrupt_cache, metric, receivers, receiver_inputs, to_logits))
    vals = torch.cat(out)
    if all_senders:
        vals = vals.view(L, H)
    return PatchGrid(vals, clean_metric, corrupt_metric)


def _chunk(model: Model, clean: Tokens, chunk: list[tuple[int, int]], clean_cache: Mapping[str, torch.Tensor],
           corrupt_cache: Mapping[str, torch.Tensor], metric: Callable, receivers: str | list[tuple[int, int]],
           receiver_inputs: str, to_logits: bool) -> torch.Tensor:
    """Steps 2 and 3 for one chunk of senders: [len(chunk)] metric, mean over prompts."""
    n, c = len(clean), len(chunk)
    big = Tokens(clean.input_ids.repeat(c, 1), clean.attention_mask.repeat(c, 1))
    rec_layers = sorted({l for l, _ in receivers}) if not isinstance(receivers, str) else []
    # step 2: freeze every head to clean, the sender to corrupt; record the receivers' inputs
    names = [act_name(t, l) for l in rec_layers for t in "qkv"]
    with torch.no_grad():
        logits, rec = forward(model, big, names, _frozen(model, chunk, clean_cache, corrupt_cache, n))
    if to_logits or isinstance(receivers, str):
        return metric(last_logits(logits, big).view(c, n, -1)).mean(1)
    # step 3: clean run with only the receivers' q/k/v replaced
    hooks: dict[str, PatchFn] = {}
    for l in rec_layers:
        hooks |= _receiver_hooks(model, l, [h for rl, h in receivers if rl == l], rec, receiver_inputs)
    with torch.no_grad():
        logits, _ = forward(model, big, [], hooks)
    return metric(last_logits(logits, big).view(c, n, -1)).mean(1)


def _frozen(model: Model, chunk: list[tuple[int, int]], clean_cache: Mapping[str, torch.Tensor],
            corrupt_cache: Mapping[str, torch.Tensor], n: int) -> dict[str, PatchFn]:
    """Patches for step 2: every head's z from the clean run, config i's sender from the corrupt
    run; a sender's layer writes its clean attention output plus config i's sender's change of
    write (each run's write at its own scale: exact under a post-attention norm)."""
    c = len(chunk)

    def freeze(l: int) -> PatchFn:
        def fn(z: torch.Tensor) -> torch.Tensor:
            zc = clean_cache[act_name("z", l)].to(z.dtype).repeat(c, 1, 1, 1).view(c, n, *z.shape[1:])
            for i, (sl, sh) in enumerate(chunk):
                if sl == l:
                    zc[i, :, :, sh] = corrupt_cache[act_name("z", l)][:, :, sh].to(z.dtype)
            return zc.view_as(z)
        return fn

    def write(l: int) -> PatchFn:
        clean_z, corrupt_z = clean_cache[act_name("z", l)], corrupt_cache[act_name("z", l)]
        w = write_weights(model, l)  # [H D M]
        change = head_writes(model, l, corrupt_z) - head_writes(model, l, clean_z)  # [n pos H D]
        out = clean_cache[act_name("attn_out", l)].repeat(c, 1, 1).view(c, n, *clean_z.shape[1:2], -1).clone()
        for i, (sl, sh) in enumerate(chunk):
            if sl == l:
                out[i] += (change[:, :, sh] @ w[sh]).to(out.dtype)

        def fn(a: torch.Tensor) -> torch.Tensor:
            return out.view_as(a).to(a.dtype)
        return fn

    hooks = {act_name("z", l): freeze(l) for l in range(model.shape.n_layers)}
    return hooks | {act_name("attn_out", l): write(l) for l in sorted({sl for sl, _ in chunk})}


def _receiver_hooks(model: Model, l: int, heads: list[int], rec: Mapping[str, torch.Tensor],
                    receiver_inputs: str) -> dict[str, PatchFn]:
    """Hooks for step 3 on layer ``l``: the receivers' q/k/v (as ``receiver_inputs`` says) from
    step 2's record, their scores and z recomputed from them; every other head clean."""
    rep = model.shape.n_heads // model.shape.n_kv_heads
    state: dict[str, torch.Tensor] = {}

    def keep(t: str) -> PatchFn:
        def fn(x: torch.Tensor) -> torch.Tensor:
            state[t] = x
            return x
        return fn

    def on_scores(sc: torch.Tensor) -> torch.Tensor:
        q = state["q"].clone()
        k = state["k"].repeat_interleave(rep, dim=2)
        v = state["v"].repeat_interleave(rep, dim=2)
        recorded = {"q": rec[act_name("q", l)], "k": rec[act_name("k", l)].repeat_interleave(rep, dim=2),
                    "v": rec[act_name("v", l)].repeat_interleave(rep, dim=2)}
        live = {"q": q, "k": k, "v": v}
        for h in heads:
            for t in receiver_inputs:
                live[t][:, :, h] = recorded[t][:, :, h]
        new_scores, z = per_head_attention(q, k, v, masked_positions(sc), attn_scale(model, l), sc,
                                           attn_softcap(model, l))
        state["z"] = z
        out = sc.clone()
        out[:, heads] = new_scores[:, heads]
        return out

    def on_z(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        z[:, :, heads] = state.pop("z")[:, :, heads].to(z.dtype)
        return z

    hooks = {act_name(t, l): keep(t) for t in "qkv"}
    hooks[act_name("attn_scores", l)] = on_scores
    hooks[act_name("z", l)] = on_z
    return hooks


def path_patching_circuit(model: Any, graph: Any, clean: Tokens, corrupt: Tokens, metric: Callable, top: int = 6,
                          progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Wang et al.'s two rounds as a circuit: heads that matter to the logits directly, then
    heads that matter to those through their queries, keys and values. (edge scores [S R],
    circuit [S R] bool): the found heads with the input, every MLP and the logits (MLPs are
    not ablated in Wang et al.), pruned of edges that do not reach the logits."""
    from .graph import prune_dangling

    L, H = graph.n_layers, graph.n_heads
    scores = torch.zeros(graph.valid.shape)  # cpu: edge scores live on the CPU, like the graph
    direct = path_patch(model, clean, corrupt, metric, "logits", max_batch=8 * len(clean), progress=progress).effect
    movers = [(i // H, i % H) for i in direct.abs().flatten().topk(min(top, L * H)).indices.tolist()]
    for l, h in movers:
        scores[graph.head_slice(l).start + h, -1] = direct[l, h]
    found = set(movers)
    senders = [(l, h) for l in range(max(l for l, _ in movers)) for h in range(H)]
    if senders:
        second = path_patch(model, clean, corrupt, metric, movers, "qkv", senders=senders, max_batch=8 * len(clean),
                            progress=progress).effect
        for i in second.abs().argsort(descending=True)[:top].tolist():
            l, h = senders[i]
            found.add((l, h))
            for rl, rh in movers:
                if rl > l:
                    scores[graph.head_slice(l).start + h, graph.head_slice(rl).start + rh - 1] = second[i]
    keep = {"input", "logits"} | {f"M{l}" for l in range(L)} | {f"L{l}H{h}" for l, h in found}
    s_in = torch.tensor([s in keep for s in graph.senders])  # cpu: node masks over the CPU graph
    r_in = torch.tensor([r in keep for r in graph.receivers])  # cpu: node masks over the CPU graph
    return scores, prune_dangling(graph, s_in[:, None] & r_in[None, :] & graph.valid)
