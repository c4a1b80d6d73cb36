"""The ``--llava`` and ``--vlm`` routes on tiny random models built offline from their
transformers configurations (``LlavaConfig`` with a CLIP vision tower, ``Idefics3Config``:
SmolVLM's architecture), saved with a processor into a temporary folder and loaded back
through the adapter the command uses. Checks: the image-token positions the processor makes
(and that splicing the features there reproduces the checkpoint's own forward), hook points at
every head, the VHD map shaped and finite, VHR changing exactly the chosen heads in both the
image and the image-free branch, the whole command, and one-line errors for bad folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from workbench.analyses.vision_heads.analysis import VHDConfig, run
from workbench.analyses.vision_heads.vlm.generate import HeadPolicy, generate
from workbench.analyses.vision_heads.vlm.heads import head_divergence, vhr_select
from workbench.analyses.vision_heads.vlm.hf_vlm import HFVisionAdapter
from workbench.analyses.vision_heads.vlm.tiny import build_tiny_llava, build_tiny_smolvlm
from workbench.cache import forward_embeds
from workbench.errors import InputError

PROMPT = "<image> A photo of"
# kind -> (builder, image tokens per image: LLaVA (32/8)^2 patches without CLS; Idefics3 (32/8)^2 / 2^2)
ROUTES = {"llava": (build_tiny_llava, 16), "smolvlm": (build_tiny_smolvlm, 4)}
FLAGS = {"llava": "--llava", "smolvlm": "--vlm"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-vlms")
    return {kind: build(root / kind) for kind, (build, _) in ROUTES.items()}


@pytest.fixture(scope="module")
def adapters(folders):
    return {kind: HFVisionAdapter(str(folder), kind=kind) for kind, folder in folders.items()}


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, size=(40, 48, 3)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("kind", list(ROUTES))
def test_image_tokens_and_splice_match_the_checkpoint(adapters, kind):
    """Image tokens where the processor put them, and our spliced embeddings give the
    checkpoint's own logits (with the image) and the text-only logits (without)."""
    ad = adapters[kind]
    n_tok = ROUTES[kind][1]
    imgs = _images(2)
    batch = ad.paired_batch(PROMPT, imgs)
    assert batch.n == 2 and batch.embeds.shape[0] == 4
    assert batch.image_mask[:2].sum(-1).tolist() == [n_tok, n_tok]
    assert not batch.image_mask[2:].any()
    logits, _, _ = forward_embeds(ad.lm, batch.embeds, batch.attention_mask, position_ids=batch.position_ids)
    pics = ad.encode(imgs)
    for i in range(2):
        enc = ad.processor(text=PROMPT, images=pics[i], return_tensors="pt")
        ids = enc["input_ids"][0]
        assert int((ids == ad.image_token_id).sum()) == n_tok
        # the image rows: the last len(ids) positions of row i (left padding)
        with torch.no_grad():
            ref = ad.full(**enc).logits[0]
        ours = logits[i, -ids.shape[0]:]
        assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    text = ad.text_only_ids(PROMPT)
    with torch.no_grad():
        ref_text = ad.full(input_ids=text[None]).logits[0]
    assert torch.allclose(logits[2, -text.shape[0]:], ref_text, atol=1e-4)


@pytest.mark.parametrize("kind", list(ROUTES))
def test_hook_points_at_every_head(adapters, kind):
    ad = adapters[kind]
    s = ad.lm.shape
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(s.n_layers)]
    assert set(names) <= set(ad.lm.hook_points)
    batch = ad.paired_batch(PROMPT, _images(1))
    _, cache, _ = forward_embeds(ad.lm, batch.embeds, batch.attention_mask, names=names, position_ids=batch.position_ids)
    for name in names:
        z = cache[name]
        assert z.shape == (2, batch.embeds.shape[1], s.n_heads, s.d_head)
        # the image changes every head's output at the last position (random weights: all heads read the image)
        assert (head_divergence(z[0, -1], z[1, -1]) > 0).all()


