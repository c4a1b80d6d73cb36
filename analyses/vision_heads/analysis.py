"""Vision-aware head divergence (VHD) and vision-aware head reinforcement (VHR) on a
vision-language model (He et al., "Cracking the Code of Hallucination in LVLMs with
Vision-aware Head Divergence", ACL 2025).

* VHD of head (l, h) at decoding step t: ``|| z_lh(y_t | y_<t, image, text) - z_lh(y_t | y_<t, text) ||_2``,
  with z the head's output *before* W_O (``blocks.{l}.attn.hook_z``; why: see
  ``analyses.vision_heads.vlm.heads``), both branches fed the same caption so far.
* T-VHD of a token: the mean of the top-k head VHDs at its step.
* The VHD map: the mean VHD per head over every decoding step of every held-out scene.
* VHR: while decoding, per layer, drop outlier heads (VHD > layer mean + 1 std), pick the
  heads above the layer median, multiply their z by alpha; compared with a random-heads
  control (as many heads per layer, drawn at random) by CHAIR and caption recall.

The model: ``analyses.vision_heads.vlm`` (EfficientNet-Lite0 -> projector -> smollm2-135m), built and
cached on first use; its projector quality (caption loss, object recall of greedy captions,
and a forced-choice object ranking, ``analyses.vision_heads.vlm.probe``) is measured here against
image-free baselines (another scene's image; no image). Any object with ``lm``, ``token_embeds`` and ``paired_batch``
(e.g. ``analyses.vision_heads.vlm.llava.HFLlavaAdapter``) can be passed as ``model`` instead."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.errors import InputError
from workbench.results import Result, provenance, register_result
from workbench.spec import check_config, option
from analyses.vision_heads.vlm.chair import chair, mentioned_objects
from analyses.vision_heads.vlm.generate import HeadPolicy, generate_chunked
from analyses.vision_heads.vlm.heads import DISTANCES, token_vhd, top_heads
from analyses.vision_heads.vlm.model import DEFAULT_PROMPT, split_prompt
from analyses.vision_heads.vlm.objects import SYNONYMS
from analyses.vision_heads.vlm.probe import chance_recall, first_object_scores, ranking_recall
from analyses.vision_heads.vlm.scenes import make_scenes
from analyses.vision_heads.vlm.train import ProjectorConfig, build_vlm, caption_losses, encode_scenes

N_SHOWN = 8  # scenes whose images travel with the result (for the app page)
TOP_K = 10  # T-VHD's default k


@dataclass
class VHDConfig:
    n_scenes: int = option(16, aliases=("--n",), help="held-out scenes to caption and score", max=10_000)
    alpha: float = option(2.0, help="VHR amplification reported as 'after'")
    alphas: tuple[float, ...] = option((1.5, 2.0, 3.0), help="the alpha sweep (always includes --alpha)")
    top_k: int = option(TOP_K, help="T-VHD: mean of the k largest head VHDs per token (at most the model's heads; "
                        f"the default {TOP_K} becomes the head count on a smaller model)", min=1)
    distance: str = option("l2", help="distance between the head outputs with and without the image", choices=DISTANCES)
    max_new_tokens: int = option(14, help="caption tokens generated per scene", min=1)
    prompt: str = option(DEFAULT_PROMPT, help="must hold one <image> placeholder")
    seed: int = 0
    batch_size: int = option(16, help="scenes per decoding batch", min=1)
    projector_steps: int = option(ProjectorConfig.steps, help="caption-loss steps when the projector is built", min=0)
    projector_n_train: int = option(ProjectorConfig.n_train, help="training scenes when the projector is built", min=1)
    grid: int = option(ProjectorConfig.grid, help="visual tokens per side (grid x grid per image)", min=1)
    image_size: int = option(ProjectorConfig.image_size, help="scene and encoder input size in pixels", min=32)
    image: str | None = option(None, help="also caption this image (file path or shipped photo name) before/after VHR")
    llava: str | None = option(None, help="a local Hugging Face LLaVA folder to analyse instead of --model (untested "
                               "offline; loaded in float16 unless --dtype bfloat16)")
    renamed: ClassVar[dict[str, str]] = {"chunk": "batch_size"}

    def validate(self) -> None:
        """Cross-field checks, run before any model loads."""
        if self.n_scenes < 1:  # the message names the field as older callers matched it
            raise InputError(f"--n-scenes (n_scenes) must be at least 1 (got {self.n_scenes})")
        for a in (self.alpha, *self.alphas):
            if not a > 0:
                raise InputError(f"--alpha/--alphas must be positive (got {a})")
        split_prompt(self.prompt)
        if self.image is not None:
            from workbench.vision.images import load_image

            load_image(self.image)


def language_model(target: Any) -> Any:
    """The language model inside what ``load_target`` returns (a LLaVA adapter's ``lm``, or the model)."""
    return getattr(target, "lm", None) or target


def check_model(config: VHDConfig, target: Any) -> None:
    """The spec's check before a run: T-VHD's top k fits the language model's heads (the
    default k is lowered to the head count on a model with fewer heads, and saved so)."""
    lm = language_model(target)
    shape = getattr(lm, "shape", None)
    if shape is None:
        return
    total = shape.n_layers * shape.n_heads
    if config.top_k == TOP_K and total < TOP_K:
        config.top_k = total
    if config.top_k > total:
        raise InputError(f"--top-k {config.top_k} is more heads than {getattr(lm, 'name', 'the model')} has "
                         f"({shape.n_layers} layers x {shape.n_heads} = {total}); choose --top-k {total} or less")


def estimate_bytes(config: VHDConfig, target: Any) -> int:
    """The spec's memory estimate before a run: every held-out scene's image is kept
    (``image_size`` squared x 3 float32), and the caption losses and the object ranking run
    all scenes in one forward each, whose logits (scenes x positions x vocab) dominate at the
    default size; positions: the prompt, grid x grid visual tokens and a caption.

    Calibration (tiny-llama, CPU, ru_maxrss over the RSS after the model loaded, --image-size 64,
    --grid 2, 3 new tokens): --n-scenes 16 / 128: 0.29 / 0.69 GB, 3.6 MB a scene over about
    0.23 GB (the encoder, the projector); this estimate: 0.26 / 0.71 GB."""
    lm = language_model(target)
    shape = getattr(lm, "shape", None)
    n = config.n_scenes
    images = n * config.image_size ** 2 * 3 * 4
    if shape is None or getattr(lm, "tokenizer", None) is None:
        return int(FIXED_BYTES + images)
    size = torch.empty((), dtype=lm.dtype).element_size() if hasattr(lm, "dtype") else 4
    pos = len(lm.tokenizer.encode(config.prompt)) + config.grid ** 2 + CAPTION_TOKENS
    return int(FIXED_BYTES + images + n * pos * shape.d_vocab * size)


CAPTION_TOKENS = 10  # " a cat, a cup and a rocket."
FIXED_BYTES = 200 * 2**20  # the image encoder and the projector


def projector_config(config: VHDConfig, lm_name: str) -> ProjectorConfig:
    return ProjectorConfig(lm=lm_name, grid=config.grid, image_size=config.image_size, n_train=config.projector_n_train,
                           steps=config.projector_steps, seed=0, prompt=ProjectorConfig.prompt)


def load_llava(folder: str, device: str = "cpu", dtype: str = "float32") -> Any:
    """A local LLaVA checkpoint behind the interface the analysis uses; float16 unless
    ``dtype`` asks for bfloat16 (the full-precision default of the other commands would
    double a 7B model's memory)."""
    from analyses.vision_heads.vlm.llava import HFLlavaAdapter

    print(f"loading LLaVA from {folder} ...", file=sys.stderr, flush=True)
    return HFLlavaAdapter(str(folder), dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float16, device=device)


def load_target(config: VHDConfig, common: Any) -> Any:
    """What ``workbench vhd`` analyses: the LLaVA folder of ``--llava``, else the ``--model``
    language model (the projector and encoder are built around it in ``run``)."""
    if config.llava:
        return load_llava(config.llava, common.device, common.dtype)
    from workbench.models import load_model

    print(f"loading {common.model} ({common.backend}, {common.device}, {common.dtype}) ...", file=sys.stderr, flush=True)
    return load_model(common.model, backend=common.backend, device=common.device, dtype=common.dtype)


def needs_model(config: VHDConfig) -> bool:
    """``--llava`` replaces the language model; otherwise the run needs one."""
    return not config.llava


def get_vlm(model: Any, config: VHDConfig, progress: bool = True) -> tuple[Any, dict]:
    """The vision-language model to analyse: a given adapter, the ``llava`` folder of the
    config, or ours built on ``model``."""
    if model is not None and hasattr(model, "paired_batch"):
        return model, {}
    if model is None and config.llava:
        return load_llava(config.llava), {}
    name = getattr(model, "name", None) or ProjectorConfig.lm
    return build_vlm(model, projector_config(config, name), progress=progress)


def object_token_tvhd(tokens: list[list[str]], tvhd: torch.Tensor, truths: list[tuple[str, ...]]) -> dict[str, Any]:
    """Mean T-VHD at object-word tokens, split by whether the object is in the image."""
    real, halluc = [], []
    for i, toks in enumerate(tokens):
        for t, piece in enumerate(toks):
            obj = SYNONYMS.get(piece.strip().lower().strip(".,"))
            if obj is None or t >= tvhd.shape[1]:
                continue
            (real if obj in truths[i] else halluc).append(float(tvhd[i, t]))
    return {"tvhd_real_objects": float(np.mean(real)) if real else None, "n_real": len(real),
            "tvhd_hallucinated_objects": float(np.mean(halluc)) if halluc else None, "n_hallucinated": len(halluc)}


def _scores(captions: list[str], truths) -> dict[str, float]:
    s = chair(captions, truths)
    return {"chair_i": s.chair_i, "chair_s": s.chair_s, "recall": s.recall, "mean_words": s.mean_words,
            "n_mentioned": s.n_mentioned}


@register_result
@dataclass
class VHDResult(Result):
    analysis = "vhd"
    config_cls = VHDConfig

    # arrays
    @property
    def vhd_map(self) -> torch.Tensor:
        """[layer head] mean VHD over decoding steps and scenes."""
        return self.arrays["vhd_map"]

    @property
    def vhd_steps(self) -> torch.Tensor:
        """[scene step layer head] VHD at every decoding step of the unmodified captions."""
        return self.arrays["vhd_steps"]

    @property
    def tvhd(self) -> torch.Tensor:
        """[scene step] T-VHD (mean of the top-k head VHDs) at each generated token."""
        return self.arrays["tvhd"]

    @property
    def images(self) -> torch.Tensor:
        """[scene H W 3] uint8: the first few held-out scenes (at most ``N_SHOWN``)."""
        return self.arrays["images"]

    @property
    def n_shown(self) -> int:
        """Scenes whose images travel with the result."""
        return int(self.images.shape[0])

    @property
    def selected_rate(self) -> torch.Tensor:
        """[layer head] how often VHR (at ``alpha``) picked each head."""
        return self.arrays["selected_rate"]

    # the settings of the run
    @property
    def alpha(self) -> float:
        """The amplification reported as "after"."""
        return float(self.metrics["alpha"])

    @property
    def distance(self) -> str:
        return str(self.metrics.get("distance", "l2"))

    @property
    def where(self) -> str:
        """The hook point VHD is measured at."""
        return str(self.metrics.get("where", ""))

    @property
    def n_scenes(self) -> int:
        return int(self.metrics["n_scenes"])

    # heads and CHAIR
    @property
    def top_heads(self) -> list[dict[str, Any]]:
        """The most vision-aware heads: ``{"name", "layer", "head", ...}`` each."""
        return list(self.metrics["top_heads"])

    @property
    def chair(self) -> dict[str, dict[str, float]]:
        """CHAIR scores (``chair_i``, ``chair_s``, ``recall``, ``mean_words``, ``n_mentioned``)
        of the captions ``before``, ``after`` VHR and with the ``random_control`` heads."""
        return dict(self.metrics["chair"])

    @property
    def sweep(self) -> list[dict[str, Any]]:
        """One row per alpha: ``{"alpha", "vhr": scores, "random": scores, "heads_per_layer"}``."""
        return list(self.metrics["sweep"])

    @property
    def object_token_tvhd(self) -> dict[str, Any]:
        """Mean T-VHD at object words in the image vs hallucinated ones."""
        return dict(self.metrics.get("object_token_tvhd") or {})

    # captions
    @property
    def captions_before(self) -> list[str]:
        return list(self.metrics["captions_before"])

    @property
    def captions_after(self) -> list[str]:
        """Captions with VHR at ``alpha``."""
        return list(self.metrics["captions_after"])

    @property
    def captions_random(self) -> list[str]:
        """Captions with as many random heads amplified."""
        return list(self.metrics["captions_random"])

    @property
    def captions_shuffled_image(self) -> list[str] | None:
        """Captions given another scene's image (None for an adapter without a projector)."""
        return self.metrics.get("captions_shuffled_image")

    @property
    def caption_tokens(self) -> list[list[str]]:
        """The generated tokens of each caption before VHR."""
        return list(self.metrics["caption_tokens"])

    @property
    def truths(self) -> list[list[str]]:
        """The objects in each scene."""
        return list(self.metrics["truths"])

    @property
    def references(self) -> list[str]:
        """Each scene's reference caption."""
        return list(self.metrics["references"])

    # does the model see? (None for an adapter without a projector)
    @property
    def recall(self) -> float:
        """Object recall of the captions before VHR."""
        return float(self.metrics["recall"])

    @property
    def recall_shuffled_image(self) -> float | None:
        return self.metrics.get("recall_shuffled_image")

    @property
    def caption_loss(self) -> float | None:
        """Held-out caption loss (nats/token) with the right image."""
        return self.metrics.get("caption_loss")

    @property
    def caption_loss_shuffled_image(self) -> float | None:
        return self.metrics.get("caption_loss_shuffled_image")

    @property
    def caption_loss_no_image(self) -> float | None:
        return self.metrics.get("caption_loss_no_image")

    @property
    def object_rank_recall(self) -> float | None:
        """Forced-choice object ranking recall with the right image."""
        return self.metrics.get("object_rank_recall")

    @property
    def object_rank_recall_shuffled_image(self) -> float | None:
        return self.metrics.get("object_rank_recall_shuffled_image")

    @property
    def object_rank_recall_chance(self) -> float | None:
        return self.metrics.get("object_rank_recall_chance")

    @property
    def projector(self) -> dict[str, Any]:
        """The projector's build record (empty when a given adapter was analysed)."""
        return dict(self.metrics.get("projector") or {})

    @property
    def loss_curve(self) -> list[float]:
        """The projector's training caption loss per step."""
        return list(self.projector.get("loss_curve") or [])

    @property
    def user_image(self) -> dict[str, Any] | None:
        """The ``--image`` captioned before and after VHR, when one was given."""
        return self.metrics.get("user_image")

    def summary(self) -> dict[str, Any]:
        m = self.metrics
        out = {"vhd": m["vhd"], "top_heads": m["top_heads"], "chair": m["chair"], "alpha": m["alpha"]}
        if self.path is not None:
            out["run"] = str(self.path)
        return out

    def report_sections(self) -> list:
        from analyses.vision_heads.figures import vision_sections

        return vision_sections(self)


def run(model: Any = None, config: VHDConfig | None = None, progress: bool = True) -> VHDResult:
    """Build (or load) the VLM, caption held-out scenes, map VHD, sweep VHR against random heads."""
    config = config or VHDConfig()
    check_config(config)
    alphas = tuple(sorted(set(float(a) for a in (*config.alphas, config.alpha))))
    picture = None
    if config.image is not None:
        from workbench.vision.images import load_image

        picture = load_image(config.image)[0]
    vlm, record = get_vlm(model, config, progress)
    scenes = make_scenes(config.n_scenes, "heldout", seed=config.seed, size=config.image_size)
    truths = [s.objects for s in scenes]
    feats = encode_scenes(vlm, scenes, progress=progress) if hasattr(vlm, "projector") else [s.image for s in scenes]
    gen_kw = dict(max_new_tokens=config.max_new_tokens, chunk=config.batch_size, progress=progress)

    # 1. does it see? caption loss and recall against image-free baselines
    metrics: dict[str, Any] = {}
    if hasattr(vlm, "projector"):
        perm = torch.roll(torch.arange(len(scenes)), 1)  # each scene gets its neighbour's image
        with torch.no_grad():
            caps = [s.caption for s in scenes]
            metrics["caption_loss"] = float(caption_losses(vlm, config.prompt, feats, caps).mean())
            metrics["caption_loss_shuffled_image"] = float(caption_losses(vlm, config.prompt, feats[perm], caps).mean())
            metrics["caption_loss_no_image"] = float(caption_losses(vlm, config.prompt, None, caps).mean())
        right = first_object_scores(vlm, config.prompt, feats, len(scenes))
        wrong = first_object_scores(vlm, config.prompt, feats[perm], len(scenes))
        metrics["object_rank_recall"] = ranking_recall(right, truths)
        metrics["object_rank_recall_shuffled_image"] = ranking_recall(wrong, truths)
        metrics["object_rank_recall_chance"] = chance_recall(truths)
        shuffled = generate_chunked(vlm, config.prompt, feats[perm], paired=False, **gen_kw)
        metrics["recall_shuffled_image"] = chair(shuffled.captions, truths).recall
        metrics["captions_shuffled_image"] = shuffled.captions
    metrics["projector"] = {k: v for k, v in record.items() if k != "config"} if record else {}

    # 2. baseline captions with VHD at every step
    base = generate_chunked(vlm, config.prompt, feats, policy=HeadPolicy("none", distance=config.distance), **gen_kw)
    valid = base.valid.float()[..., None, None]
    vhd_map = (base.vhd * valid).sum((0, 1)) / valid.sum().clamp(min=1)
    tvhd = token_vhd(base.vhd, config.top_k) * base.valid
    before = _scores(base.captions, truths)
    metrics["recall"] = before["recall"]

    # 3. VHR sweep vs random heads
    sweep = []
    runs = {}
    for alpha in tqdm(alphas, desc="VHR sweep", disable=not progress):
        vhr = generate_chunked(vlm, config.prompt, feats, policy=HeadPolicy("vhr", alpha, config.distance, config.seed), **gen_kw)
        rnd = generate_chunked(vlm, config.prompt, feats, policy=HeadPolicy("random", alpha, config.distance, config.seed), **gen_kw)
        row = {"alpha": alpha, "vhr": _scores(vhr.captions, truths), "random": _scores(rnd.captions, truths),
               "heads_per_layer": float(vhr.selected[vhr.valid].float().sum(-1).mean()) if vhr.valid.any() else 0.0}
        sweep.append(row)
        runs[alpha] = (vhr, rnd)
    main_vhr, main_rnd = runs[float(config.alpha)]
    s = vhd_map.shape
    metrics.update({
        "vhd": vhd_map.tolist(),
        "top_heads": top_heads(vhd_map, 10),
        "chair": {"before": before, "after": _scores(main_vhr.captions, truths),
                  "random_control": _scores(main_rnd.captions, truths)},
        "alpha": float(config.alpha),
        "sweep": sweep,
        "object_token_tvhd": object_token_tvhd(base.tokens, tvhd, truths),
        "captions_before": base.captions,
        "captions_after": main_vhr.captions,
        "captions_random": main_rnd.captions,
        "caption_tokens": base.tokens,
        "truths": [list(t) for t in truths],
        "references": [s_.caption for s_ in scenes],
        "n_scenes": len(scenes),
        "vision_tokens": getattr(vlm, "n_image_tokens", None),
        "model": getattr(vlm, "name", None),
        "where": "blocks.{l}.attn.hook_z (per-head output before W_O)",
        "distance": config.distance,
    })
    if picture is not None:
        metrics["user_image"] = caption_one(vlm, picture, config) | {"image": config.image}
    shown = min(N_SHOWN, len(scenes))
    arrays = {
        "vhd_map": vhd_map,
        "vhd_steps": base.vhd,
        "valid": base.valid.to(torch.uint8),
        "tvhd": tvhd,
        "images": torch.from_numpy(np.stack([(sc.image * 255).round().astype(np.uint8) for sc in scenes[:shown]])),
        "selected_rate": main_vhr.selected[main_vhr.valid].float().mean(0) if main_vhr.valid.any() else torch.zeros(s),
    }
    return VHDResult(config=config, metrics=metrics, arrays=arrays,
                     meta=provenance(model=getattr(vlm, "name", "vlm"), seed=config.seed) | {"lm": vlm.lm.name})


def caption_one(model: Any, image: Any, config: VHDConfig | None = None) -> dict[str, Any]:
    """Caption one image before and after VHR (at ``config.alpha``), with T-VHD per token."""
    config = config or VHDConfig()
    check_config(config)
    vlm, _ = get_vlm(model, config, progress=False)
    feats = vlm.encode([image]) if hasattr(vlm, "projector") else [image]
    kw = dict(max_new_tokens=config.max_new_tokens, chunk=1)
    base = generate_chunked(vlm, config.prompt, feats, policy=HeadPolicy("none", distance=config.distance), **kw)
    vhr = generate_chunked(vlm, config.prompt, feats, policy=HeadPolicy("vhr", config.alpha, config.distance), **kw)
    tv = token_vhd(base.vhd, config.top_k)[0, : len(base.tokens[0])]
    return {"caption_before": base.captions[0], "caption_after": vhr.captions[0], "tokens": base.tokens[0],
            "tvhd": [float(x) for x in tv], "objects_before": mentioned_objects(base.captions[0]),
            "objects_after": mentioned_objects(vhr.captions[0])}
