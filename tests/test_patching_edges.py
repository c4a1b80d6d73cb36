"""Edge patching (head -> head, head -> logits), batched and suffix-only, against references
built from plain hooks through the caching layer:
- head -> logits: the final residual plus the source's output swap (closed form);
- head (l, h) -> head (l', h'): pass 1 adds the swap to layer l''s input and removes it from
  its attention output (so only the heads read it), keeping z; pass 2 patches only head h''s z.
Tolerance 1e-5 (float32). Chains of edges are checked for consistency across chunkings.
"""
from __future__ import annotations

import pytest
import torch

from workbench.cache import as_tokens, forward, run_with_cache
from workbench.errors import InputError
from workbench.patching.edges import edge_masks, run_edge_patches
from workbench.patching.suffix import output_projection

CLEAN = ["When Mary and John went to the store, John gave a drink to", "Hello there", "The cat sat on the mat"]
CORRUPT = ["When Alice and Bob went to the shop, Tom gave a drink to", "Hi here", "A dog sat on the rug"]


@pytest.fixture(scope="module")
def tiny_qwen2():
    """A random 2-layer Qwen2 (q/k/v biases), built from its transformers config."""
    from workbench.models import load_model

    return load_model("tiny-qwen2")


def metric(logits, idx):
    return logits[..., 100] - logits[..., 200]


def setup(model):
    tokens, corrupt = as_tokens(model, CLEAN), as_tokens(model, CORRUPT)
    L = model.shape.n_layers
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    _, cor = run_with_cache(model, corrupt, names)
    _, cln = run_with_cache(model, tokens, names)
    return tokens, {l: cor[n] for l, n in enumerate(names)}, {l: cln[n] for l, n in enumerate(names)}


def hook_reference(model, tokens, source, clean_z, edge):
    (l, h), dst = edge
    w_o, _ = output_projection(model, l)
    delta = (source[l][:, :, h] - clean_z[l][:, :, h]) @ w_o[h]
    rows = torch.arange(len(tokens))
    L = model.shape.n_layers
    if dst == "logits":
        logits, _ = forward(model, tokens, [], {f"blocks.{L - 1}.hook_resid_post": lambda x: x + delta})
    else:
        l2, h2 = dst
        _, store = forward(model, tokens, [f"blocks.{l2}.attn.hook_z"], {
            f"blocks.{l2}.hook_resid_pre": lambda x: x + delta, f"blocks.{l2}.hook_attn_out": lambda x: x - delta})
        z_patched = store[f"blocks.{l2}.attn.hook_z"]

        def one_head(z):
            z = z.clone()
            z[:, :, h2] = z_patched[:, :, h2]
            return z

        logits, _ = forward(model, tokens, [], {f"blocks.{l2}.attn.hook_z": one_head})
    return metric(logits[rows, tokens.last_positions], rows)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_neox", "tiny_qwen2"])
def test_single_edges_match_hook_reference(name, request):
    model = request.getfixturevalue(name)
    tokens, source, clean_z = setup(model)
    edges = [((0, 1), (1, 3)), ((0, 2), "logits"), ((1, 0), "logits"), ((0, 0), (1, 1)), ((0, 3), (1, 0))]
    out = run_edge_patches(model, tokens, source, edge_masks(model, [[e] for e in edges]), metric)
    for i, e in enumerate(edges):
        want = hook_reference(model, tokens, source, clean_z, e)
        assert (out.metric[i] - want).abs().max() <= 1e-5, e
    assert out.metric.std() > 1e-4


def test_edges_into_one_destination_add_up(tiny_llama):
    """Two edges into the logits: the swaps add (the final residual is linear in them)."""
    tokens, source, clean_z = setup(tiny_llama)
    masks = edge_masks(tiny_llama, [[((0, 1), "logits"), ((1, 2), "logits")]])
    out = run_edge_patches(tiny_llama, tokens, source, masks, metric)
    deltas = 0
    for l, h in ((0, 1), (1, 2)):
        w_o, _ = output_projection(tiny_llama, l)
        deltas = deltas + (source[l][:, :, h] - clean_z[l][:, :, h]) @ w_o[h]
    logits, _ = forward(tiny_llama, tokens, [], {"blocks.1.hook_resid_post": lambda x: x + deltas})
    rows = torch.arange(3)
    assert (out.metric[0] - metric(logits[rows, tokens.last_positions], rows)).abs().max() <= 1e-5


def test_chains_are_consistent_across_chunkings(tiny_gpt2):
    tokens, source, _ = setup(tiny_gpt2)
    configs = [[((0, 1), (1, 2)), ((1, 2), "logits")], [((0, 0), (1, 1)), ((1, 1), "logits"), ((0, 3), "logits")],
               [], [((0, 2), (1, 0))], [((1, 3), "logits")]]
    masks = edge_masks(tiny_gpt2, configs)
    one = run_edge_patches(tiny_gpt2, tokens, source, masks, metric, max_batch=3)
    big = run_edge_patches(tiny_gpt2, tokens, source, masks, metric, max_batch=1000)
    assert (one.metric - big.metric).abs().max() <= 1e-5
    assert torch.equal(big.metric[2], big.clean_metric)
    # the chain L0H1 -> L1H2 -> logits differs from the single edge L1H2 -> logits
    single = run_edge_patches(tiny_gpt2, tokens, source, edge_masks(tiny_gpt2, [[((1, 2), "logits")]]), metric)
    assert (single.metric[0] - big.metric[0]).abs().max() > 1e-6


def test_bad_edges(tiny_llama):
    tokens, source, _ = setup(tiny_llama)
    with pytest.raises(InputError, match="does not go forward"):
        edge_masks(tiny_llama, [[((1, 0), (1, 2))]])
    with pytest.raises(InputError, match=r"source head 4 \(L0H4\) is out of range"):
        edge_masks(tiny_llama, [[((0, 4), "logits")]])
    with pytest.raises(InputError, match="destination layer 2 is out of range"):
        edge_masks(tiny_llama, [[((0, 1), (2, 0))]])
    with pytest.raises(InputError, match="edge masks have shape"):
        run_edge_patches(tiny_llama, tokens, source, torch.zeros(2, 8, 8, dtype=torch.bool), metric)
    backward = torch.zeros(1, 8, 9, dtype=torch.bool)
    backward[0, 5, 2] = True
    with pytest.raises(InputError, match="L1H1 -> L0H2 does not go forward"):
        run_edge_patches(tiny_llama, tokens, source, backward, metric)
    with pytest.raises(InputError, match="max_batch=1 cannot hold"):
        run_edge_patches(tiny_llama, tokens, source, edge_masks(tiny_llama, [[((0, 1), "logits")]]), metric, max_batch=1)
