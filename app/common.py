"""Shared pieces of the Streamlit pages: the model (loaded once per process), a picker
of saved runs and the drawing of report sections. Pages compute nothing themselves:
they load a saved Result or call the analysis's ``run`` and draw its spec's figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.results import list_runs, load_result


@st.cache_resource(show_spinner="loading model ...")
def get_model(name: str = "smollm2-135m", backend: str = "hf"):
    """The model, loaded once per Streamlit process."""
    from workbench.models import load_model

    return load_model(name, backend=backend)


def model_picker(key: str = "model") -> str:
    from workbench.models import MODELS

    names = [n for n, s in MODELS.items() if s.kind in ("embedded", "tiny")]
    choice = st.sidebar.selectbox("model", names, index=0, key=key)
    return names[0] if choice is None else choice


def run_picker(spec: Any, label: str = "saved run"):
    """A select box of saved runs of an analysis (a spec, or a saved ``analysis`` name);
    returns the loaded Result or None. Broken run folders are not offered here: ``list_runs``
    cannot tell whose they are (their analysis is "broken"), so the home page lists them, with
    the reason. A run that fails to load when picked shows its one-line error."""
    names = spec.result_names if hasattr(spec, "result_names") else (spec,)
    key = spec.key if hasattr(spec, "key") else spec
    runs = [r for r in list_runs() if r["analysis"] in names]
    if not runs:
        st.info(f"No saved '{key}' runs yet. Run `workbench {key}` or use the controls here.")
        return None
    labels = [f"{r['created']} · {r['model']} · {Path(r['path']).name}" for r in runs]
    choice = st.selectbox(label, range(len(runs)), format_func=lambda i: labels[i], key=f"run-{key}")
    if choice is None:
        return None
    try:
        return load_result(runs[choice]["path"])
    except WorkbenchError as exc:
        st.error(str(exc))
        return None


def draw_sections(sections: Sequence[Any]) -> None:
    """Report sections (title, text, tables, plotly figures) as Streamlit elements."""
    for section in sections:
        st.subheader(section.title)
        if section.text:
            st.write(section.text)
        for rows in section.tables:
            st.dataframe(rows, width="stretch")
        for fig in section.figures:
            st.plotly_chart(fig, width="stretch")


def show_error(exc: Exception) -> None:
    st.error(str(exc))
