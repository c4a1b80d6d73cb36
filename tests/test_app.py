"""The dashboard: every core page runs under Streamlit's AppTest, and once end to end
in a real headless Chromium that loads the home page and saves a screenshot."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench.analyses.ablation.analysis import AblationConfig, run
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



@pytest.mark.browser
def test_dashboard_in_real_chromium(saved_ablation, tmp_path):
    shot = tmp_path / "home.png"
    with dashboard_page(1280, 1400) as (page, base):
        page.goto(base)
        page.get_by_text("Saved runs").wait_for(timeout=120_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
        text = page.inner_text("body")
        page.screenshot(path=str(shot), full_page=True)
    assert "Interpretability workbench" in text and "ablation" in text
    assert shot.is_file() and shot.stat().st_size > 20_000
    keep = os.environ.get("WORKBENCH_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
