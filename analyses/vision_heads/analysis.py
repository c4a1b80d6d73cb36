"""Vision-aware head divergence (VHD) and vision-aware head reinforcement (VHR) on a
vision-language model (He et al., "Cracking the Code of Hallucination in LVLMs with
Vision-aware Head Divergence", ACL 2025).

* VHD of head (l, h) at decoding step t: ``|| z_lh(y_t | y_<t, image, text) - z_lh(y_t | y_<t, text) ||_2``,
  with z the head's output *before* W_O (``blocks.{l}.attn.hook_z``; why: see
  ``workbench.analyses.vision_heads.vlm.heads``), both branches fed the same caption so far.
* T-VHD of a token: the mean of the top-k head VHDs at its step.
* The VHD map: the mean VHD per head over every decoding step of every held-out scene.
* VHR: while decoding, per layer, drop outlier heads (VHD > layer mean + 1 std), pick the
  heads above the layer median, multiply their z by alpha (head set ``vhr``); or multiply a
  fixed set, the k heads of the largest VHD on the validation captions (``top<k>``).
* The experiment: alpha and the head set are chosen on ``val`` scenes (the largest recall minus
  CHAIR_i), then reported on ``test`` scenes (both held out from training: other photo halves,
  other composition) against two controls: as many random heads (``random_draws`` draws) and
  every head scaled alike, with bootstrap intervals over scenes (``workbench.stats``).

The model: ``workbench.analyses.vision_heads.vlm`` (EfficientNet-Lite0 -> projector -> smollm2-135m), built and
cached on first use; whether it sees (caption loss on the first test scenes, object recall of
greedy captions) is measured here against image-free baselines (another scene's image; no
image). The forced-choice object ranking (``workbench.analyses.vision_heads.vlm.probe``) is no longer run
by default: it cost more forwards than the whole VHR experiment. Any object with ``lm``,
``token_embeds`` and ``paired_batch`` (``workbench.analyses.vision_heads.vlm.hf_vlm.HFVisionAdapter``: the
``--llava`` and ``--vlm`` folders) can be passed as ``model`` instead."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench.checks import checked_run
from workbench.results import provenance
from workbench.spec import check_config

from .conditions import Conditions, chair_scores, head_policy, object_token_tvhd
from .config import DEFAULT_ALPHA, VHDConfig
from .intervals import condition_intervals
from .phases import CRITERION, CaptionsOnTest, Validation, caption_test, sight, validate
from .result import N_SHOWN, VHDResult, VisionHead, projector_record
from .target import SeeingModel, get_vlm, has_projector, projector_config
from .vlm.chair import mentioned_objects
from .vlm.generate import HeadPolicy, generate_chunked
from .vlm.heads import token_vhd, top_heads
from .vlm.scenes import Scene, make_scenes
from .vlm.train import encode_scenes

if TYPE_CHECKING:
    from workbench.models import Model

# where tests and notebooks import them from
__all__ = ["VHDConfig", "VHDResult", "caption_one", "head_policy", "projector_config", "run"]


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Model | SeeingModel | None = None, config: VHDConfig | None = None,
        progress: bool | Any = True) -> VHDResult:
    """Build (or load) the VLM; choose alpha and the head set on validation scenes; caption test
    scenes before and after VHR, with random heads and with all heads scaled; map VHD."""
    config = config or VHDConfig()
    check_config(config)
    show = bool(progress)
    picture = user_picture(config)
    vlm, record = get_vlm(model, config, show)
    scenes = make_scenes(config.n_scenes, "test", seed=config.seed, size=config.image_size)
    val_scenes = make_scenes(config.n_val, "val", seed=config.seed, size=config.image_size)
    feats: torch.Tensor | list[np.ndarray]
    val_feats: torch.Tensor | list[np.ndarray]
    metrics: dict[str, Any] = {}
    if has_projector(vlm):  # ours: the scenes through its encoder; 1. does it see? (test scenes)
        feats, val_feats = encode_scenes(vlm, scenes, progress=show), encode_scenes(vlm, val_scenes, progress=show)
        metrics = sight(vlm, config, scenes, feats, show)
    else:  # a given adapter captions the images
        feats, val_feats = [s.image for s in scenes], [s.image for s in val_scenes]
    metrics["projector"] = projector_record(record)
    conditions = Conditions(vlm, config, show)
    # 2. validation: VHD map, then every (head set, alpha) against the validation objective
    val = validate(conditions, config, val_feats, [s.objects for s in val_scenes], show)
    # 3. test: before (with VHD), the chosen VHR, random heads, all heads
    test = caption_test(conditions, config, feats, val, show)
    metrics.update(result_metrics(vlm, config, scenes, len(val_scenes), val, test))
    if picture is not None:
        metrics["user_image"] = caption_one(vlm, picture, config) | {"image": config.image}
    result = build_result(config, result_meta(vlm, config, record), metrics, scenes, val, test)
    for name, iv in condition_intervals(test.runs(), [s.objects for s in scenes], seed=config.seed).items():
        result.set_interval(name, iv)
    return result


def user_picture(config: VHDConfig) -> np.ndarray | None:
    """The ``--image`` captioned before and after VHR (None without one), read before the model."""
    if config.image is None:
        return None
    from workbench.vision.images import load_image

    return load_image(config.image)[0]


def splits(chosen_by: str) -> dict[str, str]:
    """Where each figure of the result comes from (train, val, test, or given)."""
    return {"chair": "test", "intervals": "test", "vhd": "test", "top_heads": "test", "captions": "test",
            "recall": "test", "caption_loss": "test", "object_rank_recall": "test", "sweep": "val",
            "val_before": "val", "alpha": "val" if chosen_by == "val" else "given",
            "head_set": "val" if chosen_by == "val" else "given", "top<k> heads": "val",
            "projector": "train"}


def result_metrics(vlm: SeeingModel, config: VHDConfig, scenes: list[Scene], n_val: int, val: Validation,
                 test: CaptionsOnTest) -> dict[str, Any]:
    """The result's fields from the validation choice and the test captions (CHAIR per condition,
    the top heads, the captions, the run's settings)."""
    truths = [s.objects for s in scenes]
    before = chair_scores(test.base.captions, truths)
    rnd_caps = [c for r in test.randoms for c in r.captions]
    rnd_truths = [t for _ in test.randoms for t in truths]
    chair_by_condition = {"before": before, "after": chair_scores(test.vhr.captions, truths),
                          "random_control": chair_scores(rnd_caps, rnd_truths),
                          "all_heads": chair_scores(test.every.captions, truths)}
    return {
        "recall": before["recall"],
        "top_heads": [VisionHead(**h) for h in top_heads(test.vhd_map, 10)],
        "chair": chair_by_condition,
        "alpha": float(val.alpha),
        "head_set": val.head_set,
        "chosen_by": val.chosen_by,
        "heads_scaled_per_step": test.heads_scaled,
        "criterion": CRITERION,
        "choice": val.choice,
        "sweep": val.sweep,
        "val_before": val.before,
        "splits": splits(val.chosen_by),
        "object_token_tvhd": object_token_tvhd(test.base.tokens, test.tvhd, truths),
        "captions_before": test.base.captions,
        "captions_after": test.vhr.captions,
        "captions_random": test.randoms[0].captions,
        "captions_all_heads": test.every.captions,
        "caption_tokens": test.base.tokens,
        "truths": [list(t) for t in truths],
        "references": [s.caption for s in scenes],
        "n_scenes": len(scenes),
        "n_val": n_val,
        "random_draws": config.random_draws,
        "vision_tokens": getattr(vlm, "n_image_tokens", None),
        "model": getattr(vlm, "name", None),
        "where": "blocks.{l}.attn.hook_z (per-head output before W_O)",
        "distance": config.distance,
    }


