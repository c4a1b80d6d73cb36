"""The ranking / held-out split of the retrieval analysis: the two splits share no needle and
no haystack text, the Result says which figure comes from which split and how big each is,
and, end to end on a hand-built model whose retrieval head is known, the head is found on
the ranking split and its masking (and its KV protection) decides the held-out accuracy
while random heads do not."""
from __future__ import annotations

import pytest
import torch

from workbench.analyses.retrieval.analysis import RetrievalConfig, run
from workbench.datasets.needles import (HELDOUT_NEEDLES, RANKING_NEEDLES, drop_shared_lines, prompt_parts,
                                        split_pydoc_haystack, split_tests)
from workbench.errors import InputError

COPY_HEAD = (1, 2)  # tiny-llama: layer 1, query head 2 (KV head 1 of 2)


def _haystack_windows(tok, ns, n: int = 12) -> set[tuple[int, ...]]:
    """Every n-token window of haystack text in a split's prompts (template and needle left out)."""
    out: set[tuple[int, ...]] = set()
    for t in ns.tests:
        before, after = prompt_parts(tok, t.needle.question, True)
        lead = len(tok.encode(t.needle.lead, add_special_tokens=False))
        for part in (t.ids[len(before):t.answer_start - lead], t.ids[t.answer_end:len(t.ids) - len(after)]):
            out |= {tuple(part[i:i + n]) for i in range(len(part) - n + 1)}
    return out


def test_ranking_and_heldout_splits_share_no_needle_and_no_haystack_text(tiny_llama):
    tok = tiny_llama.tokenizer
    rank, held = split_tests(tok, [512], [25, 50, 75], len(RANKING_NEEDLES), len(HELDOUT_NEEDLES))
    assert {t.split for t in rank.tests} == {"ranking"} and {t.split for t in held.tests} == {"heldout"}
    assert len(rank) == len(RANKING_NEEDLES) * 3 and len(held) == len(HELDOUT_NEEDLES) * 3
    # different needles: no lead, answer or question in common
    for part in ("lead", "answer", "question"):
        assert not {getattr(n, part) for n in RANKING_NEEDLES} & {getattr(n, part) for n in HELDOUT_NEEDLES}, part
    assert {t.needle for t in rank.tests} <= set(RANKING_NEEDLES) and {t.needle for t in held.tests} <= set(HELDOUT_NEEDLES)
    # different haystack text: not one 12-token window of haystack in common
    r, h = _haystack_windows(tok, rank), _haystack_windows(tok, held)
    assert len(r) > 1000 and len(h) > 1000
    assert not r & h
    # and within a split every needle reads its own stretch of the haystack
    starts = {(t.needle, t.haystack_start) for t in held.tests}
    assert len({s for _, s in starts}) == len(HELDOUT_NEEDLES)


def test_pydoc_halves_share_no_line():
    ranking, heldout = split_pydoc_haystack()
    norm = lambda s: {" ".join(line.split()) for line in s.splitlines()} - {""}  # noqa: E731
    assert not norm(ranking) & norm(heldout)
    assert len(ranking) > 200_000 and len(heldout) > 100_000
    assert drop_shared_lines("a b\nc  d\ne", "c d\nx") == "a b\ne"


def test_split_sizes_are_checked(tiny_llama):
    with pytest.raises(InputError, match="held-out needles"):
        split_tests(tiny_llama.tokenizer, [300], [50], 1, len(HELDOUT_NEEDLES) + 1)
    with pytest.raises(InputError, match="ranking needles"):
        split_tests(tiny_llama.tokenizer, [300], [50], 0, 1)


def test_user_haystack_is_split_in_halves(tmp_path, tiny_llama):
    story = tmp_path / "story.txt"
    story.write_text("\n\n".join(f"Paragraph {i} tells of the river number {i} and its {i * 7} fish." for i in range(200)))
    rank, held = split_tests(tiny_llama.tokenizer, [200], [50], 1, 1, haystack_file=story)
    assert "first half" in rank.source and "second half" in held.source
    text = lambda ns: tiny_llama.tokenizer.decode(ns.tests[0].ids)  # noqa: E731
    assert "Paragraph 0 " in text(rank) and "Paragraph 0 " not in text(held)


# ---------------------------------------------------------------------------- the result says which split
def test_result_records_both_splits_and_which_figure_comes_from_which(tiny_llama):
    cfg = RetrievalConfig(context_lengths=(120,), depths=(25, 75), n_needles=1, n_eval_needles=2, mask_ks=(1, 2),
                          n_random=2, kv_protect=2, max_new_tokens=3, kv_window=8)
    r = run(tiny_llama, cfg, progress=False)
    sp = r.splits
    assert sp["ranking"].n_tests == cfg.n_ranking_tests == 2 and sp["heldout"].n_tests == cfg.n_heldout_tests == 4
    assert sp["ranking"].haystack != sp["heldout"].haystack
    assert r.figure_splits["masking curves"] == "heldout" and r.figure_splits["KV compression"] == "heldout"
    assert r.figure_splits["retrieval scores and head ranking"] == "ranking"
    assert r.masking.split == "heldout" and r.masking.n_tests == 4 and r.masking.k == [0, 1, 2]
    assert r.kv_compression.split == "heldout" and r.kv_compression.n_tests == 4
    ivs = r.intervals
    for k in (1, 2):
        assert ivs[f"top-{k} retrieval heads masked"].n == 4 and ivs[f"top-{k} retrieval heads masked"].split == "heldout"
        assert ivs[f"{k} random heads masked (2 draws)"].split == "heldout"
    assert ivs["needle accuracy, unmasked (ranking)"].n == 2
    assert r.mask_success.shape == (4, 2 * 3) and r.kv_success.shape == (4, 3)
    # the masking curve's bounds are the stored intervals'
    assert r.masking.top_low[1] == ivs["top-1 retrieval heads masked"].low


