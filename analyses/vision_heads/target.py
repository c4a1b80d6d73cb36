"""What the vision-heads run analyses: the language model of ``--model`` with our encoder and
projector built around it, or a local Hugging Face VLM folder (``--llava`` / ``--vlm``); the
spec's checks on it before a run (``check_model``, ``estimate_bytes``)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import torch

from workbench.errors import InputError

from .config import HEAD_SETS, TOP_K, VHDConfig, candidate_sets, parse_head_set
from .vlm.model import PairedBatch, VisionLanguageModel, feature_grid
from .vlm.train import ProjectorConfig, build_vlm

if TYPE_CHECKING:
    from workbench.models import Model

CAPTION_TOKENS = 10  # " a cat, a cup and a rocket."
FIXED_BYTES = 200 * 2**20  # the image encoder and the projector


class SeeingModel(Protocol):
    """What the analysis uses of a vision-language model: ours (``vlm.model.VisionLanguageModel``)
    or a Hugging Face folder's (``vlm.hf_vlm.HFVisionAdapter``)."""

    name: str

    @property
    def lm(self) -> Any: ...

    def token_embeds(self, ids: torch.Tensor) -> torch.Tensor: ...

    def paired_batch(self, prompt: str, images: Any) -> PairedBatch: ...


def is_vlm(target: object) -> TypeGuard[SeeingModel]:
    """A vision-language model already (it builds paired batches), not a language model to build one on."""
    return hasattr(target, "paired_batch")


def has_projector(vlm: object) -> TypeGuard[VisionLanguageModel]:
    """Ours (an encoder and a projector), whose scene features and caption losses the run measures."""
    return hasattr(vlm, "projector")


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
    for hs in candidate_sets(config):
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


def projector_config(config: VHDConfig, lm_name: str) -> ProjectorConfig:
    return ProjectorConfig(lm=lm_name, grid=config.grid, image_size=config.image_size, n_train=config.projector_n_train,
                           steps=config.projector_steps, seed=0, prompt=ProjectorConfig.prompt)


def load_folder_vlm(config: VHDConfig, device: str = "cpu", dtype: str = "float32") -> SeeingModel:
    """The local Hugging Face VLM of ``--llava`` or ``--vlm`` behind the interface the analysis
    uses (``workbench.analyses.vision_heads.vlm.hf_vlm``); a one-line error for a missing or wrong folder."""
    from .vlm.hf_vlm import check_folder, load_hf_vlm

    kind, folder = ("llava", config.llava) if config.llava else ("smolvlm", config.vlm)
    if folder is None:
        raise InputError("neither --llava nor --vlm names a folder; give one of them")
    check_folder(folder, kind)
    print(f"loading {kind} from {folder} ...", file=sys.stderr, flush=True)
    return load_hf_vlm(folder, kind, device=device, dtype=dtype)


def load_target(config: VHDConfig, common: Any) -> Model | SeeingModel:
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


def get_vlm(model: Model | SeeingModel | None, config: VHDConfig,
            progress: bool = True) -> tuple[SeeingModel, dict[str, Any]]:
    """The vision-language model to analyse: a given adapter, the ``llava`` folder of the
    config, or ours built on ``model``."""
    if model is not None and is_vlm(model):
        return model, {}
    if model is None and (config.llava or config.vlm):
        return load_folder_vlm(config), {}
    name = getattr(model, "name", None) or ProjectorConfig.lm
    return build_vlm(model, projector_config(config, name), progress=progress)
