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

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from workbench.errors import InputError
from workbench.results import Result, provenance
from workbench.spec import check_config, option
from workbench.stats import Interval, bootstrap
from workbench.analyses.vision_heads import choice
from workbench.analyses.vision_heads.vlm.chair import chair, mentioned_objects, per_caption
from workbench.analyses.vision_heads.vlm.generate import Captioner, HeadPolicy, generate_chunked
from workbench.analyses.vision_heads.vlm.heads import DISTANCES, token_vhd, top_heads
from workbench.analyses.vision_heads.vlm.model import DEFAULT_PROMPT, feature_grid, split_prompt
from workbench.analyses.vision_heads.vlm.objects import SYNONYMS
from workbench.analyses.vision_heads.vlm.scenes import make_scenes
from workbench.analyses.vision_heads.vlm.train import ProjectorConfig, build_vlm, caption_losses, encode_scenes
from workbench.checks import checked_run

LOSS_SCENES = 16  # test scenes the caption losses are measured on
DEFAULT_ALPHA = 2.0  # caption_one's alpha when none is given (a single image has no validation split)
N_SHOWN = 8  # scenes whose images travel with the result (for the app page)
TOP_K = 10  # T-VHD's default k


HEAD_SETS = ("vhr", "top16")
HEAD_SET_HELP = "'vhr' (per layer and step, heads above the layer median, outliers dropped) or 'top<k>' (the k heads of largest VHD on the validation captions)"


@dataclass
class VHDConfig:
    n_scenes: int = option(128, aliases=("--n",), help="test scenes: captioned and scored with intervals (128: "
                           "enough for the VHR-minus-random-heads interval to exclude 0 at the size measured on 64; "
                           "the headline row says when it does not)", max=10_000)
    n_val: int = option(choice.MIN_VAL, help="validation scenes: alpha and the head set are chosen on them (fewer than "
                        f"{choice.MIN_VAL}: the choice flips between resamples)", min=1, max=10_000)
    alpha: float = option(0.0, help="VHR amplification; 0 (the default) chooses it on the validation scenes from --alphas",
                          min=0.0)
    alphas: tuple[float, ...] = option((1.5, 2.0, 3.0), help="the alphas tried on the validation scenes")
    head_set: str = option("auto", help="the heads VHR scales: 'auto' (chosen on the validation scenes from --head-sets), "
                           + HEAD_SET_HELP)
    head_sets: tuple[str, ...] = option(HEAD_SETS, help="the head sets tried on the validation scenes: " + HEAD_SET_HELP)
    random_draws: int = option(5, help="draws of the random-heads control (as many heads as VHR scales)", min=1, max=100)
    top_k: int = option(TOP_K, help="T-VHD: mean of the k largest head VHDs per token (at most the model's heads; "
                        f"the default {TOP_K} becomes the head count on a smaller model)", min=1)
    distance: str = option("l2", help="distance between the head outputs with and without the image", choices=DISTANCES)
    max_new_tokens: int = option(12, help="caption tokens generated per scene", min=1)
    prompt: str = option(DEFAULT_PROMPT, help="must hold one <image> placeholder")
    seed: int = 0
    batch_size: int = option(32, help="scenes per decoding batch", min=1)
    projector_steps: int = option(ProjectorConfig.steps, help="caption-loss steps when the projector is built", min=0)
    projector_n_train: int = option(ProjectorConfig.n_train, help="training scenes when the projector is built", min=1)
    grid: int = option(ProjectorConfig.grid, help="visual tokens per side; 0: the encoder's last feature map "
                       "(ceil(image size / 32))", min=0)
    image_size: int = option(ProjectorConfig.image_size, help="scene and encoder input size in pixels", min=32)
    image: str | None = option(None, help="also caption this image (file path or shipped photo name) before/after VHR")
    llava: str | None = option(None, help="a local Hugging Face LLaVA folder (LlavaForConditionalGeneration) to analyse "
                               "instead of the built model (--dtype applies)")
    vlm: str | None = option(None, help="a local SmolVLM / Idefics3 folder to analyse instead of the built model "
                             "(--dtype applies)")
    renamed: ClassVar[dict[str, str]] = {"chunk": "batch_size"}

    def validate(self) -> None:
        """Cross-field checks, run before any model loads."""
        if self.n_scenes < 1:  # the message names the field as older callers matched it
            raise InputError(f"--n-scenes (n_scenes) must be at least 1 (got {self.n_scenes})")
        for a in self.alphas:
            if not a > 0:
                raise InputError(f"--alphas must be positive (got {a})")
        if not self.alphas and self.alpha == 0:
            raise InputError("--alphas is empty and --alpha is 0; give alphas to choose from, or --alpha 1.5")
        for hs in self.head_sets:
            parse_head_set(hs)
        if self.head_set != "auto":
            parse_head_set(self.head_set)
        if not self.head_sets and self.head_set == "auto":
            raise InputError("--head-sets is empty and --head-set is auto; give head sets to choose from, or --head-set vhr")
        split_prompt(self.prompt)
        if self.llava and self.vlm:
            raise InputError("--llava and --vlm both given; analyse one model at a time (drop one of them)")
        if self.llava or self.vlm:
            from workbench.analyses.vision_heads.vlm.hf_vlm import check_folder

            check_folder(self.llava or self.vlm, "llava" if self.llava else "smolvlm")
        if self.image is not None:
            from workbench.vision.images import load_image

            load_image(self.image)