# ---------------------------------------------------------------------------- known answer, end to end
@pytest.fixture
def planted_retrieval_model():
    """tiny-llama rewired so that head L1H2 is a retrieval head and nothing else can answer:

    every attention output and MLP is zero except L1H2, whose OV circuit copies the attended
    token's embedding (x30) into the residual stream, and the needles' answer tokens are the
    only tokens with embeddings in the dimensions it reads (tied unembedding), so the model
    answers only by copying through L1H2. At decode step s L1H2 attends to the s-th answer
    token of the needle in its prompt, *when it can see it*: a masked query (uniform
    attention) or a key hidden by KV compression leaves its attention as it was, and the
    copy fails, as a real retrieval head's would."""
    from planted_heads import plant_copy_head
    from workbench.models import load_model

    model = load_model("tiny-llama")
    hf, s = model.hf, model.shape
    cfg = RetrievalConfig(context_lengths=(160,), depths=(30, 70), n_needles=1, n_eval_needles=3, chat=False,
                          batch_size=1, decode_rows=10, mask_ks=(1, 2), n_random=2, kv_protect=1, kv_sink=2,
                          kv_window=4, max_new_tokens=1, mask_mode="query")
    rank, held = split_tests(model.tokenizer, list(cfg.context_lengths), list(cfg.depths), cfg.n_needles,
                             cfg.n_eval_needles, n_ctx=s.n_ctx, chat=False)
    tests = rank.tests + held.tests
    where = {tuple(t.ids[:-1]): t for t in tests}  # the prefill sees all but the last prompt token
    answer_ids = sorted({i for t in tests for i in t.ids[t.answer_start:t.answer_end]})
    plant_copy_head(model, COPY_HEAD, answer_ids, scale=30)
    state: dict = {}

    def keep_ids(module, inputs, output):
        state["ids"] = inputs[0].detach()

    def plant(module, inputs, pattern):
        _, _, q, k = pattern.shape
        if q > 1:  # the prefill: which test is this (one test per prefill)
            state["test"], state["prefill_len"] = where[tuple(state["ids"][0].tolist())], k
            return pattern
        t = state["test"]
        target = t.answer_start + min(k - state["prefill_len"] - 1, t.answer_len - 1)
        p = pattern[:, COPY_HEAD[1], 0]  # [rows key]
        visible = p[:, target] > 0  # not hidden by KV compression
        uniform = torch.stack([(row[row > 0].max() - row[row > 0].min()) < 1e-7 for row in p])  # zeroed query
        plant_rows = visible & ~uniform
        pattern = pattern.clone()
        pattern[plant_rows, COPY_HEAD[1], 0] = torch.nn.functional.one_hot(torch.tensor(target), k).to(pattern.dtype)
        return pattern

    handles = [hf.model.embed_tokens.register_forward_hook(keep_ids),
               model.hook_points[f"blocks.{COPY_HEAD[0]}.attn.hook_pattern"].register_forward_hook(plant)]
    cfg = RetrievalConfig(**{**cfg.__dict__, "max_new_tokens": max(t.answer_len for t in tests)})
    try:
        yield model, cfg
    finally:
        for h in handles:
            h.remove()


def test_planted_head_ranks_first_and_decides_the_heldout_figures(planted_retrieval_model):
    model, cfg = planted_retrieval_model
    r = run(model, cfg, progress=False)
    # ranking split: the planted head is the retrieval head, the only one over the threshold
    assert r.needle_accuracy == 1.0
    assert r.retrieval_heads[0].name == "L1H2" and r.retrieval_heads[0].score >= 0.9
    assert r.n_retrieval_heads == 1
    # held-out split (other needles, other text): the model answers every test unmasked ...
    mk = r.masking
    assert mk.split == "heldout" and mk.n_tests == cfg.n_heldout_tests == 6
    assert mk.top_accuracy[0] == 1.0
    # ... masking the top head (by zeroing its query, Wu et al.) breaks every test, random heads none
    assert mk.top_accuracy[1:] == [0.0, 0.0]
    assert mk.random_accuracy[1:] == [1.0, 1.0]
    # KV compression: the planted head's KV head kept in full keeps every answer; the same
    # budget on a random head loses them (its KV head compressed to 2 sinks + 4 recent tokens)
    # unless the draw shares the planted head's KV head (L1H3: tiny-llama groups heads 2-3)
    kv = r.kv_compression
    assert kv.protected_heads == ["L1H2"] and len(kv.random_protected_heads) == 2
    assert kv.accuracy == 1.0
    shares = [float(any(h in ("L1H2", "L1H3") for h in draw)) for draw in kv.random_protected_heads]
    assert kv.random_protected_accuracy == pytest.approx(sum(shares) / len(shares))
    assert 0.0 in shares  # at least one draw compresses the planted head's KV (the seed's draws)
    # the held-out scores replicate the ranking: the same head on top
    assert r.replication is not None and r.replication.heldout_top_heads[0] == "L1H2"
    top = r.intervals["top-1 retrieval heads masked"]
    assert (top.value, top.n, top.split) == (0.0, 6, "heldout") and top.high < 0.5
