"""The README's figures are generated, and the intervals behind them are right: the README
table and docs/headlines.md must equal what ``docs/headlines.json`` renders to (a typed figure
fails here), every row carries its command, sample size and provenance, each README line's
headline and control are the JSON's own figures, every picture exists and names its run, and
the interval functions match closed forms."""
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


def test_details_page_is_generated_from_headlines_json():
    assert hl.DETAILS.read_text() == hl.render_details(hl.load()), (
        "docs/headlines.md differs from docs/headlines.json: run `python benchmarks/headlines.py --readme`")


def test_summaries_in_the_json_are_current():
    """The JSON's ``summary`` of each row is what SUMMARIES says now, and names the row's own figures."""
    runner = _runner()
    doc = hl.load()
    assert runner.stamp_summaries(doc) == doc, "SUMMARIES changed: run `python benchmarks/headlines.py --readme`"
    labels = {label for _, label, _ in runner.jobs()}
    assert set(runner.SUMMARIES) <= labels, "a SUMMARIES entry names no headline row"
    for row in doc["rows"]:
        if not hl.is_analysis(row):
            continue
        s = row["summary"]
        main = hl.find(row, s["main"])
        assert main["n"] is not None and main.get("value") is not None, row["label"]
        hl.find(row, s.get("control")), hl.find(row, s.get("diff"))  # each names a figure of the row
        assert hl.control_text(row) and hl.headline_text(row).startswith(main["text"])


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


def _row(figures, summary, label="a|b"):
    return {"key": "k", "label": label, "command": "workbench k", "why": "", "figures": figures, "seconds": 90.0,
            "summary": summary}


def test_figure_text_and_table_rendering():
    fig = figure("accuracy", interval=Interval(0.5, 0.25, 0.75, 12, "wilson", split="test"), fmt=".2f")
    assert hl.figure_text(fig) == "accuracy 0.50 [0.25, 0.75] (n=12, test)"
    assert hl.figure_text(figure("heads over 0.4", 6, n=64, fmt="d")) == "heads over 0.4 6 (n=64)"
    base = figure("chance", 0.2, fmt=".2f")
    row = _row([fig, base], {"name": "k", "shows": "it works", "main": "accuracy", "control": "chance", "better": 1})
    assert hl.table_row(row) == ("| [k](docs/headlines.md#a-b) | it works | accuracy: **0.50** [0.25, 0.75] (n=12, test) "
                                 "| beats chance 0.20 | `workbench k` | 1.5 min |")
    bench = {**_row([base], None), "command": "python benchmarks/b.py --json"}
    table = hl.render_table({"rows": [row, bench]})  # benchmarks are in docs/headlines.md only
    assert table.startswith(hl.START) and table.endswith(hl.END) and table.count("\n") == 4
    details = hl.render_details({"rows": [row, bench]})
    assert '<a id="a-b"></a>' in details and "**(headline)**" in details and "*(control)*" in details
    assert details.index("## Analyses") < details.index("accuracy 0.50") < details.index("## Benchmarks")


