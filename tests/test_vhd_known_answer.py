"""Known answers for VHD / T-VHD / VHR on a hand-built one-layer Llama: head 0 reads only the
visual tokens, head 1 reads only the text tokens. VHD must be large for head 0 and zero for
head 1, measured by the same decoding code the analysis uses (through the caching layer)."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workbench.cache import forward_embeds
from workbench.hooks import install_hook_points
from workbench.models import Model, shape_of
from workbench.analyses.vision_heads.vlm.generate import HeadPolicy, generate
from workbench.analyses.vision_heads.vlm.heads import head_divergence, random_select, token_vhd, top_heads, vhr_select
from workbench.analyses.vision_heads.vlm.model import PairedBatch, left_pad

VIS, TXT, BIAS = 0, 1, 2  # marker dimensions of the hand-made embeddings
GAIN = 30.0


class _Tok:
    eos_token_id = -1

    def decode(self, ids):
        return "x" * len(ids)


def hand_model() -> Model:
    """Head 0 attends to tokens carrying the VIS marker, head 1 to tokens carrying TXT. Queries
    and keys live in the head's low-frequency rotary pair (dims 1 and 3) and rope_theta is huge,
    so positions do not move the scores."""
    cfg = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=4, rope_theta=1e12, max_position_embeddings=64,
                      tie_word_embeddings=False, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    attn = hf.model.layers[0].self_attn
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        hf.model.layers[0].input_layernorm.weight.fill_(1.0)
        hf.model.layers[0].post_attention_layernorm.weight.fill_(1.0)
        hf.model.norm.weight.fill_(1.0)
        for head, marker in ((0, VIS), (1, TXT)):
            attn.q_proj.weight[head * 4 + 1, BIAS] = GAIN
            attn.k_proj.weight[head * 4 + 1, marker] = GAIN
            for j in range(4):  # values: the content dims 4..7
                attn.v_proj.weight[head * 4 + j, 4 + j] = 1.0
        attn.o_proj.weight.copy_(torch.eye(8))
        hf.lm_head.weight.normal_()
    for p in hf.parameters():
        p.requires_grad_(False)
    arch, points = install_hook_points(hf)
    return Model(name="hand-vhd", hf=hf, tokenizer=_Tok(), shape=shape_of(hf), arch=arch, hook_points=points)


class _HandVLM:
    def __init__(self, lm: Model) -> None:
        self.lm = lm

    def token_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(ids.shape[0], 8)
        out[:, TXT] = 1.0
        out[:, BIAS] = 1.0
        out[:, 4:] = 0.3
        return out


def _tokens(n: int, marker: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 8)
    x[:, marker] = 1.0
    x[:, BIAS] = 1.0
    x[:, 4:] = torch.randn(n, 4, generator=g)
    return x


def paired() -> PairedBatch:
    vis, txt = _tokens(3, VIS, 1), _tokens(4, TXT, 2)
    embeds, mask, pos = left_pad([torch.cat([vis, txt]), txt])
    image_mask = torch.zeros_like(mask, dtype=torch.bool)
    image_mask[0, :3] = True
    return PairedBatch(embeds, mask, pos, image_mask, n=1)


def test_head_reading_image_has_large_vhd_and_text_head_zero():
    lm = hand_model()
    gen = generate(_HandVLM(lm), paired(), max_new_tokens=3, policy=HeadPolicy("none"))
    vhd = gen.vhd[0]  # [step layer head]
    assert vhd.shape == (3, 1, 2)
    assert (vhd[:, 0, 0] > 0.5).all(), vhd
    assert vhd[:, 0, 1].abs().max() < 1e-5, vhd
    # T-VHD with k=1 is the image head's VHD; with k=2 the mean of both
    assert torch.allclose(token_vhd(gen.vhd, 1)[0], vhd[:, 0, 0])
    assert torch.allclose(token_vhd(gen.vhd, 2)[0], vhd[:, 0].mean(-1))
    assert top_heads(vhd.mean(0), 1)[0]["name"] == "L0H0"


def test_vhd_read_through_cache_matches_direct_z():
    """The decoding-time VHD equals the distance of hook_z read through forward_embeds."""
    lm = hand_model()
    batch = paired()
    _, cache, _ = forward_embeds(lm, batch.embeds, batch.attention_mask, names=["blocks.0.attn.hook_z"],
                                 position_ids=batch.position_ids)
    z = cache["blocks.0.attn.hook_z"]  # [2 pos head d_head]
    direct = head_divergence(z[0, -1], z[1, -1])
    gen = generate(_HandVLM(lm), batch, max_new_tokens=1)
    assert torch.allclose(gen.vhd[0, 0, 0], direct, atol=1e-6)


def test_vhr_scales_selected_heads_by_alpha():
    lm = hand_model()
    batch = paired()
    name = "blocks.0.attn.hook_z"
    _, plain, _ = forward_embeds(lm, batch.embeds, batch.attention_mask, names=[name], position_ids=batch.position_ids)
    gen = generate(_HandVLM(lm), batch, max_new_tokens=1, policy=HeadPolicy("vhr", alpha=3.0))
    # two heads: median = mean of the two, so the head above it (head 0) is selected, not an outlier
    assert gen.selected[0, 0, 0].tolist() == [True, False]
    # apply the same selection as a patch and read the patched z back through the cache
    pick = vhr_select(head_divergence(plain[name][0, -1], plain[name][1, -1])[None])[0]
    scale = torch.where(pick, 3.0, 1.0)[:, None]
    _, after, _ = forward_embeds(lm, batch.embeds, batch.attention_mask, names=[name], position_ids=batch.position_ids,
                                 patches={name: lambda z: torch.cat([z[:, :-1], z[:, -1:] * scale], dim=1)})
    assert torch.allclose(after[name][:, -1, 0], 3.0 * plain[name][:, -1, 0])
    assert torch.allclose(after[name][:, -1, 1], plain[name][:, -1, 1])


def test_vhr_select_rule():
    vhd = torch.tensor([[0.1, 0.2, 0.3, 0.4, 5.0]])
    # mean 1.2, std ~1.9 -> outlier threshold ~3.1: 5.0 dropped; median 0.3 -> 0.4 kept
    assert vhr_select(vhd).tolist() == [[False, False, False, True, False]]
    assert vhr_select(torch.ones(1, 4)).sum() == 0  # nothing above the median


def test_random_control_draws_the_same_number_of_heads():
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([0, 2, 5])
    pick = random_select(counts, 9, g)
    assert pick.sum(-1).tolist() == [0, 2, 5]


def test_bad_distance_and_policy():
    from workbench.errors import InputError

    with pytest.raises(InputError, match="distance"):
        head_divergence(torch.zeros(2, 4), torch.zeros(2, 4), "manhattan")
    with pytest.raises(InputError, match="policy"):
        HeadPolicy("boost")
    with pytest.raises(InputError, match="alpha"):
        HeadPolicy("vhr", alpha=0)
