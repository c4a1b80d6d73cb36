"""The computational graph of heads and MLPs that edge-level circuit methods work on.

Nodes write to and read from the residual stream, so an edge u -> v is "the part of
v's input that is u's output". Senders: the input embedding, every attention head
``L{l}H{h}`` (its output z_h W_O_h) and every MLP ``M{l}``. Receivers: every head (its
own copy of the residual it reads, feeding its query, key and value), every MLP
(its input) and the logits (the final residual). An edge exists when the sender comes
before the receiver: heads of layer l feed MLP l and every later layer; with a parallel
residual (GPT-NeoX: attention and MLP both read the layer's input) heads of layer l feed
only the later layers, not MLP l.

Two primitives live here:

* ``receiver_grads`` - one backward pass that returns d metric / d (input of each
  receiver) [receiver batch pos d_model], splitting the shared residual into per-head
  inputs exactly (grouped-query keys and values included), for EAP and EAP-IG;
* ``run_edge_masks`` - forwards in which every receiver sees the residual with some
  incoming edges replaced by an ablation value (mean or corrupt run), many edge
  configurations per batch: faithfulness, exact edge patching and ACDC use it.

Only the caching layer's hook points are used; the weights W_O, W_Q, W_K, W_V and the
norm before attention are read through the model's architecture adapter
(``workbench.adapters``) to rebuild per-head queries, keys and values from per-head inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..cache import Tokens, forward
from ..errors import InputError

MetricFn = Callable[[torch.Tensor], torch.Tensor]
"""last-token logits [..., N vocab] -> metric per prompt [..., N] (N the prompts, in order)."""


@dataclass
class LogitDiff:
    """The metric logit(correct) - logit(wrong) per prompt; ``sub`` selects a slice of prompts."""

    correct: torch.Tensor  # [N]
    wrong: torch.Tensor  # [N]

    def __call__(self, last_logits: torch.Tensor) -> torch.Tensor:
        from .metrics import logit_diff

        return logit_diff(last_logits, self.correct, self.wrong)

    def sub(self, start: int, stop: int) -> "LogitDiff":
        return LogitDiff(self.correct[start:stop], self.wrong[start:stop])


# ----------------------------------------------------------------------------- graph
@dataclass(frozen=True)
class Graph:
    """Sender and receiver names, their layers, and which edges exist ([S R] bool)."""

    n_layers: int
    n_heads: int
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    valid: torch.Tensor  # [S R] bool
    parallel: bool = False  # heads and MLP of one layer read the same residual (no head -> own-layer MLP edge)

    @classmethod
    def build(cls, n_layers: int, n_heads: int, parallel: bool = False) -> "Graph":
        senders = ["input"]
        receivers = []
        for l in range(n_layers):
            senders += [f"L{l}H{h}" for h in range(n_heads)] + [f"M{l}"]
            receivers += [f"L{l}H{h}" for h in range(n_heads)] + [f"M{l}"]
        receivers.append("logits")
        # cpu: the graph's structure lives on the CPU; whoever uses it on a device moves it
        s_rank = torch.tensor([_rank(s, n_layers, parallel) for s in senders])
        # cpu: the graph's structure lives on the CPU; whoever uses it on a device moves it
        r_rank = torch.tensor([_rank(r, n_layers, parallel) for r in receivers])
        valid = s_rank[:, None] < r_rank[None, :]
        return cls(n_layers, n_heads, tuple(senders), tuple(receivers), valid, parallel)

    @classmethod
    def for_model(cls, model: Any) -> "Graph":
        return cls.build(model.shape.n_layers, model.shape.n_heads, parallel=model.adapter.parallel)

    def rank(self, name: str) -> int:
        """Topological rank of a node (a sender never feeds a receiver of equal or lower rank)."""
        return _rank(name, self.n_layers, self.parallel)

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def sender_index(self, name: str) -> int:
        return self.senders.index(name)

    def receiver_index(self, name: str) -> int:
        return self.receivers.index(name)

    def edge_names(self, mask: torch.Tensor) -> list[tuple[str, str]]:
        """The (sender, receiver) names where ``mask`` [S R] is True."""
        return [(self.senders[i], self.receivers[j]) for i, j in mask.nonzero().tolist()]

    def head_slice(self, layer: int) -> slice:
        """Sender indices of layer ``layer``'s heads (the receiver indices are these minus one)."""
        start = 1 + layer * (self.n_heads + 1)
        return slice(start, start + self.n_heads)

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def nodes_of(self, edges: torch.Tensor) -> list[str]:
        """Heads and MLPs touched by the edges in ``edges`` [S R] bool, in graph order."""
        used = set()
        for i, j in edges.nonzero().tolist():
            used.add(self.senders[i])
            used.add(self.receivers[j])
        return [n for n in self.senders if n in used and n != "input"]


