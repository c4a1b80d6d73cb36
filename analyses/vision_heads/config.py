"""The vision-heads run's settings (``VHDConfig``), their checks before any model loads, and
the head-set names (``vhr``, ``top<k>``) they take."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from workbench.errors import InputError
from workbench.spec import option

from . import choice
from .vlm.model import DEFAULT_PROMPT, split_prompt
from .vlm.heads import DISTANCES
from .vlm.train import ProjectorConfig

DEFAULT_ALPHA = 2.0  # caption_one's alpha when none is given (a single image has no validation split)
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
        folder = self.llava or self.vlm
        if folder:
            from .vlm.hf_vlm import check_folder

            check_folder(folder, "llava" if self.llava else "smolvlm")
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


def candidate_sets(config: VHDConfig) -> tuple[str, ...]:
    """The head sets the validation scenes choose among (the given one alone, unless ``auto``)."""
    return config.head_sets if config.head_set == "auto" else (config.head_set,)


def candidate_alphas(config: VHDConfig) -> tuple[float, ...]:
    """The alphas the validation scenes choose among (the given one alone, unless 0)."""
    return config.alphas if config.alpha == 0 else (config.alpha,)
