"""``workbench vhd``: vision-aware head divergence and head reinforcement on a vision-language model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import JSON_OPT, MODEL_OPT, OUT_OPT, SEED_OPT, finish, load, number_list, status


def register(app: typer.Typer) -> None:
    @app.command()
    def vhd(
        model: str = MODEL_OPT,
        n_scenes: int = typer.Option(16, "--n-scenes", help="held-out scenes to caption and score"),
        alpha: float = typer.Option(2.0, "--alpha", help="VHR amplification reported as 'after'"),
        alphas: str = typer.Option("1.5,2,3", "--alphas", help="the alpha sweep, comma-separated"),
        top_k: int = typer.Option(10, "--top-k", help="T-VHD: mean of the k largest head VHDs per token"),
        distance: str = typer.Option("l2", "--distance", help="l2 | cosine"),
        max_new_tokens: int = typer.Option(14, "--max-new-tokens"),
        prompt: str = typer.Option("<image> A photo of", "--prompt", help="must hold one <image> placeholder"),
        image: Optional[str] = typer.Option(None, "--image", help="also caption this image (file path or shipped photo name) before/after VHR"),
        llava: Optional[Path] = typer.Option(None, "--llava", help="a local Hugging Face LLaVA folder to analyse instead (untested offline)"),
        projector_steps: int = typer.Option(48, "--projector-steps", help="caption-loss steps when the projector is built"),
        projector_n_train: int = typer.Option(256, "--projector-n-train", help="training scenes when the projector is built"),
        image_size: int = typer.Option(224, "--image-size", help="scene and encoder input size in pixels"),
        seed: int = SEED_OPT,
        out: Optional[Path] = OUT_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """VHD map, T-VHD and VHR (CHAIR before/after vs random heads) on the EfficientNet + smollm2 VLM."""
        from analyses.vision_heads import VHDConfig, caption_one, check_config, run

        from ..vision.images import load_image

        config = VHDConfig(n_scenes=n_scenes, alpha=alpha, alphas=number_list(alphas, "--alphas", float), top_k=top_k, distance=distance,
                           max_new_tokens=max_new_tokens, prompt=prompt, seed=seed,
                           projector_steps=projector_steps, projector_n_train=projector_n_train, image_size=image_size)
        check_config(config)  # bad input fails before any model loads
        picture = load_image(image)[0] if image is not None else None
        if llava is not None:
            from ..vlm.llava import HFLlavaAdapter

            status(f"loading LLaVA from {llava} ...")
            target = HFLlavaAdapter(str(llava))
        else:
            target = load(model)
        result = run(target, config, progress=True)
        if picture is not None:
            result.metrics["user_image"] = caption_one(target, picture, config) | {"image": image}
        finish(result, out, as_json)
