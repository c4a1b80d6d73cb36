"""Forwards over the edge graph (``workbench.patching.graph``) in which every receiver sees
the residual with some incoming edges replaced by an ablation value (mean or corrupt run),
many edge configurations per batch: faithfulness, exact edge patching and ACDC use it.

The C configurations of a chunk run side by side as one batch of C*n prompts. As the pass
goes, each sender's change (its output minus its ablation value) is kept; a receiver's
input is the residual minus the changes of the senders whose edge to it is dropped. A head
reads its own copy (its q, k and v rebuilt by ``head_qkv.QKV``), an MLP and the logits
read the residual with the dropped changes taken out.

A head's output is its write into the residual (``head_qkv.head_writes``): where a norm
follows the attention (Gemma-2), each head's write is divided by the rms of the layer's whole
attention output in this same forward, so the heads of a layer still sum to what the layer
writes. With every edge kept the forward is the model's own; with edges dropped it is the
edge circuit under that per-forward scale: a head that changes rescales the writes of the
other heads of its layer (the coupling the norm makes), and no edge carries that. This is
the exact split of the norm's output at the scale the forward actually has, not a claim
about how other libraries split heads before a norm."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch

from ..cache import Tokens, forward
from ..errors import InputError
from .edge_graph import Graph, MetricFn, last_logits
from .head_qkv import QKV, attn_scale, attn_softcap, head_writes, masked_positions, per_head_attention, write_weights

Hook = Callable[[torch.Tensor], torch.Tensor]


def ablation_values(acts: dict[str, torch.Tensor], how: Any, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The values an ablated edge carries (see ``workbench.patching.ablation``)."""
    from .ablation import ablation_values as values

    return values(acts, how, n, seed)