def _rank(name: str, n_layers: int, parallel: bool = False) -> int:
    """Topological rank: input 0, heads of layer l 2l+1, MLP l 2l+2 (2l+1 with a parallel
    residual: it reads the same residual as the heads), logits last."""
    if name == "input":
        return 0
    if name == "logits":
        return 2 * n_layers + 1
    if name.startswith("M"):
        return 2 * int(name[1:]) + (1 if parallel else 2)
    return 2 * int(name[1:].split("H")[0]) + 1


def heads_of(names: list[str]) -> list[tuple[int, int]]:
    """(layer, head) for each ``L{l}H{h}`` name."""
    out = []
    for n in names:
        if n.startswith("L") and "H" in n:
            l, h = n[1:].split("H")
            out.append((int(l), int(h)))
    return out


def prune_dangling(graph: Graph, edges: torch.Tensor) -> torch.Tensor:
    """Keep only edges whose receiver reaches the logits through kept edges ([S R] bool)."""
    edges = edges.clone() & graph.valid
    alive = {"logits"}
    # senders in reverse topological order; a node is alive if it has a kept edge to an alive receiver
    order = sorted(range(len(graph.senders)), key=lambda i: -graph.rank(graph.senders[i]))
    r_index = {r: j for j, r in enumerate(graph.receivers)}
    for i in order:
        name = graph.senders[i]
        outs = edges[i].nonzero().flatten().tolist()
        if any(graph.receivers[j] in alive for j in outs):
            alive.add(name)
    for name, j in r_index.items():
        if name not in alive:
            edges[:, j] = False
    return edges


def top_edges(graph: Graph, scores: torch.Tensor, n_edges: int | None = None, threshold: float | None = None) -> torch.Tensor:
    """The circuit: the ``n_edges`` edges of largest |score|, or those with |score| > threshold ([S R] bool)."""
    total = graph.n_edges
    absval = scores.abs().masked_fill(~graph.valid, -1.0)
    if n_edges is not None:
        if n_edges > total:
            raise InputError(f"asked for a circuit of {n_edges} edges but this model's graph has only {total}; "
                             f"choose n_edges <= {total}")
        if n_edges < 1:
            raise InputError(f"n_edges={n_edges}: a circuit needs at least one edge")
        idx = absval.flatten().topk(n_edges).indices
        mask = torch.zeros(absval.numel(), dtype=torch.bool)  # cpu: a selection over the CPU graph
        mask[idx] = True
        return mask.view_as(absval) & graph.valid
    if threshold is None:
        raise InputError("give either n_edges or threshold to pick a circuit")
    return (absval > threshold) & graph.valid


# ----------------------------------------------------------------------------- weights
def _attn(model: Any, layer: int):
    """(decoder layer, attention module, norm before attention) of ``layer``."""
    adapter = model.adapter
    block = adapter.layers(model.hf)[layer]
    return block, adapter.attn(block), adapter.attn_norm(block)


def out_weights(model: Any, layer: int) -> torch.Tensor:
    """W_O of each head of ``layer``: [head d_head d_model] (z_h @ W_O[h] is the head's output)."""
    _, attn, _ = _attn(model, layer)
    return model.adapter.out_weights(attn, model.shape)[0]


def attn_scale(model: Any, layer: int) -> float:
    _, attn, _ = _attn(model, layer)
    return model.adapter.scaling(attn, model.shape)


