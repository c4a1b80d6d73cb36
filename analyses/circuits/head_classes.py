"""Head classes of the IOI circuit (Wang et al. 2022), each a number per head [layer head]:

* ``name_mover``: attention from the final token to the indirect object (IO) times the
  head's copying score (its OV circuit, fed the residual at the IO token, raises the IO
  logit above the subject's);
* ``s_inhibition``: attention from the final token to the second subject mention (S2);
* ``duplicate_token``: attention from S2 to S1 (IOI) and, on repeated random tokens,
  from a token to its earlier copy;
* ``induction``: on repeated random tokens, attention to the token after the earlier copy;
* ``previous_token``: on random tokens, attention to the previous token.

Also the direct logit attribution (IO - S) of each head at the final token. Labels are
heads whose score passes a threshold.

A head's output is its write into the residual (``workbench.patching.head_qkv.head_writes`` @
``write_weights``). Gemma-2 is exact, not refused: its post-attention norm makes head h write
(z_h / rms) @ W_O[h] (1 + w), rms that of the layer's whole attention output in the same run, so
the direct logit attribution folds in the scale measured on the run at the final token (the
heads of a layer sum to the layer's write) and the final norm's own gain (``1 + w``); it is in
units of the logits before Gemma-2's final soft-cap. The copy score asks only the sign of a
head's OV write, which the positive 1 / rms leaves alone, so it folds ``1 + w`` alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.cache import Tokens, as_tokens, forward
from workbench.datasets.base import PromptSet
from workbench.datasets.colored_objects import word_token_positions
from workbench.errors import InputError
from workbench.patching.head_qkv import head_writes, write_weights

CLASSES = ("name_mover", "s_inhibition", "induction", "duplicate_token", "previous_token")
THRESHOLDS = {"name_mover": 0.1, "s_inhibition": 0.1, "induction": 0.3, "duplicate_token": 0.3, "previous_token": 0.4}


def attention_rows(model: Any, tokens: Tokens, query_pos: torch.Tensor) -> torch.Tensor:
    """The attention rows of every head at one query position per prompt: [layer batch head key]."""
    L = model.shape.n_layers
    rows: dict[int, torch.Tensor] = {}
    idx = torch.arange(len(tokens), device=tokens.input_ids.device)

    def grab(l):
        def fn(p):
            rows[l] = p[idx, :, query_pos].detach()
            return p
        return fn

    with torch.no_grad():
        forward(model, tokens, [], {f"blocks.{l}.attn.hook_pattern": grab(l) for l in range(L)})
    return torch.stack([rows[l] for l in range(L)])


def attention_to(rows: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
    """Mean attention to one key per prompt: rows [layer batch head key], key_pos [batch] -> [layer head]."""
    idx = torch.arange(rows.shape[1], device=rows.device)
    return rows[:, idx, :, key_pos].permute(1, 0, 2).mean(1)


def ioi_positions(model: Any, ps: PromptSet) -> dict[str, torch.Tensor]:
    """Token positions [N] of IO, S1, S2 and the final token in IOI prompts."""
    io, s1, s2 = [], [], []
    for p, a, w in zip(ps.prompts, ps.answers, ps.wrong):
        pio = word_token_positions(model.tokenizer, p, a.strip())
        ps_ = word_token_positions(model.tokenizer, p, w.strip())
        if not pio or len(ps_) < 2:
            raise InputError(f"prompt {p!r} does not name the IO once and the subject twice; use IOI prompts")
        io.append(pio[0])
        s1.append(ps_[0])
        s2.append(ps_[-1])
    end = as_tokens(model, ps.prompts).last_positions.cpu()
    # cpu: prompt positions from Python lists, on the CPU like end
    return {"io": torch.tensor(io), "s1": torch.tensor(s1), "s2": torch.tensor(s2), "end": end}


def _ioi_cache(model: Any, tokens: Tokens, query_pos: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One forward: attention rows at each named query position [layer batch head key], plus
    every layer's z and resid_pre and the final residual."""
    L = model.shape.n_layers
    rows: dict[str, dict[int, torch.Tensor]] = {k: {} for k in query_pos}
    idx = torch.arange(len(tokens), device=tokens.input_ids.device)

    def grab(l):
        def fn(p):
            for k, qp in query_pos.items():
                rows[k][l] = p[idx, :, qp].detach()
            return p
        return fn

    names = [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{l}.hook_resid_pre" for l in range(L)] + \
            [f"blocks.{L - 1}.hook_resid_post"]
    with torch.no_grad():
        _, st = forward(model, tokens, names, {f"blocks.{l}.attn.hook_pattern": grab(l) for l in range(L)})
    return {k: torch.stack([v[l] for l in range(L)]) for k, v in rows.items()}, dict(st)


def direct_logit_attribution(model: Any, tokens: Tokens, correct: torch.Tensor, wrong: torch.Tensor,
                             cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Each head's output at the final token projected on W_U[correct] - W_U[wrong], through the
    final norm frozen at its clean scale: [layer head], mean over prompts."""
    s = model.shape
    L = s.n_layers
    if cache is None:
        names = [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
        with torch.no_grad():
            _, cache = forward(model, tokens, names)
    st = cache
    with torch.no_grad():
        idx, end = torch.arange(len(tokens), device=tokens.input_ids.device), tokens.last_positions
        final = st[f"blocks.{L - 1}.hook_resid_post"][idx, end]  # [b d_model]
        norm = model.adapter.final_norm(model.hf)
        w = _norm_gain(model, norm, final)
        centre = model.adapter.centred_norm
        if centre:
            final = final - final.mean(-1, keepdim=True)
        scale = final.pow(2).mean(-1, keepdim=True).add(model.adapter.norm_eps(norm)).rsqrt()
        W_U = model.hf.get_output_embeddings().weight
        direction = (W_U[correct] - W_U[wrong]) * w  # [b d_model]
        out = torch.zeros(L, s.n_heads)  # cpu: a [layer head] result, filled row by row (a row copy crosses devices)
        for l in range(L):
            z = st[f"blocks.{l}.attn.hook_z"][idx, end]  # [b head d]
            head_out = torch.einsum("bhd,hdm->bhm", head_writes(model, l, z), write_weights(model, l))
            if centre:
                head_out = head_out - head_out.mean(-1, keepdim=True)
            out[l] = (head_out * (direction * scale)[:, None]).sum(-1).mean(0)
    return out


def _norm_gain(model: Any, norm: Any, like: torch.Tensor) -> torch.Tensor:
    """The per-dimension gain [d_model] of the final norm: its weight for LayerNorm; for RMSNorm
    read off the module itself (``weight``, Gemma's ``1 + weight``) as norm(1) * sqrt(1 + eps)."""
    if model.adapter.centred_norm:
        w = getattr(norm, "weight", None)
        return w if w is not None else torch.ones(like.shape[-1], device=like.device, dtype=like.dtype)
    ones = torch.ones(1, like.shape[-1], device=like.device, dtype=like.dtype)
    return norm(ones)[0] * (1.0 + model.adapter.norm_eps(norm)) ** 0.5


def copy_scores(model: Any, tokens: Tokens, io_pos: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor,
                cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Share of prompts where a head's OV circuit, fed the residual at the IO token (as if it
    attended there fully), raises logit(IO) above logit(S): [layer head]."""
    from workbench.patching.graph import QKV

    s = model.shape
    L = s.n_layers
    idx = torch.arange(len(tokens))  # cpu: prompt indices: a CPU index may index a tensor on any device
    W_U = model.hf.get_output_embeddings().weight
    out = torch.zeros(L, s.n_heads)  # cpu: a [layer head] result, filled row by row (a row copy crosses devices)
    if cache is None:
        with torch.no_grad():
            _, cache = forward(model, tokens, [f"blocks.{l}.hook_resid_pre" for l in range(L)])
    qkv = QKV(model)
    try:
        with torch.no_grad():
            for l in range(L):
                x = cache[f"blocks.{l}.hook_resid_pre"][idx, io_pos]  # [b d_model]
                xh = x[:, None, None, :].expand(-1, 1, s.n_heads, -1)
                qkv.rotary = None  # values carry no rotary
                _, _, v = qkv(l, xh)
                head_out = torch.einsum("bhd,hdm->bhm", v[:, 0], write_weights(model, l))
                diff = head_out @ (W_U[correct] - W_U[wrong]).T  # [b head b]
                out[l] = (diff[idx, :, idx] > 0).float().mean(0)
    finally:
        qkv.close()
    return out


def repeated_tokens(model: Any, n: int = 8, length: int = 20, seed: int = 0, low: int = 1000, high: int | None = None) -> Tokens:
    """[n 2*length] random token ids, the second half repeating the first."""
    g = torch.Generator().manual_seed(seed)
    high = min(high or 20000, model.shape.d_vocab)
    low = min(low, high // 2)
    # cpu: random prompt ids, moved to the model's device below
    half = torch.randint(low, high, (n, length), generator=g)
    return as_tokens(model, torch.cat([half, half], dim=1).to(model.device))


def random_token_scores(model: Any, n: int = 8, length: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    """Induction, duplicate-token and previous-token scores on repeated random tokens: [layer head] each."""
    tokens = repeated_tokens(model, n, length, seed)
    L = model.shape.n_layers
    pats: dict[int, torch.Tensor] = {}

    def grab(l):
        def fn(p):
            pats[l] = p.detach().mean(0)  # [head q k]
            return p
        return fn

    with torch.no_grad():
        forward(model, tokens, [], {f"blocks.{l}.attn.hook_pattern": grab(l) for l in range(L)})
    T = length
    q2 = torch.arange(T, 2 * T)  # cpu: query positions: a CPU index may index a pattern on any device
    q_all = torch.arange(1, 2 * T)  # cpu: query positions: a CPU index may index a pattern on any device
    # cpu: a [layer head] result, filled row by row (a row copy crosses devices)
    ind, dup, prev = (torch.zeros(L, model.shape.n_heads) for _ in range(3))
    for l in range(L):
        p = pats[l]
        ind[l] = p[:, q2[:-1], q2[:-1] - T + 1].mean(-1)
        dup[l] = p[:, q2, q2 - T].mean(-1)
        prev[l] = p[:, q_all, q_all - 1].mean(-1)
    return {"induction": ind, "duplicate_token": dup, "previous_token": prev}


@dataclass
class HeadClasses:
    """Scores [layer head] per class and the auxiliary IOI measurements."""

    scores: dict[str, torch.Tensor]

    def labels(self, thresholds: dict[str, float] | None = None) -> dict[str, list[tuple[int, int]]]:
        th = {**THRESHOLDS, **(thresholds or {})}
        out = {}
        for cls in CLASSES:
            s = self.scores[cls]
            heads = (s > th[cls]).nonzero().tolist()
            out[cls] = sorted(((int(l), int(h)) for l, h in heads), key=lambda lh: -float(s[lh[0], lh[1]]))
        return out


def head_classes(model: Any, ioi: PromptSet, n_random: int = 8, seed: int = 0) -> HeadClasses:
    """All class scores for ``model`` from IOI prompts and repeated random tokens."""
    tokens = as_tokens(model, ioi.prompts)
    pos = ioi_positions(model, ioi)
    correct, wrong = ioi.answer_ids(model)
    rows, cache = _ioi_cache(model, tokens, {"end": pos["end"], "s2": pos["s2"]})
    attn_io = attention_to(rows["end"], pos["io"])
    attn_s2 = attention_to(rows["end"], pos["s2"])
    attn_s1_from_s2 = attention_to(rows["s2"], pos["s1"])
    copy = copy_scores(model, tokens, pos["io"], correct, wrong, cache)
    dla = direct_logit_attribution(model, tokens, correct, wrong, cache)
    rnd = random_token_scores(model, n=n_random, seed=seed)
    scores = {
        "name_mover": attn_io * copy * (dla > 0).float(),
        "s_inhibition": attn_s2,
        "induction": rnd["induction"],
        "duplicate_token": torch.maximum(rnd["duplicate_token"], attn_s1_from_s2),
        "previous_token": rnd["previous_token"],
        "attn_io": attn_io,
        "attn_s2": attn_s2,
        "copy": copy,
        "dla": dla,
    }
    return HeadClasses(scores)
