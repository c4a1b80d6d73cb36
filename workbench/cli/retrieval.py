"""``workbench retrieval`` (Wu et al.'s retrieval heads, masking test, KV compression) and
``workbench sinks`` (ACT's attention sinks and calibration)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import BACKEND_OPT, DEVICE_OPT, JSON_OPT, MODEL_OPT, OUT_OPT, SEED_OPT, finish, load, number_list, status


def register(app: typer.Typer) -> None:
    @app.command()
    def retrieval(
        model: str = MODEL_OPT,
        lengths: str = typer.Option("250,500,1000", "--lengths", help="comma-separated context lengths (tokens)"),
        depths: str = typer.Option("25,75", "--depths", help="comma-separated needle depths (percent)"),
        needles: int = typer.Option(2, "--needles", help="how many of the built-in needles (1-3)"),
        haystack: Optional[Path] = typer.Option(None, "--haystack", help="a text file to use as haystack (default: the Python docs)"),
        threshold: float = typer.Option(0.1, "--threshold", help="retrieval heads score over this (0..1)"),
        ks: str = typer.Option("2,5,10,20", "--ks", help="comma-separated numbers of heads to mask"),
        n_random: int = typer.Option(2, "--random", help="random-head draws per k"),
        mask_mode: str = typer.Option("query", "--mask-mode", help="query (Wu et al.: uniform attention) | zero (z = 0)"),
        max_new_tokens: int = typer.Option(24, "--max-new-tokens", help="answer tokens decoded at most"),
        kv_protect: int = typer.Option(20, "--kv-protect", help="top retrieval heads that keep the full KV cache"),
        kv_window: int = typer.Option(64, "--kv-window", help="recent tokens kept by compressed heads"),
        chat: bool = typer.Option(True, "--chat/--no-chat", help="wrap prompts in the tokenizer's chat template"),
        seed: int = SEED_OPT,
        backend: str = BACKEND_OPT,
        device: str = DEVICE_OPT,
        out: Optional[Path] = OUT_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Retrieval heads on needle-in-a-haystack: scores, masking curves, KV-compression check."""
        from analyses.retrieval_heads import RetrievalConfig, run, validate

        config = RetrievalConfig(
            context_lengths=number_list(lengths, "--lengths", int), depths=number_list(depths, "--depths", float), n_needles=needles,
            haystack_file=str(haystack) if haystack else None, threshold=threshold, mask_ks=number_list(ks, "--ks", int),
            n_random=n_random, mask_mode=mask_mode, max_new_tokens=max_new_tokens, kv_protect=kv_protect,
            kv_window=kv_window, chat=chat, seed=seed,
        )
        validate(config)  # bad settings fail before the model loads
        if haystack is not None:
            from ..datasets.needles import read_haystack

            read_haystack(haystack)
        m = load(model, backend, device)
        status(f"retrieval: lengths={config.context_lengths} depths={config.depths} needles={needles}")
        result = run(m, config, progress=True)
        finish(result, out, as_json)

    @app.command()
    def sinks(
        model: str = MODEL_OPT,
        threshold: float = typer.Option(0.1, "--threshold", help="a position is a sink when its column-mean attention is over this (0..1)"),
        beta: float = typer.Option(0.4, "--beta", help="calibration keeps this share of attention on non-first sinks (0..1)"),
        n_calib: int = typer.Option(32, "--n-calib", help="calibration questions (head search)"),
        n_heldout: int = typer.Option(48, "--n-heldout", help="held-out questions (accuracy before/after)"),
        max_search: int = typer.Option(16, "--max-search", help="candidate heads tried in the search"),
        seed: int = SEED_OPT,
        backend: str = BACKEND_OPT,
        device: str = DEVICE_OPT,
        out: Optional[Path] = OUT_OPT,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Attention sinks beyond the first token (ACT), massive activations, and attention calibration."""
        from analyses.attention_sinks import SinksConfig, run, validate

        config = SinksConfig(threshold=threshold, beta=beta, n_calib=n_calib, n_heldout=n_heldout,
                             max_search=max_search, seed=seed)
        validate(config)
        m = load(model, backend, device)
        status(f"sinks: threshold={threshold} beta={beta} calib={n_calib} held-out={n_heldout}")
        result = run(m, config, progress=True)
        finish(result, out, as_json)
