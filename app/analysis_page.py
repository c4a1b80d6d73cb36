"""The one page template every analysis gets from its spec: a saved-run picker, a
"run a small one" form built from the same Config the CLI uses, the spec's headline
tiles and figures. A spec's ``page_extra(result)`` may add to it, never copy it."""
from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any

import streamlit as st

from workbench.app.common import draw_sections, get_model, model_picker, run_picker, show_error
from workbench.errors import WorkbenchError
from workbench.checks import check_run_inputs
from workbench.cli.analysis import Common, run_analysis
from workbench.config_fields import field_shape
from workbench.spec import AnalysisSpec, config_fields, get_spec


def _field_input(spec: AnalysisSpec, f: dataclasses.Field, annotation: Any) -> Any:
    """One form widget for a Config field (from its ``FieldShape``); returns the field's value."""
    shape = field_shape(f, annotation)
    default = spec.page_defaults.get(f.name, shape.default)
    label, key, help_text = f.name.replace("_", " "), f"{spec.key}-{f.name}", f.metadata.get("help") or None
    if shape.choices:
        choices = list(shape.choices)
        return st.selectbox(label, choices, index=choices.index(default) if default in choices else 0,
                            key=key, help=help_text)
    if shape.kind is bool:
        return st.checkbox(label, bool(default), key=key, help=help_text)
    if shape.kind in (int, float) and (shape.optional or default is None):  # empty box = None (the Config's default)
        text = st.text_input(label, "" if default is None else str(default), key=key, help=help_text)
        try:
            return shape.kind(text) if text.strip() else None
        except ValueError:
            st.error(f"{label}: '{text}' is not a number; leave it empty for the default")
            return None
    if shape.kind in (int, float):
        lo, hi, cast = f.metadata.get("min"), f.metadata.get("max"), shape.kind
        return st.number_input(label, value=cast(default), min_value=None if lo is None else cast(lo),
                               max_value=None if hi is None else cast(hi), key=key, help=help_text,
                               format=None if cast is int else "%g")
    if shape.kind is tuple:
        if shape.elem is str:  # texts may hold commas: one per line
            text = st.text_area(label, "\n".join(default or ()), key=key, help=f"{help_text or ''} (one per line)")
            return tuple(x.strip() for x in text.splitlines() if x.strip())
        text = st.text_input(label, ",".join(map(str, default or ())), key=key, help=f"{help_text or ''} (comma-separated)")
        elem = shape.elem or float  # a number list (texts were handled above)
        return tuple(elem(x.strip()) for x in text.split(",") if x.strip())
    text = st.text_input(label, "" if default is None else str(default), key=key, help=help_text)
    return None if (shape.optional and not text) else text


def run_form(spec: AnalysisSpec) -> Any:
    """The "run a small one" form; returns a fresh, saved Result or None."""
    with st.expander(f"run a small {spec.key}"):
        values = {f.name: _field_input(spec, f, ann) for f, ann in config_fields(spec.config)
                  if f.init and f.metadata.get("cli", True) and f.name != "seed"}
        name = model_picker(f"{spec.key}-model") if spec.needs_model else None
        if st.button("run", key=f"{spec.key}-run"):
            try:
                config = check_run_inputs(spec, spec.config(**values))
                model = get_model(name) if (name and spec.load_target is None and spec.wants_model(config)) else None
                with st.spinner(f"running {spec.key} ..."):  # the CLI's door: load_target, checks, finish
                    return run_analysis(spec, config, Common(model=name or Common.model), progress=False, model=model)
            except (WorkbenchError, ValueError, TypeError) as exc:
                show_error(exc)
    return None


def run_date(created: str | None) -> str:
    """``2026-11-26 14:03 UTC`` from a run's ISO creation time (as saved), '' when unknown."""
    try:
        when = _dt.datetime.fromisoformat(created or "")
    except ValueError:
        return ""
    return when.strftime("%Y-%m-%d %H:%M") + (" UTC" if when.utcoffset() == _dt.timedelta(0) else "")


def page_title(spec: AnalysisSpec, result: Any | None) -> str:
    """The page's title: the analysis, and when a run is open, its model and date, so a
    screenshot or a browser tab says what it shows."""
    if result is None:
        return spec.title
    parts = (spec.title, result.meta.get("model"), run_date(result.meta.get("created")))
    return " · ".join(p for p in parts if p)


def analysis_page(key: str) -> None:
    """Draw the page of the analysis registered as ``key``."""
    spec = get_spec(key)
    heading = st.empty()  # filled once we know which run is open
    st.caption(f"{spec.description} Run the full analysis with `workbench {spec.key}`; the form below runs a small one."
               .strip())
    result = run_picker(spec)
    fresh = run_form(spec)
    result = fresh if fresh is not None else result
    title = page_title(spec, result)
    heading.title(title)
    st.set_page_config(page_title=title)
    if result is None:
        return
    if spec.headline is not None:
        tiles = spec.headline(result)
        for col, (label, value) in zip(st.columns(len(tiles)), tiles):
            col.metric(label, value)
    draw_sections(spec.sections(result))
    if spec.page_extra is not None:
        spec.page_extra(result)
