"""The dashboard: every core page runs under Streamlit's AppTest, and once end to end in a
real headless Chromium that loads the home page (saving a screenshot) and each analysis page
with a saved run, checking that one picture is drawn on each."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench.analyses.ablation.analysis import AblationConfig, run
from workbench.results import load_result
from browser_support import dashboard_page
from conftest import analysis_page_app

APP = Path(__file__).resolve().parents[1] / "app"


@pytest.fixture
def saved_ablation(tiny_llama):
    result = run(tiny_llama, AblationConfig(n_prompts=3), progress=False)
    result.meta["model"] = "tiny-llama"
    return result.save()


def test_home_lists_and_opens_runs(saved_ablation):
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=120).run()
    assert not at.exception
    assert any("Saved runs" in h.value for h in at.header)
    assert len(at.get("plotly_chart")) >= 2  # the opened run's grid and bars


def test_home_without_runs_says_what_to_do():
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=120).run()
    assert not at.exception
    assert any("No saved runs" in i.value for i in at.info)


def test_attention_page_draws_chosen_head(tiny_llama):
    at = AppTest.from_string("from workbench.app.attention import attention_page\nattention_page()\n", default_timeout=120)
    at.run()
    at.sidebar.selectbox(key="model").set_value("tiny-llama").run()
    at.text_area(key="prompt").input("Alice and Bob went home").run()
    at.slider(key="layer").set_value(1).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 1 and "L1H0" in charts[0].proto.spec


def test_ablation_page_shows_saved_run(saved_ablation):
    at = analysis_page_app("ablation").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2
    assert [m.label for m in at.metric][:2] == ["clean logit diff (IO - S)", "accuracy"]
    created = load_result(saved_ablation).meta["created"]  # ISO time, UTC
    assert at.title[0].value == f"Head ablation · tiny-llama · {created[:10]} {created[11:16]} UTC"


def test_page_title_without_a_run_is_the_analysis():
    at = analysis_page_app("ablation").run()
    assert not at.exception and at.title[0].value == "Head ablation"
    assert any("No saved 'ablation' runs" in i.value for i in at.info)


def test_run_date_reads_saved_times():
    from workbench.app.analysis_page import run_date

    assert run_date("2026-11-26T14:03:59+00:00") == "2026-11-26 14:03 UTC"
    assert run_date("2026-11-26T14:03:59") == "2026-11-26 14:03"
    assert run_date(None) == run_date("yesterday") == ""



@pytest.fixture
def saved_runs(tiny_llama, saved_ablation):
    """A saved run of ablation, induction and atlas on tiny-llama: each page has a run to draw."""
    from workbench.analyses.atlas.analysis import AtlasConfig
    from workbench.analyses.atlas.analysis import run as run_atlas
    from workbench.analyses.induction.analysis import InductionConfig
    from workbench.analyses.induction.analysis import run as run_induction

    run_induction(tiny_llama, InductionConfig(n_prompts=4, seq_len=6), progress=False).save()
    run_atlas(tiny_llama, AtlasConfig(models=("tiny-llama",), n_prompts=2, n_permutations=20), progress=False).save()
    return saved_ablation


# page -> (its heading, the title of the picture checked there)
PAGES = {"ablation": ("Head ablation · tiny-llama", "Change in logit difference when each head"),
         "induction": ("Induction heads · tiny-llama", "Induction score per head"),
         "atlas": ("Head atlas · tiny-llama", "tiny-llama: role clusters")}


def _picture_drawn(page, title: str = "") -> None:
    """The plotly figure titled ``title`` (any, for "") is drawn: an SVG with its traces."""
    fig = page.locator(".js-plotly-plot").filter(has=page.locator(".gtitle", has_text=title)).first
    fig.wait_for(state="attached", timeout=180_000)
    fig.scroll_into_view_if_needed(timeout=60_000)
    fig.locator(".cartesianlayer .hm, .cartesianlayer .trace").first.wait_for(state="attached", timeout=60_000)
    box = fig.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 200, title


@pytest.mark.browser
def test_dashboard_in_real_chromium(saved_runs, tmp_path):
    """Home, then each analysis page with a saved run: one picture drawn per page, the page's
    title naming the model and the run's date, and no Deploy button (toolbarMode minimal)."""
    shot = tmp_path / "home.png"
    headings = {}
    with dashboard_page(1280, 1400, start_s=300) as (page, base):
        page.goto(base)
        page.get_by_text("Saved runs").wait_for(timeout=120_000)
        _picture_drawn(page)  # the newest run, opened
        text = page.inner_text("body")
        page.screenshot(path=str(shot), full_page=True)
        deploy = page.locator("[data-testid='stAppDeployButton']").count()
        for key, (heading, picture) in PAGES.items():
            page.goto(base + key)
            page.locator("h1", has_text=heading).wait_for(timeout=180_000)
            _picture_drawn(page, picture)
            headings[key] = (page.locator("h1").first.inner_text(), page.title())
    assert "Interpretability workbench" in text and "ablation" in text
    assert shot.is_file() and shot.stat().st_size > 20_000
    assert deploy == 0, "Streamlit's Deploy button is shown: the app must run with client.toolbarMode=minimal"
    date = load_result(saved_runs).meta["created"][:10]
    for key, (h1, tab) in headings.items():
        assert date in h1 and h1 == tab, (key, h1, tab)  # the tab shows the same title
    keep = os.environ.get("WORKBENCH_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
