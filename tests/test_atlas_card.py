"""The atlas card explains a head: where it reads from (measured QK-attribution sources and
composition writers from the weights, each source head a button that opens its card), in the
page and in the HTML report's atlas section; and in a real Chromium, clicking a head shows its
K-side sources and clicking one opens that head's card."""
from __future__ import annotations

import pytest

from workbench.analyses.atlas.analysis import AtlasConfig, run
from workbench.analyses.atlas.figures import READS_FROM, qk_run, reads_from
from workbench.analyses.qk.analysis import QKConfig
from workbench.analyses.qk.analysis import run as run_qk

READER = (1, 3)  # L1H3 of tiny-llama (2 layers x 4 heads)


@pytest.fixture
def atlas_with_qk(tiny_llama):
    from workbench.analyses.induction.analysis import InductionConfig
    from workbench.analyses.induction.analysis import run as run_induction

    run_induction(tiny_llama, InductionConfig(n_prompts=4, seq_len=6), progress=False).save()
    qk = run_qk(tiny_llama, QKConfig(head="L1H3", n_prompts=4, seq_len=6), progress=False)
    qk.save()
    result = run(tiny_llama, AtlasConfig(models=("tiny-llama",), n_prompts=2, n_permutations=20), progress=False)
    result.save()
    return result, qk


def test_reads_from_lists_match_the_qk_run(atlas_with_qk):
    atlas, qk = atlas_with_qk
    assert {"k_composition", "q_composition"} <= set(atlas.atlas().column_names())
    back = qk_run(atlas)
    lists = reads_from(back, *READER)
    assert list(lists) == list(READS_FROM)
    k_side = lists["weights, K-composition"]
    scores = qk.composition["K"][0, :, READER[0], READER[1]]
    assert k_side[0]["source"] == f"L0H{int(scores.argmax())}"
    assert k_side[0]["value"] == pytest.approx(float(scores.max()), rel=1e-5)
    assert {r["source"] for r in k_side} == {f"L0H{h}" for h in range(4)}  # only earlier heads write into it
    measured = [r["source"] for r in lists["measured, key side"]]
    assert measured == [s.component for s in qk.head_sources["L1H3"].key[:5]]
    assert reads_from(back, 0, 1)["weights, K-composition"] == []  # layer 0 reads only the embeddings


def test_report_atlas_section_carries_the_lists(atlas_with_qk):
    from workbench.report import Section

    atlas, _ = atlas_with_qk
    sections = [s for s in atlas.report_sections() if isinstance(s, Section) and "read from" in s.title]
    assert len(sections) == 1
    rows = sections[0].tables[0]
    assert rows and set(READS_FROM) <= set(rows[0]) and rows[0]["head"].startswith("L")


def test_page_card_buttons_open_the_source_head(atlas_with_qk):
    from conftest import analysis_page_app

    at = analysis_page_app("atlas").run()
    assert not at.exception
    at.selectbox(key="atlas-head").set_value(READER[0] * 4 + READER[1]).run()
    assert any(f"Head card: L{READER[0]}H{READER[1]}" in h.value for h in at.subheader)
    buttons = [b for b in at.button if b.key.startswith("atlas-src-weights, K-composition")]
    assert buttons
    target = buttons[0].label.split(" ")[0]
    buttons[0].click().run()
    assert not at.exception
    assert any(f"Head card: {target}" in h.value for h in at.subheader)


@pytest.mark.browser
def test_click_a_head_then_a_k_side_source_in_real_chromium(atlas_with_qk, tmp_path):
    from browser_support import dashboard_page

    with dashboard_page(1280, 1800, start_s=300) as (page, base):
        page.goto(base + "atlas")
        page.get_by_text("Head card: L0H0").wait_for(timeout=120_000)
        grid = (page.locator(".js-plotly-plot").filter(has=page.locator(".gtitle", has_text="= stronger"))
                .filter(has=page.locator(".ytitle", has_text="layer")).first)
        grid.scroll_into_view_if_needed(timeout=60_000)
        grid.locator(".scatterlayer .point").first.wait_for(timeout=120_000)
        box = grid.locator(".scatterlayer .point").nth(READER[0] * 4 + READER[1]).bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.get_by_text(f"Head card: L{READER[0]}H{READER[1]}").wait_for(timeout=180_000)
        page.get_by_text("weights, K-composition").last.wait_for(state="attached", timeout=60_000)
        source = page.locator("button", has_text="L0H").first  # a key-side source head of L1H3
        source.wait_for(timeout=60_000)
        target = source.inner_text().split(" ")[0]
        source.click()
        page.get_by_text(f"Head card: {target}").wait_for(timeout=180_000)
        page.screenshot(path=str(tmp_path / "atlas_card.png"), full_page=True)