def parse_head_set(name: str) -> int:
    """``vhr`` -> 0, ``top<k>`` -> k; a one-line error otherwise."""
    if name == "vhr":
        return 0
    if name.startswith("top") and name[3:].isdigit() and int(name[3:]) > 0:
        return int(name[3:])
    raise InputError(f"unknown head set '{name}'; use {HEAD_SET_HELP}, e.g. --head-sets vhr --head-sets top16")


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
    if config.head_sets == HEAD_SETS:  # the default: fixed sets larger than the model are left out, as for top_k
        config.head_sets = tuple(h for h in HEAD_SETS if parse_head_set(h) <= total)
    sets = config.head_sets if config.head_set == "auto" else (config.head_set,)
    for hs in sets:
        if parse_head_set(hs) > total:
            raise InputError(f"head set {hs} is more heads than {getattr(lm, 'name', 'the model')} has "
                             f"({shape.n_layers} layers x {shape.n_heads} = {total}); choose top{total} or fewer")


def estimate_bytes(config: VHDConfig, target: Any) -> int:
    """The spec's memory estimate before a run: every held-out scene's image is kept
    (``image_size`` squared x 3 float32), and the logits of the forwards over many scenes
    (scenes x positions x vocab, counted for every test and validation scene: an upper bound
    now that the caption losses use at most 16 scenes and decoding runs in batches) dominate
    at the default size; positions: the prompt, grid x grid visual tokens and a caption.

    Calibration (tiny-llama, CPU, ru_maxrss over the RSS after the model loaded, --image-size 64,
    --grid 2, 3 new tokens): --n-scenes 16 / 128: 0.29 / 0.69 GB, 3.6 MB a scene over about
    0.23 GB (the encoder, the projector); this estimate: 0.26 / 0.71 GB."""
    lm = language_model(target)
    shape = getattr(lm, "shape", None)
    n = config.n_scenes + config.n_val
    images = n * config.image_size ** 2 * 3 * 4
    if shape is None or getattr(lm, "tokenizer", None) is None:
        return int(FIXED_BYTES + images)
    # cpu: only its element size is read
    size = torch.empty((), dtype=lm.dtype).element_size() if hasattr(lm, "dtype") else 4
    pos = len(lm.tokenizer.encode(config.prompt)) + feature_grid(config.image_size, config.grid) ** 2 + CAPTION_TOKENS
    return int(FIXED_BYTES + images + n * pos * shape.d_vocab * size)


CAPTION_TOKENS = 10  # " a cat, a cup and a rocket."
FIXED_BYTES = 200 * 2**20  # the image encoder and the projector


def projector_config(config: VHDConfig, lm_name: str) -> ProjectorConfig:
    return ProjectorConfig(lm=lm_name, grid=config.grid, image_size=config.image_size, n_train=config.projector_n_train,
                           steps=config.projector_steps, seed=0, prompt=ProjectorConfig.prompt)


