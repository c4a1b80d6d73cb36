"""Decoding the needle tests: prefilled a batch at a time, decoded unpatched with the
retrieval scorer (ranking) or under every masking and KV configuration at once (held-out)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.datasets.needles import NeedleTest
from workbench.generation import Prefill, decode, prefill
from workbench.heads import mask_patches

from .config import RetrievalConfig
from .kv import kv_compression_patches
from .scoring import RetrievalScorer, rouge1_recall


def prefilled(model: Any, tests: list[NeedleTest], batch_size: int, desc: str, progress: bool):
    """Yield (test indices, Prefill) ``batch_size`` tests at a time, similar lengths together;
    each state is dropped by the caller once decoded."""
    order = sorted(range(len(tests)), key=lambda i: len(tests[i].ids))
    for b in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[b:b + batch_size]
        yield idx, prefill(model, [tests[i].ids for i in idx])


def answer_spans(tests: list[NeedleTest], idx: list[int], state: Prefill) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer spans in the left-padded coordinates [rows 2] and the pad offsets [rows]."""
    # cpu: answer spans from Python lists; the scorer moves them to the prompt's device
    off = torch.tensor([state.prompt_len - len(tests[i].ids) for i in idx])
    # cpu: answer spans from Python lists; the scorer moves them to the prompt's device
    spans = torch.tensor([[tests[i].answer_start, tests[i].answer_end] for i in idx]) + off[:, None]
    return spans, off


def decode_scored(model: Any, tests: list[NeedleTest], idx: list[int], state: Prefill, cfg: RetrievalConfig,
           stops: list[int]) -> tuple[torch.Tensor, list[str]]:
    """Unpatched greedy decoding with the retrieval scorer: per-test scores [rows layer head], answers."""
    s = model.shape
    spans, _ = answer_spans(tests, idx, state)
    scorer = RetrievalScorer(state.input_ids, spans, s.n_layers, s.n_heads, cfg.max_new_tokens)
    gen = decode(model, state, cfg.max_new_tokens, stops, read=scorer.names(), on_step=scorer)
    return scorer.scores, gen.texts(model.tokenizer)


def decode_all(model: Any, tests: list[NeedleTest], idx: list[int], state: Prefill, cfg: RetrievalConfig,
                stops: list[int], head_masks: torch.Tensor, kv_full: torch.Tensor) -> tuple[torch.Tensor, list[list[str]]]:
    """Decode the state's tests under every configuration c: heads ``head_masks[c]`` [layer head]
    masked and KV heads outside ``kv_full[c]`` [layer kv_head] compressed (configuration 0 is
    the unpatched model), in as few calls as ``decode_rows`` allows: the weights are read once
    per step for all rows. Returns the unpatched rows' retrieval scores [tests layer head]
    and texts[test][configuration]."""
    s = model.shape
    n_tests, n_cfg = len(idx), head_masks.shape[0]
    spans, off = answer_spans(tests, idx, state)
    per = max(1, cfg.decode_rows // max(1, n_tests))
    texts = [[""] * n_cfg for _ in range(n_tests)]
    # cpu: per-test scores, gathered by row copies (a row copy crosses devices)
    scores = torch.zeros(n_tests, s.n_layers, s.n_heads)
    for g in range(0, n_cfg, per):
        group = list(range(g, min(g + per, n_cfg)))
        rep = len(group)
        patches = dict(mask_patches(head_masks[group], cfg.mask_mode)) if head_masks[group].any() else {}
        if not bool(kv_full[group].all()):
            patches.update(kv_compression_patches(kv_full[group], rep, s.n_heads, off, cfg.kv_sink, cfg.kv_window))
        scorer = None
        if 0 in group:  # rows are test-major: row r is test r // rep under configuration group[r % rep]
            scorer = RetrievalScorer(state.input_ids.repeat_interleave(rep, 0), spans.repeat_interleave(rep, 0),
                                     s.n_layers, s.n_heads, cfg.max_new_tokens)
        gen = decode(model, state, cfg.max_new_tokens, stops, patches=patches, repeat=rep,
                     read=scorer.names() if scorer else (), on_step=scorer)
        out = gen.texts(model.tokenizer)
        for j in range(n_tests):
            for c_i, c in enumerate(group):
                texts[j][c] = out[j * rep + c_i]
            if scorer is not None:
                scores[j] = scorer.scores[j * rep + group.index(0)]
    return scores, texts


def recalled(test: NeedleTest, text: str, threshold: float) -> bool:
    return rouge1_recall(test.needle.answer, text) > threshold


def mean_over_draws(success: torch.Tensor) -> np.ndarray:
    """[tests draws] successes -> each test's success rate over the draws."""
    return success.float().mean(1).cpu().numpy()