def test_verdict_by_paired_difference_else_by_intervals():
    def fig(value, low=None, high=None):
        iv = None if low is None else {"value": value, "low": low, "high": high, "n": 10}
        return {"text": "x", "value": value, "interval": iv, "n": 10}

    assert hl.verdict(fig(0.8, 0.7, 0.9), fig(0.5, 0.4, 0.6), None, 1) == "beats"
    assert hl.verdict(fig(0.8, 0.5, 0.9), fig(0.5, 0.4, 0.6), None, 1) == "does not beat"  # overlapping
    assert hl.verdict(fig(0.2, 0.1, 0.3), fig(0.5, 0.4, 0.6), None, 1) == "worse than"
    assert hl.verdict(fig(0.2, 0.1, 0.3), fig(0.5, 0.4, 0.6), None, -1) == "beats"  # less is the effect
    assert hl.verdict(fig(0.8), fig(0.03), None, 1) == "beats"  # plain values
    # a paired difference decides even when the two intervals overlap
    assert hl.verdict(fig(0.8, 0.5, 0.9), fig(0.6, 0.4, 0.8), fig(0.1, 0.02, 0.2), 1) == "beats"
    assert hl.verdict(fig(0.8, 0.7, 0.9), None, fig(0.1, -0.02, 0.2), 1) == "does not beat"
    assert hl.verdict(fig(0.3), None, fig(-0.1, -0.2, -0.05), -1) == "beats"
    main = figure("mse", interval=Interval(0.25, 0.24, 0.26, 40, "bootstrap", split="test"))
    diff = figure("mse minus one head", interval=Interval(-0.16, -0.18, -0.14, 40, "bootstrap", split="test"))
    row = _row([main, diff], {"main": "mse", "diff": "mse minus one head", "control_name": "one head", "better": -1})
    assert hl.control_text(row) == "beats one head (difference -0.16 [-0.18, -0.14])"
    row["summary"] = {"main": "mse", "reference": {"value": 0.5, "text": "guessing, 0.5"}, "better": -1}
    assert hl.control_text(row) == "beats guessing, 0.5"
    row["summary"] = {"main": "mse"}
    assert hl.control_text(row) == "none measured"


def test_summarise_matches_figures_by_their_start():
    runner = _runner()
    label = "induction heads"
    row = {"key": "induction", "label": label, "command": "workbench induction",
           "figures": [figure("uniform-attention baseline", 0.03), figure("induction score, head ranked #1 (L1H1)", 0.8, n=4)]}
    s = runner.summarise(row)
    assert s["main"] == "induction score, head ranked #1 (L1H1)" and s["control"] == "uniform-attention baseline"
    row["figures"] = row["figures"][:1]
    with pytest.raises(SystemExit, match="no figure starts with"):
        runner.summarise(row)
    other = {"key": "new", "label": "an analysis with no summary", "command": "workbench new",
             "figures": [figure("count", 3), figure("share", interval=wilson(3, 12, split="test"))]}
    assert runner.summarise(other)["main"] == "share"  # the first figure with an interval
    assert runner.summarise({**other, "command": "python benchmarks/x.py"}) is None


def test_pictures_exist_and_name_their_run():
    """Every picture a row names is a PNG carrying that row's provenance; no picture is orphaned."""
    from workbench.pictures import read_provenance

    doc = hl.load()
    drawn = [r for r in doc["rows"] if r.get("picture")]
    for row in drawn:
        p = row["picture"]
        path = hl.ROOT / p["file"]
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p["file"]
        assert read_provenance(path) == p, f"{p['file']} is not the picture of this row; re-run --only {row['key']}"
        assert (p["command"], p["commit"], p["date"]) == (row["command"], row["commit"], row["date"])
        assert p["model"] and p["run"] and p["run"] in p["caption"] and p["commit"] in p["caption"]
    files = {hl.ROOT / r["picture"]["file"] for r in drawn}
    assert set(hl.FIGURES.glob("*.png")) == files, "docs/figures holds a picture no row names"
    shown = hl.readme_pictures(doc)
    wanted = [next(r for r in drawn if r["key"] == k) for k in hl.README_PICTURES if any(r["key"] == k for r in drawn)]
    assert shown[:len(wanted)] == wanted  # each intended analysis once (its first row), in README_PICTURES' order
    assert len(shown) == min(len(drawn), hl.MAX_README_PICTURES)
    block = hl.readme_table(hl.README.read_text())
    assert all(f'src="{r["picture"]["file"]}"' in block for r in shown)


def test_main_figure_is_chosen_by_title():
    from types import SimpleNamespace

    import plotly.graph_objects as go

    from workbench.report import Section

    grid, curve = go.Figure(layout_title_text="Scores <br><sup>per head</sup>"), go.Figure(layout_title_text="Needle accuracy with heads masked")
    spec = SimpleNamespace(sections=lambda r: [Section("a", tables=[[{"x": 1}]]), Section("b", figures=[grid, curve])])
    runner = _runner()
    assert runner.main_figure(None, spec, "") is grid and runner.main_figure(None, spec, "heads MASKED") is curve
    assert runner.main_figure(None, SimpleNamespace(sections=lambda r: []), "") is None
    assert runner._title(grid) == "Scores per head"


