"""Which Colored Objects prompt format the model can do: accuracy among the three colours in
the prompt (chance 1/3) and over all eight colours (chance 1/8), per format, on a split.

The format is chosen on the development split (``DEV_SEED``) by accuracy among the prompt's
colours; it is reported on the test split (``TEST_SEED``), which chose nothing. Discovery
uses the run's ``--seed`` and held-out faithfulness ``seed + HELD_OUT_OFFSET``; the seeds
draw independent random prompts (a repeat of a prompt across splits is possible but rare:
there are over 10^8 queries).

    python -m analyses.circuits.formats --n 32          # the search, as docs/circuits.md reports it
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.datasets.colored_objects import FORMATS, colored_object_prompts
from workbench.stats import Interval, wilson

DEV_SEED = 1_000
TEST_SEED = 2_000
CHANCE_AMONG_PROMPT = 1 / 3
CHANCE_AMONG_ALL = 1 / 8


@dataclass
class ColourAccuracy:
    """Per prompt: right among the query's three colours, right among all colours, logit difference."""

    among_prompt: torch.Tensor  # [N] bool
    among_all: torch.Tensor  # [N] bool
    logit_diff: torch.Tensor  # [N]

    def interval(self, among: str = "prompt", split: str = "") -> Interval:
        hits = self.among_prompt if among == "prompt" else self.among_all
        return wilson(int(hits.sum()), len(hits), split=split)


def colour_scores(last_logits: torch.Tensor, ps: Any, model: Any) -> ColourAccuracy:
    """Scores from last-token logits [N vocab] of ``ps``'s clean prompts."""
    tok = model.tokenizer
    correct, wrong = ps.answer_ids(model)
    query = torch.tensor([[model.token_id(c) for c in row] for row in ps.meta["query_colors"]], device=last_logits.device)
    cands = torch.tensor([model.token_id(c) for c in ps.meta["candidates"]], device=last_logits.device)
    del tok
    pick_q = query.gather(1, last_logits.gather(1, query).argmax(1, keepdim=True))[:, 0]
    pick_a = cands[last_logits[:, cands].argmax(1)]
    idx = torch.arange(len(correct), device=last_logits.device)
    ld = last_logits[idx, correct] - last_logits[idx, wrong]
    return ColourAccuracy((pick_q == correct).cpu(), (pick_a == correct).cpu(), ld.float().cpu())


def last_logits(model: Any, texts: list[str], batch_size: int = 8) -> torch.Tensor:
    """Last-token logits [N vocab] of ``texts``, in batches."""
    from workbench.cache import as_tokens, forward

    outs = []
    for i in range(0, len(texts), batch_size):
        tokens = as_tokens(model, texts[i:i + batch_size])
        with torch.no_grad():
            logits, _ = forward(model, tokens, [])
        outs.append(logits[torch.arange(len(tokens), device=logits.device), tokens.last_positions].float())
    return torch.cat(outs)


def format_accuracy(model: Any, fmt: str, n: int, seed: int, batch_size: int = 8) -> ColourAccuracy:
    ps = colored_object_prompts(n, model.tokenizer, seed=seed, format=fmt)
    return colour_scores(last_logits(model, ps.prompts, batch_size), ps, model)


def search_formats(model: Any, formats: tuple[str, ...] | None = None, n: int = 32, seed: int = DEV_SEED,
                   batch_size: int = 8, progress: Any = None) -> list[dict[str, Any]]:
    """One row per format on the ``seed`` split (the development split by default), best first
    by accuracy among the prompt's colours (ties: higher logit difference)."""
    rows: list[dict[str, Any]] = []
    names = list(formats or FORMATS)
    for i, fmt in enumerate(names):
        acc = format_accuracy(model, fmt, n, seed, batch_size)
        iv_p, iv_a = acc.interval("prompt", "dev"), acc.interval("all", "dev")
        rows.append({"format": fmt, "n": n, "acc_among_prompt": iv_p.value, "low": iv_p.low, "high": iv_p.high,
                     "acc_among_all": iv_a.value, "logit_diff": float(acc.logit_diff.mean())})
        if callable(progress):
            progress(i + 1, len(names), f"format {fmt}: {iv_p.value:.2f} among the prompt's colours")
    rows.sort(key=lambda r: (-r["acc_among_prompt"], -r["logit_diff"]))
    return rows


def main() -> None:
    import argparse
    import json

    from workbench.models import load_model

    ap = argparse.ArgumentParser(description="Colored Objects format search on the development split")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--test-n", type=int, default=96, help="test-split prompts for the best format")
    ap.add_argument("--formats", default="", help="comma-separated subset of the formats")
    args = ap.parse_args()
    model = load_model(args.model)
    fmts = tuple(f for f in args.formats.split(",") if f) or None
    rows = search_formats(model, fmts, args.n, progress=lambda i, k, msg: print(f"[{i}/{k}] {msg}", flush=True))
    best = rows[0]["format"]
    test = format_accuracy(model, best, args.test_n, TEST_SEED)
    print(json.dumps({"dev": rows, "best": best,
                      "test_among_prompt": test.interval("prompt", "test").to_dict(),
                      "test_among_all": test.interval("all", "test").to_dict(),
                      "chance_among_prompt": CHANCE_AMONG_PROMPT, "chance_among_all": CHANCE_AMONG_ALL}, indent=1))


if __name__ == "__main__":
    main()
