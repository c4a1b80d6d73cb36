"""The atlas page in a real headless Chromium: the grid is drawn, a head is clicked in it, and
its card shows the same numbers as the saved atlas table."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

HEAD = (1, 3)  # the head clicked: L1H3 of tiny-llama (2 layers x 4 heads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def saved_atlas(tiny_llama):
    from analyses.atlas.analysis import AtlasConfig, run
    from analyses.induction.analysis import InductionConfig
    from analyses.induction.analysis import run as run_induction

    run_induction(tiny_llama, InductionConfig(n_prompts=4, seq_len=6), progress=False).save()
    result = run(tiny_llama, AtlasConfig(models=("tiny-llama",), n_prompts=2, n_permutations=20), progress=False)
    result.save()
    return result


@pytest.mark.browser
def test_atlas_page_click_a_head_in_real_chromium(saved_atlas, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI; .ci/run installs it with apt-get install chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--port", str(port)], env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/atlas"
        deadline, status = time.time() + 300, None
        while time.time() < deadline:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status
                break
            except OSError:
                time.sleep(1)
        assert status == 200, "the dashboard did not answer HTTP 200"
        from playwright.sync_api import sync_playwright

        flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=flags)
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(url)
            page.get_by_text("Head card: L0H0").wait_for(timeout=120_000)
            grid = page.locator(".js-plotly-plot").filter(has_text="= stronger").filter(has=page.locator(".scatterlayer .point")).first
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
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    frame = saved_atlas.frame().set_index("name")
    name = f"L{HEAD[0]}H{HEAD[1]}"
    shown = {}
    for row in rows:
        cells = [c.strip() for c in row.split("\t") if c.strip()]
        quantity = next(c for c in cells if c in saved_atlas.column_names)
        shown[quantity] = cells[cells.index(quantity) + 1]
    assert set(shown) == set(saved_atlas.column_names)
    for quantity, value in shown.items():
        assert value == f"{float(frame.loc[name, quantity]):.4g}", quantity
