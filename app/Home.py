"""Workbench dashboard: home page. Lists saved runs (any analysis) and opens one, and
shows the models known to this machine."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st  # noqa: E402

from app.common import show_error  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.results import list_runs, load_result  # noqa: E402

st.set_page_config(page_title="Interpretability workbench", layout="wide")
st.title("Interpretability workbench")
st.caption("Attention heads under the microscope: caching, patching, circuits, retrieval heads, sinks, "
           "in-context regression, vision heads and LRP, on the embedded SmolLM2-135M or your own model.")

runs = list_runs()
st.header("Saved runs")
if not runs:
    st.info("No saved runs yet. Run `workbench ablate --n 64` (or `make run`) and reload this page.")
else:
    st.dataframe([{k: r[k] for k in ("created", "analysis", "model", "path")} for r in runs], width="stretch")
    labels = [f"{r['analysis']} · {r['model']} · {Path(r['path']).name}" for r in runs]
    pick = st.selectbox("open a run", range(len(runs)), format_func=lambda i: labels[i])
    try:
        result = load_result(runs[pick]["path"])
        st.subheader(f"{result.analysis} on {result.meta.get('model')}")
        st.json(result.summary(), expanded=False)
        for section in result.report_sections():
            st.markdown(f"#### {section.title}")
            if section.text:
                st.write(section.text)
            for rows in section.tables:
                st.dataframe(rows, width="stretch")
            for fig in section.figures:
                st.plotly_chart(fig, width="stretch")
        report = Path(runs[pick]["path"]) / "report.html"
        if report.is_file():
            st.download_button("download HTML report", report.read_bytes(), file_name="report.html", mime="text/html")
    except WorkbenchError as exc:
        show_error(exc)

st.header("Models")
from workbench.models import available_models  # noqa: E402

st.dataframe(available_models(), width="stretch")
