"""The README's figures are generated, and the intervals behind them are right: the README
table must equal what ``docs/headlines.json`` renders to (a typed figure fails here), every
row carries its command, sample size and provenance, and the interval functions match
closed forms."""
from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

from workbench import headlines as hl
from workbench.spec import figure, specs
from workbench.stats import Interval, bootstrap, bootstrap_diff, permutation_p, spearman, wilson


def _runner():
    spec = importlib.util.spec_from_file_location("headlines_runner", hl.ROOT / "benchmarks" / "headlines.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_generated_from_headlines_json():
    doc = hl.load()
    block = hl.readme_table(hl.README.read_text())
    assert block is not None, "README lost its headline markers"
    assert block == hl.render_table(doc), (
        "README's figure table differs from docs/headlines.json: never type a figure by hand; "
        "run `python benchmarks/headlines.py --readme` (or re-measure with --only KEY)")


def test_every_headline_row_says_where_it_came_from():
    for row in hl.load()["rows"]:
        assert row["command"].startswith(("workbench ", "python benchmarks/")), row["label"]
        assert row["seconds"] > 0 and row["commit"] and row["date"] and row["machine"], row["label"]
        assert row["figures"], row["label"]
        for fig in row["figures"]:
            iv = fig.get("interval")
            if iv:  # an interval always comes with its sample size and is around its estimate
                assert fig["n"] == iv["n"] and iv["n"] >= 1
                assert iv["low"] <= iv["value"] + 1e-9 and iv["value"] <= iv["high"] + 1e-9


def test_every_row_of_the_json_has_a_headline_that_makes_it():
    todo = {(k, label) for k, label, _ in _runner().jobs()}
    for row in hl.load()["rows"]:
        assert (row["key"], row["label"]) in todo, f"{row['label']}: no spec or benchmark makes this row any more"


def test_headline_commands_name_their_analysis():
    for key, spec in specs().items():
        for h in spec.headlines:
            assert h.args and h.args[0] in (key, *spec.aliases), f"{key}: headline {h.label!r} runs {h.args[0]!r}"
            assert "--out" not in h.args, "the runner chooses the run folder"


def test_figure_text_and_table_rendering():
    fig = figure("accuracy", interval=Interval(0.5, 0.25, 0.75, 12, "wilson", split="test"), fmt=".2f")
    assert hl.figure_text(fig) == "accuracy 0.50 [0.25, 0.75] (n=12, test)"
    assert hl.figure_text(figure("heads over 0.4", 6, n=64, fmt="d")) == "heads over 0.4 6 (n=64)"
    row = {"key": "k", "label": "a|b", "command": "workbench k", "why": "", "figures": [fig], "seconds": 90.0}
    assert hl.row_text(row) == "| a\\|b | accuracy 0.50 [0.25, 0.75] (n=12, test) | `workbench k` | 1.5 min |"
    table = hl.render_table({"rows": [row]})
    assert table.startswith(hl.START) and table.endswith(hl.END) and table.count("\n") == 4


def test_merge_keeps_rows_not_remeasured_and_follows_registry_order():
    old = {"rows": [{"key": "a", "label": "x", "v": 1}, {"key": "b", "label": "y", "v": 1}]}
    new = [{"key": "b", "label": "y", "v": 2}]
    merged = _runner().merge(old, new, [("b", "y"), ("a", "x"), ("c", "z")])
    assert merged["rows"] == [{"key": "b", "label": "y", "v": 2}, {"key": "a", "label": "x", "v": 1}]


def test_write_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{hl.START}\nold | typed\n{hl.END}\noutro\n")
    hl.write_readme({"rows": []}, readme)
    assert readme.read_text() == f"intro\n{hl.render_table({'rows': []})}\noutro\n"
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(ValueError, match="no headline markers"):
        hl.write_readme({"rows": []}, tmp_path / "bare.md")


def test_wilson_matches_closed_form():
    # 0 of 10: the upper end is z^2 / (n + z^2)
    z = 1.959963984540054
    iv = wilson(0, 10)
    assert iv.low == 0 and math.isclose(iv.high, z * z / (10 + z * z), rel_tol=1e-9)
    # 5 of 10 is symmetric around 0.5
    iv = wilson(5, 10)
    assert math.isclose(iv.low + iv.high, 1.0, rel_tol=1e-12) and iv.value == 0.5 and iv.n == 10
    with pytest.raises(ValueError):
        wilson(1, 0)


def test_bootstrap_known_answers():
    const = bootstrap([2.0] * 20)
    assert (const.value, const.low, const.high, const.n) == (2.0, 2.0, 2.0, 20)
    # the percentile bootstrap of a mean shrinks like 1/sqrt(n): normal-theory half-width within 15%
    x = np.random.default_rng(1).normal(size=400)
    iv = bootstrap(x, split="test")
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert abs((iv.high - iv.low) / 2 - half) / half < 0.15 and iv.split == "test"
    # a paired difference cancels what the items share
    base = np.random.default_rng(2).normal(scale=10, size=50)
    d = bootstrap_diff(base + 1.0, base)
    assert math.isclose(d.value, 1.0) and math.isclose(d.low, 1.0) and math.isclose(d.high, 1.0)
    assert bootstrap_diff(base + 1.0, base, paired=False).low < 0  # unpaired it is lost in the spread


def test_spearman_and_permutation_p():
    perfect = spearman(range(20), range(20))
    assert math.isclose(perfect.value, 1.0) and perfect.high <= 1.0
    anti = spearman(range(20), list(range(20))[::-1])
    assert math.isclose(anti.value, -1.0)
    assert permutation_p(5.0, [1, 2, 3]) == 0.25 and permutation_p(0.0, [1, 2, 3]) == 1.0
    assert permutation_p(0.0, [1, 2, 3], greater=False) == 0.25


def test_interval_round_trips_through_a_result(tmp_path):
    from workbench.results import Result, load_result

    r = Result(config=None, metrics={"x": 1})
    r.set_interval("acc", wilson(3, 12, split="test"))
    path = r.save(tmp_path / "run")
    back = load_result(path)
    assert back.intervals["acc"] == wilson(3, 12, split="test")


def test_intervals_reach_the_report_and_the_page():
    """Every page and report draws ``spec.sections``, which ends with the stored intervals."""
    from workbench.report import render
    from workbench.results import Result
    from workbench.spec import interval_sections

    r = Result(config=None, metrics={})
    assert interval_sections(r) == []
    r.set_interval("needle accuracy, top-5 masked", wilson(3, 12, split="test"))
    (section,) = interval_sections(r)
    (row,) = section.tables[0]
    assert row["figure"] == "needle accuracy, top-5 masked" and row["interval"] == "[0.08894, 0.5323]"
    assert row["n"] == 12 and row["split"] == "test"
    html = render("t", [section])
    assert "[0.08894, 0.5323]" in html and "needle accuracy, top-5 masked" in html


def test_split_half_top_chooses_on_one_half_and_measures_on_the_other():
    from workbench.stats import split_half_top

    # unit "b" wins on the even rows only, "c" on the odd rows only: the choice is "b", its value
    # the mean of its odd rows (the in-sample top, "b" at 5.5 over all rows, would overstate it)
    x = np.array([[0, 9, 1], [0, 2, 8], [0, 9, 1], [0, 2, 8]], dtype=float)
    ((name, iv),) = split_half_top(x, ["a", "b", "c"], 1)
    assert name == "b" and iv.value == 2.0 and iv.n == 2 and iv.split == "held-out half"
    ((name, iv),) = split_half_top(x, ["a", "b", "c"], 1, largest=False)
    assert name == "a" and iv.value == 0.0
    assert split_half_top(x[:1], ["a", "b", "c"]) == []


def test_ablation_intervals_from_per_prompt_numbers():
    import torch

    from workbench.analyses.ablation.analysis import AblationResult, set_intervals

    clean = torch.tensor([2.0, -1.0, 3.0, 4.0])
    ablated = clean.repeat(2, 3, 1).clone()  # [layer head prompt]: no head matters ...
    ablated[1, 2] = clean - torch.tensor([5.0, 1.0, 5.0, 1.0])  # ... except L1H2: -5 on even prompts, -1 on odd
    r = AblationResult(config=None, metrics={}, arrays={"clean_logit_diff": clean, "ablated_logit_diff": ablated})
    set_intervals(r, n_top=1)
    iv = r.intervals
    assert iv["clean logit difference IO - S"].value == 2.0 and iv["clean accuracy"] == wilson(3, 4, split="all prompts")
    ((name, top),) = [(k, v) for k, v in iv.items() if "ranked #1" in k]
    assert name.endswith("(L1H2)") and top.value == -1.0 and top.low == top.high == -1.0 and top.n == 2
