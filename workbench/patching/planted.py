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

import torch

N_NAMES, QUERY, VOCAB = 6, 13, 16
FILLERS = list(range(6, 13))
D_MODEL, D_HEAD, N_HEADS, N_KV = 48, 8, 4, 2
NAME_FLAG, FILLER_FLAG, CONST = 16, 17, 18
COPY, AMP, JUNK = 20, 26, 32
SLOW = 3  # the d_head index whose rotary frequency is ~1e-9 rad per position


def planted_model(strength: float = 3.0):
    """The hand-built model as a workbench ``Model`` (no tokenizer: feed token ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..hooks import install_hook_points
    from ..models import Model, shape_of

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=8, num_hidden_layers=2,
                      num_attention_heads=N_HEADS, num_key_value_heads=N_KV, head_dim=D_HEAD,
                      max_position_embeddings=64, rope_theta=1e12, tie_word_embeddings=False, rms_norm_eps=1e-6)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        for norm in [hf.model.norm] + [m for lay in hf.model.layers for m in (lay.input_layernorm, lay.post_attention_layernorm)]:
            norm.weight.fill_(1.0)
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
