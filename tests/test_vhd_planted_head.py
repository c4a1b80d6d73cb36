"""Known answer for the whole VHD -> head choice -> VHR chain on a hand-built two-layer Llama
with four heads per layer, where exactly one head, L1H2, copies image information (it attends
to the visual tokens and writes their content, the "cat" direction, into the residual stream)
and every other head reads only text (or nothing: layer 0 is empty).

Known answers: VHD is zero for every head but L1H2, so the VHD map ranks L1H2 first; the
analysis's ``top1`` head set is L1H2; scaling it by alpha raises the "cat" logit and nothing
else as much (the predicted direction: more of what the image says), enough at alpha 3 to turn
the first caption token from "the" into "cat". The same checks on the model with the planted
head removed (L1H2 reading text like the others) must fail: ``failures`` returns them."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workbench.analyses.vision_heads.analysis import VHDConfig, head_policy
from workbench.analyses.vision_heads.vlm.generate import HeadPolicy, generate
from workbench.analyses.vision_heads.vlm.heads import top_heads
from workbench.analyses.vision_heads.vlm.model import PairedBatch, left_pad
from workbench.cache import forward_embeds
from workbench.hooks import install_hook_points
from workbench.models import Model, shape_of

D, HEADS, DH = 16, 4, 4
VIS, TXT, BIAS, CONTENT = 0, 1, 2, 4  # embedding dims: markers and the "cat" content dim
THE, CAT = 1, 2  # token ids: the text prior's word and the image's object
PLANTED = (1, 2)  # layer, head
GAIN = 30.0
ALPHA = 3.0


class _Tok:
    eos_token_id = -1

    def decode(self, ids):
        return " ".join({THE: "the", CAT: "cat"}.get(int(i), "x") for i in ids)


def hand_model(planted: bool = True) -> Model:
    """Layer 0 empty; in layer 1 every head's query is the constant BIAS direction and its key
    the TXT marker, except the planted head's key, which is the VIS marker. Values copy the
    content dims, the output projection writes each head's value back to them. Rotary is made
    inert (theta 1e12, scores in the slowest rotary pair). The unembedding reads BIAS for "the"
    and the content dim for "cat"."""
    cfg = LlamaConfig(vocab_size=4, hidden_size=D, intermediate_size=8, num_hidden_layers=2, num_attention_heads=HEADS,
                      num_key_value_heads=HEADS, head_dim=DH, rope_theta=1e12, max_position_embeddings=64,
                      tie_word_embeddings=False, rms_norm_eps=1e-6)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        for layer in hf.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        hf.model.norm.weight.fill_(1.0)
        attn = hf.model.layers[1].self_attn
        for h in range(HEADS):
            marker = VIS if (planted and (1, h) == PLANTED) else TXT
            attn.q_proj.weight[h * DH + DH // 2 - 1, BIAS] = GAIN
            attn.k_proj.weight[h * DH + DH // 2 - 1, marker] = GAIN
            for j in range(DH):
                attn.v_proj.weight[h * DH + j, CONTENT + j] = 1.0
                attn.o_proj.weight[CONTENT + j, h * DH + j] = 1.0
        hf.lm_head.weight[THE, BIAS] = 8.0  # wins without reinforcement (cat: 2 x 2.3), loses at alpha 3 (2 x 6.9)
        hf.lm_head.weight[CAT, CONTENT] = 2.0
    for p in hf.parameters():
        p.requires_grad_(False)
    arch, points = install_hook_points(hf)
    return Model(name="hand-planted", hf=hf, tokenizer=_Tok(), shape=shape_of(hf), arch=arch, hook_points=points)


class HandVLM:
    """Text tokens carry TXT and BIAS; generated tokens embed the same way."""

    def __init__(self, lm: Model) -> None:
        self.lm = lm

    def token_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(ids.shape[0], D)
        out[:, TXT] = 1.0
        out[:, BIAS] = 1.0
        return out


def paired(n_visual: int = 3, n_text: int = 4) -> PairedBatch:
    """One image (visual tokens: VIS, BIAS and the cat content 1.0 plus noise on the other
    content dims) before the text, and the text alone."""
    g = torch.Generator().manual_seed(0)
    vis = torch.zeros(n_visual, D)
    vis[:, VIS] = vis[:, BIAS] = 1.0
    vis[:, CONTENT] = 1.0
    vis[:, CONTENT + 1:CONTENT + DH] = 0.1 * torch.randn(n_visual, DH - 1, generator=g)
    txt = torch.zeros(n_text, D)
    txt[:, TXT] = txt[:, BIAS] = 1.0
    embeds, mask, pos = left_pad([torch.cat([vis, txt]), txt])
    image_mask = torch.zeros_like(mask, dtype=torch.bool)
    image_mask[0, -(n_visual + n_text):-n_text] = True
    return PairedBatch(embeds, mask, pos, image_mask, n=1)


def failures(lm: Model) -> list[str]:
    """The known answers, checked; empty when all hold."""
    out = []
    vlm, batch = HandVLM(lm), paired()
    base = generate(vlm, batch, max_new_tokens=2, policy=HeadPolicy("none"))
    vhd_map = base.vhd[0].mean(0)  # [layer head]
    first = top_heads(vhd_map, 1)[0]
    if (first["layer"], first["head"]) != PLANTED:
        out.append(f"VHD ranks {first['name']} first, not the planted L1H2")
    others = vhd_map.clone()
    others[PLANTED] = 0
    if not (vhd_map[PLANTED] > 0.5 and others.abs().max() < 1e-5):
        out.append(f"VHD is not large at L1H2 and zero elsewhere: {vhd_map.tolist()}")
    policy = head_policy("top1", ALPHA, VHDConfig(), vhd_map)
    if not (policy.heads.sum() == 1 and policy.heads[PLANTED]):
        out.append("the top1 head set is not L1H2")
    # scaling the chosen head: the cat logit rises most (the image's content), by the predicted amount's sign
    name = f"blocks.{PLANTED[0]}.attn.hook_z"
    rows = slice(0, 1)
    plain, _, _ = forward_embeds(lm, batch.embeds[rows], batch.attention_mask[rows], position_ids=batch.position_ids[rows])
    scale = torch.where(policy.heads[PLANTED[0]], ALPHA, 1.0)[:, None]
    scaled, _, _ = forward_embeds(lm, batch.embeds[rows], batch.attention_mask[rows], position_ids=batch.position_ids[rows],
                                  patches={name: lambda z: torch.cat([z[:, :-1], z[:, -1:] * scale], dim=1)})
    delta = scaled[0, -1] - plain[0, -1]
    if not (delta[CAT] > 0.1 and int(delta.argmax()) == CAT):
        out.append(f"scaling the chosen head does not raise the cat logit most: {delta.tolist()}")
    # through the decoder: the caption's first token turns from the text prior to the image's object
    vhr = generate(vlm, batch, max_new_tokens=1, policy=policy)
    if not (base.token_ids[0][0] == THE and vhr.token_ids[0][0] == CAT):
        out.append(f"first token before/after VHR: {base.token_ids[0][0]} -> {vhr.token_ids[0][0]}, not the -> cat")
    return out


def test_planted_head_is_found_and_reinforcing_it_names_the_image():
    assert failures(hand_model(planted=True)) == []


def test_checks_fail_when_the_planted_head_is_removed():
    found = failures(hand_model(planted=False))
    assert any("not the planted L1H2" in f or "not large at L1H2" in f for f in found), found
    assert any("cat logit" in f for f in found), found
    assert any("not the -> cat" in f for f in found), found