@pytest.mark.parametrize("kind", list(ROUTES))
def test_vhr_changes_exactly_the_chosen_heads(adapters, kind):
    """Every patched hook_z: the chosen heads scaled by alpha at the decoding position, in the
    image and the image-free rows alike; every other head, and every earlier position, untouched;
    the choice is VHR's rule applied to the divergence of what the patch saw."""
    ad = adapters[kind]
    s = ad.lm.shape
    batch = ad.paired_batch(PROMPT, _images(2, seed=1))
    n, alpha = batch.n, 3.0
    trace: list = []
    gen = generate(ad, batch, max_new_tokens=2, policy=HeadPolicy("vhr", alpha=alpha), trace=trace)
    assert len(trace) >= s.n_layers and gen.vhd.shape[2:] == (s.n_layers, s.n_heads)
    picked_any = False
    for step, layer, z_in, z_out, pick in trace:
        want = vhr_select(head_divergence(z_in[:n, -1], z_in[n:, -1]))
        assert torch.equal(pick, want)
        scale = torch.where(pick, alpha, 1.0)[..., None]
        assert torch.allclose(z_out[:n, -1], z_in[:n, -1] * scale)  # with the image
        assert torch.allclose(z_out[n:, -1], z_in[n:, -1] * scale)  # without it: the same heads
        assert torch.equal(z_out[:, :-1], z_in[:, :-1])
        unchanged = ~pick
        assert torch.equal(z_out[:n, -1][unchanged], z_in[:n, -1][unchanged])
        picked_any |= bool(pick.any())
    assert picked_any
    # at layer 0 of the first step the patch saw the model's own, unpatched z
    names = ["blocks.0.attn.hook_z"]
    _, plain, _ = forward_embeds(ad.lm, batch.embeds, batch.attention_mask, names=names, position_ids=batch.position_ids)
    first = next(t for t in trace if t[0] == 0 and t[1] == 0)
    assert torch.allclose(first[2], plain[names[0]], atol=1e-6)


@pytest.mark.parametrize("kind", list(ROUTES))
def test_whole_analysis_on_the_folder(folders, kind):
    cfg = VHDConfig(n_scenes=2, n_val=2, alphas=(2.0,), head_sets=("vhr",), random_draws=1, max_new_tokens=2,
                    image_size=64, batch_size=2, top_k=3, **{"llava" if kind == "llava" else "vlm": str(folders[kind])})
    result = run(None, cfg, progress=False)
    s = result.vhd_map.shape
    assert s == (2, 4) and torch.isfinite(result.vhd_map).all() and (result.vhd_map > 0).all()
    assert result.n_scenes == 2 and set(result.chair) >= {"before", "after", "random_control", "all_heads"}


@pytest.mark.parametrize("kind", list(ROUTES))
def test_cli_route(folders, kind, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app, register_analyses

    register_analyses()
    res = CliRunner().invoke(app, ["vhd", FLAGS[kind], str(folders[kind]), "--n-scenes", "1", "--n-val", "1", "--alphas",
                                   "2", "--head-sets", "vhr", "--random-draws", "1", "--max-new-tokens", "2",
                                   "--image-size", "64", "--json", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert len(doc["vhd"]) == 2 and len(doc["vhd"][0]) == 4


def test_bad_folders_are_one_line_errors(folders, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app, register_analyses

    with pytest.raises(InputError, match="no such folder"):
        HFVisionAdapter(str(tmp_path / "absent"), kind="llava")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        HFVisionAdapter(str(tmp_path / "empty"), kind="smolvlm")
    with pytest.raises(InputError, match="use --llava"):
        HFVisionAdapter(str(folders["llava"]), kind="smolvlm")
    with pytest.raises(InputError, match="use --vlm"):
        VHDConfig(llava=str(folders["smolvlm"])).validate()
    register_analyses()
    res = CliRunner().invoke(app, ["vhd", "--vlm", str(folders["llava"])])
    assert isinstance(res.exception, InputError) and "use --llava" in str(res.exception)
    # the command line: exit 2, one error line, before any model loads
    env = dict(os.environ, WORKBENCH_RUNS=str(tmp_path / "runs"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "workbench", "vhd", "--llava", str(tmp_path / "absent")], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no such folder" in lines[0], lines


@pytest.mark.parametrize("kind", ["llava"])
def test_shared_prompt_cache_gives_the_same_generation(adapters, kind):
    """The Captioner reuses the prompt's key-value cache across policies: same tokens, same
    VHD and the same chosen heads as decoding from scratch."""
    from workbench.analyses.vision_heads.vlm.generate import Captioner, generate_chunked

    ad = adapters[kind]
    imgs = _images(3, seed=2)
    cap = Captioner(ad, PROMPT, imgs, chunk=2, max_new_tokens=3)
    for policy in (HeadPolicy("none"), HeadPolicy("vhr", alpha=2.0), HeadPolicy("random", alpha=2.0, seed=3)):
        a = cap(policy)
        b = generate_chunked(ad, PROMPT, imgs, chunk=2, max_new_tokens=3, policy=policy)
        assert a.token_ids == b.token_ids
        assert torch.allclose(a.vhd, b.vhd, atol=1e-5) and torch.equal(a.selected, b.selected)