def load_folder_vlm(config: VHDConfig, device: str = "cpu", dtype: str = "float32") -> Any:
    """The local Hugging Face VLM of ``--llava`` or ``--vlm`` behind the interface the analysis
    uses (``workbench.analyses.vision_heads.vlm.hf_vlm``); a one-line error for a missing or wrong folder."""
    from workbench.analyses.vision_heads.vlm.hf_vlm import check_folder, load_hf_vlm

    kind, folder = ("llava", config.llava) if config.llava else ("smolvlm", config.vlm)
    check_folder(folder, kind)
    print(f"loading {kind} from {folder} ...", file=sys.stderr, flush=True)
    return load_hf_vlm(folder, kind, device=device, dtype=dtype)


def load_target(config: VHDConfig, common: Any) -> Any:
    """What ``workbench vhd`` analyses: the folder of ``--llava`` / ``--vlm``, else the
    ``--model`` language model (the projector and encoder are built around it in ``run``)."""
    if config.llava or config.vlm:
        return load_folder_vlm(config, common.device, common.dtype)
    from workbench.models import load_model

    print(f"loading {common.model} ({common.backend}, {common.device}, {common.dtype}) ...", file=sys.stderr, flush=True)
    return load_model(common.model, backend=common.backend, device=common.device, dtype=common.dtype)


def needs_model(config: VHDConfig) -> bool:
    """``--llava`` / ``--vlm`` replace the language model; otherwise the run needs one."""
    return not (config.llava or config.vlm)


def get_vlm(model: Any, config: VHDConfig, progress: bool = True) -> tuple[Any, dict]:
    """The vision-language model to analyse: a given adapter, the ``llava`` folder of the
    config, or ours built on ``model``."""
    if model is not None and hasattr(model, "paired_batch"):
        return model, {}
    if model is None and (config.llava or config.vlm):
        return load_folder_vlm(config), {}
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
            "n_mentioned": s.n_mentioned, "mentioned_per_caption": s.n_mentioned / max(s.n_captions, 1)}


def objective(scores: dict[str, float]) -> float:
    """What the validation scenes maximise: recall of present objects minus CHAIR_i (fewer
    hallucinations without naming fewer true objects)."""
    return float(scores["recall"]) - float(scores["chair_i"])


CRITERION = choice.CRITERION


def choose(sweep: list[dict[str, Any]], before: np.ndarray, settings: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """The validation choice among the ``sweep`` rows (``choice.CRITERION``) from per-scene counts
    (``before`` and one per row, ``choice.counts``), with its bootstrap stability."""
    out = choice.choose(before, settings, [r.alpha for r in sweep], seed=seed)
    return {**out, "settings": [f"{r.head_set} alpha {r.alpha:g}" for r in sweep]}


METRICS = ("chair_i", "chair_s", "recall", "mentioned")


def caption_intervals(runs: list[list[str]], truths, split: str, seed: int = 0) -> dict[str, Interval]:
    """Bootstrap intervals over scenes for CHAIR_i, CHAIR_s, recall and objects mentioned per
    caption; ``runs`` holds one or more caption lists of the same scenes (the random-heads draws),
    pooled per scene (ratios of sums; CHAIR_s and mentions averaged over the draws)."""
    parts = [per_caption(c, truths) for c in runs]
    total = {k: np.sum([p[k] for p in parts], axis=0).astype(float) for k in parts[0]}
    k = len(parts)
    bad = np.mean([np.asarray(p["hallucinated"]) > 0 for p in parts], axis=0).astype(float)
    ratio = lambda a: float(a[:, 0].sum() / a[:, 1].sum()) if a[:, 1].sum() else 0.0  # noqa: E731
    return {
        "chair_i": bootstrap(np.stack([total["hallucinated"], total["mentioned"]], 1), ratio, seed=seed, split=split),
        "chair_s": bootstrap(bad, seed=seed, split=split),
        "recall": bootstrap(np.stack([total["hits"], total["n_true"]], 1), ratio, seed=seed, split=split),
        "mentioned": bootstrap(total["mentioned"] / k, seed=seed, split=split),
    }


def diff_interval(a: list[str], b: list[str], truths, metric: str, split: str, seed: int = 0) -> Interval:
    """Paired bootstrap over scenes of ``metric`` (chair_i or recall) of captions ``a`` minus ``b``."""
    pa, pb = per_caption(a, truths), per_caption(b, truths)
    num, den = ("hallucinated", "mentioned") if metric == "chair_i" else ("hits", "n_true")
    rows = np.stack([pa[num], pa[den], pb[num], pb[den]], 1).astype(float)

    def stat(r: np.ndarray) -> float:
        ra = r[:, 0].sum() / r[:, 1].sum() if r[:, 1].sum() else 0.0
        rb = r[:, 2].sum() / r[:, 3].sum() if r[:, 3].sum() else 0.0
        return float(ra - rb)

    iv = bootstrap(rows, stat, seed=seed, split=split)
    return Interval(iv.value, iv.low, iv.high, iv.n, "paired bootstrap", iv.level, split)


def head_policy(head_set: str, alpha: float, config: VHDConfig, vhd_map: torch.Tensor, seed: int | None = None,
                random_heads: bool = False) -> HeadPolicy:
    """The policy of a head set at ``alpha``: ``vhr`` (its random control draws as many heads
    per layer and step) or ``top<k>`` (the k heads of largest ``vhd_map``; its control k random heads)."""
    k = parse_head_set(head_set)
    seed = config.seed if seed is None else seed
    if k == 0:
        return HeadPolicy("random" if random_heads else "vhr", alpha, config.distance, seed)
    flat = vhd_map.flatten()
    if random_heads:
        # cpu: a head order from a CPU generator; the mask is moved where it patches
        order = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:k]
    else:
        order = torch.argsort(flat, descending=True)[:k]
    # cpu: a head order from a CPU generator; the mask is moved where it patches
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order] = True
    return HeadPolicy("fixed", alpha, config.distance, seed, heads=mask.view(vhd_map.shape))