class QKV:
    """Rebuilds per-query-head q, k, v [batch pos head d_head] from per-head residual inputs
    [batch pos head d_model] with the model's own norm and projections (and rotary, whose
    cos/sin it keeps from the model's forward pass)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.adapter = model.adapter
        self.rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handle = None
        rotary_emb = self.adapter.rotary_emb(model.hf)
        if rotary_emb is not None:
            self._handle = rotary_emb.register_forward_hook(self._keep_rotary)

    def _keep_rotary(self, module, inputs, output) -> None:
        self.rotary = (output[0].detach(), output[1].detach())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __call__(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.model.shape
        _, attn, norm = _attn(self.model, layer)
        n = norm(x)
        group = torch.arange(s.n_heads, device=x.device) // (s.n_heads // s.n_kv_heads)
        w = self.adapter.qkv_weights(attn, s)
        out = []
        for weight, bias, heads in ((w.w_q, w.b_q, None), (w.w_k, w.b_k, group), (w.w_v, w.b_v, group)):
            weight = weight if heads is None else weight[heads]
            t = torch.einsum("bphm,hdm->bphd", n, weight)
            if bias is not None:
                t = t + (bias if heads is None else bias[heads])
            out.append(t)
        q, k, v = out
        if self.rotary is not None:
            cos, sin = (r[:, :, None, :] for r in self.rotary)
            q, k = self.adapter.apply_rotary(q, cos, sin), self.adapter.apply_rotary(k, cos, sin)
        return q, k, v


def per_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masked: torch.Tensor, scale: float,
                       scores_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [b head q k] and z [b pos head d] from per-query-head q, k, v [b pos head d];
    ``masked`` [b head q k] marks the positions the model masks (their score kept as given)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    scores = torch.where(masked, scores_in, scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
    return scores, z


def masked_positions(scores: torch.Tensor) -> torch.Tensor:
    """[b head q k] True where the model masks a key (its score is the dtype's minimum)."""
    return scores < torch.finfo(scores.dtype).min / 2




# ----------------------------------------------------------------------------- gradients
def _names(n_layers: int) -> list[str]:
    names = ["blocks.0.hook_resid_pre"]
    for l in range(n_layers):
        names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_q", f"blocks.{l}.attn.hook_k",
                  f"blocks.{l}.attn.hook_v", f"blocks.{l}.attn.hook_attn_scores", f"blocks.{l}.attn.hook_pattern",
                  f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_resid_mid", f"blocks.{l}.hook_mlp_out"]
    names.append(f"blocks.{n_layers - 1}.hook_resid_post")
    return list(dict.fromkeys(names))


def sender_outputs(model: Any, tokens: Tokens, embed: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Last-token logits and the senders' activations of one no-grad run: 'input' [b pos d_model]
    (and 'embed', the token embeddings),
    'z{l}' [b pos head d_head], 'mlp{l}' [b pos d_model]."""
    L = model.shape.n_layers
    names = ["hook_embed", "blocks.0.hook_resid_pre"] + [f"blocks.{l}.attn.hook_z" for l in range(L)] + \
            [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    patches = {"hook_embed": (lambda a, e=embed: e.to(a.dtype))} if embed is not None else None
    with torch.no_grad():
        logits, store = forward(model, tokens, names, patches)
    acts = {"input": store["blocks.0.hook_resid_pre"], "embed": store["hook_embed"]}
    for l in range(L):
        acts[f"z{l}"] = store[f"blocks.{l}.attn.hook_z"]
        acts[f"mlp{l}"] = store[f"blocks.{l}.hook_mlp_out"]
    return _last(logits, tokens), acts


def embeddings(model: Any, tokens: Tokens) -> torch.Tensor:
    """Token embeddings [b pos d_model] (the hook_embed activation)."""
    with torch.no_grad():
        _, store = forward(model, tokens, ["hook_embed"])
    return store["hook_embed"]


def _last(logits: torch.Tensor, tokens: Tokens) -> torch.Tensor:
    return logits[torch.arange(logits.shape[0], device=logits.device), tokens.last_positions]


def receiver_grads(model: Any, tokens: Tokens, metric: MetricFn, embed: torch.Tensor | None = None,
                   qkv: QKV | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """d mean-metric / d (input of every receiver): [R b pos d_model], and the metric value.

    ``embed`` [b pos d_model] replaces the token embeddings (EAP-IG's interpolation).
    A head's input gradient is split out exactly: the gradients at its query, at its own
    copy of the (possibly shared) key and value, pushed back through norm and projections."""
    s = model.shape
    L, H = s.n_layers, s.n_heads
    own = qkv is None
    qkv = qkv or QKV(model)
    base = embed

    def seed(a: torch.Tensor) -> torch.Tensor:
        x = (base.to(a.dtype) if base is not None else a).detach().clone()
        return x.requires_grad_(True)

    names = _names(L)
    try:
        # a fresh tensor at the MLP input, so its gradient is the MLP's alone (not the residual's)
        patches = {"hook_embed": seed, **{f"blocks.{l}.hook_resid_mid": _fresh for l in range(L)}}
        logits, st = forward(model, tokens, names, patches, grad=True)
        m = metric(_last(logits, tokens)).mean()
        wanted = []
        for l in range(L):
            wanted += [st[f"blocks.{l}.attn.hook_attn_scores"], st[f"blocks.{l}.attn.hook_z"], st[f"blocks.{l}.hook_resid_mid"]]
        wanted.append(st[f"blocks.{L - 1}.hook_resid_post"])
        grads = torch.autograd.grad(m, wanted, allow_unused=True)
        out = torch.zeros(len(Graph.build(L, H).receivers), *tokens.input_ids.shape, s.d_model, dtype=model.dtype,
                          device=model.device)
        rep = H // s.n_kv_heads
        for l in range(L):
            g_scores, g_z, g_mid = (g if g is not None else torch.zeros_like(w) for g, w in zip(grads[3 * l: 3 * l + 3], wanted[3 * l: 3 * l + 3]))
            q = st[f"blocks.{l}.attn.hook_q"]
            k = st[f"blocks.{l}.attn.hook_k"]
            pattern = st[f"blocks.{l}.attn.hook_pattern"]
            x = st[f"blocks.{l}.hook_resid_pre"]
            scale = attn_scale(model, l)
            kq = k.detach().repeat_interleave(rep, dim=2)  # [b pos H d]
            g_q = torch.einsum("bhqk,bkhd->bqhd", g_scores, kq) * scale
            g_k = torch.einsum("bhqk,bqhd->bkhd", g_scores, q.detach()) * scale
            g_v = torch.einsum("bhqk,bqhd->bkhd", pattern.detach(), g_z)
            r0 = l * (H + 1)
            out[r0:r0 + H] = head_input_grads(model, qkv, l, x.detach(), g_q, g_k, g_v).permute(2, 0, 1, 3)
            out[r0 + H] = g_mid
        g_final = grads[-1]
        out[-1] = g_final if g_final is not None else 0.0
    finally:
        if own:
            qkv.close()
    return out.detach(), m.detach()


def head_input_grads(model: Any, qkv: QKV, layer: int, x: torch.Tensor, g_q: torch.Tensor, g_k: torch.Tensor,
                     g_v: torch.Tensor) -> torch.Tensor:
    """Per-head input gradients [b pos head d_model] from per-query-head gradients at q, k, v
    [b pos head d_head]: back through rotary, the projections and the norm, in closed form."""
    s = model.shape
    adapter = model.adapter
    _, attn, norm = _attn(model, layer)
    group = torch.arange(s.n_heads, device=x.device) // (s.n_heads // s.n_kv_heads)
    if qkv.rotary is not None:
        cos, sin = (r[:, :, None, :] for r in qkv.rotary)
        g_q, g_k = adapter.rotary_grad(g_q, cos, sin), adapter.rotary_grad(g_k, cos, sin)
    w = adapter.qkv_weights(attn, s)
    g_n = (torch.einsum("bphd,hdm->bphm", g_q, w.w_q) + torch.einsum("bphd,hdm->bphm", g_k, w.w_k[group])
           + torch.einsum("bphd,hdm->bphm", g_v, w.w_v[group]))
    return adapter.norm_input_grad(norm, x[:, :, None], g_n)


def _fresh(a: torch.Tensor) -> torch.Tensor:
    return a + 0.0


def sender_deltas(model: Any, graph: Graph, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per sender block, (b - a) as residual writes: [b pos S_block d_model] for input, each
    layer's heads and each MLP, in sender order."""
    L = graph.n_layers
    out = [(b["input"] - a["input"])[:, :, None]]
    for l in range(L):
        dz = b[f"z{l}"] - a[f"z{l}"]
        out.append(torch.einsum("bphd,hdm->bphm", dz, out_weights(model, l)))
        out.append((b[f"mlp{l}"] - a[f"mlp{l}"])[:, :, None])
    return out


def edge_scores_from(graph: Graph, deltas: list[torch.Tensor], grads: torch.Tensor) -> torch.Tensor:
    """EAP's score matrix [S R]: sum over prompts and positions of delta_u . grad_v."""
    blocks = [torch.einsum("bpsm,rbpm->sr", d, grads) for d in deltas]
    scores = torch.cat(blocks, dim=0)
    return scores.masked_fill(~graph.valid.to(scores.device), 0.0)


# ----------------------------------------------------------------------------- edge-masked forward
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
    s = model.shape
    L, H = s.n_layers, s.n_heads
    C, n = keep.shape[0], len(tokens)
    drop = (~keep & graph.valid).to(model.dtype).to(model.device)  # [C S R]
    big = Tokens(tokens.input_ids.repeat(C, 1), tokens.attention_mask.repeat(C, 1))
    qkv = QKV(model)
    deltas: list[tuple[int, torch.Tensor]] = []  # (first sender index, [C n pos S_block d_model])
    state: dict[str, Any] = {}
    w_o = [out_weights(model, l) for l in range(L)]

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.to(model.dtype).repeat(C, *([1] * (t.ndim - 1)))

    def view(t: torch.Tensor) -> torch.Tensor:
        return t.view(C, n, *t.shape[1:])

    def removed(receivers: slice | int) -> torch.Tensor:
        """[C n pos V d_model]: sum of ablated senders' deltas for these receivers."""
        r = drop[:, :, receivers]
        if r.ndim == 2:
            r = r[:, :, None]
        total = None
        for first, d in deltas:
            w = r[:, first:first + d.shape[3]]  # [C S_block V]
            if not torch.any(w):
                continue
            part = torch.einsum("cnpsm,csv->cnpvm", d, w)
            total = part if total is None else total + part
        return total

    def on_input(x):
        deltas.append((0, (view(x) - view(rep(ablate["input"])))[:, :, :, None]))
        return x

    hooks: dict[str, Callable] = {"blocks.0.hook_resid_pre": on_input}
    for l in range(L):
        r_heads = slice(l * (H + 1), l * (H + 1) + H)
        r_mlp = l * (H + 1) + H

        def on_resid(x, l=l, r_heads=r_heads):
            rem = removed(r_heads)
            state["x_heads"] = None if rem is None else (x[:, :, None] - rem.view(C * n, *rem.shape[2:]))
            return x

        def on_scores(sc, l=l):
            xh = state.get("x_heads")
            if xh is None:
                return sc
            q, k, v = qkv(l, xh)
            new_scores, z = per_head_attention(q, k, v, masked_positions(sc), attn_scale(model, l), sc)
            state["z"] = z
            return new_scores

        def on_z(z, l=l):
            if state.get("x_heads") is not None:
                z = state.pop("z").to(z.dtype)
            zd = view(z) - view(rep(ablate[f"z{l}"]))
            deltas.append((graph.head_slice(l).start, torch.einsum("cnphd,hdm->cnphm", zd, w_o[l])))
            return z

        def on_mid(x, r_mlp=r_mlp):
            rem = removed(r_mlp)
            return x if rem is None else x - rem[:, :, :, 0].reshape(x.shape)

        def on_mlp(o, l=l):
            deltas.append((graph.mlp_sender(l), (view(o) - view(rep(ablate[f"mlp{l}"])))[:, :, :, None]))
            return o

        hooks[f"blocks.{l}.hook_resid_pre"] = on_resid if l > 0 else _chain(on_input, on_resid)
        hooks[f"blocks.{l}.attn.hook_attn_scores"] = on_scores
        hooks[f"blocks.{l}.attn.hook_z"] = on_z
        hooks[f"blocks.{l}.hook_resid_mid"] = on_mid
        hooks[f"blocks.{l}.hook_mlp_out"] = on_mlp

    def on_final(x):
        rem = removed(len(graph.receivers) - 1)
        return x if rem is None else x - rem[:, :, :, 0].reshape(x.shape)

    last = f"blocks.{L - 1}.hook_resid_post"
    hooks[last] = on_final
    try:
        with torch.no_grad():
            logits, _ = forward(model, big, [], hooks)
    finally:
        qkv.close()
    return metric(_last(logits, big).view(C, n, -1))


def _chain(f: Callable, g: Callable) -> Callable:
    return lambda x: g(f(x))
