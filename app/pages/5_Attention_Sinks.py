"""Attention sinks (ACT): which heads have sinks beyond the first token, per-head sink maps
with the sink tokens on the prompt, massive activations, and calibration accuracy before
and after, from a saved run or a fresh small run."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlit as st  # noqa: E402

from app.common import get_model, model_picker, run_picker, show_error  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from analyses.sinks.figures import calibration_bar, sink_map, sink_strength_grid, sink_tokens_bar  # noqa: E402

st.set_page_config(page_title="Attention sinks", layout="wide")
st.title("Attention sinks")
st.caption("ACT: a position is a sink when its column-mean attention (over the queries that see it) is over the "
           "threshold; calibration scales non-first sinks by beta. Full run: `workbench sinks`.")
result = run_picker("sinks")
with st.expander("run a small sink scan"):
    name = model_picker()
    threshold = st.number_input("sink threshold", 0.0, 1.0, 0.1, key="threshold")
    beta = st.number_input("beta", 0.0, 1.0, 0.4, key="beta")
    if st.button("run", key="run"):
        from analyses.sinks.analysis import SinksConfig, run

        try:
            with st.spinner("finding sinks and calibrating ..."):
                result = run(get_model(name), SinksConfig(threshold=float(threshold), beta=float(beta), n_calib=8,
                                                          n_heldout=8, max_search=2), progress=False)
                result.save()
        except WorkbenchError as exc:
            show_error(exc)
if result is not None:
    m = result.metrics
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("sinks beyond the first token", m["n_sinks_beyond_first"])
    c2.metric("heads with such sinks", m["n_heads_with_sinks"])
    c3.metric("held-out accuracy before", f"{m['calibration']['before']:.3f}")
    c4.metric("after calibration", f"{m['calibration']['after']:.3f}")
    n_show = st.slider("heads in the sink map", 1, 30, 12, key="n_heads")
    st.plotly_chart(sink_map(result, n_show), width="stretch")
    st.caption("Example prompt: " + repr(m["example_prompt"]))
    left, right = st.columns(2)
    left.plotly_chart(sink_strength_grid(result), width="stretch")
    right.plotly_chart(sink_tokens_bar(result), width="stretch")
    st.plotly_chart(calibration_bar(result), width="stretch")
    st.subheader("Massive activations at sink tokens")
    st.dataframe(m["massive_activations"])
    st.caption("At the first token:")
    st.dataframe(m.get("first_token_massive_activations", []))
    st.subheader("Head search (single-head calibration gain on the calibration split)")
    st.dataframe(m["search"])
