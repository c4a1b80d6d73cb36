"""The atlas's figures: categorical columns (role clusters, 0/1 flags) get one qualitative
colour and legend entry per value, never a continuous colour bar; two columns against each
other put each head where its values are; and the atlas notebook builds the atlas of the
embedded model from saved runs, executed like every other notebook."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from workbench.analyses.atlas import figures as figs
from workbench.analyses.atlas.analysis import AtlasConfig, run


@pytest.fixture
def atlas(tiny_llama):
    from workbench.analyses.induction.analysis import InductionConfig
    from workbench.analyses.induction.analysis import run as run_induction

    run_induction(tiny_llama, InductionConfig(n_prompts=4, seq_len=6), progress=False).save()
    return run(tiny_llama, AtlasConfig(models=("tiny-llama",), n_prompts=2, n_permutations=20), progress=False)


def _points(fig) -> dict[tuple[int, int], str]:
    """(layer, head) -> the name of the trace that draws it; each head exactly once."""
    out = {}
    for trace in fig.data:
        for (layer, head), x, y in zip(trace.customdata, trace.x, trace.y):
            assert (x, y) == (head, layer) and (layer, head) not in out
            out[(int(layer), int(head))] = trace.name
    return out


def test_cluster_grid_has_one_colour_and_legend_entry_per_cluster(atlas):
    fig = figs.cluster_grid(atlas)
    labels = atlas.cluster_labels().numpy()
    assert len(fig.data) == len(np.unique(labels)) >= 2
    assert all(t.marker.colorbar.title.text is None and isinstance(t.marker.color, str) for t in fig.data)
    assert len({t.marker.color for t in fig.data}) == len(fig.data)  # one colour per cluster
    drawn = _points(fig)
    assert len(drawn) == labels.size
    for (layer, head), name in drawn.items():
        assert name.startswith(f"{labels[layer, head]}: ")


def test_flag_column_is_drawn_in_two_colours_and_amounts_on_a_colour_bar(atlas):
    atlas.tables["0"][0] = torch_flags(atlas.tables["0"][0])
    columns = atlas.atlas().columns
    columns[0] = dataclasses.replace(columns[0], unit="flag")
    name = atlas.atlas().column_names()[0]
    fig = figs.atlas_grid(atlas, name)
    assert [t.name for t in fig.data] == ["no value", "no", "yes"]
    assert fig.data[0].marker.color == figs.UNSET_COLOUR and fig.data[1].marker.color != fig.data[2].marker.color
    drawn = _points(fig)
    assert drawn[(0, 0)] == "no value" and drawn[(0, 1)] == "yes" and drawn[(1, 3)] == "no"
    amount = figs.atlas_grid(atlas, atlas.atlas().column_names()[1])
    assert len(amount.data) == 1 and amount.data[0].marker.colorbar.title.text  # a continuous column keeps its bar


def torch_flags(values):
    """Column 0 as a flag: NaN for L0H0, 1 where the value is over its median, else 0."""
    flags = (values > values.median()).float()
    flags[0, 0] = float("nan")
    flags[0, 1], flags[1, 3] = 1.0, 0.0
    return flags


def test_column_scatter_puts_each_head_at_its_two_values(atlas):
    x, y = "induction_score", "prev_token_score"
    fig = figs.column_scatter(atlas, x, y)
    frame = atlas.frame().set_index("name")
    seen = 0
    for trace in fig.data:
        assert trace.name.startswith("cluster ")
        for head, xv, yv in zip(trace.text, trace.x, trace.y):
            assert np.isclose(xv, frame.loc[head, x]) and np.isclose(yv, frame.loc[head, y])
            assert trace.name == f"cluster {frame.loc[head, 'cluster']}"
            seen += 1
    assert seen == len(frame)
    assert "Spearman rho" in fig.layout.title.text and fig.layout.xaxis.title.text.startswith(x)


def test_sections_draw_the_strongest_pair(atlas):
    a, b = figs.strongest_pair(atlas)
    rho = {frozenset((c.a, c.b)): abs(c.rho) for c in atlas.atlas().correlations if c.rho is not None}
    assert rho[frozenset((a, b))] == max(rho.values())
    section = next(s for s in figs.atlas_sections(atlas) if s.title.endswith("rank correlations"))
    assert [f.layout.title.text.split("<br>")[0] for f in section.figures] == [f"tiny-llama: {a} against {b}"]


@pytest.mark.slow
@pytest.mark.real_model
def test_atlas_notebook_executes_small(monkeypatch):
    from notebook_runner import ROOT, execute_notebook, plotly_outputs

    outputs = execute_notebook("atlas.ipynb", monkeypatch, timeout=600, cwd=ROOT / "notebooks")
    assert plotly_outputs(outputs) == 2  # two columns against each other, and the role clusters
    text = " ".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "induction_score" in text and "prev_token_score" in text and "'induction'" in text
