"""In-context linear regression (He et al. 2025): KQ and OV heatmaps per head with a step
slider, the pattern scores over training, and error over context length."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlit as st  # noqa: E402

from app.common import run_picker, show_error  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from analyses.icl import figures as figs  # noqa: E402

st.set_page_config(page_title="ICL regression", layout="wide")
st.title("In-context linear regression: multi-head softmax attention")
st.caption("One-layer attention trained on prompts (x_i, y_i), query (x_q, 0). Patterns of He, Pan, Chen, Yang (2025): "
           "diagonal, homogeneous KQ; last-entry-only, zero-sum OV.")
result = run_picker("icl")
with st.expander("train a new model (cached by its settings)"):
    c1, c2, c3, c4 = st.columns(4)
    heads = c1.number_input("heads H", 1, 8, 4)
    d = c2.number_input("d", 1, 16, 5)
    n = c3.number_input("context n", 2, 200, 40)
    steps = c4.number_input("steps", 10, 20000, 3000, step=100)
    seed = st.number_input("seed", 0, 10_000, 0)
    baselines = st.checkbox("also train single-head and linear attention", value=True)
    if st.button("train"):
        from analyses.icl.analysis import ICLConfig, run

        try:
            with st.spinner("training ..."):
                result = run(None, ICLConfig(d=int(d), n=int(n), heads=int(heads), steps=int(steps), seed=int(seed),
                                             baselines=baselines, eval_prompts=2000), progress=False)
                result.save()
        except WorkbenchError as exc:
            show_error(exc)
if result is not None:
    m = result.metrics
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("zero-sum |sum mu| / sum |mu|", f"{m['zero_sum_ratio']:.3f}")
    c2.metric("KQ off-diagonal share (|mu|-weighted)", f"{m['kq_offdiag_weighted']:.3f}")
    c3.metric("OV energy outside y", f"{m['ov_offlast_total']:.3f}")
    c4.metric("model vs debiased GD gap", f"{m['dgd_pred_gap']:.4f}")
    steps = [int(s) for s in result.arrays["checkpoint_steps"].tolist()]
    step = st.select_slider("checkpoint step", options=steps, value=steps[-1], key="icl-step")
    idx = steps.index(step)
    st.plotly_chart(figs.kq_heatmaps(result, idx), width="stretch")
    st.plotly_chart(figs.ov_heatmap(result, idx), width="stretch")
    st.plotly_chart(figs.pattern_curves(result), width="stretch")
    st.plotly_chart(figs.mse_by_length(result), width="stretch")
    st.dataframe([{"predictor": k, "mse at training n": v} for k, v in m["mse"].items()])
    st.plotly_chart(figs.loss_curves(result), width="stretch")
