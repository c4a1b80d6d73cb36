"""Known answers for ACT's sinks and calibration: planted sinks are found exactly (and the
statistic equals ACT's own formula), calibration moves exactly (1 - beta) of the sink
mass to the other positions in proportion, and nothing else changes."""
from __future__ import annotations

import pytest
import torch

from analyses.sinks.analysis import (calibrate_pattern, column_means, find_sinks, token_class, validate,
                                      SinksConfig)
from workbench.errors import InputError

P = 20
SINKS = (5, 9)  # planted non-first sinks (position 0 is a sink too, as usual)


def planted_pattern(batch: int = 1, heads: int = 2, seed: int = 0) -> torch.Tensor:
    """Causal attention [batch head q k]: head 0 puts most of each row on positions 0, 5 and 9
    (when visible), head 1 has no sink but the first token."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(batch, heads, P, P, generator=g) * 0.05
    raw[:, :, :, 0] += 1.0
    for s in SINKS:
        raw[:, 0, :, s] += 1.0
    raw = raw.masked_fill(torch.ones(P, P).triu(1).bool(), 0.0)
    return raw / raw.sum(-1, keepdim=True)


def act_reference_column_mean(head: torch.Tensor) -> torch.Tensor:
    """ACT's statistic, written as in its code: column sums over the rows divided by arange(P, 0, -1)."""
    return head.sum(0) / torch.arange(head.shape[0], 0, -1)


def test_planted_sinks_are_found_exactly():
    pat = planted_pattern()
    valid = torch.ones(1, P, dtype=torch.bool)
    torch.testing.assert_close(column_means(pat, valid)[0, 0], act_reference_column_mean(pat[0, 0]))
    sinks = find_sinks(pat, valid, threshold=0.1)
    assert sinks[0, 0].nonzero().flatten().tolist() == list(SINKS)
    assert not sinks[0, 1].any()
    with_first = find_sinks(pat, valid, threshold=0.1, include_first=True)
    assert with_first[0, 0].nonzero().flatten().tolist() == [0, *SINKS]


def test_padding_does_not_move_sinks():
    """The same prompt left-padded by 3: sinks shift by 3, pads are never sinks."""
    pat = planted_pattern()
    padded = torch.zeros(1, 2, P + 3, P + 3)
    padded[:, :, 3:, 3:] = pat
    padded[:, :, :3, :3] = 1 / 3  # whatever pad rows hold
    valid = torch.zeros(1, P + 3, dtype=torch.bool)
    valid[0, 3:] = True
    sinks = find_sinks(padded, valid, threshold=0.1)
    assert sinks[0, 0].nonzero().flatten().tolist() == [s + 3 for s in SINKS]


@pytest.mark.parametrize("beta", [0.4, 0.0, 1.0])
def test_calibration_moves_exactly_the_stated_mass(beta):
    pat = planted_pattern(batch=2)
    valid = torch.ones(2, P, dtype=torch.bool)
    heads = torch.tensor([True, False])
    out = calibrate_pattern(pat, valid, heads, beta=beta, threshold=0.1)
    torch.testing.assert_close(out[:, 1], pat[:, 1])  # uncalibrated head untouched
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 2, P))  # rows still sum to one
    a, b = pat[:, 0], out[:, 0]
    sink = torch.zeros(P, dtype=torch.bool)
    sink[list(SINKS)] = True
    before_sink = a[..., sink].sum(-1)
    after_sink = b[..., sink].sum(-1)
    torch.testing.assert_close(after_sink, beta * before_sink)  # sinks keep beta of their mass
    gained = b[..., ~sink].sum(-1) - a[..., ~sink].sum(-1)
    torch.testing.assert_close(gained, (1 - beta) * before_sink)  # exactly the freed mass moves
    # ... in proportion to the original attention on the other positions
    rows = before_sink[0] > 0
    ratio = b[0][rows][:, ~sink] / a[0][rows][:, ~sink].clamp(min=1e-12)
    visible = a[0][rows][:, ~sink] > 0
    for r in range(ratio.shape[0]):
        vals = ratio[r][visible[r]]
        torch.testing.assert_close(vals, vals[0].expand_as(vals))
    torch.testing.assert_close(b[:, 0, :], a[:, 0, :])  # the first row sees only itself


def test_calibration_matches_act_reference_procedure():
    """Same numbers as ACT's atten_process_cal on one head without padding (its first sink is token 0)."""
    pat = planted_pattern()
    head = pat[0, 0].clone()
    beta, thr = 0.4, 0.1
    idx = torch.nonzero(torch.where(head.sum(0) / torch.arange(P, 0, -1) > thr, 1, 0))[1:]
    ref = head.clone()
    copied = head.clone()
    available = ref[:, idx].sum(dim=1) * (1 - beta)
    ref[:, idx] *= beta
    copied[1:, idx] *= 0
    ratios = copied / copied.sum(dim=1, keepdim=True)
    ref = ref + available * ratios
    ref[0, 0] = 1
    ref[0, 1:] = 0
    out = calibrate_pattern(pat, torch.ones(1, P, dtype=torch.bool), torch.tensor([True, False]), beta, thr)
    torch.testing.assert_close(out[0, 0], ref)


def test_min_queries_drops_late_trivial_sinks():
    pat = planted_pattern()
    pat[0, 1, -1] = 0
    pat[0, 1, -1, -1] = 1.0  # the last token attends to itself: column mean 1 over one query
    valid = torch.ones(1, P, dtype=torch.bool)
    assert find_sinks(pat, valid, 0.1)[0, 1, -1]
    assert not find_sinks(pat, valid, 0.1, min_queries=5)[0, 1, -1]


def test_token_classes():
    assert token_class("\n") == "newline" and token_class(".") == "punctuation"
    assert token_class(" the") == "word" and token_class(" 42") == "number"


@pytest.mark.parametrize("field,value", [("threshold", 1.5), ("threshold", -0.1), ("beta", 2.0)])
def test_thresholds_outside_unit_interval_are_clear_errors(field, value):
    with pytest.raises(InputError, match="outside 0..1"):
        validate(SinksConfig(**{field: value}))
