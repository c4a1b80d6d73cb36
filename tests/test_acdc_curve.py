"""ACDC as a curve (``--curve-methods ...,acdc``): known answers on the hand-built copying model
(``tests/planted_model.py``: input -> L0H0 -> (L1H0 ->) logits carries the answer).

* a sweep over thresholds gives, at each tau, exactly the kept edges and scores of a separate
  single ``acdc(...)`` run (the sweep reuses forwards of edge masks it has seen; this shows the
  reuse changes nothing), and the curve's rows are those runs' circuits and faithfulness;
* the circuit shrinks as tau grows; tau 0 over every edge keeps every edge (faithfulness 1),
  a huge tau keeps none (faithfulness 0, the all-ablated model), a middle tau keeps the
  planted path and nothing off it;
* end to end on tiny-llama: the result, its table, its figure and its JSON show three methods."""
from __future__ import annotations

import json

import pytest
import torch

from workbench.analyses.circuits.analysis import (CircuitConfig, Prepared, acdc_circuits, faithfulness, faithfulness_curve,
                                        parse_methods, parse_taus)
from workbench.analyses.circuits.analysis import run as run_circuit
from workbench.cache import as_tokens
from workbench.errors import InputError
from workbench.patching import acdc as acdc_module
from workbench.patching.acdc import acdc, acdc_sweep
from workbench.patching.eap import edge_attribution
from workbench.patching.graph import Graph, LogitDiff, ablation_values, prune_dangling, sender_outputs, top_edges
from planted_model import planted_model, planted_prompts

TAUS = [0.0, 0.01, 0.1, 0.5, 2.0, 1e9]
PLANTED_NODES = {"input", "L0H0", "L1H0", "L0H2"}  # the copying path and the junk head that sets the norms' scale


def prep_of(model, n: int, seed: int) -> Prepared:
    clean, corrupt, correct, wrong = planted_prompts(n, seed=seed)
    return Prepared(None, as_tokens(model, clean), as_tokens(model, corrupt), LogitDiff(correct, wrong), None)


@pytest.fixture(scope="module")
def planted():
    model = planted_model()
    graph = Graph.for_model(model)
    disc, val = prep_of(model, 8, seed=11), prep_of(model, 10, seed=12)
    ranked = edge_attribution(model, disc.clean, disc.corrupt, disc.metric, "eap-ig", steps=4, batch_size=8)
    _, acts = sender_outputs(model, disc.corrupt)
    return model, graph, disc, val, ranked, ablation_values(acts, "mean", len(disc.clean))


def test_sweep_equals_separate_single_runs_and_reuses_forwards(planted, monkeypatch):
    model, graph, disc, _, ranked, ablate = planted
    cands = top_edges(graph, ranked, 30)
    calls = {"n": 0}
    real = acdc_module.run_edge_masks

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(acdc_module, "run_edge_masks", counted)
    singles = [acdc(model, graph, disc.clean, ablate, disc.metric, tau=t, candidates=cands) for t in TAUS]
    separate = calls["n"]
    calls["n"] = 0
    swept = acdc_sweep(model, graph, disc.clean, ablate, disc.metric, TAUS, candidates=cands)
    for t, (keep, scores), (keep1, scores1) in zip(TAUS, swept, singles):
        assert torch.equal(keep, keep1), t
        assert torch.equal(scores, scores1), t
    assert separate == len(TAUS) * (2 + 30)  # full model, starting circuit, one trial per candidate
    assert calls["n"] < separate  # forwards of masks seen before were not repeated
    kept = [int(prune_dangling(graph, k).sum()) for k, _ in swept]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1] == 0, kept


def test_curve_rows_are_the_single_runs_circuits_and_faithfulness(planted):
    model, graph, disc, val, ranked, ablate = planted
    runs = acdc_circuits(model, graph, disc, ranked, TAUS, 30, "mean")
    curve = faithfulness_curve(model, graph, val, {"eap-ig": ranked}, [5, 30], "mean",
                               thresholded={"acdc": [(t, c) for t, (c, _) in zip(TAUS, runs)]})
    row = curve.methods["acdc"]
    assert row.tau == TAUS and len(curve.methods["eap-ig"].n_edges) == 2
    for t, n, f in zip(TAUS, row.n_edges, row.faithfulness):
        keep, _ = acdc(model, graph, disc.clean, ablate, disc.metric, tau=t, candidates=top_edges(graph, ranked, 30))
        circuit = prune_dangling(graph, keep)
        assert n == int(circuit.sum()), t
        assert f == pytest.approx(faithfulness(model, graph, val, circuit, "mean")[1], abs=1e-5), t
    assert row.n_edges == sorted(row.n_edges, reverse=True)
    assert row.n_edges[-1] == 0 and row.faithfulness[-1] == 0.0  # a huge tau: the all-ablated model


