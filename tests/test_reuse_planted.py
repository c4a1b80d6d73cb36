"""Known answers for the reuse machinery on hand-built models (``tests/planted_model.py``):
the S-inhibition score finds the planted inhibition heads, the intervention changes accuracy
by exactly what the construction predicts (and the check fails once the heads are removed),
the overlap baseline matches its closed form, EAP-IG's per-step scores reproduce EAP-IG, and
normalised faithfulness is 1 for the planted circuit and 0 with it ablated."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.analyses.circuits.analysis import Prepared, choose_size, faithfulness_curve, normalised, step_counts
from workbench.analyses.circuits.head_classes import attention_rows, attention_to
from workbench.analyses.circuits.reuse import choose_heads, intervene_hits, overlap_null
from workbench.cache import as_tokens
import planted_model as P
from workbench.patching.graph import Graph, LogitDiff


def check_intervention(model) -> dict[str, float]:
    """The reuse study's steps on the planted model, each against the construction's prediction."""
    io = P.planted_ioi_prompts(16)
    s_inh = attention_to(attention_rows(model, as_tokens(model, io["ids"]), io["end"]), io["s2"])
    chosen = choose_heads(s_inh, [], 2)
    assert sorted(chosen) == sorted(P.INHIBITION_HEADS), chosen
    assert all(float(s_inh[lh]) > 0.9 for lh in chosen), s_inh  # they attend to S2 from the end
    assert float(s_inh[P.MOVER_HEAD]) < 0.05
    co = P.planted_colour_prompts(64)
    tokens, targets = as_tokens(model, co["ids"]), co["wrong_positions"].tolist()

    def acc(heads):
        return float(intervene_hits(model, tokens, heads, targets, co["correct"], co["candidates"]).float().mean())

    predicted_before = float((co["predicted"] == co["correct"]).float().mean())
    out = {"before": acc([]), "after": acc(chosen), "silent": acc([P.SILENT_HEAD]), "mover": acc([P.MOVER_HEAD]),
           "predicted_before": predicted_before}
    assert out["before"] == predicted_before  # the mover answers the highest-id colour
    assert out["after"] == 1.0  # each wrong colour suppressed by more than the mover's margin
    assert out["silent"] == predicted_before  # a head that writes nothing changes nothing
    assert out["mover"] == 0.0  # the mover made to attend to the wrong colours copies them
    return out


def test_intervention_on_planted_inhibition_heads_gives_the_predicted_accuracy():
    out = check_intervention(P.planted_inhibition_model())
    assert 0.15 < out["predicted_before"] < 0.5  # about 1/3: the answer is the highest-id colour by chance
    assert out["after"] - out["before"] == pytest.approx(1 - out["predicted_before"])


def test_the_check_fails_when_the_planted_heads_are_removed():
    with pytest.raises(AssertionError):
        check_intervention(P.planted_inhibition_model(planted=False))
    with pytest.raises(AssertionError):  # heads that attend to S2 but no longer inhibit
        check_intervention(P.planted_inhibition_model(beta=0.0))


def test_overlap_baseline_matches_the_hypergeometric_mean():
    # E|A n B| = a b / N, so the expected share of the smaller circuit is max(a, b) / N
    null = overlap_null(12, 30, 270, draws=20000, seed=1)
    assert null.mean() == pytest.approx(30 / 270, abs=0.01)
    assert overlap_null(5, 5, 5, draws=10).tolist() == [1.0] * 10  # every head in both


def test_choose_size_and_normalised():
    assert choose_size([50, 100, 200], [0.3, 0.85, 0.9], 0.8) == (100, True)
    assert choose_size([50, 100, 200], [0.3, 0.5, 0.4], 0.8) == (100, False)
    assert normalised(3.0, 4.0, 2.0) == 0.5 and np.isnan(normalised(1.0, 2.0, 2.0))
    assert step_counts(8) == [1, 2, 4, 8] and step_counts(6) == [1, 2, 6] and step_counts(1) == [1]


@pytest.fixture(scope="module")
def copy_model():
    return P.planted_model()


def _prep(model, n=12):
    clean, corrupt, correct, wrong = P.planted_prompts(n, seed=3)
    return Prepared(None, as_tokens(model, clean), as_tokens(model, corrupt), LogitDiff(correct, wrong), None)


def test_normalised_faithfulness_of_the_planted_circuit(copy_model):
    """The copying model's answer runs input -> L0H0 -> (L1H0 ->) logits. With the edges that set
    the norms' scale (the input and L0H2's junk into L1H0 and the logits) that circuit is exactly
    as faithful as the full model (1); without those it is within the norms' 1%; the full graph
    without L0H0's outputs carries nothing of the answer (about 0)."""
    g = Graph.for_model(copy_model)
    prep = _prep(copy_model)
    path = torch.zeros_like(g.valid)
    i_in, h0, h1 = g.sender_index("input"), g.sender_index("L0H0"), g.sender_index("L1H0")
    path[i_in, g.receiver_index("L0H0")] = True
    path[h0, g.receiver_index("L1H0")] = True
    path[h0, g.receiver_index("logits")] = True
    path[h1, g.receiver_index("logits")] = True
    scale = path.clone()
    junk = g.sender_index("L0H2")
    for r in ("L1H0", "logits"):
        scale[i_in, g.receiver_index(r)] = True
        scale[junk, g.receiver_index(r)] = True
    scale[i_in, g.receiver_index("L0H2")] = True
    no_copy = g.valid.clone()
    no_copy[h0] = False
    curve = faithfulness_curve(copy_model, g, prep, {}, [1], "mean",
                               extra={"path": path, "scale": scale, "no_copy": no_copy})
    assert curve.full > 1.0
    assert curve.extra["scale"].faithfulness == pytest.approx(1.0, abs=1e-5)
    assert curve.extra["path"].faithfulness == pytest.approx(1.0, abs=0.01)
    assert abs(curve.extra["no_copy"].faithfulness) < 0.05


def test_eap_ig_steps_reproduce_eap_ig(copy_model):
    from workbench.patching.eap import edge_attribution, edge_attribution_steps, ig_subsample

    prep = _prep(copy_model, 6)
    per = edge_attribution_steps(copy_model, prep.clean, prep.corrupt, prep.metric, steps=4, batch_size=4)
    for s in (4, 2, 1):
        ref = edge_attribution(copy_model, prep.clean, prep.corrupt, prep.metric, "eap-ig", steps=s, batch_size=4)
        assert torch.allclose(ig_subsample(per, s), ref, atol=1e-5, rtol=1e-4), s


def test_faithfulness_is_undefined_without_a_behaviour(copy_model):
    """When the full model does not beat the all-ablated one (here: the metric compares an
    answer with itself, so both are 0), the curve says the normalisation is undefined and no
    size can be chosen as reaching the target."""
    from workbench.analyses.circuits.analysis import behaviour_defined

    g = Graph.for_model(copy_model)
    clean, corrupt, correct, _ = P.planted_prompts(8, seed=4)
    prep = Prepared(None, as_tokens(copy_model, clean), as_tokens(copy_model, corrupt), LogitDiff(correct, correct), None)
    curve = faithfulness_curve(copy_model, g, prep, {}, [1], "mean", extra={"all": g.valid})
    assert curve.full == 0.0 and curve.all_ablated == 0.0 and not behaviour_defined(curve)
    assert behaviour_defined(faithfulness_curve(copy_model, g, _prep(copy_model), {}, [1], "mean"))
