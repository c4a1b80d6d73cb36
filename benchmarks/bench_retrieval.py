"""Cost of Wu et al.'s retrieval scoring on top of generation, measured in one run on the
same needle tests:

* plain:  batched greedy decoding with a KV cache (prefill + decode), no readers;
* scored: the same decoding with every layer's newest-query pattern read and scored per step;
* naive:  one uncached forward of the whole growing sequence per step per test, patterns
          cached through ``run_with_cache`` (what scoring costs without a KV cache).

Usage: python benchmarks/bench_retrieval.py [--model smollm2-135m] [--lengths 250] [--steps 12] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workbench.analyses.retrieval.analysis import RetrievalScorer  # noqa: E402
from workbench.cache import run_with_cache  # noqa: E402
from workbench.datasets.needles import DEFAULT_NEEDLES, build_needle_tests  # noqa: E402
from workbench.generation import decode, prefill  # noqa: E402
from workbench.models import load_model  # noqa: E402


def _spans(tests, state):
    off = torch.tensor([state.prompt_len - len(t.ids) for t in tests])
    return torch.tensor([[t.answer_start, t.answer_end] for t in tests]) + off[:, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="250")
    ap.add_argument("--depths", default="50")
    ap.add_argument("--needles", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="decode steps (no early stop, so every variant does the same work)")
    ap.add_argument("--no-naive", action="store_true", help="skip the uncached per-step baseline")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    model = load_model(args.model)
    s = model.shape
    ns = build_needle_tests(model.tokenizer, [int(x) for x in args.lengths.split(",")],
                            [float(x) for x in args.depths.split(",")], DEFAULT_NEEDLES[: args.needles], n_ctx=s.n_ctx)
    tests = ns.tests
    prompts = [t.ids for t in tests]
    prefill(model, prompts[:1])  # warm-up

    t0 = time.perf_counter()
    state = prefill(model, prompts)
    plain = decode(model, state, args.steps)
    t_plain = time.perf_counter() - t0

    t0 = time.perf_counter()
    state = prefill(model, prompts)
    scorer = RetrievalScorer(state.input_ids, _spans(tests, state), s.n_layers, s.n_heads, args.steps)
    scored = decode(model, state, args.steps, read=scorer.names(), on_step=scorer)
    t_scored = time.perf_counter() - t0
    assert scored.new_tokens.tolist() == plain.new_tokens.tolist()

    t_naive = None
    agree = None
    if not args.no_naive:
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(s.n_layers)]
        t0 = time.perf_counter()
        naive_scores = torch.zeros(len(tests), s.n_layers, s.n_heads)
        for i, t in enumerate(tests):
            seq = list(t.ids)
            for step in range(args.steps):
                logits, cache = run_with_cache(model, torch.tensor([seq]), names)
                tok = int(logits[0, -1].argmax())
                for l in range(s.n_layers):
                    top = cache[names[l]][0, :, -1].argmax(-1)
                    for h in range(s.n_heads):
                        j = int(top[h])
                        if t.answer_start <= j < t.answer_end and seq[j] == tok:
                            naive_scores[i, l, h] += 1 / t.answer_len
                seq.append(tok)
        t_naive = time.perf_counter() - t0
        agree = float((naive_scores - scorer.scores).abs().max())

    rows = [("plain greedy decoding (KV cache, batched)", t_plain),
            ("greedy decoding + retrieval scoring (KV cache, batched)", t_scored)]
    if t_naive is not None:
        rows.append(("naive scoring (uncached forward per step per test)", t_naive))
    out = {
        "model": args.model, "tests": len(tests), "prompt_tokens": [len(p) for p in prompts], "steps": args.steps,
        "threads": torch.get_num_threads(),
        "plain_s": round(t_plain, 3), "scored_s": round(t_scored, 3),
        "scoring_overhead_ratio": round(t_scored / t_plain, 3),
        "naive_s": None if t_naive is None else round(t_naive, 3),
        "naive_over_scored_ratio": None if t_naive is None else round(t_naive / t_scored, 2),
        "max_score_difference_naive_vs_batched": agree,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{len(tests)} needle tests of {out['prompt_tokens']} tokens, {args.steps} decode steps, model {args.model}, "
          f"{out['threads']} threads")
    print(f"{'variant':<60}{'seconds':>10}")
    for name, sec in rows:
        print(f"{name:<60}{sec:>10.2f}")
    print(f"scoring on top of generation: x{out['scoring_overhead_ratio']:.2f} the time of plain decoding")
    if t_naive is not None:
        print(f"naive uncached scoring: x{out['naive_over_scored_ratio']:.1f} slower than batched cached scoring "
              f"(max score difference {agree:.2e})")


if __name__ == "__main__":
    main()
