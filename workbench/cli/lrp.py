"""``workbench lrp``: AttnLRP on a prompt (token and head relevance, compared with gradient x input
and attention rollout by the deletion test) or LRP and the SR map on an image (EfficientNet-Lite0)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import JSON_OPT, MODEL_OPT, OUT_OPT, SEED_OPT, finish, load, status


def register(app: typer.Typer) -> None:
    @app.command("lrp")
    def lrp_cmd(
        prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="prompt to explain (repeatable); none and no --image: IOI prompts"),
        image: Optional[List[str]] = typer.Option(None, "--image", "-i", help="image file or shipped photo (chelsea, coffee, astronaut, ...; repeatable; 'all' = every shipped photo)"),
        target: Optional[str] = typer.Option(None, "--target", help="answer token to explain (leading space matters, e.g. ' Mary'); default: the top prediction"),
        contrast: Optional[str] = typer.Option(None, "--contrast", help="explain logit(target) - logit(contrast) instead of one logit"),
        n: int = typer.Option(8, "--n", help="IOI prompts when no --prompt is given"),
        max_delete: int = typer.Option(10, "--max-delete", help="tokens deleted in the faithfulness test"),
        class_index: Optional[int] = typer.Option(None, "--class", help="ImageNet class to explain (default: top-1)"),
        composite: str = typer.Option("epsilon_gamma_box", "--composite", help="LRP rules for the CNN: epsilon_gamma_box | epsilon_plus_flat"),
        baseline: str = typer.Option("blur", "--baseline", help="what replaces deleted image regions: blur | gray"),
        size: int = typer.Option(224, "--size", help="image side in pixels fed to the CNN (224 = as trained)"),
        steps: int = typer.Option(16, "--steps", help="deletion steps for images (4 regions of 16x16 each)"),
        model: str = MODEL_OPT,
        seed: int = SEED_OPT,
        out: Optional[Path] = OUT_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Explain a prompt with AttnLRP (or an image with LRP and the SR map) and score each method by deletion."""
        from analyses.lrp_saliency import LrpConfig, LrpImageConfig, run

        from ..errors import InputError

        if prompt and image:
            raise InputError("give either --prompt or --image, not both")
        if image:
            from workbench.vision import PHOTOS

            images = tuple(p for spec in image for p in (PHOTOS if spec == "all" else (spec,)))
            config = LrpImageConfig(images=images, class_index=class_index, composite=composite, baseline=baseline,
                                    image_size=size, n_steps=steps, seed=seed)
            status(f"explaining {len(images)} image(s) on EfficientNet-Lite0 ...")
            result = run(None, config, progress=not as_json)
        else:
            if prompt is not None and any(not p.strip() for p in prompt):
                raise InputError("the prompt is empty; give some text to explain with --prompt")
            config = LrpConfig(prompts=tuple(prompt or ()), target=target, contrast=contrast, n=n, seed=seed,
                               max_delete=max_delete)
            m = load(model)
            result = run(m, config, progress=not as_json)
            if not as_json and "io_share" in result.metrics:
                status(f"IO token share of relevance: {result.metrics['io_share']}")
        finish(result, out, as_json)
