"""The dashboard: every core page runs under Streamlit's AppTest, and once end to end
in a real headless Chromium that loads the home page and saves a screenshot."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analyses.ablation.analysis import AblationConfig, run
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
    at = AppTest.from_string("from app.attention import attention_page\nattention_page()\n", default_timeout=120)
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_dashboard_in_real_chromium(saved_ablation, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI; .ci/run installs it with apt-get install chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    port = _free_port()
    env = dict(os.environ)
    server = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 90
        status = None
        while time.time() < deadline:
            try:
                status = urllib.request.urlopen(url, timeout=5).status
                break
            except OSError:
                time.sleep(1)
        assert status == 200, "the dashboard did not answer HTTP 200"
        shot = tmp_path / "home.png"
        from playwright.sync_api import sync_playwright

        flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=flags)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url)
            page.get_by_text("Saved runs").wait_for(timeout=120_000)
            page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
            text = page.inner_text("body")
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert "Interpretability workbench" in text and "ablation" in text
        assert shot.is_file() and shot.stat().st_size > 20_000
        keep = os.environ.get("WORKBENCH_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)
    finally:
        server.terminate()
        server.wait(timeout=30)
