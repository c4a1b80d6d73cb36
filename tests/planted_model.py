"""A hand-built 2-layer Llama whose circuit is known by construction, for known-answer
tests of patching and circuit discovery.

Vocabulary: 16 ids; names 0-5, fillers 6-12, the query token 13. A prompt holds one
name among fillers and ends in the query token; the right answer is that name.

* ``L0H0`` (the planted copying head) attends from every position to name tokens and
  copies the name's identity into the residual dims 20-25;
* ``L1H0`` (an amplifier) attends uniformly and copies dims 20-25 into dims 26-31;
* ``L0H2`` attends to fillers and writes their identity into junk dims the unembedding
  ignores; every other head and both MLPs write nothing.
* the unembedding reads name i from dims 20+i and 26+i.

Rotary angles are made negligible (rope_theta 1e12, queries and keys only in the
slowest-rotating dimension), so attention depends on token content alone.
"""
from __future__ import annotations

from typing import Any

import torch

N_NAMES, QUERY, VOCAB = 6, 13, 16
FILLERS = list(range(6, 13))
D_MODEL, D_HEAD, N_HEADS, N_KV = 48, 8, 4, 2
NAME_FLAG, FILLER_FLAG, CONST = 16, 17, 18
COPY, AMP, JUNK = 20, 26, 32
SLOW = 3  # the d_head index whose rotary frequency is ~1e-9 rad per position


