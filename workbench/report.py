"""Self-contained HTML reports: figures and tables of any Results in one file that
opens offline (plotly.js is inlined once)."""
from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .errors import ResultError, WorkbenchError
from .sections import Section  # noqa: F401  (re-exported: figures import it from the report)


def table_html(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}.meta{color:#666;font-size:.9em}"""


def render(title: str, sections: Sequence[Section], meta: dict[str, Any] | None = None) -> str:
    """The whole report as one HTML string."""
    from plotly.offline import get_plotlyjs

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if meta:
        parts.append("<p class='meta'>" + " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in meta.items()) + "</p>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.text:
            parts.append(f"<p>{html.escape(sec.text)}</p>")
        for rows in sec.tables:
            parts.append(table_html(rows))
        for fig in sec.figures:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    parts.append("</body></html>")
    return "".join(parts)


def write_report(path: str | os.PathLike, title: str, sections: Sequence[Section], meta: dict[str, Any] | None = None) -> Path:
    """Write the report atomically (temporary file in the same folder, then rename)."""
    target = Path(path)
    text = render(title, sections, meta)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise ResultError(f"cannot write report {target}: {exc.strerror or exc}; choose a writable folder") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def sections_for(results: Sequence[Any]) -> list[Section]:
    """Every result's sections, in order, drawn by its analysis's spec (the result's own
    ``report_sections`` when no installed spec knows it)."""
    from .spec import get_spec

    out: list[Section] = []
    for r in results:
        try:
            spec = get_spec(r.analysis)
        except WorkbenchError:
            out.extend(r.report_sections())
            continue
        out.extend(spec.sections(r))
    return out


def latest_runs(model: str, exclude: Sequence[str] = ()) -> list[str]:
    """The newest saved run of every analysis on ``model``, except those in ``exclude``."""
    from .results import list_runs

    seen, picked = set(exclude), []
    for r in list_runs():  # newest first
        a = r.get("analysis")
        if a in (None, "corrupt", "broken") or r.get("model") != model or a in seen:
            continue
        seen.add(a)
        picked.append(r["path"])
    return picked


def run_report(result: Any, title: str, include: Sequence[str] | None = None, meta: dict[str, Any] | None = None) -> str:
    """One HTML report of ``result`` followed by other saved runs: the ones named in
    ``include``, or else the latest run of every other analysis on the same model
    (a broken run is skipped with a warning on stderr; a named one is an error)."""
    import sys

    from .results import load_result

    model = result.meta.get("model")
    paths = list(include) if include else latest_runs(model, exclude=(result.analysis,))
    others = []
    for p in paths:
        try:
            others.append(load_result(p))
        except WorkbenchError as exc:
            if include:
                raise
            print(f"skipping {p}: {exc}", file=sys.stderr)
    atlas = atlas_of([result, *others], model)
    if atlas is not None:
        others = [r for r in others if r.analysis != atlas.analysis] + [atlas]
    return render(title, sections_for([result, *others]), meta=meta)


def atlas_of(results: Sequence[Any], model: str | None) -> Any:
    """The head atlas of these results (read through the ``atlas`` spec, no model forward),
    when it is installed and at least two of them come from workbench.analyses that declare per-head
    columns; None otherwise (a failure is a warning on stderr, never a broken report)."""
    import sys

    from .spec import get_spec, specs

    atlas_spec = specs().get("atlas")
    if atlas_spec is None or model is None:
        return None
    head_level = set()
    for r in results:
        try:
            if get_spec(r.analysis).head_columns:
                head_level.add(r.analysis)
        except WorkbenchError:
            continue
    if len(head_level) < 2:
        return None
    try:
        unsaved = tuple(r for r in results if r.path is None)
        return atlas_spec.run(None, atlas_spec.config(models=(model,)), progress=False, results=unsaved)
    except WorkbenchError as exc:
        print(f"skipping the head atlas: {exc}", file=sys.stderr)
        return None
