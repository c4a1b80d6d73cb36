"""Circuits: the IOI and Colored Objects circuits (EAP-IG), their head overlap, the head
classes and the intervention experiment (a saved `workbench reuse` run or a fresh small
one), and single-task circuits from `workbench circuit`."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlit as st  # noqa: E402

from app.common import get_model, model_picker, run_picker, show_error  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from analyses.circuits.figures import circuit_figures, reuse_figures, reuse_tables  # noqa: E402

st.set_page_config(page_title="Circuits", layout="wide")
st.title("Circuits")
tab_reuse, tab_circuit = st.tabs(["IOI → Colored Objects reuse", "single circuit"])

with tab_reuse:
    result = run_picker("reuse", "saved reuse run")
    with st.expander("run a new (small) reuse study"):
        name = model_picker("reuse-model")
        n = st.number_input("prompts per task", 1, 64, 4, key="reuse-n")
        steps = st.number_input("EAP-IG steps", 1, 20, 2, key="reuse-steps")
        if st.button("run", key="reuse-run"):
            from analyses.circuits.reuse import ReuseConfig, run

            try:
                with st.spinner("discovering both circuits ..."):
                    result = run(get_model(name), ReuseConfig(n_prompts=int(n), ig_steps=int(steps), batch_size=int(n)),
                                 progress=False)
                    result.save()
            except WorkbenchError as exc:
                show_error(exc)
    if result is not None:
        m = result.metrics
        c = st.columns(5)
        c[0].metric("IOI heads", m["ioi"]["n_heads"])
        c[1].metric("IOI faithfulness", f"{m['ioi']['faithfulness']:.2f}")
        c[2].metric("Colored Objects heads", m["colored_objects"]["n_heads"])
        c[3].metric("CO faithfulness", f"{m['colored_objects']['faithfulness']:.2f}")
        c[4].metric("overlap (share of smaller)", f"{m['overlap']['share_of_smaller']:.2f}")
        summary, overlap, classes, inter = reuse_tables(result)
        st.subheader("circuits")
        st.dataframe(summary)
        st.subheader("head overlap")
        st.dataframe(overlap)
        st.subheader("heads by class")
        st.dataframe(classes)
        st.subheader("intervention")
        st.dataframe(inter)
        for fig in reuse_figures(result):
            st.plotly_chart(fig, width="stretch")

with tab_circuit:
    single = run_picker("circuit", "saved circuit run")
    if single is not None:
        m = single.metrics
        c = st.columns(4)
        c[0].metric("task / method", f"{m['task']} / {m['method']}")
        c[1].metric("edges", m["n_edges"])
        c[2].metric("heads", m["n_heads"])
        c[3].metric("faithfulness", f"{m['faithfulness']:.2f}")
        for fig in circuit_figures(single):
            st.plotly_chart(fig, width="stretch")
        st.dataframe([{"sender": s, "receiver": r, "score": v} for s, r, v in m["top_edges"]])
