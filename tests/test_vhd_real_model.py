"""The VHD pipeline on the embedded smollm2-135m behind the real EfficientNet-Lite0 (projector
warm-started in closed form only, so it builds in seconds): one scene, a few tokens."""
from __future__ import annotations

import pytest
import torch

from workbench.analyses.vision_heads.vlm.generate import HeadPolicy, generate
from workbench.analyses.vision_heads.vlm.model import DEFAULT_PROMPT
from workbench.analyses.vision_heads.vlm.scenes import make_scenes
from workbench.analyses.vision_heads.vlm.train import ProjectorConfig, build_vlm, caption_losses, encode_scenes


@pytest.mark.real_model
@pytest.mark.slow
def test_vhd_on_smollm2(smollm2):
    cfg = ProjectorConfig(lm=smollm2.name, n_train=16, steps=0, image_size=96)
    vlm, _ = build_vlm(smollm2, cfg, progress=False)
    scenes = make_scenes(2, "test", seed=1, size=96)
    feats = encode_scenes(vlm, scenes)
    assert feats.shape == (2, 9, 1280)  # the encoder's last feature map: 3x3 at 96 px
    gen = generate(vlm, vlm.paired_batch(DEFAULT_PROMPT, feats), max_new_tokens=3, policy=HeadPolicy("vhr", alpha=1.5))
    s = smollm2.shape
    assert gen.vhd.shape[2:] == (s.n_layers, s.n_heads)
    assert torch.isfinite(gen.vhd).all() and (gen.vhd >= 0).all() and gen.vhd[:, 0].max() > 0
    # about 4 of 9 heads per layer are above the median; outliers dropped
    per_layer = gen.selected[:, 0].sum(-1).float()
    assert 1 <= per_layer.mean() <= 4
    with torch.no_grad():
        loss = caption_losses(vlm, DEFAULT_PROMPT, feats, [s_.caption for s_ in scenes])
    assert torch.isfinite(loss).all()