@dataclass(frozen=True)
class SweepRow:
    """One validation setting: its head set, alpha, CHAIR scores (``_scores``) and recall - CHAIR_i."""

    head_set: str
    alpha: float
    vhr: dict[str, float]
    objective: float


@dataclass(frozen=True)
class Choice:
    """The validation choice (``choice.choose``): the chosen row, whether it was admissible, the
    share of bootstrap resamples of the validation scenes choosing it and each setting, the floors."""

    index: int
    admissible: bool
    stability: float
    shares: list[float]
    n_resamples: int
    recall_floor: float
    mentioned_floor: float
    settings: list[str]


@dataclass(frozen=True)
class ProjectorRecord:
    """The projector's build record (``vlm.train.build_vlm``), with the sha256 of its weights."""

    loss_curve: list[float] = dataclasses.field(default_factory=list)
    train_seconds: float | None = None
    cached: str | None = None
    sha256: str | None = None
    artifact: str | None = None
    build: str | None = None
    threads: int | None = None
    deterministic: bool | None = None


@dataclass(frozen=True)
class VisionHead:
    """A head and its mean VHD."""

    layer: int
    head: int
    name: str
    vhd: float


@dataclass(kw_only=True)
class VHDResult(Result):
    """VHD map, T-VHD, the validation choice of VHR and CHAIR on the test scenes against controls.
    Splits: ``splits`` says where each figure comes from."""

    analysis = "vhd"

    config: VHDConfig
    # arrays
    vhd_map: Float[Tensor, "layer head"]  # mean VHD over decoding steps of the test captions
    vhd_map_val: Float[Tensor, "layer head"] | None = None  # on the validation captions (what top<k> uses)
    vhd_steps: Float[Tensor, "scene step layer head"]  # every decoding step of the unmodified test captions
    valid: Tensor  # [scene step] 1 where a caption token was generated (uint8)
    tvhd: Float[Tensor, "scene step"]  # mean of the top-k head VHDs at each generated token
    images: Tensor  # [shown height width 3] uint8: the first test scenes (at most N_SHOWN)
    selected_rate: Float[Tensor, "layer head"]  # how often the chosen setting scaled each head (test)
    # the settings of the run
    alpha: float  # the amplification reported as "after"
    head_set: str  # the head set reported as "after"
    chosen_by: str  # "val" (chosen there) or "given"
    heads_scaled_per_step: float = 0.0
    criterion: str = ""
    choice: Choice | None = None  # None when the setting was given
    sweep: list[SweepRow] = dataclasses.field(default_factory=list)
    val_before: dict[str, float] = dataclasses.field(default_factory=dict)
    splits: dict[str, str] = dataclasses.field(default_factory=dict)
    n_scenes: int  # test scenes
    n_val: int = 0  # validation scenes
    random_draws: int = 1
    distance: str = "l2"
    where: str = ""  # the hook point VHD is measured at
    vision_tokens: int | None = None
    model: str | None = None
    # heads and CHAIR (test)
    top_heads: list[VisionHead]
    chair: dict[str, dict[str, float]]  # condition -> chair_i, chair_s, recall, mean_words, n_mentioned, ...
    object_token_tvhd: dict[str, Any] = dataclasses.field(default_factory=dict)
    # captions (test)
    captions_before: list[str]
    captions_after: list[str]
    captions_random: list[str]  # the first random-heads draw
    captions_all_heads: list[str] = dataclasses.field(default_factory=list)
    captions_shuffled_image: list[str] | None = None
    caption_tokens: list[list[str]]
    truths: list[list[str]]
    references: list[str]
    # does the model see? (None for an adapter without a projector)
    recall: float
    recall_shuffled_image: float | None = None
    caption_loss: float | None = None
    caption_loss_shuffled_image: float | None = None
    caption_loss_no_image: float | None = None
    caption_loss_n: int | None = None
    object_rank_recall: float | None = None
    object_rank_recall_shuffled_image: float | None = None
    object_rank_recall_chance: float | None = None
    projector: ProjectorRecord | None = None  # None when a given adapter was analysed
    user_image: dict[str, Any] | None = None  # the --image captioned before and after VHR

    @classmethod
    def from_v1(cls, metrics: dict[str, Any], arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """Format 1 kept an empty projector record as ``{}`` and the heads without a record type."""
        metrics = dict(metrics)
        proj = metrics.get("projector") or None
        metrics["projector"] = None if not proj else {k: v for k, v in proj.items()
                                                      if k in {f.name for f in dataclasses.fields(ProjectorRecord)}}
        return metrics, arrays

    @property
    def n_shown(self) -> int:
        """Scenes whose images travel with the result."""
        return int(self.images.shape[0])

    @property
    def loss_curve(self) -> list[float]:
        """The projector's training caption loss per step (empty for a given adapter)."""
        return list(self.projector.loss_curve) if self.projector else []

    @property
    def chair_intervals(self) -> dict[str, dict[str, Interval]]:
        """Test-split bootstrap intervals: condition -> metric (``chair_i``, ``chair_s``,
        ``recall``, ``mentioned``) -> Interval; conditions as in ``chair``."""
        ivs = self.intervals
        return {cond: {m: ivs[f"{m} {cond}"] for m in METRICS if f"{m} {cond}" in ivs} for cond in CONDITIONS}

    def summary(self) -> dict[str, Any]:
        from workbench.results import plain_json

        out = {"vhd": self.vhd_map.tolist(), "top_heads": [dataclasses.asdict(h) for h in self.top_heads],
               "chair": self.chair, "alpha": self.alpha, "head_set": self.head_set, "chosen_by": self.chosen_by,
               "splits": self.splits, "n_scenes": self.n_scenes, "n_val": self.n_val,
               "intervals": {k: iv.to_dict() for k, iv in self.intervals.items()},
               "validation": {"before": self.val_before, "sweep": [dataclasses.asdict(r) for r in self.sweep],
                              "choice": dataclasses.asdict(self.choice) if self.choice else {}}}
        if self.path is not None:
            out["run"] = str(self.path)
        return plain_json(out)


CONDITIONS = ("before", "after", "random_control", "all_heads")


@checked_run  # the Python door makes the command line's checks (workbench.checks)
def run(model: Any = None, config: VHDConfig | None = None, progress: bool | Any = True) -> VHDResult:
    """Build (or load) the VLM; choose alpha and the head set on validation scenes; caption test
    scenes before and after VHR, with random heads and with all heads scaled; map VHD."""
    config = config or VHDConfig()
    check_config(config)
    show = bool(progress)
    picture = None
    if config.image is not None:
        from workbench.vision.images import load_image

        picture = load_image(config.image)[0]
    vlm, record = get_vlm(model, config, show)
    own = hasattr(vlm, "projector")
    scenes = make_scenes(config.n_scenes, "test", seed=config.seed, size=config.image_size)
    val_scenes = make_scenes(config.n_val, "val", seed=config.seed, size=config.image_size)
    truths = [s.objects for s in scenes]
    val_truths = [s.objects for s in val_scenes]
    if own:
        feats = encode_scenes(vlm, scenes, progress=show)
        val_feats = encode_scenes(vlm, val_scenes, progress=show)
    else:
        feats, val_feats = [s.image for s in scenes], [s.image for s in val_scenes]
    gen_kw = dict(max_new_tokens=config.max_new_tokens, chunk=config.batch_size, progress=show)
    captioners: dict[int, Captioner] = {}

    def caption(features, policy: HeadPolicy | None = None, paired: bool = True):
        key = id(features)
        if key not in captioners:
            captioners[key] = Captioner(vlm, config.prompt, features, **gen_kw)
        return captioners[key](policy, paired=paired)

    # 1. does it see? (test scenes) caption loss and recall against image-free baselines
    metrics: dict[str, Any] = {}
    if own:
        # cpu: indexes a Python list of scenes
        perm = torch.roll(torch.arange(len(scenes)), 1)  # each scene gets its neighbour's image
        m = min(len(scenes), LOSS_SCENES)  # the caption losses on the first test scenes (one forward each)
        with torch.no_grad():
            caps = [s.caption for s in scenes[:m]]
            metrics["caption_loss"] = float(caption_losses(vlm, config.prompt, feats[:m], caps).mean())
            metrics["caption_loss_shuffled_image"] = float(caption_losses(vlm, config.prompt, feats[perm][:m], caps).mean())
            metrics["caption_loss_no_image"] = float(caption_losses(vlm, config.prompt, None, caps).mean())
            metrics["caption_loss_n"] = m
        shuffled = generate_chunked(vlm, config.prompt, feats[perm], paired=False, **gen_kw)
        metrics["recall_shuffled_image"] = chair(shuffled.captions, truths).recall
        metrics["captions_shuffled_image"] = shuffled.captions
    known = {f.name for f in dataclasses.fields(ProjectorRecord)}
    metrics["projector"] = ProjectorRecord(**{k: v for k, v in record.items() if k in known}) if record else None

    # 2. validation: VHD map, then every (head set, alpha) against the validation objective
    val_base = caption(val_feats, HeadPolicy("none", distance=config.distance))
    vmask = val_base.valid.float()[..., None, None]
    vhd_map_val = (val_base.vhd * vmask).sum((0, 1)) / vmask.sum().clamp(min=1)
    val_before = _scores(val_base.captions, val_truths)
    sets = config.head_sets if config.head_set == "auto" else (config.head_set,)
    alphas = config.alphas if config.alpha == 0 else (config.alpha,)
    candidates = [(h, float(a)) for h in sets for a in alphas]
    sweep, setting_counts, chosen = [], [], {}
    if len(candidates) == 1:
        head_set, alpha = candidates[0]
        chosen_by = "given"
    else:
        for h, a in tqdm(candidates, desc="validation sweep", disable=not show):
            pol = head_policy(h, a, config, vhd_map_val)
            g = caption(val_feats, pol, paired=pol.mode != "fixed")
            sc = _scores(g.captions, val_truths)
            sweep.append(SweepRow(h, a, sc, objective(sc)))
            setting_counts.append(choice.counts(g.captions, val_truths))
        chosen = choose(sweep, choice.counts(val_base.captions, val_truths), setting_counts, seed=config.seed)
        best = sweep[chosen["index"]]
        head_set, alpha = best.head_set, best.alpha
        chosen_by = "val"

    # 3. test: before (with VHD), the chosen VHR, random heads, all heads
    base = caption(feats, HeadPolicy("none", distance=config.distance))
    valid = base.valid.float()[..., None, None]
    vhd_map = (base.vhd * valid).sum((0, 1)) / valid.sum().clamp(min=1)
    tvhd = token_vhd(base.vhd, config.top_k) * base.valid
    pol = head_policy(head_set, alpha, config, vhd_map_val)
    vhr = caption(feats, pol, paired=pol.mode != "fixed")
    randoms = []
    for d in tqdm(range(config.random_draws), desc="random heads", disable=not show):
        rp = head_policy(head_set, alpha, config, vhd_map_val, seed=config.seed + 1 + d, random_heads=True)
        randoms.append(caption(feats, rp, paired=rp.mode != "fixed"))
    every = caption(feats, HeadPolicy("all", alpha, config.distance), paired=False)

    before = _scores(base.captions, truths)
    rnd_caps = [c for r in randoms for c in r.captions]
    rnd_truths = [t for _ in randoms for t in truths]
    chair_scores = {"before": before, "after": _scores(vhr.captions, truths),
                    "random_control": _scores(rnd_caps, rnd_truths), "all_heads": _scores(every.captions, truths)}
    metrics["recall"] = before["recall"]
    if vhr.valid.any():
        heads_scaled = float(vhr.selected[vhr.valid].float().sum((-1, -2)).mean())
    else:
        heads_scaled = 0.0
    s = vhd_map.shape
    metrics.update({
        "top_heads": [VisionHead(**h) for h in top_heads(vhd_map, 10)],
        "chair": chair_scores,
        "alpha": float(alpha),
        "head_set": head_set,
        "chosen_by": chosen_by,
        "heads_scaled_per_step": heads_scaled,
        "criterion": CRITERION,
        "choice": Choice(**chosen) if chosen else None,
        "sweep": sweep,
        "val_before": val_before,
        "splits": {"chair": "test", "intervals": "test", "vhd": "test", "top_heads": "test", "captions": "test",
                   "recall": "test", "caption_loss": "test", "object_rank_recall": "test", "sweep": "val",
                   "val_before": "val", "alpha": "val" if chosen_by == "val" else "given",
                   "head_set": "val" if chosen_by == "val" else "given", "top<k> heads": "val",
                   "projector": "train"},
        "object_token_tvhd": object_token_tvhd(base.tokens, tvhd, truths),
        "captions_before": base.captions,
        "captions_after": vhr.captions,
        "captions_random": randoms[0].captions,
        "captions_all_heads": every.captions,
        "caption_tokens": base.tokens,
        "truths": [list(t) for t in truths],
        "references": [s_.caption for s_ in scenes],
        "n_scenes": len(scenes),
        "n_val": len(val_scenes),
        "random_draws": config.random_draws,
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
        "vhd_map_val": vhd_map_val,
        "vhd_steps": base.vhd,
        "valid": base.valid.to(torch.uint8),
        "tvhd": tvhd,
        "images": torch.from_numpy(np.stack([(sc.image * 255).round().astype(np.uint8) for sc in scenes[:shown]])),
        # cpu: a result array
        "selected_rate": vhr.selected[vhr.valid].float().mean(0) if vhr.valid.any() else torch.zeros(s),
    }
    meta = provenance(model=getattr(vlm, "name", "vlm"), seed=config.seed) | {"lm": vlm.lm.name}
    if record.get("sha256"):  # the trained projector this run measured (workbench.artifacts)
        from workbench.artifacts import provenance_entry

        meta["artifacts"] = [provenance_entry(record["artifact"], record["sha256"])]
    result = VHDResult(config=config, meta=meta, **metrics, **arrays)
    runs = {"before": [base.captions], "after": [vhr.captions], "random_control": [r.captions for r in randoms],
            "all_heads": [every.captions]}
    for cond, caps_ in runs.items():
        for m, iv in caption_intervals(caps_, truths, "test", seed=config.seed).items():
            result.set_interval(f"{m} {cond}", iv)
    for other in ("before", "random_control", "all_heads"):
        for m in ("chair_i", "recall"):
            result.set_interval(f"{m} after - {other}",
                                diff_interval(vhr.captions * len(runs[other]), [c for cs in runs[other] for c in cs],
                                              list(truths) * len(runs[other]), m, "test", seed=config.seed))
    return result


def caption_one(model: Any, image: Any, config: VHDConfig | None = None) -> dict[str, Any]:
    """Caption one image before and after VHR (at ``config.alpha``), with T-VHD per token."""
    config = config or VHDConfig()
    check_config(config)
    vlm, _ = get_vlm(model, config, progress=False)
    feats = vlm.encode([image]) if hasattr(vlm, "projector") else [image]
    kw = dict(max_new_tokens=config.max_new_tokens, chunk=1)
    base = generate_chunked(vlm, config.prompt, feats, policy=HeadPolicy("none", distance=config.distance), **kw)
    vhr = generate_chunked(vlm, config.prompt, feats, policy=HeadPolicy("vhr", config.alpha or DEFAULT_ALPHA, config.distance),
                           **kw)
    tv = token_vhd(base.vhd, config.top_k)[0, : len(base.tokens[0])]
    return {"caption_before": base.captions[0], "caption_after": vhr.captions[0], "tokens": base.tokens[0],
            "tvhd": [float(x) for x in tv], "objects_before": mentioned_objects(base.captions[0]),
            "objects_after": mentioned_objects(vhr.captions[0])}
