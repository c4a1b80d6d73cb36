"""The retrieval analysis's settings, their checks before a run, and its memory estimate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from workbench.datasets.needles import HELDOUT_NEEDLES, RANKING_NEEDLES, read_haystack
from workbench.errors import InputError
from workbench.heads import MASK_MODES
from workbench.spec import option


@dataclass
class RetrievalConfig:
    context_lengths: tuple[int, ...] = option((256,), flag="--lengths",
                                              help="comma-separated context lengths (tokens), both splits", min=1)
    depths: tuple[float, ...] = option((25, 50, 75), help="comma-separated needle depths (percent)", min=0, max=100)
    n_needles: int = option(4, flag="--needles", help=f"ranking needles: heads are scored on these "
                            f"(1-{len(RANKING_NEEDLES)})", min=1, max=len(RANKING_NEEDLES))
    n_eval_needles: int = option(16, flag="--eval-needles", help=f"held-out needles, in another haystack: masking and "
                                 f"KV compression are measured on these (1-{len(HELDOUT_NEEDLES)})",
                                 min=1, max=len(HELDOUT_NEEDLES))
    haystack_file: str | None = option(None, flag="--haystack",
                                       help="a text file to use as haystack, its first half for ranking and its "
                                            "second half held out (default: the Python docs, topics dealt in two)")
    chat: bool = option(True, help="wrap prompts in the tokenizer's chat template")
    max_new_tokens: int = option(24, help="answer tokens decoded at most", min=1)
    # the two thresholds are range-checked in validate() (its "outside 0..1" message is the documented one)
    threshold: float = option(0.1, help="retrieval heads score over this (0..1)")
    rouge_threshold: float = option(0.5, help="a test counts when the answer's ROUGE-1 recall is over this (0..1)")
    mask_ks: tuple[int, ...] = option((2, 5, 10), flag="--ks", help="comma-separated numbers of heads to mask",
                                      min=1)
    n_random: int = option(2, flag="--random", help="random-head draws per k (and for the KV control)", min=0)
    mask_mode: str = option("query", help="query (Wu et al.: uniform attention) | zero (z = 0)", choices=MASK_MODES)
    kv_protect: int = option(20, help="top retrieval heads that keep the full KV cache", min=0)
    kv_sink: int = option(4, help="first tokens kept by compressed heads", min=0)
    kv_window: int = option(64, help="recent tokens kept by compressed heads", min=1)
    batch_size: int = option(4, help="ranking needle prompts per prefill forward pass (held-out: as many as "
                                     "--decode-rows holds with all their decoding configurations)", min=1)
    decode_rows: int = option(52, help="rows (tests x decoding configurations) decoded together", min=1)
    seed: int = 0
    renamed: ClassVar[dict[str, str]] = {"prefill_batch": "batch_size"}

    def validate(self, model: Any | None = None) -> None:
        """One-line errors for settings a user can fix, before the model loads (and, given
        the model, the masking ks against its head count); an unreadable haystack file too."""
        for name in ("threshold", "rouge_threshold"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise InputError(f"{name}={v} is outside 0..1; pass a value between 0 and 1")
        if self.mask_mode not in MASK_MODES:
            raise InputError(f"unknown mask mode '{self.mask_mode}'; choose one of {', '.join(MASK_MODES)}")
        if not 1 <= self.n_needles <= len(RANKING_NEEDLES):
            raise InputError(f"n_needles={self.n_needles}; choose 1..{len(RANKING_NEEDLES)}")
        if not 1 <= self.n_eval_needles <= len(HELDOUT_NEEDLES):
            raise InputError(f"n_eval_needles={self.n_eval_needles}; choose 1..{len(HELDOUT_NEEDLES)}")
        if self.max_new_tokens < 1 or self.n_random < 0 or self.kv_sink < 0 or self.kv_window < 1:
            raise InputError("max_new_tokens and kv_window must be >= 1, n_random and kv_sink >= 0")
        if not self.context_lengths or not self.depths or not self.mask_ks:
            raise InputError("--lengths, --depths and --ks each need at least one value")
        if self.haystack_file is not None:
            read_haystack(self.haystack_file)
        if model is not None:
            total = model.shape.n_layers * model.shape.n_heads
            bad = [k for k in self.mask_ks if not 0 < int(k) <= total // 2]
            if bad:
                raise InputError(f"--ks {','.join(map(str, bad))}: masking k heads outside 1..{total // 2} "
                                 f"(half of the {total} heads); choose smaller k")

    @property
    def n_ranking_tests(self) -> int:
        return self.n_needles * len(self.context_lengths) * len(self.depths)

    @property
    def n_heldout_tests(self) -> int:
        return self.n_eval_needles * len(self.context_lengths) * len(self.depths)


def validate(config: RetrievalConfig, model: Any | None = None) -> None:
    """``config.validate(model)``: the checks as a function."""
    config.validate(model)


def check_model(config: RetrievalConfig, model: Any) -> None:
    """The spec's check before a run: the masking ks (``validate``), every context length
    within the model's context, and ``--kv-protect``: the KV check protects that many top
    heads and draws as many random heads outside them for its control, so at most half the heads."""
    config.validate(model)
    s = model.shape
    longest = max(int(v) for v in config.context_lengths)
    if longest > s.n_ctx:
        raise InputError(f"--lengths {longest} is longer than {model.name}'s context of {s.n_ctx} tokens; "
                         f"choose lengths up to {s.n_ctx}")
    total = s.n_layers * s.n_heads
    if config.kv_protect > total // 2:
        raise InputError(f"--kv-protect {config.kv_protect} protects that many heads and draws as many random heads "
                         f"for the control, but {model.name} has {total} heads; choose --kv-protect {total // 2} or less")



FIXED_BYTES = 128 * 2**20  # haystack, tokenizer work, scorer: measured on tiny-llama (--lengths 256 / 512: 134 / 143 MB)


def estimate_bytes(config: RetrievalConfig, model: Any) -> int:
    """The spec's memory estimate before a run: the larger of one prefill forward (its KV
    cache, and one layer's eager attention: the mask and two score-sized tensors at once over
    the longest context; the logits of the last position only) and one decoding call (its
    rows' repeated caches, buffered for the answer). Ranking tests are prefilled
    ``batch_size`` at a time and decoded once; held-out tests as many at a time as
    ``decode_rows`` holds with all their configurations. Tests are dropped once decoded, so
    the number of tests does not count beyond one batch.

    Calibration (tiny-llama, CPU, ru_maxrss over the RSS after the model loaded): 33 tests of
    512 tokens in one prefill (--batch-size 33): 0.41 GB; this estimate: 0.47 GB."""
    s = model.shape
    size = torch.empty((), dtype=model.dtype).element_size()  # cpu: only its element size is read
    longest = max(int(v) for v in config.context_lengths)
    n_cfg = 1 + len(config.mask_ks) * (1 + config.n_random) + 1 + config.n_random
    held_batch = min(max(1, config.decode_rows // n_cfg), config.n_heldout_tests)
    batch = max(min(config.batch_size, config.n_ranking_tests), held_batch)
    kv_token = 2 * s.n_layers * s.n_kv_heads * s.d_head * size
    states = batch * longest * kv_token
    prefill_b = batch * longest * size * ((2 * s.n_heads + 1) * longest + 8 * s.d_model)
    rows = max(min(config.batch_size, config.n_ranking_tests),
               held_batch * min(n_cfg, max(1, config.decode_rows // held_batch)))
    decode_b = rows * (longest + config.max_new_tokens) * kv_token * 2
    return int(FIXED_BYTES + states + max(prefill_b, decode_b))
