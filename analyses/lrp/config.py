"""The LRP analysis's settings: the prompt config, the image config, the command's options
that pick one of the two, and the spec's checks and memory estimate before a run."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from workbench.errors import InputError
from workbench.spec import option

from .cnn import COMPOSITES
from .tasks import TASKS, successor_questions

if TYPE_CHECKING:
    from workbench.models import Model

METHODS = ("attnlrp", "gradient_x_input", "rollout")
IMAGE_METHODS = ("lrp", "sr", "gradient")
CONSERVATION_TOLERANCE = 1e-3  # relative: |sum(token R) + softmax-absorbed R - target| / |target|
# The defaults of a prompt run, chosen for the size of the test, not by looking at its result:
# 32 prompts per task (the floor) on two tasks, 10 deletions (AOPC's usual K), one random
# order per prompt (the bootstrap over prompts carries the random order's spread). About 40
# forward passes a prompt; 64 prompts take a few minutes on two CPU cores.
DEFAULT_TASKS = TASKS
DEFAULT_N = 32
DEFAULT_MAX_DELETE = 10
DEFAULT_N_RANDOM = 1
SPLIT = "test"  # nothing is fitted or chosen on the prompts: the methods' settings are fixed beforehand

# ============================================================================ prompts
@dataclass
class LrpConfig:
    """Explain prompts. ``prompts`` empty -> ``n_prompts`` prompts of each task in ``tasks``
    (``ioi``: IO minus S; ``successor``: next item minus the item asked about; ``tasks.py``).
    ``target`` / ``contrast``: single tokens (leading space matters); no target -> the model's
    top prediction; no contrast -> the target logit alone."""

    prompts: tuple[str, ...] = ()
    target: str | None = None
    contrast: str | None = None
    tasks: tuple[str, ...] = DEFAULT_TASKS
    n_prompts: int = DEFAULT_N
    seed: int = 0
    max_delete: int = DEFAULT_MAX_DELETE
    n_random: int = DEFAULT_N_RANDOM
    renamed: ClassVar[dict[str, str]] = {"n": "n_prompts"}



# ============================================================================ images
@dataclass
class LrpImageConfig:
    """Explain photographs (shipped names like ``chelsea`` or image file paths) on
    EfficientNet-Lite0: LRP (zennit composite), the SR map and the gradient map, compared by
    deleting ``region`` x ``region`` pixel blocks, ``step`` blocks at a time, ``n_steps`` times."""

    images: tuple[str, ...] = ("chelsea",)
    class_index: int | None = None
    composite: str = "epsilon_gamma_box"
    region: int = 16
    step: int = 4
    n_steps: int = 16
    baseline: str = "blur"
    top_k: int = 5
    sr_grid: int = 56
    image_size: int = 224
    seed: int = 0



# ============================================================================ the command's options
ImageBaseline = Literal["blur", "gray"]
"""What replaces a deleted image region.
blur: a strongly blurred copy (colour kept, shapes lost, no new edges);
gray: zeros after normalisation (the mean colour)."""
IMAGE_BASELINES: tuple[str, ...] = typing.get_args(ImageBaseline)


@dataclass
class LrpOptions:
    """The options of ``workbench lrp``: a prompt run (``--prompt``, or IOI prompts when neither
    ``--prompt`` nor ``--image`` is given) or an image run (``--image``). ``run`` turns them into
    an ``LrpConfig`` or an ``LrpImageConfig``; a saved run keeps that config."""

    prompts: tuple[str, ...] = option((), flag="--prompt", aliases=("-p",),
                                      help="prompt to explain; none and no --image: IOI prompts")
    images: tuple[str, ...] = option((), flag="--image", aliases=("-i",),
                                     help="image file or shipped photo (chelsea, coffee, astronaut, ...; "
                                          "'all' = every shipped photo)")
    target: str | None = option(None, help="answer token to explain (leading space matters, e.g. ' Mary'); "
                                           "default: the top prediction")
    contrast: str | None = option(None, help="explain logit(target) - logit(contrast) instead of one logit")
    tasks: tuple[str, ...] = option((), flag="--task", choices=TASKS,
                                    help="prompt task(s) when no --prompt is given (repeat for several; default: ioi "
                                         "and successor): ioi (IO minus S), successor (next month/day/letter/number "
                                         "minus the last item listed)")
    n_prompts: int = option(DEFAULT_N, flag="--n", help="prompts per task when no --prompt is given",
                            min=1, max=100_000)
    max_delete: int = option(DEFAULT_MAX_DELETE, help="tokens deleted in the faithfulness test", min=1)
    n_random: int = option(DEFAULT_N_RANDOM, help="random deletion orders per prompt (the random baseline)", min=0)
    class_index: int = option(-1, flag="--class", help="ImageNet class to explain (-1: the top-1 class)",
                              min=-1, max=999)
    composite: str = option("epsilon_gamma_box", help="LRP rules for the CNN", choices=COMPOSITES)
    baseline: ImageBaseline = option("blur", help="what replaces deleted image regions", choices=IMAGE_BASELINES)
    image_size: int = option(224, flag="--size", help="image side in pixels fed to the CNN (224 = as trained)", min=32)
    n_steps: int = option(16, flag="--steps", help="deletion steps for images (4 regions of 16x16 each)", min=1)
    seed: int = 0

    def validate(self) -> None:
        if self.prompts and self.images:
            raise InputError("give either --prompt or --image, not both")
        from workbench.vision.images import image_source

        for image in self.images:  # a missing file, a folder or a pipe, before the CNN is built
            if image != "all":
                image_source(image)
        if any(not p.strip() for p in self.prompts):
            raise InputError("the prompt is empty; give some text to explain with --prompt")
        n_successor = len(successor_questions())
        if not self.prompts and not self.images and "successor" in (self.tasks or DEFAULT_TASKS) \
                and self.n_prompts > n_successor:
            raise InputError(f"--n {self.n_prompts}: the successor task has {n_successor} questions; "
                             f"use --n {n_successor} or less, or --task ioi alone")
        region = LrpImageConfig.region
        if self.images and self.image_size % region:
            raise InputError(f"--size {self.image_size} is not a multiple of the {region}-pixel deletion regions; "
                             f"use --size {max(32, self.image_size // region * region)}")

    @property
    def explains_images(self) -> bool:
        return bool(self.images)

    def analysis_config(self) -> LrpConfig | LrpImageConfig:
        """The config of the run these options ask for (``all`` expands to every shipped photo)."""
        self.validate()
        if self.images:
            from workbench.vision import PHOTOS

            images = tuple(p for spec in self.images for p in (PHOTOS if spec == "all" else (spec,)))
            return LrpImageConfig(images=images, class_index=None if self.class_index < 0 else self.class_index, composite=self.composite,
                                  baseline=self.baseline, image_size=self.image_size, n_steps=self.n_steps,
                                  seed=self.seed)
        return LrpConfig(prompts=self.prompts, target=self.target, contrast=self.contrast, tasks=self.tasks or DEFAULT_TASKS,
                         n_prompts=self.n_prompts, seed=self.seed, max_delete=self.max_delete, n_random=self.n_random)


def check_model(config: LrpOptions, model: Model | None) -> None:
    """The spec's check before a run: every ``--prompt`` fits the language model's context."""
    if model is None or not getattr(config, "prompts", ()):
        return
    from workbench.tokens import check_context

    for i, p in enumerate(config.prompts):
        n_tokens = len(model.tokenizer(p)["input_ids"])
        what = "--prompt" if len(config.prompts) == 1 else f"--prompt {i + 1} of {len(config.prompts)}"
        check_context(model, n_tokens, what)


# Peak memory of an image run, per pixel of the --size x --size input, measured (CPU, float32,
# ru_maxrss over the RSS before the run) on chelsea: --size 224 / 448 at 16 deletion steps:
# 0.67 / 1.68 GB, 6,700 bytes a pixel (LRP and the gradient map keep every layer's activations
# for the backward pass), over about 0.33 GB for the network and its libraries; 64 steps
# instead of 16 at 224: 0.60 GB (the deletion images, 12 bytes a pixel a step, are in the noise).
# This estimate: 0.65 / 1.6 GB.
IMAGE_BYTES_PER_PIXEL = 6_500
IMAGE_FIXED_BYTES = 330 * 2**20


def estimate_bytes(config: Any, model: Model | None) -> int:
    """The spec's memory estimate before a run: image runs scale with --size squared (and the
    deletion steps); prompt runs hold one prompt at a time (its length is checked by ``check_model``)."""
    if not getattr(config, "images", ()):
        return 0
    pixels = config.image_size ** 2
    images = config.analysis_config().images if hasattr(config, "analysis_config") else config.images
    n_images = len(images)
    per_pixel = IMAGE_BYTES_PER_PIXEL + 12 * (config.n_steps + 1) + 15 * n_images
    return int(IMAGE_FIXED_BYTES + pixels * per_pixel)


def wants_language_model(config: Any) -> bool:
    """Prompt runs explain a language model (``--model``); image runs build the CNN themselves."""
    return not (isinstance(config, LrpImageConfig) or getattr(config, "explains_images", False))