def blank_llama(vocab: int, d_model: int) -> Any:
    """A two-layer Llama with every weight zero and every norm 1: the canvas the planted
    models write their circuits on (rope off in effect: theta 1e12)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=8, num_hidden_layers=2,
                      num_attention_heads=N_HEADS, num_key_value_heads=N_KV, head_dim=D_HEAD,
                      max_position_embeddings=64, rope_theta=1e12, tie_word_embeddings=False, rms_norm_eps=1e-6)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        for norm in [hf.model.norm] + [m for lay in hf.model.layers for m in (lay.input_layernorm, lay.post_attention_layernorm)]:
            norm.weight.fill_(1.0)
    return hf


def planted_model(strength: float = 3.0):
    """The hand-built model as a workbench ``Model`` (no tokenizer: feed token ids)."""
    from workbench.hooks import install_hook_points
    from workbench.models import Model, shape_of

    hf = blank_llama(VOCAB, D_MODEL)
    with torch.no_grad():
        emb = hf.model.embed_tokens.weight
        for t in range(VOCAB):
            emb[t, t] = 1.0
            emb[t, CONST] = 1.0
            emb[t, NAME_FLAG if t < N_NAMES else FILLER_FLAG] = 1.0
        a = strength
        # layer 0: kv group 0 keys on the name flag, values = name identity; group 1 on fillers
        at0 = hf.model.layers[0].self_attn
        wq, wk, wv, wo = (at0.q_proj.weight.view(N_HEADS, D_HEAD, D_MODEL), at0.k_proj.weight.view(N_KV, D_HEAD, D_MODEL),
                          at0.v_proj.weight.view(N_KV, D_HEAD, D_MODEL), at0.o_proj.weight.view(D_MODEL, N_HEADS, D_HEAD))
        wq[0, SLOW, CONST] = a
        wk[0, SLOW, NAME_FLAG] = a
        for i in range(N_NAMES):
            wv[0, i, i] = 1.0
            wo[COPY + i, 0, i] = 1.0
        wq[2, SLOW, CONST] = a
        wk[1, SLOW, FILLER_FLAG] = a
        for j, f in enumerate(FILLERS):
            wv[1, j, f] = 1.0
            if j < 8:
                wo[JUNK + j, 2, j] = 1.0
        # layer 1: head 0 attends uniformly (no query) and amplifies the copied name
        at1 = hf.model.layers[1].self_attn
        wv1, wo1 = at1.v_proj.weight.view(N_KV, D_HEAD, D_MODEL), at1.o_proj.weight.view(D_MODEL, N_HEADS, D_HEAD)
        for i in range(N_NAMES):
            wv1[0, i, COPY + i] = 1.0
            wo1[AMP + i, 0, i] = 2.0
        lm = hf.lm_head.weight
        for i in range(N_NAMES):
            lm[i, COPY + i] = 1.0
            lm[i, AMP + i] = 1.0
    for p in hf.parameters():
        p.requires_grad_(False)
    arch, points = install_hook_points(hf)
    return Model(name="planted", hf=hf, tokenizer=None, shape=shape_of(hf), arch=arch, source="hand-built", hook_points=points)


# cpu: prompt ids are made on the CPU, like a tokenizer's; callers move them
def planted_prompts(n: int, length: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean ids [n length], corrupt ids, correct [n], wrong [n]): one name among fillers,
    the query token last; the corrupt twin has another name at the same place."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.tensor(FILLERS)[torch.randint(len(FILLERS), (n, length), generator=g)]
    clean[:, -1] = QUERY
    pos = torch.randint(0, length - 2, (n,), generator=g)
    names = torch.randint(N_NAMES, (n,), generator=g)
    other = (names + 1 + torch.randint(N_NAMES - 1, (n,), generator=g)) % N_NAMES
    corrupt = clean.clone()
    rows = torch.arange(n)
    clean[rows, pos] = names
    corrupt[rows, pos] = other
    return clean, corrupt, names, other


# ----------------------------------------------------------------------------- planted inhibition heads
# A second hand-built model, for the reuse study's head classes and intervention (Merullo et
# al.): a colour-picking task where two heads of layer 0 are planted S-inhibition heads.
#
# Vocabulary (16 ids): colours 0-5, "second mentions" 6-11 (colour i mentioned again, id 6+i,
# flagged DUP), fillers 12-14, the final token 15. Every token embeds as three ones (its own
# dim, a constant, a type flag), so the attention norm scales every token alike.
#
# * ``L0H2`` (the mover) attends from the final token to the colours with a salience that
#   grows with the colour id, and copies each colour's identity into the logits (+1 x weight):
#   among three colours the model always answers the highest id;
# * ``L0H0`` and ``L0H1`` (the planted inhibition heads) attend to DUP tokens (in IOI-style
#   prompts, the repeated subject S2) and write MINUS ``beta`` times the identity of what they
#   attend to: on Colored Objects prompts (no DUP token) they spread evenly over the prompt and
#   change no colour's rank;
# * ``L0H3`` and layer 1 write nothing.
#
# Known answers: the S-inhibition score (attention from the final token to S2) is ~1 for
# L0H0 and L0H1 and ~0 for the rest; making the chosen heads attend from the final token to
# the two wrong colours (the intervention) suppresses each wrong colour by beta x (norm
# scale), more than the mover's largest margin when beta >= 2, so accuracy becomes exactly 1
# from exactly the share of prompts whose answer is the highest-id colour; the same
# intervention on L0H3 changes nothing, on the mover it makes accuracy exactly 0.
INH_COLOURS, INH_DUP, INH_FILLERS, INH_END, INH_VOCAB = 6, 6, (12, 13, 14), 15, 16
INH_D_MODEL, INH_CONST, INH_DUP_FLAG, INH_COLOUR_FLAG, INH_OTHER_FLAG, INH_COPY = 32, 16, 17, 18, 19, 20
INHIBITION_HEADS = ((0, 0), (0, 1))
MOVER_HEAD = (0, 2)
SILENT_HEAD = (0, 3)


def planted_inhibition_model(beta: float = 2.0, strength: float = 3.0, planted: bool = True):
    """The model above as a workbench ``Model`` (no tokenizer: feed token ids). ``planted=False``
    removes the inhibition heads (their queries, keys, values and outputs are zero)."""
    from workbench.hooks import install_hook_points
    from workbench.models import Model, shape_of

    hf = blank_llama(INH_VOCAB, INH_D_MODEL)
    a = strength
    with torch.no_grad():
        emb = hf.model.embed_tokens.weight
        for t in range(INH_VOCAB):
            emb[t, t] = 1.0
            emb[t, INH_CONST] = 1.0
            flag = INH_COLOUR_FLAG if t < INH_COLOURS else INH_DUP_FLAG if t < INH_COLOURS + INH_DUP else INH_OTHER_FLAG
            emb[t, flag] = 1.0
        at = hf.model.layers[0].self_attn
        wq, wk, wv, wo = (at.q_proj.weight.view(N_HEADS, D_HEAD, INH_D_MODEL), at.k_proj.weight.view(N_KV, D_HEAD, INH_D_MODEL),
                          at.v_proj.weight.view(N_KV, D_HEAD, INH_D_MODEL), at.o_proj.weight.view(INH_D_MODEL, N_HEADS, D_HEAD))
        if planted:
            # kv group 0 (heads 0 and 1): keys on the DUP flag, values the colour identity of the token
            wk[0, SLOW, INH_DUP_FLAG] = a
            for i in range(INH_COLOURS):
                wv[0, i, i] = 1.0
                wv[0, i, INH_COLOURS + i] = 1.0
            for h in (0, 1):
                wq[h, SLOW, INH_CONST] = a
                for i in range(INH_COLOURS):
                    wo[INH_COPY + i, h, i] = -beta
        # kv group 1 (heads 2 and 3): the mover keys on colours with a salience growing with the id
        for i in range(INH_COLOURS):
            wk[1, SLOW, i] = 0.2 * (i + 1)
            wv[1, i, i] = 1.0
            wo[INH_COPY + i, 2, i] = 1.0
        wq[2, SLOW, INH_CONST] = a
        lm = hf.lm_head.weight
        for i in range(INH_COLOURS):
            lm[i, INH_COPY + i] = 1.0
    for p in hf.parameters():
        p.requires_grad_(False)
    arch, points = install_hook_points(hf)
    return Model(name="planted-inhibition", hf=hf, tokenizer=None, shape=shape_of(hf), arch=arch, source="hand-built",
                 hook_points=points)


# cpu: prompt ids are made on the CPU, like a tokenizer's; callers move them
def planted_colour_prompts(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Colored-Objects-like prompts for ``planted_inhibition_model``: ``F c1 F c2 F c3 F END``
    with three distinct colours and an answer drawn among them. Returns ids [n 8], correct [n],
    candidates [n 3] (the three colours), wrong_positions [n 2] (the two non-answer colours)
    and the model's predicted answer without intervention (the highest-id colour) [n]."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.stack([torch.randperm(INH_COLOURS, generator=g)[:3] for _ in range(n)])
    k = torch.randint(3, (n,), generator=g)
    fill = torch.tensor(INH_FILLERS)[torch.randint(len(INH_FILLERS), (n, 4), generator=g)]
    ids = torch.stack([fill[:, 0], cols[:, 0], fill[:, 1], cols[:, 1], fill[:, 2], cols[:, 2], fill[:, 3],
                       torch.full((n,), INH_END)], dim=1)
    rows = torch.arange(n)
    colour_pos = torch.tensor([1, 3, 5])
    wrong = torch.stack([colour_pos[[j for j in range(3) if j != int(k[r])]] for r in range(n)])
    return {"ids": ids, "correct": cols[rows, k], "candidates": cols, "wrong_positions": wrong,
            "predicted": cols.max(dim=1).values}


# cpu: prompt ids are made on the CPU, like a tokenizer's; callers move them
def planted_ioi_prompts(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """IOI-style prompts for ``planted_inhibition_model``: ``F A F B F B' F END`` with B' the
    second mention of B (id 6+B). Returns ids [n 8], s2 [n] and end [n] positions."""
    g = torch.Generator().manual_seed(seed)
    ab = torch.stack([torch.randperm(INH_COLOURS, generator=g)[:2] for _ in range(n)])
    fill = torch.tensor(INH_FILLERS)[torch.randint(len(INH_FILLERS), (n, 4), generator=g)]
    ids = torch.stack([fill[:, 0], ab[:, 0], fill[:, 1], ab[:, 1], fill[:, 2], INH_COLOURS + ab[:, 1], fill[:, 3],
                       torch.full((n,), INH_END)], dim=1)
    return {"ids": ids, "s2": torch.full((n,), 5), "end": torch.full((n,), 7)}
