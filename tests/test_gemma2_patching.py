"""Exact edge patching (``workbench.patching.edges``), path patching (``workbench.patching.path``)
and the IOI head scores' projections (``analyses.circuits.head_classes``) on a whole Gemma-2
(``tiny-gemma2``: 3 layers, 4 query heads over 2 key-value heads, scores capped at 2.0), its
weights shaken so that the caps and the norms matter, the post-attention norm's ``1 + w`` of
both signs. Its post-attention norm divides the sum of a layer's heads by its rms, so a head's
write is (1 + w) * (z_h @ W_O[h]) / rms(o_proj(z)) with z the layer's heads in that same run.

Known answers come from a pristine Hugging Face ``Gemma2ForCausalLM`` (transformers' eager
attention, the same weights) with hooks on its own modules (``o_proj``'s input for z, the
projections' outputs for q/k/v, ``post_attention_layernorm``'s output for a layer's write, the
final norm's input), no workbench code:

* a single edge: the sender's corrupt-minus-clean write added to the receiver's input; a
  receiving head reads it in a first pass (its z kept) and only its z is swapped into a second,
  clean pass (so a grouped key and value is the receiver's own copy);
* chains of edges: the workbench's edge-masked forward (``run_edge_masks``, itself checked
  against such references in tests/test_gemma2_graph.py);
* path patching as Wang et al. define it: step 2 freezes every layer's attention write to the
  clean one, the sender's layer's plus the sender's change of write, MLPs recomputed, the
  receivers' q/k/v recorded; step 3 gives the receivers' z from the recorded q/k/v (first
  pass) to an otherwise clean run (second pass);
* direct logit attribution: each head's write at the last token through the final norm frozen
  at its clean scale, onto W_U[correct] - W_U[wrong]; the copy score's head output (1 + w) v W_O.

Tolerance 1e-5 (float32)."""
from __future__ import annotations

import copy

import pytest
import torch

from workbench.cache import as_tokens
from workbench.patching import graph as G
from workbench.patching.edges import edge_masks, run_edge_patches
from workbench.patching.path import path_patch

CLEAN = ["When Mary and John went to the store, John gave a drink to", "The cat sat on the mat and then"]
CORRUPT = ["When Alice and Bob went to the shop, Tom gave a drink to", "A dog sat on the rug and then"]
L, H, D = 3, 4, 16


def metric(logits, idx=None):
    return logits[..., 100] - logits[..., 200]


@pytest.fixture(scope="module")
def task():
    from transformers import Gemma2ForCausalLM

    from test_gemma2_model import shaken_gemma2

    model = shaken_gemma2(signed_post_norm=True)  # 1 + w ~ N(0, 1): both signs
    s = model.shape
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head) == (L, H, 2, D)
    ref = Gemma2ForCausalLM(copy.deepcopy(model.hf.config)).eval()
    ref.set_attn_implementation("eager")
    ref.load_state_dict(model.hf.state_dict())
    clean, corrupt = as_tokens(model, CLEAN), as_tokens(model, CORRUPT)
    assert clean.input_ids.shape == corrupt.input_ids.shape and not clean.attention_mask.all()  # right padding
    return model, ref, clean, corrupt


# ----------------------------------------------------------------- the pristine model, hooked
def keep(store, key):
    def fn(x):
        store[key] = x.detach().clone()
        return x
    return fn


