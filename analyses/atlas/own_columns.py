"""What the atlas measures itself with a model forward: attention entropy and mean attention
distance of every head on IOI prompts, and the head cards (every head's attention pattern and
top output tokens on one prompt)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workbench.names import act_name

from .config import ATLAS_KEY
from .records import AtlasColumn, HeadCard

if TYPE_CHECKING:
    from workbench.models import Model

ATLAS_COLUMNS = {  # the atlas's own columns, measured in this run (no saved run behind them)
    "attn_entropy": AtlasColumn(name="attn_entropy", analysis=ATLAS_KEY, unit="nats", direction=-1, threshold=None,
                                description="entropy of the head's attention, mean over queries of IOI prompts; "
                                            "lower = more focused", run="", created=None),
    "attn_distance": AtlasColumn(name="attn_distance", analysis=ATLAS_KEY, unit="tokens", direction=1, threshold=None,
                                 description="mean distance from query to attended key, weighted by attention, on "
                                             "IOI prompts", run="", created=None),
}


def attention_columns(model: Model, n_prompts: int, seed: int) -> dict[str, torch.Tensor]:
    """[layer head] attention entropy (nats) and mean attention distance (tokens), averaged
    over every non-padding query after the first of ``n_prompts`` IOI prompts."""
    from workbench.cache import as_tokens, run_with_cache
    from workbench.datasets.ioi import ioi_prompts

    s = model.shape
    prompts = ioi_prompts(n_prompts, model.tokenizer, seed=seed).prompts
    tokens = as_tokens(model, prompts)
    names = [act_name("pattern", l) for l in range(s.n_layers)]
    _, cache = run_with_cache(model, tokens, names, batch_size=16, return_logits=False)
    mask = tokens.attention_mask.bool().cpu()  # [batch pos]
    t = mask.shape[1]
    queries = mask.clone()
    queries[:, 0] = False  # the first query has one key: entropy 0, distance 0 by construction
    # cpu: the patterns are moved to the CPU below
    dist = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).clamp(min=0).float()  # [q k]
    entropy = torch.zeros(s.n_layers, s.n_heads)  # cpu: a [layer head] result, filled from patterns moved to the CPU
    distance = torch.zeros(s.n_layers, s.n_heads)  # cpu: a [layer head] result, filled from patterns moved to the CPU
    n_q = queries.sum().clamp(min=1)
    for l, name in enumerate(names):
        p = cache[name].float().cpu()  # [batch head q k]
        ent = -(p * torch.log(p.clamp(min=1e-12))).sum(-1)  # [batch head q]
        dd = (p * dist).sum(-1)
        w = queries[:, None, :].float()
        entropy[l] = (ent * w).sum((0, 2)) / n_q
        distance[l] = (dd * w).sum((0, 2)) / n_q
    return {"attn_entropy": entropy, "attn_distance": distance}


def head_card(model: Model, prompt: str, k: int = 5) -> tuple[HeadCard, torch.Tensor]:
    """Every head on one prompt: its attention pattern [layer head q k] and the top tokens of
    its output at the last position through W_O, the final norm's weight and the unembedding."""
    from workbench.cache import run_with_cache

    s = model.shape
    names = [act_name(w, l) for l in range(s.n_layers) for w in ("pattern", "z")]
    _, cache = run_with_cache(model, [prompt], names, return_logits=False)
    ids = model.to_tokens([prompt])[0][0]
    tokens = [model.tokenizer.decode([int(i)]) for i in ids]
    adapter = model.adapter
    layers = adapter.layers(model.hf)
    w_u = adapter.unembed(model.hf).weight.detach().float().cpu()  # [V M]
    norm_w = getattr(adapter.final_norm(model.hf), "weight", None)
    # cpu: the unembedding and norm weight are moved to the CPU here
    scale = norm_w.detach().float().cpu() if norm_w is not None else torch.ones(w_u.shape[1])
    patterns = torch.stack([cache[act_name("pattern", l)][0].float().cpu() for l in range(s.n_layers)])
    top_tokens, top_logits = [], []
    for l in range(s.n_layers):
        w_o, _ = adapter.out_weights(adapter.attn(layers[l]), s)  # [H D M]
        z = cache[act_name("z", l)][0, -1].float().cpu()  # [H D]
        out = torch.einsum("hd,hdm->hm", z, w_o.detach().float().cpu()) * scale  # [H M]
        logits = out @ w_u.T  # [H V]
        val, idx = logits.topk(k, dim=-1)
        top_tokens.append([[model.tokenizer.decode([int(i)]) for i in row] for row in idx])
        top_logits.append([[round(float(v), 4) for v in row] for row in val])
    return HeadCard(prompt=prompt, tokens=tokens, top_tokens=top_tokens, top_logits=top_logits), patterns