def run_edge_masks(model: Any, graph: Graph, tokens: Tokens, ablate: dict[str, torch.Tensor], keep: torch.Tensor,
                   metric: MetricFn, max_batch: int = 64, progress: bool = False) -> torch.Tensor:
    """Metric [C N] with, in configuration c, every edge where ``keep[c]`` [S R] is False carrying
    ``ablate``'s value instead of the sender's current output. ``keep`` may be [S R] (one config)."""
    if keep.ndim == 2:
        keep = keep[None]
    if tuple(keep.shape[1:]) != tuple(graph.valid.shape):
        raise InputError(f"edge masks have shape {tuple(keep.shape)}, expected [configs, {len(graph.senders)}, {len(graph.receivers)}]")
    n = len(tokens)
    per = max(1, max_batch // n)
    outs = []
    from tqdm.auto import tqdm

    for start in tqdm(range(0, keep.shape[0], per), desc="edge configs", disable=not progress, leave=False):
        chunk = keep[start:start + per]
        outs.append(_edge_forward(model, graph, tokens, ablate, chunk, metric))
    return torch.cat(outs)


def _edge_forward(model: Any, graph: Graph, tokens: Tokens, ablate: dict[str, torch.Tensor], keep: torch.Tensor,
                  metric: MetricFn) -> torch.Tensor:
    """Metric [C n] of one chunk of configurations ``keep`` [C S R], in one forward pass."""
    C, n = keep.shape[0], len(tokens)
    big = Tokens(tokens.input_ids.repeat(C, 1), tokens.attention_mask.repeat(C, 1))
    qkv = QKV(model)
    run = _EdgeMaskedRun(model, graph, ablate, keep, n, qkv)
    try:
        with torch.no_grad():
            logits, _ = forward(model, big, [], run.hooks())
    finally:
        qkv.close()
    return metric(last_logits(logits, big).view(C, n, -1))


class _EdgeMaskedRun:
    """The hooks of one edge-masked forward pass over C configurations of n prompts, and what
    they keep between hook points: the senders' changes so far, and a layer's per-head inputs."""

    def __init__(self, model: Any, graph: Graph, ablate: dict[str, torch.Tensor], keep: torch.Tensor, n: int,
                 qkv: QKV) -> None:
        self.model, self.graph, self.ablate, self.qkv = model, graph, ablate, qkv
        self.C, self.n = keep.shape[0], n
        self.drop = (~keep & graph.valid).to(model.dtype).to(model.device)  # [C S R]
        self.deltas: list[tuple[int, torch.Tensor]] = []  # (first sender index, [C n pos S_block d_model])
        self.x_heads: torch.Tensor | None = None  # this layer's per-head inputs, None when no edge into it is dropped
        self.pending: dict[str, torch.Tensor] = {}  # "z": the heads' output recomputed from their own inputs
        self.w_o = [write_weights(model, l) for l in range(model.shape.n_layers)]

    def hooks(self) -> dict[str, Hook]:
        L, H = self.model.shape.n_layers, self.model.shape.n_heads
        hooks: dict[str, Hook] = {"blocks.0.hook_resid_pre": self.on_input}
        for l in range(L):
            on_resid = partial(self.on_resid, slice(l * (H + 1), l * (H + 1) + H))
            hooks[f"blocks.{l}.hook_resid_pre"] = on_resid if l > 0 else _chain(self.on_input, on_resid)
            hooks[f"blocks.{l}.attn.hook_attn_scores"] = partial(self.on_scores, l)
            hooks[f"blocks.{l}.attn.hook_z"] = partial(self.on_z, l)
            hooks[f"blocks.{l}.hook_resid_mid"] = partial(self.minus_removed, l * (H + 1) + H)
            hooks[f"blocks.{l}.hook_mlp_out"] = partial(self.on_mlp, l)
        hooks[f"blocks.{L - 1}.hook_resid_post"] = partial(self.minus_removed, len(self.graph.receivers) - 1)
        return hooks

    # ----- the senders' changes
    def rep(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.model.dtype).repeat(self.C, *([1] * (t.ndim - 1)))

    def view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(self.C, self.n, *t.shape[1:])

    def change(self, t: torch.Tensor, key: str) -> torch.Tensor:
        """[C n ...]: a sender's output minus its ablation value."""
        return self.view(t) - self.view(self.rep(self.ablate[key]))

    def removed(self, receivers: slice | int) -> torch.Tensor | None:
        """[C n pos V d_model]: sum of ablated senders' deltas for these receivers."""
        r = self.drop[:, :, receivers]
        if r.ndim == 2:
            r = r[:, :, None]
        total = None
        for first, d in self.deltas:
            w = r[:, first:first + d.shape[3]]  # [C S_block V]
            if not torch.any(w):
                continue
            part = torch.einsum("cnpsm,csv->cnpvm", d, w)
            total = part if total is None else total + part
        return total

    # ----- the hooks
    def on_input(self, x: torch.Tensor) -> torch.Tensor:
        self.deltas.append((0, self.change(x, "input")[:, :, :, None]))
        return x

    def on_resid(self, r_heads: slice, x: torch.Tensor) -> torch.Tensor:
        rem = self.removed(r_heads)
        self.x_heads = None if rem is None else (x[:, :, None] - rem.view(self.C * self.n, *rem.shape[2:]))
        return x

    def on_scores(self, layer: int, sc: torch.Tensor) -> torch.Tensor:
        xh = self.x_heads
        if xh is None:
            return sc
        q, k, v = self.qkv(layer, xh)
        new_scores, z = per_head_attention(q, k, v, masked_positions(sc), attn_scale(self.model, layer), sc,
                                           attn_softcap(self.model, layer))
        self.pending["z"] = z
        return new_scores

    def on_z(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        if self.x_heads is not None:
            z = self.pending.pop("z").to(z.dtype)
        zd = self.change(head_writes(self.model, layer, z), f"z{layer}")
        self.deltas.append((self.graph.head_slice(layer).start, torch.einsum("cnphd,hdm->cnphm", zd, self.w_o[layer])))
        return z

    def on_mlp(self, layer: int, o: torch.Tensor) -> torch.Tensor:
        self.deltas.append((self.graph.mlp_sender(layer), self.change(o, f"mlp{layer}")[:, :, :, None]))
        return o

    def minus_removed(self, receiver: int, x: torch.Tensor) -> torch.Tensor:
        """An MLP's input or the final residual, with the dropped edges' changes taken out."""
        rem = self.removed(receiver)
        return x if rem is None else x - rem[:, :, :, 0].reshape(x.shape)


def _chain(f: Hook, g: Hook) -> Hook:
    return lambda x: g(f(x))
