"""The atlas page in a real headless Chromium: the role clusters are drawn in categorical
colours (a legend, no colour bar), two columns against each other, the grid is drawn, a head is
clicked in it, and its card shows the same numbers as the saved atlas table."""
from __future__ import annotations

import pytest
from browser_support import dashboard_page

HEAD = (1, 3)  # the head clicked: L1H3 of tiny-llama (2 layers x 4 heads)


@pytest.fixture
def saved_atlas(tiny_llama):
    from workbench.analyses.atlas.analysis import AtlasConfig, run
    from workbench.analyses.induction.analysis import InductionConfig
    from workbench.analyses.induction.analysis import run as run_induction

    run_induction(tiny_llama, InductionConfig(n_prompts=4, seq_len=6), progress=False).save()
    result = run(tiny_llama, AtlasConfig(models=("tiny-llama",), n_prompts=2, n_permutations=20), progress=False)
    result.save()
    return result


_LEGENDS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => [
    (p.querySelector('.gtitle') || {textContent: ''}).textContent.split(' (')[0],
    Array.from(p.querySelectorAll('.legendtitletext')).map(t => t.textContent)
        .concat(p.querySelector('.colorbar') ? ['colorbar'] : [])])"""


def _pictures_drawn(page) -> dict[str, set[str]]:
    """Every plotly figure on the page, by its title up to " (": its legend titles, plus
    "colorbar" when it is drawn on a continuous colour bar."""
    page.locator(".js-plotly-plot .gtitle").first.wait_for(timeout=120_000)
    return {title: set(legends) for title, legends in page.evaluate(_LEGENDS)}


@pytest.mark.browser
def test_atlas_page_click_a_head_in_real_chromium(saved_atlas, tmp_path):
    with dashboard_page(1280, 1600, start_s=300) as (page, base):
        page.goto(base + "atlas")
        page.get_by_text("Head card: L0H0").wait_for(timeout=120_000)
        pictures = _pictures_drawn(page)
        # the clickable grid: coloured by a column ("= stronger" in its title), heads on its axes (the
        # scatter of two columns has "= stronger" on its axes, the role-cluster grid no such title)
        grid = (page.locator(".js-plotly-plot").filter(has=page.locator(".gtitle", has_text="= stronger"))
                .filter(has=page.locator(".ytitle", has_text="layer")).first)
        grid.wait_for(state="attached", timeout=180_000)
        grid.scroll_into_view_if_needed(timeout=60_000)
        grid.locator(".scatterlayer .point").first.wait_for(timeout=120_000)
        points = grid.locator(".scatterlayer .point")
        assert points.count() == 8  # the grid: one marker per head
        box = points.nth(HEAD[0] * 4 + HEAD[1]).bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.get_by_text(f"Head card: L{HEAD[0]}H{HEAD[1]}").wait_for(timeout=180_000)
        table = page.locator("[data-testid='stTable'] table").first
        table.wait_for(timeout=30_000)
        rows = table.locator("tbody tr").all_inner_texts()
        page.screenshot(path=str(tmp_path / "atlas.png"), full_page=True)
    assert pictures["tiny-llama: role clusters"] == {"cluster"}  # categorical: a legend, no colour bar
    scatter = next(t for t in pictures if " against " in t)
    assert pictures[scatter] == {"role cluster"}
    frame = saved_atlas.frame().set_index("name")
    name = f"L{HEAD[0]}H{HEAD[1]}"
    shown = {}
    for row in rows:
        cells = [c.strip() for c in row.split("\t") if c.strip()]
        quantity = next(c for c in cells if c in saved_atlas.atlas().column_names())
        shown[quantity] = cells[cells.index(quantity) + 1]
    assert set(shown) == set(saved_atlas.atlas().column_names())
    for quantity, value in shown.items():
        assert value == f"{float(frame.loc[name, quantity]):.4g}", quantity