def hf_run(ref, tokens, pre=(), post=()):
    """Last-token logits [n vocab] of the pristine model; ``pre``: (module, f) pairs rewriting the
    module's first input, ``post``: (module, f) pairs rewriting its output."""
    handles = [m.register_forward_pre_hook(lambda mod, args, f=f: (f(args[0]), *args[1:])) for m, f in pre]
    handles += [m.register_forward_hook(lambda mod, args, out, f=f: f(out)) for m, f in post]
    try:
        with torch.no_grad():
            logits = ref(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits
    finally:
        for h in handles:
            h.remove()
    return logits[torch.arange(len(tokens)), tokens.last_positions]


def hf_z(ref, tokens, l):
    st = {}
    hf_run(ref, tokens, pre=[(ref.model.layers[l].self_attn.o_proj, keep(st, "z"))])
    return st["z"]  # [n pos H*D]


def hf_writes(ref, tokens, l):
    """Every head's write [n pos H M] of layer l: (1 + w) * (z_h @ W_O[h]) / rms(o_proj(z))."""
    attn, norm = ref.model.layers[l].self_attn, ref.model.layers[l].post_attention_layernorm
    with torch.no_grad():
        z = hf_z(ref, tokens, l)
        r = torch.einsum("bphd,mhd->bphm", z.unflatten(-1, (H, D)), attn.o_proj.weight.unflatten(1, (H, D)))
        rms = (attn.o_proj(z).pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        return (1 + norm.weight) * r / rms[:, :, None]


def swap_z(store, heads):
    """A pre-hook on o_proj putting ``store['z']``'s slices of ``heads`` into z."""
    def fn(z):
        z = z.clone()
        for h in heads:
            z[..., h * D:(h + 1) * D] = store["z"][..., h * D:(h + 1) * D]
        return z
    return fn


# ----------------------------------------------------------------- edge patching
def edge_reference(ref, clean, corrupt, edge):
    (l, h), dst = edge
    swap = (hf_writes(ref, corrupt, l) - hf_writes(ref, clean, l))[:, :, h]
    if dst == "logits":
        return metric(hf_run(ref, clean, pre=[(ref.model.norm, lambda x: x + swap)]))
    l2, h2 = dst
    o_proj, st = ref.model.layers[l2].self_attn.o_proj, {}
    hf_run(ref, clean, pre=[(ref.model.layers[l2], lambda x: x + swap), (o_proj, keep(st, "z"))])
    return metric(hf_run(ref, clean, pre=[(o_proj, swap_z(st, [h2]))]))


EDGES = [((0, 2), "logits"), ((0, 1), (1, 2)), ((1, 0), "logits"), ((1, 3), (2, 0)), ((0, 3), (2, 2)),
         ((2, 1), "logits"), ((0, 0), (1, 1))]


def corrupt_z(ref, corrupt):
    return {l: hf_z(ref, corrupt, l).unflatten(-1, (H, D)) for l in range(L)}


def test_single_edges_equal_two_pass_hook_references(task):
    model, ref, clean, corrupt = task
    out = run_edge_patches(model, clean, corrupt_z(ref, corrupt), edge_masks(model, [[e] for e in EDGES]), metric)
    assert (out.clean_metric - metric(hf_run(ref, clean))).abs().max() <= 1e-5
    for i, e in enumerate(EDGES):
        want = edge_reference(ref, clean, corrupt, e)
        assert (out.metric[i] - want).abs().max() <= 1e-5, e
        assert (out.metric[i] - out.clean_metric).abs().max() > 1e-3, e  # each edge matters here


def test_chains_of_edges_equal_the_edge_masked_forward(task):
    """Several edges, chains among them (a patched head's changed write read by a later edge),
    in one and in many chunks: the edge-masked forward with those edges dropped to the corrupt run."""
    model, ref, clean, corrupt = task
    configs = [[((0, 1), (1, 2)), ((1, 2), "logits")],
               [((0, 0), (1, 1)), ((1, 1), (2, 3)), ((2, 3), "logits"), ((0, 3), "logits")],
               [((0, 2), (2, 0)), ((1, 2), (2, 0)), ((1, 0), (2, 1))], [((1, 3), "logits"), ((0, 3), (1, 3))]]
    source = corrupt_z(ref, corrupt)
    masks = edge_masks(model, configs)
    big = run_edge_patches(model, clean, source, masks, metric, max_batch=1000)
    small = run_edge_patches(model, clean, source, masks, metric, max_batch=len(CLEAN))
    g = G.Graph.for_model(model)
    _, acts = G.sender_outputs(model, corrupt)
    keeps = []
    for cfg in configs:
        k = g.valid.clone()
        for (l, h), dst in cfg:
            k[g.sender_index(f"L{l}H{h}"), g.receiver_index(dst if dst == "logits" else f"L{dst[0]}H{dst[1]}")] = False
        keeps.append(k)
    want = G.run_edge_masks(model, g, clean, acts, torch.stack(keeps), metric)
    assert (big.metric - want).abs().max() <= 1e-5
    assert (small.metric - want).abs().max() <= 1e-5
    assert (want - big.clean_metric).abs().min() > 1e-3


# ----------------------------------------------------------------- path patching
def path_reference(ref, clean, corrupt, sender, receivers, inputs):
    """Mean metric after path patching ``sender`` to ``receivers`` through ``inputs`` (see the module docstring)."""
    layers, (sl, sh) = ref.model.layers, sender
    clean_out: dict = {}
    hf_run(ref, clean, post=[(layers[l].post_attention_layernorm, keep(clean_out, l)) for l in range(L)])
    swap = (hf_writes(ref, corrupt, sl) - hf_writes(ref, clean, sl))[:, :, sh]
    frozen = [(layers[l].post_attention_layernorm, lambda o, l=l: clean_out[l] + (swap if l == sl else 0))
              for l in range(L)]
    if receivers == "logits":
        return metric(hf_run(ref, clean, post=frozen)).mean()
    rec: dict = {}
    rec_layers = sorted({l for l, _ in receivers})
    hf_run(ref, clean, post=frozen + [(getattr(layers[l].self_attn, f"{t}_proj"), keep(rec, (l, t)))
                                      for l in rec_layers for t in "qkv"])
    z: dict = {l: {} for l in rec_layers}
    put, take = [], []
    for l in rec_layers:
        heads = [h for rl, h in receivers if rl == l]
        for t in inputs:  # the receivers' query slices, their key-value groups' key and value slices
            rows = heads if t == "q" else sorted({h // 2 for h in heads})
            put.append((getattr(layers[l].self_attn, f"{t}_proj"), swap_z({"z": rec[l, t]}, rows)))
        take.append((layers[l].self_attn.o_proj, keep(z[l], "z")))
    hf_run(ref, clean, post=put, pre=take)
    pre = [(layers[l].self_attn.o_proj, swap_z(z[l], [h for rl, h in receivers if rl == l])) for l in rec_layers]
    return metric(hf_run(ref, clean, pre=pre)).mean()


@pytest.mark.parametrize("receivers,inputs,senders", [
    ("logits", "qkv", None),
    ([(1, 0), (1, 1)], "qkv", [(0, 0), (0, 1), (0, 2), (0, 3)]),
    ([(2, 2)], "q", [(0, 1), (1, 3), (0, 2)]),
    ([(1, 3)], "kv", [(0, 0), (0, 2)]),
    ([(1, 3), (2, 0)], "qkv", [(0, 0), (0, 3)]),
])
def test_path_patching_equals_the_naive_definition(task, receivers, inputs, senders):
    model, ref, clean, corrupt = task
    got = path_patch(model, clean, corrupt, metric, receivers, inputs, senders=senders)
    heads = [(l, h) for l in range(L) for h in range(H)] if senders is None else senders
    patched = got.patched.flatten()
    for i, s in enumerate(heads):
        want = path_reference(ref, clean, corrupt, s, receivers, inputs)
        assert (patched[i] - want).abs() <= 1e-5, s
    assert (patched - got.clean).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_neox"])
def test_path_patching_where_writes_add_is_z_patching(name, request):
    """Without a norm after the attention a head's write is z_h @ W_O[h], so step 2 (the sender's
    layer writing its clean output plus the sender's change) is plain z patching: every head's z
    clean, the sender's corrupt (GPT-2's b_O, NeoX's parallel residual)."""
    from workbench.cache import forward

    model = request.getfixturevalue(name)
    g = torch.Generator().manual_seed(0)
    clean, corrupt = (as_tokens(model, torch.randint(300, 900, (2, 9), generator=g)) for _ in range(2))
    n_layers = model.shape.n_layers
    names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    _, zc = forward(model, clean, names)
    _, zk = forward(model, corrupt, names)
    senders = [(0, 1), (1, 2), (0, 3)]
    got = path_patch(model, clean, corrupt, metric, "logits", senders=senders)
    for i, (sl, sh) in enumerate(senders):
        def freeze(z, l, sl=sl, sh=sh):
            z = zc[names[l]].clone()
            if l == sl:
                z[:, :, sh] = zk[names[l]][:, :, sh]
            return z
        logits, _ = forward(model, clean, [], {names[l]: lambda z, l=l, f=freeze: f(z, l) for l in range(n_layers)})
        want = metric(logits[torch.arange(2), clean.last_positions]).mean()
        assert (got.patched[i] - want).abs() <= 1e-5, (sl, sh)
    assert (got.patched - got.clean).abs().max() > 1e-4


# ----------------------------------------------------------------- the IOI head scores' projections
ANSWERS = torch.tensor([100, 101]), torch.tensor([200, 201])


def test_direct_logit_attribution_is_each_heads_write_through_the_frozen_final_norm(task):
    from workbench.analyses.circuits.head_classes import direct_logit_attribution

    model, ref, clean, _ = task
    correct, wrong = ANSWERS
    got = direct_logit_attribution(model, clean, correct, wrong)
    st: dict = {}
    hf_run(ref, clean, pre=[(ref.model.norm, keep(st, "final"))])
    rows, end = torch.arange(2), clean.last_positions
    norm, W_U = ref.model.norm, ref.lm_head.weight
    with torch.no_grad():
        final = st["final"][rows, end]
        direction = (W_U[correct] - W_U[wrong]) * (1 + norm.weight) * (final.pow(2).mean(-1, keepdim=True) + norm.eps).rsqrt()
    want = torch.stack([torch.einsum("bhm,bm->bh", hf_writes(ref, clean, l)[rows, end], direction).mean(0)
                        for l in range(L)])
    assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert want.abs().max() > 1e-2


def test_direct_logit_attribution_on_llama_reads_the_final_norm_weight():
    """Where writes add: z_h @ W_O[h] through the final RMSNorm (its ``weight``, made random here)
    at its clean scale."""
    from workbench.analyses.circuits.head_classes import direct_logit_attribution
    from workbench.models import load_model

    model = load_model("tiny-llama")  # its own copy: the final norm's weight changes below
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.hf.model.norm.weight.copy_(torch.randn(model.shape.d_model, generator=g))
    tokens = as_tokens(model, torch.randint(300, 900, (2, 9), generator=g))
    correct, wrong = ANSWERS
    got = direct_logit_attribution(model, tokens, correct, wrong)
    zs: dict = {}
    hooks = [(layer.self_attn.o_proj, keep(zs, l)) for l, layer in enumerate(model.hf.model.layers)]
    hooks.append((model.hf.model.norm, keep(zs, "final")))
    hf_run(model.hf, tokens, pre=hooks)
    rows, end = torch.arange(2), tokens.last_positions
    norm, W_U = model.hf.model.norm, model.hf.lm_head.weight
    hd = model.shape.d_head
    with torch.no_grad():
        final = zs["final"][rows, end]
        direction = (W_U[correct] - W_U[wrong]) * norm.weight * (final.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).rsqrt()
        want = torch.stack([torch.einsum("bhd,mhd,bm->bh", zs[l][rows, end].unflatten(-1, (-1, hd)),
                                         layer.self_attn.o_proj.weight.unflatten(1, (-1, hd)), direction).mean(0)
                            for l, layer in enumerate(model.hf.model.layers)])
    assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert want.abs().max() > 1e-3


def test_copy_scores_fold_the_post_attention_norm_weight(task):
    """A head's OV write fed the residual at the IO token: (1 + w) * (v @ W_O[h]), its sign on
    W_U[IO] - W_U[S] (the positive 1 / rms leaves the sign alone)."""
    from workbench.analyses.circuits.head_classes import copy_scores

    model, ref, clean, _ = task
    correct, wrong = ANSWERS
    io_pos = torch.tensor([3, 2])
    got = copy_scores(model, clean, io_pos, correct, wrong)
    st: dict = {}
    hf_run(ref, clean, pre=[(layer, keep(st, l)) for l, layer in enumerate(ref.model.layers)])
    rows, dirs = torch.arange(2), ref.lm_head.weight[correct] - ref.lm_head.weight[wrong]
    want = torch.zeros(L, H)
    with torch.no_grad():
        for l, layer in enumerate(ref.model.layers):
            attn = layer.self_attn
            v = attn.v_proj(layer.input_layernorm(st[l][rows, io_pos])).unflatten(-1, (2, D))[:, [h // 2 for h in range(H)]]
            out = (1 + layer.post_attention_layernorm.weight) * torch.einsum("bhd,mhd->bhm", v, attn.o_proj.weight.unflatten(1, (H, D)))
            want[l] = ((out @ dirs.T)[rows, :, rows] > 0).float().mean(0)
    assert torch.equal(got, want)
    assert 0 < float(want.mean()) < 1
