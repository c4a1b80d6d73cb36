"""The circuit command's comparable measures end to end on a tiny model: MIB's CPR and CMD
on the test prompts, the curve under a second ablation, the exact node reference, stability;
saved and loaded; the old ablation name on the command line."""
from __future__ import annotations

import json
import sys

import pytest

from workbench.analyses.circuits.analysis import CircuitConfig
from workbench.analyses.circuits.analysis import run as run_circuit
from workbench.patching.faithfulness import MIB_FRACTIONS
from workbench.results import load_result

CFG = CircuitConfig(task="ioi", method="eap-ig", n_prompts=2, ig_steps=1, batch_size=2, n_val=3, n_test=3,
                    sizes="5,20", mib_methods="eap,eap-ig", compare_patching=True, node_heads="2,4",
                    stability_boots=2)


@pytest.fixture(scope="module")
def result(tiny_llama):
    return run_circuit(tiny_llama, CFG, progress=False)


def test_every_measure_is_there_with_its_split(result):
    m = result.document()[0]["data"]  # the Result's fields as saved
    assert m["ablation"] == "counterfactual" and m["beside_ablation"] == "mean"
    total = m["n_edges_total"]
    for method in ("eap", "eap-ig"):
        c = m["mib"][method]
        assert c["fractions"] == list(MIB_FRACTIONS) and c["n_edges"] == [int(p * total) for p in MIB_FRACTIONS]
        assert c["n_prompts"] == 3 and c["ablation"] == "counterfactual"
        iv = result.intervals[f"MIB CMD ({method})"]
        assert iv.split == "test" and iv.low <= iv.value <= iv.high
        # every edge kept is the full model: faithfulness 1 at 100 %
        assert c["faithfulness_absolute"][-1] == pytest.approx(1.0, abs=1e-3)
    assert set(m["faithfulness_curve_beside"]["methods"]) == {"eap", "eap-ig"}
    ref = m["node_reference"]
    assert ref["heads"] == [2, 4] and set(ref["faithfulness"]) == {"exact", "eap", "eap-ig"}
    assert -1 <= ref["agreement"]["eap-ig"]["spearman"] <= 1 and -1 <= m["spearman_vs_patching"] <= 1
    st = m["stability"]
    assert st["n_boot"] == 2 and 0 <= st["edge_jaccard"] <= 1 and 0 <= st["head_jaccard"] <= 1
    assert m["n_edges_total_mib"] > total


def test_round_trip_and_report(result, tmp_path):
    back = load_result(result.save(tmp_path / "c"))
    assert back.document()[0]["data"]["mib"] == json.loads(json.dumps(result.document()[0]["data"]["mib"]))
    assert back.intervals["MIB CPR (eap-ig)"].value == pytest.approx(result.intervals["MIB CPR (eap-ig)"].value)
    from workbench.report import render, sections_for

    html = render("circuit", sections_for([back]))
    assert "CPR" in html and "CMD" in html and "Spearman vs exact" in html and "edge_jaccard" in html
    from workbench.analyses.circuits.figures import circuit_headline_figures

    rows = [f for f in circuit_headline_figures(back) if "MIB CMD (eap-ig)" in f["text"]]
    assert len(rows) == 1 and rows[0]["split"] == "test" and "lower is better" in rows[0]["text"]


def test_cli_takes_the_old_ablation_name(monkeypatch, capsys):
    from workbench.cli import main

    monkeypatch.setattr(sys, "argv", ["workbench", "circuit", "--model", "tiny-llama", "--method", "eap", "--n", "2",
                                      "--n-edges", "15", "--val", "2", "--test", "2", "--sizes", "5,15",
                                      "--ablation", "corrupt", "--beside-ablation", "", "--mib-methods", "eap",
                                      "--json"])
    try:
        main()
    except SystemExit as e:
        assert e.code in (0, None)
    s = json.loads(capsys.readouterr().out)
    assert s["ablation"] == "counterfactual" and set(s["mib"]) == {"eap"}
    assert s["faithfulness_curve_beside"] is None