def build_result(config: VHDConfig, meta: dict[str, Any], metrics: dict[str, Any], scenes: list[Scene],
                 val: Validation, test: CaptionsOnTest) -> VHDResult:
    """The result: ``metrics`` and the tensors (the VHD maps, every test step's VHD, T-VHD, the
    first scenes' images and how often the chosen VHR scaled each head)."""
    shown = min(N_SHOWN, len(scenes))
    vhr = test.vhr
    images = torch.from_numpy(np.stack([(sc.image * 255).round().astype(np.uint8) for sc in scenes[:shown]]))
    # cpu: a result array
    selected_rate = vhr.selected[vhr.valid].float().mean(0) if vhr.valid.any() else torch.zeros(test.vhd_map.shape)
    return VHDResult(config=config, meta=meta, vhd_map=test.vhd_map, vhd_map_val=val.vhd_map, vhd_steps=test.base.vhd,
                     valid=test.base.valid.to(torch.uint8), tvhd=test.tvhd, images=images, selected_rate=selected_rate,
                     **metrics)


def result_meta(vlm: SeeingModel, config: VHDConfig, record: dict[str, Any]) -> dict[str, Any]:
    """The provenance, with the trained projector this run measured (``workbench.artifacts``)."""
    meta = provenance(model=getattr(vlm, "name", "vlm"), seed=config.seed) | {"lm": vlm.lm.name}
    if record.get("sha256"):
        from workbench.artifacts import provenance_entry

        meta["artifacts"] = [provenance_entry(record["artifact"], record["sha256"])]
    return meta


def caption_one(model: Model | SeeingModel | None, image: Any, config: VHDConfig | None = None) -> dict[str, Any]:
    """Caption one image before and after VHR (at ``config.alpha``), with T-VHD per token."""
    config = config or VHDConfig()
    check_config(config)
    vlm, _ = get_vlm(model, config, progress=False)
    feats = vlm.encode([image]) if has_projector(vlm) else [image]
    kw = dict(max_new_tokens=config.max_new_tokens, chunk=1)
    base = generate_chunked(vlm, config.prompt, feats, policy=HeadPolicy("none", distance=config.distance), **kw)
    vhr = generate_chunked(vlm, config.prompt, feats, policy=HeadPolicy("vhr", config.alpha or DEFAULT_ALPHA, config.distance),
                           **kw)
    tv = token_vhd(base.vhd, config.top_k)[0, : len(base.tokens[0])]
    return {"caption_before": base.captions[0], "caption_after": vhr.captions[0], "tokens": base.tokens[0],
            "tvhd": [float(x) for x in tv], "objects_before": mentioned_objects(base.captions[0]),
            "objects_after": mentioned_objects(vhr.captions[0])}
