"""The head atlas: the known answer on a hand-built model (a planted induction head and a
planted copy head each top their own column and not the other's), columns that come from
the specs alone (a new per-head analysis adds its column with no atlas change), the
cross-column statistics against exact answers, two models lined up by depth, the saved
tables, the CLI, the ablation report's atlas section and the page."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.analyses.atlas import crossstats
from workbench.analyses.atlas.analysis import AtlasConfig, AtlasResult, run
from workbench.errors import InputError
from workbench.results import load_result
from workbench.spec import AnalysisSpec, HeadColumn, check_config

INDUCTION_HEAD = (1, 0)  # query head 0 (KV head 0) of tiny-llama's layer 1
COPY_HEAD = (1, 2)  # query head 2 (KV head 1)
CONTEXT = 160


# ----------------------------------------------------------------------------- the hand-built model
@contextmanager
def induction_and_copy_model():
    """tiny-llama rewired by hand, with two planted heads in layer 1:

    * L1H0, an induction head: from each token it attends to the token after that token's most
      recent earlier occurrence (read from the input ids), and writes nothing (W_O = 0);
    * L1H2, a copy head: at decode step s it attends to the s-th answer token of the needle and
      its OV circuit copies that token's embedding into the residual stream (x80), so the model
      really answers the needle question by copying; elsewhere it keeps its random attention.

    Every other attention output and every MLP is zero; the needle's answer tokens have unit
    embeddings in the 16 dimensions L1H2's values read (tied unembedding), every other token a
    small random embedding outside them."""
    from workbench.datasets.needles import split_tests
    from planted_heads import plant_copy_head
    from workbench.models import load_model

    model = load_model("tiny-llama")
    hf, s = model.hf, model.shape
    ranking, _ = split_tests(model.tokenizer, [CONTEXT], [50.0], 1, 1, n_ctx=s.n_ctx, chat=False)
    needle = ranking.tests[0]  # the test the retrieval scores come from (the ranking split)
    answer = needle.ids[needle.answer_start:needle.answer_end]
    plant_copy_head(model, COPY_HEAD, answer, scale=10)
    state = {"ids": None, "seq": None}

    def keep_ids(module, inputs, output):
        state["ids"] = inputs[0].detach()

    def plant(module, inputs, pattern):
        b, _, q, k = pattern.shape
        ids = state["ids"].to(pattern.device)
        if q == k or state["seq"] is None:
            seq = ids
        else:
            prev = state["seq"][:, : k - q]
            if prev.shape[0] != b:  # decoding several configurations per prefilled row (row i * repeat + c)
                prev = prev[:1].expand(b, -1) if prev.shape[0] == 1 else prev.repeat_interleave(b // prev.shape[0], 0)
            seq = torch.cat([prev, ids], dim=1)
        state["seq"] = seq
        pattern = pattern.clone()
        qpos = torch.arange(k - q, k, device=pattern.device)
        keys = torch.arange(k, device=pattern.device)
        same = (seq[:, None, :] == seq[:, qpos, None]) & (keys[None, None, :] < qpos[None, :, None])  # [b q k]
        last = torch.where(same, keys, torch.full_like(keys, -1)).max(-1).values  # most recent earlier occurrence
        target = torch.where(last >= 0, last + 1, torch.zeros_like(last))
        pattern[:, INDUCTION_HEAD[1]] = torch.nn.functional.one_hot(target, k).to(pattern.dtype)
        if q == 1 and k >= len(needle.ids):  # decoding the answer: step s copies answer token s
            step = min(k - len(needle.ids), len(answer) - 1)
            pattern[:, COPY_HEAD[1], 0] = 0
            pattern[:, COPY_HEAD[1], 0, needle.answer_start + step] = 1
        return pattern

    handles = [hf.model.embed_tokens.register_forward_hook(keep_ids),
               model.hook_points[f"blocks.{INDUCTION_HEAD[0]}.attn.hook_pattern"].register_forward_hook(plant)]
    try:
        yield model, needle
    finally:
        for h in handles:
            h.remove()


def test_planted_heads_top_their_own_column_and_not_the_other():
    from workbench.analyses.induction.analysis import InductionConfig
    from workbench.analyses.induction.analysis import run as run_induction
    from workbench.analyses.retrieval.analysis import RetrievalConfig
    from workbench.analyses.retrieval.analysis import run as run_retrieval

    with induction_and_copy_model() as (model, needle):
        induction = run_induction(model, InductionConfig(n_prompts=6, seq_len=8, batch_size=6), progress=False)
        retrieval = run_retrieval(model, RetrievalConfig(context_lengths=(CONTEXT,), depths=(50.0,), n_needles=1,
                                                         n_eval_needles=1, chat=False,
                                                         max_new_tokens=needle.answer_len, mask_ks=(1,),
                                                         n_random=0, kv_protect=0), progress=False)
        assert retrieval.needle_accuracy == 1.0  # the hand-built model really answers by copying
        induction.save()
        retrieval.save()
        atlas = run(model, AtlasConfig(models=("tiny-llama",), analyses=("induction", "retrieval"), n_prompts=2,
                                       n_permutations=50), progress=False)
    ind, ret = atlas.column("induction_score"), atlas.column("retrieval_score")
    assert abs(float(ind[INDUCTION_HEAD]) - 1.0) < 1e-5 and abs(float(ret[COPY_HEAD]) - 1.0) < 1e-5
    top = atlas.atlas().top_heads
    name = lambda lh: f"L{lh[0]}H{lh[1]}"  # noqa: E731
    assert top["induction_score"][0].head == name(INDUCTION_HEAD)
    assert top["retrieval_score"][0].head == name(COPY_HEAD)
    # each is not at the top of the other's column
    assert top["induction_score"][0].ranks["retrieval_score"] > 1
    assert top["retrieval_score"][0].ranks["induction_score"] > 1
    assert float(ind[COPY_HEAD]) < 0.5 < float(ind[INDUCTION_HEAD])
    # the columns name the runs they came from; the atlas's own columns are there too
    runs = {c.name: c.run for c in atlas.atlas().columns}
    assert runs["induction_score"] == str(induction.path) and runs["retrieval_score"] == str(retrieval.path)
    assert {"attn_entropy", "attn_distance"} <= set(atlas.atlas().column_names())
    # the planted heads attend to one key: zero entropy on every query
    assert float(atlas.column("attn_entropy")[INDUCTION_HEAD]) < 1e-4


# ----------------------------------------------------------------------------- columns from the specs alone
@pytest.fixture
def saved_induction(tiny_llama):
    from workbench.analyses.induction.analysis import InductionConfig
    from workbench.analyses.induction.analysis import run as run_induction

    result = run_induction(tiny_llama, InductionConfig(n_prompts=4, seq_len=6), progress=False)
    result.save()
    return result


def test_columns_come_from_the_specs_alone(tiny_llama, saved_induction, monkeypatch):
    """The induction analysis's columns appear because its spec declares them; a new spec with a
    head column, registered at run time, adds its column with no change to the atlas code."""
    import workbench.spec_registry as spec_registry
    from workbench.analyses.induction import SPEC as INDUCTION

    assert [c.name for c in INDUCTION.head_columns] == ["induction_score", "prev_token_score"]
    atlas = run(None, AtlasConfig(models=("tiny-llama",), n_permutations=20), progress=False)
    assert atlas.atlas().column_names() == ["induction_score", "prev_token_score"]  # no model: only saved runs
    assert torch.equal(atlas.column("induction_score"), saved_induction.induction_score.float())

    @dataclasses.dataclass
    class NewConfig:
        seed: int = 0

    from workbench.results import Result

    @dataclasses.dataclass
    class NewResult(Result):
        analysis = "layer_index_probe"
        config_cls = NewConfig

        @property
        def grid(self) -> torch.Tensor:
            return self.arrays["grid"]

    layer_index = torch.arange(2.0)[:, None].expand(2, 4).contiguous()
    new = AnalysisSpec(key="layer_index_probe", title="t", help="h", config=NewConfig, result=NewResult,
                       run=lambda m, c, progress=True: NewResult(c, {}, {"grid": layer_index}, {"model": m.name}),
                       head_columns=(HeadColumn("layer_index", lambda r: r.grid, unit="layers"),))
    monkeypatch.setattr(spec_registry, "_SPECS", {**spec_registry.specs(), new.key: new})
    NewResult(NewConfig(), {}, {"grid": layer_index}, {"model": "tiny-llama"}).save()
    atlas = run(None, AtlasConfig(models=("tiny-llama",), n_permutations=20), progress=False)
    assert "layer_index" in atlas.atlas().column_names()
    assert torch.equal(atlas.column("layer_index"), layer_index)
    assert {c.name: c.analysis for c in atlas.atlas().columns}["layer_index"] == "layer_index_probe"


def test_no_runs_and_bad_options_are_one_line_errors():
    with pytest.raises(InputError, match="no saved run of any head-level analysis on tiny-llama"):
        run(None, AtlasConfig(models=("tiny-llama",)), progress=False)
    with pytest.raises(InputError, match="lines up 2 models at most"):
        check_config(AtlasConfig(models=("a", "b", "c")))
    with pytest.raises(InputError, match="--analysis icl is not a head-level analysis"):
        check_config(AtlasConfig(analyses=("icl",)))


# ----------------------------------------------------------------------------- the statistics
def test_correlations_tops_and_clusters_have_exact_answers():
    rng = np.random.default_rng(0)
    n = 60
    a = rng.normal(size=n)
    table = np.stack([a, np.exp(a), -a ** 3, rng.normal(size=n)])
    names = ["a", "exp_a", "minus_a_cubed", "noise"]
    rows = {(c["a"], c["b"]): c for c in crossstats.correlations(table, names, 500, 0)}
    assert rows[("a", "exp_a")]["rho"] == pytest.approx(1.0)  # monotone: exactly 1
    assert rows[("a", "minus_a_cubed")]["rho"] == pytest.approx(-1.0)
    assert rows[("a", "exp_a")]["p"] == pytest.approx(1 / 501)  # no shuffle reaches |rho| = 1
    assert rows[("a", "noise")]["p"] > 0.05
    # top heads: direction-aware, ranks agree across monotone columns
    top = crossstats.top_heads(table, names, [1, 1, -1, 1], n_heads=6, k=3)
    best = int(np.argmax(a))
    assert top["a"][0]["head"] == f"L{best // 6}H{best % 6}"
    assert top["a"][0]["ranks"]["exp_a"] == 1 and top["a"][0]["ranks"]["minus_a_cubed"] == 1
    # three planted roles: heads 0..19 strong on x, 20..39 on y, 40..59 on z (k chosen by silhouette)
    x = np.r_[rng.uniform(5, 6, 20), rng.uniform(0, 1, 40)]
    y = np.r_[rng.uniform(0, 1, 20), rng.uniform(5, 6, 20), rng.uniform(0, 1, 20)]
    z = np.r_[rng.uniform(0, 1, 40), rng.uniform(5, 6, 20)]
    labels, info = crossstats.role_clusters(np.stack([x, y, z]), ["x", "y", "z"], [1, 1, 1], 0, n_heads=6)
    assert info["k"] == 3
    groups = [set(labels[s]) for s in (slice(0, 20), slice(20, 40), slice(40, 60))]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    desc = {c["id"]: c["strongest"][0] for c in info["clusters"]}
    assert desc[int(labels[0])]["column"] == "x" and desc[int(labels[0])]["side"] == "strong"
    assert desc[int(labels[20])]["column"] == "y" and desc[int(labels[20])]["side"] == "strong"


def test_compare_lines_up_roles_by_relative_depth():
    # model A: 4 layers x 2 heads, a strong head at layer 3; model B: 8 x 2, strong head at layer 7
    def atlas(n_layers: int, strong: int, model: str):
        cols = [{"name": "role", "unit": "", "direction": 1, "threshold": 0.5},
                {"name": "other", "unit": "", "direction": 1, "threshold": 0.5}]
        role = np.zeros(n_layers * 2)
        role[strong * 2] = 1.0
        return ({"model": model, "n_layers": n_layers, "n_heads": 2, "columns": cols},
                np.stack([role, np.zeros(n_layers * 2)]))

    comp = crossstats.compare([atlas(4, 3, "A"), atlas(8, 7, "B")])
    rows = {r["column"]: r for r in comp["roles"]}
    assert comp["roles_in_both"] == ["role"]
    assert rows["role"]["depth_a"] == pytest.approx(3.5 / 4, abs=1e-3) and rows["role"]["depth_b"] == pytest.approx(7.5 / 8, abs=1e-3)
    assert rows["role"]["top_a"] == "L3H0" and rows["role"]["top_b"] == "L7H0"
    assert not rows["other"]["present_a"] and not rows["other"]["both"]


# ----------------------------------------------------------------------------- saving, CLI, report, page
def test_saved_like_any_result_plus_csv_and_parquet(tiny_llama, saved_induction, tmp_path):
    result = run(tiny_llama, AtlasConfig(models=("tiny-llama",), n_prompts=2, n_permutations=20), progress=False)
    path = result.save(tmp_path / "atlas", extra_files=result.files())
    back = load_result(path)
    assert isinstance(back, AtlasResult) and back.atlas().column_names() == result.atlas().column_names()
    assert torch.equal(back.table(), result.table())
    frame = pd.read_parquet(path / "atlas.parquet")
    csv = pd.read_csv(path / "atlas.csv")
    assert len(frame) == len(csv) == 8 and list(frame.columns[:5]) == ["model", "layer", "head", "name", "cluster"]
    assert np.allclose(frame["induction_score"], saved_induction.induction_score.flatten().numpy())
    sources = pd.read_csv(path / "atlas_columns.csv")
    assert sources.set_index("name").loc["induction_score", "run"] == str(saved_induction.path)
    card = back.atlas().card
    assert card is not None and len(card.top_tokens) == 2 and len(card.top_tokens[0][0]) == 5
    assert back.card_pattern().shape[:2] == (2, 4)


@pytest.mark.slow  # four CLI processes, each loading a model
def test_cli_two_models_lined_up(tmp_path):
    env_runs = tmp_path / "runs"
    import os

    env = {**os.environ, "WORKBENCH_RUNS": str(env_runs), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "workbench"]
    for model in ("tiny-llama", "tiny-gpt2"):
        proc = subprocess.run([*cli, "induction", "--model", model, "--n", "4", "--seq-len", "6"], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*cli, "atlas", "--model", "tiny-llama", "--model", "tiny-gpt2", "--n", "2",
                           "--permutations", "20", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["models"] == ["tiny-llama", "tiny-gpt2"] and "roles_in_both" in doc
    result = load_result(doc["run"])
    assert result.comparison.models == ["tiny-llama", "tiny-gpt2"]
    assert {r.column for r in result.comparison.roles} >= {"induction_score", "prev_token_score", "attn_entropy"}
    assert (result.path / "atlas.parquet").is_file() and (result.path / "atlas.csv").is_file()
    bad = subprocess.run([*cli, "atlas", "--model", "a", "--model", "b", "--model", "c"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "2 models at most" in bad.stderr


def test_ablation_report_gains_the_atlas_section(tiny_llama, saved_induction):
    from workbench.analyses.ablation.analysis import AblationConfig
    from workbench.analyses.ablation.analysis import run as run_ablation
    from workbench.report import run_report

    ablation = run_ablation(tiny_llama, AblationConfig(n_prompts=2), progress=False)
    html = run_report(ablation, "Head-ablation report")  # unsaved, as in the command's finish
    assert "<h2>Head atlas: tiny-llama</h2>" in html and "ablation_effect_ioi" in html
    assert "role clusters" in html and "rank correlations" in html


def test_report_has_no_atlas_with_one_head_level_run(tiny_llama):
    from workbench.analyses.ablation.analysis import AblationConfig
    from workbench.analyses.ablation.analysis import run as run_ablation
    from workbench.report import run_report

    ablation = run_ablation(tiny_llama, AblationConfig(n_prompts=2), progress=False)
    assert "Head atlas" not in run_report(ablation, "Head-ablation report")


def test_page_draws_grid_and_card_matches_table(tiny_llama, saved_induction):
    from conftest import analysis_page_app

    result = run(tiny_llama, AtlasConfig(models=("tiny-llama",), n_prompts=2, n_permutations=20), progress=False)
    result.save()
    at = analysis_page_app("atlas").run()
    assert not at.exception
    at.selectbox(key="atlas-column").set_value("prev_token_score").run()
    at.selectbox(key="atlas-head").set_value(1 * 4 + 3).run()  # L1H3
    assert not at.exception
    assert any("Head card: L1H3" in h.value for h in at.subheader)
    card = at.table[0].value
    frame = result.frame().set_index("name")
    for _, row in card.iterrows():
        assert row["value"] == f"{float(frame.loc['L1H3', row['quantity']]):.4g}"


@pytest.mark.real_model
def test_smollm2_against_a_tiny_random_model(smollm2, tiny_llama):
    """SmolLM2 has induction heads (past 0.4, in its upper middle layers); a random 2-layer model
    has none: the comparison finds the role in the first model only."""
    from workbench.analyses.induction.analysis import InductionConfig
    from workbench.analyses.induction.analysis import run as run_induction

    for model in (smollm2, tiny_llama):
        run_induction(model, InductionConfig(n_prompts=4, seq_len=12), progress=False).save()
    result = run([smollm2, tiny_llama], AtlasConfig(models=("smollm2-135m", "tiny-llama"), analyses=("induction",),
                                                     n_prompts=4, n_permutations=100), progress=False)
    rows = {r.column: r for r in result.comparison.roles}
    ind = rows["induction_score"]
    print(ind)
    assert ind.present_a and not ind.present_b and "induction_score" not in result.comparison.roles_in_both
    assert 0.4 < ind.depth_a < 0.9  # SmolLM2's induction heads sit past its first layers
    assert result.atlas(0).n_layers == 30 and result.atlas(1).n_layers == 2