def test_export_png_without_a_browser_is_one_error(tmp_path):
    import plotly.graph_objects as go

    from workbench.errors import WorkbenchError
    from workbench.pictures import export_png

    with pytest.raises(WorkbenchError, match="could not draw"):
        export_png(go.Figure(), tmp_path / "x.png", {}, browser=str(tmp_path / "no-such-browser"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.browser
def test_export_png_draws_a_small_figure_and_stamps_it(tmp_path):
    import plotly.graph_objects as go
    from browser_support import chromium_or_skip
    from PIL import Image

    from workbench.pictures import FOOTER, export_png, read_provenance

    chromium_or_skip()
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 3], marker_color="#d62728"), layout_title_text="two bars")
    fig.update_layout(width=1200)
    prov = {"command": "workbench k", "run": "2026-01-01T00:00:00+00:00", "commit": "abc1234", "date": "2026-01-01"}
    path = export_png(fig, tmp_path / "pics" / "k.png", prov, width=320, height=240)
    assert read_provenance(path) == prov and fig.layout.width == 1200  # the caller's figure keeps its size
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.shape == (240 + FOOTER, 320, 3)
    red = np.all(np.abs(rgb - [214, 39, 40]) < 10, axis=-1)
    assert red.sum() > 1000  # the bars are drawn
    assert (rgb[240:] < 200).any()  # and the footer line under them
    assert [p.name for p in (tmp_path / "pics").iterdir()] == ["k.png"]  # no temporary left behind


@pytest.mark.browser
def test_runner_draws_a_runs_picture_with_its_provenance(tiny_llama, tmp_path, monkeypatch):
    from browser_support import chromium_or_skip

    from workbench.analyses.induction.analysis import InductionConfig, run
    from workbench.pictures import read_provenance

    chromium_or_skip()
    runner = _runner()
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    monkeypatch.setattr(hl, "FIGURES", tmp_path / "docs" / "figures")
    result = run(tiny_llama, InductionConfig(n_prompts=4, seq_len=6), progress=False)
    spec = specs()["induction"]
    stamp = {"commit": "abc1234", "machine": "m", "date": "2026-01-01"}
    prov = runner.draw_picture(spec, spec.headlines[0], 0, result, stamp)
    assert prov["file"] == "docs/figures/induction.png" and prov["figure"].startswith("Induction score per head")
    assert prov["command"] == "workbench induction" and prov["model"] == "tiny-llama"
    assert prov["run"] == result.meta["created"] and "commit abc1234" in prov["caption"]
    assert read_provenance(tmp_path / prov["file"]) == prov
    assert runner.picture_file("lrp", 1).name == "lrp-2.png"


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
    for iv in (perfect, anti):  # identical rankings: the interval still holds its own estimate
        assert iv.low <= iv.value <= iv.high
    same = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4, 0.8, 0.5]  # two columns that are one quantity (as in the atlas)
    iv = spearman(same, same)
    assert iv.low <= iv.value <= iv.high <= 1.0
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
    r = AblationResult(config=None, effect=(ablated - clean).mean(-1), clean_logit_diff_per_prompt=clean,
                       ablated_logit_diff=ablated, clean_logit_diff=float(clean.mean()), clean_logit_diff_std=0.0,
                       accuracy=0.75, n_prompts=4, n_forwards=1, top_heads=[], example_prompt="")
    set_intervals(r, n_top=1)
    iv = r.intervals
    assert iv["clean logit difference IO - S"].value == 2.0 and iv["clean accuracy"] == wilson(3, 4, split="all prompts")
    ((name, top),) = [(k, v) for k, v in iv.items() if "ranked #1" in k]
    assert name.endswith("(L1H2)") and top.value == -1.0 and top.low == top.high == -1.0 and top.n == 2
