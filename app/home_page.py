"""The home page: saved runs of any analysis (broken ones listed with the reason), one
opened with its spec's figures, and the models known to this machine."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from workbench.app.common import draw_sections, show_error
from workbench.errors import WorkbenchError
from workbench.results import list_runs, load_result


def home_page() -> None:
    from workbench.models import available_models
    from workbench.report import sections_for

    st.title("Interpretability workbench")
    st.caption("Attention heads under the microscope: caching, patching, circuits, retrieval heads, sinks, "
               "in-context regression, vision heads and LRP, on the embedded SmolLM2-135M or your own model.")
    runs = list_runs()
    st.header("Saved runs")
    if not runs:
        st.info("No saved runs yet. Run `workbench ablation --n 64` (or `make run`) and reload this page.")
    else:
        st.dataframe([{k: r.get(k) for k in ("created", "analysis", "model", "path", "reason")} for r in runs],
                     width="stretch")
        labels = [f"{r['analysis']} · {r['model']} · {Path(r['path']).name}" for r in runs]
        pick = st.selectbox("open a run", range(len(runs)), format_func=lambda i: labels[i]) or 0
        try:
            result = load_result(runs[pick]["path"])
            st.subheader(f"{result.analysis} on {result.meta.get('model')}")
            st.json(result.summary(), expanded=False)
            draw_sections(sections_for([result]))
            report = Path(runs[pick]["path"]) / "report.html"
            if report.is_file():
                st.download_button("download HTML report", report.read_bytes(), file_name="report.html", mime="text/html")
        except WorkbenchError as exc:
            show_error(exc)
    st.header("Models")
    st.dataframe(available_models(), width="stretch")
