"""Shared pieces of the Streamlit pages: the model (loaded once per process) and a
picker of saved runs. Pages compute nothing themselves: they load a saved Result or
call the analysis's ``run`` and draw with ``workbench.figures``."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workbench.errors import WorkbenchError  # noqa: E402
from workbench.results import list_runs, load_result  # noqa: E402


@st.cache_resource(show_spinner="loading model ...")
def get_model(name: str = "smollm2-135m", backend: str = "hf"):
    """The model, loaded once per Streamlit process."""
    from workbench.models import load_model

    return load_model(name, backend=backend)


def model_picker(key: str = "model") -> str:
    from workbench.models import MODELS

    names = [n for n, s in MODELS.items() if s.kind in ("embedded", "tiny")]
    return st.sidebar.selectbox("model", names, index=0, key=key)


def run_picker(analysis: str, label: str = "saved run"):
    """A select box of saved runs of ``analysis``; returns the loaded Result or None."""
    runs = [r for r in list_runs() if r["analysis"] == analysis]
    if not runs:
        st.info(f"No saved '{analysis}' runs yet. Run `workbench {analysis}` or use the controls here.")
        return None
    labels = [f"{r['created']} · {r['model']} · {Path(r['path']).name}" for r in runs]
    choice = st.selectbox(label, range(len(runs)), format_func=lambda i: labels[i], key=f"run-{analysis}")
    try:
        return load_result(runs[choice]["path"])
    except WorkbenchError as exc:
        st.error(str(exc))
        return None


def show_error(exc: Exception) -> None:
    st.error(str(exc))
