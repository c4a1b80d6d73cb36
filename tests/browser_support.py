"""The browser tests' shared set-up: the dashboard served on a free port and a real chromium
page on it (skipped where chromium is missing, a failure on CI where .ci/run installs it)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

import pytest

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI; .ci/run installs it with apt-get install chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard_page(width: int = 1280, height: int = 1400, start_s: float = 90) -> Iterator[tuple[object, str]]:
    """(a playwright page, the dashboard's base URL): ``workbench app`` on a free port, up
    (HTTP 200) within ``start_s`` seconds, and chromium on it; both stopped afterwards."""
    chromium = chromium_or_skip()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--port", str(port)], env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline, status = time.time() + start_s, None
        while time.time() < deadline:
            try:
                status = urllib.request.urlopen(base, timeout=5).status
                break
            except OSError:
                time.sleep(1)
        assert status == 200, "the dashboard did not answer HTTP 200"
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
            try:
                yield browser.new_page(viewport={"width": width, "height": height}), base
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
