"""Small PNGs of plotly figures for the README and ``docs/headlines.md``.

Plotly writes the figure as HTML (plotly.js inlined, static plot) and a headless Chromium, the
browser CI already installs for the dashboard tests, takes the screenshot: no kaleido and no
network. Each picture names the run it came from twice: a footer line drawn under the figure
(for a reader) and a PNG text chunk holding the provenance as JSON (for a test or a script).
"""
from __future__ import annotations

import html
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .errors import WorkbenchError

PROVENANCE_KEY = "workbench:provenance"
WIDTH, HEIGHT, FOOTER = 760, 460, 22  # the size of a figure that sets none; the footer line under it
MAX_SIZE = (1200, 1000)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def footer(provenance: dict[str, Any]) -> str:
    """The line drawn under a picture: command, model, run (its creation time), commit, date."""
    parts = [provenance.get("command", ""), provenance.get("model") or "",
             f"run {provenance['run']}" if provenance.get("run") else "",
             f"commit {provenance['commit']}" if provenance.get("commit") else "",
             provenance.get("date", "")]
    return " · ".join(p for p in parts if p)


def page_html(fig: Any, caption: str, width: int, height: int) -> str:
    """The figure at a fixed size, static, with the caption under it, as one offline page."""
    fig = type(fig)(fig)  # a copy: the caller's figure keeps its own size
    fig.update_layout(width=width, height=height, autosize=False)
    body = fig.to_html(full_html=False, include_plotlyjs=True, config={"staticPlot": True, "displayModeBar": False})
    style = ("html,body{margin:0;background:#fff;overflow:hidden}"
             ".cap{font:11px/1.6 sans-serif;color:#555;padding:0 8px;white-space:nowrap;overflow:hidden}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{body}"
            f"<div class='cap'>{html.escape(caption)}</div></body></html>")


def screenshot(page: str, path: Path, width: int, height: int, browser: str | None = None, timeout: float = 120) -> None:
    """Render ``page`` (HTML text) in headless Chromium and save a ``width`` x ``height`` PNG."""
    browser = browser or find_chromium()
    if browser is None:
        raise WorkbenchError("no Chromium to draw the pictures with; install it (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="workbench-picture-") as tmp:
        src = Path(tmp) / "figure.html"
        src.write_text(page, encoding="utf-8")
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
               "--no-first-run", "--disable-background-networking", "--force-device-scale-factor=1",
               f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}", "--virtual-time-budget=15000",
               f"--screenshot={path}", src.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WorkbenchError(f"{browser} could not draw {path.name}: {exc}") from None
    if proc.returncode != 0 or not path.is_file():
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise WorkbenchError(f"{browser} could not draw {path.name} (exit {proc.returncode}): {last}")


def stamp(path: Path, provenance: dict[str, Any]) -> None:
    """Write the provenance into the PNG's text chunk (the pixels are untouched)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(PROVENANCE_KEY, json.dumps(provenance, sort_keys=True))
    with Image.open(path) as im:
        im.load()
        im.save(path, format="PNG", pnginfo=info, optimize=True)


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """The provenance a picture carries, or None when it carries none."""
    from PIL import Image

    with Image.open(path) as im:
        text = getattr(im, "text", {}).get(PROVENANCE_KEY)
    return json.loads(text) if text else None


def export_png(fig: Any, path: str | Path, provenance: dict[str, Any], width: int | None = None,
               height: int | None = None, browser: str | None = None) -> Path:
    """Draw ``fig`` into ``path`` (a PNG of ``width`` x ``height``, by default the figure's own size
    up to ``MAX_SIZE``, else ``WIDTH`` x ``HEIGHT``, plus a footer line naming the run) and store
    ``provenance`` in it; written to a temporary name, then renamed into place."""
    width = width or min(fig.layout.width or WIDTH, MAX_SIZE[0])
    height = height or min(fig.layout.height or HEIGHT, MAX_SIZE[1])
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp.png")
    try:
        screenshot(page_html(fig, footer(provenance), width, height), tmp, width, height + FOOTER, browser)
        stamp(tmp, provenance)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