def test_extremes_every_edge_at_tau_zero_the_planted_path_in_the_middle_nothing_at_a_huge_tau(planted):
    model, graph, disc, val, ranked, _ = planted
    n = graph.n_edges
    runs = acdc_circuits(model, graph, disc, ranked, [0.0, 0.5, 1e9], n, "mean")  # every edge a candidate
    (all_kept, _), (middle, _), (none, _) = runs
    assert torch.equal(all_kept, graph.valid)  # removing any edge moves the metric away from the full model's
    assert not none.any()
    kept = set(graph.edge_names(middle))
    assert ("input", "L0H0") in kept and (("L0H0", "logits") in kept or ("L0H0", "L1H0") in kept)
    assert {s for s, _ in kept} <= PLANTED_NODES and {r for _, r in kept} <= PLANTED_NODES | {"logits"}, kept
    curve = faithfulness_curve(model, graph, val, {}, [1], "mean",
                               thresholded={"acdc": [(0.0, all_kept), (0.5, middle), (1e9, none)]})
    f_all, f_mid, f_none = curve.methods["acdc"].faithfulness
    assert f_all == pytest.approx(1.0, abs=1e-6) and f_none == 0.0
    assert f_mid > 0.8  # the planted path carries the answer on held-out prompts


def test_taus_and_methods_are_checked_with_one_line_errors():
    assert parse_taus("0.3, 0.01,0.1,0.1") == [0.01, 0.1, 0.3]
    assert parse_methods("eap,eap-ig,acdc") == ["eap", "eap-ig", "acdc"]
    for bad in ("a,b", "", "-0.1", "nan", "inf"):
        with pytest.raises(InputError, match="--acdc-taus"):
            parse_taus(bad)
    with pytest.raises(InputError, match="path patching"):
        parse_methods("eap,path-patching")
    with pytest.raises(InputError, match="--acdc-candidates"):
        CircuitConfig(curve_methods="eap,acdc", acdc_candidates=acdc_module.MAX_EDGES_TRIED + 1).validate()
    CircuitConfig(curve_methods="eap", acdc_candidates=acdc_module.MAX_EDGES_TRIED + 1).validate()  # not used


def test_three_method_curve_end_to_end(tiny_llama, tmp_path, capsys):
    from workbench.analyses.circuits.figures import circuit_sections, faithfulness_figure
    from workbench.results import load_result

    cfg = CircuitConfig(task="ioi", method="acdc", n_prompts=2, ig_steps=1, batch_size=2, n_val=3, n_test=2,
                        sizes="5,20", curve_methods="eap,eap-ig,acdc", acdc_taus="0,0.05,1e9", acdc_tau=0.05,
                        acdc_candidates=12)
    r = run_circuit(tiny_llama, cfg, progress=True)
    err = capsys.readouterr().err
    assert "ACDC tau=0.05 (2/3)" in err and "acdc validation faithfulness" in err  # progress, per threshold
    curve = r.faithfulness_curve
    assert list(curve.methods) == ["eap", "eap-ig", "acdc"]
    row = curve.methods["acdc"]
    assert row.tau == [0.0, 0.05, 1e9] and row.candidates == 12
    assert row.n_edges == sorted(row.n_edges, reverse=True) and row.n_edges[-1] == 0
    assert row.n_edges[0] <= 12
    # the returned ACDC circuit (--acdc-tau 0.05) is the curve's run at that tau
    assert curve.extra["acdc"].n_edges == row.n_edges[1] == r.n_edges
    assert curve.extra["acdc"].faithfulness == pytest.approx(row.faithfulness[1], abs=1e-6, nan_ok=True)
    table = r.curve_rows()
    assert {t["method"] for t in table} == {"eap", "eap-ig", "acdc", "acdc (returned circuit)"}
    assert [t["ACDC tau"] for t in table if t["method"] == "acdc"] == [0.0, 0.05, 1e9]
    fig = faithfulness_figure(curve, 0.8)
    names = [t.name for t in fig.data]
    assert names[:3] == ["eap", "eap-ig", "acdc (by threshold)"]
    assert "τ=0.05" in "".join(fig.data[2].text)
    assert "one exact ACDC run per threshold" in circuit_sections(r)[0].text
    back = load_result(r.save(tmp_path / "acdc-curve"))
    assert json.loads(json.dumps(back.summary()["faithfulness_curve"]["methods"]["acdc"]))["tau"] == [0.0, 0.05, 1e9]
